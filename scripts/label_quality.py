"""Quality of the points recipe's cluster labels against instance masks, on a data spec's TRAINING items.

Issue 11: label settings (k-means colour features, the ignore ring) are chosen here by label quality on the
training images only -- never on validation or test images. For every setting and MoNuSeg-like item with a
mask (``--labels-dir``: ``<image stem>.png`` instance maps, the same grid as the image), at the recipe's
working pixel size:

- nucleus precision / recall: of pixels labelled NUCLEUS, the fraction inside a true nucleus / of true
  nucleus pixels, the fraction labelled NUCLEUS;
- fg->bg: true nucleus pixels labelled BACKGROUND (the harmful error: it teaches the net to shrink nuclei);
- bg precision: of pixels labelled BACKGROUND, the fraction truly background;
- supervised: fraction of pixels not IGNORE.

Usage::

    python scripts/label_quality.py configs/data/points-monuseg-crc-v2.yaml \
        --labels-dir ../shared/data/monuseg-train/labels --colour h:0.5 rgb:1.0 rgb+h:0.5 --ring-um 0 1 2
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from wsi_weakseg.evaluate import read_label_map
from wsi_weakseg.train.dataset import read_item
from wsi_weakseg.weak.clusters import cluster_label, ignore_ring
from wsi_weakseg.weak.spec import load_spec
from wsi_weakseg.weak.stain import estimate_stain_matrix, hematoxylin
from wsi_weakseg.weak.voronoi import BACKGROUND, IGNORE, NUCLEUS

log = logging.getLogger("label_quality")


def quality(label: np.ndarray, fg: np.ndarray) -> dict[str, float]:
    """Pixel-level agreement of a 0/1/2 label with the true foreground ``fg`` (bool)."""
    nuc, bg = label == NUCLEUS, label == BACKGROUND
    return {
        "nuc_precision": float((nuc & fg).sum() / max(nuc.sum(), 1)),
        "nuc_recall": float((nuc & fg).sum() / max(fg.sum(), 1)),
        "fg_to_bg": float((bg & fg).sum() / max(fg.sum(), 1)),
        "bg_precision": float((bg & ~fg).sum() / max(bg.sum(), 1)),
        "supervised": float((label != IGNORE).mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("spec")
    p.add_argument("--labels-dir", type=Path, required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--mpp", type=float, default=0.5)
    p.add_argument("--colour", nargs="+", default=["h:0.5", "rgb:1.0", "rgb+h:0.5"], help="COLOUR:WEIGHT settings")
    p.add_argument("--ring-um", nargs="+", type=float, default=[0.0, 1.0, 2.0])
    p.add_argument("--cluster-distance-um", type=float, default=5.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = load_spec(args.spec)
    rows: dict[tuple[str, float], list[dict]] = {}
    for item in spec.split(args.split):
        lab_path = args.labels_dir / (item.image.stem + ".png")
        if not lab_path.is_file():
            continue
        r = read_item(item, args.mpp)
        gt, _ = read_label_map(lab_path)
        # the spec item names no label map (training items): resample the mask the way read_item does
        scale = gt.shape[0] / (r.image.shape[0] * 1.0)
        rows_idx = np.clip(np.floor((np.arange(r.image.shape[0]) + 0.5) * scale).astype(int), 0, gt.shape[0] - 1)
        cols_idx = np.clip(np.floor((np.arange(r.image.shape[1]) + 0.5) * scale).astype(int), 0, gt.shape[1] - 1)
        fg = gt[np.ix_(rows_idx, cols_idx)] > 0
        h = hematoxylin(r.image, estimate_stain_matrix(r.image, seed=0))
        for setting in args.colour:
            colour, weight = setting.split(":")
            base = cluster_label(r.image, r.points_rc, mpp=r.mpp, h=h, colour=colour, colour_weight=float(weight),
                                 clip_um=args.cluster_distance_um, seed=0)
            for ring in args.ring_um:
                rows.setdefault((setting, ring), []).append(quality(ignore_ring(base, ring / r.mpp), fg))
        log.info("%s done", item.image.stem)
    keys = ["nuc_precision", "nuc_recall", "fg_to_bg", "bg_precision", "supervised"]
    n = len(next(iter(rows.values()))) if rows else 0
    print(f"| colour:weight | ring µm | {' | '.join(keys)} |  ({n} {args.split} images, mean)")
    print("|---|---|" + "---|" * len(keys))
    for (setting, ring), qs in rows.items():
        print(f"| {setting} | {ring:g} | " + " | ".join(f"{np.mean([q[k] for q in qs]):.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
