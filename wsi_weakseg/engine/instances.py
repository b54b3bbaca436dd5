"""Nucleus instances from the foreground and centre maps, by rules that are exactly local.

Every rule here gives each pixel a result that depends only on the maps within a fixed distance of it,
in global coordinates, never on where a processing window starts. That is what makes blockwise
processing (:mod:`wsi_weakseg.engine.merge`) equal to processing the whole image at once.

1. **Markers** are pixels whose centre value is the strict maximum of the (value, earlier-in-raster-order)
   order within a square of radius ``peak_radius`` and at least ``centre_threshold``, on foreground. Ties on
   plateaus are broken by global raster position, never by window position; out-of-image pixels count as 0,
   so markers on the image border are kept.
2. **Pixels** are assigned to the marker of least geodesic cost (shortest paths on the 8-connected grid
   with ``skimage.graph.MCP_Geometric``'s costs, compiled and GIL-free in :mod:`._geodesic`, through
   foreground pixels, step cost ``1 + path_weight * (1 - centre)``), the *propagation* rule of
   Jones, Carpenter & Golland (2005): touching nuclei split along the valley of the centre map. Costs are
   >= 1 per pixel step, so cost <= ``max_cost`` keeps a nucleus within ``max_cost`` pixels of its marker;
   a nucleus whose region would reach farther is cut there and flagged ``oversized``. Each pixel's cost is
   multiplied by ``1 + 1e-6 * u`` with ``u`` a hash of its global position, which makes exact ties between
   two markers (and so window-dependent tie-breaking inside Dijkstra) practically impossible.
3. **Clean-up** per instance (:func:`clean_labels`): keep the 4-connected component holding the marker,
   drop instances smaller than ``min_area``, fill background pockets bordered by that instance alone, and
   cut *saddles* (the instance touching itself only diagonally at a pixel corner). The result is
   4-connected, saddle-free and has holes only where it encloses another instance (or a pocket shared
   with one), so its outline is a valid polygon on pixel edges (:mod:`~wsi_weakseg.engine.outlines`):
   simple rings that never touch, which QuPath reads. Compiled and GIL-free in :mod:`._cleanup`, which
   works instance by instance in bounding boxes.

Together: a pixel's final label depends on the maps within ``3 * max_cost + peak_radius`` of it
(:meth:`InstanceParams.halo`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._cleanup import clean, saddle_mask
from ._geodesic import assign_window, local_maxima
from .outlines import trace_outlines

_TIE_JITTER = 1e-6
_PEAK_SHIFT = 2  # markers compare centre values at 256 >> 2 = 64 levels


@dataclass(frozen=True)
class InstanceParams:
    """Post-processing parameters in working pixels and uint8 map levels.

    Attributes
    ----------
    foreground : int
        Foreground map level (0-255) at or above which a pixel is nucleus.
    centre : int
        Minimum centre map level (0-255) of a marker.
    peak_radius : int
        Markers are maxima within a square of this radius (pixels).
    max_cost : float
        Geodesic cost budget of a nucleus (pixels); its region stays within this distance of its marker.
    path_weight : float
        Weight of ``1 - centre`` in the step cost.
    min_area : int
        Instances with fewer pixels are dropped.
    """

    foreground: int
    centre: int
    peak_radius: int
    max_cost: float
    path_weight: float
    min_area: int

    @property
    def reach(self) -> int:
        """Farthest distance (pixels) between a marker and a pixel of its nucleus."""
        return int(math.ceil(self.max_cost))

    @property
    def halo(self) -> int:
        """Context a window needs around the pixels whose final labels it must get right."""
        return 3 * self.reach + self.peak_radius + 2


def params_from_card(card, mpp: float) -> InstanceParams:
    """A model card's thresholds (microns, probabilities) in working pixels and map levels at ``mpp`` µm/px.

    A ``detect-segment`` card gives :class:`~.anchored.AnchoredParams`, which the instance stage dispatches on.
    """
    if card.model_type == "detect-segment":
        from .anchored import anchored_params

        return anchored_params(card, mpp)
    if card.model_type == "regions":  # evaluate, validation and tuning score nuclei
        from ..errors import ConfigError

        raise ConfigError(f"model {card.name!r} is a regions model: it draws tissue regions, not nuclei; give a "
                          "nucleus model (run `segment` with it to get its regions)")
    t = card.thresholds
    return InstanceParams(
        foreground=int(math.ceil(t["foreground"] * 255)),
        centre=max(1, int(math.ceil(t["centre"] * 255))),
        peak_radius=max(1, int(round(t["peak_radius_um"] / mpp))),
        max_cost=card.max_reach_um / mpp,
        path_weight=float(t["path_weight"]),
        min_area=max(1, int(round(t["min_area_um2"] / mpp**2))),
    )


def find_markers(centre: np.ndarray, fg: np.ndarray, params: InstanceParams) -> np.ndarray:
    """Marker positions (row, col) in the window, sorted in raster order.

    Parameters
    ----------
    centre, fg : ndarray of uint8
        Maps of the window; pixels outside the image must be 0.
    params : InstanceParams

    Returns
    -------
    ndarray of int, shape (n, 2)
        Markers in raster order; those within ``peak_radius`` of the window edge are unreliable unless
        that edge is the image edge, and the caller must discard them. Out-of-image pixels (0) never beat
        a marker (centre >= 1), so markers on the image border survive.
    """
    # Total order (level, earlier raster position); window-relative raster order equals global raster
    # order, so ties never depend on the window. Coarser levels: a 1/255 wobble rarely moves a maximum.
    return local_maxima(np.ascontiguousarray(centre, dtype=np.uint8), np.ascontiguousarray(fg, dtype=np.uint8),
                        params.centre, params.foreground, params.peak_radius, _PEAK_SHIFT)


def assign_pixels(
    centre: np.ndarray, fg: np.ndarray, markers: np.ndarray, params: InstanceParams,
    origin: tuple[int, int] = (0, 0), width: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Geodesic assignment of foreground pixels to markers.

    ``origin`` (row, col) is the window's place in the image of ``width`` columns (default: the window is
    the image); it gives each pixel's global raster key, which seeds the tie-breaking jitter.

    Returns
    -------
    labels : ndarray of int32
        1-based index into ``markers`` of each pixel within the cost budget, 0 elsewhere.
    oversized : ndarray of bool, shape (n + 1,)
        Marker ``i`` (1-based; index 0 unused) was cut at the budget: it is the least-cost marker of some
        pixel just beyond it (cost in ``(max_cost, max_cost + margin]``, the margin two diagonal steps at the
        highest step cost), so its region would have grown farther.
    """
    shape = centre.shape
    if len(markers) == 0:
        return np.zeros(shape, dtype=np.int32), np.zeros(1, dtype=bool)
    width = shape[1] if width is None else width
    # step costs, geodesic search to the budget plus the oversize ring, split at the budget: one compiled call
    return assign_window(np.ascontiguousarray(centre, dtype=np.uint8), np.ascontiguousarray(fg, dtype=np.uint8),
                         params.foreground, float(params.path_weight), _TIE_JITTER, origin[0], origin[1], width,
                         np.ascontiguousarray(markers[:, 0], dtype=np.int64),
                         np.ascontiguousarray(markers[:, 1], dtype=np.int64),
                         float(params.max_cost), params.max_cost + _ring_margin(params))


def saddle_cuts(labels: np.ndarray, is_marker: np.ndarray) -> np.ndarray:
    """Pixels to remove so that no instance touches itself only diagonally at a pixel corner.

    A *saddle* of instance ``X`` is a 2 x 2 block holding ``X`` on one diagonal only. Its traced outline
    would pass through the block's centre corner twice, a self-touching ring that QuPath rejects. Of the
    two ``X`` pixels the lower one is cut, or the upper one where the lower is a marker: a rule on the
    block alone, so it is the same in every window.

    Parameters
    ----------
    labels : ndarray of int, shape (h, w)
    is_marker : ndarray of bool, shape (h, w)
        Pixels never cut.

    Returns
    -------
    ndarray of bool, shape (h, w)
        Pixels to set to background; all False when ``labels`` has no saddle.

    Examples
    --------
    >>> lab = np.array([[1, 0], [0, 1]])
    >>> saddle_cuts(lab, np.zeros((2, 2), bool)).astype(int).tolist()
    [[0, 0], [0, 1]]
    """
    return saddle_mask(np.ascontiguousarray(labels, dtype=np.int32), np.ascontiguousarray(is_marker, dtype=bool))


def clean_labels(labels: np.ndarray, markers: np.ndarray, params: InstanceParams) -> np.ndarray:
    """Clean-up of assigned labels: every instance left is 4-connected, saddle-free and holds its marker.

    In order: keep each instance's 4-connected component holding its marker; drop instances smaller
    than ``min_area``; fill background pockets bordered by one instance alone (so a dropped enclosed
    fragment is absorbed, not left as a hole); cut saddles (:func:`saddle_cuts`) and keep marker
    components again, until none is left. Cuts are rare; after any, small instances are dropped and
    pockets filled once more, which creates no saddle. Each step acts on an instance's own pixels and
    the pockets inside its bounding box, so the rules stay as local as before. Runs as one compiled
    kernel (:func:`._cleanup.clean`), exactly equal to the numpy/scipy steps it replaced
    (``tests/engine/test_cleanup.py`` keeps those as the oracle).

    Parameters
    ----------
    labels : ndarray of int32
        1-based marker index of each pixel, 0 for background (from :func:`assign_pixels`).
    markers : ndarray of int, shape (n, 2)
        Marker positions; instance ``i`` has its marker at ``markers[i - 1]``.
    params : InstanceParams

    Returns
    -------
    ndarray of int32
        A cleaned copy (int32 whatever the input's integer type; an unchanged copy if there are no
        markers). Each instance's outline is one simple exterior ring plus a simple hole per
        enclosed region, no two rings touching: a valid polygon by construction.
    """
    if len(markers) == 0:
        return labels.copy()
    markers = np.asarray(markers)
    return clean(np.ascontiguousarray(labels, dtype=np.int32), np.ascontiguousarray(markers[:, 0], dtype=np.int64),
                 np.ascontiguousarray(markers[:, 1], dtype=np.int64), int(params.min_area), (2 * params.reach + 1) ** 2)


def _ring_margin(params: InstanceParams) -> float:
    """Cost of two diagonal steps at the highest step cost: the oversize check looks this far past the budget."""
    return 2.0 * math.sqrt(2.0) * (1.0 + params.path_weight) * (1.0 + 2 * _TIE_JITTER)


def outline(mask: np.ndarray) -> np.ndarray:
    """Closed exterior outline of a 4-connected mask, on pixel edges.

    Returns
    -------
    ndarray of float, shape (n + 1, 2)
        Corners ``(x, y)`` in the array's continuous frame, where pixel (row j, col i) spans
        ``[i, i + 1) x [j, j + 1)`` (QuPath's convention); first vertex repeated at the end.
        See :func:`~wsi_weakseg.engine.outlines.trace_outlines`.

    Examples
    --------
    >>> outline(np.pad(np.ones((1, 1), bool), 1)).tolist()
    [[1.0, 1.0], [2.0, 1.0], [2.0, 2.0], [1.0, 2.0], [1.0, 1.0]]
    """
    rings = trace_outlines(mask.astype(np.int32), [1]).get(1)
    if not rings:
        raise ValueError("empty mask has no outline")
    return rings[0]


def label_image(
    maps: np.ndarray, params: InstanceParams, origin: tuple[int, int] = (0, 0), width: int | None = None,
) -> np.ndarray:
    """Instance labels of a whole in-memory image from its uint8 maps, by the same rules as the blockwise merge.

    Parameters
    ----------
    maps : ndarray (2, H, W) uint8
        Foreground and centre maps (probability x 255); for :class:`~.anchored.AnchoredParams`, the four maps of
        a detect-segment model (:func:`~.anchored.label_anchored`).
    params : InstanceParams
    origin, width : optional
        Where the window sits in a larger working grid of ``width`` columns (default: the window is the
        image). The geodesic tie-breaking is keyed by global raster position, so a window read out of a
        slide must say where it is to label its interior as ``segment`` labels the slide.

    Returns
    -------
    ndarray (H, W) int32
        0 background, nuclei 1..n numbered in raster order of their markers (the ids ``segment`` writes).
    """
    from .anchored import AnchoredParams, label_anchored

    if isinstance(params, AnchoredParams):
        labels, markers, _ = label_anchored(np.asarray(maps), params, origin)
    else:
        fg, centre = np.asarray(maps[0]), np.asarray(maps[1])
        markers = find_markers(centre, fg, params)
        labels, _ = assign_pixels(centre, fg, markers, params, origin, width)
        labels = clean_labels(labels, markers, params)
    kept = np.zeros(len(markers) + 1, dtype=bool)
    kept[np.unique(labels)] = True
    kept[0] = False
    new_ids = np.zeros(len(markers) + 1, dtype=np.int32)
    new_ids[kept] = np.arange(1, int(kept.sum()) + 1, dtype=np.int32)
    return new_ids[labels]
