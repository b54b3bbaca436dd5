#!/usr/bin/env python
"""Training throughput of the points recipe at 256² beside two plain forward+backward passes of the same nets.

The script

1. builds ``--items`` synthetic H&E items (:func:`wsi_weakseg.demo.synthetic_he`, default 4 of 512x512 at
   0.5 µm/px). Their points are the centroids of the connected dark (nucleus-coloured) components, i.e. the
   synthetic nuclei centres up to touching nuclei merging into one. The Voronoi, cluster and centre targets
   come from the real label code, :func:`wsi_weakseg.train.dataset.derive_targets` (Macenko stain matrix,
   :func:`~wsi_weakseg.weak.voronoi_label`, :func:`~wsi_weakseg.weak.cluster_label`,
   :func:`~wsi_weakseg.weak.centre_heatmap`), timed per item: training caches these labels, so this is a
   once-per-item cost, reported apart;
2. builds a :class:`~wsi_weakseg.train.points_recipe.PointsRecipe` (nets ``a``/``b`` + colorizers) with crop 256
   and ``--batch-size`` patches per half, makes EMA pseudo labels (``refresh_pseudo_labels``, timed: it runs
   every ``gamma`` epochs in training) and picks the middle epoch, where both the co-training weight alpha and
   the colorization weight beta are > 0, so every loss term is active;
3. times ``--steps`` steps after ``--warmup`` untimed ones, wall and process CPU seconds (user+sys, all
   threads), a recipe step and a plain step alternating so that both see the same background load on a shared
   machine (the CPU-seconds ratio is the steadier figure there):

   (a) **recipe**: the training loop's body, batch building (``loop._batch``: sampling + augmentation of both
       halves) plus ``recipe.step`` (all losses, one backward, Adam), also split into those two parts;
   (b) **batch building** alone (``loop._batch`` for both halves);
   (c) **plain**: the same two nets (fresh ``ResNet34UNet(out_channels=2)`` of the same width), the same number
       of images per net, already-normalised random input tensors, one BCE-with-logits loss per net on a random
       binary target, one backward of the sum, one Adam step: no labels, no loader, no extra losses;

4. prints a table (images/s = 2 x batch size per step, both halves / both nets) and the recipe / plain ratios,
   and with ``--json [PATH]`` gives every number as JSON (stdout without PATH).

``torch.set_flush_denormal(True)`` is set as in :func:`wsi_weakseg.train.loop.run`: denormal floats (tiny
gradients and Adam moments) made CPU backward passes orders of magnitude slower in an earlier run.

Keep ``--width`` at 8 or more: with width 4 oneDNN in the torch CPU build used here corrupts the heap in the
backward-weights pass of 1x1 convolutions with 4 channels.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from torch.nn import functional as F

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.model.resnet_unet import ResNet34UNet
from wsi_weakseg.train.augment import AugmentParams
from wsi_weakseg.train.config import load_config
from wsi_weakseg.train.dataset import TrainItem, derive_targets, label_params
from wsi_weakseg.train.loop import _batch
from wsi_weakseg.train.losses import ramp_weights
from wsi_weakseg.train.points_recipe import PointsRecipe

from segment_throughput import cpu_description  # noqa: E402 - sibling script, same folder

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CROP = 256
MPP = 0.5


def synthetic_points(rgb: np.ndarray) -> np.ndarray:
    """Pixel-centre (row, col) centroids of the dark connected components (the synthetic nuclei)."""
    dark = rgb.mean(axis=2) < 150
    lab, n = ndi.label(dark)
    if n == 0:
        return np.empty((0, 2))
    return np.asarray(ndi.center_of_mass(dark, lab, range(1, n + 1)), np.float64).reshape(-1, 2)


def build_items(cfg: dict, n: int, size: int) -> tuple[list[TrainItem], list[float], list[int]]:
    """Synthetic items with real weak labels; also the label seconds and point count of each item."""
    items, seconds, points = [], [], []
    params = label_params(cfg, MPP)
    for seed in range(n):
        rgb, _ = synthetic_he(size=(size, size), mpp=MPP, seed=seed)
        rc = synthetic_points(rgb)
        annotated = np.ones(rgb.shape[:2], np.uint8)
        t0 = time.perf_counter()
        t = derive_targets(rgb, rc, annotated, params)
        seconds.append(time.perf_counter() - t0)
        points.append(len(rc))
        items.append(TrainItem(f"synthetic{seed}", rgb, t["voronoi"], t["cluster"], t["centre"], annotated))
    return items, seconds, points


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """Wall and process-CPU seconds (user+sys, all threads) of one call of ``fn``."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=64, help="ResNet34-UNet base width (default 64, the real ResNet34; >= 8)")
    p.add_argument("--batch-size", type=int, default=4, help="patches per half per step (default 4: 8 images a step)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before each measurement (default 1)")
    p.add_argument("--items", type=int, default=4, help="synthetic items, split into the two halves (default 4)")
    p.add_argument("--item-size", type=int, default=512, help="side of each synthetic item in px (default 512)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="also give all numbers as JSON: to PATH, or to stdout when no PATH is given")
    args = p.parse_args()
    if args.width < 8:
        p.error("--width must be >= 8 (width 4 corrupts the heap in oneDNN's 1x1 backward-weights on CPU)")
    if args.items < 2 or args.steps < 1 or args.batch_size < 1 or args.item_size < CROP:
        p.error(f"need --items >= 2, --steps >= 1, --batch-size >= 1, --item-size >= {CROP}")

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as loop.run does: denormals slow CPU backward by orders of magnitude
    torch.manual_seed(args.seed)
    bs = args.batch_size
    cfg = load_config(overrides={
        "seed": args.seed, "model": {"width": args.width}, "data": {"patch": CROP, "crop": CROP},
        "optim": {"batch_size": bs},
    })
    epochs = int(cfg["optim"]["epochs"])
    epoch = epochs // 2
    alpha, beta = ramp_weights(epoch, epochs, cfg["points"]["eta"], cfg["points"]["epsilon"])
    assert alpha > 0 and beta > 0, (alpha, beta)

    print(f"machine   {cpu_description()}, torch {torch.__version__}, device {device}, "
          f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.2f}")
    print(f"setup     width {args.width}, crop {CROP}, batch {bs} per half ({2 * bs} images/step), "
          f"{args.items} items of {args.item_size}², epoch {epoch}/{epochs} (alpha {alpha:.3f}, beta {beta:.3f}), "
          f"{args.warmup} warm-up + {args.steps} timed steps")

    items, label_s, n_points = build_items(cfg, args.items, args.item_size)
    recipe = PointsRecipe(cfg, items, NORM, device)
    recipe.train(True)
    sync(device)
    t0 = time.perf_counter()
    recipe.refresh_pseudo_labels()
    sync(device)
    pseudo_s = time.perf_counter() - t0
    recipe.train(True)  # refresh_pseudo_labels restores each net's mode; keep them training

    rng = np.random.default_rng(args.seed)
    aug = AugmentParams.from_config(cfg["augment"])

    def batches() -> dict:
        return {k: _batch(rng, recipe, rng.choice(idx, size=bs), CROP, aug) for k, idx in recipe.halves.items()}

    check = batches()
    assert all("pseudo" in b for b in check.values()), "pseudo labels missing from the batches"
    split: dict[str, list[float]] = {"build": [], "step": []}
    terms: set[str] = set()

    def recipe_step() -> None:
        t0 = time.perf_counter()
        b = batches()
        t1 = time.perf_counter()
        logs = recipe.step(b, epoch)
        sync(device)
        split["build"].append(t1 - t0)
        split["step"].append(time.perf_counter() - t1)
        terms.update(logs)

    # Plain: the same nets and images per step, no labels/loader/extra losses.
    plain = {k: ResNet34UNet(out_channels=2, width=args.width).to(device).train() for k in ("a", "b")}
    opt = torch.optim.Adam([q for net in plain.values() for q in net.parameters()],
                           lr=cfg["optim"]["lr"], weight_decay=cfg["optim"]["weight_decay"])
    x = {k: torch.randn(bs, 3, CROP, CROP, device=device) for k in plain}
    y = {k: (torch.rand(bs, 2, CROP, CROP, device=device) > 0.5).float() for k in plain}

    def plain_step() -> None:
        loss = sum(F.binary_cross_entropy_with_logits(plain[k](x[k]), y[k]) for k in plain)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # Recipe and plain steps alternate, so that both see the same background load on a shared machine.
    wall: dict[str, list[float]] = {"recipe": [], "plain": [], "build": []}
    cpu: dict[str, list[float]] = {"recipe": [], "plain": [], "build": []}
    for i in range(args.warmup + args.steps):
        for name, fn in (("recipe", recipe_step), ("plain", plain_step)):
            w, c = timed(fn, device)
            if i >= args.warmup:
                wall[name].append(w)
                cpu[name].append(c)
    missing = {f"{h}/{t}" for h in "ab" for t in ("voronoi", "cluster", "centre", "cotrain", "color")} - terms
    assert not missing, f"loss terms not active: {sorted(missing)}"
    build_in, step_in = split["build"][args.warmup:], split["step"][args.warmup:]
    batches()  # warm-up
    for _ in range(max(args.steps, 5)):
        w, c = timed(batches, device)
        wall["build"].append(w)
        cpu["build"].append(c)
    recipe_s, plain_s, build_s = wall["recipe"], wall["plain"], wall["build"]

    images = 2 * bs
    med = lambda v: float(np.median(v))  # noqa: E731
    r = {"recipe": med(recipe_s), "recipe_build": med(build_in), "recipe_step": med(step_in),
         "build": med(build_s), "plain": med(plain_s)}
    ips = {k: images / v for k, v in r.items()}
    report = {
        "machine": cpu_description(), "torch": torch.__version__, "device": str(device),
        "threads": torch.get_num_threads(), "flush_denormal": True,
        "width": args.width, "crop": CROP, "batch_per_half": bs, "images_per_step": images,
        "items": args.items, "item_size": args.item_size, "epoch": epoch, "epochs": epochs,
        "alpha": alpha, "beta": beta, "warmup": args.warmup, "steps": args.steps,
        "label_seconds_per_item": label_s, "points_per_item": n_points,
        "pseudo_refresh_seconds": pseudo_s,
        "seconds_per_step": {"recipe": recipe_s, "recipe_build": build_in, "recipe_step": step_in,
                             "build": build_s, "plain": plain_s},
        "median_seconds_per_step": r,
        "cpu_seconds_per_step": cpu,
        "median_cpu_seconds_per_step": {k: med(v) for k, v in cpu.items()},
        "ratio_cpu_recipe_over_plain": med(cpu["plain"]) / med(cpu["recipe"]),
        "images_per_second": ips,
        "ratio_recipe_over_plain": ips["recipe"] / ips["plain"],
        "ratio_recipe_step_only_over_plain": ips["recipe_step"] / ips["plain"],
        "batch_build_share_of_recipe": r["recipe_build"] / r["recipe"],
        "load_average_end": os.getloadavg()[0],
    }
    mp = args.item_size**2 / 1e6
    print(f"labels    {np.mean(label_s):.3f} s per {args.item_size}² item ({np.mean(label_s) / mp:.2f} s/Mpx, "
          f"{np.mean(n_points):.0f} points), once per item (cached)")
    print(f"pseudo    {pseudo_s:.2f} s to refresh the EMA pseudo labels of {args.items} items (every gamma epochs)")
    print()
    print(f"{'measurement':44s} {'s/step':>8s} {'CPU s':>7s} {'images/s':>9s} {'vs plain':>9s}")
    rows = [("(a) recipe: batch building + step", "recipe"),
            ("      of which batch building", "recipe_build"),
            ("      of which recipe.step (losses+bwd+Adam)", "recipe_step"),
            ("(b) batch building alone (both halves)", "build"),
            ("(c) plain fwd+bwd+Adam, nets a and b", "plain")]
    for label, k in rows:
        c = f"{med(cpu[k]):7.2f}" if k in cpu else f"{'-':>7s}"
        print(f"{label:44s} {r[k]:8.3f} {c} {ips[k]:9.2f} {ips[k] / ips['plain']:9.3f}")
    print()
    print(f"ratio recipe / plain (CPU s)      {report['ratio_cpu_recipe_over_plain']:.3f}  "
          f"(plain CPU s per step / recipe CPU s per step)")
    print(f"ratio recipe / plain (images/s)   {report['ratio_recipe_over_plain']:.3f}  "
          f"(overhead of labels, loaders and extra losses: {r['recipe'] / r['plain'] - 1:+.1%} time per step)")
    print(f"load average at the end           {report['load_average_end']:.2f}")
    if args.json == "-":
        print(json.dumps(report, indent=2, ensure_ascii=False))
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
