"""Write simulated scribbles (issue 15) for the TRAINING items of a data spec that carry a mask.

A training item's mask is its ``labels`` entry or, with ``--masks DIR``, ``DIR/<image stem>.png`` (point specs
name masks for validation items only; the simulator is the one place training masks may be read, to make the
weaker labels by this stated, seeded protocol).

For every training item with ``labels`` (an instance map on the image's grid) and every fraction, writes
``OUT/<percent>/<image stem>.geojson``: QuPath GeoJSON ``LineString`` strokes along nucleus and background
skeletons (:func:`wsi_weakseg.weak.simulate_scribbles.simulate_scribbles`). Training then reads these through
the real import path (spec item ``scribbles: FILE``). Validation and test items are never touched.

Usage::

    PYTHONPATH=. python scripts/simulate_scribbles.py configs/data/points-monuseg-crc-v2.yaml --out scribbles \
        --masks ../shared/data/monuseg-train/labels --fractions 0.1 0.3 0.5 1.0 --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from wsi_weakseg.evaluate import read_label_map
from wsi_weakseg.weak.simulate_scribbles import FRACTIONS, simulate_scribbles
from wsi_weakseg.weak.spec import load_spec

log = logging.getLogger("simulate_scribbles")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="data spec YAML")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--masks", type=Path, default=None,
                        help="folder of instance masks named <image stem>.png, for training items without labels")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    items = []
    for item in load_spec(args.spec).split("train"):
        mask = item.labels or (args.masks / f"{item.image.stem}.png" if args.masks else None)
        if mask is not None and Path(mask).is_file():
            items.append((item, mask))
    if not items:
        log.error("%s: no training item has a mask ('labels', or --masks DIR/<stem>.png)", args.spec)
        return 2
    for item, mask in items:
        labels, _ = read_label_map(mask)
        for fraction in args.fractions:
            folder = args.out / f"{round(fraction * 100)}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{item.image.stem}.geojson"
            fc = simulate_scribbles(labels, fraction, args.seed)
            path.write_text(json.dumps(fc), encoding="utf-8")
            log.info("%s: %d strokes", path, len(fc["features"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
