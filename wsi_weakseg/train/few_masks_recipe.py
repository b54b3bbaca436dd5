"""The few-masks recipe: a few drawn nuclei plus unlabelled images (CDCL, semi-supervised; Wu et al. CVPR 2022).

``../shared/papers/cross-patch-dense-contrastive-cdcl.txt``, implemented from the paper's text; the losses
are in :mod:`~wsi_weakseg.train.contrast`. Each step draws a batch of labelled windows and a batch of unlabelled
images (:mod:`~wsi_weakseg.train.mask_items`):

- the student (a ResNet34-UNet with foreground and centre heads, plus a projector ``1x1 conv -> ReLU -> 1x1
  conv`` on the decoder's stride-4 features; the paper's FC -> ReLU -> FC) learns ``L_sup``, binary
  cross-entropy on the labelled pixels, and (ours) the centre head's BCE towards Gaussian bumps at the drawn
  nuclei's centroids (or clicks), so ``segment`` separates nuclei with the engine's marker + geodesic rule;
- from ``few_masks.unsup_from_epoch`` (paper: the 6th epoch) the unlabelled batch goes to the student as a
  strong photometric view and to the teacher as it was sampled (the weak view): ``w_contr L_contr`` (cross-patch
  dense contrast on the projected features, patches of ``patch_um``), ``w_cons L_cons`` (cross-entropy to the
  teacher's argmax, ``w_cons`` on a Gaussian ramp) and ``w_ent L_ent`` (entropy of the student);
- after every optimiser step the teacher (net and projector) becomes the EMA of the student's weights (Eq. 2).

The teacher is part of the checkpoint (``nets``) with the count of EMA steps; the feature banks hold batches of
the current epoch only (emptied when an epoch begins), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .contrast import (
    FeatureBanks,
    consistency_loss,
    cross_patch_loss,
    ema_alpha,
    entropy_loss,
    feature_labels,
    foreground_scores,
    gaussian_ramp,
    patch_classes,
    strong_view,
    update_teacher,
)
from .losses import masked_bce, masked_mean
from .mask_items import MaskItem
from .points_recipe import make_scheduler
from .recipe_state import RecipeState, build_unet
from .scribbles_recipe import make_optimizer

STUDENT, TEACHER, PROJECTOR, PROJECTOR_TEACHER = "student", "teacher", "projector", "projector_teacher"
LABELLED, UNLABELLED = "labelled", "unlabelled"
#: Decoder stage whose output the projector reads (ours): stride 4, ``width`` channels.
FEATURE_STAGE, FEATURE_STRIDE = 2, 4


def projector(channels: int, dim: int) -> nn.Module:
    """The paper's projector, FC -> ReLU -> FC per pixel (1x1 convolutions), ``channels`` -> ``dim``."""
    return nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True), nn.Conv2d(channels, dim, 1))


def patch_px(cfg: Mapping) -> int:
    """The contrast patch side in working pixels: ``few_masks.patch_um`` at ``data.mpp``."""
    return max(1, round(float(cfg["few_masks"]["patch_um"]) / float(cfg["data"]["mpp"])))


class FewMasksRecipe(RecipeState):
    """Student, EMA teacher, projectors, losses and optimiser of the few-masks recipe.

    Parameters
    ----------
    cfg : mapping
        Resolved config (``recipe: few-masks``).
    items : sequence of MaskItem
        Labelled windows (``mask`` set) and unlabelled images; at least one of each.
    normalization : mapping
        ``mean``/``std`` of the model card.
    device : torch.device
    """

    seg_nets = (STUDENT, TEACHER)
    nearest = frozenset({"mask", "centre_known"})
    min_items = 1

    def __init__(self, cfg: Mapping, items: Sequence[MaskItem], normalization: Mapping,
                 device: torch.device) -> None:
        labelled = [i for i, it in enumerate(items) if it.labelled]
        unlabelled = [i for i, it in enumerate(items) if not it.labelled]
        if not labelled or not unlabelled:
            raise ValueError("the few-masks recipe needs labelled and unlabelled items (mask_items.build_mask_items)")
        self.cfg = cfg
        self.items = list(items)
        self.halves = {LABELLED: labelled, UNLABELLED: unlabelled}
        self.normalization = normalization
        self.device = device
        f = cfg["few_masks"]
        student = build_unet(cfg, 2)
        channels = student.decoder[FEATURE_STAGE].conv[-1][0].out_channels
        proj = projector(channels, int(f["projector_dim"]))
        self.nets = {STUDENT: student, PROJECTOR: proj, TEACHER: copy.deepcopy(student),
                     PROJECTOR_TEACHER: copy.deepcopy(proj)}
        self.nets = {k: v.to(device) for k, v in self.nets.items()}
        for k in (TEACHER, PROJECTOR_TEACHER):
            self.nets[k].requires_grad_(False)
        params = [p for k in (STUDENT, PROJECTOR) for p in self.nets[k].parameters()]
        self.optimizer = make_optimizer(params, cfg["optim"])
        self.scheduler = make_scheduler(self.optimizer, cfg["optim"])
        self.pseudo: dict[int, torch.Tensor] = {}  # no EMA maps: the teacher is the ensemble
        self.ema_steps = 0
        self.banks = FeatureBanks(int(f["bank_batches"]))
        self.patch = patch_px(cfg)

    def candidates(self) -> tuple[str, ...]:
        choice = self.cfg["few_masks"]["inference_net"]
        return self.seg_nets if choice == "best" else (choice,)

    # -- what the loop asks ---------------------------------------------------------------------------
    def maps(self, index: int) -> dict[str, np.ndarray]:
        return self.items[index].targets()

    def begin_epoch(self, epoch: int) -> None:
        """Empty the feature banks: they hold batches of this epoch only (exact resume needs no bank)."""
        self.banks.clear()

    def train(self, mode: bool = True) -> None:
        """Student and projector follow ``mode``; the teacher always predicts in eval mode."""
        for k in (STUDENT, PROJECTOR):
            self.nets[k].train(mode)
        for k in (TEACHER, PROJECTOR_TEACHER):
            self.nets[k].eval()

    def unsupervised(self, epoch: int) -> bool:
        start = self.cfg["few_masks"]["unsup_from_epoch"]
        return start is not None and epoch >= int(start)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "ema_steps": self.ema_steps}

    def load_state_dict(self, state: Mapping) -> None:
        super().load_state_dict(state)
        self.ema_steps = int(state["ema_steps"])

    # -- one optimisation step -------------------------------------------------------------------------
    def _unit(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> float (N, 3, H, W) in [0, 1] on the device."""
        return torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.normalization["mean"], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.normalization["std"], device=self.device).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()  # NCHW: see points_recipe.to_tensor (oneDNN, width 8)

    def step(self, batches: Mapping[str, Mapping[str, np.ndarray]], epoch: int) -> dict[str, float]:
        """One optimiser step: supervised terms on the labelled batch, the unsupervised branch once active."""
        f, lab = self.cfg["few_masks"], batches[LABELLED]
        student = self.nets[STUDENT]
        x_lab = self._normalise(self._unit(lab["image"]))
        n = x_lab.shape[0]
        tensor = lambda k: torch.from_numpy(np.ascontiguousarray(lab[k])).to(self.device)
        if self.unsupervised(epoch):
            weak = self._unit(batches[UNLABELLED]["image"])
            strong = strong_view(weak) if f["strong_augment"] else weak
            logits, features = student.forward_with_features(torch.cat([x_lab, self._normalise(strong)]), FEATURE_STAGE)
        else:
            logits, features = student(x_lab), None
        centre_bce = F.binary_cross_entropy_with_logits(logits[:n, 1], tensor("centre").float(), reduction="none")
        terms = {"sup": float(f["sup_weight"]) * masked_bce(logits[:n, 0], tensor("mask")),
                 "centre": float(f["centre_weight"]) * masked_mean(centre_bce, tensor("centre_known"))}
        if features is not None:
            terms.update(self._unsupervised_terms(logits[n:, 0], features[n:], self._normalise(weak), epoch))
        total = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        alpha = ema_alpha(self.ema_steps, float(f["ema_alpha"]))
        update_teacher(self.nets[TEACHER], student, alpha)
        update_teacher(self.nets[PROJECTOR_TEACHER], self.nets[PROJECTOR], alpha)
        self.ema_steps += 1
        logs = {f"{STUDENT}/{k}": float(v.detach()) for k, v in terms.items()}
        logs["loss"] = float(total.detach())
        return logs

    def _unsupervised_terms(self, fg: torch.Tensor, features: torch.Tensor, weak: torch.Tensor,
                            epoch: int) -> dict[str, torch.Tensor]:
        """``w_contr L_contr``, ``w_cons L_cons`` and ``w_ent L_ent`` of the student's unlabelled half."""
        f = self.cfg["few_masks"]
        with torch.no_grad():
            t_logits, t_features = self.nets[TEACHER].forward_with_features(weak, FEATURE_STAGE)
            zt = self.nets[PROJECTOR_TEACHER](t_features)
        zs = self.nets[PROJECTOR](features)
        t_prob = torch.sigmoid(t_logits[:, 0])
        y_s, y_t = (fg.detach() > 0).long(), (t_prob > 0.5).long()  # Eq. 3-4: argmax of each net
        classes = [patch_classes(foreground_scores(y, self.patch), float(f["fg_score"]), float(f["bg_score"]))
                   for y in (y_s, y_t)]
        contrast = cross_patch_loss(zs, zt, feature_labels(y_s, FEATURE_STRIDE), feature_labels(y_t, FEATURE_STRIDE),
                                    classes[0], classes[1], self.banks, self.patch // FEATURE_STRIDE,
                                    float(f["temperature"]), f["max_query_patches"], f["max_negatives"])
        w_cons = float(f["consistency_weight"]) * gaussian_ramp(epoch, int(f["unsup_from_epoch"]),
                                                               int(f["consistency_ramp_epochs"]))
        return {"contrast": float(f["contrast_weight"]) * contrast,
                "consistency": w_cons * consistency_loss(fg, t_prob),
                "entropy": float(f["entropy_weight"]) * entropy_loss(fg)}
