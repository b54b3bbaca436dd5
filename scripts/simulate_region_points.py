"""Simulate in/out points (issue 18) from the masks of a data spec, as QuPath GeoJSON, and the specs that train on them.

Protocol (Zhang et al. CVPR 2023, Sec. 5.2; :func:`wsi_weakseg.weak.region_points.simulate_region_points`): for
every TRAIN and VALIDATION item of the spec (each must name its mask as ``labels``, non-zero = target), ``n``
points drawn at random inside the target and ``n`` outside it, one generator per image seeded by ``(--seed,
crc32(image name))``; the ``n``-pair points are the first ``n`` of the largest ``n`` asked for, so 3 pairs are a
subset of 5. Validation items get points too: the paper recomputes ``u`` when the validation pCE (on points)
improves. TEST items are never read.

For each ``n`` in ``--pairs`` writes under ``OUT/<n>pairs/``:

- ``points/<image stem>.geojson``: one ``MultiPoint`` annotation of class ``--in-class`` and one of
  ``--out-class`` (QuPath's import format; training reads them through the real import path);
- ``spec.yaml``: the training items with their ``region_points``, the validation items with ``region_points``
  and ``labels`` (Dice), the source's ``in_classes``/``out_classes`` defaults set to the classes written.

Nothing here is committed (``runs/`` is ignored).

Usage::

    PYTHONPATH=. python scripts/simulate_region_points.py configs/data/glas-split.yaml --out runs/glas-points \
        --pairs 3 5 --seed 0
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import yaml

from wsi_weakseg.evaluate import read_label_map
from wsi_weakseg.weak.region_points import simulate_region_points, write_region_points
from wsi_weakseg.weak.spec import SpecItem, load_spec

log = logging.getLogger("simulate_region_points")


def _entry(item: SpecItem, points: Path, labels: bool) -> dict:
    entry: dict = {item.kind: str(item.image), "region_points": str(points.resolve()), "split": item.split}
    if item.mpp is not None:
        entry["mpp"] = item.mpp
    if labels:
        entry["labels"] = str(item.labels)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="data spec YAML whose train/validation items name their masks (labels)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (under runs/)")
    parser.add_argument("--pairs", type=int, nargs="+", default=[3, 5], help="pairs of in/out points per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-class", default="Gland", help="QuPath class of the in-target points")
    parser.add_argument("--out-class", default="Other", help="QuPath class of the out-of-target points")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = load_spec(args.spec)
    items = [it for it in spec.items if it.split in ("train", "validation")]
    missing = [str(it.image) for it in items if it.labels is None]
    if missing:
        log.error("%s: %d train/validation items name no mask (labels), e.g. %s", args.spec, len(missing), missing[0])
        return 2
    entries: dict[int, list[dict]] = {n: [] for n in args.pairs}
    for item in items:
        mask, _ = read_label_map(item.labels)
        xy_in, xy_out = simulate_region_points(mask, max(args.pairs), args.seed, item.image.stem)
        for n in args.pairs:
            path = args.out / f"{n}pairs" / "points" / f"{item.image.stem}.geojson"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_region_points(path, xy_in[:n], xy_out[:n], in_class=args.in_class, out_class=args.out_class)
            entries[n].append(_entry(item, path, labels=item.split == "validation"))
        log.info("%s (%s): %d pairs, target %.0f %% of the image", item.image.stem, item.split, max(args.pairs),
                 100 * float(np.mean(mask > 0)))
    for n, rows in entries.items():
        out = args.out / f"{n}pairs" / "spec.yaml"
        defaults = {"in_classes": [args.in_class], "out_classes": [args.out_class]}
        text = f"# {n} simulated in/out point pairs per image (seed {args.seed}) from {args.spec.resolve()}\n"
        out.write_text(text + yaml.safe_dump({"defaults": defaults, "items": rows}, sort_keys=False), encoding="utf-8")
        log.info("%s: %d items", out, len(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
