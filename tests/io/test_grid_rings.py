"""The compiled validity proof for pixel-grid rings (``io/_grid_rings.py``) is sound against GEOS.

``valid_ragged`` skips ``shapely.is_valid`` for polygons the proof accepts, so a polygon it accepts must be
valid: checked on hand-made invalid rings (touching, crossing, diagonal, off-grid, too short) and on the
traced outlines of random label maps full of saddles, where GEOS finds many invalid polygons.
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from wsi_weakseg.engine.outlines import trace_flat
from wsi_weakseg.io._grid_rings import simple_grid_rings
from wsi_weakseg.io.polygons import valid_ragged


def _ragged(polygons):
    """(xy, ring_starts, poly_starts) of polygons given as lists of closed rings."""
    rings = [np.asarray(r, np.float64) for p in polygons for r in p]
    return (np.concatenate(rings), np.cumsum([0] + [len(r) for r in rings]).astype(np.int64),
            np.cumsum([0] + [len(p) for p in polygons]).astype(np.int64))


SQUARE = [[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]
CASES = {
    "unit square": ([[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]], True),
    "2x2 square, long edges": ([SQUARE], True),
    "L shape": ([[[0, 0], [3, 0], [3, 1], [1, 1], [1, 3], [0, 3], [0, 0]]], True),
    # two unit squares meeting at the corner (1, 1), traced as one ring: a self-touching ring
    "figure eight": ([[[0, 0], [1, 0], [1, 1], [2, 1], [2, 2], [1, 2], [1, 1], [0, 1], [0, 0]]], False),
    # crosses itself at (1, 1), which is a vertex of neither pass
    "crossing": ([[[0, 1], [2, 1], [2, 2], [1, 2], [1, 0], [0, 0], [0, 1]]], False),
    "diagonal edge": ([[[0, 0], [2, 0], [0, 2], [0, 0]]], False),
    "half-pixel vertices": ([[[0.5, 0], [2, 0], [2, 2], [0.5, 2], [0.5, 0]]], False),
    "not closed": ([[[0, 0], [2, 0], [2, 2], [0, 2], [0, 1]]], False),
    "degenerate": ([[[0, 0], [2, 0], [0, 0], [0, 0]]], False),
    "with a hole (left to GEOS)": ([SQUARE, [[0.5, 0.5], [1, 0.5], [1, 1], [0.5, 1], [0.5, 0.5]]], False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hand_made_rings(name):
    polygons, proven = CASES[name]
    got = simple_grid_rings(*_ragged([polygons]))
    assert got.tolist() == [proven]
    if proven:
        assert shapely.Polygon(polygons[0]).is_valid


@pytest.mark.parametrize("seed", range(4))
def test_proof_is_sound_on_traced_random_labels(seed):
    """Random 3-label maps (saddles everywhere): every proven polygon is GEOS-valid, most valid ones are proven,
    and valid_ragged flags exactly the polygons GEOS finds invalid."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, (40, 50)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = 0
    _, xy, ring_starts, _ = trace_flat(labels, [1, 2, 3])
    # one polygon per ring (exteriors and holes alike), so there are many single-ring polygons
    single = np.arange(len(ring_starts), dtype=np.int64)
    geoms = shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, (ring_starts, single))
    valid = shapely.is_valid(geoms)
    proven = simple_grid_rings(xy, ring_starts, single)
    assert not (proven & ~valid).any()
    assert (~valid).sum() > 5 and proven.sum() > 0.9 * valid.sum()
    _, _, _, repaired = valid_ragged(xy, ring_starts, single)
    np.testing.assert_array_equal(repaired, ~valid)


def test_traced_clean_nuclei_are_all_proven():
    """Blobs that touch only along edges (no saddle, no hole) are each one proven ring."""
    labels = np.zeros((30, 30), np.int32)
    labels[2:8, 2:9] = 1
    labels[8:14, 4:10] = 2  # shares an edge with 1
    labels[20:27, 20:23] = 3
    labels[22:25, 18:26] = 3  # a cross
    _, xy, ring_starts, poly_starts = trace_flat(labels, [1, 2, 3])
    assert simple_grid_rings(xy, ring_starts, poly_starts).all()


def test_a_ring_over_a_huge_box_is_left_to_geos():
    """The proof marks corners in a bitmap of the ring's box; past 4 M corners it declines (bounded memory) and
    valid_ragged asks GEOS instead."""
    big = [[[0, 0], [5000, 0], [5000, 5000], [0, 5000], [0, 0]]]
    xy, rs, ps = _ragged([big])
    assert simple_grid_rings(xy, rs, ps).tolist() == [False]
    assert valid_ragged(xy, rs, ps)[3].tolist() == [False]
