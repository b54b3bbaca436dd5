"""Low-resolution tissue mask: where on the slide there is stained tissue worth segmenting.

Background on a bright-field slide is glass: bright *and* unsaturated. Tissue is classified with fixed,
physically meaningful thresholds (optical density and saturation) rather than Otsu, because Otsu
splits any image in two, so it discards half of an all-tissue crop. The mask is then cleaned in
physical units (specks removed, holes such as lumens and fat filled).
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
#: glass is ~0.02-0.05, faint eosin ~0.1).
OD_MIN = 0.08
#: ... and its HSV saturation exceeds this (glass and dust are grey, H&E is pink to purple).
SAT_MIN = 0.06
#: Very dark pixels count as tissue whatever their colour (dense tissue, pen, debris).
DARK_OD = 0.6
#: Connected tissue smaller than this (µm²) is dropped (dust, specks).
MIN_OBJECT_UM2 = 2_000.0
#: Background holes inside tissue smaller than this (µm²) are filled (lumens, fat, tears).
MAX_HOLE_UM2 = 200_000.0
#: Tissue is grown by this distance (µm) so that nuclei on its border keep their context.
DILATE_UM = 16.0
#: Largest level region (pixels per side) read at once.
_READ_BLOCK = 2048


@dataclass(frozen=True, eq=False)
class TissueMask:
    """A boolean tissue mask over a slide's bounds region.

    Attributes
    ----------
    mask : numpy.ndarray
        bool (rows, cols); True where there is tissue.
    scale : float
        Level-0 pixels per mask pixel.
    origin : tuple of int
        Level-0 (x, y) of the top-left corner of mask pixel (0, 0).
    """

    mask: np.ndarray
    scale: float
    origin: tuple[int, int]

    @property
    def fraction(self) -> float:
        """Fraction of the bounds area that is tissue (0.0 for an empty mask)."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def area_um2(self, mpp0: float) -> float:
        """Tissue area in µm², given the slide's level-0 pixel size ``mpp0``."""
        return float(self.mask.sum()) * (self.scale * mpp0) ** 2

    def region_has_tissue(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Whether the level-0 box [x0, x1) x [y0, y1) overlaps any tissue pixel.

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


def clean_mask(mask: np.ndarray, mpp: float) -> np.ndarray:
    """Remove specks, grow the mask and fill holes, with sizes in µm converted at ``mpp``."""
    px_area = mpp * mpp
    mask = _drop_small(mask, MIN_OBJECT_UM2 / px_area)
    radius = int(round(DILATE_UM / mpp))
    if radius >= 1:
        yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        mask = ndimage.binary_dilation(mask, structure=xx * xx + yy * yy <= radius * radius)
    # holes: background components not touching the border, below the size limit
    return ~_drop_small(~mask, MAX_HOLE_UM2 / px_area, keep_border=True)


def _drop_small(mask: np.ndarray, min_area: float, keep_border: bool = False) -> np.ndarray:
    """Remove 8-connected components with fewer than ``min_area`` pixels."""
    if min_area <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_area
    if keep_border:
        border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        keep[border] = True
    keep[0] = False
    return keep[labels]


def compute_tissue_mask(slide: Slide, mask_mpp: float = 8.0) -> TissueMask:
    """Compute a tissue mask of the slide's bounds region at about ``mask_mpp`` µm/px.

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
    view = WorkingView(slide, max(float(mask_mpp), slide.mpp), tolerance=0.25)
    H, W = view.shape
    level_px = max(view.scale / slide.level_downsamples[view.level], 1.0)
    step = max(int(_READ_BLOCK / level_px), 16)
    raw = np.zeros((H, W), bool)
    for y in range(0, H, step):
        for x in range(0, W, step):
            h, w = min(step, H - y), min(step, W - x)
            raw[y : y + h, x : x + w] = classify_tissue(view.read(y, x, h, w))
    mask = clean_mask(raw, view.mpp)
    result = TissueMask(mask=mask, scale=view.scale, origin=view.origin)
    log.info(
        "%s: tissue mask %dx%d at %.3g µm/px, tissue fraction %.3f (%.2f mm²)",
        slide.path.name,
        W,
        H,
        view.mpp,
        result.fraction,
        result.area_um2(slide.mpp) / 1e6,
    )
    return result
