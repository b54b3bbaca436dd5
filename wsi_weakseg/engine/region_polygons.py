"""A regions model's stitched probability map → a mask → region polygons with holes, in working pixels.

Regions can span many tiles (a gland, a tumour area), so they are built from the whole slide's stitched map at
the model's low pixel size rather than merged tile by tile: at 2 µm/px a 100k x 100k level-0 slide at
0.25 µm/px is 12.5k x 12.5k working px (156 Mpx, about 1.7 GB at :data:`BYTES_PER_PIXEL`); maps over
:data:`MAX_MASK_PIXELS` are refused before anything is read. Measured on a 4096² map (2-core CPU): labels
0.8 s, polygons 2.1 s, mean probabilities 0.2 s.

Outlines are traced on pixel edges (:func:`~wsi_weakseg.engine.outlines.trace_flat`, QuPath's convention:
pixel (row j, col i) spans ``[i, i + 1) x [j, j + 1)``), so with no simplification a region's polygon
rasterised at pixel centres is its mask, holes included, and its area is its pixel count.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import shapely
from scipy import ndimage

from ..errors import ConfigError
from ..model.region_card import region_thresholds
from .outlines import trace_flat

log = logging.getLogger(__name__)

#: Most working pixels of a stitched regions map held in memory (2**28 = 16384², e.g. a 131k x 131k level-0
#: slide at 0.25 µm/px read at 2 µm/px).
MAX_MASK_PIXELS = 2**28
#: Peak bytes per working pixel from the map to the polygons, measured with tracemalloc on a 4096² blob map
#: (317 regions, 274 holes): the uint8 map (1) + int32 labels (4) + the tracer's arrays (5.5) = 10.5, so the
#: bound above is about 2.8 GiB. Thresholding and labelling peak at 7 B/px beyond the map (per-pixel lookups
#: and counts run by stripes: indexing with an int32 image would copy it as int64).
BYTES_PER_PIXEL = 11
_ROWS = 1024  # rows per stripe of the per-pixel passes that would otherwise copy a whole image
_FOUR = ndimage.generate_binary_structure(2, 1)
_EIGHT = ndimage.generate_binary_structure(2, 2)


@dataclass(frozen=True)
class RegionParams:
    """A regions card's thresholds in working pixels.

    Attributes
    ----------
    level : int
        uint8 map value at or above which a pixel is in the class (``ceil(255 * region)``).
    min_area_px, min_hole_px : float
        Smallest region kept and smallest hole kept, in working pixels².
    simplify_px : float
        Douglas-Peucker tolerance of the outlines in working pixels (0: exact pixel edges).
    """

    level: int
    min_area_px: float
    min_hole_px: float
    simplify_px: float


def region_params(card, mpp: float) -> RegionParams:
    """The card's region thresholds at the working pixel size ``mpp`` (µm/px).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> card = SimpleNamespace(thresholds={"region": 0.5, "min_region_area_um2": 400.0, "simplify_um": 4.0})
    >>> region_params(card, 2.0)
    RegionParams(level=128, min_area_px=100.0, min_hole_px=0.0, simplify_px=2.0)
    """
    t = region_thresholds(card)
    level = max(1, math.ceil(255 * t["region"] - 1e-9))
    return RegionParams(level, t["min_region_area_um2"] / mpp**2, t["min_hole_area_um2"] / mpp**2,
                        t["simplify_um"] / mpp)


def check_mask_size(shape: tuple[int, int], where: object) -> None:
    """Refuse a working grid of more than :data:`MAX_MASK_PIXELS` pixels (before anything is read)."""
    h, w = (int(v) for v in shape)
    if h * w > MAX_MASK_PIXELS:
        raise ConfigError(
            f"{where}: the regions map would be {w}x{h} working px, over the {MAX_MASK_PIXELS:,}-pixel limit held in "
            f"memory (~{BYTES_PER_PIXEL} B/px); restrict it with --roi or use a model with a coarser mpp"
        )


def region_labels(prob: np.ndarray, params: RegionParams) -> tuple[np.ndarray, int]:
    """Label the regions of a uint8 probability map: threshold, fill small holes, drop small regions.

    Parameters
    ----------
    prob : ndarray of uint8, shape (h, w)
        The class probability x 255.
    params : RegionParams

    Returns
    -------
    labels : ndarray of int32, shape (h, w)
        Kept regions numbered 1..n in raster order of their first pixel; 0 elsewhere. A region is a
        4-connected set of pixels (so its outline is one polygon); a hole is 8-connected background that
        does not reach the map's edge.
    n : int

    Examples
    --------
    >>> prob = np.zeros((5, 6), np.uint8); prob[1:4, 1:4] = 200; prob[2, 2] = 0; prob[1, 5] = 255
    >>> labels, n = region_labels(prob, RegionParams(128, 2, 0, 0))
    >>> n, labels.tolist()[2]
    (1, [0, 1, 0, 1, 0, 0])
    """
    mask = prob >= params.level
    if params.min_hole_px > 0:
        holes, n_holes = ndimage.label(~mask, _EIGHT, output=np.int32)
        sizes = label_counts(holes, n_holes)
        edge = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        small = sizes < params.min_hole_px
        small[0] = False
        small[edge] = False
        for y in range(0, mask.shape[0], _ROWS):  # by stripes: indexing casts the int32 labels to int64
            mask[y : y + _ROWS] |= small[holes[y : y + _ROWS]]
        del holes
    labels, n = ndimage.label(mask, _FOUR, output=np.int32)
    del mask
    sizes = label_counts(labels, n)
    keep = sizes >= params.min_area_px
    keep[0] = False
    new = np.zeros(n + 1, np.int32)
    new[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    for y in range(0, labels.shape[0], _ROWS):  # in place, by stripes (no second int32 or int64 image)
        labels[y : y + _ROWS] = new[labels[y : y + _ROWS]]
    return labels, int(keep.sum())


def region_polygons(labels: np.ndarray, n: int) -> list[shapely.Polygon]:
    """Pixel-edge polygons (exterior and holes) of regions ``1..n``, in working pixels, in label order."""
    if n == 0:
        return []
    traced, xy, ring_starts, poly_starts = trace_flat(labels, np.arange(1, n + 1))
    if not np.array_equal(traced, np.arange(1, n + 1)):
        raise AssertionError("every region has an outline")
    return list(shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, (ring_starts, poly_starts)))


def label_counts(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixels of each label ``0..n``, a stripe of rows at a time (``np.bincount`` of a whole int32 image
    would first copy it to int64: 8 B/px).

    Examples
    --------
    >>> label_counts(np.array([[0, 2], [2, 2]], np.int32), 2).tolist()
    [1, 0, 3]
    """
    counts = np.zeros(n + 1, np.int64)
    for y in range(0, labels.shape[0], _ROWS):
        counts += np.bincount(labels[y : y + _ROWS].ravel(), minlength=n + 1)
    return counts


def mean_per_label(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``values`` over each label ``1..n``, a stripe of rows at a time (bounded memory)."""
    sums = np.zeros(n + 1)
    for y in range(0, labels.shape[0], _ROWS):
        sums += np.bincount(labels[y : y + _ROWS].ravel(), weights=values[y : y + _ROWS].ravel(), minlength=n + 1)
    return sums[1:] / np.maximum(label_counts(labels, n)[1:], 1)


def simplified(polygons: list[shapely.Polygon], tolerance_px: float) -> list[shapely.Polygon]:
    """Each polygon simplified within ``tolerance_px`` (topology kept), made valid; parts under 1 px² dropped.

    A polygon that simplification (or ``make_valid``) splits gives one polygon per part, so the result can be
    longer than the input; with ``tolerance_px == 0`` it is the input.
    """
    if tolerance_px <= 0:
        return list(polygons)
    out: list[shapely.Polygon] = []
    for poly in shapely.simplify(np.asarray(polygons, dtype=object), tolerance_px, preserve_topology=True):
        if not poly.is_valid:
            poly = shapely.make_valid(poly)
        out += [p for p in shapely.get_parts(poly) if p.geom_type == "Polygon" and p.area >= 1.0]
    return out
