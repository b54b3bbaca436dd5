"""The points recipe: two co-trained ResNet34-UNets with EMA pseudo labels and nuclei-aware colorization.

Sec. II of points-cotraining-colorization-scnet, with a centre head added for instance separation:

- nets ``a`` and ``b`` train on disjoint halves of the items (``X_a``, ``X_b``);
- each net's losses: Voronoi (Eq. 3) + cluster (Eq. 4) masked BCE on the foreground head, centre-heatmap BCE
  on the centre head, ``alpha`` x co-training KL (Eq. 7) towards pseudo labels (Eq. 6) made from the *other*
  net's EMA-averaged predictions (Eq. 5, refreshed every ``gamma`` epochs), ``beta`` x colorization MSE
  (Eq. 8) of a small colorization net mapping the foreground probability back to RGB;
- ``alpha = eta (N/Nmax)^2`` rises, ``beta = epsilon (1 - N/Nmax)^2`` falls (Eq. 9).

A recipe owns its networks, optimiser and pseudo labels and knows nothing about epochs' bookkeeping, which
is the loop's (:mod:`wsi_weakseg.train.loop`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .dataset import TrainItem
from .losses import (
    binary_kl,
    colorization_loss,
    ema_update,
    masked_bce,
    masked_mean,
    pairwise_crf_loss,
    pseudo_target,
    ramp_weights,
)
from .recipe_state import RecipeState, build_unet

#: Power of the poly lr schedule (``optim.lr_schedule: poly``).
POLY_POWER = 0.9


class Colorizer(nn.Module):
    """Foreground probability (1 channel) -> RGB in [0, 1] at 1/``pool`` resolution (our architecture).

    Five dilated 3x3 convs (dilations 1, 2, 4, 8, 1; receptive field 63 pooled pixels) of ``width``
    channels on the ``pool`` x average-pooled probability. ``pool`` 2 (the default, ``points.colorizer_pool``)
    and width 16 make it ~16x cheaper than the same net at full resolution and width 32, whose cost matched
    the two segmentation nets' own (recipe step 0.50 of plain forward+backward); ``pool`` 1 keeps the
    boundary detail the paper credits colorization with (+3.2 AJI), at 4x the colorizer's cost.
    """

    def __init__(self, width: int = 16, pool: int = 2) -> None:
        super().__init__()
        if pool < 1:
            raise ValueError(f"colorizer pool must be a positive integer, got {pool}")
        self.pool = int(pool)
        layers: list[nn.Module] = []
        cin = 1
        for d in (1, 2, 4, 8, 1):
            layers += [nn.Conv2d(cin, width, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
            cin = width
        layers.append(nn.Conv2d(width, 3, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, prob: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) probability -> (N, 3, H/pool, W/pool) RGB."""
        return torch.sigmoid(self.body(self.reduce(prob)))

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Average-pool ``x`` to the colorizer's grid (the identity at ``pool`` 1)."""
        return x if self.pool == 1 else F.avg_pool2d(x, self.pool)


def build_nets(cfg: Mapping) -> dict[str, nn.Module]:
    """Segmentation nets ``a``/``b`` (2 heads: foreground, centre) and colorizers ``ca``/``cb``."""
    nets: dict[str, nn.Module] = {}
    for k in ("a", "b"):
        nets[k] = build_unet(cfg, 2)
        if cfg["points"]["colorization"]:
            nets["c" + k] = Colorizer(pool=int(cfg["points"]["colorizer_pool"]))
    return nets


def to_tensor(images: np.ndarray, normalization: Mapping[str, Sequence[float]], device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> normalised float (N, 3, H, W), contiguous in NCHW order.

    The permute alone leaves a channels-last view; fed to a width-8 net (4-channel decoder stages), oneDNN's
    backward pass corrupts the heap and the process dies (seen as a flaky segfault of the serve train test).
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(normalization["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(normalization["std"], device=device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def ramp_length(cfg: Mapping) -> int:
    """``Nmax`` of the co-training / colorization ramps: ``points.ramp_epochs``, else the epochs run."""
    return int(cfg["points"]["ramp_epochs"] or cfg["optim"]["epochs"])


def make_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Mapping) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch lr schedule: step decay, cosine annealing to 0, or poly decay over ``optim.epochs``.

    The cosine and poly schedules follow the epochs actually run, so a shorter run still ends at a small lr
    (the step schedule never decays when ``epochs <= lr_step_epochs``). Poly is ``lr (1 - e / epochs)^0.9``
    at epoch ``e`` (the few-masks paper's schedule; the power 0.9 is the usual one, the paper gives none).
    """
    if optim_cfg["lr_schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(optim_cfg["epochs"]))
    if optim_cfg["lr_schedule"] == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=int(optim_cfg["epochs"]), power=POLY_POWER)
    return torch.optim.lr_scheduler.StepLR(optimizer, optim_cfg["lr_step_epochs"], optim_cfg["lr_gamma"])


class PointsRecipe(RecipeState):
    """Losses, pseudo labels and optimiser of the points recipe.

    Parameters
    ----------
    cfg : mapping
        Resolved training config (:func:`wsi_weakseg.train.config.load_config`).
    items : sequence of TrainItem
        Training items; split into two disjoint halves ``a`` (even indices) and ``b`` (odd).
    normalization : mapping
        ``mean``/``std`` of the model card.
    device : torch.device
    """

    seg_nets = ("a", "b")
    nearest = frozenset({"voronoi", "cluster", "annotated"})  # class maps: resampled by nearest neighbour
    #: Fewest training items (two disjoint co-training halves).
    min_items = 2

    def __init__(self, cfg: Mapping, items: Sequence[TrainItem], normalization: Mapping, device: torch.device) -> None:
        if len(items) < 2:
            raise ValueError("the points recipe co-trains two nets on disjoint halves: it needs at least 2 items")
        self.cfg = cfg
        self.items = list(items)
        self.halves = {"a": list(range(0, len(items), 2)), "b": list(range(1, len(items), 2))}
        self.normalization = normalization
        self.device = device
        self.nets = {k: v.to(device) for k, v in build_nets(cfg).items()}
        params = [p for net in self.nets.values() for p in net.parameters()]
        o = cfg["optim"]
        self.optimizer = torch.optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"])
        self.scheduler = make_scheduler(self.optimizer, o)
        # EMA pseudo labels: for items of half "a", the average of net b's predictions, and vice versa.
        self.pseudo: dict[int, torch.Tensor] = {}

    # -- what the loop asks ---------------------------------------------------------------------------
    def maps(self, index: int) -> dict[str, np.ndarray]:
        """Item ``index``'s targets and, once made, its EMA pseudo label (``pseudo``)."""
        maps = self.items[index].targets()
        if index in self.pseudo:
            maps["pseudo"] = self.pseudo[index].numpy()
        return maps

    def begin_epoch(self, epoch: int) -> None:
        """Refresh the pseudo labels every ``points.gamma_epochs`` epochs (from the second period on)."""
        if epoch > 0 and epoch % int(self.cfg["points"]["gamma_epochs"]) == 0:
            self.refresh_pseudo_labels()

    def candidates(self) -> tuple[str, ...]:
        """Nets validated each epoch for shipping (``points.inference_net``: a, b or best of both)."""
        choice = self.cfg["points"]["inference_net"]
        return self.seg_nets if choice == "best" else (choice,)

    # -- pseudo labels -------------------------------------------------------------------------------
    @torch.no_grad()
    def refresh_pseudo_labels(self) -> None:
        """Eq. 5: predict each item with the *other* net and fold it into the EMA (every gamma epochs)."""
        weight = float(self.cfg["points"]["ema_weight"])
        for half, other in (("a", "b"), ("b", "a")):
            net = self.nets[other]
            was_training = net.training
            net.eval()
            for i in self.halves[half]:
                img = self.items[i].image
                h, w = img.shape[:2]
                ph, pw = -h % 32, -w % 32
                padded = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect")
                prob = torch.sigmoid(net(to_tensor(padded[None], self.normalization, self.device))[0, 0, :h, :w])
                self.pseudo[i] = ema_update(self.pseudo.get(i), prob.cpu(), weight)
            net.train(was_training)

    # -- one optimisation step -------------------------------------------------------------------------
    def step(self, batches: Mapping[str, Mapping[str, np.ndarray]], epoch: int) -> dict[str, float]:
        """One optimiser step on a batch per half; returns the loss terms (floats)."""
        p = self.cfg["points"]
        alpha, beta = ramp_weights(epoch, ramp_length(self.cfg), p["eta"], p["epsilon"])
        total = torch.zeros((), device=self.device)
        logs: dict[str, float] = {}
        for k in ("a", "b"):
            b = batches[k]
            x = to_tensor(b["image"], self.normalization, self.device)
            out = self.nets[k](x)
            fg, centre = out[:, 0], out[:, 1]
            vor = torch.from_numpy(b["voronoi"]).to(self.device)
            clu = torch.from_numpy(b["cluster"]).to(self.device)
            terms = {
                "voronoi": masked_bce(fg, vor),
                "cluster": masked_bce(fg, clu),
                "centre": p["centre_weight"] * masked_mean(
                    F.binary_cross_entropy_with_logits(
                        centre, torch.from_numpy(b["centre"]).to(self.device).float(), reduction="none"
                    ),
                    torch.from_numpy(b["annotated"]).to(self.device),
                ),
            }
            if alpha > 0 and "pseudo" in b:
                target = pseudo_target(clu, torch.from_numpy(b["pseudo"]).to(self.device).float())
                terms["cotrain"] = alpha * binary_kl(fg, target)
            rgb = torch.from_numpy(np.ascontiguousarray(b["image"])).to(self.device).permute(0, 3, 1, 2).float() / 255
            if p["crf_weight"] > 0:
                terms["crf"] = p["crf_weight"] * self.crf(torch.sigmoid(fg), rgb)
            if beta > 0 and ("c" + k) in self.nets:
                colorizer = self.nets["c" + k]
                terms["color"] = beta * colorization_loss(colorizer(torch.sigmoid(fg)[:, None]), colorizer.reduce(rgb))
            for name, value in terms.items():
                total = total + value
                logs[f"{k}/{name}"] = float(value.detach())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        logs["loss"] = float(total.detach())
        return logs

    def crf(self, prob: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """The pairwise colour-CRF term on the working grid (``points.crf_*`` in µm, converted by ``data.mpp``)."""
        p, mpp = self.cfg["points"], float(self.cfg["data"]["mpp"])
        radius = max(1, round(p["crf_radius_um"] / mpp))
        return pairwise_crf_loss(prob, rgb, radius, p["crf_sigma_um"] / mpp, p["crf_sigma_rgb"])
