"""Validation during training: a net's instances on the validation images, scored like ``wsi-weakseg evaluate``.

Instances come from :func:`~wsi_weakseg.engine.whole.predict_instances`, the path ``evaluate`` and tuning use:
the card's tile size and context, then the engine's own rules (:func:`~wsi_weakseg.engine.instances.label_image`,
equal to the blockwise merge) with the card's thresholds at the working pixel size. Items with a ground-truth
label map get every metric; points-only items get detection precision/recall/F1.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from ..engine.inference import Predictor
from ..engine.instances import params_from_card
from ..engine.whole import predict_instances
from ..evaluate.metrics import evaluate_instances, evaluate_points
from ..model.card import ModelCard
from .dataset import EvalItem

#: Metrics averaged over images (per-image mean, as MoNuSeg reports AJI).
MEAN_KEYS = ("aji", "object_dice", "mdice", "pq", "pixel_f1", "pixel_iou", "precision", "recall", "f1")


def validate(net: torch.nn.Module, card: ModelCard, items: Sequence[EvalItem], radius_um: float,
             device: str = "cpu", tta: int = 1) -> dict:
    """Mean metrics over ``items`` and the per-image rows (``tta``: see :class:`~wsi_weakseg.engine.inference.Predictor`).

    Returns
    -------
    dict
        ``{"mean": {metric: value}, "images": [{"name", metric: value, ...}], "radius_um": ...}``; mask
        metrics average over the items that have label maps, detection metrics over all items.
    """
    predictor = Predictor(copy.deepcopy(net), card, device, tta=tta)
    params = params_from_card(card, card.mpp)
    radius_px = radius_um / card.mpp
    rows = []
    for item in items:
        labels = predict_instances(predictor, item.image, params)
        if item.labels is not None:
            scores = evaluate_instances(labels, item.labels, radius_px=radius_px)
        else:
            scores = evaluate_points(labels, item.points_rc, radius_px=radius_px)
        rows.append({"name": item.name, **scores})
    mean = {}
    for key in MEAN_KEYS:
        values = [r[key] for r in rows if key in r and r[key] is not None]
        if values:
            mean[key] = float(np.mean(values))
    return {"mean": mean, "images": rows, "radius_um": radius_um}
