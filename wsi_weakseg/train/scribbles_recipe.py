"""The scribbles recipe: Scribble2Label (Lee et al., MICCAI 2020; ``../shared/papers/scribble2label.txt``).

One ResNet34-UNet with two heads (foreground, centre) learns from strokes:

- L_sp, the partial cross-entropy on scribbled pixels (Eq. 1), alone for ``scribbles.warmup_epochs``;
- from then on, every ``scribbles.gamma_epochs`` epochs, the EMA of the un-augmented whole-image predictions
  ``y_n = alpha f(x) + (1 - alpha) y_{n-1}``; pseudo labels where ``max(y_n, 1 - y_n) > tau`` on unscribbled
  pixels, L_up the cross-entropy to them (Eq. 2), ``L = L_sp + lambda L_up`` (Eq. 3).

Instances (ours; scribbles give no centres): the centre head learns, once the EMA exists, the per-component
normalised distance transform of the EMA mask ``y_n > 0.5``
(:func:`~wsi_weakseg.weak.centres.distance_centres`) on pixels whose pseudo label is decided, so ``segment``
splits nuclei with the engine's marker + geodesic rule unchanged. The EMA is part of the checkpoint, and the
centre targets are a function of it, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..weak.centres import distance_centres
from ..weak.voronoi import IGNORE
from .losses import ema_update, masked_mean, partial_ce, pseudo_labels, unlabelled_ce
from .points_recipe import make_scheduler, to_tensor
from .recipe_state import RecipeState, build_unet
from .scribble_items import ScribbleItem

NET = "net"


def make_optimizer(params, optim_cfg: Mapping) -> torch.optim.Optimizer:
    """Adam, or RAdam (the paper's), with ``optim.lr`` and ``optim.weight_decay``."""
    cls = torch.optim.RAdam if optim_cfg["optimizer"] == "radam" else torch.optim.Adam
    return cls(params, lr=optim_cfg["lr"], weight_decay=optim_cfg["weight_decay"])


class ScribblesRecipe(RecipeState):
    """Losses, EMA pseudo labels and optimiser of the scribbles recipe (one net, one group of items)."""

    seg_nets = (NET,)
    nearest = frozenset({"scribble", "decided"})
    min_items = 1

    def __init__(self, cfg: Mapping, items: Sequence[ScribbleItem], normalization: Mapping,
                 device: torch.device) -> None:
        if not items:
            raise ValueError("the scribbles recipe needs at least one training item")
        self.cfg = cfg
        self.items = list(items)
        self.halves = {NET: list(range(len(items)))}
        self.normalization = normalization
        self.device = device
        net = build_unet(cfg, 2)
        self.nets = {NET: net.to(device)}
        self.optimizer = make_optimizer(net.parameters(), cfg["optim"])
        self.scheduler = make_scheduler(self.optimizer, cfg["optim"])
        self.pseudo: dict[int, torch.Tensor] = {}  # EMA y_n per item (float32, whole image)
        self._derived: dict[int, dict[str, np.ndarray]] = {}

    def candidates(self) -> tuple[str, ...]:
        return self.seg_nets

    # -- what the loop asks ---------------------------------------------------------------------------
    def maps(self, index: int) -> dict[str, np.ndarray]:
        """Scribble label and, once the EMA exists, its pseudo label (``pseudo``), centre target and mask."""
        maps = self.items[index].targets()
        if index in self.pseudo:
            if index not in self._derived:
                self._derived[index] = self._derive(index)
            maps.update(self._derived[index])
        return maps

    def _derive(self, index: int) -> dict[str, np.ndarray]:
        ema, scribble = self.pseudo[index], self.items[index].scribble
        tau = float(self.cfg["scribbles"]["tau"])
        target = pseudo_labels(ema, torch.from_numpy(scribble), tau).numpy().astype(np.uint8)
        return {"pseudo": target, **centre_target(ema.numpy(), scribble, tau)}

    def begin_epoch(self, epoch: int) -> None:
        """After the warm-up, fold the un-augmented predictions into the EMA every ``gamma_epochs``."""
        s = self.cfg["scribbles"]
        warm, gamma = int(s["warmup_epochs"]), int(s["gamma_epochs"])
        if epoch >= warm and (epoch - warm) % gamma == 0:
            self.refresh_pseudo_labels()

    @torch.no_grad()
    def refresh_pseudo_labels(self) -> None:
        """``y_n = alpha f(x) + (1 - alpha) y_{n-1}`` on every whole item (the first prediction starts it)."""
        net, alpha = self.nets[NET], float(self.cfg["scribbles"]["ema_alpha"])
        was_training = net.training
        net.eval()
        for i, item in enumerate(self.items):
            h, w = item.image.shape[:2]
            padded = np.pad(item.image, ((0, -h % 32), (0, -w % 32), (0, 0)), mode="reflect")
            prob = torch.sigmoid(net(to_tensor(padded[None], self.normalization, self.device))[0, 0, :h, :w])
            self.pseudo[i] = ema_update(self.pseudo.get(i), prob.cpu(), alpha)
        self._derived.clear()
        net.train(was_training)

    def step(self, batches: Mapping[str, Mapping[str, np.ndarray]], epoch: int) -> dict[str, float]:
        """One optimiser step: L_sp, + lambda L_up and the centre loss once pseudo labels exist."""
        s, b = self.cfg["scribbles"], batches[NET]
        out = self.nets[NET](to_tensor(b["image"], self.normalization, self.device))
        fg, centre = out[:, 0], out[:, 1]
        tensor = lambda k: torch.from_numpy(np.ascontiguousarray(b[k])).to(self.device)
        terms = {"scribbled": partial_ce(fg, tensor("scribble"))}
        if "pseudo" in b:
            terms["unscribbled"] = float(s["lam"]) * unlabelled_ce(fg, tensor("pseudo"))
            bce = F.binary_cross_entropy_with_logits(centre, tensor("centre").float(), reduction="none")
            terms["centre"] = float(s["centre_weight"]) * masked_mean(bce, tensor("decided"))
        total = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        logs = {f"{NET}/{k}": float(v.detach()) for k, v in terms.items()}
        logs["loss"] = float(total.detach())
        return logs

    def _after_load(self) -> None:
        self._derived.clear()


def centre_target(ema: np.ndarray, scribble: np.ndarray, tau: float) -> dict[str, np.ndarray]:
    """The centre head's target and where it is trained, from the EMA ``y_n`` and the strokes.

    The mask is ``y_n > 0.5`` overruled by the strokes (nucleus strokes in, background strokes out); the
    target is its per-component normalised distance transform (:func:`~wsi_weakseg.weak.centres.distance_centres`).
    It is trained where the pseudo label is decided (``max(y_n, 1 - y_n) > tau``) **or** a stroke lies: early
    in a CPU-sized run the EMA is decided on well under 1 % of pixels at the paper's MoNuSeg tau 0.95
    (measured, docs/training.md), and a centre head trained on that alone learns nothing (a flat 0.5 map).

    Examples
    --------
    A nucleus stroke extends the mask (x = 4), a background stroke cuts it (x = 6); the undecided x = 3
    (0.6 < tau) is not trained:

    >>> ema = np.array([[0.1, 0.9, 0.9, 0.6, 0.1, 0.1, 0.7]], np.float32)
    >>> t = centre_target(ema, np.array([[2, 2, 2, 2, 1, 2, 0]]), 0.8)
    >>> t["centre"].tolist(), t["decided"].tolist()
    ([[0.0, 0.5, 1.0, 1.0, 0.5, 0.0, 0.0]], [[1, 1, 1, 0, 1, 1, 1]])
    """
    mask = (ema > 0.5) & (scribble != 0)
    mask |= scribble == 1
    decided = (ema > tau) | ((1 - ema) > tau) | (scribble != IGNORE)
    return {"centre": distance_centres(mask), "decided": decided.astype(np.uint8)}


def pseudo_from_model(model_dir) -> tuple[dict[str, np.ndarray], float]:
    """The EMA ``y_n`` of each training item of a scribbles run, by item name, and its ``tau`` (of a regions run:
    its CVM target ``u``, and 0.5).

    Read from ``model_dir/training/checkpoint.pt`` (the last epoch's state; tensors only, never unpickled
    objects) and matched to names through the card's ``training.data`` rows, which list the training items in
    the recipe's order.

    Raises
    ------
    ConfigError
        ``model_dir`` holds no card or checkpoint of a scribbles run.
    """
    import json
    from pathlib import Path

    from ..errors import ConfigError
    from .checkpoint import load_checkpoint
    from .loop import CHECKPOINT

    folder = Path(model_dir)
    try:
        training = json.loads((folder / "card.json").read_text())["training"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{folder}: no card.json of a trained model; give the --out folder of `train`") from None
    ckpt = folder / "training" / CHECKPOINT
    if training.get("recipe") not in ("scribbles", "regions") or not ckpt.is_file():
        raise ConfigError(f"{folder}: not a scribbles or regions training run with its checkpoint "
                          f"(training/{CHECKPOINT}); pseudo labels exist only for recipes scribbles and regions")
    state = load_checkpoint(ckpt)
    names = [row["name"] for row in training["data"]]
    pseudo = {names[int(i)]: t.numpy() for i, t in state["recipe"]["pseudo"].items()}
    return pseudo, float(state["config"]["scribbles"]["tau"]) if training["recipe"] == "scribbles" else 0.5
