"""Streaming tiled inference: tiles with context, batched forward passes, maps written to zarr.

A tile is a square *core* of ``tile`` working pixels on a grid starting at (0, 0); the network sees the
core plus ``context`` pixels on every side and only the core of its output is kept. Outside the image
the input is the image reflected about its edge, in tiled and whole-image runs alike, so a pixel's map
value depends only on image content within ``context`` of it (up to the network's effective receptive
field, which the model card's context is measured against). Tile and context are multiples of the
network stride (32), which keeps every tile on the network's translation grid.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..errors import ConfigError
from ..model.card import DETECT_SEGMENT, ModelCard

log = logging.getLogger(__name__)

STRIDE = 32


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are explicit."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} requested but MPS is not available; use --device cpu")
    return dev


def tile_origins(shape: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """Top-left corners (row, col) of the tile grid covering ``shape``."""
    return [(y, x) for y in range(0, shape[0], tile) for x in range(0, shape[1], tile)]


def _reflect_pad(region: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    if not any(p for pair in pads for p in pair):
        return region
    mode = "reflect" if min(region.shape[:2]) > 1 else "edge"
    return np.pad(region, (*pads, (0, 0)), mode=mode)


def read_tile(read: Callable[[int, int, int, int], np.ndarray], shape: tuple[int, int], y: int, x: int, size: int, context: int) -> np.ndarray:
    """Tile core at (y, x) of ``size`` plus ``context``, reflected about the image edges.

    ``read(y, x, h, w)`` must return the image region, which always lies inside the image here.
    """
    H, W = shape
    y0, x0, y1, x1 = y - context, x - context, y + size + context, x + size + context
    ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y1, H), min(x1, W)
    region = read(ya, xa, yb - ya, xb - xa)
    return _reflect_pad(region, ((ya - y0, y1 - yb), (xa - x0, x1 - xb)))


class Predictor:
    """Runs a model card's network on uint8 RGB batches and returns uint8 maps.

    Parameters
    ----------
    net : torch.nn.Module
        The network (eval mode).
    card : ModelCard
        Normalisation, activation and heads.
    device : str
        ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``.
    tta : {1, 4, 8}
        Test-time augmentation: average the probabilities over the identity (1), the four flips (4), or the
        eight symmetries of the square (8: flips and transposes; square tiles only). Flipping a tile whose
        sides are multiples of the stride keeps it on the stride grid, so tiled == whole still holds within
        the context tolerance. Costs ``tta`` forward passes per tile. ``detect-segment`` models take 1 only.

    Notes
    -----
    A ``detect-segment`` card's network gives detections and masks, not maps: its outputs are decoded tile by
    tile into four maps (:class:`~.anchored.AnchoredDecoder`: foreground and centre probabilities, then the
    offsets from each pixel to its nucleus's anchor), which the instance stage reads like any other maps.
    """

    def __init__(self, net: torch.nn.Module, card: ModelCard, device: str = "auto", tta: int = 1) -> None:
        if tta not in (1, 4, 8):
            raise ValueError(f"tta must be 1, 4 or 8, got {tta!r}")
        self.tta = tta
        self.device = resolve_device(device)
        self.card = card
        self.net = net.to(self.device).eval().to(memory_format=torch.channels_last)
        norm = card.normalization
        self.mean = torch.tensor(norm["mean"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(norm["std"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.decoder = None
        if card.model_type == DETECT_SEGMENT:
            from .anchored import AnchoredDecoder

            if tta != 1:
                raise ValueError("test-time augmentation is for dense-map models; detect-segment models take tta=1")
            self.decoder = AnchoredDecoder(card)
        self.n_maps = self.decoder.n_maps if self.decoder is not None else len(card.heads)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray, crop: int = 0) -> np.ndarray:
        """(N, h, w, 3) uint8 → (N, K, h - 2 crop, w - 2 crop) uint8 maps (probability × 255, rounded)."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        if self.decoder is not None:
            return self.decoder(self.net, self._raw, x, crop)
        y = sum(undo(self._forward(do(x))) for do, undo in _symmetries(self.tta, x.shape[2] == x.shape[3]))
        y = y / self.tta if self.tta > 1 else y
        if crop:
            y = y[:, :, crop : y.shape[2] - crop, crop : y.shape[3] - crop]
        return torch.round(y.clamp(0.0, 1.0) * 255.0).to(torch.uint8).cpu().numpy()


    def _raw(self, x: torch.Tensor):
        """The network's own output (fp16 autocast on CUDA)."""
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                return self.net(x.contiguous(memory_format=torch.channels_last))
        return self.net(x.contiguous(memory_format=torch.channels_last))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (or raw maps) of the card's heads, float32."""
        y = self._raw(x)[:, : self.n_maps].float()
        return torch.sigmoid(y) if self.card.activation == "sigmoid" else y


def _symmetries(n: int, square: bool) -> list[tuple[Callable, Callable]]:
    """(transform, inverse) pairs on (N, C, H, W) tensors: identity, flips, and with 8 the transposed ones."""
    flips = [(), (3,), (2,), (2, 3)][: 1 if n == 1 else 4]
    out = [((lambda t, d=d: t.flip(d) if d else t), (lambda t, d=d: t.flip(d) if d else t)) for d in flips]
    if n == 8:
        if not square:
            raise ValueError("tta=8 transposes tiles: it needs square tiles; use tta=4")
        out += [((lambda t, d=d: (t.flip(d) if d else t).transpose(2, 3)),
                 (lambda t, d=d: (t.transpose(2, 3).flip(d) if d else t.transpose(2, 3)))) for d in flips]
    return out


def predict_image(predictor: Predictor, image: np.ndarray, context: int) -> np.ndarray:
    """Whole-image maps in one forward pass: the oracle tiled inference must reproduce.

    The image is reflected by ``context`` on every side and on the bottom/right up to the stride grid.
    """
    H, W = image.shape[:2]
    ph, pw = -(H + 2 * context) % STRIDE, -(W + 2 * context) % STRIDE
    padded = _reflect_pad(image, ((context, context + ph), (context, context + pw)))
    maps = predictor(padded[None], crop=0)[0]
    return maps[:, context : context + H, context : context + W]


def predict_tiles(
    predictor: Predictor,
    read: Callable[[int, int, int, int], np.ndarray],
    shape: tuple[int, int],
    out,
    tiles: Sequence[tuple[int, int]],
    tile: int,
    context: int,
    batch_size: int = 8,
    num_workers: int = 2,
    on_batch: Callable[[list[tuple[int, int]]], None] | None = None,
) -> None:
    """Predict ``tiles`` and write their cores into ``out`` (K, H, W), chunked by ``tile``.

    A thread pool reads tiles ahead (bounded queue) so reading overlaps the forward pass; the main
    thread is the only writer of ``out``. ``on_batch(origins)`` is called after each batch's maps are
    written.
    """
    if tile % STRIDE or context % STRIDE:
        raise ConfigError(f"tile size {tile} and context {context} must be multiples of {STRIDE}")
    H, W = shape

    def load(origin: tuple[int, int]) -> np.ndarray:
        return read_tile(read, shape, origin[0], origin[1], tile, context)

    def batches(items: Iterable[tuple[int, int]]):
        buf: list[tuple[int, int]] = []
        for it in items:
            buf.append(it)
            if len(buf) == batch_size:
                yield buf
                buf = []
        if buf:
            yield buf

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        pending: deque = deque()
        queue_len = max(2, 2 * max(1, num_workers))
        it = iter(batches(tiles))
        for b in it:
            pending.append((b, [pool.submit(load, o) for o in b]))
            if len(pending) >= queue_len:
                break
        while pending:
            origins, futs = pending.popleft()
            batch = np.stack([f.result() for f in futs])
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, [pool.submit(load, o) for o in nxt]))
            maps = predictor(batch, crop=context)
            for (y, x), m in zip(origins, maps):
                hh, ww = min(tile, H - y), min(tile, W - x)
                out[:, y : y + hh, x : x + ww] = m[:, :hh, :ww]
            if on_batch is not None:
                on_batch(origins)
