"""Simulated scribbles from instance masks (Scribble2Label's evaluation protocol, issue 15).

Strokes run along the skeleton of every nucleus and along the skeleton of the background
(:func:`skimage.morphology.skeletonize`). Each skeleton is cut into chains of 8-adjacent pixels;
of a chain of ``L`` pixels one contiguous run of ``floor(fraction * L + u)`` pixels is kept
(``u`` uniform in [0, 1): the expected share kept is exactly ``fraction``), starting at a random
position. Randomness comes from one seeded generator, so a seed gives the same strokes.

The output is a QuPath GeoJSON FeatureCollection of ``LineString`` annotations through the kept
pixel centres, in level-0 pixels of the mask's grid (pixel ``(r, c)`` has centre
``(c + 0.5, r + 0.5)``), classified ``Nucleus`` or ``Background``, so training reads it through the
real import path (:func:`~wsi_weakseg.weak.scribbles.read_scribbles`). Rasterised with a width of
1 px at the mask's pixel size, the strokes cover exactly the kept skeleton pixels. Masks feed only
this simulator and validation, never a training target.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from wsi_weakseg.errors import ConfigError

__all__ = ["FRACTIONS", "skeleton_chains", "simulate_scribbles"]

log = logging.getLogger(__name__)

#: Scribble amounts of the paper (share of skeleton pixels kept).
FRACTIONS: tuple[float, ...] = (0.1, 0.3, 0.5, 1.0)

_COLOURS = {"Nucleus": [200, 0, 0], "Background": [0, 160, 0]}
# 4-neighbours first, so chains prefer straight steps.
_STEPS = ((0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))


def _walk(pixels: set[tuple[int, int]], start: tuple[int, int]) -> list[tuple[int, int]]:
    """Remove and return a chain of 8-adjacent pixels from ``pixels``, greedily from ``start``."""
    chain = [start]
    pixels.discard(start)
    r, c = start
    while True:
        for dr, dc in _STEPS:
            nxt = (r + dr, c + dc)
            if nxt in pixels:
                pixels.discard(nxt)
                chain.append(nxt)
                r, c = nxt
                break
        else:
            return chain


def _chains_of(skeleton: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[np.ndarray]:
    """Chains ((n, 2) int arrays of (row, col)) covering every skeleton pixel once; ends first."""
    skel = skeleton.astype(bool)
    degree = ndi.convolve(skel.astype(np.uint8), np.ones((3, 3), np.uint8), mode="constant") - 1
    rr, cc = np.nonzero(skel)
    ends = degree[rr, cc] <= 1
    order = np.concatenate([np.flatnonzero(ends), np.flatnonzero(~ends)])  # row-major within each group
    pixels = set(zip(rr.tolist(), cc.tolist()))
    chains = []
    for i in order:
        start = (int(rr[i]), int(cc[i]))
        if start in pixels:
            chains.append(np.asarray(_walk(pixels, start), dtype=np.int64) + np.asarray(offset))
    return chains


def skeleton_chains(label_map: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Skeleton chains of every nucleus (label > 0, one skeleton per instance) and of the background.

    Returns
    -------
    dict
        ``{"Nucleus": [...], "Background": [...]}``, lists of (n, 2) int64 (row, col) arrays.
    """
    labels = np.asarray(label_map)
    if labels.ndim != 2:
        raise ConfigError(f"label map must be 2-D, got shape {labels.shape}")
    nuclei: list[np.ndarray] = []
    for index, sl in enumerate(ndi.find_objects(labels.astype(np.int64, copy=False))):
        if sl is None:
            continue
        r0, c0 = max(sl[0].start - 1, 0), max(sl[1].start - 1, 0)
        window = labels[r0 : sl[0].stop + 1, c0 : sl[1].stop + 1] == index + 1
        nuclei.extend(_chains_of(skeletonize(window), (r0, c0)))
    background = _chains_of(skeletonize(labels == 0))
    return {"Nucleus": nuclei, "Background": background}


def _keep_run(chain: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """One contiguous run of ``floor(fraction * len + u)`` pixels of ``chain`` at a random start."""
    n = min(len(chain), math.floor(fraction * len(chain) + rng.random()))
    if n <= 0:
        return chain[:0]
    start = int(rng.integers(0, len(chain) - n + 1))
    return chain[start : start + n]


def _feature(run: np.ndarray, cls: str) -> dict[str, Any]:
    xy = (run[:, ::-1] + 0.5).tolist()
    if len(xy) == 1:  # a one-pixel run: a zero-length line, rasterised as a dot
        xy = xy * 2
    return {
        "type": "Feature",
        "geometry": {"type": "LineString", "coordinates": xy},
        "properties": {"objectType": "annotation", "classification": {"name": cls, "color": _COLOURS[cls]}},
    }


def simulate_scribbles(label_map: np.ndarray, fraction: float, seed: int) -> dict[str, Any]:
    """Simulate nucleus and background scribbles from an instance label map.

    Parameters
    ----------
    label_map : ndarray, shape (rows, cols)
        Instance labels (0 background, 1..n nuclei).
    fraction : float
        Share of skeleton pixels to keep, in (0, 1] (the paper's amounts: :data:`FRACTIONS`).
    seed : int
        Seed of the generator choosing run lengths and positions.

    Returns
    -------
    dict
        A GeoJSON FeatureCollection of ``LineString`` annotations (``Nucleus`` or ``Background``).
    """
    if not (0.0 < float(fraction) <= 1.0):
        raise ConfigError(f"fraction must be in (0, 1], got {fraction!r}")
    rng = np.random.default_rng(seed)
    features = []
    kept = total = 0
    for cls, chains in skeleton_chains(label_map).items():
        for chain in chains:
            run = _keep_run(chain, float(fraction), rng)
            total += len(chain)
            kept += len(run)
            if len(run):
                features.append(_feature(run, cls))
    log.debug("simulated %d strokes: kept %d of %d skeleton pixels (fraction %.2f)", len(features), kept, total,
              fraction)
    return {"type": "FeatureCollection", "features": features}
