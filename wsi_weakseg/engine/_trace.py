"""Compiled outline tracing on pixel edges (the kernel behind :func:`.outlines.trace_outlines`).

Pixel (row j, col i) spans ``[i, i + 1) x [j, j + 1)``. A *boundary edge* is a side of a pixel of instance
``k`` whose neighbour across it is not ``k``, oriented with ``k`` on its right (y down): top sides run +x,
right sides +y, bottom −x, left −y. Rings are the cycles of "the edge of ``k`` starting where this one ends";
at a saddle corner two edges of ``k`` start there and the ring turns onto the other pixel.

Rings are found by scanning corners in raster order (row-major) and, at each corner, the unvisited edges
starting there in side order (top, right, bottom, left); so each ring starts at its smallest
``(corner, side)`` edge, its top-left-most corner, and an instance's rings come in the order of their start
corners. Only corners where the side changes are emitted (collinear corners dropped), cyclically.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def _edge_at(lab, h, w, cy, cx, side, k):
    """Pixel (row, col) whose ``side`` edge starts at corner (cx, cy) and is a boundary of ``k``; (-1, -1) if none."""
    if side == 0:  # top side of the pixel below-right of the corner
        y, x, ny, nx = cy, cx, cy - 1, cx
    elif side == 1:  # right side of the pixel below-left
        y, x, ny, nx = cy, cx - 1, cy, cx
    elif side == 2:  # bottom side of the pixel above-left
        y, x, ny, nx = cy - 1, cx - 1, cy, cx - 1
    else:  # left side of the pixel above-right
        y, x, ny, nx = cy - 1, cx, cy - 1, cx - 1
    if y < 0 or y >= h or x < 0 or x >= w or lab[y, x] != k:
        return -1, -1
    if 0 <= ny < h and 0 <= nx < w and lab[ny, nx] == k:
        return -1, -1
    return y, x


@numba.njit(cache=True, nogil=True, inline="always")
def _end_corner(y, x, side):
    """End corner (cx, cy) of a pixel's side edge."""
    if side == 0:
        return x + 1, y
    if side == 1:
        return x + 1, y + 1
    if side == 2:
        return x, y + 1
    return x, y


@numba.njit(cache=True, nogil=True)
def trace_rings(lab, selected):
    """All rings of the selected instances.

    Parameters
    ----------
    lab : ndarray of int32, shape (h, w)
    selected : ndarray of bool
        ``selected[k]``: trace instance ``k`` (indexable by every label value).

    Returns
    -------
    xy : ndarray of int64, shape (m, 2)
        Ring vertices ``(x, y)``, each ring open (first vertex not repeated).
    ring_start : ndarray of int64, shape (r + 1,)
        Ring ``i`` is ``xy[ring_start[i]:ring_start[i + 1]]``.
    ring_owner : ndarray of int64, shape (r,)
        Instance of each ring, rings in scan order.
    """
    h, w = lab.shape
    visited = np.zeros((h, w), np.uint8)  # bit ``side`` set once that edge is in a ring
    cap = 1024
    xy = np.empty((cap, 2), np.int64)
    starts = [0]
    owners = []
    m = 0
    ex = np.empty(64, np.int64)  # one ring's edges: corner x, corner y, side
    ey = np.empty(64, np.int64)
    es = np.empty(64, np.int64)
    pad = np.full((h + 2, w + 2), -1, np.int32)  # -1 outside the image: no bounds tests in the scan
    pad[1 : h + 1, 1 : w + 1] = lab
    for cy in range(h + 1):
        up, down = pad[cy], pad[cy + 1]
        for cx in range(w + 1):
            # the four pixels around corner (cx, cy): a b / c d
            b, d = up[cx + 1], down[cx + 1]
            if b == d and up[cx] == b and down[cx] == b:
                continue
            a, c = up[cx], down[cx]
            for side0 in range(4):
                if side0 == 0:  # top side of d, starts here when b differs
                    k, y, x, other = d, cy, cx, b
                elif side0 == 1:  # right side of c
                    k, y, x, other = c, cy, cx - 1, d
                elif side0 == 2:  # bottom side of a
                    k, y, x, other = a, cy - 1, cx - 1, c
                else:  # left side of b
                    k, y, x, other = b, cy - 1, cx, a
                if k <= 0 or k == other or not selected[k] or visited[y, x] & (1 << side0):
                    continue
                n = 0
                py, px, ps, sx, sy = y, x, side0, cx, cy
                while True:
                    if n == len(ex):
                        ex = _grow(ex)
                        ey = _grow(ey)
                        es = _grow(es)
                    ex[n], ey[n], es[n] = sx, sy, ps
                    n += 1
                    visited[py, px] |= 1 << ps
                    sx, sy = _end_corner(py, px, ps)
                    fy, fx, fs = -1, -1, -1
                    for s in range(4):
                        qy, qx = _edge_at(lab, h, w, sy, sx, s, k)
                        if qy < 0:
                            continue
                        if fy < 0:
                            fy, fx, fs = qy, qx, s
                        elif fy == py and fx == px:  # saddle: leave the current pixel for the other one
                            fy, fx, fs = qy, qx, s
                            break
                        else:
                            break
                    py, px, ps = fy, fx, fs
                    if py == y and px == x and ps == side0:
                        break
                for i in range(n):
                    if es[i] != es[i - 1 if i > 0 else n - 1]:
                        if m == len(xy):
                            xy = _grow2(xy)
                        xy[m, 0] = ex[i]
                        xy[m, 1] = ey[i]
                        m += 1
                starts.append(m)
                owners.append(k)
    return xy[:m].copy(), np.array(starts, np.int64), np.array(owners, np.int64)


@numba.njit(cache=True, nogil=True)
def _grow(a):
    b = np.empty(2 * len(a), a.dtype)
    b[: len(a)] = a
    return b


@numba.njit(cache=True, nogil=True)
def _grow2(a):
    b = np.empty((2 * len(a), 2), a.dtype)
    b[: len(a)] = a
    return b
