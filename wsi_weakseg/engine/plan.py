"""Which tiles to run: the tile grid, the tissue test and the ROI, with a selection margin.

A tile is run when the tile grown by the *selection margin* on every side overlaps tissue (and the
ROI, if any). The margin is the larger of the network's context and the distance within which maps decide
a nucleus (:func:`anchor_halo`), so every nucleus anchored in tissue (and in the ROI) sees exactly the
maps a whole-image run computes, however close to the tissue or ROI edge it lies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..slide.view import grid_to_level0
from .inference import tile_origins
from .instances import InstanceParams

#: ``has_tissue(x0, y0, x1, y1)``: whether a level-0 box (absolute coordinates, half-open) holds tissue.
TissueTest = Callable[[float, float, float, float], bool]


@dataclass(frozen=True)
class Frame:
    """The working grid in level-0 pixels and in the output frame (level-0, relative to the bounds origin).

    Attributes
    ----------
    shape : tuple of int
        (height, width) in working pixels.
    scale : float
        Level-0 pixels per working pixel.
    origin : tuple of int
        Level-0 (x, y) of the top-left corner of working pixel (0, 0).
    bounds_origin : tuple of int
        Level-0 (x, y) of the slide's bounds origin: (0, 0) of the output frame.
    """

    shape: tuple[int, int]
    scale: float
    origin: tuple[int, int]
    bounds_origin: tuple[int, int]

    @classmethod
    def from_view(cls, view, slide) -> Frame:
        """The frame of a :class:`~wsi_weakseg.slide.WorkingView` on ``slide``."""
        return cls(tuple(view.shape), view.scale, tuple(view.origin), tuple(slide.bounds[:2]))

    @property
    def offset(self) -> tuple[float, float]:
        """Output-frame (x, y) of the top-left corner of working pixel (0, 0)."""
        return self.origin[0] - self.bounds_origin[0], self.origin[1] - self.bounds_origin[1]

    def box0(self, y: int, x: int, h: int, w: int) -> tuple[float, float, float, float]:
        """Level-0 (x0, y0, x1, y1) of working rows [y, y+h) x cols [x, x+w)."""
        x0, y0 = grid_to_level0(self.origin, self.scale, x, y)
        x1, y1 = grid_to_level0(self.origin, self.scale, x + w, y + h)
        return (x0, y0, x1, y1)

    def output_box(self, b: tuple[float, float, float, float]):
        """A level-0 box as a shapely box in the output frame."""
        from shapely.geometry import box

        bx, by = self.bounds_origin
        return box(b[0] - bx, b[1] - by, b[2] - bx, b[3] - by)

    def anchors_in(self, roi, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Whether working-pixel anchors (their centres, in the output frame) lie inside ``roi``."""
        import shapely

        fx, fy = grid_to_level0(self.offset, self.scale, cols + 0.5, rows + 0.5)
        return shapely.contains_xy(roi, fx, fy)


@dataclass(frozen=True)
class TilePlan:
    """The tiles to run.

    Attributes
    ----------
    tiles : list of (int, int)
        Tile origins (row, col) in working pixels, in raster order.
    total : int
        Tiles of the whole grid.
    tile : int
        Tile core side (working pixels).
    margin : int
        Selection margin (working pixels) the tiles were chosen with.
    """

    tiles: list[tuple[int, int]]
    total: int
    tile: int
    margin: int


def anchor_halo(params: InstanceParams) -> int:
    """Working pixels around a marker whose maps decide that marker's nucleus: ``2 * reach + peak_radius + 2``.

    The nucleus's pixels lie within ``reach`` of its marker; a marker competing for one of them lies within
    ``reach`` of that pixel (so ``2 * reach`` of the marker), is decided by the centre map within
    ``peak_radius`` of itself, and the clean-up looks one pixel beyond an instance's pixels (pockets). This
    is :attr:`InstanceParams.halo` less one ``reach``: the halo also covers a pixel whose nucleus is
    anchored elsewhere.
    """
    return 2 * params.reach + params.peak_radius + 2


def selection_margin(context: int, params: InstanceParams) -> int:
    """Working pixels around a tile that decide whether it runs: ``max(context, anchor_halo(params))``.

    With it, every tile within :func:`anchor_halo` of tissue (or of the ROI) runs, so a nucleus anchored
    there is computed exactly as in a whole-image run, however close to the edge. ``reach + peak_radius``
    would keep the nucleus's own pixels but not always the markers competing for them.
    """
    return max(int(context), anchor_halo(params))


def plan_tiles(frame: Frame, tile: int, margin: int, has_tissue: TissueTest, roi=None) -> TilePlan:
    """Choose the tiles whose box grown by ``margin`` overlaps tissue (and ``roi``).

    Parameters
    ----------
    frame : Frame
        The working grid.
    tile : int
        Tile core side (working pixels).
    margin : int
        Selection margin (working pixels), see :func:`selection_margin`.
    has_tissue : callable
        Tissue test on level-0 boxes (absolute coordinates).
    roi : shapely geometry, optional
        Region of interest in the output frame.

    Returns
    -------
    TilePlan
        With no tiles when there is no tissue (inside the ROI): raising is the caller's decision.
    """
    grid = tile_origins(frame.shape, tile)

    def wanted(y: int, x: int) -> bool:
        b = frame.box0(y - margin, x - margin, tile + 2 * margin, tile + 2 * margin)
        if not has_tissue(*b):
            return False
        return roi is None or roi.intersects(frame.output_box(b))

    def roi_has_tissue(y: int, x: int) -> bool:
        part = roi.intersection(frame.output_box(frame.box0(y, x, tile, tile)))
        if part.is_empty:
            return False
        x0, y0, x1, y1 = part.bounds
        bx, by = frame.bounds_origin
        return has_tissue(x0 + bx, y0 + by, x1 + bx, y1 + by)

    tiles = [o for o in grid if wanted(*o)]
    if roi is not None and not any(roi_has_tissue(y, x) for y, x in tiles):
        tiles = []  # the ROI touches tiles with tissue, but not the tissue itself
    return TilePlan(tiles=tiles, total=len(grid), tile=tile, margin=margin)
