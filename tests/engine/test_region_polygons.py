"""Region masks → polygons → QuPath annotations, on hand-made masks (exact oracles, no network)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import shapely.affinity
from shapely.geometry import shape

from wsi_weakseg.engine.plan import Frame
from wsi_weakseg.engine.region_model import RegionSet, write_region_geojson
from wsi_weakseg.engine.region_polygons import (
    RegionParams,
    check_mask_size,
    region_labels,
    region_polygons,
    simplified,
)
from wsi_weakseg.errors import ConfigError
from wsi_weakseg.io.geojson import read_features

EXACT = RegionParams(level=128, min_area_px=0, min_hole_px=0, simplify_px=0)
GLAND = {"name": "Gland", "color": [20, 160, 60]}


def two_glands() -> np.ndarray:
    """A ring-shaped gland (40 px, a 3x3 lumen) and a separate L-shaped one (18 px), as a uint8 probability map."""
    mask = np.zeros((12, 16), bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False  # the lumen: a hole
    mask[2:10, 11:13] = True
    mask[9, 9:13] = True  # the L's foot
    return np.where(mask, 230, 20).astype(np.uint8)


def rasterise(polygons, shape_yx, scale=1.0, offset=(0.0, 0.0)) -> np.ndarray:
    """Label image of ``polygons`` (output frame) sampled at working-pixel centres (0 outside all)."""
    ys, xs = np.mgrid[: shape_yx[0], : shape_yx[1]] + 0.5
    out = np.zeros(shape_yx, int)
    for k, poly in enumerate(polygons, start=1):
        out[shapely.contains_xy(poly, xs * scale + offset[0], ys * scale + offset[1])] = k
    return out


def test_polygons_rasterise_back_to_the_mask_holes_included():
    prob = two_glands()
    labels, n = region_labels(prob, EXACT)
    assert n == 2
    polygons = region_polygons(labels, n)
    assert [len(p.interiors) for p in polygons] == [1, 0]
    assert all(p.is_valid for p in polygons)
    assert [p.area for p in polygons] == [(labels == k).sum() for k in (1, 2)] == [40, 18]
    assert np.array_equal(rasterise(polygons, prob.shape), labels)
    assert np.array_equal(labels > 0, prob >= 128)


def test_small_regions_are_dropped_and_small_holes_filled():
    prob = two_glands()
    labels, n = region_labels(prob, RegionParams(level=128, min_area_px=20, min_hole_px=10, simplify_px=0))
    assert n == 1  # the 18-pixel L is dropped
    assert (labels[3:6, 3:6] == 1).all()  # the 9-pixel lumen is filled
    labels, n = region_labels(prob, RegionParams(level=128, min_area_px=18, min_hole_px=9, simplify_px=0))
    assert n == 2 and (labels[3:6, 3:6] == 0).all()  # at the limits both stay


def test_threshold_is_at_or_above_the_level():
    prob = np.array([[127, 128, 0, 255]], np.uint8)
    assert region_labels(prob, EXACT)[0].tolist() == [[0, 1, 0, 2]]


def test_single_pixel_region_spans_its_pixel_in_level0_half_open_convention(tmp_path):
    """Working pixel (row 2, col 3) at 4 level-0 px per working px, frame offset (10, 20): [22, 26) x [28, 32)."""
    prob = np.zeros((5, 6), np.uint8)
    prob[2, 3] = 255
    labels, n = region_labels(prob, EXACT)
    frame = Frame(shape=(5, 6), scale=4.0, origin=(10, 20), bounds_origin=(0, 0))
    regions = RegionSet.of(labels, n, prob, frame)
    path = tmp_path / "r.geojson"
    write_region_geojson(path, regions, 0.0, GLAND, ("fp", "sha"), mpp=2.0, compress=False)
    (feature,) = read_features(path)
    poly = shape(feature["geometry"])
    assert poly.bounds == (22.0, 28.0, 26.0, 32.0) and poly.area == 16.0
    assert feature["properties"]["measurements"]["Area µm^2"] == 4.0  # one 2 µm working pixel


def test_geojson_round_trip_as_classified_annotations_with_holes(tmp_path):
    prob = two_glands()
    labels, n = region_labels(prob, EXACT)
    frame = Frame(shape=prob.shape, scale=2.0, origin=(100, 50), bounds_origin=(100, 50))
    regions = RegionSet.of(labels, n, prob, frame)
    path = tmp_path / "glands.geojson"
    assert write_region_geojson(path, regions, 0.0, GLAND, ("fp", "sha"), mpp=1.0, compress=False) == 2
    features = read_features(path)
    for f, k in zip(features, (1, 2)):
        props = f["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"] == GLAND
        assert props["measurements"]["Label"] == k
        assert props["measurements"]["Mean probability"] == pytest.approx(230 / 255, abs=1e-4)
    assert [len(f["geometry"]["coordinates"]) for f in features] == [2, 1]  # exterior + hole, exterior
    back = [shape(f["geometry"]) for f in features]
    assert np.array_equal(rasterise(back, prob.shape, scale=2.0), labels)  # bounds origin = working origin


def test_roi_clips_regions_and_their_area(tmp_path):
    prob = two_glands()
    labels, n = region_labels(prob, EXACT)
    frame = Frame(shape=prob.shape, scale=1.0, origin=(0, 0), bounds_origin=(0, 0))
    roi = shapely.box(0, 0, 10, 12)  # keeps the ring gland and the L's foot up to x = 10
    regions = RegionSet.of(labels, n, prob, frame, roi)
    assert regions.count == 2 and regions.area_um2(1.0) == 40 + 1


def test_simplification_keeps_valid_polygons_within_tolerance():
    yy, xx = np.mgrid[:60, :60]
    disc = ((yy - 30) ** 2 + (xx - 30) ** 2 < 20**2) & ~((yy - 30) ** 2 + (xx - 30) ** 2 < 6**2)
    labels, n = region_labels(np.where(disc, 255, 0).astype(np.uint8), EXACT)
    (exact,) = region_polygons(labels, n)
    (simple,) = simplified([exact], 1.0)
    assert simple.is_valid and len(simple.interiors) == 1
    assert len(simple.exterior.coords) < len(exact.exterior.coords) / 2
    assert exact.hausdorff_distance(simple) <= 1.0 + 1e-9


def test_oversized_map_is_refused_before_reading():
    check_mask_size((16384, 16384), "s.svs")
    with pytest.raises(ConfigError, match="--roi"):
        check_mask_size((16385, 16384), "s.svs")


def test_labelling_and_tracing_stay_within_the_stated_bytes_per_pixel(monkeypatch):
    """tracemalloc peak from the uint8 map to the polygons, on a 1024² map of blobs with holes.

    Stripes of 64 rows (1024 in use) so that a stripe's temporaries weigh here what they weigh on a whole slide.
    """
    import tracemalloc

    from scipy import ndimage

    from wsi_weakseg.engine import region_polygons as rp

    monkeypatch.setattr(rp, "_ROWS", 64)
    noise = ndimage.gaussian_filter(np.random.default_rng(0).random((128, 128)), 2)
    prob = np.kron((noise > np.median(noise)) * 200 + 20, np.ones((8, 8))).astype(np.uint8)
    params = RegionParams(level=128, min_area_px=100, min_hole_px=50, simplify_px=0)
    region_polygons(*region_labels(prob[:64, :64], params))  # compiled kernels loaded before measuring
    tracemalloc.start()
    try:
        labels, n = region_labels(prob, params)
        polygons = region_polygons(labels, n)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n > 10 and any(p.interiors for p in polygons)
    assert 1 + peak / prob.size <= rp.BYTES_PER_PIXEL  # + the map itself


def test_roi_zeroes_the_labels_outside_it_and_keeps_their_ids_consistent_with_the_clipped_polygons():
    """A slanted ROI: the label image is 0 at pixel centres outside it, the clipped polygons rasterised at pixel
    centres are the label image, a region with no pixel centre inside is dropped (a sliver of it is inside)."""
    prob = two_glands()
    labels, n = region_labels(prob, EXACT)
    frame = Frame(shape=prob.shape, scale=2.0, origin=(10, 4), bounds_origin=(0, 0))  # output = 2 * working + (10, 4)
    # working frame: cuts the ring gland slantwise; takes a 0.4 x 0.3 px corner of the L, none of its pixel centres
    roi_w = shapely.Polygon([(0, 0), (11.4, 0), (11.4, 2.3), (0, 11.5)])
    roi = shapely.affinity.affine_transform(roi_w, [2, 0, 0, 2, 10, 4])
    original = labels.copy()
    regions = RegionSet.of(labels, n, prob, frame, roi)
    ys, xs = np.mgrid[: prob.shape[0], : prob.shape[1]] + 0.5
    inside = shapely.contains_xy(roi_w, xs, ys)
    assert np.array_equal(labels, np.where(inside, original, 0))
    assert regions.ids.tolist() == [1]  # the L: a sliver of its polygon is in the ROI, no pixel centre
    assert shapely.intersection(region_polygons(original, n)[1], roi_w).area > 0
    assert np.array_equal(rasterise(regions.polygons, prob.shape), labels)
    assert regions.mean_probability.tolist() == [pytest.approx(230 / 255)]
