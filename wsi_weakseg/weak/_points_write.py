"""Writing point sets as QuPath-importable GeoJSON (:func:`write_points`).

Import from :mod:`wsi_weakseg.weak.points`; this module only holds part of its implementation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from wsi_weakseg.io.geojson import DEFAULT_NUCLEUS_COLOR, GeoJSONWriter, stable_uuid

from ._points_model import REGION_NAME, PointSet

#: Colours :func:`write_points` uses for known classes (those of the CRCHistoPhenotypes exports).
_KNOWN_COLORS: dict[str, tuple[int, int, int]] = {
    "nucleus": DEFAULT_NUCLEUS_COLOR,
    "epithelial": (255, 64, 64),
    "fibroblast": (0, 160, 0),
    "inflammatory": (0, 0, 255),
    "other": (255, 200, 0),
}

_DECIMALS = 2


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
