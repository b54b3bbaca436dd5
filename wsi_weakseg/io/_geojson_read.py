"""Read QuPath GeoJSON exports: every container form, validated, in file order.

Public names are re-exported by :mod:`wsi_weakseg.io.geojson`.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from wsi_weakseg.errors import GeoJSONError

log = logging.getLogger(__name__)

#: Nesting depth of ``coordinates`` above a single position, per geometry type.
_DEPTH = {
    "Point": 0,
    "MultiPoint": 1,
    "LineString": 1,
    "MultiLineString": 2,
    "Polygon": 2,
    "MultiPolygon": 3,
}
_GEOMETRY_TYPES = frozenset(_DEPTH) | {"GeometryCollection"}
_OBJECT_TYPES = frozenset({"annotation", "detection", "cell", "tile", "tmaCore"})


#: Largest GeoJSON text read, in bytes after decompression (512 MiB). Checked while reading and
#: decompressing, so a small gzip or zip "bomb" is refused after at most this much output.
MAX_GEOJSON_BYTES = 512 * 2**20
_CHUNK = 1 << 20


def _read_capped(fh: IO[bytes], path: Path, what: str) -> bytes:
    """Read ``fh`` to the end in chunks, refusing more than :data:`MAX_GEOJSON_BYTES`."""
    limit = MAX_GEOJSON_BYTES
    parts, total = [], 0
    while chunk := fh.read(min(_CHUNK, limit + 1 - total)):
        parts.append(chunk)
        total += len(chunk)
        if total > limit:
            raise GeoJSONError(
                f"{path}: {what} is larger than the {limit / 2**20:.0f} MiB wsi-weakseg reads; export only the "
                "objects you need from QuPath (e.g. the region annotations, without detections)"
            )
    return b"".join(parts)


def _load_text(path: Path) -> str:
    """Return the JSON text of ``path``: plain, gzip (by content) or the first JSON member of a zip.

    At most :data:`MAX_GEOJSON_BYTES` of (decompressed) text are read; more is refused.
    """
    if not path.is_file():
        raise GeoJSONError(f"{path}: no such GeoJSON file; check the path")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    try:
        if magic[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as fh:
                data = _read_capped(fh, path, "the decompressed gzip content")
        elif magic == b"PK\x03\x04" or path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.lower().endswith((".geojson", ".json"))]
                if not names:
                    raise GeoJSONError(f"{path}: zip archive holds no .geojson or .json member")
                log.debug("reading member %s of %s", names[0], path)
                with zf.open(names[0]) as fh:  # counted while inflating, not trusted from the directory
                    data = _read_capped(fh, path, f"zip member {names[0]}")
        else:
            with open(path, "rb") as fh:
                data = _read_capped(fh, path, "the file")
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise GeoJSONError(f"{path}: cannot decompress ({exc}); is the file truncated?") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GeoJSONError(f"{path}: not UTF-8 text ({exc})") from exc


def _check_positions(coords: Any, depth: int, where: str) -> None:
    """Check that ``coords`` nests ``depth`` lists above finite 2D/3D positions."""
    if depth == 0:
        coords = [coords]
        depth = 1
    if not isinstance(coords, list):
        raise GeoJSONError(f"{where}: coordinates must be nested arrays")
    if depth > 1:
        for part in coords:
            _check_positions(part, depth - 1, where)
        return
    if not coords:
        return
    try:
        arr = np.asarray(coords)
    except (TypeError, ValueError):
        arr = np.empty(0, dtype=object)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3) or arr.dtype.kind not in "iuf":
        raise GeoJSONError(f"{where}: positions must be arrays of 2 or 3 numbers")
    if not np.all(np.isfinite(arr)):
        raise GeoJSONError(f"{where}: NaN or infinite coordinate; re-export the objects from QuPath")


def _check_geometry(geometry: Any, where: str) -> None:
    if not isinstance(geometry, dict):
        raise GeoJSONError(f"{where}: geometry must be an object, got {type(geometry).__name__}")
    kind = geometry.get("type")
    if kind not in _GEOMETRY_TYPES:
        raise GeoJSONError(f"{where}: unknown geometry type {kind!r}; expected one of {sorted(_GEOMETRY_TYPES)}")
    if kind == "GeometryCollection":
        parts = geometry.get("geometries")
        if not isinstance(parts, list):
            raise GeoJSONError(f"{where}: GeometryCollection needs a 'geometries' array")
        for k, part in enumerate(parts):
            _check_geometry(part, f"{where}, geometry {k}")
        return
    if "coordinates" not in geometry:
        raise GeoJSONError(f"{where}: {kind} has no 'coordinates'")
    _check_positions(geometry["coordinates"], _DEPTH[kind], f"{where} ({kind})")


def _check_feature(feature: Any, where: str) -> None:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        got = feature.get("type") if isinstance(feature, dict) else type(feature).__name__
        raise GeoJSONError(f"{where}: expected a Feature, got {got!r}")
    if feature.get("geometry") is None:
        raise GeoJSONError(f"{where}: Feature has no geometry")
    _check_geometry(feature["geometry"], where)
    props = feature.get("properties")
    if props is not None and not isinstance(props, dict):
        raise GeoJSONError(f"{where}: 'properties' must be an object or null")


def read_features(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read every Feature of a QuPath GeoJSON file, validated, in file order.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.geojson``/``.json`` file, gzip-compressed (``.geojson.gz``) or a ``.zip`` whose first
        ``.geojson``/``.json`` member is read. It may hold a FeatureCollection, a bare array of
        Features, a single Feature or a bare geometry.

    Returns
    -------
    list of dict
        The Features exactly as parsed (key order kept). A bare geometry is wrapped as
        ``{"type": "Feature", "geometry": ..., "properties": {}}``.

    Raises
    ------
    GeoJSONError
        If the file is missing, larger than :data:`MAX_GEOJSON_BYTES` once decompressed, not JSON, not
        one of the forms above, holds an unknown geometry type, malformed coordinates, or NaN/infinite
        coordinates.
    """
    path = Path(path)
    text = _load_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GeoJSONError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection":
            features = data.get("features")
            if not isinstance(features, list):
                raise GeoJSONError(f"{path}: FeatureCollection 'features' must be an array")
        elif kind == "Feature":
            features = [data]
        elif kind in _GEOMETRY_TYPES:
            _check_geometry(data, f"{path}: geometry")
            features = [{"type": "Feature", "geometry": data, "properties": {}}]
        else:
            raise GeoJSONError(f"{path}: unknown GeoJSON type {kind!r}; expected a FeatureCollection, Feature or geometry")
    else:
        raise GeoJSONError(f"{path}: top level must be an object or an array, got {type(data).__name__}")
    for i, feature in enumerate(features):
        _check_feature(feature, f"{path}: feature {i}")
    log.debug("read %d features from %s", len(features), path)
    return features


def feature_object_type(feature: dict[str, Any]) -> str | None:
    """Return a feature's QuPath object type (``properties.objectType`` or a legacy alias), if any."""
    props = feature.get("properties") or {}
    for key in ("objectType", "object_type", "type"):
        value = props.get(key)
        if isinstance(value, str) and value in _OBJECT_TYPES:
            return value
    return None


def feature_class_name(feature: dict[str, Any]) -> str | None:
    """Return a feature's class name as QuPath reads it, or its ``name`` when unclassified.

    Parameters
    ----------
    feature : dict
        A GeoJSON Feature.

    Returns
    -------
    str or None
        ``classification.name``; ``classification.names`` joined with ``": "`` (QuPath's
        derived classes); a bare-string ``classification``; else ``properties.name``; else None.

    Examples
    --------
    >>> feature_class_name({"properties": {"classification": {"names": ["Tumor", "Positive"]}}})
    'Tumor: Positive'
    >>> feature_class_name({"properties": {"name": "Annotated region"}})
    'Annotated region'
    """
    props = feature.get("properties") or {}
    cls = props.get("classification")
    if isinstance(cls, str) and cls:
        return cls
    if isinstance(cls, dict):
        name = cls.get("name")
        if isinstance(name, str) and name:
            return name
        names = cls.get("names")
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return ": ".join(names)
    name = props.get("name")
    return name if isinstance(name, str) and name else None


def _polygonal(geom: BaseGeometry) -> BaseGeometry:
    """Keep only the polygonal parts of ``geom`` (e.g. after ``make_valid`` produced lines)."""
    parts = shapely.get_parts(geom)
    polys = [p for p in parts if p.geom_type in ("Polygon", "MultiPolygon") and not p.is_empty]
    return shapely.union_all(polys) if polys else shapely.Polygon()


def read_roi(path: str | os.PathLike[str]) -> BaseGeometry:
    """Return the union of the polygon annotations of a QuPath export (the region of interest).

    Parameters
    ----------
    path : str or os.PathLike
        Any file :func:`read_features` reads.

    Returns
    -------
    shapely.geometry.base.BaseGeometry
        Polygon or MultiPolygon in level-0 pixel coordinates (QuPath's continuous convention).

    Raises
    ------
    GeoJSONError
        If the file is malformed or holds no usable Polygon/MultiPolygon annotation (objects whose
        ``objectType`` is missing count as annotations; points and detections are ignored).

    Notes
    -----
    Invalid polygons (self-intersections) are repaired with :func:`shapely.make_valid` first.
    """
    path = Path(path)
    shapes: list[BaseGeometry] = []
    skipped: dict[str, int] = {}
    for feature in read_features(path):
        geometry = feature["geometry"]
        kind = geometry["type"]
        object_type = feature_object_type(feature)
        if object_type not in (None, "annotation") or kind not in ("Polygon", "MultiPolygon", "GeometryCollection"):
            label = f"{object_type or 'annotation'} {kind}"
            skipped[label] = skipped.get(label, 0) + 1
            continue
        try:
            geom = shape(geometry)
        except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException) as exc:
            raise GeoJSONError(f"{path}: cannot build a polygon from feature {feature.get('id')!r}: {exc}") from exc
        geom = _polygonal(shapely.make_valid(geom))
        if not geom.is_empty:
            shapes.append(geom)
    for label, n in skipped.items():
        log.info("%s: ignored %d %s object(s) for the region of interest", path, n, label)
    roi = shapely.union_all(shapes) if shapes else shapely.Polygon()
    if roi.is_empty:
        raise GeoJSONError(
            f"{path}: no usable polygon annotation found for the region of interest; "
            "draw the region as an area annotation in QuPath and export it"
        )
    return roi
