"""The compiled clean-up (:mod:`wsi_weakseg.engine._cleanup`) equals the numpy/scipy implementation it replaced.

The reference below is that implementation, moved here verbatim as the oracle: ``clean_labels`` must return
exactly the same array on every input, random small maps full of saddles, pockets and fragments as well as
label maps built from realistic synthetic foreground and centre maps.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label as cc_label

from wsi_weakseg.engine.instances import InstanceParams, assign_pixels, clean_labels, find_markers, saddle_cuts

PARAMS = InstanceParams(foreground=128, centre=60, peak_radius=2, max_cost=20.0, path_weight=2.0, min_area=5)


# --- reference: the numpy/scipy clean-up as it was before the kernel ------------------------------------------

def _ref_keep_marker_components(labels: np.ndarray, markers: np.ndarray) -> np.ndarray:
    comp = cc_label(labels, connectivity=1, background=0)
    anchor_comp = np.zeros(comp.max() + 1, dtype=bool)
    anchor_comp[comp[markers[:, 0], markers[:, 1]]] = True
    anchor_comp[0] = False
    labels[~anchor_comp[comp]] = 0
    return labels


def _ref_drop_small(labels: np.ndarray, n: int, min_area: int) -> np.ndarray:
    small = np.bincount(labels.ravel(), minlength=n + 1) < min_area
    small[0] = False
    labels[small[labels]] = 0
    return labels


def _ref_fill_pockets(labels: np.ndarray, n: int, reach: int) -> np.ndarray:
    bg, nbg = ndi.label(labels == 0)
    if not nbg:
        return labels
    small = np.bincount(bg.ravel(), minlength=nbg + 1) <= (2 * reach + 1) ** 2
    small[0] = False
    small[np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]])] = False
    pairs = []
    for a, b in ((bg[1:], labels[:-1]), (bg[:-1], labels[1:]), (bg[:, 1:], labels[:, :-1]), (bg[:, :-1], labels[:, 1:])):
        m = small[a] & (b > 0)
        pairs.append(a[m].astype(np.int64) * (n + 1) + b[m])
    pairs = np.unique(np.concatenate(pairs))
    comp, inst = pairs // (n + 1), pairs % (n + 1)
    comps, counts = np.unique(comp, return_counts=True)
    single = comps[counts == 1]
    if single.size:
        fill = np.zeros(nbg + 1, dtype=np.int32)
        sel = np.isin(comp, single)
        fill[comp[sel]] = inst[sel]
        holes = fill[bg]
        labels = np.where(holes > 0, holes, labels)
    return labels


def _ref_saddle_cuts(labels: np.ndarray, is_marker: np.ndarray) -> np.ndarray:
    h, w = labels.shape
    cut = np.zeros(labels.shape, dtype=bool)
    if h < 2 or w < 2:
        return cut
    top = labels[:-1, :-1] != labels[:-1, 1:]
    vert = labels[:-1] != labels[1:]
    flat = labels.ravel()
    for cand, first, second in ((top & vert[:, :-1], 0, w + 1), (top & vert[:, 1:], 1, w)):
        r, c = np.divmod(np.flatnonzero(cand), w - 1)
        i = r * w + c + first
        j = r * w + c + second
        hit = (flat[i] == flat[j]) & (flat[i] > 0)
        i, j = i[hit], j[hit]
        lower_is_marker = is_marker.ravel()[j]
        cut.ravel()[np.where(lower_is_marker, i, j)] = True
    return cut


def reference_clean_labels(labels: np.ndarray, markers: np.ndarray, params: InstanceParams) -> np.ndarray:
    labels = labels.copy()
    if len(markers) == 0:
        return labels
    n = len(markers)
    labels = _ref_keep_marker_components(labels, markers)
    labels = _ref_drop_small(labels, n, params.min_area)
    labels = _ref_fill_pockets(labels, n, params.reach)
    is_marker = np.zeros(labels.shape, dtype=bool)
    is_marker[markers[:, 0], markers[:, 1]] = True
    cut = _ref_saddle_cuts(labels, is_marker)
    if cut.any():
        while cut.any():
            labels[cut] = 0
            labels = _ref_keep_marker_components(labels, markers)
            cut = _ref_saddle_cuts(labels, is_marker)
        labels = _ref_drop_small(labels, n, params.min_area)
        labels = _ref_fill_pockets(labels, n, params.reach)
    return labels


# --- generators -------------------------------------------------------------------------------------------

def random_label_map(rng: np.random.Generator, stray: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Ragged blobs, rings around enclosed instances, fragments, snakes, checkerboards and stray pixels.

    Markers sit on random pixels of their instance; with ``stray``, now and then an instance's marker
    lands on another instance or on background and a few markers repeat, which the rules must treat alike.
    """
    h, w = int(rng.integers(5, 41)), int(rng.integers(5, 41))
    lab = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[0:h, 0:w]
    n = 0
    for _ in range(int(rng.integers(1, 7))):
        n += 1
        cy, cx, r = rng.uniform(-2, h + 2), rng.uniform(-2, w + 2), rng.uniform(1.5, 9)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        if rng.random() < 0.3:  # a ring around an enclosed instance and a pocket
            lab[(d2 < r**2) & (d2 >= (0.5 * r) ** 2)] = n
            n += 1
            lab[d2 < (0.3 * r) ** 2] = n
        else:
            lab[(d2 < r**2) & (rng.random((h, w)) < rng.uniform(0.75, 1.0))] = n
        for _ in range(int(rng.integers(0, 4))):  # fragments
            n += 1
            fy, fx = rng.integers(0, h), rng.integers(0, w)
            lab[fy : fy + int(rng.integers(1, 4)), fx : fx + int(rng.integers(1, 4))] = n
    for _ in range(int(rng.integers(0, 3))):  # snakes: thin random walks touching themselves diagonally
        n += 1
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        for dy, dx in rng.choice([(0, 1), (1, 0), (0, -1), (-1, 0)], int(rng.integers(4, 30))):
            y, x = min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)
            lab[y, x] = n
    for _ in range(int(rng.integers(0, 3))):  # checkerboards: saddles everywhere
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        sel = (yy >= y0) & (yy < y0 + rng.integers(2, 7)) & (xx >= x0) & (xx < x0 + rng.integers(2, 7))
        chk = (yy + xx) % 2 == 0
        lab[sel & chk] = rng.integers(1, n + 1)
        lab[sel & ~chk] = rng.integers(0, n + 1)
    k = int(rng.integers(0, h * w // 8 + 1))
    lab[rng.integers(0, h, k), rng.integers(0, w, k)] = rng.integers(0, n + 1, k)
    present = np.unique(lab)[1:]
    lut = np.zeros(n + 1, np.int32)
    lut[present] = np.arange(1, present.size + 1)
    lab = lut[lab]
    markers = []
    for i in range(1, present.size + 1):
        where = np.argwhere(lab == i) if not stray or rng.random() < 0.95 else np.argwhere(np.ones_like(lab, bool))
        markers.append(where[rng.integers(0, len(where))])
    markers = np.array(markers, np.int64).reshape(-1, 2)
    if stray and len(markers) > 1 and rng.random() < 0.05:
        markers[-1] = markers[0]
    return lab, markers


def enclosed_label_map(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One instance framing a box (sometimes on the window edge) full of small instances, checkerboards and gaps."""
    h, w = int(rng.integers(5, 24)), int(rng.integers(5, 24))
    lab = np.zeros((h, w), np.int32)
    t = int(rng.integers(1, 3))
    y0, x0, y1, x1 = int(rng.integers(0, 2)), int(rng.integers(0, 2)), h - int(rng.integers(0, 2)), w - int(rng.integers(0, 2))
    lab[y0:y1, x0:x1] = 1
    inner = lab[y0 + t : y1 - t, x0 + t : x1 - t]
    k = int(rng.integers(1, 5))
    inner[...] = np.where(rng.random(inner.shape) < rng.uniform(0.3, 0.8), rng.integers(2, k + 2, inner.shape), 0)
    if rng.random() < 0.7:
        yy, xx = np.mgrid[0 : inner.shape[0], 0 : inner.shape[1]]
        sel = rng.random(inner.shape) < 0.7
        inner[sel & ((yy + xx) % 2 == 0)] = rng.integers(2, k + 2)
        inner[sel & ((yy + xx) % 2 == 1)] = 0
    present = np.unique(lab)[1:]
    lut = np.zeros(lab.max() + 1, np.int32)
    lut[present] = np.arange(1, present.size + 1)
    lab = lut[lab]
    markers = [np.argwhere(lab == i)[rng.integers(0, (lab == i).sum())] for i in range(1, present.size + 1)]
    return lab, np.array(markers, np.int64).reshape(-1, 2)


def random_params(rng: np.random.Generator) -> InstanceParams:
    return InstanceParams(**{**PARAMS.__dict__, "min_area": int(rng.integers(0, 12)),
                             "max_cost": float(rng.uniform(0.0, 6.0))})


def synthetic_maps(shape: tuple[int, int], density: float, seed: int) -> np.ndarray:
    """Foreground and centre maps (uint8) of touching, noisy gaussian nuclei: ``density`` per Mpx, ~60 px each."""
    rng = np.random.default_rng(seed)
    h, w = shape
    k = int(density * h * w / 1e6)
    centre = np.zeros(shape)
    ys, xs = rng.uniform(0, h, k), rng.uniform(0, w, k)
    sig = rng.uniform(2.2, 3.6, k)
    for y, x, s in zip(ys, xs, sig):
        r = int(3 * s) + 1
        y0, y1, x0, x1 = max(0, int(y) - r), min(h, int(y) + r + 1), max(0, int(x) - r), min(w, int(x) + r + 1)
        gy, gx = np.mgrid[y0:y1, x0:x1]
        g = np.exp(-((gy - y) ** 2 + (gx - x) ** 2) / (2 * s * s))
        centre[y0:y1, x0:x1] = np.maximum(centre[y0:y1, x0:x1], g)
    noisy = np.clip(centre + rng.normal(0, 0.06, shape), 0, 1)
    fg = np.where(ndi.gaussian_filter(noisy, 0.7) > 0.3, 255, 0).astype(np.uint8)
    return np.stack([fg, np.round(noisy * 255).astype(np.uint8)])


def assigned(maps: np.ndarray, params: InstanceParams) -> tuple[np.ndarray, np.ndarray]:
    fg, centre = maps
    markers = find_markers(centre, fg, params)
    labels, _ = assign_pixels(centre, fg, markers, params)
    return labels, markers


# --- tests ------------------------------------------------------------------------------------------------

def test_kernel_equals_reference_on_random_maps():
    rng = np.random.default_rng(20261207)
    cut = pockets = dropped = 0
    for i in range(1500):
        lab, markers = random_label_map(rng) if i % 3 else enclosed_label_map(rng)
        params = random_params(rng)
        want = reference_clean_labels(lab, markers, params)
        got = clean_labels(lab, markers, params)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)
        cut += bool(_ref_saddle_cuts(lab, np.zeros(lab.shape, bool)).any())
        pockets += bool(((lab == 0) & (want > 0)).any())
        dropped += bool(((lab > 0) & (want == 0)).any())
    assert cut > 500 and pockets > 300 and dropped > 1000  # the generator exercises every rule


def test_kernel_equals_reference_on_hand_cases():
    empty = np.zeros((6, 7), np.int32)
    np.testing.assert_array_equal(clean_labels(empty, np.zeros((0, 2), np.int64), PARAMS), empty)
    one_row = np.array([[1, 1, 0, 1, 2, 2, 2, 2, 2]], np.int32)
    markers = np.array([[0, 0], [0, 5]])
    for lab in (one_row, one_row.T.copy(), np.ones((3, 3), np.int32)):
        m = markers[:1] if lab.shape == (3, 3) else markers if lab.shape[0] == 1 else markers[:, ::-1]
        np.testing.assert_array_equal(clean_labels(lab, m, PARAMS), reference_clean_labels(lab, m, PARAMS))


def test_an_instance_cut_below_min_area_is_dropped_like_the_reference():
    """A ring with two notched corners around another instance: both saddles are cut, the marker's arc is small."""
    lab = np.zeros((7, 9), np.int32)
    lab[1:5, 1:7] = 1
    lab[2:4, 2:6] = 2  # fills the ring's inside: no pocket
    lab[1, 1] = lab[4, 6] = 0  # saddles of 1 at both corners
    markers = np.array([[4, 2], [2, 2]])
    params = InstanceParams(**{**PARAMS.__dict__, "min_area": 8, "max_cost": 1.0})
    out = clean_labels(lab, markers, params)
    np.testing.assert_array_equal(out, reference_clean_labels(lab, markers, params))
    assert not (out == 1).any() and (out == 2).sum() == 8  # 5 pixels left of 1 after the cuts: dropped


@pytest.mark.parametrize("seed", range(3))
def test_kernel_equals_reference_on_realistic_maps(seed):
    maps = synthetic_maps((300, 340), 1500, seed)
    labels, markers = assigned(maps, PARAMS)
    assert len(markers) > 100
    for params in (PARAMS, InstanceParams(**{**PARAMS.__dict__, "min_area": 30, "max_cost": 8.0})):
        np.testing.assert_array_equal(clean_labels(labels, markers, params),
                                      reference_clean_labels(labels, markers, params))


def test_output_is_4_connected_saddle_free_and_holds_its_marker():
    rng = np.random.default_rng(7)
    maps = synthetic_maps((200, 200), 2500, 11)
    cases = [assigned(maps, PARAMS)] + [random_label_map(rng, stray=False) for _ in range(200)]
    for lab, markers in cases:
        out = clean_labels(lab, markers, PARAMS)
        assert not saddle_cuts(out, np.zeros(out.shape, bool)).any()
        for i in np.unique(out)[1:].tolist():
            mask = out == i
            assert mask.sum() >= PARAMS.min_area
            assert ndi.label(mask)[1] == 1
            assert mask[tuple(markers[i - 1])]


def test_saddle_cuts_equals_reference():
    rng = np.random.default_rng(3)
    for _ in range(300):
        lab, markers = random_label_map(rng)
        is_marker = np.zeros(lab.shape, bool)
        is_marker[markers[:, 0], markers[:, 1]] = rng.random(len(markers)) < 0.5
        np.testing.assert_array_equal(saddle_cuts(lab, is_marker), _ref_saddle_cuts(lab, is_marker))
