"""Test oracle: the vectorised numpy tracer that ``engine.outlines`` used before its compiled kernel.

Kept only to check that the compiled tracer gives the same rings, vertex for vertex. Original notes:

Outlines of many instances at once, traced on pixel edges (QuPath's pixel convention).

Pixel (row j, col i) spans ``[i, i + 1) x [j, j + 1)``: its corners are integer points and an instance's
outline runs along the edges between its pixels and the others. Every boundary edge is emitted with the
instance on its right-hand side (image axes, y down), edges are chained corner to corner into rings, and
collinear corners are dropped. Where two pixels of an instance touch only diagonally (a saddle), the ring
turns onto the other pixel: the two rings meeting there stay apart and only touch at the corner (a hole
touching its exterior at one point, which is valid), instead of one ring passing the corner twice, which
is not. The instance rules leave no saddles (:func:`~wsi_weakseg.engine.instances.clean_labels`), so the
rings they give never touch at all; this rule keeps any 4-connected mask valid too.

All instances of a window are traced in one vectorised pass (edges, successor permutation, cycle labels
and list ranking by pointer doubling), so the cost per nucleus is a few microseconds instead of a
``find_contours`` call.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

# side: 0 top (+x), 1 right (+y), 2 bottom (-x), 3 left (-y); (dy, dx) of the neighbour across that side,
# and start/end corner offsets (x, y) relative to the pixel's top-left corner.
_SIDES = (
    ((-1, 0), (0, 0), (1, 0)),
    ((0, 1), (1, 0), (1, 1)),
    ((1, 0), (1, 1), (0, 1)),
    ((0, -1), (0, 1), (0, 0)),
)


def trace_outlines(labels: np.ndarray, ids) -> dict[int, list[np.ndarray]]:
    """Rings of the instances ``ids`` of a label image.

    Parameters
    ----------
    labels : ndarray of int, shape (h, w)
        Label image; each instance should be 4-connected (the rings of one that is not are not a polygon).
    ids : array-like of int
        Instances to trace (non-zero labels present in ``labels``).

    Returns
    -------
    dict
        ``id -> [exterior, *holes]``; each ring is a closed ``(n + 1, 2)`` float array of ``(x, y)`` corners
        in the label image's frame, starting at its top-left-most corner. After the instance rules, a hole
        appears only around an enclosed instance or a pocket shared with one (others are filled).

    Examples
    --------
    >>> lab = np.zeros((3, 4), int); lab[1, 1:3] = 7
    >>> trace_outlines(lab, [7])[7][0].tolist()
    [[1.0, 1.0], [3.0, 1.0], [3.0, 2.0], [1.0, 2.0], [1.0, 1.0]]
    """
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    if ids.size == 0:
        return {}
    h, w = labels.shape
    lab = np.pad(labels, 1)
    sel = np.zeros(int(max(lab.max(), ids.max())) + 1, dtype=bool)
    sel[ids] = True
    ys, xs = np.nonzero(sel[lab])
    inst = lab[ys, xs].astype(np.int64)
    parts = []
    for side, ((dy, dx), (sx, sy), (ex, ey)) in enumerate(_SIDES):
        m = lab[ys + dy, xs + dx] != inst
        n = int(m.sum())
        parts.append(
            np.stack([inst[m], xs[m] + sx, ys[m] + sy, xs[m] + ex, ys[m] + ey, ys[m] * (w + 2) + xs[m], np.full(n, side)])
        )
    e = np.concatenate(parts, axis=1)
    cw = w + 3  # corners per row in the padded frame
    ncorner = (h + 3) * cw
    start = e[0] * ncorner + e[2] * cw + e[1]
    order = np.lexsort((e[6], start))
    e, start = e[:, order], start[order]
    end = e[0] * ncorner + e[4] * cw + e[3]
    n = start.size
    succ = np.searchsorted(start, end)
    alt = np.minimum(succ + 1, n - 1)
    saddle = (succ + 1 < n) & (start[alt] == end)
    # At a saddle, continue along the other pixel (see the module docstring).
    succ = np.where(saddle & (e[5, succ] == e[5]), alt, succ)

    # Rings are the cycles of the permutation ``succ``. Label them, start each at its smallest edge (its
    # top-left-most corner; edges are sorted by instance, then corner), and rank edges along the cycle by
    # pointer doubling: all vectorised.
    ncyc, cyc = connected_components(csr_matrix((np.ones(n, np.int8), (np.arange(n), succ)), shape=(n, n)),
                                     directed=True, connection="weak")
    first = np.full(ncyc, n, dtype=np.int64)
    np.minimum.at(first, cyc, np.arange(n))
    start_of = first[cyc]
    nxt = np.where(succ == start_of, np.arange(n), succ)  # cut each cycle just before its start
    dist = (nxt != np.arange(n)).astype(np.int64)  # edges to the end of the cut cycle
    while True:
        jump = nxt[nxt]
        if np.array_equal(jump, nxt):
            break
        dist = dist + dist[nxt]
        nxt = jump
    order = np.lexsort((-dist, start_of))
    cyc_sorted = start_of[order]
    bounds = np.flatnonzero(np.diff(cyc_sorted)) + 1
    side = e[6, order]
    begin = np.concatenate([[0], bounds])
    end = np.concatenate([bounds, [n]])
    prev_side = np.roll(side, 1)
    prev_side[begin] = side[end - 1]
    keep = side != prev_side
    xy = np.stack([e[1, order], e[2, order]], axis=1).astype(np.float64) - 1.0
    kept_counts = np.add.reduceat(keep.astype(np.int64), begin)
    verts = np.split(xy[keep], np.cumsum(kept_counts)[:-1])
    owners = e[0, order[begin]]

    out: dict[int, list[np.ndarray]] = {}
    for k, v in zip(owners.tolist(), verts):
        out.setdefault(k, []).append(np.concatenate([v, v[:1]]))
    for k, rings in out.items():
        if len(rings) > 1:  # exterior first: the ring of largest area
            areas = [abs(_area(r)) for r in rings]
            first = int(np.argmax(areas))
            out[k] = [rings[first]] + [r for i, r in enumerate(rings) if i != first]
    return out


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
