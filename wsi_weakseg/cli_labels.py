"""``wsi-weakseg labels SPEC -o DIR``: overlays of the weak labels a recipe trains on, one panel per item.

A points item gets ``<name>.png``: the working-resolution image, then the Voronoi label, the cluster label and
the centre heatmap drawn over it (green = nucleus, red = background, uncoloured = ignored; yellow = centre
heatmap; white crosses = clicks). A scribbles item (``scribbles`` and no ``points``) gets the image and its
rasterised strokes and, with ``--model`` (a scribbles run's folder), the pseudo label of its EMA after the
last epoch (nucleus where ``y_n > tau``, background where ``1 - y_n > tau``). A masks item (drawn nuclei) gets
the image and its labelled target as the few-masks recipe trains on it (green nucleus, red background, untinted
unlabelled) with the annotated region outlined in white; a region-points item gets the image and its point squares
(green in, red out) and, with ``--model`` (a regions run's folder), its CVM target ``u`` after the last epoch
(green ``u > 0.5``, red ``u < 0.5``); an item without labels gets the image alone.
``labels.json`` lists per-item fractions of each class.
"""

from __future__ import annotations

import argparse
import json

from .errors import ConfigError

COLOURS = {0: (230, 40, 40), 1: (40, 200, 60)}  # background red, nucleus green; 2 (ignored) left as is


def add_parser(sub) -> None:
    p = sub.add_parser("labels", help="write overlays of the labels a recipe trains on (points, scribbles, masks)")
    p.add_argument("spec", help="data spec YAML (items: image or slide + QuPath points, scribbles or masks)")
    p.add_argument("-o", "--output", required=True, help="folder for <item>.png panels and labels.json")
    p.add_argument("--config", help="training config whose points.* / data.mpp settings to use (default: packaged)")
    p.add_argument("--split", help="only items of this split (train, validation, test)")
    p.add_argument("--model", help="a scribbles (regions) run's model folder: add its pseudo labels (u > 0.5) to "
                   "scribbles (region-points) items")


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


def scribble_panel(rgb, scribble, pseudo=None):
    """[image | strokes | pseudo label] side by side (the last only when ``pseudo`` is given)."""
    import numpy as np

    tiles = [rgb, _overlay(rgb, scribble, alpha=0.8)] + ([] if pseudo is None else [_overlay(rgb, pseudo)])
    gap = np.full((rgb.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1)


def mask_panel(rgb, target):
    """[image | drawn nuclei] side by side: the target tinted, the annotated region's edge in white."""
    import numpy as np
    from skimage.segmentation import find_boundaries

    tile = _overlay(rgb, target)
    tile[find_boundaries(target != 2, mode="inner") & (target != 2)] = 255
    gap = np.full((rgb.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([rgb, gap, tile], axis=1)


def _masks_row(item, cfg):
    """A masks item's panel on the whole read image (the labelled window pasted back) or an unlabelled one's image."""
    import numpy as np

    from .train.mask_items import read_mask_item

    f = cfg["few_masks"]
    made, row = read_mask_item(item, float(cfg["data"]["mpp"]), int(cfg["data"]["crop"]), float(f["centre_sigma_um"]))
    image = made[-1].image
    if len(made) == 1:
        return image, row
    r0, c0, h, w = row["window"]
    target = np.full(image.shape[:2], 2, np.uint8)
    target[r0 : r0 + h, c0 : c0 + w] = made[0].mask
    row["masks"] = _fractions(target)
    return mask_panel(image, target), row


def _fractions(label) -> dict:
    import numpy as np

    return {cls: float(np.mean(label == v)) for v, cls in enumerate(("background", "nucleus", "ignored"))}


def _points_row(item, cfg):
    import numpy as np

    from .train.dataset import derive_targets, label_params, read_item

    r = read_item(item, float(cfg["data"]["mpp"]))
    t = derive_targets(r.image, r.points_rc, r.annotated, label_params(cfg, r.mpp))
    row = {"name": r.name, "mpp": r.mpp, "shape": list(r.image.shape[:2]), **r.info,
           "voronoi": _fractions(t["voronoi"]), "cluster": _fractions(t["cluster"])}
    row["stain_matrix"] = np.round(t["stain"], 4).tolist()
    return panel(r.image, t, r.points_rc), row


def _pseudo_label(name, shape, pseudo, row):
    """The run's pseudo label of item ``name`` (1 where ``y > tau``, 0 where ``1 - y > tau``, else 2), or None."""
    import numpy as np

    if pseudo is None or name not in pseudo[0]:
        return None
    ema, tau = pseudo[0][name], pseudo[1]
    if ema.shape != shape:
        raise ConfigError(f"{name}: the model's pseudo label is {ema.shape[1]}x{ema.shape[0]} px but the item "
                          f"reads {shape[1]}x{shape[0]}; give the run's own config (--config)")
    label = np.where(ema > tau, 1, np.where(1 - ema > tau, 0, 2)).astype(np.uint8)
    row["pseudo"] = _fractions(label)
    return label


def _scribbles_row(item, cfg, pseudo):
    from .train.scribble_items import read_scribble_item

    it, row = read_scribble_item(item, float(cfg["data"]["mpp"]), float(cfg["scribbles"]["width_um"]))
    row["scribble"] = _fractions(it.scribble)
    return scribble_panel(it.image, it.scribble, _pseudo_label(it.name, it.scribble.shape, pseudo, row)), row


def _regions_row(item, cfg, pseudo):
    """A region-points item: [image | point squares | the run's u > 0.5 (with --model)], as the regions recipe trains."""
    from .train.region_items import build_region_items

    (it,), (row,) = build_region_items([item], cfg)
    row["points"] = _fractions(it.points)
    return scribble_panel(it.image, it.points, _pseudo_label(it.name, it.points.shape, pseudo, row)), row


def run(args: argparse.Namespace) -> int:
    import os
    import tempfile
    from pathlib import Path

    from PIL import Image

    from .errors import OutputError
    from .train.config import load_config
    from .weak.spec import load_spec

    cfg = load_config(args.config)
    spec = load_spec(args.spec)
    # a points config (the default) has no scribbles.* settings: scribbles items then use the packaged ones
    strokes_cfg = cfg if "scribbles" in cfg else None
    pseudo = None
    if args.model:
        from .train.scribbles_recipe import pseudo_from_model

        pseudo = pseudo_from_model(args.model)
    items = spec.split(args.split) if args.split else spec.items
    out = Path(args.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out}: {exc}") from None
    summary = []
    masks_cfg = cfg if "few_masks" in cfg else None
    for item in items:
        if item.masks is not None or item.unlabelled:
            masks_cfg = masks_cfg or load_config(overrides={"recipe": "few-masks", "data": {"mpp": cfg["data"]["mpp"]}})
            image, row = _masks_row(item, masks_cfg)
        elif item.points is None and item.region_points is not None:
            regions_cfg = cfg if "regions" in cfg else load_config(overrides={"recipe": "regions"})
            image, row = _regions_row(item, regions_cfg, pseudo)
        elif item.points is None and item.scribbles is not None:
            strokes_cfg = strokes_cfg or load_config(overrides={"recipe": "scribbles", "data": {"mpp": cfg["data"]["mpp"]}})
            image, row = _scribbles_row(item, strokes_cfg, pseudo)
        else:
            image, row = _points_row(item, cfg)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{row['name']}.", suffix=".png")
        os.close(fd)
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, out / f"{row['name']}.png")
        summary.append(row)
    (out / "labels.json").write_text(json.dumps({"spec": str(spec.path), "items": summary}, indent=2) + "\n")
    print(json.dumps({"items": len(summary), "output": str(out)}))
    return 0
