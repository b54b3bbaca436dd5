"""Outlines QuPath can read: every polygon valid, and rasterising it gives back its instance's pixels."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import shapely.validation
from scipy import ndimage as ndi

from wsi_weakseg.engine.instances import InstanceParams, clean_labels, saddle_cuts
from wsi_weakseg.engine.outlines import trace_outlines
from wsi_weakseg.io.geojson import nucleus_feature, stable_uuid, valid_polygons

PARAMS = InstanceParams(foreground=128, centre=60, peak_radius=2, max_cost=20.0, path_weight=2.0, min_area=5)


def _polygon(rings: list[np.ndarray]) -> shapely.Polygon:
    return shapely.Polygon(rings[0], rings[1:])


def _rasterise(poly: shapely.Polygon, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre (i + 0.5, j + 0.5) lies inside: QuPath's pixel (i, j) spans [i, i+1) x [j, j+1)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return shapely.contains_xy(poly, xx + 0.5, yy + 0.5)


def _saddles(labels: np.ndarray) -> int:
    return int(saddle_cuts(labels, np.zeros(labels.shape, bool)).sum())


def test_tracer_keeps_a_4_connected_mask_with_a_saddle_valid():
    """A hole touching the exterior at one corner: two rings meeting at a point, not one ring passing twice."""
    lab = np.zeros((8, 8), np.int32)
    lab[1:6, 1:6] = 1
    lab[1, 5] = 0  # notch of exterior background
    lab[2, 4] = 0  # hole, diagonal to the notch: a saddle at corner (x 5, y 2)
    rings = trace_outlines(lab, [1])[1]
    poly = _polygon(rings)
    assert len(rings) == 2 and poly.is_valid, shapely.validation.explain_validity(poly)
    np.testing.assert_array_equal(_rasterise(poly, lab.shape), lab == 1)


def _random_label_map(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blobs, enclosed fragments, stray pixels and checkerboard patches; one marker per instance."""
    h, w = int(rng.integers(8, 28)), int(rng.integers(8, 28))
    lab = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[0:h, 0:w]
    n = 0
    for _ in range(int(rng.integers(1, 6))):  # blobs, each with a few enclosed fragments
        n += 1
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 8)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        lab[blob & (rng.random((h, w)) < 0.93)] = n  # ragged, with holes
        for _ in range(int(rng.integers(0, 4))):
            n += 1
            fy, fx = rng.integers(0, h), rng.integers(0, w)
            lab[fy : fy + int(rng.integers(1, 3)), fx : fx + int(rng.integers(1, 3))] = n
    for _ in range(int(rng.integers(0, 3))):  # checkerboard patches of two labels, or a label and background
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        ph, pw = int(rng.integers(2, 7)), int(rng.integers(2, 7))
        a = int(rng.integers(1, n + 1))
        b = int(rng.integers(0, n + 1))
        chk = (yy + xx) % 2 == 0
        sel = (yy >= y0) & (yy < y0 + ph) & (xx >= x0) & (xx < x0 + pw)
        lab[sel & chk] = a
        lab[sel & ~chk] = b
    k = int(rng.integers(0, h * w // 6 + 1))  # stray pixels
    lab[rng.integers(0, h, k), rng.integers(0, w, k)] = rng.integers(0, n + 1, k)
    present = np.unique(lab)[1:]
    lut = np.zeros(n + 1, np.int32)
    lut[present] = np.arange(1, present.size + 1)
    lab = lut[lab]
    markers = np.array([np.argwhere(lab == i)[rng.integers(0, (lab == i).sum())] for i in range(1, present.size + 1)])
    return lab, markers.reshape(-1, 2)


def test_random_maps_give_valid_polygons_that_rasterise_back_exactly():
    """200 maps full of saddles, diagonal touches and enclosed fragments."""
    rng = np.random.default_rng(20261201)
    input_saddles = input_invalid = checked = with_holes = 0
    for _ in range(200):
        lab, markers = _random_label_map(rng)
        if len(markers):
            raw = trace_outlines(lab, np.arange(1, len(markers) + 1))
            input_invalid += sum(not _polygon(r).is_valid for r in raw.values())
        input_saddles += _saddles(lab)
        params = InstanceParams(**{**PARAMS.__dict__, "min_area": int(rng.integers(1, 7))})
        out = clean_labels(lab, markers, params)
        assert _saddles(out) == 0
        ids = np.unique(out)[1:]
        rings = trace_outlines(out, ids)
        for i in ids.tolist():
            mask = out == i
            assert mask[tuple(markers[i - 1])], "an instance keeps its marker"
            assert mask.sum() >= params.min_area
            assert ndi.label(mask)[1] == 1, "4-connected"
            poly = _polygon(rings[i])
            assert poly.is_valid, (i, shapely.validation.explain_validity(poly))
            all_rings = [shapely.LinearRing(r) for r in rings[i]]
            assert all(r.is_simple for r in all_rings)
            for a in range(len(all_rings)):  # no two rings even touch
                for b in range(a + 1, len(all_rings)):
                    assert not all_rings[a].intersects(all_rings[b])
            np.testing.assert_array_equal(_rasterise(poly, out.shape), mask)
            checked += 1
            with_holes += len(rings[i]) > 1
    # the generator has teeth: traced as they come, over a thousand of these polygons would be invalid
    assert input_saddles > 1000 and input_invalid > 1000 and checked > 500 and with_holes > 10


@pytest.mark.parametrize("seed", range(3))
def test_clean_labels_is_idempotent(seed):
    rng = np.random.default_rng(seed)
    for _ in range(30):
        lab, markers = _random_label_map(rng)
        once = clean_labels(lab, markers, PARAMS)
        np.testing.assert_array_equal(clean_labels(once, markers, PARAMS), once)


def test_valid_polygons_keeps_valid_ones_as_they_are() -> None:
    square = np.vstack([np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float), [[0, 0]]])
    hole = np.vstack([np.array([[1, 1], [2, 1], [2, 2], [1, 2]], float), [[1, 1]]])
    polygons = [[square], [square + 10, hole + 10]]
    rings, repaired = valid_polygons(polygons)
    assert repaired.tolist() == [False, False]
    assert all(np.array_equal(a, b) for p, q in zip(rings, polygons) for a, b in zip(p, q))
    assert valid_polygons([])[0] == [] and valid_polygons([])[1].shape == (0,)


def test_valid_polygons_repairs_a_self_touching_ring_deterministically() -> None:
    """A traced ring passing one corner twice (QuPath: "Ring Self-intersection" rejects the file)."""
    touching = np.array([[1, 1], [5, 1], [5, 2], [4, 2], [4, 3], [5, 3], [5, 2], [6, 2], [6, 6], [1, 6], [1, 1]], float)
    bowtie = np.array([[0, 0], [4, 4], [4, 0], [0, 4], [0, 0]], float) + [[10, 0]]
    big_bowtie = np.array([[0, 0], [2, 2], [2, 0], [0, 4], [0, 0]], float) + [[20, 0]]
    polygons = [[touching], [bowtie], [big_bowtie]]
    rings, repaired = valid_polygons(polygons)
    assert repaired.tolist() == [True, True, True]
    for r in rings:
        poly = shapely.Polygon(r[0], r[1:])
        assert poly.is_valid and poly.geom_type == "Polygon"
    assert shapely.Polygon(rings[0][0], rings[0][1:]).area == pytest.approx(23.0)  # its pixels; hole at (4, 2)
    parts = shapely.get_parts(shapely.make_valid(shapely.Polygon(big_bowtie)))
    assert len(parts) == 2 and shapely.Polygon(rings[2][0]).area == pytest.approx(max(g.area for g in parts))
    again, _ = valid_polygons(polygons)
    assert all(np.array_equal(a, b) for p, q in zip(again, rings) for a, b in zip(p, q))
    feature = nucleus_feature(stable_uuid("t"), rings[0][0], holes=rings[0][1:], measurements={})
    assert shapely.geometry.shape(feature["geometry"]).is_valid


def _random_labels(rng: np.random.Generator, shape=(40, 52), n=9) -> np.ndarray:
    """Blobs of random instances with speckle: saddles, diagonal touches, holes, split pieces, image borders."""
    lab = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        r = rng.integers(2, 9)
        yy, xx = np.ogrid[: shape[0], : shape[1]]
        lab[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = k
    speck = rng.random(shape) < 0.25
    lab[speck] = rng.integers(0, n + 1, size=int(speck.sum()))
    return lab


@pytest.mark.parametrize("seed", range(12))
def test_compiled_tracer_gives_the_vectorised_rings_vertex_for_vertex(seed):
    """The compiled scan (engine._trace) against the numpy tracer it replaced, on arbitrary label images.

    Same rings, same start corners, same direction, same ring order and the same saddle rule, including
    instances that are not 4-connected (each piece its own ring) and speckled saddles everywhere.
    """
    from _reference_outlines import trace_outlines as reference

    lab = _random_labels(np.random.default_rng(seed))
    ids = [k for k in np.unique(lab) if k > 0][::2]  # a subset, as a block traces only the nuclei it owns
    got, want = trace_outlines(lab, ids), reference(lab, ids)
    assert got.keys() == want.keys()
    for k in want:
        assert len(got[k]) == len(want[k])
        for a, b in zip(got[k], want[k]):
            np.testing.assert_array_equal(a, b)
