"""Compiled proof of validity for the common polygon: one simple ring on the pixel-corner grid.

A pixel outline traced from a clean label (:mod:`wsi_weakseg.engine.outlines`) is a closed rectilinear
path through integer grid corners. Walked one unit edge at a time, such a ring that visits no grid corner
twice is a simple closed curve (two axis-parallel unit-step paths can only meet or cross at a grid corner),
so it bounds a region of positive area: a valid polygon as GEOS (and QuPath) judge it. That covers nearly
every nucleus; :func:`~wsi_weakseg.io.polygons.valid_ragged` sends the rest (holes, off-grid or diagonal
vertices, a repeated corner) to ``shapely.is_valid``, so a traced polygon is never written unchecked.
"""

from __future__ import annotations

import numba
import numpy as np

#: Largest bounding box (grid corners) the proof marks; bigger rings go to GEOS (bounded memory per ring).
_MAX_BITMAP = 1 << 22


@numba.njit(cache=True, nogil=True)
def simple_grid_rings(xy, ring_starts, poly_starts):
    """Which polygons are certainly valid: a single ring, axis-parallel edges between integer corners, no
    corner visited twice when walked in unit steps.

    Parameters
    ----------
    xy : ndarray of float64, shape (n, 2)
        Ring vertices (closed rings: first vertex repeated last), ``shapely.from_ragged_array`` layout.
    ring_starts, poly_starts : ndarray of int64
        Offsets of the rings into ``xy`` and of the polygons into the rings.

    Returns
    -------
    ndarray of bool
        True where the polygon is proven valid; False means "not proven" (check it otherwise).
    """
    n = len(poly_starts) - 1
    out = np.zeros(n, np.bool_)
    for i in range(n):
        if poly_starts[i + 1] - poly_starts[i] != 1:
            continue
        a, b = ring_starts[poly_starts[i]], ring_starts[poly_starts[i] + 1]
        out[i] = _simple_ring(xy, a, b)
    return out


@numba.njit(cache=True, nogil=True)
def _simple_ring(xy, a, b):
    """Whether ``xy[a:b]`` (closed) is a rectilinear unit-grid ring visiting no corner twice."""
    if b - a < 5 or xy[a, 0] != xy[b - 1, 0] or xy[a, 1] != xy[b - 1, 1]:
        return False
    x0, y0 = xy[a, 0], xy[a, 1]
    x1, y1 = x0, y0
    for k in range(a, b):
        x, y = xy[k, 0], xy[k, 1]
        if x != np.floor(x) or y != np.floor(y) or abs(x) > 1e9 or abs(y) > 1e9:
            return False
        x0, y0, x1, y1 = min(x0, x), min(y0, y), max(x1, x), max(y1, y)
    w = int(x1 - x0) + 1
    if (y1 - y0 + 1) * w > _MAX_BITMAP:
        return False  # a ring spanning a huge box (a tissue region, not a nucleus): left to GEOS
    seen = np.zeros((int(y1 - y0) + 1) * w, np.bool_)
    for k in range(a, b - 1):
        x, y = int(xy[k, 0] - x0), int(xy[k, 1] - y0)
        ex, ey = int(xy[k + 1, 0] - x0), int(xy[k + 1, 1] - y0)
        if x != ex and y != ey:
            return False  # a diagonal edge
        dx, dy = (ex > x) - (ex < x), (ey > y) - (ey < y)
        while x != ex or y != ey:  # marks every corner of the edge but its end (the next edge's start)
            if seen[y * w + x]:
                return False
            seen[y * w + x] = True
            x += dx
            y += dy
    return True
