"""Reading point clicks from QuPath GeoJSON (:func:`read_points`, :func:`is_default_region`).

Import from :mod:`wsi_weakseg.weak.points`, whose docstring states the rules; this module only holds part
of its implementation.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from wsi_weakseg.errors import GeoJSONError
from wsi_weakseg.io.geojson import feature_class_name, read_features
from wsi_weakseg.io._geojson_read import feature_object_type

from ._points_merge import merge_duplicates
from ._points_model import GENERIC_CLASSES, REGION_NAME, PointSet

# The logger of the public module, as before the split (configure "wsi_weakseg.weak.points").
log = logging.getLogger("wsi_weakseg.weak.points")

#: Region names/classes of the default rule: "Region", "Annotated region", optionally followed by a
#: non-letter and anything ("Region 2", "Region_a", "Region*"), case-insensitive; not "Regional".
_REGION_RE = re.compile(r"(annotated\s+)?region([^a-z].*)?", re.IGNORECASE | re.DOTALL)


def is_default_region(feature: Mapping[str, Any]) -> bool:
    """Whether a polygon annotation is an annotated region under the default rule.

    The rule: the feature's geometry is a ``Polygon`` or ``MultiPolygon``, its ``objectType`` is
    ``annotation`` or missing, and either it is **unclassified** (no ``classification``), or its
    classification name or ``properties.name`` is ``Region`` or ``Annotated region``, optionally
    followed by a non-letter and anything (``Region 2``, ``Region*``), case-insensitive.

    Examples
    --------
    >>> poly = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
    >>> is_default_region({"geometry": poly, "properties": {"name": "Tumour outline"}})
    True
    >>> is_default_region({"geometry": poly, "properties": {"classification": {"name": "Tumor"}}})
    False
    >>> is_default_region({"geometry": poly, "properties": {"classification": {"name": "Region 1"}}})
    True
    >>> is_default_region({"geometry": poly, "properties": {"classification": "Regional node"}})
    False
    """
    if not _is_polygon_annotation(feature):
        return False
    props = feature.get("properties") or {}
    if not props.get("classification"):
        return True
    return any(_REGION_RE.fullmatch(n.strip()) for n in _names(feature))


def _is_polygon_annotation(feature: Mapping[str, Any]) -> bool:
    geometry = feature.get("geometry") or {}
    return geometry.get("type") in ("Polygon", "MultiPolygon") and feature_object_type(dict(feature)) in (
        None,
        "annotation",
    )


def _names(feature: Mapping[str, Any]) -> list[str]:
    """Class name and ``properties.name`` of a feature (those that exist)."""
    out = []
    cls = feature_class_name(dict(feature))
    if cls:
        out.append(cls)
    name = (feature.get("properties") or {}).get("name")
    if isinstance(name, str) and name and name not in out:
        out.append(name)
    return out


def _polygonal(geom: BaseGeometry) -> BaseGeometry:
    """Polygonal parts of ``geom`` after repair (``make_valid`` may add lines or points)."""
    parts = shapely.get_parts(shapely.make_valid(geom))
    polys = [p for p in parts if p.geom_type in ("Polygon", "MultiPolygon") and not p.is_empty]
    return shapely.union_all(polys) if polys else shapely.Polygon()


def _summary(counter: Counter[str], limit: int = 10) -> str:
    """``"A (3), B (1)"``: counts per name, at most ``limit`` names then how many more."""
    items = [f"{k or '(unclassified)'} ({v})" for k, v in counter.items()]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return (", ".join(items[:limit]) + more) or "none"


def read_points(
    path: str | os.PathLike[str],
    *,
    point_classes: Sequence[str] | None = None,
    region_classes: Sequence[str] | None = None,
    image_size: tuple[int, int] | None = None,
    merge_radius: float = 1.0,
    require_regions: bool = False,
    generic_classes: Sequence[str] = GENERIC_CLASSES,
) -> PointSet:
    """Read point clicks (and the annotated regions) from a QuPath GeoJSON export.

    Parameters
    ----------
    path : str or os.PathLike
        Any file :func:`~wsi_weakseg.io.geojson.read_features` reads (FeatureCollection, array,
        Feature or bare geometry; ``.geojson``, ``.json``, ``.geojson.gz``, ``.zip``).
    point_classes : Sequence of str, optional
        Keep only Point/MultiPoint features of these classes (case-insensitive; ``""`` selects
        unclassified ones). ``None`` (default) keeps every class.
    region_classes : Sequence of str, optional
        Select as regions the polygon annotations whose class or ``properties.name`` is one of
        these (case-insensitive) instead of the default rule (:func:`is_default_region`).
    image_size : (int, int), optional
        ``(width, height)`` of the image in level-0 pixels (for a slide with bounds, the bounds
        size: QuPath coordinates start at the bounds origin). Points with ``x`` outside
        ``[0, width)`` or ``y`` outside ``[0, height)`` are dropped.
    merge_radius : float, optional
        Points within this distance (pixels, inclusive) are merged into one (see
        :func:`merge_duplicates`); 0 merges identical positions only.
    require_regions : bool, optional
        Raise if no region polygon is found (whole slides need one: an unannotated slide is not
        "fully annotated").
    generic_classes : Sequence of str, optional
        Class names that merged points give up for any other class (default ``("Nucleus",)``).

    Returns
    -------
    PointSet
        Points in file order (a merged point sits where its group first appears), with their
        classes, the regions and the counts of dropped and merged points.

    Raises
    ------
    GeoJSONError
        If the file is malformed or has NaN/infinite coordinates; if it holds no point of the
        requested classes (the message lists the classes found); if ``region_classes`` matches no
        polygon; if ``require_regions`` and no region is found; if every point lies outside the
        image or the regions.

    Notes
    -----
    Points outside the image or the regions are never used silently: one ``WARNING`` is logged
    with their number, and :attr:`PointSet.n_dropped_outside` holds it. Regions are not clipped
    to the image.
    """
    path = Path(path)
    if isinstance(point_classes, str):  # one class name, not a sequence of characters
        point_classes = [point_classes]
    if isinstance(region_classes, str):
        region_classes = [region_classes]
    features = read_features(path)
    wanted = None if point_classes is None else {str(c).casefold() for c in point_classes}
    region_wanted = None if region_classes is None else {str(c).casefold() for c in region_classes}

    chunks: list[np.ndarray] = []
    classes: list[str] = []
    found: Counter[str] = Counter()
    geometry_kinds: Counter[str] = Counter()
    region_shapes: list[BaseGeometry] = []
    polygon_classes: Counter[str] = Counter()
    for feature in features:
        geometry = feature["geometry"]
        kind = geometry["type"]
        geometry_kinds[kind] += 1
        if kind in ("Point", "MultiPoint"):
            coords = geometry["coordinates"]
            if kind == "Point":
                coords = [coords]
            if not coords:
                continue
            arr = np.array([c[:2] for c in coords], dtype=np.float64).reshape(-1, 2)
            if not np.all(np.isfinite(arr)):  # read_features already rejects these; keep the guard
                raise GeoJSONError(f"{path}: NaN or infinite point coordinate; re-export the points from QuPath")
            name = feature_class_name(feature) or ""
            found[name] += len(arr)
            if wanted is not None and name.casefold() not in wanted:
                continue
            chunks.append(arr)
            classes.extend([name] * len(arr))
        elif _is_polygon_annotation(feature):
            names = _names(feature)
            polygon_classes[names[0] if names else ""] += 1
            if region_wanted is None:
                selected = is_default_region(feature)
            else:
                selected = any(n.casefold() in region_wanted for n in names)
            if selected:
                try:
                    geom = _polygonal(shape(geometry))
                except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException) as exc:
                    raise GeoJSONError(
                        f"{path}: cannot build a polygon from feature {feature.get('id')!r}: {exc}"
                    ) from exc
                if not geom.is_empty:
                    region_shapes.append(geom)

    if not found:
        raise GeoJSONError(
            f"{path}: no point annotations (Point or MultiPoint) found; the file holds {_summary(geometry_kinds)} "
            "geometries. Click nuclei with QuPath's Points tool and export the annotations as GeoJSON"
        )
    if not classes:
        raise GeoJSONError(
            f"{path}: no points of class {sorted(point_classes or [])}; the point classes present are "
            f"{_summary(found)}. Adjust point_classes (null keeps all)"
        )

    regions: BaseGeometry | None = shapely.union_all(region_shapes) if region_shapes else None
    if regions is not None and regions.is_empty:
        regions = None
    if regions is None:
        if region_wanted is not None:
            raise GeoJSONError(
                f"{path}: no polygon annotation of class {sorted(region_classes or [])}; the polygon "
                f"annotations present are {_summary(polygon_classes)}"
            )
        if require_regions:
            raise GeoJSONError(
                f"{path}: no annotated region found, and a whole slide needs one; draw an annotation "
                f"region in QuPath around the area where every nucleus was clicked (an unclassified area "
                f"annotation, or one named or classified '{REGION_NAME}') and export it with the points"
                + (f" (classified polygons present: {_summary(polygon_classes)})" if polygon_classes else "")
            )
        if polygon_classes:
            log.warning(
                "%s: %d polygon annotation(s) found but none is an annotated region under the default rule "
                "(classes: %s); treating the whole image as annotated. Select them with region_classes",
                path,
                sum(polygon_classes.values()),
                _summary(polygon_classes),
            )

    xy = np.concatenate(chunks)
    keep, conflicts = merge_duplicates(xy, classes, merge_radius, generic_classes)
    n_merged = len(xy) - len(keep)
    if conflicts:
        log.warning(
            "%s: %d duplicate point(s) carried a different specific class than the point kept; "
            "kept the first in file order",
            path,
            conflicts,
        )
    xy = xy[keep]
    classes = [classes[i] for i in keep]

    inside = np.ones(len(xy), dtype=bool)
    n_off_image = 0
    if image_size is not None:
        width, height = image_size
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
        n_off_image = int((~inside).sum())
    n_off_region = 0
    if regions is not None:
        shapely.prepare(regions)
        in_region = shapely.covers(regions, shapely.points(xy))
        n_off_region = int((inside & ~in_region).sum())
        inside &= in_region
    n_dropped = int((~inside).sum())
    if n_dropped:
        where = []
        if n_off_image:
            where.append(f"{n_off_image} outside the {image_size[0]}x{image_size[1]} image")  # type: ignore[index]
        if n_off_region:
            where.append(f"{n_off_region} outside every annotated region")
        if n_dropped == len(xy):
            raise GeoJSONError(
                f"{path}: all {len(xy)} points lie outside the image or the annotated regions "
                f"({', '.join(where)}); check that the points belong to this image"
            )
        log.warning("%s: dropped %d of %d points (%s)", path, n_dropped, len(xy), ", ".join(where))
        xy = xy[inside]
        classes = [c for c, k in zip(classes, inside) if k]

    log.debug(
        "%s: %d points (%s), %d merged, %d dropped", path, len(xy), _summary(Counter(classes)), n_merged, n_dropped
    )
    return PointSet(
        xy=xy,
        classes=tuple(classes),
        regions=regions,
        n_dropped_outside=n_dropped,
        n_merged_duplicates=n_merged,
        source=str(path),
    )

