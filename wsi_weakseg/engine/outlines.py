"""Outlines of many instances at once, traced on pixel edges (QuPath's pixel convention).

Pixel (row j, col i) spans ``[i, i + 1) x [j, j + 1)``: its corners are integer points and an instance's
outline runs along the edges between its pixels and the others. Every boundary edge is emitted with the
instance on its right-hand side (image axes, y down), edges are chained corner to corner into rings, and
collinear corners are dropped. Where two pixels of an instance touch only diagonally (a saddle), the ring
turns onto the other pixel: the two rings meeting there stay apart and only touch at the corner (a hole
touching its exterior at one point, which is valid), instead of one ring passing the corner twice, which
is not. The instance rules leave no saddles (:func:`~wsi_weakseg.engine.instances.clean_labels`), so the
rings they give never touch at all; this rule keeps any 4-connected mask valid too.

All instances of a window are traced in one compiled, GIL-free raster scan (:mod:`._trace`), a few
microseconds per nucleus.
"""

from __future__ import annotations

import numpy as np

from ._trace import trace_rings


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
    traced, xy, ring_starts, poly_starts = trace_flat(labels, ids)
    rings = [xy[a:b] for a, b in zip(ring_starts[:-1].tolist(), ring_starts[1:].tolist())]
    return {k: rings[a:b] for k, a, b in zip(traced.tolist(), poly_starts[:-1].tolist(), poly_starts[1:].tolist())}


def trace_flat(labels: np.ndarray, ids) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rings of the instances ``ids`` as ragged arrays (the layout of ``shapely.from_ragged_array``).

    Returns
    -------
    traced : ndarray of int64, shape (p,)
        The ids that have rings, ascending.
    xy : ndarray of float64, shape (m, 2)
        Closed rings one after another (first corner repeated), each instance's exterior first (its
        ring of largest area), then its holes in the order the scan found them.
    ring_starts : ndarray of int64, shape (r + 1,)
    poly_starts : ndarray of int64, shape (p + 1,)
        Instance ``traced[i]`` has rings ``poly_starts[i]:poly_starts[i + 1]``.
    """
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    if ids.size == 0:
        return ids, np.zeros((0, 2)), np.zeros(1, np.int64), np.zeros(1, np.int64)
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    selected = np.zeros(int(max(lab.max(), ids.max())) + 1, dtype=bool)
    selected[ids] = True
    corners, starts, owners = trace_rings(lab, selected)
    n = owners.size
    area = np.abs(_ring_areas(corners.astype(np.float64), starts))
    rank = np.arange(n)
    by_area = np.lexsort((rank, -area, owners))  # per owner: largest ring first (the first of equals)
    exterior = np.zeros(n, bool)
    first = np.ones(n, bool)
    first[1:] = owners[by_area][1:] != owners[by_area][:-1]
    exterior[by_area[first]] = True
    order = np.lexsort((rank, ~exterior, owners))
    sizes = np.diff(starts)[order] + 1
    ring_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    index = np.arange(ring_starts[-1]) + np.repeat(starts[:-1][order] - ring_starts[:-1], sizes)
    index[ring_starts[1:] - 1] = starts[:-1][order]  # close each ring on its first corner
    traced, counts = np.unique(owners[order], return_counts=True)
    poly_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return traced, corners[index].astype(np.float64), ring_starts, poly_starts


def _ring_areas(xy: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Signed shoelace area of each open ring ``xy[starts[i]:starts[i + 1]]`` (wrapping to its first corner)."""
    nxt = np.arange(1, len(xy) + 1)
    nxt[starts[1:] - 1] = starts[:-1]
    cross = xy[:, 0] * xy[nxt, 1] - xy[nxt, 0] * xy[:, 1]
    return 0.5 * np.add.reduceat(cross, starts[:-1]) if len(xy) else np.zeros(0)
