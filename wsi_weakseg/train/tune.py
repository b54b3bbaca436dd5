"""Post-processing thresholds tuned on validation: the net's maps are predicted once, the instance rules re-run per setting.

A small grid over the foreground and centre-marker thresholds (the two that trade merges against splits and
misses against false detections); the card's current values are always in the grid, so tuning never picks a
setting that scores worse on validation than the untuned one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import torch

from ..engine.inference import STRIDE, Predictor, predict_image
from ..engine.instances import label_image, params_from_card
from ..evaluate.metrics import evaluate_instances, evaluate_points
from ..model.card import ModelCard
from .dataset import EvalItem

log = logging.getLogger(__name__)

FOREGROUND = (0.3, 0.4, 0.5, 0.6)
CENTRE = (0.15, 0.2, 0.3, 0.4, 0.5)


def tune_thresholds(
    net: torch.nn.Module,
    card: ModelCard,
    items: Sequence[EvalItem],
    metric: str,
    radius_um: float,
    foreground: Sequence[float] = FOREGROUND,
    centre: Sequence[float] = CENTRE,
) -> tuple[dict, list[dict]]:
    """Best (foreground, centre) thresholds by mean validation ``metric`` ("aji" or "f1").

    Returns
    -------
    thresholds : dict
        The card's thresholds with the best foreground/centre values.
    table : list of dict
        ``{"foreground", "centre", metric}`` for every setting tried.
    """
    predictor = Predictor(copy.deepcopy(net), card, "cpu")
    maps = [predict_image(predictor, it.image, context=STRIDE) for it in items]
    radius_px = radius_um / card.mpp
    base = dict(card.thresholds)
    grid = sorted({(float(f), float(c)) for f in foreground for c in centre} | {(base["foreground"], base["centre"])})
    table = []
    for f, c in grid:
        trial = dataclasses.replace(card, thresholds={**base, "foreground": f, "centre": c})
        params = params_from_card(trial, card.mpp)
        scores = []
        for it, m in zip(items, maps):
            labels = label_image(m, params)
            if metric == "aji" and it.labels is not None:
                scores.append(evaluate_instances(labels, it.labels, radius_px=radius_px)["aji"])
            elif metric == "f1":
                scores.append(evaluate_points(labels, it.points_rc, radius_px=radius_px)["f1"])
        table.append({"foreground": f, "centre": c, metric: float(np.mean(scores)) if scores else float("nan")})
    best = max(table, key=lambda r: (r[metric], r["foreground"] == base["foreground"] and r["centre"] == base["centre"]))
    log.info("thresholds tuned on validation: foreground %.2f, centre %.2f (%s %.4f; defaults %.4f)",
             best["foreground"], best["centre"], metric, best[metric],
             next(r[metric] for r in table if (r["foreground"], r["centre"]) == (base["foreground"], base["centre"])))
    return {**base, "foreground": best["foreground"], "centre": best["centre"]}, table
