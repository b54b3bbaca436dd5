"""Polygon validity as QuPath reads it: check and repair outlines before they are written.

One invalid polygon (e.g. a ring touching itself) makes QuPath 0.7 reject a whole GeoJSON file
("Reduction failed, possible invalid input"), so every outline the engine writes passes through
:func:`valid_ragged` (arrays, the engine's path) or :func:`valid_polygons` (lists of rings).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["valid_polygons", "valid_ragged"]


def valid_polygons(polygons: Sequence[Sequence[np.ndarray]]) -> tuple[list[list[np.ndarray]], np.ndarray]:
    """Check polygons as QuPath will read them, and repair the invalid ones deterministically.

    Parameters
    ----------
    polygons : Sequence of Sequence of numpy.ndarray
        Each polygon's closed rings, ``(n, 2)`` arrays of ``(x, y)``: exterior first, then holes.

    Returns
    -------
    rings : list of list of numpy.ndarray
        Per polygon, its own rings where it is valid (``shapely.is_valid``); otherwise the rings of the
        largest polygon of ``shapely.make_valid`` (its convex hull if none has an area).
    repaired : numpy.ndarray of bool
        Which polygons were invalid and replaced.

    Notes
    -----
    Validity is kept by a positive scale, a shift and rounding to 2 decimals when rings lie on a
    pixel-corner grid of spacing above 0.01 (rounding is monotone, so every corner keeps its place in
    the grid's order): check in working pixels, then transform.

    Examples
    --------
    >>> bowtie = np.array([[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]], float)
    >>> rings, repaired = valid_polygons([[bowtie]])
    >>> repaired.tolist(), len(rings[0])
    ([True], 1)
    """
    polygons = [[np.asarray(r, dtype=np.float64) for r in rings] for rings in polygons]
    if not polygons:
        return [], np.zeros(0, dtype=bool)
    rings = [r for p in polygons for r in p]
    xy, ring_starts, poly_starts, repaired = valid_ragged(
        np.concatenate(rings), np.cumsum([0] + [len(r) for r in rings]), np.cumsum([0] + [len(p) for p in polygons])
    )
    out = list(polygons)
    for i in np.flatnonzero(repaired).tolist():
        rs = ring_starts[poly_starts[i] : poly_starts[i + 1] + 1]
        out[i] = [xy[a:b] for a, b in zip(rs[:-1], rs[1:])]
    return out, repaired


def valid_ragged(
    xy: np.ndarray, ring_starts: np.ndarray, poly_starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`valid_polygons` on polygons in ``shapely.from_ragged_array`` layout (closed rings, offsets).

    A single ring on the pixel-corner grid that walks no corner twice is valid by
    :func:`~._grid_rings.simple_grid_rings` (compiled; the engine's pixel outlines nearly all are); every other
    polygon is checked by ``shapely.is_valid``.

    Returns
    -------
    xy, ring_starts, poly_starts : ndarray
        The same arrays where every polygon is valid, else with the invalid ones replaced.
    repaired : ndarray of bool
        Which polygons were invalid and replaced.
    """
    import shapely

    from ._grid_rings import simple_grid_rings

    n = len(poly_starts) - 1
    if n <= 0:
        return xy, ring_starts, poly_starts, np.zeros(0, dtype=bool)
    xy = np.asarray(xy, dtype=np.float64)
    ring_starts, poly_starts = np.asarray(ring_starts, np.int64), np.asarray(poly_starts, np.int64)
    unproven = ~simple_grid_rings(xy, ring_starts, poly_starts)  # most pixel outlines are proven valid here
    if not unproven.any():
        return xy, ring_starts, poly_starts, np.zeros(n, dtype=bool)
    geoms = shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, (ring_starts, poly_starts))
    repaired = np.zeros(n, dtype=bool)
    repaired[unproven] = ~shapely.is_valid(geoms[unproven])
    if not repaired.any():
        return xy, ring_starts, poly_starts, repaired
    for i in np.flatnonzero(repaired).tolist():
        parts = [g for g in shapely.get_parts(shapely.make_valid(geoms[i])) if g.geom_type == "Polygon" and g.area > 0]
        geoms[i] = max(parts, key=lambda g: g.area) if parts else shapely.convex_hull(geoms[i])
    _, coords, (ring_starts, poly_starts) = shapely.to_ragged_array(geoms)
    return coords, ring_starts.astype(np.int64), poly_starts.astype(np.int64), repaired
