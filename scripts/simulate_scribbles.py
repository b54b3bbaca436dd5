"""Write simulated scribbles (issue 15) for the TRAINING items of a data spec that carry a mask.

A training item's mask is its ``labels`` entry or, with ``--masks DIR``, ``DIR/<image stem>.png`` (point specs
name masks for validation items only; the simulator is the one place training masks may be read, to make the
weaker labels by this stated, seeded protocol).

For every training item with ``labels`` (an instance map on the image's grid) and every fraction, writes
``OUT/<percent>/<image stem>.geojson``: QuPath GeoJSON ``LineString`` strokes along nucleus and background
skeletons (:func:`wsi_weakseg.weak.simulate_scribbles.simulate_scribbles`). Training then reads these through
the real import path (spec item ``scribbles: FILE``). Validation and test items are never touched.

With ``--specs``, also writes ``OUT/<percent>/spec.yaml`` (the training images with only their simulated
``scribbles``, plus the source's validation items that carry ``labels``) and ``OUT/points/spec.yaml`` (the same
training images with their ``points`` instead), so both recipes train on the same images and are scored on the
same validation masks. Test items are left out of every spec.

Usage::

    PYTHONPATH=. python scripts/simulate_scribbles.py configs/data/points-monuseg-crc-v2.yaml --out scribbles \
        --masks ../shared/data/monuseg-train/labels --fractions 0.1 0.3 0.5 1.0 --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import yaml

from wsi_weakseg.evaluate import read_label_map
from wsi_weakseg.weak.simulate_scribbles import FRACTIONS, simulate_scribbles
from wsi_weakseg.weak.spec import SpecItem, load_spec

log = logging.getLogger("simulate_scribbles")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="data spec YAML")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--masks", type=Path, default=None,
                        help="folder of instance masks named <image stem>.png, for training items without labels")
    parser.add_argument("--specs", action="store_true",
                        help="also write OUT/<percent>/spec.yaml and the points baseline OUT/points/spec.yaml")
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
    spec = load_spec(args.spec)
    validation = [_entry(item, labels=True) for item in spec.split("validation") if item.labels is not None]
    for item, mask in items:
        labels, _ = read_label_map(mask)
        for fraction in args.fractions:
            folder = args.out / f"{round(fraction * 100)}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{item.image.stem}.geojson"
            fc = simulate_scribbles(labels, fraction, args.seed)
            path.write_text(json.dumps(fc), encoding="utf-8")
            log.info("%s: %d strokes", path, len(fc["features"]))
    if args.specs:
        for fraction in args.fractions:
            folder = args.out / f"{round(fraction * 100)}"
            train = [{**_entry(item), "scribbles": str((folder / f"{item.image.stem}.geojson").resolve())}
                     for item, _ in items]
            _write_spec(folder / "spec.yaml", train + validation)
        _write_spec(args.out / "points" / "spec.yaml", [_entry(item, points=True) for item, _ in items] + validation)
    return 0


def _entry(item: SpecItem, *, labels: bool = False, points: bool = False) -> dict:
    """A spec entry for ``item`` with absolute paths: image, mpp, split, and optionally labels / points."""
    entry: dict = {item.kind: str(item.image), "split": item.split}
    if item.mpp is not None:
        entry["mpp"] = item.mpp
    if (labels or points) and item.points is not None:
        entry["points"] = str(item.points)
    if labels:
        entry["labels"] = str(item.labels)
    return entry


def _write_spec(path: Path, entries: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"items": entries}, sort_keys=False), encoding="utf-8")
    log.info("%s: %d items", path, len(entries))


if __name__ == "__main__":
    raise SystemExit(main())
