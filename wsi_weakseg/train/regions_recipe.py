"""The regions recipe: tissue regions from in/out points with the contrast-based variational model (CVM).

Zhang, Burrows et al., CVPR 2023 (``../shared/papers/contrast-variational-model-cvm.txt``), from the text.
One ResNet34-UNet with one head (the target tissue's logit) learns from a few in-target and out-of-target
points per image:

- ``L_pce`` (Eq. 3), the binary cross-entropy on the points' squares (:mod:`~wsi_weakseg.train.region_items`);
- ``L_wkl`` (Sec. 4.2.2), the KL divergence to the CVM segmentation ``u`` weighted by ``e^{-2 h(u)}``
  (:func:`~wsi_weakseg.train.region_losses.weighted_kl`), over the annotated region; ``L = L_pce + L_wkl``.

``u`` (:func:`~wsi_weakseg.train.cvm.cvm_segmentation`) is computed per training image, un-augmented and whole,
from the net's own features (decoder stage ``regions.feature_stage``; the default 3 is the stride-2 map, the
last decoder stage but one, the paper's "Feature Map 2" being a feature map of the segmentation network) and
kept with the recipe's state; it is recomputed, as the paper says, when the validation pCE reaches a new
lowest value (checked after every epoch; the first ``u`` after ``regions.warmup_epochs`` epochs of pCE alone,
as features of an untrained net carry nothing). Without validation points it is recomputed every epoch.
``regions.loss: pce`` trains the paper's baseline (pCE alone; ``u`` never computed).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .cvm import ChanVeseParams, cvm_segmentation
from .losses import partial_ce
from .points_recipe import make_scheduler, to_tensor
from .recipe_state import RecipeState, build_unet
from .region_items import RegionItem
from .region_validate import padded_input
from .scribbles_recipe import make_optimizer

log = logging.getLogger(__name__)

NET = "net"


class RegionsRecipe(RecipeState):
    """Losses, CVM targets and optimiser of the regions recipe (one net, one group of items)."""

    seg_nets = (NET,)
    nearest = frozenset({"points", "annotated"})
    min_items = 1

    def __init__(self, cfg: Mapping, items: Sequence[RegionItem], normalization: Mapping,
                 device: torch.device) -> None:
        if not items:
            raise ValueError("the regions recipe needs at least one training item")
        self.cfg, self.items, self.normalization, self.device = cfg, list(items), normalization, device
        self.halves = {NET: list(range(len(items)))}
        net = build_unet(cfg, 1)
        self.nets = {NET: net.to(device)}
        self.optimizer = make_optimizer(net.parameters(), cfg["optim"])
        self.scheduler = make_scheduler(self.optimizer, cfg["optim"])
        self.pseudo: dict[int, torch.Tensor] = {}  # u per item (float32, whole image)
        self.best_pce = math.inf  # lowest validation pCE so far
        self.refresh_due = False  # a new lowest validation pCE since u was last computed
        self.validated = False  # a validation pCE was ever reported

    def candidates(self) -> tuple[str, ...]:
        return self.seg_nets

    @property
    def uses_cvm(self) -> bool:
        return self.cfg["regions"]["loss"] == "cvm"

    # -- what the loop asks ---------------------------------------------------------------------------
    def maps(self, index: int) -> dict[str, np.ndarray]:
        """The point map, the annotated region and, once computed, ``u``."""
        maps = self.items[index].targets()
        if index in self.pseudo:
            maps["u"] = self.pseudo[index].numpy()
        return maps

    def begin_epoch(self, epoch: int) -> None:
        """Compute ``u`` after the warm-up, then again whenever the validation pCE reached a new low."""
        if not self.uses_cvm or epoch < int(self.cfg["regions"]["warmup_epochs"]):
            return
        if not self.pseudo or self.refresh_due or not self.validated:
            self.refresh_u()
            self.refresh_due = False

    def note_validation(self, means: Mapping[str, float]) -> None:
        """Record the epoch's validation means; a new lowest ``pce`` makes the next epoch recompute ``u``."""
        pce = means.get("pce")
        if pce is None:
            return
        self.validated = True
        if pce < self.best_pce:
            self.best_pce = float(pce)
            self.refresh_due = True

    @torch.no_grad()
    def refresh_u(self) -> None:
        """``u`` of every training item from the current net's features (eval mode, whole images)."""
        r = self.cfg["regions"]
        params = ChanVeseParams(**r["chan_vese"])
        net, stage = self.nets[NET], int(r["feature_stage"])
        stride = 2 ** (len(net.decoder) - 1 - stage)
        was = net.training
        net.eval()
        for i, item in enumerate(self.items):
            h, w = item.image.shape[:2]
            _, feats = net.forward_with_features(padded_input(item.image, self.normalization, self.device), stage)
            feats = feats[0, :, : -(-h // stride), : -(-w // stride)]
            u = cvm_segmentation(feats, item.in_rc // stride, item.out_rc // stride, float(r["eta"]), params)
            if stride > 1:
                up = F.interpolate(torch.from_numpy(u)[None, None], scale_factor=stride, mode="bilinear",
                                   align_corners=False)
                u = up[0, 0, :h, :w].numpy()
            self.pseudo[i] = torch.from_numpy(np.ascontiguousarray(u, np.float32))
        net.train(was)
        log.info("u recomputed for %d training items", len(self.items))

    def step(self, batches: Mapping[str, Mapping[str, np.ndarray]], epoch: int) -> dict[str, float]:
        """One optimiser step: ``L_pce`` (+ ``kl_weight L_wkl`` once ``u`` exists)."""
        from .region_losses import weighted_kl

        b = batches[NET]
        logits = self.nets[NET](to_tensor(b["image"], self.normalization, self.device))[:, 0]
        tensor = lambda k: torch.from_numpy(np.ascontiguousarray(b[k])).to(self.device)
        terms = {"pce": partial_ce(logits, tensor("points"))}
        if self.uses_cvm and "u" in b:
            terms["wkl"] = float(self.cfg["regions"]["kl_weight"]) * weighted_kl(logits, tensor("u"), tensor("annotated"))
        total = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        logs = {f"{NET}/{k}": float(v.detach()) for k, v in terms.items()}
        logs["loss"] = float(total.detach())
        return logs

    # -- checkpoint -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "cvm": {"best_pce": self.best_pce, "refresh_due": self.refresh_due,
                                                "validated": self.validated}}

    def load_state_dict(self, state: Mapping) -> None:
        super().load_state_dict(state)
        c = state["cvm"]
        self.best_pce, self.refresh_due, self.validated = float(c["best_pce"]), bool(c["refresh_due"]), bool(c["validated"])
