#!/usr/bin/env python
"""Inference and instance-stage throughput of the detect-segment model type against the U-Net (issue 17).

The script

1. tiles the first ``grid x grid`` MoNuSeg training images into a mosaic (``segment_throughput.build_mosaic``)
   and box-resamples it to 0.5 µm/px;
2. builds both model types at the same ``--width``: a ResNet34-UNet (``dense-maps``) and a LACSS principal
   (``detect-segment``, ResNet34 + FPN, window ``--window-um``), each fitted ``--fit-steps`` steps on MoNuSeg
   masks of images outside the mosaic (``model.fit.fit_dense`` / ``train.cks_fit.fit_detect_segment``) so
   their maps, detections and masks look like nuclei, with thresholds calibrated on their own maps (the
   detect-segment model's detection threshold so that it keeps ~1 detection per 110 µm², MoNuSeg's density:
   its decoding cost grows with the detections);
3. **inference**: reads every tile (``--tile-size``, each card's context: the U-Net's ``--context``, the
   detect-segment model's ``--context`` + window reach + radius rounded up to 32, as its card would hold) into
   memory, warms up on one batch, then times ``Predictor.__call__`` over all batches; for detect-segment also the
   network forward alone, so the decoding (detections, masks, per-pixel owner) is the difference;
4. **instance stage**: times :func:`~wsi_weakseg.engine.instances.label_image` on each model's maps (markers +
   geodesic split vs following the anchor offsets; the same clean-up).

Throughput is working Mpx per wall second at ``--threads`` torch threads (numba kernels: set
``NUMBA_NUM_THREADS``). ``--json`` saves the numbers. Data: ``$WSI_WEAKSEG_DATA`` or ``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from segment_throughput import build_mosaic, cpu_description, data_root


def _fit_images(grid: int, n: int = 2) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """MoNuSeg images after the mosaic's, at ~0.5 µm/px, with their label maps (to fit on)."""
    from PIL import Image

    files = sorted((data_root() / "monuseg-train" / "images").glob("*.png"))[grid * grid : grid * grid + n]
    images = [np.asarray(Image.open(p).convert("RGB"))[::2, ::2].copy() for p in files]
    labels = [np.asarray(Image.open(p.parent.parent / "labels" / p.name))[::2, ::2].astype(np.int32) for p in files]
    return images, labels


def build_models(args, images, labels, calib: np.ndarray):
    """The two models, fitted and calibrated (see the module docstring)."""
    import torch

    from wsi_weakseg.engine.anchored import anchored_params
    from wsi_weakseg.engine.inference import Predictor, predict_image
    from wsi_weakseg.model.card import ModelCard, build_net
    from wsi_weakseg.model.fit import fit_dense
    from wsi_weakseg.train.cks_fit import fit_detect_segment
    from wsi_weakseg.weak import centre_heatmap, label_centroids

    torch.manual_seed(args.seed)
    unet = ModelCard(name="bench-unet", architecture="resnet34-unet", mpp=0.5, arch_kwargs={"width": args.width},
                     tile_size=args.tile_size, context_px=args.context, trained=False)
    targets = [np.stack([(lab > 0).astype(np.float32), centre_heatmap(label_centroids(lab), lab.shape, 2.0)])
               for lab in labels]
    unet_net = fit_dense(build_net(unet), images, targets, unet.normalization, steps=args.fit_steps, seed=args.seed)
    maps = predict_image(Predictor(unet_net, unet, "cpu"), calib[:512, :512], args.context)
    unet.thresholds["foreground"] = float(np.percentile(maps[0], 65)) / 255.0
    unet.thresholds["centre"] = 0.5 * float(np.percentile(maps[1], 99.5)) / 255.0

    ds = ModelCard(name="bench-ds", architecture="lacss", model_type="detect-segment", window_um=args.window_um,
                   mpp=0.5, arch_kwargs={"width": args.width}, tile_size=args.tile_size, trained=False)
    ds_net = fit_detect_segment(build_net(ds), images, labels, ds.normalization, ds.window_px(), steps=args.fit_steps,
                                seed=args.seed)
    ds.thresholds["centre"], ds.training = _density_threshold(ds, ds_net, calib, per_um2=1 / 110.0)
    params = anchored_params(ds, 0.5)
    extra = params.reach + int(np.ceil(ds.thresholds["peak_radius_um"] / 0.5))
    ds.context_px = -(-(args.context + extra) // 32) * 32
    return (unet, unet_net), (ds, ds_net)


def _density_threshold(card, net, calib: np.ndarray, per_um2: float) -> tuple[float, dict]:
    """The detection threshold whose kept detections on ``calib`` come closest to ``per_um2`` (MoNuSeg's ~1/110),
    and how many it keeps there (recorded in the card's ``training`` field, which nothing else reads here)."""
    import torch

    from wsi_weakseg.engine.anchored import detect
    from wsi_weakseg.engine.inference import Predictor

    predictor = Predictor(net, card, "cpu")
    x = torch.from_numpy(np.ascontiguousarray(calib[None])).permute(0, 3, 1, 2).float().div_(255.0)
    with torch.inference_mode():
        out = predictor._raw((x - predictor.mean) / predictor.std)
    target = calib.shape[0] * calib.shape[1] * card.mpp**2 * per_um2
    probs = torch.sigmoid(out.detections[0][0, 0]).flatten().numpy()
    best = None
    for q in np.linspace(50.0, 99.9, 60):
        thr = float(np.percentile(probs, q))
        n = len(detect(out, net.det_strides, 0, thr, card.thresholds["peak_radius_um"] / card.mpp, calib.shape[:2]).anchors)
        if best is None or abs(n - target) < best[0]:
            best = (abs(n - target), thr, n)
    return best[1], {"detections_on_the_mosaic": best[2], "target": round(target)}


def time_inference(card, net, rgb: np.ndarray, batch_size: int) -> dict:
    """Wall seconds of ``Predictor`` over every tile (and of the bare forward pass, for detect-segment)."""
    import torch

    from wsi_weakseg.engine.inference import Predictor, read_tile, tile_origins

    predictor = Predictor(net, card, "cpu")
    shape, tile, ctx = rgb.shape[:2], card.tile_size, card.context_px

    def read(y, x, h, w):
        return rgb[y : y + h, x : x + w]

    tiles = [read_tile(read, shape, y, x, tile, ctx) for y, x in tile_origins(shape, tile)]
    batches = [np.stack(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)]
    predictor(batches[0], crop=ctx)  # warm-up
    t = time.perf_counter()
    maps = [predictor(b, crop=ctx) for b in batches]
    total = time.perf_counter() - t
    out = {"tiles": len(tiles), "context_px": ctx, "wall_s": total}
    if predictor.decoder is not None:
        t = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                x = torch.from_numpy(b).permute(0, 3, 1, 2).float().div_(255.0)
                predictor._raw((x - predictor.mean) / predictor.std)
        out["forward_wall_s"] = time.perf_counter() - t
        out["decode_wall_s"] = total - out["forward_wall_s"]
    full = np.zeros((maps[0].shape[1], *shape), np.uint8)
    for (y, x), m in zip(tile_origins(shape, tile), (m for ms in maps for m in ms)):
        hh, ww = min(tile, shape[0] - y), min(tile, shape[1] - x)
        full[:, y : y + hh, x : x + ww] = m[:, :hh, :ww]
    return out | {"maps": full}


def time_instances(card, maps: np.ndarray, repeat: int) -> dict:
    from wsi_weakseg.engine.instances import label_image, params_from_card

    params = params_from_card(card, card.mpp)
    label_image(maps[:, :256, :256], params)  # compile / warm the kernels
    walls = []
    for _ in range(repeat):
        t = time.perf_counter()
        labels = label_image(maps, params)
        walls.append(time.perf_counter() - t)
    return {"wall_s": min(walls), "nuclei": int(labels.max())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", type=int, default=2, help="mosaic of grid x grid MoNuSeg images (default 2: 1 Mpx)")
    p.add_argument("--width", type=int, default=32, help="encoder width of both models (64 = ResNet34)")
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--context", type=int, default=96, help="U-Net context; detect-segment adds its reach")
    p.add_argument("--window-um", type=float, default=24.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fit-steps", type=int, default=40)
    p.add_argument("--repeat", type=int, default=2, help="instance stage: best of N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)

    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    rgb = build_mosaic(args.grid)
    side = rgb.shape[0] // 2
    rgb = np.asarray(Image.fromarray(rgb).resize((side, side), Image.Resampling.BOX))
    mpx = rgb.shape[0] * rgb.shape[1] / 1e6
    images, labels = _fit_images(args.grid)
    t = time.perf_counter()
    models = build_models(args, images, labels, rgb[: rgb.shape[0] // 32 * 32, : rgb.shape[1] // 32 * 32])
    report = {"cpu": cpu_description(), "threads": args.threads, "working_mpx": mpx, "width": args.width,
              "tile_size": args.tile_size, "fit_s": round(time.perf_counter() - t, 1), "models": {}}
    for card, net in models:
        inf = time_inference(card, net, rgb, args.batch_size)
        inst = time_instances(card, inf.pop("maps"), args.repeat)
        row = {"model_type": card.model_type, "calibration": card.training, "inference": inf, "instances": inst,
               "inference_mpx_s": mpx / inf["wall_s"], "instances_mpx_s": mpx / inst["wall_s"]}
        if "forward_wall_s" in inf:
            row["forward_mpx_s"] = mpx / inf["forward_wall_s"]
        report["models"][card.name] = row
        print(json.dumps({card.name: row}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
