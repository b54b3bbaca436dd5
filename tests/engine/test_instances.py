"""Instance rules: half-pixel outlines, window-independent markers and labels, clean-up."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy import ndimage as ndi
from shapely.geometry import Polygon
from skimage.draw import disk

from wsi_weakseg.engine import merge
from wsi_weakseg.engine.instances import (
    InstanceParams,
    assign_pixels,
    clean_labels,
    find_markers,
    label_image,
    outline,
    saddle_cuts,
)
from wsi_weakseg.engine.outlines import trace_outlines
from wsi_weakseg.engine.records import load_core_keys
from wsi_weakseg.engine.schedule import InstanceStage
from wsi_weakseg.errors import ProcessingError

PARAMS = InstanceParams(foreground=128, centre=60, peak_radius=2, max_cost=20.0, path_weight=2.0, min_area=5)


def test_outline_single_pixel_is_its_unit_square():
    """Pixel (row 2, col 3) spans [3, 4) x [2, 3) in QuPath's convention, not centred on (3, 2)."""
    mask = np.zeros((5, 6), bool)
    mask[2, 3] = True
    ring = outline(mask)
    assert ring[0].tolist() == ring[-1].tolist()
    assert sorted(map(tuple, ring[:-1].tolist())) == [(3.0, 2.0), (3.0, 3.0), (4.0, 2.0), (4.0, 3.0)]
    assert Polygon(ring).area == 1.0


def test_outline_hand_worked_l_shape():
    mask = np.zeros((6, 7), bool)
    mask[1:4, 1:3] = True  # 3 x 2 block
    mask[3, 3:5] = True  # foot to the right on the bottom row
    poly = Polygon(outline(mask))
    assert poly.is_valid and poly.area == 8.0
    assert set(map(tuple, outline(mask)[:-1].tolist())) == {(1, 1), (3, 1), (3, 3), (5, 3), (5, 4), (1, 4)}


@pytest.mark.parametrize("seed", range(5))
def test_outline_rasterises_back_to_the_mask(seed):
    rng = np.random.default_rng(seed)
    noise = rng.random((40, 40)) > 0.4
    comp, _ = ndi.label(noise)  # 4-connected components
    biggest = np.bincount(comp.ravel())[1:].argmax() + 1
    anchor = np.argwhere(comp == biggest)[:1]
    labels = clean_labels(np.where(noise, 1, 0).astype(np.int32), anchor, PARAMS)
    mask = np.pad(labels == 1, 1)
    assert mask.sum() >= 20  # a ragged blob, holes filled
    poly = Polygon(outline(mask))
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    assert poly.is_valid
    np.testing.assert_array_equal(shapely.contains_xy(poly, xx + 0.5, yy + 0.5), mask)


def test_plateau_gives_one_marker_at_its_first_raster_pixel_wherever_the_window_starts():
    centre = np.zeros((30, 30), np.uint8)
    centre[10:12, 10:13] = 200  # 2 x 3 plateau
    fg = np.full_like(centre, 255)
    for oy, ox in ((0, 0), (3, 7), (9, 9)):
        win_c, win_f = centre[oy:, ox:], fg[oy:, ox:]
        m = find_markers(win_c, win_f, PARAMS)
        assert (m + [oy, ox]).tolist() == [[10, 10]]


def test_markers_on_the_image_border_are_kept():
    centre = np.zeros((20, 20), np.uint8)
    centre[0, 5] = 250
    centre[19, 19] = 250
    m = find_markers(centre, np.full_like(centre, 255), PARAMS)
    assert m.tolist() == [[0, 5], [19, 19]]


def _blobs(shape=(120, 160), seed=0):
    rng = np.random.default_rng(seed)
    centre = np.zeros(shape, np.float64)
    for _ in range(40):
        y, x = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(4, 8)
        rr, cc = disk((y, x), r + 1, shape=shape)
        val = 1 - np.hypot(rr - y, cc - x) / (r + 1)
        centre[rr, cc] = np.maximum(centre[rr, cc], val)
    c8 = np.round(centre * 255).astype(np.uint8)
    fg = np.where(centre > 0.15, 255, 0).astype(np.uint8)
    return np.stack([fg, c8])


def test_touching_nuclei_split_along_the_valley():
    shape = (40, 60)
    c = np.zeros(shape)
    for x in (20, 33):
        rr, cc = disk((20, x), 8, shape=shape)
        c[rr, cc] = np.maximum(c[rr, cc], 1 - np.hypot(rr - 20, cc - x) / 9)
    centre = np.round(c * 255).astype(np.uint8)
    fg = np.where(c > 0.1, 255, 0).astype(np.uint8)
    markers = find_markers(centre, fg, PARAMS)
    assert markers.tolist() == [[20, 20], [20, 33]]
    labels, _ = assign_pixels(centre, fg, markers, PARAMS)
    labels = clean_labels(labels, markers, PARAMS)
    row = labels[20]
    assert set(row[13:26]) == {1} and set(row[28:40]) == {2}  # the split lies in the valley (x 26-27)


def test_clean_labels_fills_holes_and_drops_fragments_and_small():
    labels = np.zeros((20, 20), np.int32)
    labels[2:9, 2:9] = 1
    labels[5, 5] = 0  # a hole
    labels[12, 12] = 1  # a detached fragment of instance 1
    labels[15:17, 2:4] = 2  # 4 pixels < min_area 5
    markers = np.array([[3, 3], [15, 2]])
    out = clean_labels(labels, markers, PARAMS)
    assert out[5, 5] == 1 and out[12, 12] == 0 and not (out == 2).any()
    assert (out == 1).sum() == 49


def _run_blocks(maps, block, params, work, num_workers=1):
    """Every block of complete maps through the instance stage: (global anchor keys per pixel, block results)."""
    with InstanceStage(maps, work, params, block, num_workers) as stage:
        results = stage.wait()
        keys = np.zeros(stage.keys.shape, np.int64)
        for by, bx in stage.blocks:  # each chunk holds window-local labels, its record their anchor keys
            sl = (slice(by * block, (by + 1) * block), slice(bx * block, (bx + 1) * block))
            keys[sl] = load_core_keys(work / "blocks", (by, bx))[stage.keys[sl]]
        return keys, results


@pytest.mark.parametrize("block", [32, 64, 96])
def test_blocks_equal_whole_on_synthetic_maps(tmp_path, block):
    maps = _blobs()
    whole_keys, _ = _run_blocks(maps, 256, PARAMS, tmp_path / "whole")
    whole = list(merge.iter_nuclei(tmp_path / "whole" / "blocks", merge.block_grid(maps.shape[1:], 256)))
    keys, _ = _run_blocks(maps, block, PARAMS, tmp_path / "b", num_workers=2)
    nuclei = list(merge.iter_nuclei(tmp_path / "b" / "blocks", merge.block_grid(maps.shape[1:], block)))
    assert len(whole) >= 20
    np.testing.assert_array_equal(keys, whole_keys)
    assert [n.key for n in nuclei] == [n.key for n in whole]
    for a, b in zip(nuclei, whole):
        assert all(np.array_equal(x, y) for x, y in zip(a.rings, b.rings))


def test_keys_to_ids_consecutive():
    keys = np.array([[0, 57, 57], [12, 0, 99]])
    ids = merge.keys_to_ids(keys, np.array([12, 57, 99]))
    assert ids.tolist() == [[0, 2, 2], [1, 0, 3]]


def _n_saddles(labels: np.ndarray) -> int:
    return int(saddle_cuts(labels, np.zeros(labels.shape, bool)).sum())


def _valid(labels: np.ndarray, i: int) -> bool:
    rings = trace_outlines(labels, [i])[i]
    return Polygon(rings[0], rings[1:]).is_valid


def _notched_square() -> np.ndarray:
    """Instance 1: a 5 x 5 square without its top-right pixel; instance 2 one pixel inside, diagonal to the notch."""
    lab = np.zeros((8, 8), np.int32)
    lab[1:6, 1:6] = 1
    lab[1, 5] = 0
    lab[2, 4] = 2
    return lab


def test_dropped_enclosed_fragment_leaves_no_self_touching_ring():
    """The QuPath bug: fill-then-drop left a hole touching the outline at a corner ("Ring Self-intersection")."""
    lab = _notched_square()
    hole_left = lab.copy()
    hole_left[2, 4] = 0  # what the old order (fill pockets, then drop small) produced
    assert _n_saddles(hole_left) == 1  # instance 1 touches itself at corner (x 5, y 2)
    out = clean_labels(lab, np.array([[3, 2], [2, 4]]), PARAMS)
    assert (out == 2).sum() == 0 and out[2, 4] == 1  # dropped first, then its pocket is filled
    assert (out == 1).sum() == 24 and _valid(out, 1)


def test_kept_enclosed_instance_touching_the_exterior_diagonally_is_cut_free():
    lab = np.zeros((9, 9), np.int32)
    lab[1:7, 1:7] = 1
    lab[1, 6] = 0  # notch
    lab[2:4, 4:6] = 2
    lab[4, 5] = 2  # 5 pixels: kept; (2, 5) touches the notch (1, 6) diagonally
    markers = np.array([[5, 2], [2, 4]])
    assert _n_saddles(lab) == 1
    out = clean_labels(lab, markers, PARAMS)
    assert out[2, 6] == 0  # the lower pixel of instance 1's diagonal pair is cut
    assert (out == 1).sum() == 29 and (out == 2).sum() == 5
    assert _n_saddles(out) == 0 and _valid(out, 1) and _valid(out, 2)


def test_saddle_cut_spares_the_marker():
    lab = np.zeros((4, 4), np.int32)
    lab[1, 1] = lab[2, 2] = 1
    assert saddle_cuts(lab, np.zeros(lab.shape, bool)).tolist() == _at(lab.shape, 2, 2).tolist()  # the lower one
    assert saddle_cuts(lab, _at(lab.shape, 2, 2)).tolist() == _at(lab.shape, 1, 1).tolist()
    out = clean_labels(lab, np.array([[2, 2]]), InstanceParams(**{**PARAMS.__dict__, "min_area": 1}))
    assert np.argwhere(out).tolist() == [[2, 2]]


def _at(shape, r, c):
    m = np.zeros(shape, bool)
    m[r, c] = True
    return m


@pytest.mark.parametrize(
    ("keys", "sorted_keys"),
    [
        (np.array([[0, 57], [13, 99]]), np.array([12, 57, 99])),  # 13 between two anchors: would take id 2
        (np.array([0, 100]), np.array([12, 57, 99])),  # beyond the last anchor
        (np.array([0, 5]), np.zeros(0, np.int64)),  # no nucleus at all
    ],
)
def test_keys_to_ids_refuses_keys_of_no_emitted_nucleus(keys, sorted_keys):
    with pytest.raises(ProcessingError, match="no emitted nucleus"):
        merge.keys_to_ids(keys, sorted_keys)


def test_keys_to_ids_background_only():
    assert merge.keys_to_ids(np.zeros((2, 2), np.int64), np.zeros(0, np.int64)).tolist() == [[0, 0], [0, 0]]


def _noisy(seed: int, shape=(120, 160)) -> np.ndarray:
    """Ragged foreground with checkerboard patches: many fragments dropped and pockets absorbed."""
    rng = np.random.default_rng(seed)
    c = ndi.gaussian_filter(rng.random(shape), 2.0)
    c = (c - c.min()) / (c.max() - c.min())
    fg = (rng.random(shape) < 0.6) | (c > 0.7)
    chk = np.add.outer(np.arange(shape[0]), np.arange(shape[1])) % 2 == 0
    fg = np.where(ndi.gaussian_filter(rng.random(shape), 4) > 0.52, chk, fg)
    return np.stack([np.where(fg, 255, 0).astype(np.uint8), np.round(c * 255).astype(np.uint8)])


NOISY = InstanceParams(foreground=128, centre=60, peak_radius=1, max_cost=10.0, path_weight=6.0, min_area=12)


@pytest.mark.parametrize("block", [32, 64])
def test_blocks_equal_whole_on_ragged_maps(tmp_path, block):
    maps = _noisy(1)
    whole = label_image(maps, NOISY)
    blocks = merge.block_grid(maps.shape[1:], block)
    keys, results = _run_blocks(maps, block, NOISY, tmp_path / "b")
    nuclei = list(merge.iter_nuclei(tmp_path / "b" / "blocks", blocks))
    ids = merge.keys_to_ids(keys, np.array([n.key for n in nuclei]))
    assert whole.max() >= 100 and sum(r.n_repaired for r in results) == 0
    np.testing.assert_array_equal(ids, whole)
    assert _n_saddles(whole) == 0
    for i, n in enumerate(nuclei, start=1):
        poly = Polygon(n.rings[0], n.rings[1:])
        assert poly.is_valid and poly.area == n.area_px == (whole == i).sum()


def test_invalid_outline_is_repaired_counted_and_warned(tmp_path, monkeypatch, caplog):
    """Defence in depth: a polygon the tracer got wrong never reaches the GeoJSON as it is."""
    bowtie = np.array([[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]], np.float64)
    real = merge.trace_flat

    def bowties(lab, ids):
        traced = real(lab, ids)[0]
        n = len(traced)
        return (traced, np.tile(bowtie, (n, 1)), np.arange(n + 1, dtype=np.int64) * len(bowtie),
                np.arange(n + 1, dtype=np.int64))

    monkeypatch.setattr(merge, "trace_flat", bowties)
    maps = _blobs()
    keys = np.zeros(maps.shape[1:], np.int64)
    with caplog.at_level("WARNING", logger="wsi_weakseg.engine.merge"):
        res = merge.process_block(maps, keys, 0, 0, 256, PARAMS, tmp_path)
    assert res.n_repaired == len(res.keys) >= 20
    assert any("repaired" in r.getMessage() for r in caplog.records)
    nuclei = list(merge.iter_nuclei(tmp_path, [(0, 0)]))
    assert all(Polygon(n.rings[0], n.rings[1:]).is_valid for n in nuclei)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_dijkstra_equals_skimage_mcp(seed):
    """The compiled search (engine/_geodesic.py) against skimage's MCP_Geometric on random costs with
    impassable pixels: same costs to the last bit and the same least-cost marker wherever cost <= limit."""
    from skimage.graph import MCP_Geometric

    from wsi_weakseg.engine._geodesic import geodesic_assign

    rng = np.random.default_rng(seed)
    step = 1.0 + 2.0 * rng.random((120, 150))
    step[rng.random(step.shape) < 0.3] = np.inf
    free = np.argwhere(np.isfinite(step))
    markers = free[rng.choice(len(free), 40, replace=False)]
    limit = 25.0
    owner, cost = geodesic_assign(step, markers[:, 0].copy(), markers[:, 1].copy(), limit)
    mcp = MCP_Geometric(step, fully_connected=True)
    ref_cost, _ = mcp.find_costs([tuple(m) for m in markers])
    within = ref_cost <= limit
    np.testing.assert_array_equal(np.isfinite(cost), within)
    np.testing.assert_array_equal(cost[within], ref_cost[within])
    # owner: brute force, the marker whose own single-source cost is least
    single = np.stack([MCP_Geometric(step, fully_connected=True).find_costs([tuple(m)])[0] for m in markers])
    expect = single.argmin(axis=0) + 1
    np.testing.assert_array_equal(owner[within], expect[within])
    assert (owner[~within] == 0).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_split_budget_equals_numpy_ring_test(seed):
    """Labels within the budget and the cut markers, in one compiled pass, against the numpy expressions they
    replaced: ``np.where(cost <= budget, owner, 0)`` and the flags of the owners in (budget, limit]."""
    from wsi_weakseg.engine._geodesic import geodesic_assign, split_budget

    rng = np.random.default_rng(seed)
    step = 1.0 + 0.5 * rng.random((90, 110))
    step[rng.random(step.shape) < 0.2] = np.inf
    free = np.argwhere(np.isfinite(step))
    markers = free[rng.choice(len(free), 200, replace=False)]
    budget, limit = 6.0, 6.0 + 2 * np.sqrt(2) * 1.5
    owner, cost = geodesic_assign(step, markers[:, 0].copy(), markers[:, 1].copy(), limit)
    labels, flags = split_budget(owner, cost, budget, len(markers))
    np.testing.assert_array_equal(labels, np.where(cost <= budget, owner, 0))
    ring = (cost > budget) & (cost <= limit) & (owner > 0)
    expect = np.zeros(len(markers) + 1, bool)
    expect[np.unique(owner[ring])] = True
    expect[0] = False
    assert expect.sum() > 3 and (~expect[1:]).sum() > 0  # both outcomes occur, so the test can fail
    np.testing.assert_array_equal(flags, expect)


@pytest.mark.parametrize("seed", [0, 1])
def test_assign_window_is_the_three_kernels_composed(seed):
    """The engine's one-call assignment equals step_costs -> geodesic_assign -> split_budget, the kernels the
    oracles above check (MCP, the numpy step expression, the numpy ring test)."""
    from wsi_weakseg.engine._geodesic import (
        assign_window,
        geodesic_assign,
        split_budget,
        step_costs,
    )

    rng = np.random.default_rng(seed)
    centre = rng.integers(0, 256, (70, 90), dtype=np.uint8)
    fg = rng.integers(0, 256, (70, 90), dtype=np.uint8)
    rows, cols = np.nonzero(fg >= 100)
    pick = rng.choice(rows.size, 40, replace=False)
    mr, mc = rows[pick].astype(np.int64), cols[pick].astype(np.int64)
    args = (100, 2.0, 1e-6, 13, 7, 500)
    step = step_costs(centre, fg, *args)
    owner, cost = geodesic_assign(step, mr, mc, 9.5)
    expect = split_budget(owner, cost, 6.0, 40)
    labels, flags = assign_window(centre, fg, *args, mr, mc, 6.0, 9.5)
    np.testing.assert_array_equal(labels, expect[0])
    np.testing.assert_array_equal(flags, expect[1])
    assert labels.max() > 0 and flags.any() and not flags.all()


# ------------------------------------------------------------------ compiled kernels against numpy oracles


def _numpy_hash01(keys: np.ndarray) -> np.ndarray:
    z = keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@pytest.mark.parametrize("seed", range(4))
def test_compiled_step_costs_are_the_numpy_expression_bit_for_bit(seed):
    from wsi_weakseg.engine._geodesic import step_costs

    rng = np.random.default_rng(seed)
    centre = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    fg = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    origin, width = (int(rng.integers(0, 10**5)), int(rng.integers(0, 10**5))), 10**6
    rows = np.arange(origin[0], origin[0] + 37, dtype=np.int64)[:, None]
    keys = rows * width + np.arange(origin[1], origin[1] + 53, dtype=np.int64)[None, :] + 1
    want = 1.0 + 2.5 * (1.0 - centre.astype(np.float64) / 255.0)
    want *= 1.0 + 1e-6 * _numpy_hash01(keys)
    want[fg < 128] = np.inf
    got = step_costs(centre, fg, 128, 2.5, 1e-6, origin[0], origin[1], width)
    assert np.array_equal(got.view(np.uint64), want.view(np.uint64))


@pytest.mark.parametrize("seed", range(6))
def test_compiled_markers_equal_the_maximum_filter_rule(seed):
    """local_maxima == (rank == maximum_filter(rank)) & thresholds, plateaus and borders included."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    centre = (rng.integers(0, 6, (45, 61)) * 40).astype(np.uint8)  # few levels: many plateaus and ties
    fg = np.where(rng.random((45, 61)) < 0.8, 255, 0).astype(np.uint8)
    h, w = centre.shape
    level = (centre >> 2).astype(np.int64)
    rank = (level << 32) | (h * w - 1 - np.arange(h * w, dtype=np.int64).reshape(h, w))
    best = ndi.maximum_filter(rank, size=2 * PARAMS.peak_radius + 1, mode="constant", cval=0)
    want = np.argwhere((rank == best) & (centre >= PARAMS.centre) & (fg >= PARAMS.foreground))
    got = find_markers(centre, fg, PARAMS)
    assert len(want) > 5 and got.tolist() == want.tolist()


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label arrays split the pixels identically (ids may differ), background to background."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_label_image_of_a_window_labels_its_interior_as_the_whole_image():
    """A window that says where it sits (origin, width) breaks geodesic ties as the slide does."""
    maps = _noisy(3, shape=(200, 240))
    maps[1] = np.round(maps[1] / 255 * 2) * 127  # three centre levels: many equal-cost paths, so ties matter
    whole = label_image(maps, NOISY)
    r0, c0, h, w = 37, 53, 130, 150
    inner = (slice(NOISY.halo, h - NOISY.halo), slice(NOISY.halo, w - NOISY.halo))
    window = maps[:, r0:r0 + h, c0:c0 + w]
    core = whole[r0:r0 + h, c0:c0 + w][inner]
    assert core.max() >= 20
    assert _same_partition(label_image(window, NOISY, (r0, c0), maps.shape[2])[inner], core)
    # The oracle can fail: the same window labelled as if it were the image breaks some ties differently.
    assert not _same_partition(label_image(window, NOISY)[inner], core)
