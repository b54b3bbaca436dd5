"""Evaluation of nucleus segmentation: pixel, object and detection metrics on plain label images.

Functions take 2-D instance label images (0 = background) or ``(n, 2)`` point arrays and return floats
or flat dicts of plain Python numbers. :func:`evaluate_instances` computes everything at once against
full masks; :func:`evaluate_points` evaluates detection against point-only ground truth.
:func:`evaluate_files` and :func:`evaluate_model` (``wsi-weakseg evaluate``) read predictions and ground
truth from files, folders or a model run and return per-image rows and their means. :func:`read_label_map` is
the package's one reader of instance label maps (training reads them with it too).
"""

from __future__ import annotations

from .detection import detection_scores, instance_centroids
from .metrics import (
    aji,
    evaluate_instances,
    evaluate_points,
    mean_object_dice,
    object_dice,
    panoptic_quality,
    pixel_accuracy,
    pixel_f1,
    pixel_iou,
)
from .run import DEFAULT_RADIUS_UM, evaluate_files, evaluate_model, read_label_map

__all__ = [
    "DEFAULT_RADIUS_UM",
    "aji",
    "detection_scores",
    "evaluate_files",
    "evaluate_instances",
    "evaluate_model",
    "evaluate_points",
    "instance_centroids",
    "mean_object_dice",
    "object_dice",
    "panoptic_quality",
    "pixel_accuracy",
    "pixel_f1",
    "pixel_iou",
    "read_label_map",
]
