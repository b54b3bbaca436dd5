"""Self-training labels (issue 11): a trained points model's nuclei, kept only where the clicks confirm them.

A second round of training from a first model's own output is the oldest lever of point-supervised nucleus
segmentation (e.g. Qu et al., MIDL 2019 / TMI 2020: a second round on refined first-round masks). The clicks
decide what a round-1 nucleus is worth, so no mask and no ground truth is read:

* a predicted nucleus that holds **exactly one** click is kept as a training nucleus (its whole outline is a
  target, so the boundary the net learns is round 1's, made consistent over the training set);
* a predicted nucleus with **two or more** clicks is a merge: left unsupervised (its box, grown by
  ``--margin-um``, is cut out of the annotated region);
* one with **no** click is unconfirmed, a false positive or a nucleus nobody clicked: unsupervised as a merge
  (``--unconfirmed ignore``, the default), or background (``background``: right where every nucleus was
  clicked, and it teaches the net to stop over-detecting);
* a click that no predicted nucleus holds is a missed nucleus: a disc of ``--miss-radius-um`` around it is left
  unsupervised too (calling it background would teach the net to miss it again);
* every other pixel of the image is background.

For each ``train`` item of the spec the script writes, under ``OUT``, ``labels/<stem>.png`` (uint16 instance
ids on the item's level-0 grid) and ``regions/<stem>.geojson`` (the supervised area: the image minus the
holes above, a QuPath ``Annotated region``), and ``spec.yaml``: those items as ``masks`` + ``region`` (the
few-masks recipe's label-image input), then the spec's validation and test items with label maps, unchanged.
``counts.json`` holds the per-image counts. Nothing here is committed (``runs/`` is ignored).

Usage::

    PYTHONPATH=. python scripts/pseudo_masks.py configs/data/points-monuseg-crc-v2.yaml \
        --model nuclei-points-v2 --out runs/self-train/round2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from shapely.geometry import Point, box, mapping
from shapely.ops import unary_union

from wsi_weakseg.weak.spec import load_item_points, load_spec

# spec entries as the few-masks specs write them
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_few_masks_spec import _entry, _write_yaml

log = logging.getLogger("pseudo_masks")


def click_ids(labels: np.ndarray, rc: np.ndarray) -> np.ndarray:
    """Instance id under each click (pixel-centre ``(row, col)``, QuPath convention), 0 where there is none.

    Examples
    --------
    >>> lab = np.zeros((4, 4), np.int32); lab[1:3, 1:3] = 7
    >>> click_ids(lab, np.array([[1.0, 1.0], [2.4, 1.6], [0.0, 3.0]])).tolist()
    [7, 7, 0]
    """
    r = np.clip(np.floor(rc[:, 0] + 0.5).astype(np.int64), 0, labels.shape[0] - 1)
    c = np.clip(np.floor(rc[:, 1] + 0.5).astype(np.int64), 0, labels.shape[1] - 1)
    return labels[r, c]


def confirm(labels: np.ndarray, rc: np.ndarray, margin_px: float, miss_radius_px: float,
            unconfirmed: str = "ignore"):
    """Kept instances (relabelled 1..n), the supervised region polygon and the counts (see the module doc)."""
    ids = click_ids(labels, rc)
    clicks = np.bincount(ids, minlength=int(labels.max()) + 1)
    clicks[0] = 0
    present = np.unique(labels)
    present = present[present > 0]
    kept = present[clicks[present] == 1]
    lut = np.zeros(int(labels.max()) + 1, np.int64)
    lut[kept] = np.arange(1, kept.size + 1)
    out = lut[labels].astype(np.uint16)
    dropped = present[clicks[present] >= 2] if unconfirmed == "background" else present[clicks[present] != 1]
    holes = [Point(c + 0.5, r + 0.5).buffer(miss_radius_px) for r, c in rc[ids == 0]]
    if dropped.size:
        from scipy import ndimage

        boxes = ndimage.find_objects(labels)  # boxes[i - 1] is label i's
        for lab_id in dropped:
            ys, xs = boxes[lab_id - 1]
            holes.append(box(xs.start - margin_px, ys.start - margin_px, xs.stop + margin_px, ys.stop + margin_px))
    h, w = labels.shape
    region = box(0, 0, w, h).difference(unary_union(holes)) if holes else box(0, 0, w, h)
    counts = {"instances": int(present.size), "kept": int(kept.size),
              "merged": int(np.sum(clicks[present] >= 2)), "unconfirmed": int(np.sum(clicks[present] == 0)),
              "clicks": len(rc), "missed_clicks": int(np.sum(ids == 0)),
              "supervised_fraction": round(region.area / (h * w), 4)}
    return out, region, counts


def region_geojson(region) -> dict:
    """The supervised area as one QuPath ``Annotated region`` annotation (level-0 pixel edges)."""
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": mapping(region),
         "properties": {"objectType": "annotation", "name": "Annotated region"}}]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="data spec YAML with point clicks (v2's)")
    parser.add_argument("--model", default="nuclei-points-v2", help="round-1 model (name or folder)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (under runs/: never committed)")
    parser.add_argument("--margin-um", type=float, default=1.0, help="growth of an unsupervised nucleus box")
    parser.add_argument("--unconfirmed", choices=["ignore", "background"], default="ignore",
                        help="a predicted nucleus without a click: unsupervised (default) or background")
    parser.add_argument("--miss-radius-um", type=float, default=5.0, help="unsupervised disc around a missed click")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from wsi_weakseg.engine.inference import Predictor
    from wsi_weakseg.engine.whole import predict_level0
    from wsi_weakseg.model.card import load_model
    from wsi_weakseg.slide import open_slide

    spec = load_spec(args.spec)
    model = load_model(args.model)
    predictor = Predictor(model.net, model.card, "cpu")
    entries, counts = [], {}
    for item in spec.split("train"):
        if item.points is None or item.kind != "image":
            log.warning("%s: skipped (a plain image with clicks is needed)", item.image.name)
            continue
        points = load_item_points(item)
        with open_slide(item.image, mpp=item.mpp) as slide:
            labels, _ = predict_level0(slide, predictor)  # a plain image: the whole of it, origin (0, 0)
            mpp = slide.mpp
        kept, region, n = confirm(labels, points.rc(), args.margin_um / mpp, args.miss_radius_um / mpp,
                                     args.unconfirmed)
        stem = item.image.stem
        for sub in ("labels", "regions"):
            (args.out / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(kept).save(args.out / "labels" / f"{stem}.png")
        (args.out / "regions" / f"{stem}.geojson").write_text(json.dumps(region_geojson(region)), encoding="utf-8")
        entries.append(_entry(item, masks=(args.out / "labels" / f"{stem}.png").resolve(),
                              region=(args.out / "regions" / f"{stem}.geojson").resolve()))
        counts[stem] = n
        log.info("%s: %s", stem, n)
    held = [_entry(it, points=it.points, labels=it.labels) for s in ("validation", "test") for it in spec.split(s)
            if it.labels is not None]
    _write_yaml(args.out / "spec.yaml", entries + held, f"# made by scripts/pseudo_masks.py from {args.spec} and model "
                f"{args.model} (unconfirmed: {args.unconfirmed}); see its docstring\n")
    total = {k: sum(c[k] for c in counts.values()) for k in ("instances", "kept", "merged", "unconfirmed",
                                                              "clicks", "missed_clicks")}
    (args.out / "counts.json").write_text(json.dumps({"total": total, "images": counts}, indent=2) + "\n",
                                          encoding="utf-8")
    log.info("total: %s", total)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
