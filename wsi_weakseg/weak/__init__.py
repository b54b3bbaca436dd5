"""Weak-label recipes: training targets derived from point clicks, scribbles, drawn masks and region in/out points.

Names load lazily (PEP 562): the label makers need only numpy/scipy/scikit-image, while the point
reader needs shapely, which the training path must not require.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "centre_heatmap": "centres", "jitter_points": "centres", "label_centroids": "centres", "cluster_label": "clusters",
    "PointSet": "points", "read_points": "points", "write_points": "points",
    "DataSpec": "spec", "SpecItem": "spec", "load_item_points": "spec", "load_spec": "spec",
    "MaskSet": "masks", "rasterise_masks": "masks", "read_masks": "masks", "load_item_masks": "spec",
    "estimate_stain_matrix": "stain", "hematoxylin": "stain", "voronoi_cells": "voronoi", "voronoi_label": "voronoi",
    "RegionPoints": "region_points", "read_region_points": "region_points", "simulate_region_points": "region_points",
    "write_region_points": "region_points", "load_item_region_points": "region_points",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return __all__
