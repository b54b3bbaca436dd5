"""Point clicks from QuPath GeoJSON: read, validate, deduplicate, restrict to annotated regions, write.

Coordinates are level-0 pixels in QuPath's continuous convention: pixel (col ``i``, row ``j``) spans
``[i, i+1) x [j, j+1)``, so a click at ``(x, y)`` lies in pixel ``(floor(x), floor(y))``.
:attr:`PointSet.xy` holds these ``(x, y)`` values; :meth:`PointSet.rc` converts them to the
pixel-centre ``(row, col)`` coordinates of array indexing, ``(y - 0.5, x - 0.5)``.

Rules (applied in this order by :func:`read_points`):

1. **Points** are the positions of every ``Point`` and ``MultiPoint`` geometry, whatever the
   object type, whose class (:func:`~wsi_weakseg.io.geojson.feature_class_name`: classification,
   else ``properties.name``) is in ``point_classes`` (case-insensitive; ``None`` keeps all).
2. **Duplicates** closer than ``merge_radius`` are merged (see :func:`merge_duplicates`): the most
   specific class wins (a class other than the generic ``Nucleus`` beats ``Nucleus``, which beats
   unclassified), ties go to the first in file order.
3. **Regions** are polygon annotations (``Polygon``/``MultiPolygon``, ``objectType`` annotation
   or missing), selected by :func:`is_default_region` or by ``region_classes``; their union is
   :attr:`PointSet.regions`, ``None`` when there is none (the whole image is annotated).
4. Points **outside** the image or outside every region are dropped, counted and reported in one
   warning.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from scipy.spatial import cKDTree
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from wsi_weakseg.errors import GeoJSONError
from wsi_weakseg.io.geojson import DEFAULT_NUCLEUS_COLOR, GeoJSONWriter, feature_class_name, read_features, stable_uuid
from wsi_weakseg.io._geojson_read import feature_object_type

__all__ = [
    "GENERIC_CLASSES",
    "REGION_NAME",
    "PointSet",
    "is_default_region",
    "merge_duplicates",
    "read_points",
    "write_points",
]

log = logging.getLogger(__name__)

#: Class names (case-insensitive) that say only "a nucleus": any other class is more specific.
GENERIC_CLASSES: tuple[str, ...] = ("Nucleus",)

#: Name of the region annotations :func:`write_points` writes.
REGION_NAME = "Annotated region"

#: Region names/classes of the default rule: "Region", "Annotated region", optionally followed by a
#: non-letter and anything ("Region 2", "Region_a", "Region*"), case-insensitive; not "Regional".
_REGION_RE = re.compile(r"(annotated\s+)?region([^a-z].*)?", re.IGNORECASE | re.DOTALL)

#: Colours :func:`write_points` uses for known classes (those of the CRCHistoPhenotypes exports).
_KNOWN_COLORS: dict[str, tuple[int, int, int]] = {
    "nucleus": DEFAULT_NUCLEUS_COLOR,
    "epithelial": (255, 64, 64),
    "fibroblast": (0, 160, 0),
    "inflammatory": (0, 0, 255),
    "other": (255, 200, 0),
}

_DECIMALS = 2


@dataclass(frozen=True, eq=False)
class PointSet:
    """Point clicks of one image, in QuPath's level-0 continuous coordinates.

    Attributes
    ----------
    xy : numpy.ndarray
        ``(n, 2)`` float64 click positions ``(x, y)`` in level-0 pixels, continuous convention
        (the click lies in pixel ``(floor(x), floor(y))``); read-only.
    classes : tuple of str
        Class of each point, ``""`` when unclassified.
    regions : shapely geometry or None
        Union of the annotated regions (Polygon or MultiPolygon, same coordinates as ``xy``);
        ``None`` means the whole image is annotated.
    n_dropped_outside : int
        Points dropped because they lay outside the image or outside every region.
    n_merged_duplicates : int
        Points removed by merging duplicates (input points minus kept points).
    source : str
        The file the points were read from (or a description).
    """

    xy: np.ndarray
    classes: tuple[str, ...]
    regions: BaseGeometry | None = None
    n_dropped_outside: int = 0
    n_merged_duplicates: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        xy = np.array(self.xy, dtype=np.float64).reshape(-1, 2)
        if not np.all(np.isfinite(xy)):
            raise ValueError("PointSet coordinates must be finite")
        xy.setflags(write=False)
        object.__setattr__(self, "xy", xy)
        classes = tuple(str(c) for c in self.classes)
        if len(classes) != len(xy):
            raise ValueError(f"PointSet has {len(xy)} points but {len(classes)} classes")
        object.__setattr__(self, "classes", classes)

    def __len__(self) -> int:
        return len(self.xy)

    def rc(self) -> np.ndarray:
        """Pixel-centre ``(row, col)`` coordinates, ``(y - 0.5, x - 0.5)``, as a new ``(n, 2)`` array.

        Examples
        --------
        >>> PointSet(np.array([[10.5, 3.5]]), ("Nucleus",)).rc()
        array([[ 3., 10.]])
        """
        return np.stack([self.xy[:, 1] - 0.5, self.xy[:, 0] - 0.5], axis=1)

    def class_counts(self) -> dict[str, int]:
        """Number of points per class, in order of first appearance."""
        return dict(Counter(self.classes))


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


def _class_rank(name: str, generic: set[str]) -> int:
    """0 for a specific class, 1 for a generic nucleus class, 2 for unclassified."""
    if not name:
        return 2
    return 1 if name.casefold() in generic else 0


def merge_duplicates(
    xy: np.ndarray,
    classes: Sequence[str],
    radius: float,
    generic_classes: Sequence[str] = GENERIC_CLASSES,
) -> tuple[np.ndarray, int]:
    """Indices of the points kept after merging points closer than ``radius``.

    Greedy and deterministic: points are visited by class rank (specific class, then generic
    nucleus class, then unclassified), ties in input order; each point not yet absorbed is kept and
    absorbs every not-yet-absorbed point within ``radius`` (distance ``<= radius``) of it. A kept
    point keeps its own position and class. No chaining: a point is absorbed only by a kept point
    within ``radius`` of it.

    Parameters
    ----------
    xy : numpy.ndarray
        ``(n, 2)`` positions.
    classes : Sequence of str
        Class of each point (``""`` = unclassified).
    radius : float
        Merge distance in pixels, ``>= 0`` (0 merges identical positions only).
    generic_classes : Sequence of str
        Class names (case-insensitive) ranked below every other class.

    Returns
    -------
    keep : numpy.ndarray
        Indices of the kept points, ordered by the first input index of the group each one
        absorbed (so the output follows the order in which clicks first appear in the input).
    n_conflicts : int
        Absorbed points whose specific class differed from the kept point's specific class.

    Examples
    --------
    >>> xy = np.array([[5.0, 5.0], [20.0, 5.0], [5.0, 5.0], [20.5, 5.0]])
    >>> keep, _ = merge_duplicates(xy, ["Nucleus", "Nucleus", "Epithelial", "Fibroblast"], 1.0)
    >>> keep.tolist()  # the specific classes (indices 2, 3) win over "Nucleus"
    [2, 3]
    """
    if not (radius >= 0 and math.isfinite(radius)):
        raise ValueError(f"merge radius must be a finite number >= 0, got {radius}")
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    n = len(xy)
    if n < 2:
        return np.arange(n), 0
    pairs = cKDTree(xy).query_pairs(r=radius, output_type="ndarray")
    if len(pairs) == 0:
        return np.arange(n), 0
    generic = {g.casefold() for g in generic_classes}
    rank = np.array([_class_rank(c, generic) for c in classes], dtype=np.int64)
    both = np.concatenate([pairs, pairs[:, ::-1]])
    both = both[np.lexsort((both[:, 1], both[:, 0]))]
    starts = np.searchsorted(both[:, 0], np.arange(n + 1))
    absorbed = np.zeros(n, dtype=bool)
    keep: list[tuple[int, int]] = []  # (first input index of the group, kept index)
    conflicts = 0
    for i in np.lexsort((np.arange(n), rank)):
        if absorbed[i]:
            continue
        absorbed[i] = True
        first = int(i)
        for j in both[starts[i] : starts[i + 1], 1]:
            if not absorbed[j]:
                absorbed[j] = True
                first = min(first, int(j))
                if rank[i] == 0 and rank[j] == 0 and classes[i] != classes[j]:
                    conflicts += 1
        keep.append((first, int(i)))
    return np.array([k for _, k in sorted(keep)], dtype=np.int64), conflicts


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


def _class_color(name: str, class_colors: Mapping[str, Sequence[int]] | None) -> list[int]:
    if class_colors and name in class_colors:
        rgb = list(class_colors[name])
    elif name.casefold() in _KNOWN_COLORS:
        rgb = list(_KNOWN_COLORS[name.casefold()])
    else:
        digest = bytes.fromhex(stable_uuid("class colour", name).replace("-", ""))
        rgb = [64 + b % 192 for b in digest[:3]]
    ok = all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c <= 255 for c in rgb)
    if len(rgb) != 3 or not ok:
        raise ValueError(f"colour of class {name!r} must be 3 integers in 0..255, got {rgb!r}")
    return [int(c) for c in rgb]


def _round(coords: np.ndarray) -> list:
    # + 0.0 turns -0.0 into 0.0.
    return (np.round(np.asarray(coords, dtype=np.float64), _DECIMALS) + 0.0).tolist()


def _polygon_coords(poly: shapely.Polygon) -> list:
    rings = [poly.exterior, *poly.interiors]
    return [_round(np.asarray(r.coords)[:, :2]) for r in rings]


def write_points(
    path: str | os.PathLike[str],
    pointset: PointSet,
    class_colors: Mapping[str, tuple[int, int, int]] | None = None,
) -> Path:
    """Write a point set as a QuPath-importable GeoJSON export.

    One annotation per class, in order of first appearance: a ``MultiPoint`` (a ``Point`` when the
    class has a single point), ``objectType: annotation``, ``classification {name, color}`` (no
    classification for unclassified points), and a UUID id. The regions, if any, follow as one
    unclassified annotation named ``"Annotated region"`` (Polygon or MultiPolygon). Coordinates
    are rounded to 2 decimals, as QuPath writes them.

    Parameters
    ----------
    path : str or os.PathLike
        Destination (``.geojson``, ``.json`` or ``.geojson.gz``); written atomically.
    pointset : PointSet
        The points.
    class_colors : Mapping[str, (int, int, int)], optional
        Colour per class name; others get the colour of the CRCHistoPhenotypes exports when the
        name is one of theirs, else a stable colour derived from the name.

    Returns
    -------
    pathlib.Path
        ``path``.

    Notes
    -----
    :func:`read_points` on the result returns the same points (grouped by class), classes and
    regions, up to the 2-decimal rounding.
    """
    path = Path(path)
    order = list(dict.fromkeys(pointset.classes))
    classes = np.array(pointset.classes, dtype=object)
    with GeoJSONWriter(path) as out:
        for name in order:
            xy = _round(pointset.xy[classes == name])
            if len(xy) == 1:
                geometry = {"type": "Point", "coordinates": xy[0]}
            else:
                geometry = {"type": "MultiPoint", "coordinates": xy}
            props: dict[str, Any] = {"objectType": "annotation"}
            if name:
                props["classification"] = {"name": name, "color": _class_color(name, class_colors)}
            uid = stable_uuid("points", path.name, name)
            out.write({"type": "Feature", "id": uid, "geometry": geometry, "properties": props})
        if pointset.regions is not None and not pointset.regions.is_empty:
            polys = [p for p in shapely.get_parts(pointset.regions) if p.geom_type == "Polygon" and not p.is_empty]
            if len(polys) == 1:
                geometry = {"type": "Polygon", "coordinates": _polygon_coords(polys[0])}
            else:
                geometry = {"type": "MultiPolygon", "coordinates": [_polygon_coords(p) for p in polys]}
            out.write(
                {
                    "type": "Feature",
                    "id": stable_uuid("points", path.name, "region"),
                    "geometry": geometry,
                    "properties": {"objectType": "annotation", "name": REGION_NAME},
                }
            )
    return path
