"""Does averaging the two co-trained nets' predictions (the paper's protocol) pay? Validation metrics and time.

Loads nets ``a`` and ``b`` of one epoch of a training run (``training/epochs/e<NN>.pt``, written with
``optim.keep_epoch_nets``), and scores on the validation split of a data spec, through the same path as
training validation (``train.validate.validate``: the run card's tiling, context and thresholds): net a alone,
net b alone, and the two averaged in probability (``p = (sigmoid(a) + sigmoid(b)) / 2`` per head). Prints the
mean metrics and the wall time of each, with the ensemble's time over net a's. Validation split only: this is a
decision about a ``segment`` option.

Usage::

    python benchmarks/ensemble_gain.py --run runs/x/model --spec configs/data/points-monuseg-crc-v2.yaml --epoch 35
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from wsi_weakseg.model.card import load_model
from wsi_weakseg.train.checkpoint import load_checkpoint
from wsi_weakseg.train.dataset import build_eval_items
from wsi_weakseg.train.validate import validate
from wsi_weakseg.weak.spec import load_spec


class ProbabilityMean(torch.nn.Module):
    """Two nets with logit outputs -> the logit of their mean probability (so the card's sigmoid applies)."""

    def __init__(self, a: torch.nn.Module, b: torch.nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = (torch.sigmoid(self.a(x)) + torch.sigmoid(self.b(x))) / 2
        return torch.logit(p, eps=1e-6)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path, help="model folder written by wsi-weakseg train")
    p.add_argument("--spec", required=True)
    p.add_argument("--epoch", type=int, required=True, help="epoch index (e<NN>.pt)")
    p.add_argument("--radius-um", type=float, default=3.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model = load_model(args.run)
    nets = load_checkpoint(args.run / "training" / "epochs" / f"e{args.epoch:02d}.pt")["nets"]
    a, b = model.net, type(model.net)(**model.card.arch_kwargs)
    a.load_state_dict(nets["a"])
    b.load_state_dict(nets["b"])
    items = build_eval_items(load_spec(args.spec).split("validation"), model.card.mpp)
    base = None
    for name, net in (("net a", a), ("net b", b), ("mean of a and b", ProbabilityMean(a, b).eval())):
        t0 = time.perf_counter()
        m = validate(net.eval(), model.card, items, args.radius_um, "cpu")["mean"]
        wall = time.perf_counter() - t0
        base = base or wall
        print(f"{name}: " + ", ".join(f"{k} {m[k]:.4f}" for k in ("aji", "object_dice", "pq", "f1") if k in m)
              + f" | {wall:.1f} s (x{wall / base:.2f} of net a)")


if __name__ == "__main__":
    main()
