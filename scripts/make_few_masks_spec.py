"""Write the labelled subsets of issue 16's evaluation: seeded squares of MoNuSeg training images with their masks.

Protocol (fixed before any few-masks run): the MoNuSeg training images of a data spec (v2's 19, the items of
split ``train`` whose masks exist in ``--masks``) are cut into the paper's 250 x 250 level-0 sub-images (a
1000 x 1000 image gives 16; 304 in all). One permutation of all of them, drawn with
``numpy.random.default_rng(--seed)``, orders them; the labelled subset at fraction ``f`` is the first
``max(1, round(f * n))`` (1/32: 10 squares, 1/8: 38 of 304), so the subsets are nested. For every fraction the
script writes, under ``OUT/<name>/`` (``1of32``, ``1of8``):

- ``regions/<image>.geojson``: the chosen squares of an image as QuPath ``Annotated region`` polygons;
- ``spec.yaml``: every MoNuSeg training image; those with a square name their mask (``masks:``, the label image)
  and ``region:`` (its squares), so only nuclei with a pixel inside a square are targets and only pixels inside
  are supervised; the others are unlabelled images. The source's MoNuSeg validation and test items follow as
  they are (masks there stay validation/test-only);
- ``squares.json``: the chosen squares (image, x, y, size) and the labelled fraction of the training pixels.

Also ``OUT/points/spec.yaml``: the same training images with their point clicks (the points recipe's reference
on the same images and validation masks). Nothing here is committed (``runs/`` is ignored); the evaluation
configs in ``configs/few-masks-eval/`` name these specs.

Usage::

    PYTHONPATH=. python scripts/make_few_masks_spec.py configs/data/points-monuseg-crc-v2.yaml \
        --masks ../shared/data/monuseg-train/labels --out runs/few-masks --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import uuid
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from wsi_weakseg.weak.spec import SpecItem, load_spec

log = logging.getLogger("make_few_masks_spec")

#: The paper's MoNuSeg sub-image side in level-0 pixels, and the labelled fractions evaluated (name: fraction).
SQUARE = 250
FRACTIONS = {"1of32": 1 / 32, "1of8": 1 / 8}
_ID_NAMESPACE = uuid.UUID("6f1f0c3e-0f6a-4f57-9a57-1c7a3d1f6a16")  # stable feature ids: reruns write the same bytes


def squares_of(items: list[tuple[SpecItem, Path]]) -> list[tuple[int, int, int]]:
    """``(item index, x, y)`` of every whole ``SQUARE`` sub-image, items in order, then rows, then columns."""
    out = []
    for i, (item, _) in enumerate(items):
        with Image.open(item.image) as im:
            width, height = im.size
        out += [(i, x, y) for y in range(0, height - SQUARE + 1, SQUARE) for x in range(0, width - SQUARE + 1, SQUARE)]
    return out


def choose(n: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of the labelled squares: the first ``max(1, round(fraction * n))`` of one seeded permutation.

    Examples
    --------
    >>> a, b = choose(304, 1 / 32, 0), choose(304, 1 / 8, 0)
    >>> len(a), len(b), bool(set(a) <= set(b))
    (10, 38, True)
    """
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: max(1, round(fraction * n))])


def region_geojson(stem: str, squares: list[tuple[int, int]]) -> dict:
    """QuPath annotations named ``Annotated region``, one square each (level-0 pixel edges)."""
    features = []
    for x, y in squares:
        ring = [[x, y], [x + SQUARE, y], [x + SQUARE, y + SQUARE], [x, y + SQUARE], [x, y]]
        features.append({"type": "Feature", "id": str(uuid.uuid5(_ID_NAMESPACE, f"{stem}/{x}/{y}")),
                         "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "annotation", "name": "Annotated region"}})
    return {"type": "FeatureCollection", "features": features}


def _pixels(path: Path) -> int:
    with Image.open(path) as im:
        return im.size[0] * im.size[1]


def _entry(item: SpecItem, **extra) -> dict:
    """A spec entry with absolute paths: image, mpp, split, then ``extra`` (points, labels, masks, region)."""
    entry: dict = {item.kind: str(item.image), "split": item.split}
    if item.mpp is not None:
        entry["mpp"] = item.mpp
    entry.update({k: str(v) for k, v in extra.items() if v is not None})
    return entry


def _write_yaml(path: Path, entries: list[dict], header: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump({"items": entries}, sort_keys=False), encoding="utf-8")
    log.info("%s: %d items", path, len(entries))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="data spec YAML (v2's: configs/data/points-monuseg-crc-v2.yaml)")
    parser.add_argument("--masks", type=Path, required=True, help="folder of MoNuSeg instance masks <image stem>.png")
    parser.add_argument("--out", type=Path, required=True, help="output folder (under runs/: never committed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = load_spec(args.spec)
    train = [(it, args.masks / f"{it.image.stem}.png") for it in spec.split("train")]
    train = [(it, mask) for it, mask in train if mask.is_file()]
    if not train:
        log.error("%s: no training item has a mask in %s", args.spec, args.masks)
        return 2
    held = [_entry(it, points=it.points, labels=it.labels) for s in ("validation", "test") for it in spec.split(s)
            if it.labels is not None]
    squares = squares_of(train)
    total_px = sum(_pixels(it.image) for it, _ in train)
    header = f"# made by scripts/make_few_masks_spec.py from {args.spec} (seed {args.seed}); see its docstring\n"
    for name, fraction in FRACTIONS.items():
        folder = args.out / name
        chosen = [squares[j] for j in choose(len(squares), fraction, args.seed)]
        entries = []
        for i, (item, mask) in enumerate(train):
            mine = [(x, y) for k, x, y in chosen if k == i]
            if not mine:
                entries.append(_entry(item))
                continue
            region = folder / "regions" / f"{item.image.stem}.geojson"
            region.parent.mkdir(parents=True, exist_ok=True)
            region.write_text(json.dumps(region_geojson(item.image.stem, mine)), encoding="utf-8")
            entries.append(_entry(item, masks=mask.resolve(), region=region.resolve()))
        _write_yaml(folder / "spec.yaml", entries + held, header)
        record = {"seed": args.seed, "fraction": fraction, "squares_total": len(squares), "square_px": SQUARE,
                  "labelled_fraction_of_pixels": len(chosen) * SQUARE**2 / total_px,
                  "squares": [{"image": train[k][0].image.stem, "x": x, "y": y} for k, x, y in chosen]}
        (folder / "squares.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        log.info("%s: %d of %d squares on %d images", name, len(chosen), len(squares), len({k for k, _, _ in chosen}))
    points = [_entry(it, points=it.points) for it, _ in train if it.points is not None]
    _write_yaml(args.out / "points" / "spec.yaml", points + held, header)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
