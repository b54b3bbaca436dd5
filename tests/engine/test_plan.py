"""Tile planning, the tissue rule and output names: wsi_weakseg.engine.plan, .regions, .outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.engine.instances import InstanceParams
from wsi_weakseg.engine.outputs import check_collision, output_names, stale_outputs
from wsi_weakseg.engine.plan import Frame, anchor_halo, plan_tiles, selection_margin
from wsi_weakseg.engine.regions import select_tissue
from wsi_weakseg.engine.segment import SegmentOptions, segment
from wsi_weakseg.errors import ConfigError, GeoJSONError, OutputError
from wsi_weakseg.slide import open_slide
from wsi_weakseg.slide.reader import ImageSlide
from wsi_weakseg.slide.testing import write_pyramid_tiff

MPP = 0.5


def _params(reach: int, peak: int) -> InstanceParams:
    return InstanceParams(foreground=128, centre=77, peak_radius=peak, max_cost=reach - 0.5, path_weight=2.0,
                          min_area=4)


def test_selection_margin_is_context_or_anchor_halo():
    p = _params(reach=10, peak=3)
    assert p.reach == 10
    assert anchor_halo(p) == 2 * 10 + 3 + 2
    assert selection_margin(16, p) == 25
    assert selection_margin(64, p) == 64


def test_plan_tiles_hand_worked():
    # 4 x 4 grid of 100 px tiles, level-0 = 2 x working, origin (10, 20), bounds origin (10, 20)
    frame = Frame(shape=(400, 400), scale=2.0, origin=(10, 20), bounds_origin=(10, 20))
    # tissue: one level-0 point-sized box at working (row 150, col 250) -> level-0 x 510, y 320
    spot = (510.0, 320.0, 512.0, 322.0)

    def has_tissue(x0, y0, x1, y1):
        return x0 < spot[2] and spot[0] < x1 and y0 < spot[3] and spot[1] < y1

    plan = plan_tiles(frame, 100, 0, has_tissue)
    assert plan.tiles == [(100, 200)] and plan.total == 16 and plan.margin == 0
    # with a 60 px margin the tiles whose grown box [y-60, y+160) x [x-60, x+160) holds (150..151, 250..251)
    plan = plan_tiles(frame, 100, 60, has_tissue)
    assert plan.tiles == [(0, 100), (0, 200), (0, 300), (100, 100), (100, 200), (100, 300),
                          (200, 100), (200, 200), (200, 300)]
    # an ROI (output frame) far from the spot leaves nothing to run
    from shapely.geometry import box

    assert plan_tiles(frame, 100, 60, has_tissue, roi=box(0, 0, 50, 50)).tiles == []
    assert plan_tiles(frame, 100, 60, has_tissue, roi=box(480, 280, 560, 360)).tiles == plan.tiles


def test_frame_boxes_follow_the_half_pixel_convention():
    frame = Frame(shape=(10, 10), scale=4.0, origin=(100, 200), bounds_origin=(60, 80))
    assert frame.offset == (40, 120)
    assert frame.box0(1, 2, 3, 4) == (108.0, 204.0, 124.0, 216.0)
    from shapely.geometry import box

    # working pixel (row 0, col 0) spans output [40, 44) x [120, 124): its centre (42, 122) is the anchor
    roi = box(41.9, 121.9, 42.1, 122.1)
    np.testing.assert_array_equal(frame.anchors_in(roi, np.array([0, 0, 1]), np.array([0, 1, 0])),
                                  [True, False, False])


def test_tissue_rule_by_input_kind(tmp_path):
    rgb, _ = synthetic_he(size=(256, 256), mpp=MPP)
    plain = ImageSlide(rgb, tmp_path / "crop.png", mpp=MPP)
    sel = select_tissue("auto", plain)
    assert sel.rule == "all" and sel.selected_fraction == 1.0 and sel.has_tissue(0, 0, 1, 1)
    assert 0 < sel.fraction < 1  # tissue area is still measured
    path = write_pyramid_tiff(tmp_path / "s.tiff", rgb, MPP, levels=2)
    with open_slide(path) as slide:
        assert select_tissue("auto", slide).rule == "mask"
        assert select_tissue("all", slide).rule == "all"
        assert not select_tissue("auto", slide).has_tissue(0, 0, 8, 8)  # glass corner
    with pytest.raises(ConfigError, match="--tissue"):
        select_tissue(" ", plain)


def test_tissue_annotations_rule(tmp_path):
    rgb = np.full((200, 300, 3), 245, np.uint8)
    slide = ImageSlide(rgb, tmp_path / "x.png", mpp=MPP)
    gj = tmp_path / "tissue.geojson"
    square = [[[100, 50], [150, 50], [150, 100], [100, 100], [100, 50]]]
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square},
         "properties": {"objectType": "annotation"}}]}))
    sel = select_tissue(str(gj), slide)
    assert sel.rule == "annotations" and sel.option == str(gj)
    assert sel.area_mm2 == pytest.approx(50 * 50 * MPP**2 / 1e6)
    assert sel.fraction == pytest.approx(2500 / 60000)
    assert sel.has_tissue(149.5, 99.5, 160, 110) and not sel.has_tissue(150, 100, 160, 110)  # half-open
    with pytest.raises(GeoJSONError, match="--tissue"):
        select_tissue(str(tmp_path / "missing.geojson"), slide)


def test_output_names_collisions_and_stale_format(tmp_path):
    names = output_names("/d/a.svs", compress=False)
    assert (names.geojson, names.zarr, names.run_json, names.stale) == (
        "a.geojson", "a.ome.zarr", "a.run.json", "a.geojson.gz")
    a, b = tmp_path / "a.svs", tmp_path / "sub" / "a.svs"
    previous = {"slide": {"path": str(a.resolve()), "fingerprint": "f1"}, "config": {"compress": True}}
    check_collision(previous, names, a, "f2", tmp_path)  # same path (the file was replaced)
    check_collision(previous, names, b, "f1", tmp_path)  # same content (the file was moved)
    with pytest.raises(OutputError, match="choose another -o"):
        check_collision(previous, names, b, "f2", tmp_path)
    assert stale_outputs(previous, names, tmp_path) == [tmp_path / "a.geojson.gz"]
    assert stale_outputs(previous, output_names(a, compress=True), tmp_path) == []
    assert stale_outputs(None, names, tmp_path) == []


@pytest.fixture(scope="module")
def tissue_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rgb, _ = synthetic_he(size=(512, 1280), mpp=MPP, seed=3)
    rgb[:, 840:] = 245  # glass, cutting nuclei at the tissue edge
    return write_pyramid_tiff(tmp_path_factory.mktemp("plan") / "t.tiff", rgb, MPP)


def _polygons(path: Path) -> set[str]:
    feats = json.loads(path.read_text())["features"]
    return {json.dumps(f["geometry"]["coordinates"]) for f in feats}


def test_skipped_tiles_change_no_nucleus_in_tissue(tissue_slide, tmp_path):
    """Oracle: with 128-px tiles the tissue rule skips glass tiles, yet every nucleus equals the one a
    run over every tile finds (parameter-free baseline: tiles are exact), and the counts agree."""
    opts = dict(tile_size=128, device="cpu", progress=False)
    auto = segment(tissue_slide, tmp_path / "auto", "hematoxylin-baseline", SegmentOptions(**opts))
    full = segment(tissue_slide, tmp_path / "all", "hematoxylin-baseline", SegmentOptions(tissue="all", **opts))
    run_auto = json.loads(auto.run_json.read_text())
    run_all = json.loads(full.run_json.read_text())
    assert run_auto["tissue"]["rule"] == "mask" and run_all["tissue"]["rule"] == "all"
    assert run_auto["tiles"]["processed"] < run_all["tiles"]["processed"] == run_all["tiles"]["total"]
    assert run_auto["tissue"]["area_mm2"] == run_all["tissue"]["area_mm2"]
    assert _polygons(auto.geojson) == _polygons(full.geojson) and auto.n_nuclei > 20
