"""Weak-label recipes: training targets derived from point clicks (and, later, scribbles and regions)."""

from __future__ import annotations

from .centres import centre_heatmap, label_centroids

__all__ = ["centre_heatmap", "label_centroids"]
