#!/usr/bin/env python
"""Training step cost of the few-masks recipe (issue 16) beside a plain supervised step of the same width.

The script builds ``--items`` synthetic H&E items (:func:`wsi_weakseg.demo.synthetic_he`, 512² at 0.5 µm/px;
nuclei = the dark connected components, drawn in the left half of each image) as labelled windows plus the
whole images as unlabelled data (:class:`~wsi_weakseg.train.mask_items.MaskItem`), then times, alternating so
that all see the same background load, wall and process-CPU seconds of:

(a) **few-masks**: batch building (``loop._batch``, both groups) + ``FewMasksRecipe.step`` with the
    unsupervised branch on: student on ``--batch-size`` labelled + ``--batch-size`` strongly augmented unlabelled
    crops, teacher on the weak unlabelled crops, projector, L_sup + centre + L_contr + L_cons + L_ent, backward,
    Adam, EMA update of the teacher;
(b) **few-masks without the contrast**: (a) with :func:`~wsi_weakseg.train.contrast.cross_patch_loss` replaced by
    a zero, so (a) - (b) is the contrastive branch's own cost (banks, similarities, their backward), capped as
    the config caps it or, with ``--uncapped``, over every pixel as the paper;
(c) **SupOnly**: the recipe's step before ``unsup_from_epoch`` (labelled batch only, centre head, EMA update);
(d) **plain**: a fresh ``ResNet34UNet(out_channels=2)`` of the same width on ``--batch-size`` random
    normalised inputs, BCE on a random binary target, backward, Adam: no labels, no loader, no teacher.

Before timing, ``--pretrain-steps`` supervised steps at lr 1e-3 make the nets call some pixels nucleus, so the
banks hold both kinds of patch as in training (their sizes are printed: the uncapped cost grows with them). It
prints a table and the ratios to (d); ``--json [PATH]`` gives every number as JSON.
``torch.set_flush_denormal(True)`` is set as the training loop sets it. Keep ``--width`` >= 8 (see
``train_throughput.py``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from torch.nn import functional as F

import wsi_weakseg.train.few_masks_recipe as recipe_module
from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.model.resnet_unet import ResNet34UNet
from wsi_weakseg.train.augment import AugmentParams
from wsi_weakseg.train.config import load_config
from wsi_weakseg.train.few_masks_recipe import FewMasksRecipe
from wsi_weakseg.train.loop import _batch
from wsi_weakseg.train.mask_items import MaskItem
from wsi_weakseg.weak.centres import centre_heatmap, label_centroids
from wsi_weakseg.weak.masks import mask_target

from segment_throughput import cpu_description  # noqa: E402 - sibling scripts, same folder
from train_throughput import timed  # noqa: E402

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
MPP = 0.5


def build_items(n: int, size: int) -> list[MaskItem]:
    """Labelled windows (left halves, drawn nuclei = dark components) and the whole images, unlabelled."""
    items = []
    for seed in range(n):
        rgb, _ = synthetic_he(size=(size, size), mpp=MPP, seed=seed)
        labels, _ = ndi.label(rgb.mean(axis=2) < 150)
        known = np.zeros(labels.shape, np.uint8)
        known[:, : size // 2] = 1
        centre = centre_heatmap(label_centroids(labels), labels.shape, sigma=2.0 / MPP)
        items += [MaskItem(f"s{seed}", rgb, mask_target(labels, known), centre, known), MaskItem(f"s{seed}", rgb)]
    return items


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=32, help="ResNet34-UNet base width (default 32, the evaluation's)")
    p.add_argument("--batch-size", type=int, default=8, help="crops per group per step (default 8, the paper's)")
    p.add_argument("--crop", type=int, default=224, help="training crop (default 224)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones (default 1)")
    p.add_argument("--items", type=int, default=4, help="synthetic images (default 4)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--pretrain-steps", type=int, default=20,
                   help="untimed supervised steps at lr 1e-3 first, so that student and teacher call some pixels "
                   "nucleus and the banks hold both kinds of patch, as in training (default 20)")
    p.add_argument("--uncapped", action="store_true",
                   help="contrast every FDP/BDP pixel against every bank pixel, as the paper (max_query_patches and "
                   "max_negatives null)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH")
    args = p.parse_args()
    if args.width < 8:
        p.error("--width must be >= 8 (width 4 corrupts the heap in oneDNN's 1x1 backward-weights on CPU)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    device, bs = torch.device("cpu"), args.batch_size
    caps = {"max_query_patches": None, "max_negatives": None} if args.uncapped else {}
    cfg = load_config(overrides={"recipe": "few-masks", "seed": args.seed, "model": {"width": args.width},
                                 "data": {"patch": args.crop, "crop": args.crop}, "optim": {"batch_size": bs},
                                 "few_masks": caps})
    unsup_epoch = int(cfg["few_masks"]["unsup_from_epoch"]) + int(cfg["few_masks"]["consistency_ramp_epochs"])
    recipe = FewMasksRecipe(cfg, build_items(args.items, 512), NORM, device)
    recipe.train(True)
    rng = np.random.default_rng(args.seed)
    aug = AugmentParams.from_config(cfg["augment"])
    terms: dict[str, set] = {}
    real_contrast = recipe_module.cross_patch_loss

    def recipe_step(name: str, epoch: int, contrast: bool) -> None:
        recipe_module.cross_patch_loss = real_contrast if contrast else (lambda zs, *a, **k: zs.sum() * 0.0)
        batches = {k: _batch(rng, recipe, rng.choice(idx, size=bs), args.crop, aug) for k, idx in recipe.halves.items()}
        terms.setdefault(name, set()).update(recipe.step(batches, epoch))

    for group in recipe.optimizer.param_groups:
        group["lr"] = 1e-3
    for _ in range(args.pretrain_steps):
        recipe_step("pretrain", 0, True)
    for group in recipe.optimizer.param_groups:
        group["lr"] = cfg["optim"]["lr"]
    bank_px: list[tuple[int, int]] = []

    plain = ResNet34UNet(out_channels=2, width=args.width).train()
    opt = torch.optim.Adam(plain.parameters(), lr=cfg["optim"]["lr"], weight_decay=cfg["optim"]["weight_decay"])
    x = torch.randn(bs, 3, args.crop, args.crop)
    y = (torch.rand(bs, 2, args.crop, args.crop) > 0.5).float()

    def plain_step() -> None:
        loss = F.binary_cross_entropy_with_logits(plain(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def contrast_step() -> None:
        recipe_step("few_masks", unsup_epoch, True)
        bank_px.append((len(recipe.banks.foreground()[1]), len(recipe.banks.background()[1])))

    runs = {"few_masks": contrast_step,
            "no_contrast": lambda: recipe_step("no_contrast", unsup_epoch, False),
            "suponly": lambda: recipe_step("suponly", 0, True),
            "plain": plain_step}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    print(f"machine   {cpu_description()}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"setup     width {args.width}, crop {args.crop}, batch {bs} labelled + {bs} unlabelled, "
          f"{args.warmup} warm-up + {args.steps} timed steps each")
    for i in range(args.warmup + args.steps):
        for name, fn in runs.items():
            w, c = timed(fn, device)
            if i >= args.warmup:
                wall[name].append(w)
                cpu[name].append(c)
    recipe_module.cross_patch_loss = real_contrast
    assert "student/contrast" in terms["few_masks"] and "student/contrast" not in terms["suponly"]
    med = {k: float(np.median(v)) for k, v in wall.items()}
    med_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
    print()
    print(f"{'measurement':52s} {'s/step':>8s} {'CPU s':>7s} {'x plain':>8s}")
    labels = {"few_masks": "(a) few-masks step, unsupervised branch on",
              "no_contrast": "(b) (a) without the contrastive loss",
              "suponly": "(c) SupOnly step (labelled batch only)",
              "plain": "(d) plain supervised fwd+bwd+Adam, same width"}
    for k, label in labels.items():
        print(f"{label:52s} {med[k]:8.3f} {med_cpu[k]:7.2f} {med[k] / med['plain']:8.2f}")
    fg_px, bg_px = np.median(np.array(bank_px), axis=0)
    print(f"\nbanks (teacher pixels of FDPs / BDPs, current + previous batch): median {fg_px:.0f} / {bg_px:.0f}")
    contrast_share = (med_cpu["few_masks"] - med_cpu["no_contrast"]) / med_cpu["few_masks"]
    print(f"contrastive branch: {med_cpu['few_masks'] - med_cpu['no_contrast']:+.3f} CPU s per step "
          f"({contrast_share:.0%} of (a)); CPU seconds are the steadier figure on a shared machine")
    report = {"machine": cpu_description(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "width": args.width, "crop": args.crop, "batch_per_group": bs, "steps": args.steps,
              "max_query_patches": cfg["few_masks"]["max_query_patches"], "max_negatives": cfg["few_masks"]["max_negatives"],
              "seconds_per_step": wall, "cpu_seconds_per_step": cpu, "median_seconds_per_step": med,
              "median_cpu_seconds_per_step": med_cpu,
              "ratio_over_plain": {k: med[k] / med["plain"] for k in med},
              "ratio_cpu_over_plain": {k: med_cpu[k] / med_cpu["plain"] for k in med_cpu},
              "contrast_share_of_step": contrast_share, "bank_pixels_fg_bg": bank_px,
              "pretrain_steps": args.pretrain_steps, "uncapped": args.uncapped, "load_average_end": os.getloadavg()[0]}
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
