"""Training items of the scribbles recipe: an image at the model's pixel size and its rasterised strokes.

A plain image is read whole; a slide item is read over the bounding box of its strokes grown by
:data:`SLIDE_MARGIN_UM` (the unscribbled pixels around the strokes are where the pseudo labels teach).
Strokes are rasterised on the working grid (:func:`~wsi_weakseg.weak.scribbles.rasterise_scribbles`), a pixel
marked when its centre lies in a stroke of ``scribbles.width_um``. Rasterised labels are cheap (one shapely
pass) and are not cached.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

#: Context read around the strokes of a slide item, in µm.
SLIDE_MARGIN_UM = 50.0


@dataclass
class ScribbleItem:
    """One training image at the working pixel size with its scribble label map.

    Attributes
    ----------
    name : str
    image : ndarray (H, W, 3) uint8
    scribble : ndarray (H, W) uint8
        0 background stroke, 1 nucleus stroke, 2 unscribbled (the weak-label encoding).
    """

    name: str
    image: np.ndarray
    scribble: np.ndarray

    def targets(self) -> dict[str, np.ndarray]:
        return {"scribble": self.scribble}


def _window(view, strokes, offset0: tuple[float, float], kind: str) -> tuple[int, int, int, int]:
    """(r0, c0, r1, c1) working pixels to read: the whole image, or the strokes' box plus the margin."""
    H, W = view.shape
    if kind != "slide":
        return 0, 0, H, W
    import shapely

    x0, y0, x1, y1 = shapely.GeometryCollection([*strokes.nucleus, *strokes.background]).bounds
    (c0, c1), (r0, r1) = view.from_level0(np.array([x0, x1]) + offset0[0], np.array([y0, y1]) + offset0[1])
    m = SLIDE_MARGIN_UM / view.mpp
    return (max(math.floor(r0 - m), 0), max(math.floor(c0 - m), 0),
            min(math.ceil(r1 + m), H), min(math.ceil(c1 + m), W))


def read_scribble_item(item, mpp: float, width_um: float) -> tuple[ScribbleItem, dict]:
    """Read one spec item with ``scribbles`` at ``mpp`` µm/px; the item and its summary row (for the card)."""
    from ..engine.whole import check_region_size
    from ..slide import WorkingView, open_slide
    from ..weak.scribbles import rasterise_scribbles
    from ..weak.spec import load_item_scribbles

    strokes = load_item_scribbles(item)
    with open_slide(item.image, mpp=item.mpp) as slide:
        view = WorkingView(slide, mpp)
        b = (float(slide.bounds[0]), float(slide.bounds[1]))  # QuPath coordinates start at the bounds origin
        r0, c0, r1, c1 = _window(view, strokes, b, item.kind)
        check_region_size((r1 - r0, c1 - c0), item.image,
                          advice="draw the strokes of a slide in smaller areas, one spec item each")
        rgb = view.read(r0, c0, r1 - r0, c1 - c0)
        source_mpp = slide.mpp
    # working x = (x_qupath + b_x - origin_x) / scale - c0, as rasterise_scribbles' x * s - offset
    s = 1.0 / view.scale
    offset = ((view.origin[0] - b[0]) * s + c0, (view.origin[1] - b[1]) * s + r0)
    raster = rasterise_scribbles(strokes, rgb.shape[:2], width_px=width_um / view.mpp, scale=s, offset=offset)
    labels = raster.labels
    row = {"name": item.image.stem, "source": str(item.image), "source_mpp": source_mpp, "mpp": view.mpp,
           "shape": list(rgb.shape[:2]), "strokes": {"nucleus": len(strokes.nucleus), "background": len(strokes.background)},
           "scribbled_px": {"nucleus": int((labels == 1).sum()), "background": int((labels == 0).sum())},
           "overlap_px": raster.n_overlap, "empty_strokes": raster.n_empty}
    return ScribbleItem(item.image.stem, rgb, labels), row


def build_scribble_items(spec_items: Sequence, cfg: Mapping) -> tuple[list[ScribbleItem], list[dict]]:
    """Training items of ``spec_items`` (each must name ``scribbles``) and a per-item summary."""
    missing = [str(it.image) for it in spec_items if it.scribbles is None]
    if missing:
        raise ConfigError(f"the scribbles recipe needs a 'scribbles' file on every training item; {len(missing)} "
                          f"have none (first: {missing[0]}); add one or move the item to another split")
    items, summary = [], []
    for spec_item in spec_items:
        item, row = read_scribble_item(spec_item, float(cfg["data"]["mpp"]), float(cfg["scribbles"]["width_um"]))
        if not (item.scribble == 1).any() or not (item.scribble == 0).any():
            log.warning("%s: strokes of only one class; the scribbled loss sees one class on this item", item.name)
        items.append(item)
        summary.append(row)
        log.info("%s: %s scribbled px, %dx%d working px", item.name, row["scribbled_px"], *item.image.shape[1::-1])
    return items, summary
