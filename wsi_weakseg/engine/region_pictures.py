"""A regions run's pictures: ``<stem>.preview.png`` and ``<stem>.overlay-<k>.png``, as for nuclei.

Same options, names, staging and ``run.json → pictures`` record as :mod:`.pictures` (whose thumbnail,
overlay writer and record assembly these reuse); what is drawn is :func:`~wsi_weakseg.viz.regions.region_composite`:

- **Preview** (default; ``--no-preview`` skips it): the thumbnail of the slide's bounds region, the tissue
  outline of the rule that ran (vermillion, as for nuclei) and the regions in the card's class colour: a
  translucent fill and opaque outlines (holes too). The regions are the label image (0 outside the ROI)
  sampled at the thumbnail's pixel centres (nearest working pixel), so the outline pixels are the inner
  boundary of the region mask downscaled to the preview. A legend names the class; the title gives the count,
  area and fraction of tissue.
- **Overlays** (``--overlays N``): N crops of :data:`~.pictures.OVERLAY_PX` working pixels (1 mm at
  2 µm/px: the model's own resolution, where the outlines are exact) centred on density cells holding region
  outline pixels: the most outline, the median and the least, then between (deterministic), the same rule as
  the nuclei's densest/median/sparsest cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..viz import outline_mask, paint, save_png
from ..viz.preview import TISSUE_COLOUR, cell_size_um, density_grid, render_framed
from ..viz.regions import FILL_ALPHA, legend_side, region_composite
from .pictures import Thumbnail, overlay_box, picture_record, write_overlay

_ROWS = 1024  # rows of the label image searched for outline pixels at a time


def write_region_pictures(tmp: Path, stem: str, slide, view, tissue, labels: np.ndarray, cls: dict[str, Any],
                          summary: dict[str, Any], n_overlays: int, preview: bool) -> dict[str, Any]:
    """Write a regions run's pictures into ``tmp``; return their ``run.json`` record (``{}`` when none was asked).

    Parameters
    ----------
    tmp : Path
        The staging folder.
    stem : str
        Output name stem.
    slide, view
        The open slide and its :class:`~wsi_weakseg.slide.WorkingView`.
    tissue : TissueSelection
        The tissue rule that ran (its ``outline`` is drawn on the preview).
    labels : ndarray (H, W)
        The working-grid region ids (the OME-Zarr's ``labels/regions``, 0 outside the ROI).
    cls : dict
        The card's class: ``name`` and ``color``.
    summary : dict
        ``run.json → regions`` (count, area by class, fraction of tissue), for the preview's title.
    n_overlays : int
    preview : bool
    """
    if not preview and n_overlays <= 0:
        return {}
    H, W = view.shape
    colour = tuple(cls["color"])
    rows, cols = outline_pixels(labels)
    grid = density_grid(rows, cols, (H, W), view.mpp, cell_size_um(max(H, W) * view.mpp))

    def draw_preview(path: Path) -> dict[str, Any]:
        return _write_preview(path, stem, slide, view, tissue, labels, cls, summary)

    def draw_overlay(path: Path, cell: tuple[int, int]) -> dict[str, Any]:
        record = write_overlay(path, view, labels, overlay_box(view.shape, grid.cell_px, cell),
                               lambda rgb, lab: region_composite(rgb, lab, colour))
        return record | {"cell": list(cell), "outline_px": int(grid.counts[cell])}

    return picture_record(tmp, stem, grid, draw_preview if preview else None, draw_overlay, n_overlays,
                          "region outlines")


def outline_pixels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of :func:`~wsi_weakseg.viz.outline_mask` of ``labels``, a stripe of rows at a time.

    Each stripe is taken with one row of its neighbours on both sides, so the result is the whole image's
    outline without a padded copy of it.
    """
    H = labels.shape[0]
    found_r, found_c = [], []
    for y in range(0, H, _ROWS):
        top = max(y - 1, 0)
        edge = outline_mask(labels[top : min(y + _ROWS + 1, H)])[y - top : y - top + _ROWS]
        r, c = np.nonzero(edge)
        found_r.append(r + y)
        found_c.append(c)
    return np.concatenate(found_r), np.concatenate(found_c)


def thumbnail_labels(labels: np.ndarray, thumb: Thumbnail) -> np.ndarray:
    """The label image sampled at the thumbnail's pixel centres (nearest working pixel; 0 outside the grid)."""
    inside = (thumb.row[:, None] >= 0) & (thumb.col[None, :] >= 0)
    sampled = labels[np.ix_(np.clip(thumb.row, 0, None), np.clip(thumb.col, 0, None))]
    return np.where(inside, sampled, 0)


def _write_preview(path: Path, stem: str, slide, view, tissue, labels: np.ndarray, cls: dict[str, Any],
                   summary: dict[str, Any]) -> dict[str, Any]:
    thumb = Thumbnail.read(slide, view)
    rgb = thumb.rgb
    on_thumb = thumb.tissue(tissue, slide)
    if on_thumb is not None:
        rgb = paint(rgb, outline_mask(on_thumb.astype(np.int32)), TISSUE_COLOUR)
    composite = region_composite(rgb, thumbnail_labels(labels, thumb), tuple(cls["color"]))
    name = cls["name"]
    area = summary["area_mm2_by_class"][name]
    fraction = summary.get("fraction_of_tissue")
    of_tissue = "" if fraction is None else f" ({fraction:.1%} of the tissue)"
    title = f"{stem}: {summary['count']:,} {name} region(s), {area:.3g} mm²{of_tissue}"
    side = legend_side((name, tuple(cls["color"])), TISSUE_COLOUR if on_thumb is not None else None)
    picture, origin = render_framed(composite, title, thumb.extent_mm, side)
    save_png(path, picture)
    return thumb.record(path, origin) | {"class": name, "fill_alpha": FILL_ALPHA}
