"""`wsi-weakseg evaluate`: table and JSON output, file and model modes, exit codes of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_weakseg.cli import main
from wsi_weakseg.cli_evaluate import format_table
from wsi_weakseg.evaluate import instance_centroids
from wsi_weakseg.evaluate.run import DETECTION_METRICS, MASK_METRICS, evaluate_files, evaluate_model
from wsi_weakseg.model.card import DEFAULT_MODEL


def _example(tmp_path: Path) -> tuple[Path, Path]:
    """6x6: two 2x2 GT squares; prediction = the first exactly, the top half of the second, a false object."""
    gt = np.zeros((6, 6), np.uint16)
    gt[0:2, 0:2] = 1
    gt[3:5, 3:5] = 2
    pred = np.zeros((6, 6), np.int32)
    pred[0:2, 0:2] = 5
    pred[3, 3:5] = 9
    pred[0:3, 5] = 4
    Image.fromarray(gt).save(tmp_path / "img.png")
    np.save(tmp_path / "img.npy", pred)
    return tmp_path / "img.npy", tmp_path / "img.png"


def test_table(tmp_path, capsys):
    pred, gt = _example(tmp_path)
    assert main(["evaluate", str(pred), str(gt), "--mpp", "0.5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["image", "gt", "n_gt", "n_pred", "pix_acc", "pix_F1", "IoU", "obj_Dice", "mDice",
                              "AJI", "PQ", "det_P", "det_R", "det_F1"]
    # IoU 6/11, mDice (1 + 2/3) / 2, AJI 6/11, PQ 0.4; centroids (0.5, 0.5) (3, 3.5) (1, 5) vs (0.5, 0.5)
    # (3.5, 3.5) within 3 µm = 6 px: all three predictions lie within 6 px of a GT point, but one-to-one only two match
    assert out[2].split() == ["img", "labels", "2", "3", "0.8611", "0.7059", "0.5455", "0.7130", "0.8333",
                              "0.5455", "0.4000", "0.6667", "1.0000", "0.8000"]
    assert out[4].split()[0] == "mean" and out[5].split() == ["pooled", "2", "3", "0.6667", "1.0000", "0.8000"]
    assert any("within 3 µm (6 px)" in line for line in out)


def test_json_matches_the_library(tmp_path, capsys):
    pred, gt = _example(tmp_path)
    assert main(["evaluate", str(pred), str(gt), "--radius-px", "0.6", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(json.dumps(evaluate_files(pred, gt, radius_px=0.6)))
    row = report["images"][0]
    assert row["aji"] == 6 / 11 and row["tp"] == 2 and report["radius_um"] is None and report["radius_px"] == 0.6
    assert set(MASK_METRICS + DETECTION_METRICS) <= set(report["mean"])


def test_points_ground_truth_prints_dashes_for_mask_metrics(tmp_path, capsys):
    pred, _ = _example(tmp_path)
    pts = tmp_path / "pts.geojson"
    nucleus = {"classification": {"name": "Nucleus", "color": [0, 0, 0]}}
    pts.write_text(json.dumps({"type": "Feature", "properties": nucleus,
                               "geometry": {"type": "MultiPoint", "coordinates": [[1, 1], [4, 4]]}}))
    assert main(["evaluate", str(pred), str(pts), "--radius-px", "1", "--point-class", "Nucleus", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["images"][0]
    assert all(row[k] is None for k in MASK_METRICS) and (row["tp"], row["fp"], row["fn"]) == (2, 1, 0)
    assert main(["evaluate", str(pred), str(pts), "--radius-px", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[4:11] == ["-"] * 7


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{d}/missing.npy", "{d}/img.png", "--mpp", "0.5"], "no such file or folder"),
        (["{d}/bad.geojson", "{d}/img.png", "--mpp", "0.5"], "invalid JSON"),
        (["{d}/img.npy", "{d}/img.png"], "pass --mpp"),
        (["{d}/img.npy"], "give PRED and GT"),
        (["{d}/img.npy", "{d}/img.png", "--mpp", "0.5", "--model", "x"], "--model apply only with --spec"),
        (["{d}/img.npy", "--spec", "{d}/spec.yaml"], "with --spec, give no PRED"),
        (["--spec", "{d}/missing.yaml"], "data spec not found"),
        (["{d}", "{d}/img.png", "--mpp", "0.5"], "two files or two folders"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    _example(tmp_path)
    (tmp_path / "bad.geojson").write_text("{not json")
    assert main(["evaluate", *(a.format(d=tmp_path) for a in argv)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1 and err[0].startswith("wsi-weakseg: error: ") and message in err[0]


def test_bad_radius_is_a_usage_error(tmp_path, capsys):
    pred, gt = _example(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(pred), str(gt), "--radius-px", "0"])
    assert exc.value.code == 2 and "must be a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(pred), str(gt), "--radius-px", "1", "--radius-um", "3"])


def test_model_mode_on_a_synthetic_image(tmp_path, capsys):
    """Dark discs on pink at 0.5 µm/px: the default model finds them; the CLI prints what the library returns."""
    rng = np.random.default_rng(1)
    h, w = 160, 192
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = (232, 168, 200)
    labels = np.zeros((h, w), np.int32)
    centres = [(r, c) for r in range(20, h - 10, 34) for c in range(20, w - 10, 34)]
    for k, (r, c) in enumerate(centres, start=1):
        r, c = r + rng.integers(-3, 4), c + rng.integers(-3, 4)
        disc = (yy - r) ** 2 + (xx - c) ** 2 <= 49
        rgb[disc] = (92, 60, 140)
        labels[disc] = k
    Image.fromarray(rgb).save(tmp_path / "img.png")
    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "labels.png")
    pts = tmp_path / "img.geojson"
    xy = (instance_centroids(labels)[:, ::-1] + 0.5).tolist()
    pts.write_text(json.dumps({"type": "Feature", "properties": {"name": "Nucleus"},
                               "geometry": {"type": "MultiPoint", "coordinates": xy}}))
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"defaults": {"mpp": 0.5}, "items": [
        {"image": "img.png", "points": "img.geojson", "labels": "labels.png", "split": "test"},
        {"image": "img.png", "points": "img.geojson", "split": "test"}]}))
    assert main(["evaluate", "--spec", str(spec), "--split", "test", "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(json.dumps(evaluate_model(spec, split="test", device="cpu")))
    with_labels, points_only = report["images"]
    assert with_labels["f1"] == points_only["f1"] == 1.0 and with_labels["n_gt"] == len(centres)
    assert with_labels["aji"] > 0.6 and points_only["aji"] is None
    assert f"model {DEFAULT_MODEL} on split test" in format_table(report).splitlines()[-3]


def test_monuseg_labels_against_themselves_score_1(shared_data: Path, tmp_path: Path, capsys):
    """Identity oracle on real data: two MoNuSeg label maps as their own predictions, folders paired by stem."""
    labels = shared_data / "monuseg-train" / "labels"
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    for src in sorted(labels.glob("*.png"))[:2]:
        (pred / src.name).symlink_to(src)
        (gt / src.name).symlink_to(src)
    assert main(["evaluate", str(pred), str(gt), "--mpp", "0.25", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["images"]) == 2
    for row in report["images"]:
        assert all(row[k] == 1.0 for k in MASK_METRICS + DETECTION_METRICS), row
        assert row["n_pred"] == row["n_gt"] > 100 and row["radius_px"] == 12.0
    assert report["mean"]["aji"] == report["pooled"]["f1"] == 1.0


def test_model_mode_refuses_a_region_too_large_for_memory(tmp_path, capsys, monkeypatch):
    """Over ``MAX_REGION_PIXELS`` (lowered here): exit 2 and one line that points at ``segment``."""
    from wsi_weakseg.engine import whole

    Image.fromarray(np.full((64, 96, 3), 230, np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "img.geojson").write_text(json.dumps({"type": "Feature", "properties": {"name": "Nucleus"},
                                                      "geometry": {"type": "Point", "coordinates": [10.5, 10.5]}}))
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"defaults": {"mpp": 0.5}, "items": [
        {"image": "img.png", "points": "img.geojson", "split": "validation"}]}))
    monkeypatch.setattr(whole, "MAX_REGION_PIXELS", 64 * 96 - 1)
    assert main(["evaluate", "--spec", str(spec), "--model", "hematoxylin-baseline", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "96x64 level-0 px region is over the 6,143-pixel" in err[0]
    assert "`wsi-weakseg segment`" in err[0] and "wsi-weakseg evaluate" in err[0]
