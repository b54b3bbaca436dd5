#!/usr/bin/env python
"""Package a trained regions model (recipe: regions) as a packaged model: float16 weights, card, validation metrics.

The net is the one ``wsi-weakseg train`` shipped (best validation pixel Dice) with its card's region thresholds, or,
with ``--retune``, with ``region`` and ``min_hole_area_um2`` chosen again on the validation split through the engine's
path (:func:`~wsi_weakseg.train.region_validate.tune_region_thresholds`; for runs validated before 2026-12-07, whose
thresholds were tuned on a whole-image pass that differs from ``segment``). The float16-rounded weights are scored on the validation split of ``spec`` before anything is
written (so the card's metrics are those of the weights users get) and the card gets the name, a description and the
research-use licence of the GlaS data. For issue 18 (``glands-points-v1``)::

    PYTHONPATH=. python scripts/package_regions_model.py runs/regions/cvm-5pairs configs/data/glas-split.yaml \
        --name glands-points-v1 --out wsi_weakseg/models/glands-points-v1

The held-out test split is scored afterwards, once, with ``scripts/evaluate_regions.py --split test``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

# the nucleus packager's: no machine paths in cards
sys.path.insert(0, str(Path(__file__).resolve().parent))
from package_model import relative_sources

log = logging.getLogger("package_regions_model")

LICENSE = (
    "Research use only, no commercial use: trained on GlaS (Sirinukunwattana et al., Medical Image Analysis 2017; "
    "GlaS challenge terms) with simulated in/out points"
)


def package(run: Path, spec: Path, name: str, out: Path, description: str | None = None, test: bool = False,
            retune: bool = False, measure_context: bool = False) -> dict:
    """Write ``out`` (float16 weights, card) from the model folder ``run``; return the card's metrics.

    The card's ``metrics`` are those of the validation split (``mean``, ``images``, ``all_target_dice``: the trivial
    everything-is-target prediction on the same images) and, with ``test``, the same for the test split under
    ``metrics["test"]``.
    """
    from wsi_weakseg.errors import ConfigError
    from wsi_weakseg.model.card import REGIONS, export_model, load_model

    source = load_model(run)
    if source.card.model_type != REGIONS:
        raise ConfigError(f"{run} is a {source.card.model_type!r} model; this script packages regions models")
    training = source.card.training or {}
    cls = source.card.classes[0]["name"]
    text = description or (
        f"ResNet34-UNet (width {source.card.arch_kwargs.get('width', 64)}) at {source.card.mpp} µm/px trained from "
        f"a few points inside and outside each {cls.lower()} (recipe regions, loss "
        f"{training.get('config', {}).get('regions', {}).get('loss', '?')}); sigmoid {cls} probability. Weights bundled "
        "in the package (no training data is)")
    # score the weights users get: float16-rounded, computed in float32 as the loader does
    state = {k: v.half().float() if v.is_floating_point() else v for k, v in source.net.state_dict().items()}
    source.net.load_state_dict(state)
    cfg = {"data": {"mpp": source.card.mpp}, "regions": training["config"]["regions"]}
    if measure_context:  # before tuning: the context changes what segment computes on images smaller than a tile
        _measure_context(source, cfg, spec)
    if retune:  # validation only
        training = {**training, "thresholds_tuning": _retune(source, cfg, spec)}
    metrics = _split_metrics(source, cfg, spec, "validation")
    if test:  # once, at the end: the weights and thresholds are fixed above and nothing below chooses anything
        metrics["test"] = _split_metrics(source, cfg, spec, "test")
    export_model(run, out, half=True, name=name, description=text, license=LICENSE, metrics=metrics,
                 thresholds=source.card.thresholds, context_px=source.card.context_px, training=relative_sources(training))
    return metrics


def _measure_context(model, cfg: dict, spec: Path) -> None:
    """Measure the card's context again on the validation images, as mosaics where they are small (runs trained before
    2026-12-07 kept the default 64 px when no image reached 256 px)."""
    from wsi_weakseg.train.region_items import build_region_eval_items
    from wsi_weakseg.train.trainer import measure_card_context
    from wsi_weakseg.weak.spec import load_spec

    items = build_region_eval_items(load_spec(spec).split("validation"), cfg)
    before = model.card.context_px
    model.card.context_px = measure_card_context(model.net, model.card, [item.image for item in items])
    log.info("context measured again: %d px (card had %d)", model.card.context_px, before)


def _retune(model, cfg: dict, spec: Path) -> dict:
    """Choose the card's ``region`` and ``min_hole_area_um2`` again on the validation split (set on ``model.card``);
    the tuning record for the card."""
    from wsi_weakseg.train.region_items import build_region_eval_items
    from wsi_weakseg.train.region_validate import tune_region_thresholds
    from wsi_weakseg.weak.spec import load_spec

    items = build_region_eval_items(load_spec(spec).split("validation"), cfg)
    model.card.thresholds, table = tune_region_thresholds(model.net, model.card, items)
    chosen = {k: model.card.thresholds[k] for k in ("region", "min_hole_area_um2")}
    log.info("thresholds re-tuned on validation through segment's path: %s", chosen)
    return {"metric": "dice", "chosen": chosen, "grid": table, "path": "engine tiles with the card's context (segment)"}


def _split_metrics(model, cfg: dict, spec: Path, split: str) -> dict:
    """Scores of ``model`` on one split of ``spec``, beside the all-target prediction's pixel Dice."""
    import numpy as np

    from wsi_weakseg.evaluate.regions import evaluate_regions
    from wsi_weakseg.train.region_items import build_region_eval_items
    from wsi_weakseg.train.region_validate import validate_regions
    from wsi_weakseg.weak.spec import load_spec

    items = build_region_eval_items(load_spec(spec).split(split), cfg)
    scores = validate_regions(model.net, model.card, items)
    trivial = [evaluate_regions(np.ones(it.mask.shape, bool), it.mask)["dice"] for it in items]
    return {"split": f"{split} ({spec.name})", "n": len(items), "mean": scores["mean"], "images": scores["images"],
            "all_target_dice": round(float(np.mean(trivial)), 4), "weights": "float16"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="model folder written by `wsi-weakseg train` (recipe: regions)")
    parser.add_argument("spec", type=Path, help="data spec whose validation items name their masks (labels)")
    parser.add_argument("--name", required=True, help="packaged model name, e.g. glands-points-v1")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (e.g. wsi_weakseg/models/NAME)")
    parser.add_argument("--description", help="card description (default: from the training config)")
    parser.add_argument("--test", action="store_true",
                        help="also score the held-out test split (once, at the end) into the card's metrics")
    parser.add_argument("--retune", action="store_true",
                        help="choose the region level and hole size again on the validation split (segment's path)")
    parser.add_argument("--measure-context", action="store_true",
                        help="measure the card's context again on the validation images (mosaics of small ones)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from wsi_weakseg.errors import UserInputError

    try:
        metrics = package(args.run, args.spec, args.name, args.out, args.description, args.test, args.retune,
                          args.measure_context)
    except UserInputError as exc:
        print(f"package_regions_model: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
