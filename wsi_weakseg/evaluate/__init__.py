"""Evaluation of nucleus segmentation: pixel, object and detection metrics on plain label images.

Functions take 2-D instance label images (0 = background) or ``(n, 2)`` point arrays and return floats
or flat dicts of plain Python numbers. :func:`evaluate_instances` computes everything at once against
full masks; :func:`evaluate_points` evaluates detection against point-only ground truth.
"""

from __future__ import annotations

from .detection import detection_scores, instance_centroids
from .metrics import (
    aji,
    evaluate_instances,
    evaluate_points,
    object_dice,
    panoptic_quality,
    pixel_accuracy,
    pixel_f1,
)

__all__ = [
    "aji",
    "detection_scores",
    "evaluate_instances",
    "evaluate_points",
    "instance_centroids",
    "object_dice",
    "panoptic_quality",
    "pixel_accuracy",
    "pixel_f1",
]
