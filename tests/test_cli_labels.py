"""`wsi-weakseg labels`: one overlay panel per spec item and a JSON summary of the label fractions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_weakseg.cli import main
from wsi_weakseg.train.config import load_config
from wsi_weakseg.train.dataset import derive_targets, label_params, read_item
from wsi_weakseg.weak.spec import load_spec


def test_labels_panels_show_the_derived_targets(shared_data: Path, tmp_path: Path, capsys):
    m = shared_data / "monuseg-train"
    name = sorted(p.stem for p in (m / "images").glob("*.png"))[0]
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"defaults": {"mpp": 0.25}, "items": [
        {"image": str(m / "images" / f"{name}.png"), "points": str(m / "points" / f"{name}.geojson")}]}))
    assert main(["labels", str(spec), "-o", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out) == {"items": 1, "output": str(tmp_path / "out")}
    panel = np.asarray(Image.open(tmp_path / "out" / f"{name}.png"))
    assert panel.shape == (500, 4 * 500 + 3 * 4, 3)  # 0.25 µm/px read at 0.5: four 500 px tiles and gaps
    summary = json.loads((tmp_path / "out" / "labels.json").read_text())["items"][0]
    # The panel's Voronoi tile is the image where the label is ignored and tinted elsewhere, exactly.
    r = read_item(load_spec(spec).items[0], 0.5)
    t = derive_targets(r.image, r.points_rc, r.annotated, label_params(load_config(), r.mpp))
    vor_tile = panel[:, 504:1004]
    clicks = np.zeros(t["voronoi"].shape, bool)
    pts = np.rint(r.points_rc).astype(int)
    for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
        clicks[np.clip(pts[:, 0] + dy, 0, 499), np.clip(pts[:, 1] + dx, 0, 499)] = True
    ignored = (t["voronoi"] == 2) & ~clicks
    np.testing.assert_array_equal(vor_tile[ignored], r.image[ignored])
    assert (np.abs(vor_tile[t["voronoi"] == 0].astype(int) - r.image[t["voronoi"] == 0]).sum(axis=1) > 0).mean() > 0.95
    assert (vor_tile[clicks] == 255).all()
    for key in ("voronoi", "cluster"):
        fractions = summary[key]
        assert sum(fractions.values()) == 1.0 or abs(sum(fractions.values()) - 1.0) < 1e-9
        assert fractions["nucleus"] == float(np.mean(t[key] == 1))
    assert summary["points"] == len(r.points_rc)


def test_labels_missing_spec_exits_2(tmp_path: Path, capsys):
    assert main(["labels", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "out")]) == 2
    assert "data spec not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_labels_of_a_scribbles_item_show_strokes_and_the_trained_pseudo_label(tmp_path: Path, capsys):
    """Strokes tile = the image with exactly the rasterised strokes tinted; pseudo tile = the run's EMA thresholded."""
    import torch

    from wsi_weakseg.cli_labels import _overlay
    from wsi_weakseg.demo import synthetic_he
    from wsi_weakseg.train.scribble_items import build_scribble_items
    from wsi_weakseg.train.trainer import train

    rgb, _ = synthetic_he(size=(64, 64), mpp=0.5, seed=3)
    Image.fromarray(rgb).save(tmp_path / "im.png")
    line = lambda cls, pts: {"type": "Feature", "geometry": {"type": "LineString", "coordinates": pts},  # noqa: E731
                             "properties": {"objectType": "annotation", "classification": {"name": cls}}}
    fc = {"type": "FeatureCollection", "features": [line("Nucleus", [[10.2, 20.3], [40.1, 22.7]]),
                                                    line("Background", [[5.5, 50.2], [60.3, 55.1]])]}
    (tmp_path / "s.geojson").write_text(json.dumps(fc))
    (tmp_path / "spec.yaml").write_text("items:\n- image: im.png\n  scribbles: s.geojson\n  mpp: 0.5\n")
    cfg = load_config(overrides={
        "recipe": "scribbles", "model": {"width": 8}, "data": {"patch": 64, "crop": 64},
        "optim": {"epochs": 2, "batch_size": 1}, "scribbles": {"warmup_epochs": 1, "gamma_epochs": 1, "tau": 0.6}})
    items, summary = build_scribble_items(load_spec(tmp_path / "spec.yaml").items, cfg)
    train(cfg, tmp_path / "m", progress=False, max_steps=1, data=(items, [], summary))

    assert main(["labels", str(tmp_path / "spec.yaml"), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    panel = np.asarray(Image.open(tmp_path / "out" / "im.png"))
    assert panel.shape == (64, 3 * 64 + 2 * 4, 3)
    np.testing.assert_array_equal(panel[:, :64], rgb)
    scribble = items[0].scribble
    assert (scribble == 1).sum() > 20 and (scribble == 0).sum() > 20
    np.testing.assert_array_equal(panel[:, 68:132], _overlay(rgb, scribble, alpha=0.8))
    ema = torch.load(tmp_path / "m" / "training" / "checkpoint.pt", weights_only=True)["recipe"]["pseudo"][0].numpy()
    expected = np.where(ema > 0.6, 1, np.where(ema < 0.4, 0, 2))
    np.testing.assert_array_equal(panel[:, 136:], _overlay(rgb, expected))
    row = json.loads((tmp_path / "out" / "labels.json").read_text())["items"][0]
    assert row["pseudo"]["nucleus"] == float(np.mean(expected == 1)) and row["scribble"]["nucleus"] == float(np.mean(scribble == 1))


def test_labels_model_that_is_not_a_scribbles_run_exits_2(shared_data: Path, tmp_path: Path, capsys):
    from wsi_weakseg.model.card import resolve_model_dir

    m = shared_data / "monuseg-train"
    name = sorted(p.stem for p in (m / "images").glob("*.png"))[0]
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"items": [{"image": str(m / "images" / f"{name}.png"), "mpp": 0.25,
                                           "points": str(m / "points" / f"{name}.geojson")}]}))
    for model, message in ((resolve_model_dir("nuclei-points-v2"), "not a scribbles or regions training run"),
                           (tmp_path, "no card.json")):
        assert main(["labels", str(spec), "-o", str(tmp_path / "out"), "--model", str(model)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()


def test_labels_of_a_masks_item_show_the_drawn_target_and_the_region_outline(tmp_path: Path, capsys):
    """Issue 16: image | target tinted as the few-masks recipe trains on it, region edge white; unlabelled: image."""
    from wsi_weakseg.cli_labels import _overlay
    from wsi_weakseg.demo import synthetic_he

    rgb, _ = synthetic_he(size=(64, 64), mpp=0.5, seed=3)
    Image.fromarray(rgb).save(tmp_path / "im.png")

    def polygon(cls, x0, y0, x1, y1):
        props = {"objectType": "annotation", **({"classification": {"name": cls}} if cls else {})}
        return {"type": "Feature", "properties": props, "geometry": {
            "type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}}

    fc = {"type": "FeatureCollection", "features": [polygon(None, 0, 0, 32, 32), polygon("Nucleus", 8, 8, 16, 16)]}
    (tmp_path / "m.geojson").write_text(json.dumps(fc))
    (tmp_path / "spec.yaml").write_text("defaults: {mpp: 0.5}\nitems:\n- {image: im.png, masks: m.geojson}\n"
                                        "- {image: im.png, split: validation}\n")
    assert main(["labels", str(tmp_path / "spec.yaml"), "-o", str(tmp_path / "out"), "--split", "train"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 1
    panel = np.asarray(Image.open(tmp_path / "out" / "im.png"))
    assert panel.shape == (64, 2 * 64 + 4, 3)
    np.testing.assert_array_equal(panel[:, :64], rgb)
    tile = panel[:, 68:]
    target = np.full((64, 64), 2, np.uint8)
    target[:32, :32] = 0
    target[8:16, 8:16] = 1
    tinted = _overlay(rgb, target)
    np.testing.assert_array_equal(tile[10, 10], tinted[10, 10])  # nucleus, green
    np.testing.assert_array_equal(tile[20, 20], tinted[20, 20])  # background in the region, red
    np.testing.assert_array_equal(tile[40:, :], rgb[40:, :])  # outside the region: the image as it is
    assert (tile[31, :32] == 255).all() and (tile[:32, 31] == 255).all()  # the region's edge
    assert not (tile[20, 20] == 255).all()
    row = json.loads((tmp_path / "out" / "labels.json").read_text())["items"][0]
    assert row["role"] == "masks" and row["nuclei"] == 1
    assert row["masks"]["nucleus"] == 64 / 4096 and row["masks"]["background"] == (1024 - 64) / 4096
    assert main(["labels", str(tmp_path / "spec.yaml"), "-o", str(tmp_path / "val"), "--split", "validation"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "val" / "im.png")), rgb)
