"""Compiled, GIL-free clean-up of assigned labels (:func:`instances.clean_labels`), instance by instance.

The rules are those of :func:`~wsi_weakseg.engine.instances.clean_labels`, applied in the same order;
this module only changes *where* each rule looks, never what it decides:

1. **Keep marker components.** A flood fill (4-connected, same label) from every marker pixel marks the
   pieces to keep and counts each instance's kept area; one raster pass then zeroes the other pieces
   and the instances under ``min_area``, and records each survivor's bounding box.
2. **Fill pockets.** A background pocket bordered by instance ``X`` alone has all its 4-neighbours in
   ``X``, so it lies strictly inside ``X``'s bounding box. Per instance, a flood fill of the background
   inside that box finds its pockets: a component is one unless it reaches the box's border (then it is
   not enclosed by ``X``), touches another instance, or has more than ``(2 * reach + 1) ** 2`` pixels
   (a pocket is no larger than the nucleus around it).
   Two pockets are never 4-adjacent, so filling them one instance at a time equals filling all at once.
3. **Cut saddles.** A saddle of ``X`` (a 2 x 2 block holding ``X`` on one diagonal only) depends on which
   pixels are ``X`` and nothing else, and cuts and re-kept components of ``X`` only remove ``X`` pixels
   (which stay non-``Y`` for every other ``Y``). So the whole-image loop "cut every saddle, keep marker
   components, repeat" equals running it to the end for each instance in its box. If any instance was cut,
   the cut ones are checked against ``min_area`` again and pockets are filled again everywhere; a box
   that only shrank is still a valid place to look, since a pocket of ``X`` lies inside ``X``'s box.

Work is one copy and two raster passes over the window plus flood fills over instance pixels and over
the background inside the boxes. Measured (CPU time, best of repeats, on a shared 2-core machine) on three
synthetic 1276 x 1276 windows of ~2400 nuclei (1500 per Mpx, ~64 px each, ``tests/engine/test_cleanup.py``'s
``synthetic_maps``): 47.4 ms per window for the numpy/scipy steps it replaced, 5.2 ms for this kernel;
results identical. Compiled with numba (``nogil=True``), so blocks run in parallel on threads.
"""

from __future__ import annotations

import numba
import numpy as np

_R0, _R1, _C0, _C1 = 0, 1, 2, 3  # columns of the bounding-box table (inclusive rows and columns)


@numba.njit(cache=True, nogil=True)
def _diagonal_cut(v, low_v, side1, side2, up, low, low_is_marker):
    """Pixel to cut for the diagonal ``up``-``low`` of a 2 x 2 block, or -1 if it is no saddle.

    A saddle: ``up`` and ``low`` hold the same instance ``v`` > 0 and the two other pixels of the block
    (labels ``side1``, ``side2``) do not. The lower pixel is cut, or the upper one where the lower is a
    marker. Scalars only, so the call costs nothing once compiled in (arrays would be reference-counted).
    """
    if v > 0 and low_v == v and side1 != v and side2 != v:
        return up if low_is_marker else low
    return -1


@numba.njit(cache=True, nogil=True)
def saddle_mask(labels, is_marker):
    """Boolean map of the pixels :func:`instances.saddle_cuts` removes (every saddle of the map at once).

    Parameters
    ----------
    labels : ndarray of int32, shape (h, w), C-contiguous
    is_marker : ndarray of bool, shape (h, w), C-contiguous
        Pixels never cut (the upper pixel of a diagonal is cut instead).
    """
    h, w = labels.shape
    flat = labels.ravel()
    mk = is_marker.ravel()
    cut = np.zeros(h * w, np.bool_)
    for r in range(h - 1):
        for c in range(w - 1):
            a = r * w + c
            la, lb, lc, ld = flat[a], flat[a + 1], flat[a + w], flat[a + w + 1]
            k = _diagonal_cut(la, ld, lb, lc, a, a + w + 1, mk[a + w + 1])
            if k >= 0:
                cut[k] = True
            k = _diagonal_cut(lb, lc, la, ld, a + 1, a + w, mk[a + w])
            if k >= 0:
                cut[k] = True
    return cut.reshape(h, w)


@numba.njit(cache=True, nogil=True)
def _flood(flat, h, w, seed, stamp, mark, queue):
    """Mark with ``mark`` the 4-connected pixels of ``flat[seed]``'s value around ``seed``; return their count.

    ``queue`` is an (h * w, 2) scratch of (row, col): rows and columns travel with the pixels, so no
    division recovers them.
    """
    v = flat[seed]
    stamp[seed] = mark
    queue[0, 0] = seed // w
    queue[0, 1] = seed % w
    head, tail = 0, 1
    while head < tail:
        r, c = queue[head, 0], queue[head, 1]
        head += 1
        p = r * w + c
        for k in range(4):
            if k == 0:
                if r == 0:
                    continue
                q, qr, qc = p - w, r - 1, c
            elif k == 1:
                if r == h - 1:
                    continue
                q, qr, qc = p + w, r + 1, c
            elif k == 2:
                if c == 0:
                    continue
                q, qr, qc = p - 1, r, c - 1
            else:
                if c == w - 1:
                    continue
                q, qr, qc = p + 1, r, c + 1
            if flat[q] == v and stamp[q] != mark:
                stamp[q] = mark
                queue[tail, 0] = qr
                queue[tail, 1] = qc
                tail += 1
    return tail


@numba.njit(cache=True, nogil=True)
def _keep_and_drop(out, h, w, rows, cols, is_marker, stamp, queue, min_area):
    """Steps 1 (in place): zero pieces without a marker and small instances; bounding boxes of the others.

    Returns ``(area, box)``: kept area per label (0 for dropped ones) and an (m + 1, 4) table of
    inclusive bounding boxes. Uses mark 1 in ``stamp``.
    """
    top = 0
    for p in range(h * w):
        top = max(top, out[p])
    area = np.zeros(top + 1, np.int64)
    for k in range(len(rows)):
        p = rows[k] * w + cols[k]
        is_marker[p] = True
        if out[p] > 0 and stamp[p] != 1:
            area[out[p]] += _flood(out, h, w, p, stamp, 1, queue)
    box = np.empty((top + 1, 4), np.int64)
    box[:, _R0] = h
    box[:, _R1] = -1
    box[:, _C0] = w
    box[:, _C1] = -1
    for r in range(h):
        for c in range(w):
            p = r * w + c
            v = out[p]
            if v == 0:
                continue
            if stamp[p] != 1 or area[v] < min_area:
                out[p] = 0
                continue
            box[v, _R0] = min(box[v, _R0], r)
            box[v, _R1] = r
            box[v, _C0] = min(box[v, _C0], c)
            box[v, _C1] = max(box[v, _C1], c)
    for v in range(top + 1):
        if area[v] < min_area:
            area[v] = 0
    return area, box


@numba.njit(cache=True, nogil=True)
def _fill_pockets_in_box(out, w, v, r0, r1, c0, c1, stamp, mark, queue, max_pocket):
    """Give ``v`` every background component strictly inside its box that only ``v`` borders (step 2)."""
    for r in range(r0 + 1, r1):
        for c in range(c0 + 1, c1):
            seed = r * w + c
            if out[seed] != 0 or stamp[seed] == mark:
                continue
            stamp[seed] = mark
            queue[0, 0] = r
            queue[0, 1] = c
            head, tail = 0, 1
            pocket = True
            while head < tail:
                pr, pc = queue[head, 0], queue[head, 1]
                head += 1
                p = pr * w + pc
                for k in range(4):
                    q = p - w if k == 0 else p + w if k == 1 else p - 1 if k == 2 else p + 1
                    u = out[q]
                    if u != 0:
                        pocket = pocket and u == v
                    elif stamp[q] != mark:
                        qr = pr - 1 if k == 0 else pr + 1 if k == 1 else pr
                        qc = pc - 1 if k == 2 else pc + 1 if k == 3 else pc
                        if qr == r0 or qr == r1 or qc == c0 or qc == c1:
                            pocket = False  # reaches the box's border: not enclosed by v
                        else:
                            stamp[q] = mark
                            queue[tail, 0] = qr
                            queue[tail, 1] = qc
                            tail += 1
            if pocket and tail <= max_pocket:
                for i in range(tail):
                    out[queue[i, 0] * w + queue[i, 1]] = v


@numba.njit(cache=True, nogil=True)
def _fill_all(out, w, area, box, stamp, mark, queue, max_pocket):
    """Step 2 for every instance left; returns the next unused mark."""
    for v in range(1, len(area)):
        if area[v] > 0:
            _fill_pockets_in_box(out, w, v, box[v, _R0], box[v, _R1], box[v, _C0], box[v, _C1],
                                 stamp, mark, queue, max_pocket)
            mark += 1
    return mark


@numba.njit(cache=True, nogil=True)
def _cut_once(out, w, v, r0, r1, c0, c1, is_marker, cuts):
    """Remove the pixels cut by every saddle of ``v`` in its box, all decided first; return how many."""
    n = 0
    for r in range(r0, r1):
        for c in range(c0, c1):
            a = r * w + c
            la, lb, lc, ld = out[a], out[a + 1], out[a + w], out[a + w + 1]
            if la == v:
                k = _diagonal_cut(la, ld, lb, lc, a, a + w + 1, is_marker[a + w + 1])
                if k >= 0:
                    cuts[n] = k
                    n += 1
            if lb == v:
                k = _diagonal_cut(lb, lc, la, ld, a + 1, a + w, is_marker[a + w])
                if k >= 0:
                    cuts[n] = k
                    n += 1
    for i in range(n):
        out[cuts[i]] = 0
    return n


@numba.njit(cache=True, nogil=True)
def _unsaddle(out, h, w, v, r0, r1, c0, c1, is_marker, stamp, mark, queue, cuts):
    """Step 3 for instance ``v``: cut saddles and keep marker components until none is left.

    Returns ``(area, mark)``: ``v``'s area if it was cut (-1 if not) and the next unused mark.
    """
    if _cut_once(out, w, v, r0, r1, c0, c1, is_marker, cuts) == 0:
        return -1, mark
    while True:
        for r in range(r0, r1 + 1):  # keep the pieces holding a marker
            for c in range(c0, c1 + 1):
                p = r * w + c
                if out[p] == v and is_marker[p] and stamp[p] != mark:
                    _flood(out, h, w, p, stamp, mark, queue)
        n_area = 0
        for r in range(r0, r1 + 1):
            for c in range(c0, c1 + 1):
                p = r * w + c
                if out[p] == v:
                    if stamp[p] != mark:
                        out[p] = 0
                    else:
                        n_area += 1
        mark += 1
        if _cut_once(out, w, v, r0, r1, c0, c1, is_marker, cuts) == 0:
            return n_area, mark


@numba.njit(cache=True, nogil=True)
def clean(labels, rows, cols, min_area, max_pocket):
    """The clean-up of :func:`instances.clean_labels` (see the module docstring for how it is organised).

    Parameters
    ----------
    labels : ndarray of int32, shape (h, w), C-contiguous
        0 for background, instance ids > 0; not modified.
    rows, cols : ndarray of int64
        Marker positions (any marker pixel anchors the component it lies in).
    min_area : int
        Instances with fewer pixels are dropped.
    max_pocket : int
        Largest background pocket filled (pixels).

    Returns
    -------
    ndarray of int32, shape (h, w)
        The cleaned copy.
    """
    h, w = labels.shape
    out = labels.copy().ravel()
    is_marker = np.zeros(h * w, np.bool_)
    stamp = np.zeros(h * w, np.int32)
    queue = np.empty((h * w, 2), np.int32)
    area, box = _keep_and_drop(out, h, w, rows, cols, is_marker, stamp, queue, min_area)
    mark = _fill_all(out, w, area, box, stamp, 2, queue, max_pocket)
    any_cut = False
    cuts = np.empty(64, np.int64)
    for v in range(1, len(area)):
        if area[v] == 0:
            continue
        r0, r1, c0, c1 = box[v, _R0], box[v, _R1], box[v, _C0], box[v, _C1]
        if len(cuts) < 2 * (r1 - r0 + 1) * (c1 - c0 + 1):
            cuts = np.empty(2 * (r1 - r0 + 1) * (c1 - c0 + 1), np.int64)
        n_area, mark = _unsaddle(out, h, w, v, r0, r1, c0, c1, is_marker, stamp, mark, queue, cuts)
        if n_area >= 0:
            any_cut = True
            if n_area < min_area:
                _zero_in_box(out, w, v, r0, r1, c0, c1)
                area[v] = 0
    if any_cut:
        _fill_all(out, w, area, box, stamp, mark, queue, max_pocket)
    return out.reshape(h, w)


@numba.njit(cache=True, nogil=True)
def _zero_in_box(out, w, v, r0, r1, c0, c1):
    """Drop instance ``v`` (all its pixels lie in its box)."""
    for r in range(r0, r1 + 1):
        for c in range(c0, c1 + 1):
            if out[r * w + c] == v:
                out[r * w + c] = 0
