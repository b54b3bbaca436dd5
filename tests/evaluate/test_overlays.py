"""`evaluate --overlays`: categories of a hand-made pair, outline pixels in their colours, the CLI's folder rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_weakseg.cli import main
from wsi_weakseg.evaluate.metrics import panoptic_quality
from wsi_weakseg.evaluate.overlays import BACKGROUND, COLOURS, categorize, overlay
from wsi_weakseg.viz import outline_mask

H, W = 40, 48


def _pair() -> tuple[np.ndarray, np.ndarray]:
    """One match (IoU 56/72), one false positive, one miss, one merge of GT 3 and 4 (each fully covered)."""
    gt = np.zeros((H, W), np.int32)
    pred = np.zeros((H, W), np.int32)
    gt[2:10, 2:10] = 1
    pred[2:10, 3:11] = 10  # match
    pred[2:8, 20:26] = 20  # false positive
    gt[20:28, 2:10] = 2  # miss
    gt[20:26, 20:26] = 3
    gt[20:26, 27:33] = 4
    pred[19:27, 19:34] = 30  # merge: IoU 36/120 with each
    return pred, gt


def _where(rgb: np.ndarray, colour) -> np.ndarray:
    return np.all(rgb == np.asarray(colour, np.uint8), axis=2)


def test_categories_of_the_hand_made_pair():
    pred, gt = _pair()
    cats = categorize(pred, gt)
    assert cats.counts() == {"miss": 1, "fp": 1, "tp": 1, "merge": 1}
    # Predicted objects in label order 10, 20, 30; ground truth 1, 2, 3, 4.
    assert cats.tp.tolist() == [True, False, False] and cats.fp.tolist() == [False, True, False]
    assert cats.merge.tolist() == [False, False, True] and cats.miss.tolist() == [False, True, False, False]
    # The match is the metrics' own: PQ finds exactly this one true positive.
    assert panoptic_quality(pred, gt)["tp"] == 1


def test_merge_definition_edges():
    gt = np.zeros((20, 30), np.int32)
    gt[2:12, 2:12] = 1  # 100 px
    gt[2:4, 13:15] = 2  # 4 px
    pred = np.zeros_like(gt)
    pred[2:12, 2:15] = 7  # covers 1 and 2 entirely; IoU with 1 = 100/130 > 0.5
    cats = categorize(pred, gt)
    assert cats.merge.tolist() == [True] and not cats.tp.any() and not cats.miss.any()  # merge wins over match
    pred[2:12, 2:15] = 0
    pred[2:12, 2:12] = 7
    pred[2:4, 13] = 7  # exactly half of nucleus 2: still a merge (>= 50 %)
    assert categorize(pred, gt).merge.tolist() == [True]
    pred[2, 13] = 0  # a quarter: no merge, a match; nucleus 2 is then a miss
    cats = categorize(pred, gt)
    assert cats.tp.tolist() == [True] and cats.miss.tolist() == [False, True]


def test_outlines_sit_on_the_objects_in_their_colours():
    pred, gt = _pair()
    rgb, counts = overlay(pred, gt)
    assert counts == {"miss": 1, "fp": 1, "tp": 1, "merge": 1}
    pic = rgb[:H, :W]
    expected = {
        "tp": outline_mask(pred) & (pred == 10),
        "fp": outline_mask(pred) & (pred == 20),
        "merge": outline_mask(pred) & (pred == 30),
        "miss": outline_mask(gt) & (gt == 2),
    }
    for k, mask in expected.items():
        assert mask.any()
        np.testing.assert_array_equal(_where(pic, COLOURS[k][1]), mask, err_msg=k)
    # Elsewhere the grey stand-in: ground-truth nuclei mid grey, background light grey.
    rest = ~np.logical_or.reduce(list(expected.values()))
    grey = np.where(gt > 0, BACKGROUND[1], BACKGROUND[0])
    np.testing.assert_array_equal(pic[rest], np.repeat(grey[rest][:, None], 3, axis=1))
    # The legend band below shows a swatch of every colour and text (black).
    band = rgb[H:]
    assert band.shape[0] >= 10 and rgb.shape[1] >= W
    for _, colour in COLOURS.values():
        assert _where(band, colour).sum() >= 16
    assert _where(band, (0, 0, 0)).sum() > 50


def test_outlines_over_an_image_leave_the_other_pixels_alone():
    pred, gt = _pair()
    image = np.random.default_rng(0).integers(30, 200, (H, W, 3), dtype=np.uint8)
    pic = overlay(pred, gt, image)[0][:H, :W]
    drawn = outline_mask(pred) | (outline_mask(gt) & (gt == 2))
    np.testing.assert_array_equal(pic[~drawn], image[~drawn])
    np.testing.assert_array_equal(_where(pic, COLOURS["merge"][1]), outline_mask(pred) & (pred == 30))
    with pytest.raises(ValueError, match="overlay image"):
        overlay(pred, gt, image[:10])


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, gt = _pair()
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    for name, shift in (("one", 0), ("two", 5)):
        np.save(tmp_path / "pred" / f"{name}.npy", np.roll(pred, shift, axis=1))
        Image.fromarray(np.roll(gt, shift, axis=1).astype(np.uint16)).save(tmp_path / "gt" / f"{name}.png")
    return tmp_path / "pred", tmp_path / "gt"


def test_cli_writes_one_overlay_per_image(tmp_path: Path, capsys):
    pred, gt = _folders(tmp_path)
    out = tmp_path / "new" / "overlays"
    assert main(["evaluate", str(pred), str(gt), "--radius-px", "3", "--overlays", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == ["one.overlay.png", "two.overlay.png"]
    assert [r["overlay"] for r in report["images"]] == [str(out / "one.overlay.png"), str(out / "two.overlay.png")]
    p, g = np.roll(_pair()[0], 5, axis=1), np.roll(_pair()[1], 5, axis=1)
    two = np.asarray(Image.open(out / "two.overlay.png").convert("RGB"))[:H, :W]
    np.testing.assert_array_equal(_where(two, COLOURS["tp"][1]), outline_mask(p) & (p == 10))
    np.testing.assert_array_equal(_where(two, COLOURS["miss"][1]), outline_mask(g) & (g == 2))


def test_cli_refuses_a_file_as_the_overlay_folder(tmp_path: Path, capsys):
    pred, gt = _folders(tmp_path)
    bad = tmp_path / "taken"
    bad.write_text("keep me")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["evaluate", str(pred), str(gt), "--radius-px", "3", "--overlays", str(bad)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1 and err[0].startswith("wsi-weakseg: error: ")
    assert "--overlays" in err[0] and "not a folder" in err[0]
    assert bad.read_text() == "keep me" and sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_model_mode_draws_over_the_image(tmp_path: Path):
    """Dark discs on pink: the overlay of a model run has the image under the outlines."""
    from wsi_weakseg.evaluate.run import evaluate_model

    h, w = 128, 128
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.full((h, w, 3), (232, 168, 200), np.uint8)
    labels = np.zeros((h, w), np.int32)
    for k, (r, c) in enumerate([(r, c) for r in (24, 64, 104) for c in (24, 64, 104)], start=1):
        disc = (yy - r) ** 2 + (xx - c) ** 2 <= 49
        rgb[disc] = (92, 60, 140)
        labels[disc] = k
    Image.fromarray(rgb).save(tmp_path / "img.png")
    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "labels.png")
    (tmp_path / "img.geojson").write_text(json.dumps({"type": "Feature", "properties": {"name": "Nucleus"},
                                                      "geometry": {"type": "MultiPoint", "coordinates": [[24, 24]]}}))
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"defaults": {"mpp": 0.5}, "items": [
        {"image": "img.png", "points": "img.geojson", "labels": "labels.png", "split": "test"},
        {"image": "img.png", "points": "img.geojson", "split": "test"}]}))
    report = evaluate_model(spec, split="test", device="cpu", overlays=tmp_path / "ov")
    assert [p.name for p in (tmp_path / "ov").iterdir()] == ["img.overlay.png"]  # the points-only item: none
    assert report["images"][0]["overlay"] == str(tmp_path / "ov" / "img.overlay.png")
    assert "overlay" not in report["images"][1]
    pic = np.asarray(Image.open(tmp_path / "ov" / "img.overlay.png").convert("RGB"))[:h, :w]
    coloured = np.logical_or.reduce([_where(pic, c) for _, c in COLOURS.values()])
    assert coloured.any()
    np.testing.assert_array_equal(pic[~coloured], rgb[~coloured])
