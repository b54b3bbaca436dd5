"""Post-processing thresholds tuned on validation: the net's maps are predicted once, the instance rules re-run per setting.

(A detect-segment model decides its detections while its maps are made, so its maps are predicted once per
detection threshold and radius tried, and the mask threshold and minimum area re-run on them.)

A small grid over the foreground and centre-marker thresholds (the two that trade merges against splits and
misses against false detections), optionally also the minimum nucleus area and the marker peak radius; the
card's current values are always in the grid, so tuning never picks a setting that scores worse on validation
than the untuned one. Maps and instances are those of :func:`~wsi_weakseg.engine.whole.predict_instances`
(:func:`~wsi_weakseg.engine.whole.predict_maps` once, then :func:`~wsi_weakseg.engine.instances.label_image` per
setting), the path ``evaluate`` and validation use.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
from collections.abc import Sequence

import numpy as np
import torch

from ..engine.inference import Predictor
from ..engine.instances import label_image, params_from_card
from ..engine.whole import predict_maps
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
    min_area_um2: Sequence[float] = (),
    peak_radius_um: Sequence[float] = (),
) -> tuple[dict, list[dict]]:
    """Best post-processing thresholds by mean validation ``metric``.

    ``"aji"`` averages over the items with label maps, ``"f1"`` (detection) over all items, ``"aji+f1"`` is the
    mean of the AJI over items with label maps and the F1 over points-only items (both kinds of data count).

    Parameters
    ----------
    foreground, centre, min_area_um2, peak_radius_um : sequence of float
        Values tried for each threshold (the card's value is always added; empty = the card's value only).

    Returns
    -------
    thresholds : dict
        The card's thresholds with the best values.
    table : list of dict
        The thresholds tried and the ``metric`` of every setting.
    """
    net = copy.deepcopy(net)
    # Maps once per item; a detect-segment model's maps also hold its detection decisions, so for it once per
    # (centre, peak_radius_um) setting (engine/anchored.py).
    decoding = ("centre", "peak_radius_um") if card.model_type == "detect-segment" else ()
    cache: dict[tuple, list[np.ndarray]] = {}

    def maps_of(trial: ModelCard) -> list[np.ndarray]:
        key = tuple(trial.thresholds[k] for k in decoding)
        if key not in cache:
            predictor = Predictor(net, trial, "cpu")
            cache[key] = [predict_maps(predictor, it.image) for it in items]  # predict_instances' maps
        return cache[key]

    radius_px = radius_um / card.mpp
    base = dict(card.thresholds)
    keys = ("foreground", "centre", "min_area_um2", "peak_radius_um")
    axes = [sorted({float(v) for v in values} | {float(base[k])})
            for k, values in zip(keys, (foreground, centre, min_area_um2, peak_radius_um))]
    table = []
    for setting in itertools.product(*axes):
        trial = dataclasses.replace(card, thresholds={**base, **dict(zip(keys, setting))})
        params = params_from_card(trial, card.mpp)
        aji, f1 = [], []
        for it, m in zip(items, maps_of(trial)):
            labels = label_image(m, params)
            if metric in ("aji", "aji+f1") and it.labels is not None:
                aji.append(evaluate_instances(labels, it.labels, radius_px=radius_px)["aji"])
            elif metric == "f1" or (metric == "aji+f1" and it.labels is None):
                f1.append(evaluate_points(labels, it.points_rc, radius_px=radius_px)["f1"])
        parts = [float(np.mean(v)) for v in (aji, f1) if v]
        table.append({**dict(zip(keys, setting)), metric: float(np.mean(parts)) if parts else float("nan")})
    is_base = {id(r): all(r[k] == base[k] for k in keys) for r in table}
    best = max(table, key=lambda r: (r[metric], is_base[id(r)]))
    default = next(r for r in table if is_base[id(r)])
    log.info("thresholds tuned on validation: %s (%s %.4f; defaults %.4f)",
             {k: best[k] for k in keys}, metric, best[metric], default[metric])
    return {**base, **{k: best[k] for k in keys}}, table
