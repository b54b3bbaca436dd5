"""Smooth outlines: the pixel staircase through its edge midpoints, then simplified (``--outlines smooth``).

A traced outline (:mod:`.outlines`) runs along pixel edges: exact, but a staircase of ~60 corners per nucleus
at 0.5 µm/px, most of the GeoJSON's bytes. The smooth outline is built in two vectorised steps over all
rings of a block:

1. **Edge midpoints.** Each ring is replaced by the polygon through the midpoints of its unit pixel edges
   (what QuPath's own cell detection draws). A straight run of ``L`` unit edges keeps only its first and last
   midpoints (the others are collinear), so the polygon equals the staircase except that each corner is cut
   by the chord between the midpoints of its two edges: a triangle of legs 0.5 px, at most ``sqrt(2) / 4``
   (0.354) px from the corner. A convex corner's cut lies in the instance's own pixel, a concave corner's
   in the one pixel of that corner the instance does not own, so two neighbours' midpoint polygons never
   overlap, and every pixel centre keeps its side (it is 0.354 px or more from each chord).
2. **Douglas-Peucker** with ``tolerance`` on each ring as an open line from its first midpoint back to it
   (``shapely.simplify``, one GEOS call for the whole array): drops the midpoints within ``tolerance`` of the
   chord that replaces them and keeps the ring's first vertex. (GEOS simplifies a *ring*'s start vertex away
   with a looser test, 0.67 px from the midpoints at ``tolerance`` 0.5 in the tests, hence lines.) A polygon
   whose simplified rings are degenerate (under 4 vertices) or not a valid polygon keeps its midpoint rings
   (valid, within ``sqrt(2) / 4``), so every outline obeys the bound below; the plain algorithm is ~13x faster
   than GEOS's topology-preserving one (7 vs 98 ms per 2,000 nuclei) and this fallback is rare.

Bound: every point of the smooth outline is within ``tolerance + sqrt(2) / 4`` px of the pixel outline and
vice versa (Hausdorff distance of the boundaries). Douglas-Peucker keeps every dropped vertex within
``tolerance`` of its chord, and by continuity every point of a chord has a point of the replaced path at the
same projection, within ``tolerance``; step 1 adds ``sqrt(2) / 4``. Each outline depends only on its own
rings, so tiled and whole-image runs still write identical text. Vertices are a subset of the midpoints:
coordinates on the half-pixel grid (short decimals).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_TOLERANCE", "HAUSDORFF_SLACK", "OUTLINE_MODES", "edge_midpoints", "smooth_ragged"]

#: Outline modes of ``segment --outlines``: the first is the default (pixel: smooth outlines shrink files
#: 1.5x, short of the 2x that would make them the default; docs/design.md, "Outline modes").
OUTLINE_MODES = ("pixel", "smooth")
#: Douglas-Peucker tolerance of smooth outlines, in working pixels (see docs/design.md, "Outline modes").
DEFAULT_TOLERANCE = 0.5
#: How far the edge-midpoint polygon may lie from the pixel outline: half a unit edge's diagonal.
HAUSDORFF_SLACK = float(np.sqrt(2.0) / 4.0)


def edge_midpoints(xy: np.ndarray, ring_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each closed ring of axis-aligned integer edges as the closed ring through its unit-edge midpoints.

    Parameters
    ----------
    xy : ndarray of float64, shape (m, 2)
        Closed rings (first corner repeated), every edge horizontal or vertical with integer length >= 1
        (the rings :func:`~wsi_weakseg.engine.outlines.trace_flat` returns).
    ring_starts : ndarray of int64, shape (r + 1,)

    Returns
    -------
    xy, ring_starts : ndarray
        The midpoint rings in the same layout and order. An edge of length 1 gives its midpoint, a longer
        one the midpoints of its first and last unit edges.

    Examples
    --------
    >>> square = np.array([[0, 0], [2, 0], [2, 1], [0, 1], [0, 0]], float)
    >>> edge_midpoints(square, np.array([0, 5]))[0].tolist()
    [[0.5, 0.0], [1.5, 0.0], [2.0, 0.5], [1.5, 1.0], [0.5, 1.0], [0.0, 0.5], [0.5, 0.0]]
    """
    n_rings = len(ring_starts) - 1
    if n_rings <= 0:
        return np.zeros((0, 2)), np.zeros(1, np.int64)
    edge = np.ones(len(xy) - 1, bool)
    edge[ring_starts[1:-1] - 1] = False  # no edge from a ring's closing corner into the next ring
    p, q = xy[:-1][edge], xy[1:][edge]
    length = np.abs(q - p).sum(axis=1)
    step = (q - p) / np.maximum(length, 1.0)[:, None]
    pts = np.stack([p + 0.5 * step, q - 0.5 * step], axis=1)  # (edges, 2 ends, 2 coords)
    keep = np.column_stack([length > 0, length > 1])
    emitted = keep.sum(axis=1)
    ring_of_edge = np.repeat(np.arange(n_rings), np.diff(ring_starts) - 1)
    per_ring = np.bincount(ring_of_edge, weights=emitted, minlength=n_rings).astype(np.int64)
    open_xy = pts[keep]
    open_starts = np.concatenate([[0], np.cumsum(per_ring)])
    sizes = per_ring + 1  # closed: first midpoint repeated
    out_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    index = np.arange(out_starts[-1]) - np.repeat(out_starts[:-1] - open_starts[:-1], sizes)
    index[out_starts[1:] - 1] = open_starts[:-1]
    return open_xy[index], out_starts


def smooth_ragged(
    xy: np.ndarray, ring_starts: np.ndarray, poly_starts: np.ndarray, tolerance: float = DEFAULT_TOLERANCE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth outlines of traced polygons (ragged ``shapely.from_ragged_array`` layout, working pixels).

    Parameters
    ----------
    xy, ring_starts, poly_starts : ndarray
        Traced pixel outlines as :func:`~wsi_weakseg.engine.outlines.trace_flat` returns them.
    tolerance : float
        Douglas-Peucker tolerance in working pixels, >= 0.

    Returns
    -------
    xy, ring_starts, poly_starts : ndarray
        The smooth polygons, same order and ring count. Each is within ``tolerance + sqrt(2) / 4`` px of its
        pixel outline (module docstring). Validity is checked afterwards by the caller
        (:func:`~wsi_weakseg.io.polygons.valid_ragged`).
    """
    import shapely

    if len(poly_starts) <= 1:
        return xy, ring_starts, poly_starts
    mid, mid_starts = edge_midpoints(xy, ring_starts)
    lines = shapely.from_ragged_array(shapely.GeometryType.LINESTRING, mid, (mid_starts,))
    _, simple, (simple_starts,) = shapely.to_ragged_array(shapely.simplify(lines, tolerance, preserve_topology=False))
    ring_poly = np.repeat(np.arange(len(poly_starts) - 1), np.diff(poly_starts))
    keep = np.ones(len(poly_starts) - 1, bool)
    keep[ring_poly[np.diff(simple_starts) < 4]] = False
    out = _pick(keep[ring_poly], simple, simple_starts.astype(np.int64), mid, mid_starts)
    bad = ~shapely.is_valid(shapely.from_ragged_array(shapely.GeometryType.POLYGON, *(out[0], (out[1], poly_starts))))
    if bad.any():
        keep &= ~bad
        out = _pick(keep[ring_poly], simple, simple_starts.astype(np.int64), mid, mid_starts)
    return out[0], out[1], poly_starts


def _pick(use_a: np.ndarray, a: np.ndarray, a_starts: np.ndarray, b: np.ndarray,
          b_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ring ``i`` from ``a`` where ``use_a[i]``, else from ``b`` (two ragged ring arrays of the same rings)."""
    sizes = np.where(use_a, np.diff(a_starts), np.diff(b_starts))
    src = np.where(use_a, a_starts[:-1], b_starts[:-1] + len(a))
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    index = np.arange(starts[-1]) + np.repeat(src - starts[:-1], sizes)
    return np.concatenate([a, b])[index], starts
