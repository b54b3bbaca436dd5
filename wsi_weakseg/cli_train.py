"""``wsi-weakseg train``: train a nuclei model from QuPath point clicks, scribbles or a few drawn nuclei, or a tissue
region model from in/out points (``recipe``)."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from QuPath point clicks, scribbles or a few drawn nuclei "
        "(recipe: points | scribbles | few-masks | cks), or tissue regions from in/out points (recipe: regions)",
        description="Train from point clicks (recipe: points, two co-trained ResNet34-UNets; "
        "wsi_weakseg/configs/train-points.yaml), from scribbles (recipe: scribbles, Scribble2Label; "
        "train-scribbles.yaml), from a few drawn nuclei plus unlabelled images (recipe: few-masks, cross-patch "
        "dense contrastive learning with a mean teacher; train-few-masks.yaml) or from point clicks as a "
        "detect-and-segment model (recipe: cks, collaborative knowledge sharing / LACSS: ResNet34-FPN detection + "
        "per-nucleus masks, no watershed; train-cks.yaml), or tissue regions (glands, tumour) from a few points inside "
        "and outside them (recipe: regions, contrast-based variational model; train-regions.yaml), "
        "and write a model folder that `segment --model` loads. "
        "A checkpoint is written every epoch; --resume continues it.",
    )
    p.add_argument("--config", required=True, help="training config YAML (layered over the packaged defaults)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--resume", action="store_true", help="continue from OUT/training/checkpoint.pt")
    p.add_argument("--seed", type=int, help="random seed (overrides the config; deterministic on CPU)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (overrides the config)")
    p.add_argument("--epochs", type=int, help="number of epochs (overrides optim.epochs)")
    p.add_argument("--max-steps", type=int, help="cap optimiser steps per epoch (smoke runs)")
    p.add_argument("--save-items", metavar="NPZ",
                   help="only build the training/validation items (images + weak labels) into NPZ and exit; "
                   "train elsewhere with data.items: NPZ (no slide readers needed there)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .errors import ConfigError
    from .train.config import load_config

    overrides: dict = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.device:
        overrides["device"] = args.device
    if args.epochs is not None:
        overrides["optim"] = {"epochs": args.epochs}
    if args.max_steps is not None and args.max_steps <= 0:
        raise ConfigError(f"--max-steps must be a positive integer, got {args.max_steps}")
    cfg = load_config(args.config, overrides)
    out = Path(args.out)
    if args.save_items:
        if cfg["recipe"] == "regions":
            raise ConfigError("--save-items does not support the regions recipe; train from the data spec")
        from .train.dataset import save_items
        from .train.trainer import load_data

        train_items, val_items, _ = load_data(cfg, out / "training")
        path = save_items(Path(args.save_items), train_items, val_items)
        print(json.dumps({"items": str(path), "train": len(train_items), "validation": len(val_items)}))
        return 0
    from .train.trainer import train

    result = train(cfg, out, resume=args.resume, max_steps=args.max_steps,
                   progress=not args.no_progress and sys.stderr.isatty())
    print(json.dumps({"model": str(result.model_dir), "shipped": result.best,
                      "validation": (result.metrics or {}).get("mean")}))
    return 0
