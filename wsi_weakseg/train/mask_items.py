"""Training items of the few-masks recipe: labelled windows around drawn nuclei, and unlabelled images.

Each spec item gives one or two :class:`MaskItem`\\ s at the model's pixel size:

- an **unlabelled** item, always: the whole plain image, or for a slide the bounding box of its annotated
  region grown by :data:`WINDOW_MARGIN_UM` (the unsupervised branch learns from every training image);
- a **labelled** item when the spec item names ``masks`` (drawn nuclei) or ``points`` (clicks): the window of
  the image around its annotated pixels (grown by the margin and to at least one training crop), with the
  foreground target (1 nucleus, 0 background, 2 unlabelled), the centre target (Gaussian bumps at the drawn
  nuclei's centroids, or at the clicks: :func:`~wsi_weakseg.weak.centres.centre_heatmap`) and where the centre
  target is known. Click-only items supervise the centre head alone (their foreground stays 2).

Drawn polygons are rasterised on the working grid (:func:`~wsi_weakseg.weak.masks.rasterise_masks`); a
label image is resampled by nearest neighbour, as validation label maps are
(:func:`~wsi_weakseg.train.dataset.read_item`). Targets are cheap and are not cached.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..weak.centres import centre_heatmap, label_centroids

log = logging.getLogger(__name__)

#: Context kept around the annotated pixels of a labelled window (and around a slide's region), in µm.
WINDOW_MARGIN_UM = 10.0


@dataclass
class MaskItem:
    """One training image of the few-masks recipe at the working pixel size.

    Attributes
    ----------
    name : str
    image : ndarray (H, W, 3) uint8
    mask : ndarray (H, W) uint8 or None
        0 background, 1 nucleus, 2 unlabelled; ``None`` for an item of the unlabelled group.
    centre : ndarray (H, W) float32 or None
        Centre-head target (Gaussian bumps at nucleus centroids or clicks).
    centre_known : ndarray (H, W) uint8 or None
        1 where the centre target holds (the annotated region).
    """

    name: str
    image: np.ndarray
    mask: np.ndarray | None = None
    centre: np.ndarray | None = None
    centre_known: np.ndarray | None = None

    @property
    def labelled(self) -> bool:
        return self.mask is not None

    def targets(self) -> dict[str, np.ndarray]:
        if self.mask is None:
            return {}
        return {"mask": self.mask, "centre": self.centre, "centre_known": self.centre_known}


def _grow(lo: int, hi: int, margin: int, least: int, size: int) -> tuple[int, int]:
    """``[lo, hi)`` grown by ``margin`` each side within ``[0, size)``, then to at least ``least`` (if it fits)."""
    lo, hi = max(lo - margin, 0), min(hi + margin, size)
    short = least - (hi - lo)
    if short > 0:
        lo, hi = lo - short // 2, hi + short - short // 2
        if lo < 0:
            lo, hi = 0, hi - lo
        if hi > size:
            lo, hi = max(0, lo - (hi - size)), size
    return lo, hi


def window_of(known: np.ndarray, margin: int, least: int) -> tuple[slice, slice]:
    """The window of ``known``'s True pixels, grown by ``margin`` and to at least ``least`` px a side.

    Examples
    --------
    >>> k = np.zeros((10, 10), bool); k[4:6, 1:2] = True
    >>> window_of(k, margin=1, least=6)
    (slice(2, 8, None), slice(0, 6, None))
    """
    rows, cols = np.nonzero(known)
    if rows.size == 0:
        return slice(0, known.shape[0]), slice(0, known.shape[1])
    r = _grow(int(rows.min()), int(rows.max()) + 1, margin, least, known.shape[0])
    c = _grow(int(cols.min()), int(cols.max()) + 1, margin, least, known.shape[1])
    return slice(*r), slice(*c)


def _read(item, mpp: float, region) -> tuple[np.ndarray, object, tuple[float, float], int, int, float]:
    """Working pixels of an item (whole plain image, or a slide's region box + margin): rgb, view, bounds origin,
    first row and column read, and the source pixel size."""
    from ..engine.whole import check_region_size
    from ..slide import WorkingView, open_slide

    with open_slide(item.image, mpp=item.mpp) as slide:
        view = WorkingView(slide, mpp)
        b = (float(slide.bounds[0]), float(slide.bounds[1]))  # QuPath coordinates start at the bounds origin
        H, W = view.shape
        r0, c0, r1, c1 = 0, 0, H, W
        if item.kind == "slide":
            if region is None:
                raise ConfigError(f"{item.image}: a slide item of the few-masks recipe needs an annotated region "
                                  "(in its masks GeoJSON, its points file, or a 'region' file)")
            x0, y0, x1, y1 = region.bounds
            (cx0, cx1), (cy0, cy1) = view.from_level0(np.array([x0, x1]) + b[0], np.array([y0, y1]) + b[1])
            m = WINDOW_MARGIN_UM / view.mpp
            r0, c0 = max(math.floor(cy0 - m), 0), max(math.floor(cx0 - m), 0)
            r1, c1 = min(math.ceil(cy1 + m), H), min(math.ceil(cx1 + m), W)
        check_region_size((r1 - r0, c1 - c0), item.image,
                          advice="annotate smaller regions of a slide, one spec item each")
        rgb = view.read(r0, c0, r1 - r0, c1 - c0)
        source_mpp = slide.mpp
    return rgb, view, b, r0, c0, source_mpp


def _label_image_on_grid(label_image: np.ndarray, view, r0: int, c0: int, shape: tuple[int, int]) -> np.ndarray:
    """A level-0 label image resampled by nearest neighbour onto working rows ``r0..`` and columns ``c0..``."""
    from .dataset import _nearest_grid

    cx, cy = view.to_level0(np.arange(c0, c0 + shape[1]) + 0.5, np.arange(r0, r0 + shape[0]) + 0.5)
    rows, cols = _nearest_grid(cy, label_image.shape[0]), _nearest_grid(cx, label_image.shape[1])
    return label_image[np.ix_(rows, cols)].astype(np.int32)


def read_mask_item(item, mpp: float, crop: int, sigma_um: float) -> tuple[list[MaskItem], dict]:
    """The items of one spec item (labelled window first, then the unlabelled image) and its summary row."""
    from ..weak.masks import mask_target, rasterise_masks
    from ..weak.spec import load_item_masks, load_item_region

    if item.masks is None and item.points is not None:
        return _click_items(item, mpp, crop, sigma_um)
    masks, label_image = load_item_masks(item) if item.masks is not None else (None, None)
    region = masks.region if masks is not None else load_item_region(item)
    rgb, view, b, r0, c0, source_mpp = _read(item, mpp, region)
    name = item.image.stem
    row = {"name": name, "source": str(item.image), "source_mpp": source_mpp, "mpp": view.mpp,
           "shape": list(rgb.shape[:2]), "role": "unlabelled"}
    unlabelled = MaskItem(name, rgb)
    if masks is None:
        return [unlabelled], row
    s = 1.0 / view.scale  # working x = (x_qupath + b_x - origin_x) * s - c0
    offset = ((view.origin[0] - b[0]) * s + c0, (view.origin[1] - b[1]) * s + r0)
    raster = rasterise_masks(masks, rgb.shape[:2], scale=s, offset=offset)
    labels = raster.labels
    if label_image is not None:  # nuclei with a pixel inside the region, whole
        labels = _label_image_on_grid(label_image, view, r0, c0, rgb.shape[:2])
        inside = np.unique(labels[raster.labelled == 1])
        labels = np.where(np.isin(labels, inside[inside > 0]), labels, 0).astype(np.int32)
    known = raster.labelled
    centre = centre_heatmap(label_centroids(labels), rgb.shape[:2], sigma=sigma_um / view.mpp)
    rs, cs = window_of(known == 1, round(WINDOW_MARGIN_UM / view.mpp), crop)
    target = mask_target(labels, known)
    labelled = MaskItem(name, rgb[rs, cs], target[rs, cs], centre[rs, cs], known[rs, cs])
    row.update(role="masks", window=[rs.start, cs.start, rs.stop - rs.start, cs.stop - cs.start],
               nuclei=int(len(np.unique(labels[known == 1])) - (0 in labels[known == 1])),
               labelled_px=int(known.sum()), nucleus_px=int((target == 1).sum()), overlap_px=raster.n_overlap,
               dropped_outside=masks.n_outside, crossing_region=masks.n_crossing, overlapping_pairs=masks.n_overlapping,
               repaired=masks.n_repaired, empty=raster.n_empty)
    return [labelled, unlabelled], row


def _click_items(item, mpp: float, crop: int, sigma_um: float) -> tuple[list[MaskItem], dict]:
    """A click-only item: its clicks supervise the centre head inside the annotated region; its image is unlabelled."""
    from .dataset import read_item

    r = read_item(item, mpp)
    shape = r.image.shape[:2]
    centre = centre_heatmap(r.points_rc, shape, sigma=sigma_um / r.mpp)
    rs, cs = window_of(r.annotated == 1, round(WINDOW_MARGIN_UM / r.mpp), crop)
    mask = np.full(shape, 2, np.uint8)
    labelled = MaskItem(r.name, r.image[rs, cs], mask[rs, cs], centre[rs, cs], r.annotated[rs, cs])
    row = {"name": r.name, "source": str(item.image), "source_mpp": r.source_mpp, "mpp": r.mpp,
           "shape": list(shape), "role": "points", **r.info,
           "window": [rs.start, cs.start, rs.stop - rs.start, cs.stop - cs.start]}
    return [labelled, MaskItem(r.name, r.image)], row


def build_mask_items(spec_items: Sequence, cfg: Mapping) -> tuple[list[MaskItem], list[dict]]:
    """Training items of ``spec_items`` (labelled windows and unlabelled images) and a per-spec-item summary.

    Raises
    ------
    ConfigError
        No spec item names ``masks``: the supervised branch would have nothing to learn from.
    """
    if not any(it.masks is not None for it in spec_items):
        raise ConfigError("the few-masks recipe needs at least one training item with 'masks' (drawn nuclei: QuPath "
                          "polygons or a label image); the others may be unlabelled or have points")
    f = cfg["few_masks"]
    mpp, crop = float(cfg["data"]["mpp"]), int(cfg["data"]["crop"])
    items, summary = [], []
    for spec_item in spec_items:
        made, row = read_mask_item(spec_item, mpp, crop, float(f["centre_sigma_um"]))
        items.extend(made)
        summary.append(row)
        log.info("%s: %s, %dx%d working px", row["name"], row["role"], *made[-1].image.shape[1::-1])
    return items, summary
