"""Read classified region annotations (``segment --regions FILE``): one polygonal area per class.

The file is what QuPath exports for annotations (or what a ``regions`` model writes): Features whose
``objectType`` is ``annotation`` (or absent) with Polygon or MultiPolygon geometry and a classification.
Anything else is refused with a :class:`~wsi_weakseg.errors.GeoJSONError` naming the feature, before any work
starts: a regions file that silently lost a class would give wrong densities.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from ..errors import GeoJSONError
from ._geojson_read import feature_class_name, feature_object_type, read_features

log = logging.getLogger(__name__)

_POLYGONAL = ("Polygon", "MultiPolygon")


def read_region_annotations(path: str | os.PathLike[str]) -> dict[str, BaseGeometry]:
    """The union of each class's polygon annotations, classes in order of first appearance.

    Parameters
    ----------
    path : str or os.PathLike
        A QuPath GeoJSON export (any form :func:`~wsi_weakseg.io.geojson.read_features` reads). Coordinates are
        level-0 pixels in QuPath's frame (relative to the slide's bounds origin).

    Returns
    -------
    dict of str to shapely geometry
        Class name (``classification.name``, or the annotation's ``name`` when unclassified) to a valid
        Polygon or MultiPolygon (self-intersections repaired with ``make_valid``).

    Raises
    ------
    GeoJSONError
        The file is missing or malformed, holds no feature, a feature that is not an annotation (a
        detection, a cell ...), a geometry that is not a polygon, an annotation without a class or name, or
        a polygon with no area.
    """
    path = Path(path)
    parts: dict[str, list[BaseGeometry]] = {}
    try:
        features = read_features(path)
    except GeoJSONError as exc:
        raise GeoJSONError(f"--regions {exc}") from None
    for i, feature in enumerate(features):
        where = f"--regions {path}: feature {i}"
        object_type = feature_object_type(feature) or "annotation"
        if object_type != "annotation":
            raise GeoJSONError(f"{where} is a {object_type}; give a file of region annotations only (QuPath: "
                               "select the annotations, File > Export objects as GeoJSON)")
        kind = feature["geometry"]["type"]
        if kind not in _POLYGONAL:
            raise GeoJSONError(f"{where} is a {kind}; regions must be Polygon or MultiPolygon annotations")
        name = feature_class_name(feature)
        if name is None:
            raise GeoJSONError(f"{where} has no classification; classify every region annotation in QuPath")
        geom = _polygonal(shapely.make_valid(shape(feature["geometry"])))
        if geom.is_empty:
            raise GeoJSONError(f"{where} ({name}) has no area; remove it or redraw it")
        parts.setdefault(name, []).append(geom)
    if not parts:
        raise GeoJSONError(f"--regions {path}: no region annotation found; export classified area annotations "
                           "from QuPath")
    log.info("--regions %s: %s", path.name, ", ".join(f"{k} ({len(v)} polygons)" for k, v in parts.items()))
    return {name: shapely.union_all(geoms) for name, geoms in parts.items()}


def _polygonal(geom: BaseGeometry) -> BaseGeometry:
    """The polygonal parts of ``geom`` (``make_valid`` may add lines or points)."""
    polys = [p for p in shapely.get_parts(geom) if p.geom_type == "Polygon" and p.area > 0]
    return shapely.union_all(polys) if polys else shapely.Polygon()
