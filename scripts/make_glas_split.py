"""Write the committed GlaS split of issue 18 (``configs/data/glas-split.yaml``): test, validation, train by seed.

Protocol (fixed before any regions run): the 85 GlaS training images ``train_1`` ... ``train_85`` of
``../shared/data/glas-train`` in numeric order; one permutation drawn with ``numpy.random.default_rng(--seed)``;
its first ``--test`` images are the **test** split (never read by training, model selection or tuning: scored
once, at the end), the next ``--validation`` the **validation** split (validation metrics, the shipped epoch,
the CVM's validation pCE), the rest **train**. The defaults 17 / 14 / 54 follow the paper's protocol (one fold
in five held out for test, the rest split 4 : 1 into training and validation). This copy of GlaS lacks the
benign/malignant grades, so the split is not stratified by grade.

Every item names its mask as ``labels`` (validation and test metrics; the simulator of
``scripts/simulate_region_points.py`` reads the training masks only to draw the points of the stated protocol).

Usage::

    PYTHONPATH=. python scripts/make_glas_split.py --data ../shared/data/glas-train --out configs/data/glas-split.yaml
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger("make_glas_split")

HEADER = """\
# GlaS split of issue 18 (regions recipe), written by scripts/make_glas_split.py --seed {seed}: do not edit by hand.
# The 85 GlaS training images in numeric order, one seeded permutation: the first {n_test} are TEST (scored once, at
# the end; never read by training, model selection or tuning), the next {n_val} VALIDATION, the rest ({n_train})
# TRAIN. Masks ("labels", 255 = gland) serve validation/test metrics and, for training items, only the seeded point
# simulation (scripts/simulate_region_points.py). GlaS: research use only (see ../shared/data/README.md).
"""


def split_names(names: list[str], n_test: int, n_val: int, seed: int) -> dict[str, str]:
    """Split of each name: the first ``n_test`` of one seeded permutation are test, the next ``n_val`` validation.

    Examples
    --------
    >>> s = split_names([f"train_{i}" for i in range(1, 86)], 17, 14, 0)
    >>> [sum(v == k for v in s.values()) for k in ("test", "validation", "train")]
    [17, 14, 54]
    """
    order = np.random.default_rng(seed).permutation(len(names))
    split = {}
    for rank, i in enumerate(order):
        split[names[i]] = "test" if rank < n_test else "validation" if rank < n_test + n_val else "train"
    return split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the glas-train folder (images/, masks/)")
    parser.add_argument("--out", type=Path, required=True, help="the spec YAML to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test", type=int, default=17)
    parser.add_argument("--validation", type=int, default=14)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = sorted((p.stem for p in (args.data / "images").glob("train_*.png")), key=lambda n: int(n.split("_")[1]))
    if len(names) < args.test + args.validation + 1:
        log.error("%s: %d images, too few for %d test + %d validation", args.data, len(names), args.test, args.validation)
        return 2
    split = split_names(names, args.test, args.validation, args.seed)
    rel = Path(os.path.relpath(args.data.resolve(), args.out.resolve().parent))
    lines = [HEADER.format(seed=args.seed, n_test=args.test, n_val=args.validation,
                           n_train=len(names) - args.test - args.validation),
             "defaults:\n  mpp: 0.62\n  in_classes: [Gland]\n  out_classes: [Other]\nitems:\n"]
    for name in names:
        lines.append(f"- image: {rel / 'images' / name}.png\n  labels: {rel / 'masks' / name}.png\n"
                     f"  split: {split[name]}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(lines), encoding="utf-8")
    log.info("%s: %d items (%d test, %d validation)", args.out, len(names), args.test, args.validation)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
