"""``segment``'s pictures: ``<stem>.preview.png`` and ``<stem>.overlay-<k>.png``, staged with the other outputs.

This module draws a nuclei run's pictures and holds what a regions run's (:mod:`.region_pictures`) share with
them: the thumbnail and where its pixels fall (:class:`Thumbnail`), the tissue outline on it, the overlay crop
box and writer, and the record assembly (:func:`picture_record`: names, cells, ``run.json → pictures``).

- **Preview** (default; ``--no-preview`` skips it): a thumbnail of the slide's bounds region (longest side
  <= :data:`PREVIEW_MAX_SIDE`), the tissue outline of the rule that ran (the mask's tissue, not grown, or the
  ``--tissue`` annotations), and the density of nucleus anchors per cell (nuclei/mm², cividis, colour bar
  with units; :mod:`wsi_weakseg.viz.preview`).
- **Overlays** (``--overlays N``): N crops of :data:`OVERLAY_PX` working pixels with every nucleus outline
  (the inner boundary pixels of the label map, so they sit on the GeoJSON polygons' edges), centred on the
  densest, median and sparsest cells holding nuclei, then cells between (deterministic).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..viz import OKABE_ITO, outline_mask, paint, save_png
from ..viz.preview import (
    cell_size_um,
    choose_overlay_cells,
    density_grid,
    heat_composite,
    render_preview,
)

log = logging.getLogger(__name__)

#: Longest side of the preview's thumbnail, pixels.
PREVIEW_MAX_SIDE = 2048
#: Side of an overlay crop, working pixels.
OVERLAY_PX = 512
#: Most overlays one run writes.
MAX_OVERLAYS = 64
#: Colour of nucleus outlines on overlays.
OUTLINE_COLOUR = OKABE_ITO["yellow"]


def is_picture_name(stem: str, name: object) -> bool:
    """Whether ``name`` is a picture file name of ``stem`` (a bare name; used before deleting stale ones)."""
    return isinstance(name, str) and re.fullmatch(re.escape(stem) + r"\.(preview|overlay-[1-9][0-9]*)\.png", name) is not None


def anchors(sorted_keys: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Working (rows, cols) of nucleus anchors from their raster keys (``row * width + col + 1``)."""
    k = np.asarray(sorted_keys, np.int64) - 1
    return k // width, k % width


def write_pictures(tmp: Path, stem: str, slide, view, tissue, sorted_keys: np.ndarray, labels,
                   n_overlays: int, preview: bool) -> dict[str, Any]:
    """Write the pictures into ``tmp``; return their ``run.json`` record (``{}`` when none was asked for).

    Parameters
    ----------
    tmp : Path
        The staging folder.
    stem : str
        Output name stem.
    slide, view
        The open slide and its :class:`~wsi_weakseg.slide.WorkingView`.
    tissue : TissueSelection
        The tissue rule that ran (its ``outline`` is drawn).
    sorted_keys : ndarray
        Anchor keys of the emitted nuclei.
    labels : array-like (H, W)
        The working-grid label map (ids), e.g. the OME-Zarr's ``labels/nuclei`` level 0.
    n_overlays : int
    preview : bool
    """
    if not preview and n_overlays <= 0:
        return {}
    H, W = view.shape
    rows, cols = anchors(sorted_keys, W)
    grid = density_grid(rows, cols, (H, W), view.mpp, cell_size_um(max(H, W) * view.mpp))

    def draw_preview(path: Path) -> dict[str, Any]:
        return _write_preview(path, stem, slide, view, tissue, grid, len(rows))

    def draw_overlay(path: Path, cell: tuple[int, int]) -> dict[str, Any]:
        record = write_overlay(path, view, labels, overlay_box(view.shape, grid.cell_px, cell),
                               lambda rgb, lab: paint(rgb, outline_mask(lab), OUTLINE_COLOUR))
        return record | {"cell": list(cell), "nuclei_per_mm2": float(grid.per_mm2[cell])}

    return picture_record(tmp, stem, grid, draw_preview if preview else None, draw_overlay, n_overlays, "nuclei")


def picture_record(tmp: Path, stem: str, grid, draw_preview, draw_overlay, n_overlays: int,
                   what: str) -> dict[str, Any]:
    """Draw the preview and the overlays of the cells :func:`choose_overlay_cells` picks into ``tmp``; return
    their ``run.json`` record.

    ``draw_preview(path)`` (``None``: no preview) and ``draw_overlay(path, cell)`` write one picture each and
    return its record; ``grid`` counts ``what`` (nuclei, region outline pixels) per cell.
    """
    record: dict[str, Any] = {"cell_um": grid.cell_um}
    if draw_preview is not None:
        record["preview"] = draw_preview(tmp / f"{stem}.preview.png")
    cells = choose_overlay_cells(grid, n_overlays)
    record["overlays"] = [draw_overlay(tmp / f"{stem}.overlay-{k}.png", cell) for k, cell in enumerate(cells, start=1)]
    record["files"] = ([record["preview"]["file"]] if draw_preview is not None else []) + [
        o["file"] for o in record["overlays"]]
    if len(cells) < n_overlays:
        log.warning("%s: %d overlay(s) asked for, %d written (only %d density cells hold %s)",
                    stem, n_overlays, len(cells), len(cells), what)
    return record


@dataclass(frozen=True)
class Thumbnail:
    """The slide's bounds region read at the preview's size, and where its pixel centres fall.

    Attributes
    ----------
    view : WorkingView
        The thumbnail's grid (longest side <= :data:`PREVIEW_MAX_SIDE`, never finer than the working grid).
    rgb : ndarray (th, tw, 3) uint8
    x0, y0 : ndarray (tw,), (th,)
        Level-0 coordinates of the columns' and rows' pixel centres.
    col, row : ndarray of int64 (tw,), (th,)
        The working pixel holding each column's / row's centre, -1 outside the working grid.
    um_per_px : float
        Level-0 µm per thumbnail pixel (the preview's mm axes).
    """

    view: Any
    rgb: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    col: np.ndarray
    row: np.ndarray
    um_per_px: float

    @classmethod
    def read(cls, slide, view) -> Thumbnail:
        """Read the thumbnail of ``slide`` for the working grid ``view``."""
        from ..slide import WorkingView

        H, W = view.shape
        thumb_view = WorkingView(slide, max(view.mpp, max(H, W) * view.mpp / PREVIEW_MAX_SIDE))
        th, tw = thumb_view.shape
        x0, y0 = thumb_view.to_level0(np.arange(tw) + 0.5, np.arange(th) + 0.5)
        wx, wy = view.from_level0(x0, y0)
        col = np.where((wx >= 0) & (wx < W), np.floor(wx).astype(np.int64), -1)
        row = np.where((wy >= 0) & (wy < H), np.floor(wy).astype(np.int64), -1)
        return cls(thumb_view, thumb_view.read(0, 0, th, tw), x0, y0, col, row, thumb_view.scale * slide.mpp)

    @property
    def extent_mm(self) -> tuple[float, float]:
        th, tw = self.rgb.shape[:2]
        return tw * self.um_per_px / 1000, th * self.um_per_px / 1000

    def tissue(self, tissue, slide) -> np.ndarray | None:
        """The tissue rule's outline (mask or annotations) on the thumbnail grid, or ``None``."""
        return _tissue_on(getattr(tissue, "outline", None), slide, self.x0, self.y0)

    def record(self, path: Path, image_origin: tuple[int, int]) -> dict[str, Any]:
        """The part of a preview's ``run.json`` record every preview has."""
        return {"file": path.name, "thumbnail_mpp": self.view.mpp, "thumbnail_shape": list(self.rgb.shape[:2]),
                "image_origin_px": list(image_origin)}


def _write_preview(path: Path, stem: str, slide, view, tissue, grid, n: int) -> dict[str, Any]:
    thumb = Thumbnail.read(slide, view)
    cell_col = np.where(thumb.col >= 0, thumb.col // grid.cell_px, -1)
    cell_row = np.where(thumb.row >= 0, thumb.row // grid.cell_px, -1)
    vmax = grid.scale_top()
    composite = heat_composite(thumb.rgb, cell_row, cell_col, grid, thumb.tissue(tissue, slide), vmax)
    title = f"{stem}: {n:,} nuclei, {tissue.area_mm2:.3g} mm² tissue ({tissue.rule}), cells of {grid.cell_um:g} µm"
    rgb, layout = render_preview(composite, title, thumb.extent_mm, vmax)
    save_png(path, rgb)
    return thumb.record(path, layout.image_origin) | {"vmax_per_mm2": vmax, "cell_px": grid.cell_px}


def _tissue_on(outline, slide, x0: np.ndarray, y0: np.ndarray) -> np.ndarray | None:
    """The tissue on the thumbnail grid (level-0 pixel centres ``x0`` x ``y0``): a TissueMask or a geometry."""
    if outline is None:
        return None
    if hasattr(outline, "tissue"):  # TissueMask: absolute level-0 frame
        m = outline.tissue
        c = np.floor((x0 - outline.origin[0]) / outline.scale).astype(np.int64)
        r = np.floor((y0 - outline.origin[1]) / outline.scale).astype(np.int64)
        ok = (r[:, None] >= 0) & (r[:, None] < m.shape[0]) & (c[None, :] >= 0) & (c[None, :] < m.shape[1])
        return ok & m[np.ix_(np.clip(r, 0, m.shape[0] - 1), np.clip(c, 0, m.shape[1] - 1))]
    import shapely

    bx, by = slide.bounds[:2]  # annotations are in the output (bounds-relative) frame
    xx, yy = np.meshgrid(x0 - bx, y0 - by)
    return shapely.contains_xy(outline, xx, yy)


def overlay_box(shape: tuple[int, int], cell_px: int, cell: tuple[int, int]) -> tuple[int, int, int, int]:
    """Working (y, x, h, w) of the overlay crop centred on ``cell``, inside the image.

    The side is :data:`OVERLAY_PX`, or half the image's shorter side on images smaller than two crops (so
    that crops of different cells differ), at least 64 px.
    """
    H, W = shape
    side = min(OVERLAY_PX, max(64, min(H, W) // 2))
    h, w = min(side, H), min(side, W)
    cy, cx = (cell[0] + 0.5) * cell_px, (cell[1] + 0.5) * cell_px
    return int(np.clip(round(cy - h / 2), 0, H - h)), int(np.clip(round(cx - w / 2), 0, W - w)), h, w


def write_overlay(path: Path, view, labels, box: tuple[int, int, int, int], draw) -> dict[str, Any]:
    """Write the working-resolution crop ``box`` (y, x, h, w) as ``draw(rgb, labels_of_the_crop)`` draws it."""
    y, x, h, w = box
    save_png(path, draw(view.read(y, x, h, w), np.asarray(labels[y:y + h, x:x + w])))
    (X0, Y0), (X1, Y1) = view.to_level0(x, y), view.to_level0(x + w, y + h)
    return {"file": path.name, "working_box": [y, x, h, w], "level0_box": [X0, Y0, X1, Y1]}
