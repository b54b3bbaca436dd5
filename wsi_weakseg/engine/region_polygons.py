"""A regions model's stitched probability map → a mask → region polygons with holes, in working pixels.

Regions can span many tiles (a gland, a tumour area), so they are built from the whole slide's stitched map at
the model's low pixel size rather than merged tile by tile: at 2 µm/px a 100k x 100k level-0 slide at
0.25 µm/px is 12.5k x 12.5k working px. The stages hold, per working pixel, the uint8 map, the mask and
one int32 label image at a time (peak about :data:`BYTES_PER_PIXEL`); maps over :data:`MAX_MASK_PIXELS` are
refused before they are read.

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
#: Peak bytes per working pixel of :func:`region_labels` (uint8 map + bool mask + int32 labels + a bool
#: temporary), so the bound above is about 2.5 GiB.
BYTES_PER_PIXEL = 10
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
        holes, _ = ndimage.label(~mask, _EIGHT, output=np.int32)
        sizes = np.bincount(holes.ravel())
        edge = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        small = sizes < params.min_hole_px
        small[0] = False
        small[edge] = False
        mask |= small[holes]
        del holes
    labels, n = ndimage.label(mask, _FOUR, output=np.int32)
    del mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= params.min_area_px
    keep[0] = False
    new = np.zeros(n + 1, np.int32)
    new[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new[labels], int(keep.sum())


def region_polygons(labels: np.ndarray, n: int) -> list[shapely.Polygon]:
    """Pixel-edge polygons (exterior and holes) of regions ``1..n``, in working pixels, in label order."""
    if n == 0:
        return []
    traced, xy, ring_starts, poly_starts = trace_flat(labels, np.arange(1, n + 1))
    if not np.array_equal(traced, np.arange(1, n + 1)):
        raise AssertionError("every region has an outline")
    return list(shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, (ring_starts, poly_starts)))


def mean_per_label(values: np.ndarray, labels: np.ndarray, n: int, rows: int = 1024) -> np.ndarray:
    """Mean of ``values`` over each label ``1..n``, a stripe of ``rows`` rows at a time (bounded memory)."""
    sums = np.zeros(n + 1)
    counts = np.zeros(n + 1)
    for y in range(0, labels.shape[0], rows):
        lab = labels[y : y + rows].ravel()
        sums += np.bincount(lab, weights=values[y : y + rows].ravel(), minlength=n + 1)
        counts += np.bincount(lab, minlength=n + 1)
    return sums[1:] / np.maximum(counts[1:], 1)


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
