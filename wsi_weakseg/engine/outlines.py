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
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    if ids.size == 0:
        return {}
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    selected = np.zeros(int(max(lab.max(), ids.max())) + 1, dtype=bool)
    selected[ids] = True
    xy, starts, owners = trace_rings(lab, selected)
    xy = xy.astype(np.float64)
    out: dict[int, list[np.ndarray]] = {}
    for k, a, b in zip(owners.tolist(), starts[:-1].tolist(), starts[1:].tolist()):
        out.setdefault(k, []).append(np.concatenate([xy[a:b], xy[a : a + 1]]))
    for k, rings in out.items():
        if len(rings) > 1:  # exterior first: the ring of largest area
            areas = [abs(_area(r)) for r in rings]
            first = int(np.argmax(areas))
            out[k] = [rings[first]] + [r for i, r in enumerate(rings) if i != first]
    return out


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
