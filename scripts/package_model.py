#!/usr/bin/env python
"""Package a trained model folder as a packaged model: candidate nets, thresholds, fp16 weights, card, metrics.

Everything is chosen on the validation split of the training config's data spec, never on anything else:

1. candidates: the net ``wsi-weakseg train`` shipped (best single (net, epoch) by validation AJI at the
   default thresholds) and, from ``--epochs-dir`` (both nets of every epoch, ``e<NN>.pt`` =
   ``{"epoch", "nets": {"a", "b"}}``), chosen single epochs (``--single 13b``) and weights averaged over a
   span of epochs (``--swa a:5-13``; batch-norm statistics averaged too); each is scored with its own best
   foreground/centre thresholds on a small grid, and the best one is kept, its context re-measured;
2. the best candidate's post-processing thresholds are tuned coordinate-wise on two grids (foreground x
   centre, then minimum area x peak radius; the current values always in them) for ``--tune-metric`` (default: the mean of the AJI on the
   items with label maps and the detection F1 on the points-only items, so both datasets count);
3. it is written with float16 weights into ``--out`` with the card's name, description, licence, thresholds,
   training summary (data sources relative to the data root) and validation metrics of the written weights:
   at the working pixel size (as in training) and, through ``wsi-weakseg evaluate``'s model mode, at each
   image's own resolution — MoNuSeg AJI/Dice_obj/PQ, CRC detection F1 within 6 px at 20x.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np
import torch

from wsi_weakseg.evaluate import evaluate_model
from wsi_weakseg.model.card import export_model, load_model
from wsi_weakseg.train.checkpoint import load_checkpoint
from wsi_weakseg.train.config import load_config
from wsi_weakseg.train.dataset import build_eval_items
from wsi_weakseg.train.tune import tune_thresholds
from wsi_weakseg.train.validate import validate
from wsi_weakseg.weak.spec import load_spec

log = logging.getLogger("package_model")
REPO = Path(__file__).resolve().parents[1]

LICENSE = (
    "CC BY-NC-SA 4.0: trained on MoNuSeg (CC BY-NC-SA 4.0) and CRCHistoPhenotypes (research use) point "
    "annotations, so the weights are for non-commercial research use only, shared alike"
)


def averaged(files: list[Path], net: str) -> dict[str, torch.Tensor]:
    """Mean of one net's state over several epochs (integer buffers from the last epoch)."""
    states = [load_checkpoint(f)["nets"][net] for f in files]
    out = {}
    for k, v in states[-1].items():
        out[k] = torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
    return out


def measure_context_of(net: torch.nn.Module, card, items) -> int:
    """The context (px) at which tiled maps equal whole-image maps within 0.01, as ``train`` measures it."""
    from wsi_weakseg.engine.inference import Predictor
    from wsi_weakseg.model.context import measure_context

    usable = [it.image for it in items if min(it.image.shape[:2]) >= 256][:2]
    return measure_context(Predictor(net, card, "cpu"), usable, tile=128)[0]


def relative_sources(training):
    """Training summary without machine paths: data paths cut to what follows the data root, repository paths
    made relative to the repository."""
    text = json.dumps(training)
    text = re.sub(r'"(?:[^"]*/)?shared/data/([^"]*)"', r'"\1"', text)
    text = text.replace(json.dumps(str(REPO))[1:-1] + "/", "")
    return json.loads(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="model folder written by wsi-weakseg train")
    ap.add_argument("--config", required=True, help="the training config (its data spec gives the validation split)")
    ap.add_argument("--epochs-dir", type=Path, help="folder of per-epoch nets e<NN>.pt = {epoch, nets: {a, b}}")
    ap.add_argument("--single", nargs="*", default=[], help="per-epoch candidates, e.g. 13b (epoch index, net)")
    ap.add_argument("--swa", nargs="*", default=[], help="weight-averaged candidates, e.g. a:5-13")
    ap.add_argument("--name", required=True)
    ap.add_argument("--description", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--tune-metric", default="aji+f1", choices=("aji", "f1", "aji+f1"),
                    help="threshold tuning objective (default: mean of MoNuSeg AJI and CRC detection F1)")
    ap.add_argument("--report", type=Path, help="write the whole report as JSON here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    cfg = load_config(args.config)
    run = load_model(args.run)
    card = run.card
    spec = load_spec(cfg["data"]["spec"])
    val_items = build_eval_items(spec.split(cfg["data"]["validation_split"]), card.mpp)
    radius = float(cfg["data"]["radius_um"])

    candidates = {"shipped-by-train": run.net.state_dict()}
    for spec_ in args.single:  # e.g. 13b: net b after epoch index 13
        epoch, net = int(spec_[:-1]), spec_[-1]
        candidates[f"e{epoch:02d}{net}"] = load_checkpoint(
            args.epochs_dir / f"e{epoch:02d}.pt")["nets"][net]
    for spec_ in args.swa:  # e.g. a:5-13: net a averaged over epoch indices 5..13
        net, span = spec_.split(":")
        lo, hi = (int(v) for v in span.split("-"))
        files = [args.epochs_dir / f"e{e:02d}.pt" for e in range(lo, hi + 1)]
        candidates[f"swa-{net}-e{lo:02d}-{hi:02d}"] = averaged(files, net)
    scores = {}
    for name, state in candidates.items():
        # each candidate with its own best foreground/centre, so a net that is merely less confident at
        # nucleus borders is not mistaken for a worse one
        run.net.load_state_dict(state)
        t, grid = tune_thresholds(run.net, card, val_items, args.tune_metric, radius,
                                  foreground=(0.25, 0.35, 0.5), centre=(0.2, 0.3, 0.4))
        base = next((r for r in grid if r["foreground"] == card.thresholds["foreground"]
                     and r["centre"] == card.thresholds["centre"]), None)  # tune_thresholds adds the card's values
        scores[name] = {"tuned": max(r[args.tune_metric] for r in grid),
                        "card_thresholds": base[args.tune_metric] if base else None,
                        "foreground": t["foreground"], "centre": t["centre"]}
        log.info("candidate %s: %s", name, json.dumps(scores[name]))
    chosen = max(scores, key=lambda n: scores[n]["tuned"])
    run.net.load_state_dict(candidates[chosen])
    card = dataclasses.replace(card, context_px=measure_context_of(run.net, card, val_items))
    # coordinate-wise: foreground x centre first, then minimum area x peak radius at the best of those
    stage1, grid1 = tune_thresholds(run.net, card, val_items, args.tune_metric, radius,
                                    foreground=(0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6))
    thresholds, grid2 = tune_thresholds(
        run.net, dataclasses.replace(card, thresholds=stage1), val_items, args.tune_metric, radius,
        foreground=(), centre=(), min_area_um2=(3.0, 6.0, 10.0, 14.0), peak_radius_um=(1.5, 2.0, 3.0),
    )
    grid = grid1 + grid2
    training = relative_sources(dict(card.training or {}))
    training["packaging"] = {
        "candidates": scores, "chosen": chosen, "weights": "float16",
        "thresholds_tuning": {"metric": args.tune_metric, "chosen": thresholds, "grid": grid},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    export_model(args.run, args.out, state=candidates[chosen], name=args.name, description=args.description,
                 license=LICENSE, thresholds=thresholds, training=training, context_px=card.context_px)
    shipped = load_model(args.out)
    working = validate(shipped.net, shipped.card, val_items, radius)
    split = cfg["data"]["validation_split"]
    native = evaluate_model(spec, model=shipped, split=split, device="cpu")
    native_6px = evaluate_model(spec, model=shipped, split=split, device="cpu", radius_px=6.0)

    def mean(report: dict, prefix: str, keys: tuple[str, ...]) -> dict:
        rows = [r for r in report["images"] if r["name"].startswith(prefix)]
        return {k: float(np.mean([r[k] for r in rows if r.get(k) is not None])) for k in keys} | {"n": len(rows)}

    metrics = {
        "split": f"{split} ({Path(cfg['data']['spec']).relative_to(REPO) if Path(cfg['data']['spec']).is_relative_to(REPO) else Path(cfg['data']['spec']).name})",
        "working_mpp": working["mean"],
        "native": {
            "monuseg": mean(native, "TCGA", ("aji", "object_dice", "pq", "pixel_f1", "f1")),
            "crc_f1_6px": mean(native_6px, "img", ("precision", "recall", "f1")),
            "crc_f1_3um": mean(native, "img", ("precision", "recall", "f1")),
        },
        "images": relative_sources(native["images"]),
    }
    export_model(args.out, args.out, half=True, metrics=metrics)  # the card's metrics are those of these weights
    final = load_model(args.out)
    assert torch.equal(next(iter(final.net.state_dict().values())), next(iter(shipped.net.state_dict().values())))
    report = {"chosen": chosen, "candidates": scores, "thresholds": thresholds, "metrics": metrics,
              "weights_mb": round((args.out / "weights.pt").stat().st_size / 2**20, 2), "sha256": final.sha256}
    print(json.dumps({k: v for k, v in report.items() if k != "metrics"} | {"native": metrics["native"]}, indent=2))
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
