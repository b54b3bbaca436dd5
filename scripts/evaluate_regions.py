"""Score a trained region model (recipe: regions) on one split of a data spec: pixel Dice, IoU, object Dice.

The model runs on each whole image at its card's pixel size (the training validation path,
:func:`wsi_weakseg.train.region_validate.validate_regions`); items need ``labels`` (the target mask). Prints the
means and writes the per-image rows to ``--out`` (JSON) when given. For issue 18 the test split of
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = load_model(args.model)
    if model.card.model_type != REGIONS:
        log.error("%s is a %r model, not a regions model", args.model, model.card.model_type)
        return 2
    cfg = (model.card.training or {}).get("config") or {"regions": {"point_radius_um": 1.25}}
    cfg = {"data": {"mpp": model.card.mpp}, "regions": cfg["regions"]}
    items = build_region_eval_items(load_spec(args.spec).split(args.split), cfg)
    scores = validate_regions(model.net, model.card, items)
    print(json.dumps({"model": str(args.model), "split": args.split, "n": len(items), "mean": scores["mean"]}))
    if args.out:
        args.out.write_text(json.dumps({"split": args.split, **scores}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
