"""Validation of a region model: the probability map ``segment`` computes, thresholded as ``segment`` does, scored.

The predicted mask is what ``segment`` writes: the engine's tiled inference with the card's tile size and context
(:func:`~wsi_weakseg.engine.whole.predict_maps`, the path ``wsi-weakseg evaluate`` and the nucleus recipes validate
with), then the card's region thresholds (``region``, ``min_region_area_um2``, ``min_hole_area_um2``) by the engine's
own :func:`~wsi_weakseg.engine.region_polygons.region_labels`. Pixel Dice, IoU and object Dice
(:func:`~wsi_weakseg.evaluate.regions.evaluate_regions`) are scored against the item's mask on the working grid, and
the partial cross-entropy (``pce``, a loss, not an output) on its points from the net's logits on the whole image.

Until 2026-12-07 the masks came from one whole-image pass reflect-padded only to the stride: on GlaS images, smaller
than one tile, that differs from ``segment``'s tile plus context (validation Dice 0.800 vs 0.790 for
``glands-points-v1``, up to 0.15 on one image), so cards now report what ``segment`` gives.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from types import SimpleNamespace

import numpy as np
import torch

from ..evaluate.regions import REGION_KEYS, evaluate_regions
from ..model.card import ModelCard
from .losses import partial_ce
from .points_recipe import to_tensor


def padded_input(image: np.ndarray, normalization: Mapping, device: torch.device | str) -> torch.Tensor:
    """``image`` (H, W, 3) uint8 reflect-padded at the bottom/right to multiples of 32, as a (1, 3, H', W') tensor."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((0, -h % 32), (0, -w % 32), (0, 0)), mode="reflect")
    return to_tensor(padded[None], normalization, torch.device(device))


@torch.no_grad()
def region_logits(net: torch.nn.Module, image: np.ndarray, normalization: Mapping,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The net's logits of the target on a whole image, (H, W) float32 on the CPU (eval mode while it runs)."""
    was = net.training
    net.eval()
    h, w = image.shape[:2]
    logits = net(padded_input(image, normalization, device))[0, 0, :h, :w].float().cpu()
    net.train(was)
    return logits


def region_probabilities(net: torch.nn.Module, card: ModelCard, images: Sequence[np.ndarray],
                         device: str = "cpu") -> list[np.ndarray]:
    """The target's probability (uint8, 0-255) of each image as ``segment`` computes it: the engine's tiles with
    the card's tile size and context, on a copy of ``net`` (the training net keeps its mode and memory layout)."""
    from ..engine.inference import Predictor
    from ..engine.whole import predict_maps

    predictor = Predictor(copy.deepcopy(net), card, device)
    return [predict_maps(predictor, image)[0] for image in images]


def validate_regions(net: torch.nn.Module, card: ModelCard, items: Sequence, device: str = "cpu") -> dict:
    """Mean metrics over ``items`` (:class:`~wsi_weakseg.train.region_items.RegionEvalItem`) and per-image rows.

    Returns
    -------
    dict
        ``{"mean": {"dice", "iou", "object_dice", "pce"}, "images": [{"name", ...}]}``; mask metrics average
        over the items with a mask, ``pce`` over the items with points.
    """
    from ..engine.region_polygons import region_labels, region_params

    params = region_params(card, card.mpp)
    probs = iter(region_probabilities(net, card, [item.image for item in items if item.mask is not None], device))
    rows = []
    for item in items:
        row: dict = {"name": item.name}
        if item.mask is not None:
            labels, _ = region_labels(next(probs), params)
            row.update(evaluate_regions(labels > 0, item.mask))
        if item.points is not None:
            logits = region_logits(net, item.image, card.normalization, device)
            row["pce"] = float(partial_ce(logits, torch.from_numpy(item.points)))
        rows.append(row)
    mean = {}
    for key in (*REGION_KEYS, "pce"):
        values = [r[key] for r in rows if key in r]
        if values:
            mean[key] = float(np.mean(values))
    return {"mean": mean, "images": rows}


#: Grid of :func:`tune_region_thresholds`: the probability level and the smallest hole kept (µm²; 0 keeps all).
REGION_GRID = {"region": (0.3, 0.4, 0.5, 0.6, 0.7), "min_hole_area_um2": (0.0, 2000.0, 10000.0, 50000.0)}


def tune_region_thresholds(net: torch.nn.Module, card: ModelCard, items: Sequence,
                           device: str = "cpu") -> tuple[dict, list[dict]]:
    """The card's ``region`` and ``min_hole_area_um2`` that maximise the mean validation pixel Dice.

    The net runs once per item; every grid point (:data:`REGION_GRID`, plus the card's own values) is scored
    on those maps exactly as :func:`validate_regions` scores them. Ties keep the earlier grid point, the card's own
    values first. Items without a mask are ignored; with none, the card's thresholds come back unchanged.

    Returns
    -------
    (thresholds, table)
        The card's thresholds with the two keys chosen, and ``[{"region", "min_hole_area_um2", "dice"}, ...]``.
    """
    from ..engine.region_polygons import region_labels, region_params

    masked = [item for item in items if item.mask is not None]
    probs = list(zip(region_probabilities(net, card, [item.image for item in masked], device),
                     [item.mask for item in masked]))
    if not probs:
        return dict(card.thresholds), []
    own = (card.thresholds["region"], card.thresholds.get("min_hole_area_um2", 0.0))
    points = [own] + [(r, h) for r in REGION_GRID["region"] for h in REGION_GRID["min_hole_area_um2"] if (r, h) != own]
    table = []
    for level, hole in points:
        trial = SimpleNamespace(thresholds={**card.thresholds, "region": level, "min_hole_area_um2": hole})
        params = region_params(trial, card.mpp)
        dice = float(np.mean([evaluate_regions(region_labels(p, params)[0] > 0, m)["dice"] for p, m in probs]))
        table.append({"region": level, "min_hole_area_um2": hole, "dice": dice})
    best = max(table, key=lambda row: row["dice"])  # max keeps the first of equal values
    return {**card.thresholds, "region": best["region"], "min_hole_area_um2": best["min_hole_area_um2"]}, table
