"""Input/output formats: QuPath GeoJSON (:mod:`.geojson`) and OME-Zarr 0.5 (:mod:`.omezarr`)."""

from __future__ import annotations
