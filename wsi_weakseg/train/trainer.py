"""``train``: data spec -> weak labels -> recipe + loop -> a model folder ``segment --model`` loads.

The output folder holds ``training/`` (checkpoint, best weights, label cache, ``curves.png`` redrawn each
epoch by :mod:`~wsi_weakseg.train.curves`) while training runs, and
``card.json`` + ``weights.pt`` once it has finished: the card is written last, so a folder with a card is
a finished model. The shipped net is the (net, epoch) with the best validation metric; its inference
context is measured (tiled vs whole-image maps) rather than guessed, and its foreground/centre thresholds are
tuned on the validation split (:mod:`~wsi_weakseg.train.tune`); the card's metrics are those of the shipped
net with the shipped thresholds.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError
from ..model.card import DETECT_SEGMENT, REGIONS, ModelCard, build_net, save_model
from .checkpoint import load_checkpoint, save_checkpoint
from .cks_recipe import CksRecipe, principal_kwargs
from .curves import CURVES, write_curves
from .dataset import EvalItem, TrainItem, build_eval_items, build_items, load_items
from .few_masks_recipe import FewMasksRecipe
from .loop import run, steps_per_epoch
from .points_recipe import PointsRecipe
from .region_validate import tune_region_thresholds
from .regions_recipe import RegionsRecipe
from .scribbles_recipe import ScribblesRecipe
from .tune import tune_thresholds
from .validate import validate

log = logging.getLogger(__name__)

BEST = "best.pt"
#: Validation metrics of which the lowest value is the best (the regions recipe's point loss, the paper's choice).
LOWER_IS_BETTER = frozenset({"pce"})
LICENCE_NOTE = "weights inherit the licences of their training data (see training.data)"
#: Recipe classes by ``cfg["recipe"]``, and what each learns from (the card's description).
RECIPES = {"points": PointsRecipe, "scribbles": ScribblesRecipe, "few-masks": FewMasksRecipe, "cks": CksRecipe,
           "regions": RegionsRecipe}
_LEARNS_FROM = {"points": "point clicks", "scribbles": "scribbles",
                "few-masks": "a few drawn nucleus masks and unlabelled images", "cks": "point clicks",
                "regions": "in/out points"}
#: How instances come out of each recipe's maps (recorded in the card).
INSTANCES = {
    "points": "centre head trained on Gaussian bumps at the clicks; engine markers + geodesic split",
    "scribbles": "centre head trained on the per-component normalised distance transform of the EMA mask "
                 "(y_n > 0.5, strokes overruling it) where the pseudo label is decided or a stroke lies; "
                 "engine markers + geodesic split",
    "few-masks": "centre head trained on Gaussian bumps at the centroids of the drawn nuclei (and at clicks of "
                 "click-only items), inside the annotated regions; engine markers + geodesic split",
    "cks": "detection branch (focal BCE on the clicks' grid cells) anchors each nucleus and the segmentation branch "
           "gives its mask in a window (collaborative knowledge sharing, LACSS); engine detect-segment type, no watershed",
    "regions": "none: the net gives the target tissue's probability (sigmoid); regions are where it exceeds "
               "thresholds.foreground",
}


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    model_dir: Path
    history: list[dict]
    metrics: dict | None
    best: dict | None


def model_card(cfg: Mapping, name: str, context_px: int = 64) -> ModelCard:
    """The card of a net trained with ``cfg`` (thresholds at their defaults until tuned)."""
    if cfg["recipe"] == "cks":
        c = cfg["cks"]
        card = ModelCard(
            name=name, architecture="lacss", model_type=DETECT_SEGMENT, window_um=float(c["window_um"]),
            mpp=float(cfg["data"]["mpp"]), arch_kwargs=principal_kwargs(cfg),
            tile_size=512, context_px=context_px,
            description=f"ResNet34-FPN detect-and-segment net (LACSS) trained from point clicks with the cks recipe "
                        f"(wsi-weakseg {__version__})",
        )
        card.thresholds.update({"centre": float(c["detection_threshold"]), "peak_radius_um": float(c["nms_um"])})
        return card
    if cfg["recipe"] == "regions":
        r = cfg["regions"]
        return ModelCard(
            name=name, architecture="resnet34-unet", model_type=REGIONS, mpp=float(cfg["data"]["mpp"]),
            arch_kwargs={"width": int(cfg["model"]["width"])}, heads=["region"], activation="sigmoid",
            classes=[{"name": r["target_class"], "color": list(r["target_color"])}], tile_size=512, context_px=context_px,
            thresholds={k: float(v) for k, v in r["thresholds"].items()},
            description=f"ResNet34-UNet outlining {r['target_class']} regions, trained from in/out points with the "
                        f"regions recipe ({'CVM' if r['loss'] == 'cvm' else 'pCE baseline'}; wsi-weakseg {__version__})",
        )
    return ModelCard(
        name=name, architecture="resnet34-unet", mpp=float(cfg["data"]["mpp"]),
        arch_kwargs={"width": int(cfg["model"]["width"])}, tile_size=512, context_px=context_px,
        description=f"ResNet34-UNet trained from {_LEARNS_FROM[cfg['recipe']]} with the {cfg['recipe']} recipe (wsi-weakseg {__version__})",
    )


def load_data(cfg: Mapping, work: Path) -> tuple[list[TrainItem], list[EvalItem], list[dict]]:
    """Training and validation items: prebuilt (``data.items``) or built from ``data.spec``."""
    d = cfg["data"]
    if d["items"]:
        train_items, val_items = load_items(Path(d["items"]))
        return train_items, val_items, [{"name": it.name} for it in train_items]
    if not d["spec"]:
        raise ConfigError("the config names no training data: set data.spec (a data spec YAML) or data.items")
    from ..weak.spec import load_spec

    spec = load_spec(d["spec"])
    train_spec = spec.split(d["train_split"])
    need = RECIPES[cfg["recipe"]].min_items
    if len(train_spec) < need:
        raise ConfigError(f"{spec.path}: split {d['train_split']!r} has {len(train_spec)} item(s); the "
                          f"{cfg['recipe']} recipe needs at least {need}")
    if cfg["recipe"] == "regions":
        from .region_items import build_region_eval_items, build_region_items

        train_items, summary = build_region_items(train_spec, cfg)
        return train_items, build_region_eval_items(spec.split(d["validation_split"]), cfg), summary
    if cfg["recipe"] == "scribbles":
        from .scribble_items import build_scribble_items

        train_items, summary = build_scribble_items(train_spec, cfg)
    elif cfg["recipe"] == "few-masks":
        from .mask_items import build_mask_items

        train_items, summary = build_mask_items(train_spec, cfg)
    elif cfg["recipe"] == "cks":
        from .point_items import build_point_items

        train_items, summary = build_point_items(train_spec, cfg)
    else:
        cache = Path(d["cache_dir"]) if d["cache_dir"] else work / "label-cache"
        train_items, summary = build_items(train_spec, cfg, cache)
    val_items = build_eval_items(spec.split(d["validation_split"]), float(d["mpp"]))
    if not val_items:
        log.warning("split %r is empty: training without validation; the last epoch's net is shipped",
                    d["validation_split"])
    return train_items, val_items, summary


def _progress(total: int, enabled: bool) -> Callable[[int, dict], None] | None:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # the lent GPU machine may lack tqdm: log every 50 steps instead
        return lambda s, logs: (s % 50 == 0) and log.warning("step %d/%d loss %.4f", s, total, logs["loss"])
    import sys

    bar = tqdm(total=total, desc="training", unit="step", file=sys.stderr, dynamic_ncols=True)

    def on_step(step: int, logs: dict) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)
        bar.refresh()
        if step >= total:
            bar.close()

    return on_step


def train(
    cfg: Mapping,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    data: tuple[Sequence[TrainItem], Sequence[EvalItem], list[dict]] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[list[dict]], None] | None = None,
) -> TrainResult:
    """Train a model with the recipe ``cfg["recipe"]`` (:data:`RECIPES`) and write it to ``out_dir``.

    Parameters
    ----------
    cfg : mapping
        Resolved config (:func:`~wsi_weakseg.train.config.load_config`).
    out_dir : path
        Model folder to create (``card.json``, ``weights.pt``, ``training/``).
    resume : bool
        Continue from ``out_dir/training/checkpoint.pt``.
    device : str, optional
        ``auto``, ``cpu``, ``cuda[:N]``, ``mps``; default ``cfg["device"]``.
    progress : bool
        Progress bar on stderr.
    max_steps : int, optional
        Cap of steps per epoch (smoke runs, tests).
    data : (train items, validation items, summary), optional
        Prebuilt items instead of reading ``cfg["data"]``.
    on_step : callable, optional
        ``on_step(step, total_steps)`` after every optimiser step (global step count, resumed runs included).
    on_epoch : callable, optional
        ``on_epoch(history)`` after every epoch's checkpoint, with the history so far (the card's
        ``training.history`` entries: 0-based epoch, loss, loss terms, validation means per net). An exception
        raised by either hook stops training (the server's cancel); the checkpoint of the last finished epoch stays.

    Returns
    -------
    TrainResult
    """
    from ..engine.inference import resolve_device

    out_dir = Path(out_dir)
    if (out_dir / "card.json").exists() and not resume:
        raise ConfigError(f"{out_dir} already holds a trained model; choose another --out or delete it")
    work = out_dir / "training"
    work.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device or cfg["device"])
    t0 = time.perf_counter()
    train_items, val_items, summary = data if data is not None else load_data(cfg, work)
    card = model_card(cfg, out_dir.name)
    torch.manual_seed(int(cfg["seed"]))  # network initialisation (the loop seeds sampling and dropout-free training)
    recipe = RECIPES[cfg["recipe"]](cfg, train_items, card.normalization, dev)
    metric = _selection_metric(cfg, val_items)
    nets = recipe.candidates()
    selection = _Selection(work, nets, _scorer(cfg, card, val_items, str(dev)), metric, bool(val_items), resume)
    total_steps = steps_per_epoch(cfg, recipe, max_steps) * int(cfg["optim"]["epochs"])
    bar = _progress(total_steps, True) if progress else None

    def step_hook(step: int, logs: dict) -> None:
        if bar is not None:
            bar(step, logs)
        if on_step is not None:
            on_step(step, total_steps)

    def epoch_hook(history: list[dict]) -> None:
        write_curves(history, work / CURVES, selection.best)
        if on_epoch is not None:
            on_epoch(history)

    history = run(cfg, recipe, work, resume=resume, validate=selection, on_step=step_hook, max_steps=max_steps,
                  after_epoch=epoch_hook)
    net, best, metrics = _shipped_net(card, work, recipe, nets[0], history)
    card.context_px = measure_card_context(net, card, [v.image for v in val_items] or [t.image for t in train_items])
    card.metrics, tuning = _final_metrics(cfg, card, net, val_items, metric, metrics)
    card.training = {
        "recipe": cfg["recipe"], "instances": INSTANCES[cfg["recipe"]], "config": json.loads(json.dumps(cfg, default=str)),
        "data": summary, "n_train": len(train_items), "n_validation": len(val_items),
        "shipped": best, "thresholds_tuning": tuning, "device": str(dev), "torch": torch.__version__, "python": platform.python_version(),
        "wall_s": round(time.perf_counter() - t0, 1), "history": history, "licence": LICENCE_NOTE,
    }
    _publish(out_dir, card, net)
    log.info("model written to %s (net %s, epoch %s)", out_dir, best["net"], best["epoch"])
    return TrainResult(out_dir, history, card.metrics, best)


class _Selection:
    """Validation after each epoch and the running best (net, epoch), saved to ``work/best.pt`` when it improves.

    Called by the loop as ``validate(recipe, epoch)``; returns each net's validation means (``{}`` without
    validation items). On resume the best so far is read back from ``best.pt``.
    """

    def __init__(self, work: Path, nets: Sequence[str], score: Callable, metric: str, has_items: bool,
                 resume: bool) -> None:
        self.work, self.nets, self.score, self.metric, self.has_items = work, tuple(nets), score, metric, has_items
        self.lower = metric in LOWER_IS_BETTER
        self.best: dict | None = None
        if resume and (work / BEST).is_file():
            saved = load_checkpoint(work / BEST)
            self.best = {k: saved[k] for k in ("epoch", "net", "value", "metric")}

    def __call__(self, rec, epoch: int) -> dict:
        if not self.has_items:
            return {}
        scores = {k: self.score(rec.nets[k]) for k in self.nets}
        if hasattr(rec, "note_validation"):  # the regions recipe recomputes u when the validation pCE improves
            rec.note_validation(scores[self.nets[0]]["mean"])
        for k, s in scores.items():
            log.info("epoch %d net %s: %s", epoch + 1, k, json.dumps({m: round(v, 4) for m, v in s["mean"].items()}))
            self._offer(rec, epoch, k, s)
        return {k: s["mean"] for k, s in scores.items()}

    def _offer(self, rec, epoch: int, net: str, s: dict) -> None:
        value = float(s["mean"].get(self.metric, math.inf if self.lower else -1.0))
        if self.best is None or (value < self.best["value"] if self.lower else value > self.best["value"]):
            self.best = {"epoch": epoch, "net": net, "value": value, "metric": self.metric}
            save_checkpoint(self.work / BEST, {**self.best, "state": rec.nets[net].state_dict(), "validation": s})


def _final_metrics(cfg: Mapping, card: ModelCard, net, val_items: Sequence, metric: str,
                   metrics: dict) -> tuple[dict, dict | None]:
    """The shipped net's validation metrics, after tuning the card's instance thresholds (instance models)."""
    if val_items and card.model_type == REGIONS:  # the shipped net is built on the CPU
        tuning = None
        if cfg["regions"]["tune_thresholds"]:
            card.thresholds, table = tune_region_thresholds(net, card, val_items)
            tuning = {"metric": "dice", "chosen": {k: card.thresholds[k] for k in ("region", "min_hole_area_um2")},
                      "grid": table}
        return _scorer(cfg, card, val_items, "cpu")(net), tuning
    if not val_items:
        return metrics, None
    card.thresholds, table = tune_thresholds(net, card, val_items, metric, cfg["data"]["radius_um"])
    tuning = {"metric": metric, "chosen": {k: card.thresholds[k] for k in ("foreground", "centre")}, "grid": table}
    return validate(net, card, val_items, cfg["data"]["radius_um"], "cpu"), tuning


def _selection_metric(cfg: Mapping, val_items: Sequence) -> str:
    """The validation metric that picks the shipped (net, epoch): ``data.metric``, or what the items allow."""
    metric = cfg["data"]["metric"]
    if metric == "aji" and val_items and all(v.labels is None for v in val_items):
        log.warning("no validation item has a label map: model selection uses detection F1")
        return "f1"
    if cfg["recipe"] == "regions" and metric != "pce" and val_items and all(v.mask is None for v in val_items):
        log.warning("no validation item has a target mask: model selection uses the lowest validation pCE")
        return "pce"
    return metric


def _scorer(cfg: Mapping, card: ModelCard, val_items: Sequence, device: str) -> Callable[[torch.nn.Module], dict]:
    """How a net is validated: region metrics (whole images) for a region model, else the engine's instances."""
    if card.model_type == REGIONS:
        from .region_validate import validate_regions

        return lambda net: validate_regions(net, card, val_items, device)
    return lambda net: validate(net, card, val_items, cfg["data"]["radius_um"], device)


def _shipped_net(card: ModelCard, work: Path, recipe, fallback: str,
                 history: list[dict]) -> tuple[torch.nn.Module, dict, dict | None]:
    """The net to ship, its (epoch, net, value, metric) and its validation: the best validated one (``best.pt``),
    else the recipe's ``fallback`` net as it ended (no validation split)."""
    net = build_net(card)
    if (work / BEST).is_file():
        saved = load_checkpoint(work / BEST)
        net.load_state_dict(saved["state"])
        return net, {k: saved[k] for k in ("epoch", "net", "value", "metric")}, saved["validation"]
    net.load_state_dict(recipe.nets[fallback].state_dict())
    best = {"epoch": history[-1]["epoch"] if history else None, "net": fallback, "value": None, "metric": None}
    return net, best, None


def measure_card_context(net: torch.nn.Module, card: ModelCard, images: Sequence[np.ndarray]) -> int:
    """Context for tiled == whole-image maps within 0.01 on up to two images or mosaics of them
    (:func:`~wsi_weakseg.model.context.context_images`; tile 128, multiples of 32); for a detect-segment model, its
    detection map's context plus the reach of its decisions."""
    from ..engine.inference import Predictor
    from ..model.context import (
        context_images,
        measure_anchored_context,
        measure_context,
    )

    usable = context_images(images)  # small images (low-magnification region items) as mosaics
    if not usable:
        log.warning("no image or mosaic of at least 256 px to measure the context on; keeping %d px", card.context_px)
        return card.context_px
    if card.model_type == DETECT_SEGMENT:
        context, measured = measure_anchored_context(Predictor(net, card, "cpu"), usable, tile=128)
        log.info("detect-segment context: %d px (detection map %d px + window reach + radius)", context, measured)
        return context
    context, _ = measure_context(Predictor(net, card, "cpu"), usable, tile=128)
    return context


def _publish(out_dir: Path, card: ModelCard, net: torch.nn.Module) -> None:
    """Weights then card into ``out_dir`` (the card is the commit point)."""
    staging = out_dir / "training" / "export"
    save_model(staging, card, net)
    (staging / card.weights).replace(out_dir / card.weights)
    (staging / "card.json").replace(out_dir / "card.json")
    staging.rmdir()
