"""A synthetic H&E-like slide for the demo and for tests that need a slide with known nuclei."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi


def synthetic_he(size: tuple[int, int] = (1536, 2048), mpp: float = 0.5, seed: int = 0) -> tuple[np.ndarray, int]:
    """An RGB image of pink stroma with purple nuclei inside an elliptical tissue piece on white glass.

    Parameters
    ----------
    size : (height, width)
        Image size in pixels.
    mpp : float
        Pixel size the nuclei sizes (5-9 µm diameter) are drawn for.
    seed : int
        Random seed; the same seed gives the same image.

    Returns
    -------
    rgb : ndarray of uint8, shape (height, width, 3)
    n_nuclei : int
        Number of nuclei drawn.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    tissue = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.44 * w)) ** 2 < 1.0
    rgb = np.empty((h, w, 3), np.float32)
    rgb[:] = (242, 240, 244)  # glass
    stroma = np.array([232, 168, 200], np.float32)
    nucleus = np.array([92, 60, 140], np.float32)
    rgb[tissue] = stroma
    density = np.zeros((h, w), np.float32)
    n = 0
    area = tissue.sum() * mpp**2
    for _ in range(int(area / 150.0)):  # about one nucleus per 150 µm²
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if not tissue[int(cy), int(cx)]:
            continue
        a, b = rng.uniform(2.5, 4.5, size=2) / mpp
        t = rng.uniform(0, np.pi)
        r0, r1 = int(max(cy - 10 / mpp, 0)), int(min(cy + 10 / mpp, h))
        c0, c1 = int(max(cx - 10 / mpp, 0)), int(min(cx + 10 / mpp, w))
        dy, dx = yy[r0:r1, c0:c1] - cy, xx[r0:r1, c0:c1] - cx
        u, v = dx * np.cos(t) + dy * np.sin(t), -dx * np.sin(t) + dy * np.cos(t)
        density[r0:r1, c0:c1] = np.maximum(density[r0:r1, c0:c1], ((u / a) ** 2 + (v / b) ** 2 < 1).astype(np.float32))
        n += 1
    density = ndi.gaussian_filter(density, 0.6 / mpp * 0.5)
    rgb = rgb * (1 - density[..., None]) + nucleus * density[..., None]
    rgb += rng.normal(0, 6, size=rgb.shape).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8), n


def write_demo_slide(path: str | os.PathLike, mpp: float = 0.5, seed: int = 0) -> tuple[Path, int]:
    """Write :func:`synthetic_he` as a pyramidal tiled TIFF with resolution tags; return path and nucleus count."""
    from .slide.testing import write_pyramid_tiff

    rgb, n = synthetic_he(mpp=mpp, seed=seed)
    return write_pyramid_tiff(path, rgb, mpp, levels=3, tile=256, compression="jpeg"), n
