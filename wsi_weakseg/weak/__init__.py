"""Weak-label recipes: training targets derived from point clicks (and, later, scribbles and regions)."""

from __future__ import annotations

from .centres import centre_heatmap, label_centroids
from .clusters import cluster_label
from .points import PointSet, read_points, write_points
from .spec import DataSpec, SpecItem, load_item_points, load_spec
from .stain import estimate_stain_matrix, hematoxylin
from .voronoi import voronoi_cells, voronoi_label

__all__ = [
    "DataSpec", "PointSet", "SpecItem", "centre_heatmap", "cluster_label", "estimate_stain_matrix", "hematoxylin",
    "label_centroids", "load_item_points", "load_spec", "read_points", "voronoi_cells", "voronoi_label",
    "write_points",
]
