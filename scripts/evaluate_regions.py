"""Score a trained region model (recipe: regions) on one split of a data spec: pixel Dice, IoU, object Dice.

The model runs on each image as ``segment`` runs it (the training validation path,
:func:`wsi_weakseg.train.region_validate.validate_regions`); items need ``labels`` (the target mask). Prints the
means and writes the per-image rows to ``--out`` (JSON) when given. ``--native`` scores at each image's own pixel
size instead: the working-grid mask is brought to the image grid as the written polygons cover it
(:func:`~wsi_weakseg.evaluate.regions.labels_at_level0`) and compared with the full-resolution mask, so models
of different pixel sizes compare on one grid. For issue 18 the test split of
``configs/data/glas-split.yaml`` is scored once, at the end, for every arm.

Usage::

    PYTHONPATH=. python scripts/evaluate_regions.py runs/regions/cvm-3pairs configs/data/glas-split.yaml \
        --split test --out runs/regions/cvm-3pairs/test.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("evaluate_regions")


def main(argv: list[str] | None = None) -> int:
    from wsi_weakseg.model.card import REGIONS, load_model
    from wsi_weakseg.train.region_items import build_region_eval_items
    from wsi_weakseg.train.region_validate import validate_regions
    from wsi_weakseg.weak.spec import load_spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="model folder written by `wsi-weakseg train` (recipe: regions)")
    parser.add_argument("spec", type=Path, help="data spec whose items name their masks (labels)")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--out", type=Path, help="JSON file for the means and per-image rows")
    parser.add_argument("--native", action="store_true", help="score on each image's own grid (level 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = load_model(args.model)
    if model.card.model_type != REGIONS:
        log.error("%s is a %r model, not a regions model", args.model, model.card.model_type)
        return 2
    cfg = (model.card.training or {}).get("config") or {"regions": {"point_radius_um": 1.25}}
    cfg = {"data": {"mpp": model.card.mpp}, "regions": cfg["regions"]}
    spec_items = load_spec(args.spec).split(args.split)
    items = build_region_eval_items(spec_items, cfg)
    scores = native_scores(model, items, spec_items) if args.native else validate_regions(model.net, model.card, items)
    print(json.dumps({"model": str(args.model), "split": args.split, "n": len(items), "mean": scores["mean"]}))
    if args.out:
        args.out.write_text(json.dumps({"split": args.split, **scores}, indent=1), encoding="utf-8")
    return 0


def native_scores(model, items, spec_items) -> dict:
    """:func:`validate_regions`'s mask metrics on each image's own grid (``--native``); items keep the spec's order."""
    import numpy as np

    from wsi_weakseg.engine.region_polygons import region_labels, region_params
    from wsi_weakseg.evaluate import read_label_map
    from wsi_weakseg.evaluate.regions import (
        REGION_KEYS,
        evaluate_regions,
        labels_at_level0,
    )
    from wsi_weakseg.train.region_validate import region_probabilities

    params = region_params(model.card, model.card.mpp)
    rows = []
    probs = region_probabilities(model.net, model.card, [item.image for item in items])
    for item, spec_item, prob in zip(items, spec_items, probs, strict=True):
        mask, _ = read_label_map(spec_item.labels)
        labels, _ = region_labels(prob, params)
        pred = labels_at_level0(labels > 0, mask.shape, model.card.mpp / spec_item.mpp)
        rows.append({"name": item.name, **evaluate_regions(pred, mask)})
    return {"mean": {k: float(np.mean([r[k] for r in rows])) for k in REGION_KEYS}, "images": rows}


if __name__ == "__main__":
    raise SystemExit(main())
