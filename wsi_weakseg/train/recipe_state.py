"""State a recipe shares with the loop: nets, optimiser, lr schedule and EMA pseudo labels (checkpoint and mode)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..model.resnet_unet import ResNet34UNet, load_torchvision_encoder


def build_unet(cfg: Mapping, out_channels: int) -> ResNet34UNet:
    """The recipes' ResNet34-UNet: ``model.width``, ``out_channels`` heads, ImageNet encoder if the config names one."""
    net = ResNet34UNet(out_channels=out_channels, width=int(cfg["model"]["width"]))
    if cfg["model"]["imagenet_weights"]:
        load_torchvision_encoder(net, cfg["model"]["imagenet_weights"])
    return net


class RecipeState:
    """Mixin of the recipes: ``state_dict`` / ``load_state_dict`` for exact resume, ``train`` and ``end_epoch``.

    A recipe sets ``nets`` (name -> module), ``optimizer``, ``scheduler`` and ``pseudo`` (item index -> EMA
    tensor); :meth:`_after_load` lets it drop what it derives from them.
    """

    nets: dict[str, torch.nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    pseudo: dict[int, torch.Tensor]

    def end_epoch(self) -> None:
        self.scheduler.step()

    def state_dict(self) -> dict:
        return {
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "pseudo": {int(i): t.clone() for i, t in self.pseudo.items()},
        }

    def load_state_dict(self, state: Mapping) -> None:
        for k, v in state["nets"].items():
            self.nets[k].load_state_dict(v)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.pseudo = {int(i): t.clone() for i, t in state["pseudo"].items()}
        self._after_load()

    def _after_load(self) -> None:
        """Hook: drop state derived from the loaded pseudo labels (none by default)."""

    def train(self, mode: bool = True) -> None:
        for net in self.nets.values():
            net.train(mode)
