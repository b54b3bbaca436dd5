"""Centre-heatmap targets: a Gaussian bump at every clicked nucleus centre."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def centre_heatmap(points_rc: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Heatmap with value 1 at each point, falling off as a Gaussian of the distance to the nearest point.

    Parameters
    ----------
    points_rc : ndarray, shape (n, 2)
        Point positions (row, col) in pixel-centre coordinates; rounded to the nearest pixel.
        Points outside ``shape`` are ignored.
    shape : (int, int)
        Output shape.
    sigma : float
        Gaussian sigma in pixels.

    Returns
    -------
    ndarray of float32
        ``exp(-d^2 / (2 sigma^2))`` with ``d`` the Euclidean distance to the nearest point; zeros if no point.

    Examples
    --------
    >>> h = centre_heatmap(np.array([[2, 2]]), (5, 5), sigma=1.0)
    >>> float(h[2, 2]), round(float(h[2, 3]), 4)
    (1.0, 0.6065)
    """
    pts = np.rint(np.asarray(points_rc, dtype=np.float64)).astype(np.int64).reshape(-1, 2)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < shape[0]) & (pts[:, 1] >= 0) & (pts[:, 1] < shape[1])
    pts = pts[inside]
    if len(pts) == 0:
        return np.zeros(shape, np.float32)
    seeds = np.ones(shape, bool)
    seeds[pts[:, 0], pts[:, 1]] = False
    d = ndi.distance_transform_edt(seeds)
    return np.exp(-(d**2) / (2.0 * sigma**2)).astype(np.float32)


def label_centroids(labels: np.ndarray) -> np.ndarray:
    """Centroids (row, col) of the instances of a label image, in label order (empty labels skipped)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.empty((0, 2))
    return np.asarray(ndi.center_of_mass(np.ones(labels.shape), labels, ids), dtype=np.float64).reshape(-1, 2)


def jitter_points(points_rc: np.ndarray, radius: float, seed: int) -> np.ndarray:
    """Click noise for robustness studies: each point moved uniformly within a disk of ``radius`` pixels.

    Real clicks are not bounding-box centres; ``points.jitter_um`` in a training config uses this to train
    from simulated clicks (issue 11). The draw is seeded (``numpy.random.default_rng(seed)``), uniform in
    area (radius ``r * sqrt(u)``); ``radius <= 0`` returns a copy.

    Examples
    --------
    >>> p = np.zeros((1000, 2))
    >>> d = np.hypot(*jitter_points(p, 3.0, seed=0).T)
    >>> bool(d.max() <= 3.0), bool(abs(np.median(d) - 3.0 / np.sqrt(2)) < 0.2)
    (True, True)
    """
    pts = np.array(points_rc, dtype=np.float64, copy=True).reshape(-1, 2)
    if radius <= 0 or len(pts) == 0:
        return pts
    rng = np.random.default_rng(seed)
    r = radius * np.sqrt(rng.uniform(0.0, 1.0, len(pts)))
    theta = rng.uniform(0.0, 2.0 * np.pi, len(pts))
    return pts + np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)


def distance_centres(mask: np.ndarray) -> np.ndarray:
    """Centre targets from a foreground mask: each component's distance transform over its own maximum.

    The scribbles recipe's centre target (scribbles give no centres): for every 8-connected component of
    ``mask``, the Euclidean distance of its pixels to the nearest background pixel divided by the largest such
    distance in the component, so every component peaks at 1 on its medial axis and falls to ``1 / max``
    on its rim; 0 off the mask. Touching nuclei merged into one component keep a peak in each lobe and a
    valley at the neck, which the engine's geodesic rule splits along.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)

    Returns
    -------
    ndarray of float32, shape (H, W)

    Examples
    --------
    >>> m = np.zeros((5, 7), bool); m[1:4, 1:4] = True; m[2, 5] = True
    >>> distance_centres(m)[2]
    array([0. , 0.5, 1. , 0.5, 0. , 1. , 0. ], dtype=float32)
    """
    mask = np.asarray(mask, bool)
    dist = ndi.distance_transform_edt(mask)
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros(mask.shape, np.float32)
    peak = ndi.maximum(dist, labels, np.arange(1, n + 1))
    scale = np.concatenate([[1.0], np.asarray(peak, np.float64)])
    return (dist / scale[labels]).astype(np.float32)
