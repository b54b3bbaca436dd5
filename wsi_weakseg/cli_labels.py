"""``wsi-weakseg labels SPEC -o DIR``: overlays of what the points recipe believes, one panel per item.

Each item gets ``<name>.png``: the working-resolution image, then the Voronoi label, the cluster label and
the centre heatmap drawn over it (green = nucleus, red = background, uncoloured = ignored; yellow = centre
heatmap; white crosses = clicks). ``labels.json`` lists per-item fractions of each class.
"""

from __future__ import annotations

import argparse
import json

COLOURS = {0: (230, 40, 40), 1: (40, 200, 60)}  # background red, nucleus green; 2 (ignored) left as is


def add_parser(sub) -> None:
    p = sub.add_parser("labels", help="write overlays of the weak labels derived from a data spec's points")
    p.add_argument("spec", help="data spec YAML (items: image or slide + QuPath points)")
    p.add_argument("-o", "--output", required=True, help="folder for <item>.png panels and labels.json")
    p.add_argument("--config", help="training config whose points.* / data.mpp settings to use (default: packaged)")
    p.add_argument("--split", help="only items of this split (train, validation, test)")


def _overlay(rgb, label, alpha: float = 0.45):
    import numpy as np

    out = rgb.astype(np.float32).copy()
    for value, colour in COLOURS.items():
        m = label == value
        out[m] = (1 - alpha) * out[m] + alpha * np.array(colour, np.float32)
    return out.astype(np.uint8)


def panel(rgb, targets, points_rc):
    """[image | Voronoi | cluster | centre] side by side, clicks marked on every tile."""
    import numpy as np

    heat = targets["centre"][..., None]
    centre = (rgb * (1 - 0.6 * heat) + 0.6 * heat * np.array([250, 220, 30])).astype(np.uint8)
    tiles = [rgb.copy(), _overlay(rgb, targets["voronoi"]), _overlay(rgb, targets["cluster"]), centre]
    h, w = rgb.shape[:2]
    pts = np.rint(points_rc).astype(int)
    pts = pts[(pts[:, 0] >= 0) & (pts[:, 0] < h) & (pts[:, 1] >= 0) & (pts[:, 1] < w)]
    for t in tiles:
        for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
            t[np.clip(pts[:, 0] + dy, 0, h - 1), np.clip(pts[:, 1] + dx, 0, w - 1)] = 255
    gap = np.full((h, 4, 3), 255, np.uint8)
    return np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1)


def run(args: argparse.Namespace) -> int:
    import os
    import tempfile
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from .errors import OutputError
    from .train.config import load_config
    from .train.dataset import derive_targets, label_params, read_item
    from .weak.spec import load_spec

    cfg = load_config(args.config)
    spec = load_spec(args.spec)
    items = spec.split(args.split) if args.split else spec.items
    out = Path(args.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out}: {exc}") from None
    summary = []
    for item in items:
        r = read_item(item, float(cfg["data"]["mpp"]))
        t = derive_targets(r.image, r.points_rc, r.annotated, label_params(cfg, r.mpp))
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{r.name}.", suffix=".png")
        os.close(fd)
        Image.fromarray(panel(r.image, t, r.points_rc)).save(tmp, format="PNG")
        os.replace(tmp, out / f"{r.name}.png")
        row = {"name": r.name, "mpp": r.mpp, "shape": list(r.image.shape[:2]), **r.info}
        for key in ("voronoi", "cluster"):
            row[key] = {cls: float(np.mean(t[key] == v)) for v, cls in enumerate(("background", "nucleus", "ignored"))}
        row["stain_matrix"] = np.round(t["stain"], 4).tolist()
        summary.append(row)
    (out / "labels.json").write_text(json.dumps({"spec": str(spec.path), "items": summary}, indent=2) + "\n")
    print(json.dumps({"items": len(summary), "output": str(out)}))
    return 0
