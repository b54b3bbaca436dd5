"""The ``roi`` of a segment request, written as the QuPath annotation file ``segment --roi`` reads.

A request gives either a GeoJSON geometry (Polygon or MultiPolygon, level-0 pixels of the slide's output
frame, which is QuPath's image frame) or a box ``[x, y, w, h]``. Both become a FeatureCollection holding one
annotation, and the file is read back with :func:`~wsi_weakseg.io.geojson.read_roi` before the job is
queued, so a bad ROI is refused by the request (HTTP 400) with the reader's own message.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import GeoJSONError

ROI_HELP = ("'roi' must be a GeoJSON Polygon or MultiPolygon in level-0 pixels, or a box [x, y, width, height] "
            "with a positive width and height")


def roi_geometry(roi: Any) -> dict[str, Any]:
    """The GeoJSON geometry of a request's ``roi``; :class:`GeoJSONError` when it is neither form."""
    if isinstance(roi, list):
        if len(roi) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                    for v in roi):
            raise GeoJSONError(ROI_HELP)
        x, y, w, h = (float(v) for v in roi)
        if not (w > 0 and h > 0):
            raise GeoJSONError(ROI_HELP)
        ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
        return {"type": "Polygon", "coordinates": [ring]}
    if isinstance(roi, dict) and roi.get("type") in ("Polygon", "MultiPolygon") and "coordinates" in roi:
        return {"type": roi["type"], "coordinates": roi["coordinates"]}
    raise GeoJSONError(ROI_HELP)


def write_roi(roi: Any, path: Path) -> Path:
    """Write the request's ``roi`` to ``path`` as a QuPath annotation and check it reads back as a region."""
    from ..io.geojson import read_roi

    feature = {"type": "Feature", "geometry": roi_geometry(roi),
               "properties": {"objectType": "annotation", "name": "wsi-weakseg serve ROI"}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}, separators=(",", ":")) + "\n")
    try:
        region = read_roi(path)
    except GeoJSONError as exc:
        raise GeoJSONError(f"'roi': {exc}") from None
    if region.is_empty or not region.area > 0:
        raise GeoJSONError(f"'roi' has no area; {ROI_HELP}")
    return path
