"""ResNet34-encoder U-Net in plain torch.

The encoder reproduces torchvision's ``resnet34`` layer names (``conv1``, ``bn1``, ``layer1`` ...
``layer4``) so an ImageNet state_dict saved from torchvision loads with :func:`load_torchvision_encoder`
without torchvision being installed. ``width`` scales every channel count (64 = the real ResNet34);
tests use a tiny width to exercise the real architecture quickly on CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

RESNET34_BLOCKS = (3, 4, 6, 3)


class BasicBlock(nn.Module):
    """The two-conv residual block of ResNet18/34."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet34Encoder(nn.Module):
    """ResNet34 feature extractor returning the five U-Net skip levels (strides 2, 4, 8, 16, 32)."""

    def __init__(self, width: int = 64, in_channels: int = 3, blocks: Sequence[int] = RESNET34_BLOCKS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [width, width * 2, width * 4, width * 8]
        inplanes = width
        for i, (planes, n) in enumerate(zip(chans, blocks)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(inplanes, planes, stride)]
            layers += [BasicBlock(planes, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            inplanes = planes
        self.channels = (width, *chans)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x0 = self.relu(self.bn1(self.conv1(x)))  # stride 2
        x1 = self.layer1(self.maxpool(x0))  # stride 4
        x2 = self.layer2(x1)  # stride 8
        x3 = self.layer3(x2)  # stride 16
        x4 = self.layer4(x3)  # stride 32
        return [x0, x1, x2, x3, x4]


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """Upsample x2, concatenate the skip, two 3x3 conv-BN-ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv_bn_relu(cin + cskip, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class ResNet34UNet(nn.Module):
    """U-Net with a ResNet34 encoder mapping an image tile to per-pixel logits.

    Parameters
    ----------
    out_channels : int
        Number of output maps (heads), e.g. 2 for nucleus foreground and nucleus-centre heatmap.
    width : int
        Encoder base width; 64 is the standard ResNet34 (ImageNet weights load only at 64).
    decoder_channels : sequence of int, optional
        Channels of the five decoder stages; default scales ``(256, 128, 64, 32, 16)`` with ``width / 64``.
    in_channels : int
        Input channels (3 for RGB).

    Notes
    -----
    Input height and width must be multiples of 32 (the encoder's total stride). The network is
    translation-equivariant only for shifts by multiples of 32, so the engine aligns tiles to that grid.
    """

    stride = 32

    def __init__(
        self,
        out_channels: int = 2,
        width: int = 64,
        decoder_channels: Sequence[int] | None = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if decoder_channels is None:
            decoder_channels = [max(4, c * width // 64) for c in (256, 128, 64, 32, 16)]
        if len(decoder_channels) != 5:
            raise ValueError("decoder_channels needs five entries, one per decoder stage")
        self.encoder = ResNet34Encoder(width, in_channels)
        enc = self.encoder.channels  # (x0, x1, x2, x3, x4)
        skips = [enc[3], enc[2], enc[1], enc[0], 0]
        blocks = []
        cin = enc[4]
        for cskip, cout in zip(skips, decoder_channels):
            blocks.append(DecoderBlock(cin, cskip, cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, None)[0]

    def forward_with_features(self, x: torch.Tensor, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the output of decoder stage ``stage`` (0 to 4: strides 16, 8, 4, 2, 1).

        For a recipe that puts its own head on the decoder's features (the few-masks recipe's projector);
        the logits are exactly :meth:`forward`'s.
        """
        if not 0 <= stage < len(self.decoder):
            raise ValueError(f"decoder stage must be in 0..{len(self.decoder) - 1}, got {stage}")
        logits, features = self._run(x, stage)
        return logits, features

    def _run(self, x: torch.Tensor, stage: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.shape[-1] % self.stride or x.shape[-2] % self.stride:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of {self.stride}")
        feats = self.encoder(x)
        skips = [feats[3], feats[2], feats[1], feats[0], None]
        y = feats[4]
        kept = None
        for i, (block, skip) in enumerate(zip(self.decoder, skips)):
            y = block(y, skip)
            if i == stage:
                kept = y
        return self.head(y), kept


def load_torchvision_encoder(model: ResNet34UNet, path: str | Path) -> list[str]:
    """Load a torchvision ``resnet34`` ImageNet state_dict file into the encoder.

    Parameters
    ----------
    model : ResNet34UNet
        A model built with ``width=64``.
    path : str or Path
        A ``.pth`` file holding torchvision's state_dict (e.g. ``resnet34-b627a593.pth``).

    Returns
    -------
    list of str
        Keys of the file that were not used (the classifier ``fc.*``).
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    unused = [k for k in state if k.startswith("fc.")]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"{path} is not a torchvision resnet34 state_dict: {exc}") from None
    if missing or unexpected:
        raise ValueError(
            f"{path} is not a torchvision resnet34 state_dict (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    log.info("loaded ImageNet encoder weights from %s", path)
    return unused
