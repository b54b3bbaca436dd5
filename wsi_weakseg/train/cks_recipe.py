"""The cks recipe: point-supervised instances by collaborative knowledge sharing (LACSS; Yu, Sec. III).

Principal: :class:`~wsi_weakseg.model.lacss.LacssNet` (ResNet34 + FPN, detection and segmentation branches), the
model that ships. Collaborator (training only): :class:`~.cks_collaborator.ShallowUNet` for the foreground ``M_c``
and :class:`~.cks_collaborator.BorderCNN` for the borders ``B_c``. One step, every loss weight 1 (the paper's):

- principal: detection (Eq. 3: focal BCE with label smoothing + L2 offsets, at every detection stride) +
  ``L_S`` (Eq. 8: each instance towards ``M_c`` plus the overlap penalty) + ``L_B`` (Eq. 10) + ``L_MC``
  (anti-collapse, ``delta``);
- collaborator: ``L_M`` (Eq. 6, linear; Eq. 5 cross-entropy with ``cks.consistency_collaborator: ce``) towards
  ``M_p`` (Eq. 4, with the Gaussian prior of weight ``pi`` and size ``d``) + ``L_B``.

Each side's target is detached, and ``L_B`` (in both sums in the paper) is added once with gradients to both,
so one Adam over both models takes exactly the paper's two updates. Instances in training come from the clicks
(carried through augmentation as a heatmap, :mod:`.point_items`); at inference from the detection head
(:mod:`wsi_weakseg.engine.anchored`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..model.lacss import LacssNet, window_cells, window_origin
from ..model.resnet_unet import load_torchvision_encoder
from .cks_collaborator import BorderCNN, ShallowUNet
from .cks_losses import (
    balanced_linear_consistency,
    border_loss,
    ce_consistency,
    collapse_loss,
    detection_targets,
    edge_mask,
    focal_bce,
    instance_borders,
    instance_foreground,
    linear_consistency,
    offset_loss,
    points_from_heatmap,
    prior_logit,
    share_loss,
    window_pixels,
)
from .point_items import PointItem
from .points_recipe import make_scheduler, to_tensor
from .recipe_state import RecipeState
from .scribbles_recipe import make_optimizer

PRINCIPAL, FOREGROUND, BORDER = "principal", "foreground", "border"


def window_px(cfg: Mapping) -> int:
    """The mask window in working pixels: ``cks.window_um`` at ``data.mpp``, rounded to a multiple of 8."""
    return 8 * max(1, round(float(cfg["cks"]["window_um"]) / float(cfg["data"]["mpp"]) / 8))


def principal_kwargs(cfg: Mapping) -> dict:
    """The principal's constructor arguments (the card's ``arch_kwargs``): width, detection strides, mask prior."""
    c = cfg["cks"]
    return {"width": int(cfg["model"]["width"]), "det_strides": [int(v) for v in c["det_strides"]],
            "mask_prior_px": float(c["prior_d_um"]) / float(cfg["data"]["mpp"]),
            "mask_prior_weight": float(c["mask_prior_weight"])}


def build_principal(cfg: Mapping) -> LacssNet:
    """The principal model of ``cfg`` (``model.width``, ``cks.det_strides``; ImageNet encoder if given)."""
    net = LacssNet(**principal_kwargs(cfg))
    if cfg["model"]["imagenet_weights"]:
        load_torchvision_encoder(net, cfg["model"]["imagenet_weights"])
    return net


@dataclass(frozen=True)
class Instances:
    """The clicks of a batch as instances: batch index, position, window origin and stride-4 cell."""

    batch: torch.Tensor  # (n,) int64
    points: torch.Tensor  # (n, 2) float32, pixel-centre (row, col)
    origins: torch.Tensor  # (n, 2) int64, top-left pixel of the window
    cells: torch.Tensor  # (n, 3) int64, (batch, row, col) on the stride-4 grid

    @classmethod
    def of(cls, points: Sequence[np.ndarray], shape: tuple[int, int], window: int, device: torch.device) -> Instances:
        """Instances of per-image point arrays; a point's anchor pixel is the pixel holding it."""
        batch = np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(points)] or [np.zeros(0, np.int64)])
        pts = np.concatenate([np.asarray(p, np.float64).reshape(-1, 2) for p in points] or [np.zeros((0, 2))])
        anchors = np.floor(pts + 0.5).astype(np.int64).clip(0, np.array(shape) - 1)
        origins = window_origin(anchors, window)
        cells = np.concatenate([batch[:, None], anchors // 4], axis=1)
        t = lambda a, dtype=torch.int64: torch.from_numpy(np.ascontiguousarray(a)).to(device, dtype)
        return cls(t(batch), t(pts, torch.float32), t(origins), t(cells))


def overlap_weight(epoch: int, ramp_epochs: int, final: float = 1.0) -> float:
    """Weight of Eq. 8's overlap penalty in 0-based ``epoch``: ``final * min(1, epoch / ramp_epochs)``.

    ``final`` is ``cks.overlap_weight`` (1 in the paper); without a ramp the weight is ``final`` from the start.

    Ours: fresh masks cover their whole window, and at full weight the penalty pushes every mask to zero before
    any has learnt its nucleus (issue 17); ramped in, masks first follow ``M_c`` (over-segmenting), then separate.

    Examples
    --------
    >>> [overlap_weight(e, 4) for e in (0, 2, 4, 9)], overlap_weight(0, 0), overlap_weight(2, 4, 0.1)
    ([0.0, 0.5, 1.0, 1.0], 1.0, 0.05)
    """
    return final if ramp_epochs <= 0 else final * min(1.0, epoch / ramp_epochs)


class CksRecipe(RecipeState):
    """Losses and optimiser of collaborative knowledge sharing (one group of items, three nets).

    Parameters
    ----------
    cfg : mapping
        Resolved training config with a ``cks`` section.
    items : sequence of PointItem
    normalization : mapping
        ``mean``/``std`` of the model card.
    device : torch.device
    """

    seg_nets = (PRINCIPAL,)
    nearest = frozenset({"annotated"})
    min_items = 1

    def __init__(self, cfg: Mapping, items: Sequence[PointItem], normalization: Mapping, device: torch.device) -> None:
        if not items:
            raise ValueError("the cks recipe needs at least one training item")
        c = cfg["cks"]
        self.cfg, self.items, self.normalization, self.device = cfg, list(items), normalization, device
        self.halves = {PRINCIPAL: list(range(len(items)))}
        self.nets = {PRINCIPAL: build_principal(cfg).to(device),
                     FOREGROUND: ShallowUNet(tuple(c["collaborator_channels"]), norm=c["collaborator_norm"]).to(device),
                     BORDER: BorderCNN(int(c["border_channels"])).to(device)}
        self.optimizer = make_optimizer([p for n in self.nets.values() for p in n.parameters()], cfg["optim"])
        self.scheduler = make_scheduler(self.optimizer, cfg["optim"])
        self.pseudo: dict[int, torch.Tensor] = {}  # no pseudo labels: the collaborator is the other view
        mpp = float(cfg["data"]["mpp"])
        self.window = window_px(cfg)
        self.smooth_px, self.d_px = float(c["det_smooth_um"]) / mpp, float(c["prior_d_um"]) / mpp
        self.edge_px = float(c["edge_um"]) / mpp

    def candidates(self) -> tuple[str, ...]:
        return self.seg_nets

    def maps(self, index: int) -> dict[str, np.ndarray]:
        return self.items[index].targets()

    def begin_epoch(self, epoch: int) -> None:
        """Nothing to refresh: the collaborator learns every step."""

    def step(self, batches: Mapping[str, Mapping[str, np.ndarray]], epoch: int) -> dict[str, float]:
        """One optimiser step of both models; returns the loss terms (floats)."""
        terms = self.losses(batches[PRINCIPAL], epoch)
        total = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        logs = {k: float(v.detach()) for k, v in terms.items()}
        logs["loss"] = float(total.detach())
        return logs

    def losses(self, b: Mapping[str, np.ndarray], epoch: int = 0) -> dict[str, torch.Tensor]:
        """Every loss term of one batch (``image``, ``centre`` heatmaps, ``annotated``) in 0-based ``epoch``."""
        c = self.cfg["cks"]
        x = to_tensor(b["image"], self.normalization, self.device)
        B, H, W = x.shape[0], x.shape[2], x.shape[3]
        shape = (B, H, W)
        points = [points_from_heatmap(h) for h in b["centre"]]
        annotated = np.asarray(b["annotated"]) != 0
        out = self.nets[PRINCIPAL](x)
        terms = {"detection": self.detection_loss(out.detections, points, annotated)}
        inst = Instances.of(points, (H, W), self.window, self.device)
        logits = self.nets[PRINCIPAL].segment(out.features, inst.cells, window_cells(self.window))
        index, inside = window_pixels(inst.batch, inst.origins, self.window, (H, W))
        consist = torch.from_numpy(annotated & edge_mask((H, W), self.edge_px)[None]).to(self.device)
        valid = inside & consist.reshape(-1)[index]
        with torch.no_grad():
            prior = prior_logit(inst.points, inst.origins, self.window, self.d_px)
            m_p = instance_foreground(logits.detach(), prior, float(c["prior_weight"]), index, inside, shape)
        m_c = torch.sigmoid(self.nets[FOREGROUND](x))
        b_c = torch.sigmoid(self.nets[BORDER](x))
        masks = torch.sigmoid(logits)
        follow = (ce_consistency if c["consistency_collaborator"] == "ce"
                  else balanced_linear_consistency if c["collaborator_balance"] else linear_consistency)
        terms["foreground"] = follow(m_c, m_p, consist)
        k = float(consist.sum()) if c["share_norm"] == "image" else None
        terms["share"] = share_loss(masks, m_c.detach(), index, valid, shape, c["consistency_principal"],
                                    overlap_weight(epoch, int(c["overlap_ramp_epochs"]), float(c["overlap_weight"])), k)
        terms["border"] = border_loss(b_c, instance_borders(masks, index, inside, shape), consist)
        terms["collapse"] = collapse_loss(masks, inside, float(c["collapse_delta"]))
        return terms

    def detection_loss(self, detections: Sequence[torch.Tensor], points: Sequence[np.ndarray],
                       annotated: np.ndarray) -> torch.Tensor:
        """Eq. 3 summed over the detection strides; cells outside the annotated regions are ignored."""
        c = self.cfg["cks"]
        H, W = annotated.shape[1:]
        total = torch.zeros((), device=self.device)
        for stride, det in zip(self.nets[PRINCIPAL].det_strides, detections):
            tg = [detection_targets(p, (H, W), stride, self.smooth_px) for p in points]
            pos = torch.from_numpy(np.stack([t[0] for t in tg])).to(self.device)
            off = torch.from_numpy(np.stack([t[1] for t in tg])).to(self.device)
            mask = torch.from_numpy(annotated[:, stride // 2 :: stride, stride // 2 :: stride].astype(np.float32)).to(self.device)
            total = total + focal_bce(det[:, 0], pos, mask, float(c["focal_gamma"]), float(c["focal_alpha"]))
            total = total + offset_loss(det[:, 1:], off, pos * mask)
        return total
