"""Low-resolution tissue mask: where on the slide there is stained tissue worth segmenting.

Background on a bright-field slide is glass: bright *and* unsaturated. Tissue is classified with fixed,
physically meaningful thresholds (optical density and saturation) rather than Otsu, because Otsu
splits any image in two, so it discards half of an all-tissue crop.

Thin and faint tissue (fat septa, loose pale stroma) is a few µm wide: averaged into an 8 µm mask
pixel it looks like glass. So pixels are classified at a finer scale (``mask_mpp / CLASSIFY_POOL``,
2 µm/px by default) and a mask pixel is tissue when any of its fine pixels is. Specks are removed by
their tissue area (not by the mask pixels they touch), holes (lumens, fat) are filled, giving the
*tissue* (:attr:`TissueMask.core`: what tissue area and fraction measure); it is then grown by
``DILATE_UM`` into the *selection* mask (:attr:`TissueMask.mask`) that decides which tiles run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from wsi_weakseg.slide.reader import Slide
from wsi_weakseg.slide.view import WorkingView

log = logging.getLogger(__name__)

#: A pixel is tissue when its largest per-channel optical density exceeds this (-log10 transmittance;
#: glass is ~0.015-0.035, faint eosin ~0.1). Was 0.08 (docs/design.md, "Tissue mask").
OD_MIN = 0.05
#: ... and its HSV saturation exceeds this (glass and dust are grey, H&E is pink to purple). Measured at
#: 2 µm/px: glass on the three real slides and a CRC crop stays below 0.03 (99.9th percentile), pale loose
#: stroma of CRC crops has a median of 0.033-0.040. Was 0.06, which lost that stroma.
SAT_MIN = 0.035
#: Very dark pixels count as tissue whatever their colour (dense tissue, pen, debris).
DARK_OD = 0.6
#: Pixels are classified at ``mask_mpp / CLASSIFY_POOL`` and pooled (any) into mask pixels.
CLASSIFY_POOL = 4
#: Connected tissue whose classified area is smaller than this (µm²) is dropped (dust, specks). A fat
#: septum 3 µm wide and 70 µm long, or a single cell with some stroma, is larger.
MIN_OBJECT_UM2 = 200.0
#: Background holes inside tissue smaller than this (µm²) are filled (lumens, fat, tears).
MAX_HOLE_UM2 = 200_000.0
#: The selection mask is the tissue grown by this distance (µm).
DILATE_UM = 16.0
#: Largest level region (pixels per side) read at once.
_READ_BLOCK = 2048
_EIGHT = np.ones((3, 3), bool)


@dataclass(frozen=True, eq=False)
class TissueMask:
    """A boolean tissue mask over a slide's bounds region.

    Attributes
    ----------
    mask : numpy.ndarray
        bool (rows, cols); the selection mask: tissue grown by ``DILATE_UM``, holes filled.
    scale : float
        Level-0 pixels per mask pixel.
    origin : tuple of int
        Level-0 (x, y) of the top-left corner of mask pixel (0, 0).
    core : numpy.ndarray, optional
        bool, same shape; the tissue itself (not grown). ``None`` means ``mask``.
    coverage : numpy.ndarray, optional
        float, same shape; the fraction of each mask pixel inside the bounds region (below 1 on the last row
        and column when the region is not a whole number of mask pixels). ``None`` means all 1.
    """

    mask: np.ndarray
    scale: float
    origin: tuple[int, int]
    core: np.ndarray | None = None
    coverage: np.ndarray | None = None

    @property
    def tissue(self) -> np.ndarray:
        """The tissue itself (:attr:`core`, or :attr:`mask` when no core was given)."""
        return self.mask if self.core is None else self.core

    @property
    def fraction(self) -> float:
        """Fraction of the bounds region that is tissue (not grown; 0.0 for an empty mask)."""
        if not self.tissue.size:
            return 0.0
        if self.coverage is None:
            return float(self.tissue.mean())
        return float((self.tissue * self.coverage).sum() / self.coverage.sum())

    @property
    def selected_fraction(self) -> float:
        """Fraction of the mask area in the selection mask (tissue grown by ``DILATE_UM``)."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def area_um2(self, mpp0: float) -> float:
        """Tissue area (not grown) in µm² inside the bounds region, given the level-0 pixel size ``mpp0``."""
        inside = self.tissue.sum() if self.coverage is None else (self.tissue * self.coverage).sum()
        return float(inside) * (self.scale * mpp0) ** 2

    def region_has_tissue(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Whether the level-0 box [x0, x1) x [y0, y1) overlaps any pixel of the selection mask.

        Coordinates outside the mask are non-tissue; an empty box has no tissue.

        Examples
        --------
        >>> m = TissueMask(np.array([[False, True]]), scale=10.0, origin=(0, 0))
        >>> m.region_has_tissue(0, 0, 10, 10), m.region_has_tissue(0, 0, 10.5, 10)
        (False, True)
        """
        if not (x1 > x0 and y1 > y0):
            return False
        rows, cols = self.mask.shape
        ox, oy = self.origin
        c0 = max(math.floor((x0 - ox) / self.scale), 0)
        c1 = min(math.ceil((x1 - ox) / self.scale), cols)
        r0 = max(math.floor((y0 - oy) / self.scale), 0)
        r1 = min(math.ceil((y1 - oy) / self.scale), rows)
        if c0 >= c1 or r0 >= r1:
            return False
        return bool(self.mask[r0:r1, c0:c1].any())


def classify_tissue(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel tissue classification of an RGB uint8 image (no clean-up).

    Examples
    --------
    >>> classify_tissue(np.array([[[255, 255, 255], [240, 240, 242], [200, 120, 180]]], np.uint8))
    array([[False, False,  True]])
    """
    f = rgb.astype(np.float32)
    od = -np.log10((f + 1.0) / 256.0)
    od_max = od.max(axis=-1)
    hi, lo = f.max(axis=-1), f.min(axis=-1)
    sat = (hi - lo) / np.maximum(hi, 1.0)
    return ((od_max > OD_MIN) & (sat > SAT_MIN)) | (od.mean(axis=-1) > DARK_OD)


def pool_counts(fine: np.ndarray, k: int) -> np.ndarray:
    """Tissue pixels of ``fine`` per ``k`` x ``k`` cell (partial cells at the far edges included).

    Examples
    --------
    >>> pool_counts(np.eye(3, dtype=bool), 2)
    array([[2, 0],
           [0, 1]])
    """
    H, W = fine.shape
    rows, cols = -(-H // k), -(-W // k)
    padded = np.zeros((rows * k, cols * k), bool)
    padded[:H, :W] = fine
    return padded.reshape(rows, k, cols, k).sum(axis=(1, 3), dtype=np.int32)


def tissue_core(counts: np.ndarray, fine_px_um2: float, mask_mpp: float) -> np.ndarray:
    """Mask pixels with tissue, less specks (classified area < ``MIN_OBJECT_UM2``), holes filled.

    Parameters
    ----------
    counts : numpy.ndarray
        Classified tissue pixels per mask pixel (:func:`pool_counts`).
    fine_px_um2 : float
        Area of one classified pixel in µm².
    mask_mpp : float
        Mask pixel size in µm.
    """
    labels, n = ndimage.label(counts > 0, structure=_EIGHT)
    area = np.bincount(labels.ravel(), weights=counts.ravel(), minlength=n + 1) * fine_px_um2
    keep = area >= MIN_OBJECT_UM2
    keep[0] = False
    return fill_holes(keep[labels], MAX_HOLE_UM2 / mask_mpp**2)


def grow(core: np.ndarray, mask_mpp: float) -> np.ndarray:
    """The selection mask: ``core`` dilated by ``DILATE_UM`` (a disc), holes filled."""
    radius = int(round(DILATE_UM / mask_mpp))
    mask = core
    if radius >= 1:
        yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        mask = ndimage.binary_dilation(core, structure=xx * xx + yy * yy <= radius * radius)
    return fill_holes(mask, MAX_HOLE_UM2 / mask_mpp**2)


def fill_holes(mask: np.ndarray, max_hole_px: float) -> np.ndarray:
    """Fill background components smaller than ``max_hole_px`` pixels that do not touch the border."""
    if not mask.any() or mask.all():
        return mask
    labels, n = ndimage.label(~mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    background = sizes >= max_hole_px
    background[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    background[0] = False
    return ~background[labels]


def _classify_view(view: WorkingView, slide: Slide) -> np.ndarray:
    """Classify every pixel of ``view``, reading it in blocks of about ``_READ_BLOCK`` level pixels."""
    H, W = view.shape
    level_px = max(view.scale / slide.level_downsamples[view.level], 1.0)
    step = max(int(_READ_BLOCK / level_px), 16)
    raw = np.zeros((H, W), bool)
    for y in range(0, H, step):
        for x in range(0, W, step):
            h, w = min(step, H - y), min(step, W - x)
            raw[y : y + h, x : x + w] = classify_tissue(view.read(y, x, h, w))
    return raw


def compute_tissue_mask(slide: Slide, mask_mpp: float = 8.0) -> TissueMask:
    """Compute a tissue mask of the slide's bounds region at about ``mask_mpp`` µm/px.

    Pixels are classified at ``mask_mpp / CLASSIFY_POOL`` (never finer than the slide's own pixels) and
    pooled into mask pixels, so tissue thinner than a mask pixel is kept.

    Parameters
    ----------
    slide : Slide
        An open slide.
    mask_mpp : float
        Mask pixel size in µm (never finer than the slide's own pixel size).

    Returns
    -------
    TissueMask
        May be all False (an empty slide): raising :class:`~wsi_weakseg.errors.NoTissueError`
        is the caller's decision.
    """
    mask_mpp = max(float(mask_mpp), slide.mpp)
    view = WorkingView(slide, max(mask_mpp / CLASSIFY_POOL, slide.mpp), tolerance=0.25)
    k = max(1, int(round(mask_mpp / view.mpp)))
    counts = pool_counts(_classify_view(view, slide), k)
    core = tissue_core(counts, view.mpp**2, view.mpp * k)
    (H, W), (gy, gx) = view.shape, core.shape  # partial mask pixels at the far edges count by their part
    coverage = np.outer(np.minimum(k, H - np.arange(gy) * k), np.minimum(k, W - np.arange(gx) * k)) / k**2
    result = TissueMask(mask=grow(core, view.mpp * k), scale=view.scale * k, origin=view.origin, core=core,
                        coverage=coverage)
    log.info(
        "%s: tissue mask %dx%d at %.3g µm/px (classified at %.3g µm/px), tissue fraction %.3f (%.2f mm²), "
        "selected %.3f", slide.path.name, core.shape[1], core.shape[0], view.mpp * k, view.mpp,
        result.fraction, result.area_um2(slide.mpp) / 1e6, result.selected_fraction,
    )
    return result
