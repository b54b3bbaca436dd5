"""Cluster labels from point clicks: distance-aware k-means on colour (Qu et al., MICCAI 2019 / TMI 2020).

Every pixel gets the feature vector

``[d, c_1, ..., c_m]`` with ``d = min(dist_to_nearest_point, clip) / clip`` (``clip = clip_um / mpp``,
5 um = 20 px at 0.25 um/px as in Qu et al.), and colour features in [0, 1]: ``R/255, G/255, B/255``
(``colour="rgb"``), the hematoxylin OD ``min(H / H_p99, 1)`` (``colour="h"``), or both
(``colour="rgb+h"``), each multiplied by ``colour_weight``. Distance and colour thus span
comparable ranges (Qu et al. use ``dist`` clipped at 20 and ``RGB / 10``, i.e. 0-20 and 0-25.5,
the same ratio).

Default ``colour="h", colour_weight=0.5``, chosen on the 30 MoNuSeg training images (0.25 um/px,
points = bounding-box centres of the ground-truth nuclei), mean over images:

=================  =========  ======  =============  =======  ===============  =========
colour (weight)    nucl prec  recall  bg precision   ignored  wrong / superv.  points in
=================  =========  ======  =============  =======  ===============  =========
rgb (1.0, paper)   0.784      0.723   0.975          0.322    0.094            1.000
h (0.5, default)   0.850      0.626   0.970          0.227    0.060            1.000
rgb+h (0.5)        0.797      0.736   0.975          0.313    0.083            0.998
=================  =========  ======  =============  =======  ===============  =========

("wrong / superv.": supervised pixels whose class disagrees with the ground truth; "points in":
points inside a NUCLEUS component.) H gives the fewest wrongly supervised pixels and supervises
more of the image, at the price of shrunken nuclei (lower recall); larger H weights lose points
from the nuclei cluster on some images (weight 0.75: only 69% on TCGA-G9-6348). "rgb" follows
the paper but is the least stable: rounding the features to float32 alone moved its mean recall
from 0.80 to 0.72 (k-means lands in another local optimum on some images).

k-means (k-means++ initialisation + Lloyd iterations, numpy, fixed seed) runs on
a seeded random subsample of pixels and then assigns every pixel to its nearest centre.

The cluster with the smallest mean ``d`` is *nuclei*, the largest *background*, any other is
*ignored*. Refinement, all in pixels scaled from micrometres with ``mpp``:

1. morphological opening of the nuclei cluster (disk of ``opening_um``),
2. connected components *within each Voronoi cell* (touching nuclei split at the Voronoi edges),
3. in each cell keep only the component containing the cell's point -- this removes the
   "scattered regions" without a point; a point whose own pixel is not in the cluster keeps
   instead the nearest component of its cell if it is within ``snap_um``,
4. holes filled per kept component.

Background = background cluster, farther than ``exclusion_um`` from every point and not a kept
nucleus. The result uses the :mod:`~wsi_weakseg.weak.voronoi` encoding (0 BACKGROUND, 1 NUCLEUS,
2 IGNORE).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as cc_label
from skimage.morphology import disk

from .stain import hematoxylin
from .voronoi import BACKGROUND, IGNORE, NUCLEUS, _nearest, _point_pixels

__all__ = ["cluster_label", "ignore_ring", "kmeans"]

_COLOURS = ("rgb", "h", "rgb+h")


def kmeans(
    x: np.ndarray, k: int, *, seed: int = 0, max_iter: int = 100, tol: float = 1e-6
) -> np.ndarray:
    """k-means centres of the rows of ``x``: k-means++ initialisation then Lloyd iterations.

    Deterministic for a given ``seed`` (numpy ``default_rng``). Returns ``(k, n_features)``
    float64 centres. A centre that loses all its points keeps its previous position.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < k:
        raise ValueError(f"k-means needs at least k={k} samples, got {n}")
    rng = np.random.default_rng(seed)
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for j in range(1, k):
        total = d2.sum()
        i = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centres[j] = x[i]
        d2 = np.minimum(d2, ((x - centres[j]) ** 2).sum(axis=1))
    for _ in range(max_iter):
        assign = _assign(x, centres)
        new = centres.copy()
        for j in range(k):
            members = assign == j
            if members.any():
                new[j] = x[members].mean(axis=0)
        shift = np.abs(new - centres).max()
        centres = new
        if shift <= tol:
            break
    return centres


def _assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of every row of ``x``."""
    c = centres.astype(x.dtype, copy=False)
    d2 = (c * c).sum(axis=1)[None] - 2.0 * (x @ c.T)  # |x|^2 is the same for every centre
    return d2.argmin(axis=1)


def _features(rgb, h, dist, clip_px, colour, colour_weight):
    """Pixel features (float32, one row per pixel; see module docstring)."""
    feats = [np.minimum(dist, clip_px).reshape(-1, 1) / clip_px]
    if colour in ("rgb", "rgb+h"):
        feats.append(rgb[..., :3].reshape(-1, 3).astype(np.float64) * (colour_weight / 255.0))
    if colour in ("h", "rgb+h"):
        hf = np.asarray(h, dtype=np.float64).reshape(-1, 1)
        scale = np.percentile(hf, 99.0)
        feats.append(np.minimum(hf / scale, 1.0) * colour_weight if scale > 0 else np.zeros_like(hf))
    return np.concatenate(feats, axis=1).astype(np.float32)


def cluster_label(
    rgb: np.ndarray,
    points_rc: np.ndarray,
    *,
    mpp: float,
    h: np.ndarray | None = None,
    k: int = 3,
    seed: int = 0,
    colour: str = "h",
    colour_weight: float = 0.5,
    clip_um: float = 5.0,
    opening_um: float = 0.5,
    exclusion_um: float = 2.5,
    snap_um: float = 2.5,
    sample_size: int = 20_000,
) -> np.ndarray:
    """Cluster label of one H&E image from its point clicks (see module docstring).

    Parameters
    ----------
    rgb : ndarray, shape (rows, cols, 3), uint8
        H&E image.
    points_rc : ndarray, shape (n, 2)
        Clicked nucleus centres (row, col), pixel-centre coordinates.
    mpp : float
        Pixel size (micrometres per pixel); all ``*_um`` lengths are converted with it.
    h : ndarray (rows, cols), optional
        Hematoxylin OD (:func:`~wsi_weakseg.weak.stain.hematoxylin`); computed from ``rgb`` when
        needed and not given (pass it to use a per-slide stain matrix).
    k : int
        Number of clusters (>= 2); the paper uses 3.
    seed : int
        Seed of the pixel subsample and the k-means++ initialisation.
    colour : {"rgb", "h", "rgb+h"}
        Colour features next to the distance (see module docstring; "h" measured best).
    colour_weight : float
        Multiplier of the colour features relative to the [0, 1] distance feature.
    clip_um, opening_um, exclusion_um, snap_um : float
        Distance clip, opening radius, no-background radius around points, and how far a point
        outside the nuclei cluster looks for a component of its own cell.
    sample_size : int
        Pixels (seeded random subset) used to fit k-means; all pixels are then assigned.

    Returns
    -------
    ndarray of uint8, shape (rows, cols)
        0 = BACKGROUND, 1 = NUCLEUS, 2 = IGNORE. All IGNORE if there is no point.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an RGB image (rows, cols, 3), got shape {rgb.shape}")
    if colour not in _COLOURS:
        raise ValueError(f"colour must be one of {_COLOURS}, got {colour!r}")
    if not mpp > 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    shape = rgb.shape[:2]
    cells, dist = _nearest(points_rc, shape)
    pix, idx = _point_pixels(points_rc, shape)
    out = np.full(shape, IGNORE, np.uint8)
    if len(pix) == 0:
        return out
    if colour != "rgb" and h is None:
        h = hematoxylin(rgb)
    if h is not None and np.shape(h) != shape:
        raise ValueError(f"h has shape {np.shape(h)}, expected {shape}")

    clip_px = max(clip_um / mpp, 1.0)
    x = _features(rgb, h, dist, clip_px, colour, colour_weight)
    rng = np.random.default_rng(seed)
    sample = x if len(x) <= sample_size else x[rng.choice(len(x), size=sample_size, replace=False)]
    centres = kmeans(sample, k, seed=seed)
    assign = _assign(x, centres).reshape(shape)
    order = np.argsort(centres[:, 0], kind="stable")  # by mean clipped distance
    nuclei = assign == order[0]
    background = assign == order[-1]

    r_open = int(round(opening_um / mpp))
    if r_open > 0:
        nuclei = ndi.binary_opening(nuclei, structure=disk(r_open))
    comps = cc_label(np.where(nuclei, cells, 0), background=0, connectivity=1)
    own = comps[pix[:, 0], pix[:, 1]]
    snap_px = snap_um / mpp
    for j in np.flatnonzero(own == 0):
        own[j] = _nearest_component(comps, cells, pix[j], idx[j] + 1, snap_px)
    keep = np.unique(own[own > 0])

    kept = np.zeros(shape, bool)
    slices = ndi.find_objects(comps)
    for c in keep:
        sl = slices[c - 1]
        kept[sl] |= ndi.binary_fill_holes(comps[sl] == c)

    out[background & (dist > exclusion_um / mpp) & ~kept] = BACKGROUND
    out[kept] = NUCLEUS
    return out


def _nearest_component(comps, cells, p, cell_id, radius) -> int:
    """Id of the component of cell ``cell_id`` nearest to pixel ``p`` within ``radius`` (0 if none)."""
    r = int(np.ceil(radius))
    r0, c0 = max(p[0] - r, 0), max(p[1] - r, 0)
    win = comps[r0 : p[0] + r + 1, c0 : p[1] + r + 1]
    cand = (win > 0) & (cells[r0 : p[0] + r + 1, c0 : p[1] + r + 1] == cell_id)
    if not cand.any():
        return 0
    rr, cc = np.nonzero(cand)
    d2 = (rr + r0 - p[0]) ** 2 + (cc + c0 - p[1]) ** 2
    best = np.argmin(d2)
    if d2[best] > radius * radius:
        return 0
    return int(win[rr[best], cc[best]])


def ignore_ring(label: np.ndarray, ring_px: float) -> np.ndarray:
    """``label`` with BACKGROUND pixels within ``ring_px`` of a NUCLEUS pixel turned into IGNORE.

    The cluster label's nuclei are too small (recall 0.63-0.74 against the masks): the pixels just outside
    them are often nucleus. Ignoring a thin ring lets the co-training pseudo labels, not k-means, decide
    where a nucleus ends. Distance is Euclidean between pixel centres (a pixel at distance <= ``ring_px``
    is in the ring); ``ring_px <= 0`` returns a copy.

    Examples
    --------
    >>> lab = np.zeros((1, 5), np.uint8); lab[0, 2] = NUCLEUS
    >>> ignore_ring(lab, 1.0).tolist()
    [[0, 2, 1, 2, 0]]
    """
    out = np.array(label, dtype=np.uint8, copy=True)
    if ring_px <= 0 or not (out == NUCLEUS).any():
        return out
    dist = ndi.distance_transform_edt(out != NUCLEUS)
    out[(out == BACKGROUND) & (dist <= ring_px)] = IGNORE
    return out
