"""Training curves: the figure holds the history's numbers, the PNG decodes, training writes it every epoch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_weakseg.train import curves
from wsi_weakseg.train.curves import CURVES, DPI, FIGSIZE, curves_figure, write_curves

HISTORY = [
    {"epoch": 0, "loss": 2.0, "steps": 3, "terms": {"a/voronoi": 0.8, "a/centre": 0.2, "b/voronoi": 0.9, "b/centre": 0.1},
     "validation": {"a": {"aji": 0.30, "f1": 0.50}, "b": {"aji": 0.25, "f1": 0.55}}},
    {"epoch": 1, "loss": 1.0, "steps": 6, "terms": {"a/voronoi": 0.4, "a/centre": 0.1, "b/voronoi": 0.45, "b/centre": 0.05,
                                                   "a/cotrain": 0.01},
     "validation": {"a": {"aji": 0.40, "f1": 0.60}, "b": {"aji": 0.45, "f1": 0.65}}},
    {"epoch": 2, "loss": 0.05, "steps": 9, "terms": {"a/voronoi": 0.02, "a/centre": 0.01, "b/voronoi": 0.015,
                                                    "b/centre": 0.005, "a/cotrain": 0.02},
     "validation": {"a": {"aji": 0.42, "f1": 0.61}, "b": {"aji": 0.41, "f1": 0.70}}},
]
BEST = {"epoch": 1, "net": "b", "value": 0.45, "metric": "aji"}


def _lines(ax) -> dict:
    return {ln.get_label(): ln for ln in ax.lines}


def test_figure_holds_the_history_values():
    fig = curves_figure(HISTORY, BEST)
    loss_ax, val_ax = fig.axes[:2]
    lines = _lines(loss_ax)
    assert set(lines) == {"loss", "a/voronoi", "a/centre", "b/voronoi", "b/centre", "a/cotrain", "shipped epoch"}
    np.testing.assert_array_equal(lines["loss"].get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(lines["loss"].get_ydata(), [2.0, 1.0, 0.05])
    np.testing.assert_allclose(lines["b/centre"].get_ydata(), [0.1, 0.05, 0.005])
    cot = np.asarray(lines["a/cotrain"].get_ydata(), float)  # absent in epoch 0: a gap, not a zero
    assert np.isnan(cot[0]) and np.allclose(cot[1:], [0.01, 0.02])
    assert loss_ax.get_yscale() == "log"  # 0.005 .. 2 spans more than a decade
    # Terms share a colour across nets and differ in style; every term has its own colour.
    assert lines["a/voronoi"].get_color() == lines["b/voronoi"].get_color() != lines["a/centre"].get_color()
    assert lines["a/voronoi"].get_linestyle() != lines["b/voronoi"].get_linestyle()
    v = _lines(val_ax)
    for net in ("a", "b"):
        for m in ("aji", "f1"):
            np.testing.assert_allclose(v[f"{net}/{m}"].get_ydata(), [r["validation"][net][m] for r in HISTORY])
    np.testing.assert_allclose(v["shipped"].get_xdata(), [1]) and np.testing.assert_allclose(v["shipped"].get_ydata(), [0.45])
    for ax in (loss_ax, val_ax):
        np.testing.assert_allclose(_lines(ax)["shipped epoch"].get_xdata(), [1, 1])
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None


def test_png_decodes_has_the_figure_size_and_is_not_blank(tmp_path: Path):
    path = write_curves(HISTORY, tmp_path / CURVES, BEST)
    assert path == tmp_path / CURVES
    im = np.asarray(Image.open(path).convert("RGB"))
    assert im.shape == (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI), 3)
    assert (im < 250).any(axis=2).mean() > 0.02  # axes, text and lines, not a white page
    blue = np.asarray(curves.COLOURS[0])  # the first validation metric's / term's colour is drawn
    assert (np.abs(im.astype(int) - blue).sum(axis=2) < 30).sum() > 50
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary file


def test_no_validation_and_a_single_epoch_draw(tmp_path: Path):
    hist = [{"epoch": 0, "loss": 0.7, "steps": 1}]
    fig = curves_figure(hist, None)
    np.testing.assert_allclose(_lines(fig.axes[0])["loss"].get_ydata(), [0.7])
    assert [ln.get_label() for ln in fig.axes[1].lines] == []
    assert write_curves(hist, tmp_path / "c.png") is not None


def test_a_failure_to_draw_logs_and_returns_none(tmp_path: Path, caplog, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("no canvas")

    monkeypatch.setattr(curves, "curves_figure", boom)
    with caplog.at_level(logging.WARNING):
        assert write_curves(HISTORY, tmp_path / CURVES) is None
    assert "no canvas" in caplog.text and not (tmp_path / CURVES).exists()


def _tiny_data():
    from scipy import ndimage as ndi

    from wsi_weakseg.demo import synthetic_he
    from wsi_weakseg.train.dataset import EvalItem, TrainItem, derive_targets

    items = []
    for seed in range(3):
        rgb, _ = synthetic_he(size=(128, 128), mpp=0.5, seed=seed)
        truth, n = ndi.label(rgb.mean(axis=2) < 150)
        centres = np.array(ndi.center_of_mass(truth > 0, truth, range(1, n + 1)))
        t = derive_targets(rgb, centres, np.ones(rgb.shape[:2], np.uint8), {
            "mpp": 0.5, "point_radius_um": 1.0, "cluster_distance_um": 5.0, "centre_sigma_um": 1.0, "seed": 0})
        items.append((rgb, centres, truth, t))
    train = [TrainItem(f"s{i}", r, t["voronoi"], t["cluster"], t["centre"]) for i, (r, _, _, t) in enumerate(items[:2])]
    val = [EvalItem("v", items[2][0], items[2][1], items[2][2].astype(np.int32))]
    return train, val, [{"name": it.name} for it in train]


def test_training_redraws_curves_every_epoch(tmp_path: Path, monkeypatch):
    from wsi_weakseg.train import trainer
    from wsi_weakseg.train.config import load_config

    calls = []
    real = trainer.write_curves

    def spy(history, path, best=None):
        calls.append((len(history), dict(best) if best else None))
        return real(history, path, best)

    monkeypatch.setattr(trainer, "write_curves", spy)
    cfg = load_config(overrides={"model": {"width": 8}, "data": {"patch": 64, "crop": 64},
                                 "optim": {"epochs": 2, "batch_size": 2}, "points": {"gamma_epochs": 1}})
    trainer.train(cfg, tmp_path / "m", device="cpu", progress=False, max_steps=1, data=_tiny_data())
    assert [n for n, _ in calls] == [1, 2]  # once after each epoch, with the history so far
    png = tmp_path / "m" / "training" / CURVES
    assert np.asarray(Image.open(png)).shape[:2] == (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI))
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    history, shipped = card["training"]["history"], card["training"]["shipped"]
    assert calls[-1][1] == shipped  # the last drawing marks the shipped (net, epoch)
    assert all(set(h["terms"]) >= {"a/voronoi", "b/voronoi", "a/centre"} for h in history)
    fig = curves_figure(history, shipped)
    lines = _lines(fig.axes[0])
    assert len(lines["loss"].get_ydata()) == 2  # one point per epoch
    np.testing.assert_allclose(lines["loss"].get_ydata(), [h["loss"] for h in history])
    np.testing.assert_allclose(_lines(fig.axes[1])[f"{shipped['net']}/aji"].get_ydata(),
                               [h["validation"][shipped["net"]]["aji"] for h in history])


@pytest.mark.parametrize("bad", [[{"loss": 1.0}]])
def test_malformed_history_does_not_raise(tmp_path: Path, bad):
    assert write_curves(bad, tmp_path / CURVES) is None  # no "epoch": logged, not raised


def test_nine_metrics_get_nine_distinct_styles():
    """Past the seventh metric colours repeat, so the marker must tell them apart (mdice, pixel_iou)."""
    names = [*curves.METRICS, "mdice", "pixel_iou"]
    styles = curves.metric_styles(names)
    assert len(set(styles.values())) == len(names)
    assert styles["aji"] == (curves._rgb(curves.COLOURS[0]), ".")
    assert styles["mdice"] == (curves._rgb(curves.COLOURS[0]), "x")
