"""Drawn nucleus masks: QuPath polygons or a label image, limited to an annotated region, on a pixel grid.

Coordinates are level-0 pixels in QuPath's continuous convention: pixel (col ``i``, row ``j``) spans
``[i, i+1) x [j, j+1)``, so its centre is ``(i + 0.5, j + 0.5)``.

Rules of :func:`read_masks` (a spec item's ``masks: FILE.geojson``):

1. **Nuclei** are ``Polygon``/``MultiPolygon`` features of a class in ``nucleus_classes`` (default
   ``Nucleus``, case-insensitive; any object type, so QuPath annotations and detections both count). Each
   polygon, and each part of a multi-polygon, is one nucleus. Self-intersecting polygons are repaired
   (``make_valid``) and counted in one warning.
2. **The annotated region** is the union of the region polygons (the rule of the point reader: unclassified,
   or named ``Region`` / ``Annotated region``; ``region_classes`` selects others). Inside it every nucleus was
   outlined, so its pixels outside every nucleus are background; outside it nothing is known (unlabelled). A
   file without a region annotates the whole image (a slide needs one: error).
3. Nuclei wholly outside the region or the image are dropped and counted in one warning; nuclei crossing the
   region's edge are kept whole (their centroid is the whole polygon's) and supervised only inside it.
4. Overlapping nuclei are counted in one warning; the pixels two nuclei share are left unlabelled.
5. NaN or infinite coordinates are a :class:`~wsi_weakseg.errors.GeoJSONError` (raised by
   :func:`~wsi_weakseg.io.geojson.read_features`), as are a file with neither nuclei nor a region and a file
   whose every nucleus is outside.

A label image (``masks: FILE.png``, one integer per nucleus on the image's own pixel grid, 0 background; a
binary 0/1 or 0/255 mask is split into 4-connected components) is limited by the region polygons of the
item's ``region: FILE.geojson`` when given (:func:`read_region`); only nuclei with a pixel inside the region are
kept.

:func:`rasterise_masks` puts a :class:`MaskSet` on a working grid: a pixel belongs to a nucleus (or to the
region) when its centre lies inside the polygon, as :func:`~wsi_weakseg.weak.scribbles.rasterise_scribbles`
marks strokes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import shapely
from scipy import ndimage as ndi
from shapely.geometry.base import BaseGeometry

from wsi_weakseg.errors import ConfigError

from ._masks_read import NUCLEUS_MASK_CLASSES, MaskSet, read_masks, read_region
from .voronoi import BACKGROUND, IGNORE, NUCLEUS

__all__ = ["NUCLEUS_MASK_CLASSES", "MaskRaster", "MaskSet", "instances_from_image", "mask_target",
           "rasterise_masks", "read_masks", "read_region"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskRaster:
    """Drawn nuclei on a pixel grid.

    Attributes
    ----------
    labels : ndarray of int32, shape (rows, cols)
        Nucleus ``i + 1`` where the centre of the pixel lies in ``nuclei[i]`` alone, else 0.
    labelled : ndarray of uint8
        1 where the target is known: inside the region, minus pixels shared by two nuclei.
    n_overlap : int
        Pixels inside two or more nuclei (left unlabelled).
    n_empty : int
        Nuclei that cover no pixel centre of the grid (smaller than a pixel, or outside the grid).
    """

    labels: np.ndarray
    labelled: np.ndarray
    n_overlap: int
    n_empty: int


def _centres_inside(area: BaseGeometry, shape: tuple[int, int]) -> tuple[int, int, np.ndarray] | None:
    """``(r0, c0, inside)``: which pixel centres of ``area``'s bounding box on the grid lie inside it."""
    rows, cols = shape
    minx, miny, maxx, maxy = area.bounds
    c0, c1 = max(0, math.floor(minx - 0.5)), min(cols, math.ceil(maxx + 0.5))
    r0, r1 = max(0, math.floor(miny - 0.5)), min(rows, math.ceil(maxy + 0.5))
    if c0 >= c1 or r0 >= r1:
        return None
    shapely.prepare(area)
    yy, xx = np.mgrid[r0:r1, c0:c1]
    return r0, c0, shapely.contains_xy(area, xx + 0.5, yy + 0.5)


def rasterise_masks(
    masks: MaskSet, shape: tuple[int, int], *, scale: float = 1.0, offset: tuple[float, float] = (0.0, 0.0)
) -> MaskRaster:
    """Rasterise drawn nuclei and their region: a pixel is set when its centre lies inside.

    Parameters
    ----------
    masks : MaskSet
        Polygons in level-0 pixels.
    shape : (int, int)
        ``(rows, cols)`` of the output grid.
    scale : float
        Output pixels per level-0 pixel.
    offset : (float, float)
        ``(x, y)`` of the grid's corner in scaled pixels (a window of a larger image).

    Returns
    -------
    MaskRaster

    Examples
    --------
    A 2 x 2 square nucleus in a 4 x 3 region of a 5 x 4 grid (pixel centres at .5):

    >>> s = MaskSet(nuclei=(shapely.box(1, 1, 3, 3),), region=shapely.box(0, 0, 4, 3))
    >>> r = rasterise_masks(s, (4, 5))
    >>> r.labels
    array([[0, 0, 0, 0, 0],
           [0, 1, 1, 0, 0],
           [0, 1, 1, 0, 0],
           [0, 0, 0, 0, 0]], dtype=int32)
    >>> r.labelled
    array([[1, 1, 1, 1, 0],
           [1, 1, 1, 1, 0],
           [1, 1, 1, 1, 0],
           [0, 0, 0, 0, 0]], dtype=uint8)
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"scale must be a positive number, got {scale!r}")
    to_grid = lambda g: shapely.transform(g, lambda c: c * scale - np.asarray(offset))
    labels = np.zeros(shape, np.int32)
    shared = np.zeros(shape, bool)
    n_empty = 0
    for i, nucleus in enumerate(masks.nuclei, start=1):
        hit = _centres_inside(to_grid(nucleus), shape)
        if hit is None or not hit[2].any():
            n_empty += 1
            continue
        r0, c0, inside = hit
        window = labels[r0 : r0 + inside.shape[0], c0 : c0 + inside.shape[1]]
        shared[r0 : r0 + inside.shape[0], c0 : c0 + inside.shape[1]] |= inside & (window > 0)
        window[inside & (window == 0)] = i
    if masks.region is None:
        labelled = np.ones(shape, np.uint8)
    else:
        labelled = np.zeros(shape, np.uint8)
        hit = _centres_inside(to_grid(masks.region), shape)
        if hit is not None:
            r0, c0, inside = hit
            labelled[r0 : r0 + inside.shape[0], c0 : c0 + inside.shape[1]] = inside
    labels[shared] = 0
    labelled[shared] = 0
    if n_empty:
        log.warning("%s: %d nucleus polygon(s) cover no pixel centre of the %dx%d grid", masks.source or "masks",
                    n_empty, shape[1], shape[0])
    return MaskRaster(labels, labelled, int(shared.sum()), n_empty)


def mask_target(labels: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """The foreground target in the weak-label encoding: 1 nucleus, 0 background, 2 where ``labelled`` is 0.

    Examples
    --------
    >>> mask_target(np.array([[0, 3, 0]]), np.array([[1, 1, 0]]))
    array([[0, 1, 2]], dtype=uint8)
    """
    out = np.where(labels > 0, NUCLEUS, BACKGROUND).astype(np.uint8)
    out[labelled == 0] = IGNORE
    return out


def instances_from_image(arr: np.ndarray, source: str = "label image") -> np.ndarray:
    """An instance label map from a label image: ids as given, or the 4-connected components of a binary mask.

    A map whose values are all in ``{0, 1}`` or ``{0, 255}`` is read as a binary mask (logged); anything else
    keeps its ids (0 = background).

    Examples
    --------
    >>> instances_from_image(np.array([[255, 0, 255]], np.uint8))
    array([[1, 0, 2]], dtype=int32)
    >>> instances_from_image(np.array([[7, 0, 9]], np.uint16))
    array([[7, 0, 9]], dtype=int32)
    """
    arr = np.asarray(arr)
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}:
        labels, n = ndi.label(arr > 0)
        log.info("%s: binary mask read as %d connected nuclei", source, n)
        return labels.astype(np.int32)
    return arr.astype(np.int32)
