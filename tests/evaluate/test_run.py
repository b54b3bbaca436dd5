"""Tests of wsi_weakseg.evaluate.run: file forms, rasterisation, pairing, points, model mode (hand-worked oracles)."""

from __future__ import annotations

import json
import logging
from fractions import Fraction as F
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from shapely.geometry import Point, Polygon

from wsi_weakseg.errors import ConfigError, GeoJSONError, MissingMppError, SlideNotFoundError, UnsupportedFormatError
from wsi_weakseg.evaluate.run import (
    DETECTION_METRICS,
    MASK_METRICS,
    evaluate_files,
    evaluate_model,
    pair_files,
    predict_level0,
    rasterize_polygons,
    read_label_map,
)
from wsi_weakseg.io.geojson import GeoJSONWriter, nucleus_feature, stable_uuid

METRICS = MASK_METRICS + DETECTION_METRICS


def _example() -> tuple[np.ndarray, np.ndarray]:
    """8x8 ground truth and prediction.

    gt                  pred
    1 1 1 . . . . .     1 1 1 . . . . .     pred 1: a 3x3 ring (8 px) around pred 2 (1 px, in its hole)
    1 1 1 . . . . .     1 2 1 . . . . .
    1 1 1 . . . . .     1 1 1 . . . . .
    . . . . . . . .     . . . . . . . .
    . . . . 2 2 2 2     . . . . 3 3 . .     pred 3: left half of gt 2
    . . . . 2 2 2 2     . . . . 3 3 . .
    . . . . 2 2 2 2     4 . 4 . 3 3 . .     pred 4: a false object in two parts
    . . . . 2 2 2 2     4 . 4 . 3 3 . .
    """
    gt = np.zeros((8, 8), np.uint16)
    gt[0:3, 0:3] = 1
    gt[4:8, 4:8] = 2
    pred = np.zeros((8, 8), np.int32)
    pred[0:3, 0:3] = 1
    pred[1, 1] = 2
    pred[4:8, 4:6] = 3
    pred[6:8, 0] = 4
    pred[6:8, 2] = 4
    return pred, gt


def _expected(radius_px: float) -> dict:
    """Hand-worked scores of :func:`_example`."""
    # foreground: |S| = 21, |G| = 25, overlap 9 + 8 = 17; TN = 64 - 17 - 4 - 8 = 35
    # IoU: (g1, p1) = 8/9, (g1, p2) = 1/9, (g2, p3) = 8/16 = 0.5 (not a PQ match: IoU must exceed 0.5)
    g_term = (9 * F(16, 17) + 16 * F(2, 3)) / 25  # best partners by overlap: g1 -> p1, g2 -> p3
    p_term = (8 * F(16, 17) + 1 * F(2, 10) + 8 * F(2, 3) + 4 * 0) / 21  # p2 -> g1 (Dice 2/10), p4 -> none
    # centroids: g1 (1, 1), g2 (5.5, 5.5); p1 (1, 1), p2 (1, 1), p3 (5.5, 4.5) at distance 1 from g2, p4 far
    tp = 2 if radius_px >= 1 else 1
    return {
        "pixel_accuracy": (17 + 35) / 64,
        "pixel_f1": 2 * 17 / (21 + 25),
        "pixel_iou": 17 / (21 + 25 - 17),
        "object_dice": float((g_term + p_term) / 2),
        "mdice": (16 / 17 + 2 / 3) / 2,  # g1 -> p1 (Dice 16/17), g2 -> p3 (2/3); p2, p4 not counted
        "aji": (8 + 8) / (9 + 16 + 1 + 4),  # unused predictions p2 and p4 add their areas to U
        "pq": (1 / (1 + 3 / 2 + 1 / 2)) * 8 / 9,
        "dq": 1 / (1 + 3 / 2 + 1 / 2),
        "sq": 8 / 9,
        "precision": tp / 4,
        "recall": tp / 2,
        "f1": 2 * tp / 6,
        "n_pred": 4, "n_gt": 2, "tp": tp, "fp": 4 - tp, "fn": 2 - tp,
    }


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def _write_example_geojson(path: Path, multipolygon: bool = True) -> Path:
    """The example's prediction as pixel-edge polygons: a hole, a nested object, a two-part MultiPolygon."""
    feats = [
        nucleus_feature(stable_uuid(1), _rect(0, 0, 3, 3), holes=[_rect(1, 1, 2, 2)]),
        nucleus_feature(stable_uuid(2), _rect(1, 1, 2, 2)),
        nucleus_feature(stable_uuid(3), _rect(4, 4, 6, 8)),
        nucleus_feature(stable_uuid(4), _rect(0, 6, 1, 8)),
    ]
    if multipolygon:
        parts = [[_rect(0, 6, 1, 8).tolist() + [[0, 6]]], [_rect(2, 6, 3, 8).tolist() + [[2, 6]]]]
        feats[3]["geometry"] = {"type": "MultiPolygon", "coordinates": parts}
    with GeoJSONWriter(path) as out:
        for f in feats:
            out.write(f)
    return path


def _write_points(path: Path, xy: list, region: list | None = None) -> Path:
    feats = []
    if region is not None:
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [region]},
                      "properties": {"objectType": "annotation", "name": "Annotated region"}})
    feats.append({"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": xy},
                  "properties": {"objectType": "annotation",
                                 "classification": {"name": "Nucleus", "color": [0, 0, 0]}}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    pred, gt = _example()
    out = {"gt": tmp_path / "gt.png", "pred_npy": tmp_path / "pred.npy", "pred_tif": tmp_path / "pred.tif"}
    Image.fromarray(gt).save(out["gt"])  # 16-bit PNG, no pixel size
    np.save(out["pred_npy"], pred)
    tifffile.imwrite(out["pred_tif"], pred.astype(np.uint16))
    out["pred_geojson"] = _write_example_geojson(tmp_path / "pred.geojson")
    return out


def _metrics(row: dict) -> dict:
    return {k: row[k] for k in METRICS + ("n_pred", "n_gt", "tp", "fp", "fn")}


# --------------------------------------------------------------------------- label maps and GeoJSON


@pytest.mark.parametrize("radius_px", [1.0, 0.9])
def test_label_maps_give_the_hand_worked_scores(files, radius_px):
    report = evaluate_files(files["pred_npy"], files["gt"], radius_px=radius_px)
    (row,) = report["images"]
    expected = _expected(radius_px)
    assert _metrics(row) == pytest.approx(expected, rel=1e-12)
    assert row["gt_kind"] == "labels" and row["radius_px"] == radius_px and row["name"] == "gt"
    assert report["mean"] == pytest.approx({"n_images": 1, **{k: expected[k] for k in METRICS}}, rel=1e-12)
    assert report["pooled"] == pytest.approx({k: expected[k] for k in ("n_pred", "n_gt", "tp", "fp", "fn",
                                                                        "precision", "recall", "f1")})
    assert report["radius_px"] == radius_px and report["radius_um"] is None


def test_geojson_rasterises_to_the_label_map_and_scores_the_same(files):
    from wsi_weakseg.evaluate._inputs import read_detections

    pred, gt = _example()
    polygons, points = read_detections(files["pred_geojson"])
    assert len(polygons) == 4 and points.shape == (0, 2)
    np.testing.assert_array_equal(rasterize_polygons(polygons, gt.shape), pred)
    by_file = {p: evaluate_files(files[p], files["gt"], radius_px=1.0)["images"][0]
               for p in ("pred_npy", "pred_tif", "pred_geojson")}
    assert _metrics(by_file["pred_geojson"]) == _metrics(by_file["pred_npy"]) == _metrics(by_file["pred_tif"])


def test_rasterise_matches_point_in_polygon_at_pixel_centres():
    """Arbitrary (non pixel-aligned) polygons: the brute-force oracle is shapely's per-pixel-centre test."""
    tri = Polygon([(0.2, 0.3), (9.7, 2.4), (3.1, 8.9)])
    ring = Polygon([(4, 4), (12, 4.6), (11.5, 11), (4.5, 10.2)], [[(6, 6), (9.3, 6.2), (7.7, 9)]])
    labels = rasterize_polygons([tri, ring], (12, 13))
    expected = np.zeros((12, 13), int)
    for r in range(12):
        for c in range(13):
            for k, g in enumerate([tri, ring], start=1):
                if g.contains(Point(c + 0.5, r + 0.5)):
                    expected[r, c] = k  # later wins
    np.testing.assert_array_equal(labels, expected)
    assert (labels == 1).any() and (labels == 2).any() and (labels[7, 7] == 0)  # (7.5, 7.5) is in the hole


def test_objects_outside_the_grid_are_reported(caplog):
    with caplog.at_level(logging.WARNING, "wsi_weakseg.evaluate"):
        labels = rasterize_polygons([Polygon(_rect(20, 20, 22, 22)), Polygon(_rect(0, 0, 1, 1))], (4, 4))
    assert labels.sum() == 2 and labels[0, 0] == 2
    assert "1 of 2 predicted objects lie outside the 4x4 ground truth" in caplog.text


# --------------------------------------------------------------------------- pixel size and radius


def test_radius_in_um_uses_metadata_or_mpp(tmp_path, files):
    _, gt = _example()
    tif = tmp_path / "gt_res.tif"  # 0.5 µm/px in the resolution tags
    tifffile.imwrite(tif, gt, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    assert read_label_map(tif)[1] == pytest.approx(0.5)
    row = evaluate_files(files["pred_npy"], tif, radius_um=0.5)["images"][0]
    assert row["mpp"] == pytest.approx(0.5) and row["radius_px"] == pytest.approx(1.0)
    assert _metrics(row) == pytest.approx(_expected(1.0))
    row = evaluate_files(files["pred_npy"], files["gt"], mpp=0.5, radius_um=0.45)["images"][0]
    assert row["radius_px"] == pytest.approx(0.9) and row["tp"] == 1
    with pytest.raises(MissingMppError, match="--mpp"):
        evaluate_files(files["pred_npy"], files["gt"])  # a PNG without pHYs and no mpp


# --------------------------------------------------------------------------- point ground truth


def test_points_give_detection_only_inside_regions(tmp_path, files):
    # gt centres (1, 1) and (5.5, 5.5) as QuPath (x, y) = (col + .5, row + .5); the region stops at y = 6.5, so
    # p4's centroid (row 6.5 -> y 7.0) is not counted; p3's (y 6.0) is.
    pts = _write_points(tmp_path / "gt.geojson", [[1.5, 1.5], [6.0, 6.0]], region=_rect(0, 0, 8, 6.5).tolist())
    for pred in ("pred_npy", "pred_geojson"):
        report = evaluate_files(files[pred], pts, mpp=0.5, radius_um=0.5)
        (row,) = report["images"]
        assert row["gt_kind"] == "points" and row["radius_px"] == pytest.approx(1.0)
        assert all(row[k] is None for k in MASK_METRICS)
        assert _metrics(row) == pytest.approx({**dict.fromkeys(MASK_METRICS), "precision": 2 / 3, "recall": 1.0,
                                               "f1": 0.8, "n_pred": 3, "n_gt": 2, "tp": 2, "fp": 1, "fn": 0})
        assert all(report["mean"][k] is None for k in MASK_METRICS)
    with pytest.raises(MissingMppError):
        evaluate_files(files["pred_npy"], pts)


def test_point_predictions_against_a_label_map(tmp_path, files):
    pts = _write_points(tmp_path / "pred.geojson", [[1.5, 1.5], [5.5, 6.0], [7.5, 0.5]])  # rc (1,1) (5.5,5) (0,7)
    row = evaluate_files(pts, files["gt"], radius_px=0.5)["images"][0]
    assert all(row[k] is None for k in MASK_METRICS)
    assert (row["tp"], row["fp"], row["fn"], row["f1"]) == (2, 1, 0, 0.8)


# --------------------------------------------------------------------------- folders and bad input


def test_folders_pair_by_stem(tmp_path, files, caplog):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    pred, gt = _example()
    np.save(pred_dir / "a.npy", pred)
    _write_example_geojson(pred_dir / "b.geojson")
    np.save(pred_dir / "c.npy", gt.astype(np.int32))  # identity
    (pred_dir / "b.run.json").write_text("{}")  # segment's provenance file: ignored
    (pred_dir / "b.ome.zarr").mkdir()
    for name in ("a", "b", "c", "unused"):
        Image.fromarray(gt).save(gt_dir / f"{name}.png")
    assert [(n, p.name, g.name) for n, p, g in pair_files(pred_dir, gt_dir)] == [
        ("a", "a.npy", "a.png"), ("b", "b.geojson", "b.png"), ("c", "c.npy", "c.png")]
    with caplog.at_level(logging.WARNING, "wsi_weakseg.evaluate"):
        report = evaluate_files(pred_dir, gt_dir, radius_px=1.0)
    assert "1 ground-truth file(s)" in caplog.text and "unused" in caplog.text
    rows = {r["name"]: r for r in report["images"]}
    assert _metrics(rows["a"]) == _metrics(rows["b"]) == pytest.approx(_expected(1.0))
    assert all(rows["c"][k] == 1.0 for k in METRICS)
    assert report["mean"]["aji"] == pytest.approx((2 * 16 / 30 + 1) / 3)
    assert report["pooled"]["tp"] == 2 + 2 + 2 and report["pooled"]["n_pred"] == 4 + 4 + 2

    np.save(pred_dir / "zz.npy", pred)
    with pytest.raises(ConfigError, match=r"1 prediction\(s\) .* no ground truth .*: zz"):
        pair_files(pred_dir, gt_dir)
    (pred_dir / "zz.npy").unlink()
    np.save(pred_dir / "b.npy", pred)
    with pytest.raises(ConfigError, match="several files share the name 'b'"):
        pair_files(pred_dir, gt_dir)
    with pytest.raises(ConfigError, match="two files or two folders"):
        pair_files(files["pred_npy"], gt_dir)
    with pytest.raises(SlideNotFoundError):
        pair_files(tmp_path / "nope", gt_dir)


def test_bad_inputs_raise_typed_errors(tmp_path, files):
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(GeoJSONError, match="invalid JSON"):
        evaluate_files(bad, files["gt"], radius_px=1)
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(GeoJSONError, match="no polygon or point objects"):
        evaluate_files(empty, files["gt"], radius_px=1)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb)
    with pytest.raises(UnsupportedFormatError, match="not an instance label map"):
        evaluate_files(files["pred_npy"], rgb, radius_px=1)
    small = tmp_path / "small.npy"
    np.save(small, np.zeros((4, 8), np.int32))
    with pytest.raises(ConfigError, match="8x4 px but the ground truth is 8x8"):
        evaluate_files(small, files["gt"], radius_px=1)
    with pytest.raises(UnsupportedFormatError, match="unknown kind of file"):
        evaluate_files(tmp_path / "bad.geojson", files["gt"].rename(tmp_path / "gt.jpg"), radius_px=1)
    with pytest.raises(ConfigError, match="radius_px must be a positive number"):
        evaluate_files(files["pred_npy"], files["pred_npy"], radius_px=-1.0)


# --------------------------------------------------------------------------- model mode


def test_predict_level0_window_and_nearest_upsampling():
    """A region's window: level-0 pixels of the region's bounding box, each the label of its working pixel."""
    from wsi_weakseg.engine.inference import Predictor
    from wsi_weakseg.model.card import load_model
    from wsi_weakseg.slide.reader import ImageSlide

    rng = np.random.default_rng(0)
    rgb = np.full((96, 128, 3), 235, np.uint8)
    yy, xx = np.mgrid[0:96, 0:128]
    for cy, cx in rng.uniform(10, 86, size=(12, 2)):
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < 25] = (80, 50, 140)
    model = load_model("hematoxylin-baseline")
    slide = ImageSlide(rgb, mpp=0.25)  # working 0.5 µm/px: scale 2
    predictor = Predictor(model.net, model.card, "cpu")
    whole, origin = predict_level0(slide, predictor)
    assert origin == (0, 0) and whole.shape == (96, 128) and whole.max() > 3
    # every 2x2 level-0 block is one working pixel
    np.testing.assert_array_equal(whole, np.repeat(np.repeat(whole[::2, ::2], 2, 0), 2, 1))
    window, origin = predict_level0(slide, predictor, Polygon(_rect(10.5, 20, 70, 61.2)))
    assert origin == (10, 20) and window.shape == (62 - 20, 70 - 10)
    # working rows 10..30, cols 5..34 plus context and halo reach the image edges: the same labels, ids included
    np.testing.assert_array_equal(window, whole[20:62, 10:70])


def test_model_mode_rejects_an_empty_split(tmp_path):
    img = tmp_path / "img.png"
    Image.fromarray(np.full((64, 64, 3), 230, np.uint8)).save(img)
    pts = _write_points(tmp_path / "img.geojson", [[10.5, 10.5]])
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"defaults": {"mpp": 0.5}, "items": [{"image": str(img), "points": str(pts)}]}))
    with pytest.raises(ConfigError, match="no items in split 'validation' .*train"):
        evaluate_model(spec)


def test_monuseg_model_mode_equals_file_mode_on_its_labels(shared_data: Path, tmp_path: Path):
    """The default model on 2 MoNuSeg images (one with labels, one points only): model mode = file mode on the
    label map computed here (whole-image maps, instances, 2x nearest upsampling) and on ``segment``'s GeoJSON."""
    from wsi_weakseg.engine.inference import Predictor, predict_image
    from wsi_weakseg.engine.instances import label_image, params_from_card
    from wsi_weakseg.engine.segment import SegmentOptions, segment
    from wsi_weakseg.model.card import DEFAULT_MODEL, load_model
    from wsi_weakseg.slide import WorkingView, open_slide

    m = shared_data / "monuseg-train"
    names = sorted(p.stem for p in (m / "images").glob("*.png"))[:2]
    items = [{"image": str(m / "images" / f"{n}.png"), "points": str(m / "points" / f"{n}.geojson"),
              "split": "validation"} for n in names]
    items[0]["labels"] = str(m / "labels" / f"{names[0]}.png")
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"defaults": {"mpp": 0.25}, "items": items}))
    report = evaluate_model(spec, device="cpu")
    assert report["model"] == DEFAULT_MODEL and report["split"] == "validation"
    by_model = {r["name"]: r for r in report["images"]}
    assert by_model[names[0]]["gt_kind"] == "labels" and by_model[names[1]]["gt_kind"] == "points"
    assert 0 < by_model[names[0]]["aji"] < 1 and 0.3 < by_model[names[0]]["f1"] <= 1
    assert 0.3 < by_model[names[1]]["f1"] <= 1 and by_model[names[1]]["aji"] is None

    model = load_model(DEFAULT_MODEL)
    predictor = Predictor(model.net, model.card, "cpu")
    for name in names:
        with open_slide(m / "images" / f"{name}.png", mpp=0.25) as slide:
            view = WorkingView(slide, model.card.mpp)
            assert view.scale == 2.0 and view.origin == (0, 0)
            maps = predict_image(predictor, view.read(0, 0, *view.shape), model.card.context_px)
        labels = label_image(maps, params_from_card(model.card, view.mpp))
        np.save(tmp_path / f"{name}.npy", np.repeat(np.repeat(labels, 2, 0), 2, 1))
    gt0 = m / "labels" / f"{names[0]}.png"
    row = evaluate_files(tmp_path / f"{names[0]}.npy", gt0, mpp=0.25)["images"][0]
    assert _metrics(row) == _metrics(by_model[names[0]])
    row = evaluate_files(tmp_path / f"{names[1]}.npy", m / "points" / f"{names[1]}.geojson", mpp=0.25)["images"][0]
    assert _metrics(row) == _metrics(by_model[names[1]])

    options = SegmentOptions(mpp=0.25, device="cpu", progress=False)
    res = segment(m / "images" / f"{names[0]}.png", tmp_path / "seg", model, options)
    row = evaluate_files(res.geojson, gt0, mpp=0.25)["images"][0]
    assert _metrics(row) == _metrics(by_model[names[0]])
