"""Write simulated scribbles (issue 15) for the TRAINING items of a data spec that carry a mask.

For every training item with ``labels`` (an instance map on the image's grid) and every fraction, writes
``OUT/<percent>/<image stem>.geojson``: QuPath GeoJSON ``LineString`` strokes along nucleus and background
skeletons (:func:`wsi_weakseg.weak.simulate_scribbles.simulate_scribbles`). Training then reads these through
the real import path (spec item ``scribbles: FILE``). Validation and test items are never touched.

Usage::

    PYTHONPATH=. python scripts/simulate_scribbles.py configs/data/monuseg.yaml --out scribbles \
        --fractions 0.1 0.3 0.5 1.0 --seed 0
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    items = [item for item in load_spec(args.spec).split("train") if item.labels is not None]
    if not items:
        log.error("%s: no training item has 'labels' (an instance mask)", args.spec)
        return 2
    for item in items:
        labels, _ = read_label_map(item.labels)
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
