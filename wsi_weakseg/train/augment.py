"""Training-patch sampling and augmentation, applied identically to an image and its target maps.

Crop, zoom (scale), flips, 90-degree rotations on image and targets together; HED stain augmentation and
colour jitter on the image only. Class-label maps (Voronoi, cluster: 0 background, 1 nucleus, 2 ignored) are resampled by nearest
neighbour, continuous maps (centre heatmap, pseudo labels) bilinearly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.color import hed_from_rgb, rgb_from_hed

#: Shift of the HED stain augmentation per unit of ``stain``, in optical density (natural log): a typical
#: hematoxylin pixel is 0.2-1.
STAIN_SHIFT = 0.1


@dataclass(frozen=True)
class AugmentParams:
    """What to apply. ``scale`` is the zoom range (> 1 magnifies)."""

    flip: bool = True
    rotate90: bool = True
    scale: tuple[float, float] = (0.8, 1.25)
    color_jitter: float = 0.05
    stain: float = 0.0

    @classmethod
    def from_config(cls, cfg: Mapping) -> AugmentParams:
        return cls(bool(cfg["flip"]), bool(cfg["rotate90"]), tuple(cfg["scale"]), float(cfg["color_jitter"]),
                   float(cfg.get("stain", 0.0)))


def stain_augment(rgb: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Perturb the H, E and D optical densities of ``rgb`` (float, 0-255): ``od * scale + shift`` per channel.

    Colour deconvolution with Ruifrok and Johnston's fixed H&E-DAB matrix (skimage's ``hed_from_rgb``), the
    HED augmentation of Tellez et al. (2018): it simulates paler or darker hematoxylin and eosin than the
    training slides have, which plain RGB jitter does not. Optical density is ``-ln((rgb + 1) / 256)`` and the
    stain amounts are not clipped, so ``scale = 1, shift = 0`` returns ``rgb`` (to float precision). Returns
    float 0-255.
    """
    od = -np.log((np.clip(rgb, 0, 255) + 1.0) / 256.0)
    stains = od @ hed_from_rgb
    stains = stains * np.asarray(scale, np.float64) + np.asarray(shift, np.float64)
    return np.clip(256.0 * np.exp(-(stains @ rgb_from_hed)) - 1.0, 0.0, 255.0)


def _resample(arr: np.ndarray, y0: float, x0: float, step: float, size: int, order: int) -> np.ndarray:
    """Sample ``size x size`` points of ``arr`` (H, W[, C]) starting at pixel centre (y0, x0), ``step`` apart."""
    coords = np.arange(size) * step
    yy, xx = np.meshgrid(y0 + coords, x0 + coords, indexing="ij")
    if arr.ndim == 2:
        return ndi.map_coordinates(arr, [yy, xx], order=order, mode="mirror")
    return np.stack([ndi.map_coordinates(arr[..., c], [yy, xx], order=order, mode="mirror") for c in range(arr.shape[2])], axis=-1)


def sample_patch(
    rng: np.random.Generator,
    image: np.ndarray,
    targets: Mapping[str, np.ndarray],
    size: int,
    params: AugmentParams,
    nearest: frozenset[str] = frozenset({"voronoi", "cluster"}),
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A random augmented ``size x size`` patch of ``image`` (uint8 RGB) and of every target map.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness (so a saved generator state replays the same patches).
    image : ndarray (H, W, 3) uint8
    targets : mapping of name -> ndarray (H, W)
    size : int
        Patch side in pixels.
    params : AugmentParams
    nearest : set of str
        Targets resampled by nearest neighbour (class-label maps).

    Returns
    -------
    image_patch : ndarray (size, size, 3) uint8
    target_patches : dict of name -> ndarray (size, size)
    """
    h, w = image.shape[:2]
    lo, hi = params.scale
    zoom = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)
    step = 1.0 / zoom  # source pixels per patch pixel
    span = size * step
    if zoom == 1.0:  # whole-pixel crop: no resampling at all
        y0 = float(rng.integers(0, max(h - size, 0) + 1))
        x0 = float(rng.integers(0, max(w - size, 0) + 1))
    else:
        y0 = float(rng.uniform(0, max(h - span, 0)))
        x0 = float(rng.uniform(0, max(w - span, 0)))
    k = int(rng.integers(4)) if params.rotate90 else 0
    fy = bool(rng.integers(2)) if params.flip else False
    fx = bool(rng.integers(2)) if params.flip else False
    gain = 1.0 + rng.uniform(-params.color_jitter, params.color_jitter, size=3)
    bias = 255.0 * rng.uniform(-params.color_jitter, params.color_jitter, size=3)

    def geo(a: np.ndarray) -> np.ndarray:
        if fy:
            a = a[::-1]
        if fx:
            a = a[:, ::-1]
        return np.ascontiguousarray(np.rot90(a, k))

    if zoom == 1.0 and h >= size and w >= size:
        yi, xi = int(y0), int(x0)
        img = image[yi : yi + size, xi : xi + size].astype(np.float32)
        out = {n: t[yi : yi + size, xi : xi + size] for n, t in targets.items()}
    else:
        img = _resample(image.astype(np.float32), y0, x0, step, size, order=1)
        out = {n: _resample(t, y0, x0, step, size, order=0 if n in nearest else 1) for n, t in targets.items()}
    if params.stain > 0:  # drawn only when enabled: the random stream of runs without it is unchanged
        st_scale = rng.uniform(1 - params.stain, 1 + params.stain, size=3)
        st_shift = rng.uniform(-params.stain, params.stain, size=3) * STAIN_SHIFT
        img = stain_augment(img, st_scale, st_shift)
    if params.color_jitter > 0:
        img = img * gain + bias
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return geo(img), {n: geo(t) for n, t in out.items()}
