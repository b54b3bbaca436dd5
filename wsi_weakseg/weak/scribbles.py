"""Scribbles from QuPath GeoJSON: read nucleus/background strokes and rasterise them to a label map.

Coordinates are level-0 pixels in QuPath's continuous convention: pixel (col ``i``, row ``j``) spans
``[i, i+1) x [j, j+1)``, so its centre is ``(i + 0.5, j + 0.5)``.

Rules of :func:`read_scribbles`:

1. **Strokes** are ``LineString``/``MultiLineString`` geometries (QuPath's polyline tool) and
   ``Polygon``/``MultiPolygon`` geometries (a brush stroke; QuPath exports it as a thin polygon),
   whatever the object type. Their class (:func:`~wsi_weakseg.io.geojson.feature_class_name`)
   says what they mark: ``nucleus_classes`` (default ``Nucleus``) or ``background_classes``
   (default ``Background``), case-insensitive. Point geometries are skipped, so one file may hold
   both the point clicks and the scribbles.
2. Strokes of a class starting with ``Ignore`` (QuPath's ``Ignore*``) mark nothing (counted). Line
   strokes of any other class are counted and reported in one warning; polygons of other classes
   (regions, outlines) are not strokes and are skipped silently.
3. NaN or infinite coordinates are a :class:`~wsi_weakseg.errors.GeoJSONError` (raised by
   :func:`~wsi_weakseg.io.geojson.read_features`). Strokes wholly outside the image are dropped,
   strokes partly outside are kept, both counted in one warning; all outside is an error.

Label encoding of :func:`rasterise_scribbles` (uint8), the one of every weak label in
:mod:`wsi_weakseg.weak` (see :mod:`~wsi_weakseg.weak.voronoi`), so the masked losses of the points
recipe read it unchanged: ``0`` background stroke, ``1`` nucleus stroke, ``2`` unlabelled (no stroke,
an ``Ignore*`` stroke, or a pixel covered by strokes of both classes; those pixels are counted and
reported in one warning, not an error: wide strokes near a nucleus edge overlap legitimately).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from wsi_weakseg.errors import ConfigError

from ._scribbles_read import (
    BACKGROUND_STROKE_CLASSES,
    IGNORE_PREFIX,
    NUCLEUS_STROKE_CLASSES,
    ScribbleSet,
    read_scribbles,
)
from .voronoi import BACKGROUND, IGNORE, NUCLEUS

__all__ = [
    "BACKGROUND_STROKE_CLASSES",
    "IGNORE_PREFIX",
    "NUCLEUS_STROKE_CLASSES",
    "ScribbleRaster",
    "ScribbleSet",
    "rasterise_scribbles",
    "read_scribbles",
    "scribble_label",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScribbleRaster:
    """A rasterised scribble label map and what rasterising it found.

    Attributes
    ----------
    labels : ndarray of uint8, shape (rows, cols)
        0 background, 1 nucleus, 2 unlabelled.
    n_overlap : int
        Pixels covered by strokes of both classes (set to unlabelled).
    n_empty : int
        Strokes that cover no pixel centre of the grid (too thin, or outside the window).
    """

    labels: np.ndarray
    n_overlap: int
    n_empty: int


def _stroke_area(stroke: BaseGeometry, scale: float, offset: tuple[float, float], width_px: float) -> BaseGeometry:
    """A stroke in working pixels: lines buffered by ``width_px / 2``, brush polygons as drawn."""
    geom = shapely.transform(stroke, lambda c: c * scale - np.asarray(offset))
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    return shapely.buffer(geom, width_px / 2.0)


def _draw(area: BaseGeometry, mask: np.ndarray) -> bool:
    """Set ``mask`` at the pixel centres inside ``area`` (within its bounding box); whether any was set."""
    rows, cols = mask.shape
    minx, miny, maxx, maxy = area.bounds
    c0, c1 = max(0, math.floor(minx - 0.5)), min(cols, math.ceil(maxx + 0.5))
    r0, r1 = max(0, math.floor(miny - 0.5)), min(rows, math.ceil(maxy + 0.5))
    if c0 >= c1 or r0 >= r1:
        return False
    shapely.prepare(area)
    yy, xx = np.mgrid[r0:r1, c0:c1]
    inside = shapely.contains_xy(area, xx + 0.5, yy + 0.5)
    mask[r0:r1, c0:c1] |= inside
    return bool(inside.any())


def rasterise_scribbles(
    scribbles: ScribbleSet,
    shape: tuple[int, int],
    *,
    width_px: float,
    scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
) -> ScribbleRaster:
    """Rasterise strokes onto a pixel grid: a pixel is marked when its centre lies in a stroke.

    Parameters
    ----------
    scribbles : ScribbleSet
        Strokes in level-0 pixels.
    shape : (int, int)
        ``(rows, cols)`` of the output grid.
    width_px : float
        Width of line strokes in output pixels (each line is buffered by ``width_px / 2`` with
        round caps). Brush polygons keep their drawn outline.
    scale : float, optional
        Output pixels per level-0 pixel (level-0 mpp / model mpp).
    offset : (float, float), optional
        ``(x, y)`` of the grid's corner in scaled pixels, for a window of a larger image.

    Returns
    -------
    ScribbleRaster
    """
    if not (math.isfinite(width_px) and width_px > 0 and math.isfinite(scale) and scale > 0):
        raise ConfigError(f"stroke width and scale must be positive, got width_px={width_px!r}, scale={scale!r}")
    masks = {}
    n_empty = 0
    for what, strokes in (("nucleus", scribbles.nucleus), ("background", scribbles.background)):
        mask = np.zeros(shape, dtype=bool)
        for stroke in strokes:
            n_empty += not _draw(_stroke_area(stroke, scale, offset, width_px), mask)
        masks[what] = mask
    both = masks["nucleus"] & masks["background"]
    labels = np.full(shape, IGNORE, dtype=np.uint8)
    labels[masks["background"]] = BACKGROUND
    labels[masks["nucleus"]] = NUCLEUS
    labels[both] = IGNORE
    n_overlap = int(both.sum())
    if n_overlap:
        log.warning("%s: %d pixel(s) covered by both nucleus and background strokes left unlabelled",
                    scribbles.source or "scribbles", n_overlap)
    if n_empty:
        log.warning("%s: %d stroke(s) cover no pixel centre of the %dx%d grid (too thin or outside)",
                    scribbles.source or "scribbles", n_empty, shape[1], shape[0])
    return ScribbleRaster(labels, n_overlap, n_empty)


def scribble_label(
    scribbles: ScribbleSet,
    image_size: tuple[int, int],
    *,
    level0_mpp: float,
    mpp: float,
    width_um: float,
) -> ScribbleRaster:
    """Rasterise the strokes of a whole image at the model pixel size ``mpp``.

    The grid is ``round(height * s) x round(width * s)`` with ``s = level0_mpp / mpp``; line
    strokes are ``width_um`` wide.

    Examples
    --------
    >>> line = shapely.LineString([(0.5, 1.5), (3.5, 1.5)])
    >>> s = ScribbleSet(nucleus=(line,), background=())
    >>> scribble_label(s, (4, 3), level0_mpp=0.5, mpp=0.5, width_um=0.5).labels
    array([[2, 2, 2, 2],
           [1, 1, 1, 1],
           [2, 2, 2, 2]], dtype=uint8)
    """
    for name, value in (("level0_mpp", level0_mpp), ("mpp", mpp), ("width_um", width_um)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a positive number, got {value!r}")
    s = level0_mpp / mpp
    shape = (max(1, round(image_size[1] * s)), max(1, round(image_size[0] * s)))
    return rasterise_scribbles(scribbles, shape, width_px=width_um / mpp, scale=s)

