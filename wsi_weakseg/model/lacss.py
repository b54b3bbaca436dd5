"""A detect-and-segment network (LACSS's principal model) in plain torch: ResNet34 + FPN, two branches.

The principal model of collaborative knowledge sharing (``../shared/papers/collaborative-knowledge-sharing-lacss.txt``,
Sec. III-A), with the ResNet34 encoder of :mod:`.resnet_unet` in place of the paper's ConvNeXt:

- **FPN** over the encoder's stride 4, 8, 16 and 32 features, ``fpn_channels`` wide, no extra levels (the paper
  does not widen the scale range either);
- **detection branch**: one small CNN, shared by every level in ``det_strides``, gives per grid cell a logit (a
  nucleus is in this cell) and an offset ``(dy, dx)`` of the nucleus location from the cell centre in units of
  the cell;
- **segmentation branch** (Fig. 3): for a location, the stride-4 feature vector there goes through an MLP to a
  small ``(enc_channels, enc_size, enc_size)`` *location encoding*, resized to the window and concatenated to the
  stride-4 features of a square window around the location and (ours, as CondInst does) two channels of each
  window cell's row and column relative to the location's cell, so the convolutions know where the nucleus to
  segment is from the first step instead of learning it from the coarse encoding; a few convolutions give the
  mask logits, upsampled 4x to pixels. The window is aligned to the stride-4 grid (:func:`window_origin`), so a location's mask is a
  function of the features in its window, the same in every tile.

``width`` scales the encoder as in :class:`~.resnet_unet.ResNet34UNet` (64 = the real ResNet34; tests use 8) and
the FPN and heads with it. The window size is not a weight: the engine passes it (from the card's ``window_um``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from .resnet_unet import ResNet34Encoder

#: Stride of the features the segmentation branch reads (the finest FPN level).
SEG_STRIDE = 4
#: Detection levels (strides) by default: nuclei at 0.25-0.5 µm/px span 10-40 px, so stride 32 cells (16 µm at
#: 0.5 µm/px) would hold several nuclei each; the paper's four levels are for cells of up to ~100 px.
DEFAULT_DET_STRIDES = (4, 8, 16)
#: Prior probability a detection logit starts at (RetinaNet's focal-loss initialisation).
DET_PRIOR = 0.01
#: Clamp of the Gaussian prior before its logit (the logit of 1 is infinite): +-6.9 logits.
PRIOR_EPS = 1e-3


def gaussian_logit(r2: torch.Tensor, d_px: float) -> torch.Tensor:
    """``logit(clip(exp(-r2 / (2 d^2)), PRIOR_EPS, 1 - PRIOR_EPS))``: the nucleus-size prior of LACSS's Eq. 4.

    Positive within ``r ~ 1.18 d`` of the location, negative beyond, +-6.9 at most.

    Examples
    --------
    >>> [round(float(v), 3) for v in gaussian_logit(torch.tensor([0.0, 2 * 1.1774**2 * 4]), 2.0)]
    [6.907, -0.0]
    """
    g = torch.exp(-r2 / (2.0 * d_px**2)).clamp(PRIOR_EPS, 1 - PRIOR_EPS)
    return torch.log(g) - torch.log1p(-g)


class LacssOutput(NamedTuple):
    """Raw outputs of :class:`LacssNet` on a batch.

    Attributes
    ----------
    detections : list of Tensor
        Per detection stride (``net.det_strides`` order), ``(N, 3, H / s, W / s)``: logit, dy, dx.
    features : Tensor
        ``(N, C, H / 4, W / 4)`` stride-4 features for :meth:`LacssNet.segment`.
    """

    detections: list[torch.Tensor]
    features: torch.Tensor


class FPN(nn.Module):
    """Feature pyramid: lateral 1x1 convs, top-down nearest upsampling and sums, a 3x3 conv per level."""

    def __init__(self, in_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Features finest first (strides 4, 8, 16, 32) -> pyramid levels, finest first."""
        top = self.lateral[-1](feats[-1])
        out = [self.output[-1](top)]
        for i in range(len(feats) - 2, -1, -1):
            top = self.lateral[i](feats[i]) + F.interpolate(top, scale_factor=2.0, mode="nearest")
            out.append(self.output[i](top))
        return out[::-1]


def _conv_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]


class DetectionHead(nn.Module):
    """Two 3x3 conv-ReLU and a 1x1 conv to (logit, dy, dx); one set of weights for every level."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_relu(channels, channels), *_conv_relu(channels, channels))
        self.out = nn.Conv2d(channels, 3, 1)
        with torch.no_grad():
            self.out.bias.zero_()
            self.out.bias[0] = -math.log((1 - DET_PRIOR) / DET_PRIOR)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class SegmentationHead(nn.Module):
    """Location encoding (MLP on the feature vector at the location) + window features -> mask logits (Fig. 3)."""

    def __init__(self, channels: int, enc_channels: int, enc_size: int, hidden: int, n_convs: int = 3,
                 prior_px: float = 0.0, prior_weight: float = 0.0) -> None:
        super().__init__()
        self.enc_channels, self.enc_size = enc_channels, enc_size
        self.prior_px, self.prior_weight = float(prior_px), float(prior_weight)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, enc_channels * enc_size * enc_size))
        layers: list[nn.Module] = []
        cin = channels + enc_channels + 2  # + the window's coordinates relative to the location (ours)
        for _ in range(n_convs):
            layers += _conv_relu(cin, hidden)
            cin = hidden
        layers.append(nn.Conv2d(cin, 1, 1))
        self.convs = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, cells: torch.Tensor, window_cells: int) -> torch.Tensor:
        """Mask logits ``(n, 4 w, 4 w)`` of ``cells`` = ``(n, 3)`` (batch, row, col) on the stride-4 grid.

        The window covers cells ``[row - w/2, row + w/2)`` (same for columns), ``w = window_cells``; features
        outside the input are zero.
        """
        n, half = cells.shape[0], window_cells // 2
        if n == 0:
            size = SEG_STRIDE * window_cells
            return features.new_zeros((0, size, size))
        b, r, c = cells[:, 0], cells[:, 1], cells[:, 2]
        enc = self.mlp(features[b, :, r, c]).view(n, self.enc_channels, self.enc_size, self.enc_size)
        enc = F.interpolate(enc, size=(window_cells, window_cells), mode="bilinear", align_corners=False)
        padded = F.pad(features, (half, half, half, half))
        steps = torch.arange(window_cells, device=features.device)
        rows = (r[:, None] + steps)[:, :, None]  # padded coordinates: row - half + half + step
        cols = (c[:, None] + steps)[:, None, :]
        crop = padded[b[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (n, C, w, w)
        rel = (steps.to(features.dtype) - half) / half  # -1 .. 1 - 2/w; 0 at the location's cell
        coords = torch.stack(torch.broadcast_tensors(rel[:, None], rel[None, :])).expand(n, 2, -1, -1)
        logits = self.convs(torch.cat([crop, enc, coords], dim=1))
        logits = F.interpolate(logits, scale_factor=float(SEG_STRIDE), mode="bilinear", align_corners=False)[:, 0]
        return logits + self.prior(window_cells).to(logits) if self.prior_weight else logits

    def prior(self, window_cells: int) -> torch.Tensor:
        """``prior_weight`` x the Gaussian logit of s.d. ``prior_px`` about the centre of the location's cell,
        ``(4 w, 4 w)``: every mask starts as a nucleus-sized blob at its location (ours, see :class:`LacssNet`)."""
        centre = SEG_STRIDE * (window_cells // 2) + (SEG_STRIDE - 1) / 2  # pixel-centre coordinate in the window
        steps = torch.arange(SEG_STRIDE * window_cells, dtype=torch.float32) - centre
        return self.prior_weight * gaussian_logit(steps[:, None] ** 2 + steps[None, :] ** 2, self.prior_px)


class LacssNet(nn.Module):
    """ResNet34 + FPN with a detection branch and a location-conditioned segmentation branch.

    Parameters
    ----------
    width : int
        Encoder base width (64 = ResNet34).
    det_strides : sequence of int
        Pyramid levels (subset of 4, 8, 16, 32) the shared detection head runs on.
    fpn_channels : int, optional
        Pyramid width; default ``2 * width``.
    enc_channels, enc_size : int, optional
        Location encoding shape; defaults ``max(4, width // 4)`` channels of 4 x 4. The MLP's hidden layer and the
        three mask convolutions are ``fpn_channels // 2`` wide.
    in_channels : int
        Input channels (3 for RGB).
    mask_prior_px, mask_prior_weight : float
        Ours: a fixed Gaussian logit (:func:`gaussian_logit`, s.d. ``mask_prior_px`` working pixels) times
        ``mask_prior_weight`` added to every mask's logits, so masks start as nucleus-sized blobs at their
        locations. Without it (weight 0, the paper's head) the freshly initialised masks cover their whole window,
        the overlap penalty of Eq. 8 pushes every mask down at once, and their sigmoids saturate before the
        location is learnt (issue 17, docs/training.md).

    Notes
    -----
    Input sides must be multiples of 32; the network is translation-equivariant for shifts by multiples of 32.
    """

    stride = 32

    def __init__(self, width: int = 64, det_strides: Sequence[int] = DEFAULT_DET_STRIDES, fpn_channels: int | None = None,
                 enc_channels: int | None = None, enc_size: int = 4, in_channels: int = 3,
                 mask_prior_px: float = 0.0, mask_prior_weight: float = 0.0) -> None:
        super().__init__()
        det_strides = tuple(int(s) for s in det_strides)
        if not det_strides or any(s not in (4, 8, 16, 32) for s in det_strides) or len(set(det_strides)) != len(det_strides):
            raise ValueError(f"det_strides must be distinct values of 4, 8, 16, 32; got {det_strides}")
        self.det_strides = det_strides
        channels = int(fpn_channels or 2 * width)
        self.encoder = ResNet34Encoder(width, in_channels)
        self.fpn = FPN(self.encoder.channels[1:], channels)
        self.detect = DetectionHead(channels)
        # Half the pyramid's width in the mask convolutions: they run once per nucleus per window (hundreds per
        # training crop), which made them the costliest part of a CPU step at full width.
        self.segment_head = SegmentationHead(channels, int(enc_channels or max(4, width // 4)), int(enc_size),
                                             max(8, channels // 2), prior_px=mask_prior_px,
                                             prior_weight=mask_prior_weight)
        self._he_init()

    def _he_init(self) -> None:
        """He (Kaiming) normal initialisation of the convolutions, as the paper initialises its model, except the
        two output layers: normal with s.d. 0.01 (RetinaNet's), the detection logit biased to :data:`DET_PRIOR`."""
        outputs = (self.detect.out, self.segment_head.convs[-1])
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and all(m is not o for o in outputs):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in outputs:
            nn.init.normal_(m.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> LacssOutput:
        if x.shape[-1] % self.stride or x.shape[-2] % self.stride:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of {self.stride}")
        levels = self.fpn(self.encoder(x)[1:])  # strides 4, 8, 16, 32
        dets = [self.detect(levels[(4, 8, 16, 32).index(s)]) for s in self.det_strides]
        return LacssOutput(dets, levels[0])

    def segment(self, features: torch.Tensor, cells: torch.Tensor, window_cells: int) -> torch.Tensor:
        """Mask logits of locations (see :meth:`SegmentationHead.forward`)."""
        return self.segment_head(features, cells, window_cells)


def window_cells(window_px: int) -> int:
    """Stride-4 cells of a window of ``window_px`` pixels (a positive multiple of 8, so the cell count is even)."""
    if window_px <= 0 or window_px % (2 * SEG_STRIDE):
        raise ValueError(f"window must be a positive multiple of {2 * SEG_STRIDE} px, got {window_px}")
    return window_px // SEG_STRIDE


def window_origin(anchor: torch.Tensor | int, window_px: int):
    """First pixel (row or column) of the mask window of a location whose pixel is ``anchor``.

    The window holds the stride-4 cells ``[cell - w/2, cell + w/2)`` of the anchor's cell, so it starts at
    ``4 * (anchor // 4) - window_px / 2``: every pixel of the window is within ``window_px / 2 + 3`` of the
    anchor (:func:`window_reach`), and the anchor is at least ``window_px / 2 - 4`` pixels before its last one.

    Examples
    --------
    >>> window_origin(10, 16), window_origin(11, 16), window_origin(12, 16)
    (0, 0, 4)
    """
    return (anchor // SEG_STRIDE) * SEG_STRIDE - window_px // 2


def window_reach(window_px: int) -> int:
    """Farthest distance (pixels, per axis) from a location's pixel to a pixel of its mask window."""
    return window_px // 2 + SEG_STRIDE - 1
