"""Voronoi labels from point clicks (Qu et al., MICCAI 2019 / TMI 2020).

Label encoding shared by all point-derived labels of :mod:`wsi_weakseg.weak` (uint8):

* ``BACKGROUND = 0`` -- supervised as background,
* ``NUCLEUS = 1`` -- supervised as nucleus,
* ``IGNORE = 2`` -- not supervised (excluded from the loss).

The Voronoi label marks the Voronoi edges between clicked nuclei as background (they teach the
network to separate touching nuclei), a small disk around each click as nucleus, and ignores
everything else.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["BACKGROUND", "IGNORE", "NUCLEUS", "voronoi_cells", "voronoi_edges", "voronoi_label"]

#: Label value: background (supervised).
BACKGROUND = np.uint8(0)
#: Label value: nucleus (supervised).
NUCLEUS = np.uint8(1)
#: Label value: ignored (not supervised).
IGNORE = np.uint8(2)


def _point_pixels(points_rc: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rounded pixel positions of the points inside ``shape`` and their original indices."""
    pts = np.asarray(points_rc, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(pts).all():
        raise ValueError("points_rc contains non-finite coordinates")
    pix = np.rint(pts).astype(np.int64)
    inside = (pix[:, 0] >= 0) & (pix[:, 0] < shape[0]) & (pix[:, 1] >= 0) & (pix[:, 1] < shape[1])
    return pix[inside], np.flatnonzero(inside)


def _nearest(points_rc: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(cell id map int32, distance-to-nearest-point map float64); ids are point index + 1."""
    shape = (int(shape[0]), int(shape[1]))
    pix, idx = _point_pixels(points_rc, shape)
    if len(pix) == 0:
        return np.zeros(shape, np.int32), np.full(shape, np.inf)
    seeds = np.zeros(shape, np.int32)
    # Reverse order so that, of several points rounding to one pixel, the first one owns it.
    seeds[pix[::-1, 0], pix[::-1, 1]] = idx[::-1].astype(np.int32) + 1
    dist, (ri, ci) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    return seeds[ri, ci], dist


def voronoi_cells(points_rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Voronoi cell of every pixel: the index + 1 of its nearest point (int32; 0 if no point).

    Parameters
    ----------
    points_rc : ndarray, shape (n, 2)
        Points (row, col) in pixel-centre coordinates; rounded to the nearest pixel. Points
        outside ``shape`` own no cell; of points rounding to the same pixel the first owns it.
    shape : (int, int)
        Output shape.

    Returns
    -------
    ndarray of int32
        Cell ids; equidistant pixels go to the point :func:`scipy.ndimage.distance_transform_edt`
        reports, which is deterministic.

    Examples
    --------
    >>> voronoi_cells(np.array([[0, 0], [0, 3]]), (1, 4))
    array([[1, 1, 2, 2]], dtype=int32)
    """
    return _nearest(points_rc, shape)[0]


def voronoi_edges(cells: np.ndarray, edge_width: int = 1) -> np.ndarray:
    """Boolean mask of the boundaries between the cells of a label image.

    A pixel is on the thinnest boundary when its right, lower or lower-right neighbour belongs to
    another cell (the lower-left case is already covered by the right and lower rules). Every
    diagonal step between cells then touches a boundary pixel, so every 8-connected path from
    one cell into another -- e.g. a rasterised segment, or a nucleus grown across the edge by an
    8-connected labelling -- passes through a boundary pixel (a 1-pixel 8-connected line would
    let diagonal steps slip through).
    ``edge_width > 1`` widens it to the pixels within ``(edge_width - 1) / 2`` of that boundary
    (odd widths are exact; an even width acts as the next lower odd one).
    """
    if edge_width < 1:
        raise ValueError(f"edge_width must be >= 1, got {edge_width}")
    edges = np.zeros(cells.shape, bool)
    edges[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    edges[:-1, :] |= cells[:-1, :] != cells[1:, :]
    edges[:-1, :-1] |= cells[:-1, :-1] != cells[1:, 1:]
    if edge_width > 1 and edges.any():
        edges = ndi.distance_transform_edt(~edges) <= (edge_width - 1) / 2.0
    return edges


def voronoi_label(
    points_rc: np.ndarray,
    shape: tuple[int, int],
    point_radius: float = 2.0,
    edge_width: int = 1,
) -> np.ndarray:
    """Voronoi label: edges BACKGROUND, disks around the points NUCLEUS, the rest IGNORE.

    Parameters
    ----------
    points_rc : ndarray, shape (n, 2)
        Points (row, col) in pixel-centre coordinates (see :func:`voronoi_cells`).
    shape : (int, int)
        Output shape.
    point_radius : float
        Pixels within this distance (pixels) of their nearest point are NUCLEUS.
    edge_width : int
        Width of the background edges in pixels; 1 is the thinnest line that no 8-connected
        path crosses (see :func:`voronoi_edges`).

    Returns
    -------
    ndarray of uint8
        0 = BACKGROUND, 1 = NUCLEUS, 2 = IGNORE.

    Notes
    -----
    Edges win over the point disks where they meet (two clicks closer than about
    ``2 * point_radius``), so touching nuclei stay separated; the point pixel itself is always
    NUCLEUS. With no point inside ``shape`` everything is IGNORE.

    Examples
    --------
    >>> voronoi_label(np.array([[0, 1], [0, 6]]), (1, 8), point_radius=1)
    array([[1, 1, 1, 0, 2, 1, 1, 1]], dtype=uint8)
    """
    shape = (int(shape[0]), int(shape[1]))
    cells, dist = _nearest(points_rc, shape)
    out = np.full(shape, IGNORE, np.uint8)
    out[dist <= point_radius] = NUCLEUS
    out[voronoi_edges(cells, edge_width)] = BACKGROUND
    pix, _ = _point_pixels(points_rc, shape)
    out[pix[:, 0], pix[:, 1]] = NUCLEUS
    return out
