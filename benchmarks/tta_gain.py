"""Does flip/transpose test-time augmentation pay? Validation metrics and inference time at tta = 1, 4, 8.

Runs a model (default: the packaged default) on the validation split of a data spec at the model's working
pixel size, through the same path as training validation (``train.validate.validate``: the card's tiling,
context and thresholds), once per TTA setting, and prints the mean metrics, the wall time and its ratio to
tta = 1. Validation split only: this is a decision about a ``segment`` option.

Usage::

    python benchmarks/tta_gain.py --spec configs/data/points-monuseg-crc-v2.yaml
"""

from __future__ import annotations

import argparse
import logging
import time

from wsi_weakseg.model.card import DEFAULT_MODEL, load_model
from wsi_weakseg.train.dataset import build_eval_items
from wsi_weakseg.train.validate import validate
from wsi_weakseg.weak.spec import load_spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--radius-um", type=float, default=3.0)
    p.add_argument("--tta", type=int, nargs="+", default=[1, 4, 8])
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model = load_model(args.model)
    items = build_eval_items(load_spec(args.spec).split("validation"), model.card.mpp)
    base = None
    for tta in args.tta:
        t0 = time.perf_counter()
        res = validate(model.net, model.card, items, args.radius_um, "cpu", tta=tta)
        wall = time.perf_counter() - t0
        base = base or wall
        m = res["mean"]
        print(f"tta {tta}: " + ", ".join(f"{k} {m[k]:.4f}" for k in ("aji", "object_dice", "pq", "f1") if k in m)
              + f" | {wall:.1f} s (x{wall / base:.2f} of tta 1)")


if __name__ == "__main__":
    main()
