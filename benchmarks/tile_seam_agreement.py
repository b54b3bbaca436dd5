"""How closely tiled output matches whole-image output for a CNN model (README's seam claim, measured).

Merge blocks are exact for any model (``tests/engine/test_exactly_once.py``: byte-identical GeoJSON); CNN
*tiles* are exact only up to the measured context tolerance of the card (max |Δp| <= 0.01 at
``context_px``). This script segments MoNuSeg training images (1000x1000 at 0.25 µm/px, ``$WSI_WEAKSEG_DATA``
or ``../shared/data``) once with a tile larger than the working image (one tile: the whole-image result)
and once with small tiles (many seams), with the same block size, and compares the nucleus label maps:
whether the label maps are identical, the fraction of foreground pixels on which they agree, the fraction of whole-image nuclei whose tiled twin has IoU >= 0.5, their mean
IoU, and the nucleus counts.

Usage::

    python benchmarks/tile_seam_agreement.py --model nuclei-points-v1 --n 2 --tile 128
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import zarr

from wsi_weakseg.engine.segment import SegmentOptions, segment
from wsi_weakseg.model.card import DEFAULT_MODEL


def _labels(zarr_path: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(zarr_path), mode="r")["labels/nuclei/0"][:])


def agreement(whole: np.ndarray, tiled: np.ndarray) -> dict[str, float]:
    """Pixel and per-nucleus agreement of two label maps of one image."""
    fg = (whole > 0) | (tiled > 0)
    ids = np.unique(whole[whole > 0])
    ious = []
    for i in ids:
        m = whole == i
        cand, counts = np.unique(tiled[m], return_counts=True)
        keep = cand > 0
        if not keep.any():
            ious.append(0.0)
            continue
        j = cand[keep][np.argmax(counts[keep])]
        t = tiled == j
        ious.append(float((m & t).sum() / (m | t).sum()))
    ious = np.array(ious)
    same = (whole > 0) == (tiled > 0)
    return {"identical": float(np.array_equal(whole, tiled)), "pixels_same_fg": float(same[fg].mean()) if fg.any() else 1.0,
            "matched_iou50": float((ious >= 0.5).mean()) if len(ious) else 1.0,
            "mean_iou": float(ious.mean()) if len(ious) else 1.0,
            "n_whole": int(len(ids)), "n_tiled": int(len(np.unique(tiled[tiled > 0])))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name or folder (default: the packaged default)")
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--tile", type=int, default=128)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(os.environ.get("WSI_WEAKSEG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    images = sorted((root / "monuseg-train" / "images").glob("*.png"))[: args.n]
    if not images:
        raise SystemExit(f"no MoNuSeg images under {root}; set WSI_WEAKSEG_DATA")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in images:
            out = {}
            for tile in (1024, args.tile):
                o = SegmentOptions(tile_size=tile, block_size=1024, mpp=0.25, device="cpu", progress=False)
                res = segment(path, Path(tmp) / f"{path.stem}-{tile}", model=args.model, options=o)
                out[tile] = _labels(res.zarr)
            rows.append(agreement(out[1024], out[args.tile]))
            print(path.stem, {k: round(v, 4) for k, v in rows[-1].items()})
    print("mean", {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]})


if __name__ == "__main__":
    main()
