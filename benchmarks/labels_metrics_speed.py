"""Speed of the weak-label makers and the metrics on real MoNuSeg images (moved here from timed test asserts).

Times, on the first ``--n`` MoNuSeg training images (1000x1000 at ~0.25 µm/px; ``$WSI_WEAKSEG_DATA`` or
``../shared/data``): ``cluster_label`` and ``voronoi_label`` from bounding-box-centre points, and
``evaluate_instances`` of the label map against itself and against itself minus one nucleus. Prints seconds
per call (best of ``--repeat``) and the ratio to the budgets the tests used to assert (cluster 3 s,
evaluate 1 s; ratio < 1 = within budget).

Usage::

    python benchmarks/labels_metrics_speed.py --n 3 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.io import imread

from wsi_weakseg.evaluate.metrics import evaluate_instances
from wsi_weakseg.weak.clusters import cluster_label
from wsi_weakseg.weak.voronoi import voronoi_label

BUDGET_S = {"cluster_label": 3.0, "evaluate_instances": 1.0}


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    root = Path(os.environ.get("WSI_WEAKSEG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    images = sorted((root / "monuseg-train" / "images").glob("*.png"))[: args.n]
    if not images:
        raise SystemExit(f"no MoNuSeg images under {root}; set WSI_WEAKSEG_DATA")
    print(f"load average {os.getloadavg()[0]:.2f}")
    for path in images:
        rgb = imread(path)[..., :3]
        gt = imread(root / "monuseg-train" / "labels" / path.name)
        boxes = [b for b in ndi.find_objects(gt) if b is not None]
        pts = np.array([[(r.start + r.stop - 1) / 2, (c.start + c.stop - 1) / 2] for r, c in boxes])
        pred = np.where(gt == np.unique(gt[gt > 0])[len(boxes) // 2], 0, gt)
        t = {
            "cluster_label": _best(lambda: cluster_label(rgb, pts, mpp=0.25), args.repeat),
            "voronoi_label": _best(lambda: voronoi_label(pts, gt.shape), args.repeat),
            "evaluate_instances": _best(lambda: (evaluate_instances(gt, gt, radius_px=6.0),
                                                 evaluate_instances(pred, gt, radius_px=6.0)), args.repeat) / 2,
        }
        cells = ", ".join(f"{k} {v:.3f} s" + (f" (x{v / BUDGET_S[k]:.2f} of budget)" if k in BUDGET_S else "")
                          for k, v in t.items())
        print(f"{path.stem}: {len(pts)} nuclei, {cells}")


if __name__ == "__main__":
    main()
