"""Stain separation: the hematoxylin (H) optical density of an H&E image, by Macenko's method.

Conventions
-----------
* Optical density (OD) uses the natural logarithm and a white level of 255 for ``uint8`` images
  (1.0 for float images in [0, 1]): ``OD = -ln(max(I, 1) / 255)``.
* A *stain matrix* has one row per stain, each row the unit OD vector (R, G, B) of that stain,
  in the order H, E, residual -- the same layout as :data:`skimage.color.rgb_from_hed`.
  Concentrations are ``C = OD @ inv(M)``. A 2x3 matrix (H, E) is completed with the unit cross
  product as third row.

Why Macenko and not the NMF/sparse-NMF separation (Vahadane) used by the paper: Macenko's
estimate is closed form (one eigen-decomposition and two percentiles), so it is deterministic,
needs no iterative optimisation or dictionary-learning solver, runs in well under a second on a
1000x1000 tile, and yields one small matrix per image or slide that callers can record and reuse
(e.g. estimate once per slide on a thumbnail, then pass ``stain_matrix`` for every tile). When
too few tissue pixels are available it falls back, with a logged warning, to the fixed
Ruifrok-Johnston matrix of :mod:`skimage.color`.

References
----------
.. [1] Macenko et al., "A method for normalizing histology slides for quantitative analysis",
       ISBI 2009.
.. [2] Ruifrok & Johnston, "Quantification of histochemical staining by color deconvolution",
       Anal. Quant. Cytol. Histol. 23 (2001).
"""

from __future__ import annotations

import logging

import numpy as np
from skimage.color import rgb_from_hed

__all__ = ["RUIFROK_HE", "estimate_stain_matrix", "hematoxylin", "optical_density"]

log = logging.getLogger(__name__)

#: Fixed Ruifrok-Johnston H&E stain matrix (rows H, E, residual; unit OD vectors), from
#: :data:`skimage.color.rgb_from_hed` with the DAB row replaced by the H x E residual.
RUIFROK_HE: np.ndarray


def _complete(m: np.ndarray) -> np.ndarray:
    """Normalise rows; complete a 2x3 (H, E) matrix with the unit cross product as third row."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape not in ((2, 3), (3, 3)):
        raise ValueError(f"stain matrix must be 2x3 or 3x3 (rows = stains), got shape {m.shape}")
    he = m[:2] / np.linalg.norm(m[:2], axis=1, keepdims=True)
    third = np.cross(he[0], he[1]) if m.shape[0] == 2 else m[2]
    n = np.linalg.norm(third)
    if n < 1e-12:
        raise ValueError("stain matrix rows are linearly dependent")
    out = np.vstack([he, third / n])
    if abs(np.linalg.det(out)) < 1e-6:
        raise ValueError("stain matrix is singular")
    return out


RUIFROK_HE = _complete(rgb_from_hed[:2])
RUIFROK_HE.setflags(write=False)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel optical density ``-ln(I / I0)`` (float32, shape ``(..., 3)``).

    ``uint8`` images use ``I0 = 255`` and are clipped below at 1; float images must be in [0, 1]
    (``I0 = 1``, clipped below at 1/255). An alpha channel, if present, is dropped.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim < 1 or rgb.shape[-1] not in (3, 4):
        raise ValueError(f"expected an RGB(A) image with channels last, got shape {rgb.shape}")
    rgb = rgb[..., :3]
    if rgb.dtype == np.uint8:
        x = np.maximum(rgb.astype(np.float32), 1.0) / np.float32(255.0)
    elif np.issubdtype(rgb.dtype, np.floating):
        x = np.clip(rgb.astype(np.float32), 1.0 / 255.0, 1.0)
    else:
        raise TypeError(f"expected uint8 or float RGB, got {rgb.dtype}")
    return -np.log(x)


def estimate_stain_matrix(
    rgb: np.ndarray,
    *,
    od_threshold: float = 0.15,
    percentile: float = 1.0,
    min_pixels: int = 500,
    max_pixels: int = 1_000_000,
    seed: int = 0,
) -> np.ndarray:
    """Estimate the H&E stain matrix of one image (or slide thumbnail) by Macenko's method.

    Parameters
    ----------
    rgb : ndarray, shape (rows, cols, 3)
        H&E image, ``uint8`` or float in [0, 1].
    od_threshold : float
        Tissue pixels are those whose OD exceeds this in every channel (Macenko's beta).
    percentile : float
        The two stain vectors are taken at the ``percentile`` and ``100 - percentile`` angle
        percentiles in the plane of the two leading OD eigenvectors (Macenko's alpha).
    min_pixels : int
        Fewer tissue pixels than this -> fall back to :data:`RUIFROK_HE` with a warning.
    max_pixels : int
        At most this many tissue pixels (a seeded random subset) enter the estimate.
    seed : int
        Seed of that subset; the result is deterministic.

    Returns
    -------
    ndarray, shape (3, 3), float64
        Rows H, E, residual: unit OD vectors (see module conventions).

    Notes
    -----
    H is told from E by its larger red OD component (hematoxylin absorbs red, eosin does not).
    The estimate also falls back to the fixed matrix when the two extreme vectors are nearly
    parallel (< 5 degrees apart) or have a negative component, which happens on non-H&E images.
    """
    od = optical_density(rgb).reshape(-1, 3)
    od = od[np.all(od > od_threshold, axis=1)]
    if len(od) < min_pixels:
        log.warning(
            "stain estimation: %d tissue pixels (< %d); using the fixed Ruifrok-Johnston matrix",
            len(od),
            min_pixels,
        )
        return RUIFROK_HE.copy()
    if len(od) > max_pixels:
        idx = np.random.default_rng(seed).choice(len(od), size=max_pixels, replace=False)
        od = od[np.sort(idx)]
    od = od.astype(np.float64)
    # Plane of the two leading eigenvectors of the OD covariance (Macenko uses the non-centred
    # scatter matrix; we do the same so that the plane passes through the origin).
    _, vecs = np.linalg.eigh(od.T @ od / len(od))
    plane = vecs[:, [2, 1]]  # largest eigenvalue first
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # deterministic sign: point into OD > 0
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [percentile, 100.0 - percentile])
    v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
    h, e = (v_lo, v_hi) if v_lo[0] > v_hi[0] else (v_hi, v_lo)
    h, e = h / np.linalg.norm(h), e / np.linalg.norm(e)
    angle = np.degrees(np.arccos(np.clip(h @ e, -1.0, 1.0)))
    if angle < 5.0 or (h < -1e-3).any() or (e < -1e-3).any():
        log.warning(
            "stain estimation degenerate (angle %.1f deg, H=%s, E=%s); using the fixed "
            "Ruifrok-Johnston matrix",
            angle,
            np.round(h, 3),
            np.round(e, 3),
        )
        return RUIFROK_HE.copy()
    return _complete(np.vstack([h, e]))


def hematoxylin(rgb: np.ndarray, stain_matrix: np.ndarray | None = None) -> np.ndarray:
    """Hematoxylin concentration (OD units, float32, >= 0) of every pixel.

    Parameters
    ----------
    rgb : ndarray, shape (rows, cols, 3)
        H&E image, ``uint8`` or float in [0, 1].
    stain_matrix : ndarray (2x3 or 3x3), optional
        Rows = stain OD vectors, H first (module conventions). ``None`` estimates it from
        ``rgb`` itself with :func:`estimate_stain_matrix`; for tiles of one slide, estimate once
        per slide and pass it, so that all tiles share (and can record) the same matrix.

    Returns
    -------
    ndarray of float32, shape (rows, cols)
        The H row of ``OD @ inv(M)``, clipped below at 0.

    Examples
    --------
    >>> od = 0.8 * RUIFROK_HE[0] + 0.3 * RUIFROK_HE[1]
    >>> pixel = np.exp(-od).reshape(1, 1, 3)
    >>> round(float(hematoxylin(pixel, RUIFROK_HE)[0, 0]), 3)
    0.8
    """
    m = estimate_stain_matrix(rgb) if stain_matrix is None else _complete(stain_matrix)
    od = optical_density(rgb)
    h = od @ np.linalg.inv(m)[:, 0].astype(np.float32)
    return np.maximum(h, 0.0).astype(np.float32, copy=False)
