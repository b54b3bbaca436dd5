"""Measure the inference context a network needs for tiled maps to equal whole-image maps.

A convolutional network's theoretical receptive field is far larger than what actually influences its
output (the effective receptive field). The context stored in a model card is measured instead of
guessed: for growing context, maps predicted tile by tile are compared with maps predicted on the whole
image; the smallest context whose maps agree within tolerance wins.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..engine.inference import (
    STRIDE,
    Predictor,
    predict_image,
    predict_tiles,
    tile_origins,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContextMeasurement:
    """Agreement between tiled and whole-image maps at one context.

    Attributes
    ----------
    context : int
        Context (pixels on each side).
    max_abs : float
        Largest absolute probability difference over all pixels and maps.
    mean_abs : float
        Mean absolute probability difference.
    """

    context: int
    max_abs: float
    mean_abs: float


def compare_context(predictor: Predictor, images: Sequence[np.ndarray], tile: int, context: int,
                    channels: Sequence[int] | None = None) -> ContextMeasurement:
    """Tiled (``tile``, ``context``) versus whole-image maps of each image; worst case over images and ``channels``
    (default: every map)."""
    worst, total, count = 0.0, 0.0, 0
    for image in images:
        shape = image.shape[:2]
        whole = predict_image(predictor, image, context=max(context, 2 * tile))
        tiled = np.zeros_like(whole)

        def read(y: int, x: int, h: int, w: int, image: np.ndarray = image) -> np.ndarray:
            return image[y : y + h, x : x + w]

        predict_tiles(predictor, read, shape, tiled, tile_origins(shape, tile), tile, context, batch_size=4, num_workers=1)
        keep = list(range(whole.shape[0])) if channels is None else list(channels)
        diff = np.abs(tiled[keep].astype(np.int16) - whole[keep].astype(np.int16)) / 255.0
        worst = max(worst, float(diff.max()))
        total += float(diff.sum())
        count += diff.size
    return ContextMeasurement(context=context, max_abs=worst, mean_abs=total / max(count, 1))


def measure_context(
    predictor: Predictor,
    images: Sequence[np.ndarray],
    tile: int,
    tolerance: float = 0.01,
    candidates: Sequence[int] = (0, 32, 64, 96, 128, 160, 192, 256),
    channels: Sequence[int] | None = None,
) -> tuple[int, list[ContextMeasurement]]:
    """Smallest context (multiple of 32) whose tiled maps are within ``tolerance`` of whole-image maps.

    Parameters
    ----------
    predictor : Predictor
        The network wrapped for inference.
    images : sequence of ndarray
        RGB uint8 images at the model's pixel size, each larger than a few tiles.
    tile : int
        Tile core size to test (the card's).
    tolerance : float
        Largest allowed absolute probability difference at any pixel.
    candidates : sequence of int
        Contexts to try, ascending.
    channels : sequence of int, optional
        Maps compared (default all); a detect-segment model's continuous detection map alone
        (:func:`measure_anchored_context`).

    Returns
    -------
    context : int
        The smallest passing candidate (the largest candidate if none passes, with a warning).
    measurements : list of ContextMeasurement
        One per candidate tried.

    Notes
    -----
    The whole-image reference is padded by at least two tiles, so that its own image-edge padding
    matches tiled inference within the image. Both runs use the same quantisation to uint8.
    """
    if any(c % STRIDE for c in candidates):
        raise ValueError(f"context candidates must be multiples of {STRIDE}")
    out: list[ContextMeasurement] = []
    for c in candidates:
        m = compare_context(predictor, images, tile, c, channels)
        out.append(m)
        log.info("context %d px: max |tiled - whole| = %.4f, mean %.5f", c, m.max_abs, m.mean_abs)
        if m.max_abs <= tolerance:
            return c, out
    log.warning("no candidate context reached tolerance %.3f; using %d px", tolerance, candidates[-1])
    return candidates[-1], out


def measure_anchored_context(predictor: Predictor, images: Sequence[np.ndarray], tile: int, tolerance: float = 0.01,
                             candidates: Sequence[int] = (0, 32, 64, 96, 128, 160, 192, 256)) -> tuple[int, int]:
    """Context of a detect-segment model: its detection map's measured context plus what its decisions reach.

    A tile's maps need the detections anchored within the mask window's reach of its core, and each of those is
    decided by the detections within the non-maximum radius of it; those detections must see what a whole-image
    run sees. So the context is the smallest candidate whose tiled detection map (the ``centre`` map, the
    network's own continuous output) is within ``tolerance`` of the whole-image one, plus ``reach + radius``,
    rounded up to a multiple of the stride.

    Returns
    -------
    context : int
        For the card.
    measured : int
        The detection map's own context.
    """
    from ..engine.anchored import anchored_params

    measured, _ = measure_context(predictor, images, tile, tolerance, candidates, channels=(1,))
    params = anchored_params(predictor.card, predictor.card.mpp)
    extra = params.reach + math.ceil(predictor.card.thresholds["peak_radius_um"] / predictor.card.mpp)
    return -(-(measured + extra) // STRIDE) * STRIDE, measured


def context_images(images: Sequence[np.ndarray], side: int = 256, count: int = 2) -> list[np.ndarray]:
    """Up to ``count`` images of at least ``side`` px on both sides to measure a context on.

    Images that large are used as they are. Otherwise (small images at a region model's low magnification, e.g.
    GlaS at 2.5 µm/px, 192 x 129 px) consecutive images are cropped to their common size and tiled into 2 x 2,
    3 x 3, ... mosaics until large enough: a mosaic's seams are image content like any other for the question
    "how far does a pixel's output look". Empty when even a mosaic of every image is too small.

    Examples
    --------
    >>> small = [np.full((150, 200, 3), i, np.uint8) for i in range(8)]
    >>> [m.shape for m in context_images(small)]
    [(300, 400, 3), (300, 400, 3)]
    """
    large = [im for im in images if min(im.shape[:2]) >= side][:count]
    if large or not images:
        return large
    for k in range(2, math.isqrt(len(images)) + 1):
        h = min(im.shape[0] for im in images)
        w = min(im.shape[1] for im in images)
        if min(k * h, k * w) < side:
            continue
        groups = [images[i : i + k * k] for i in range(0, len(images) - k * k + 1, k * k)][:count]
        return [np.concatenate([np.concatenate([im[:h, :w] for im in g[r * k : (r + 1) * k]], axis=1)
                                for r in range(k)], axis=0) for g in groups]
    return []

