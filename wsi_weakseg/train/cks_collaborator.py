"""The collaborator of collaborative knowledge sharing (Sec. III-B): two deliberately weak pixel-level nets.

Used only in training and discarded afterwards. ``M_c`` (foreground) comes from a shallow U-Net, 16, 32 and 64
channels at three scales (two downscalings); ``B_c`` (borders) from a three-layer CNN of 32 channels. The paper
keeps them this small on purpose: a more capable collaborator regularises less (its Table VII).

Ours: the U-Net's convolutions are followed by group normalisation (``norm="group"``, 4 groups) by default.
Without it (``norm="none"``, the plain convolutions the paper's text implies) the freshly initialised U-Net's output
hardly depends on its input, so the linear loss (Eq. 6) sees only the class balance (~80 % background in a
MoNuSeg crop), drives every pixel to background within ten steps and then stops learning, since the sigmoid is
saturated (issue 17, docs/training.md). Group rather than batch normalisation: it does not depend on the batch, so
the net is the same function in training and evaluation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: Collaborator normalisations: ``group`` (ours, the default) or ``none`` (plain convolutions).
NORMS = ("group", "none")


def _double_conv(cin: int, cout: int, norm: str) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by ReLU, with group normalisation (4 groups) before it if asked."""
    layers: list[nn.Module] = []
    for a, b in ((cin, cout), (cout, cout)):
        layers.append(nn.Conv2d(a, b, 3, padding=1))
        if norm == "group":
            layers.append(nn.GroupNorm(4, b))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ShallowUNet(nn.Module):
    """U-Net with two 2x downscalings and ``channels`` (16, 32, 64) at its three scales; one logit map out.

    ``norm`` is one of :data:`NORMS`; with ``"group"`` every channel count must be a multiple of 4.
    """

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 64), in_channels: int = 3, norm: str = "group"
                 ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        c1, c2, c3 = channels
        conv = lambda a, b: _double_conv(a, b, norm)
        self.down1, self.down2, self.bottom = conv(in_channels, c1), conv(c1, c2), conv(c2, c3)
        self.up2, self.up1 = conv(c3 + c2, c2), conv(c2 + c1, c1)
        self.out = nn.Conv2d(c1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W), H and W multiples of 4 -> (N, H, W) logits."""
        a = self.down1(x)
        b = self.down2(F.max_pool2d(a, 2))
        c = self.bottom(F.max_pool2d(b, 2))
        b = self.up2(torch.cat([F.interpolate(c, scale_factor=2.0, mode="nearest"), b], dim=1))
        a = self.up1(torch.cat([F.interpolate(b, scale_factor=2.0, mode="nearest"), a], dim=1))
        return self.out(a)[:, 0]


class BorderCNN(nn.Module):
    """Three 3x3 conv-ReLU layers of ``channels`` and a 1x1 conv to one logit map."""

    def __init__(self, channels: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for _ in range(3):
            layers += [nn.Conv2d(cin, channels, 3, padding=1), nn.ReLU(inplace=True)]
            cin = channels
        layers.append(nn.Conv2d(cin, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, H, W) logits."""
        return self.body(x)[:, 0]
