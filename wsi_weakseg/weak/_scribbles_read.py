"""Reading scribbles from QuPath GeoJSON (:func:`read_scribbles`).

Import from :mod:`wsi_weakseg.weak.scribbles`, whose docstring states the rules; this module only holds
part of its implementation.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from wsi_weakseg.errors import ConfigError, GeoJSONError
from wsi_weakseg.io.geojson import feature_class_name, read_features

from ._points_read import _summary

# The logger of the public module (configure "wsi_weakseg.weak.scribbles").
log = logging.getLogger("wsi_weakseg.weak.scribbles")

#: Default classes of nucleus strokes and of background strokes.
NUCLEUS_STROKE_CLASSES: tuple[str, ...] = ("Nucleus",)
BACKGROUND_STROKE_CLASSES: tuple[str, ...] = ("Background",)
#: Strokes whose class starts with this (case-insensitive; QuPath's ``Ignore*``) mark nothing.
IGNORE_PREFIX = "ignore"

_LINES = ("LineString", "MultiLineString")
_POLYGONS = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class ScribbleSet:
    """Scribbles of one image, in level-0 pixels (QuPath's convention, see :mod:`~wsi_weakseg.weak.scribbles`).

    Attributes
    ----------
    nucleus, background : tuple of shapely geometries
        One geometry per stroke: a ``LineString`` (polyline tool) or a ``Polygon`` (a brush stroke).
        Multi-part geometries are split into their parts.
    n_ignored : int
        Strokes of an ``Ignore*`` class (they mark nothing).
    n_unused : int
        Line strokes of a class that is neither a nucleus, background nor ignore class (warned).
    n_dropped_outside : int
        Strokes wholly outside the image (dropped, warned).
    n_clipped : int
        Strokes partly outside the image (kept; their outside part draws nothing).
    source : str
        The file read.
    """

    nucleus: tuple[BaseGeometry, ...]
    background: tuple[BaseGeometry, ...]
    n_ignored: int = 0
    n_unused: int = 0
    n_dropped_outside: int = 0
    n_clipped: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.nucleus) + len(self.background)


def _class_set(classes: Sequence[str] | str, what: str) -> set[str]:
    if isinstance(classes, str):  # one class name, not a sequence of characters
        classes = [classes]
    out = {str(c).casefold() for c in classes}
    if not out:
        raise ConfigError(f"{what} must name at least one class")
    return out


def _stroke_parts(feature: dict[str, Any], path: Path) -> list[BaseGeometry]:
    """Non-empty single-part geometries of a line or polygon feature."""
    try:
        geom = shape(feature["geometry"])
    except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException) as exc:
        raise GeoJSONError(f"{path}: cannot build a stroke from feature {feature.get('id')!r}: {exc}") from exc
    parts = [p for p in shapely.get_parts(geom) if not p.is_empty]
    if geom.geom_type in _POLYGONS:  # brush strokes may self-intersect; repair, keep the polygonal parts
        fixed = [shapely.make_valid(p) if not p.is_valid else p for p in parts]
        parts = [q for p in fixed for q in shapely.get_parts(p) if q.geom_type == "Polygon" and not q.is_empty]
    return parts


def _restrict(
    strokes: list[BaseGeometry], image_size: tuple[int, int] | None
) -> tuple[list[BaseGeometry], int, int]:
    """Strokes touching the image, and the numbers of strokes dropped (wholly outside) and clipped."""
    if image_size is None or not strokes:
        return strokes, 0, 0
    box = shapely.box(0, 0, float(image_size[0]), float(image_size[1]))
    inside = shapely.intersects(box, strokes)
    within = shapely.within(strokes, box)
    kept = [s for s, k in zip(strokes, inside) if k]
    return kept, int((~inside).sum()), int((inside & ~within).sum())


def read_scribbles(
    path: str | os.PathLike[str],
    *,
    nucleus_classes: Sequence[str] = NUCLEUS_STROKE_CLASSES,
    background_classes: Sequence[str] = BACKGROUND_STROKE_CLASSES,
    image_size: tuple[int, int] | None = None,
) -> ScribbleSet:
    """Read nucleus and background strokes from a QuPath GeoJSON export.

    Parameters
    ----------
    path : str or os.PathLike
        Any file :func:`~wsi_weakseg.io.geojson.read_features` reads.
    nucleus_classes, background_classes : Sequence of str, optional
        Classes (case-insensitive; ``""`` selects unclassified strokes) of the strokes that mark
        nucleus and background pixels. Defaults ``("Nucleus",)`` and ``("Background",)``.
    image_size : (int, int), optional
        ``(width, height)`` in level-0 pixels (for a slide, its bounds size). Strokes wholly
        outside are dropped; strokes partly outside are kept (counted).

    Returns
    -------
    ScribbleSet

    Raises
    ------
    ConfigError
        If a class is both a nucleus and a background class.
    GeoJSONError
        If the file is malformed or has NaN/infinite coordinates, holds no stroke of the selected
        classes (the message lists the line classes found), or every stroke lies outside the image.
    """
    path = Path(path)
    nuc = _class_set(nucleus_classes, "nucleus_classes")
    bg = _class_set(background_classes, "background_classes")
    if nuc & bg:
        raise ConfigError(f"classes {sorted(nuc & bg)} are both nucleus and background stroke classes")
    strokes: dict[str, list[BaseGeometry]] = {"nucleus": [], "background": []}
    kinds: Counter[str] = Counter()
    line_classes: Counter[str] = Counter()
    n_ignored = n_unused = 0
    for feature in read_features(path):  # NaN/infinite coordinates raise GeoJSONError there
        kind = feature["geometry"]["type"]
        kinds[kind] += 1
        if kind not in _LINES + _POLYGONS:
            continue
        name = feature_class_name(feature) or ""
        key = name.casefold()
        if kind in _LINES:
            line_classes[name] += 1
        if key in nuc or key in bg:
            strokes["nucleus" if key in nuc else "background"].extend(_stroke_parts(feature, path))
        elif key.startswith(IGNORE_PREFIX):
            n_ignored += 1
        elif kind in _LINES:  # polygons of other classes are regions or outlines, not strokes
            n_unused += 1
    if not strokes["nucleus"] and not strokes["background"]:
        raise GeoJSONError(
            f"{path}: no scribbles of classes {sorted(nuc)} (nucleus) or {sorted(bg)} (background); the file "
            f"holds {_summary(kinds)} geometries, line classes {_summary(line_classes)}. Draw strokes with "
            "QuPath's polyline or brush tool, classify them, and adjust nucleus_classes/background_classes"
        )
    if n_unused:
        log.warning("%s: %d line stroke(s) of other classes ignored (line classes: %s)", path, n_unused,
                    _summary(line_classes))
    return _finish(path, strokes, image_size, n_ignored, n_unused)


def _finish(
    path: Path, strokes: dict[str, list[BaseGeometry]], image_size: tuple[int, int] | None, n_ignored: int,
    n_unused: int,
) -> ScribbleSet:
    """Restrict to the image, warn with the counts, and build the :class:`ScribbleSet`."""
    total = len(strokes["nucleus"]) + len(strokes["background"])
    nucleus, drop_n, clip_n = _restrict(strokes["nucleus"], image_size)
    background, drop_b, clip_b = _restrict(strokes["background"], image_size)
    dropped, clipped = drop_n + drop_b, clip_n + clip_b
    if dropped == total:
        raise GeoJSONError(f"{path}: all {total} strokes lie outside the {image_size[0]}x{image_size[1]} image; "  # type: ignore[index]
                           "check that the scribbles belong to this image")
    if dropped or clipped:
        log.warning("%s: of %d strokes, dropped %d wholly outside the image and clipped %d partly outside",
                    path, total, dropped, clipped)
    for what, kept in (("nucleus", nucleus), ("background", background)):
        if not kept:
            log.warning("%s: no %s strokes; the partial loss will see one class only", path, what)
    log.debug("%s: %d nucleus and %d background strokes, %d ignored", path, len(nucleus), len(background), n_ignored)
    return ScribbleSet(tuple(nucleus), tuple(background), n_ignored, n_unused, dropped, clipped, str(path))
