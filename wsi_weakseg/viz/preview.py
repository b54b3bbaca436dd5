"""A slide's preview: thumbnail, tissue outline and nucleus-density heat map with a colour bar in nuclei/mm².

Pure drawing on arrays; :mod:`wsi_weakseg.engine.pictures` reads the slide and writes the files.

Layout is pixel-exact: the thumbnail sits unscaled at :attr:`PreviewLayout.image_origin` of the PNG, so the
heat colour of each density cell can be checked pixel by pixel. The heat map is blended into the thumbnail
(``HEAT_ALPHA``) on cells that hold tissue or nuclei; the tissue outline is drawn in Okabe-Ito vermillion,
which no cividis colour resembles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import CMAP, OKABE_ITO, colorize, outline_mask, paint

#: Opacity of the heat colour over the thumbnail.
HEAT_ALPHA = 0.5
#: Colour of the tissue outline.
TISSUE_COLOUR = OKABE_ITO["vermillion"]
_MARGIN = {"left": 70, "right": 110, "top": 36, "bottom": 50}  # px around the thumbnail (axes, colour bar)
_DPI = 100


@dataclass(frozen=True)
class DensityGrid:
    """Nuclei per mm² on square cells of the working grid.

    Attributes
    ----------
    counts : ndarray (gy, gx) of int64
        Nuclei whose anchor lies in each cell.
    per_mm2 : ndarray (gy, gx) of float64
        ``counts`` over each cell's area inside the image, in nuclei/mm².
    cell_px : int
        Cell side in working pixels.
    cell_um : float
        Cell side in µm.
    area_mm2 : ndarray (gy, gx) of float64
        Each cell's area inside the image (edge cells are partial).
    """

    counts: np.ndarray
    per_mm2: np.ndarray
    cell_px: int
    cell_um: float
    area_mm2: np.ndarray

    def scale_top(self) -> float:
        """Top of the colour scale: the densest cell at least half inside the image (edge slivers are noisy)."""
        held = self.counts > 0
        big = held & (self.area_mm2 >= 0.5 * self.area_mm2.max()) if self.area_mm2.size else held
        top = self.per_mm2[big if big.any() else held].max() if held.any() else 0.0
        return float(top) if top > 0 else 1.0


def cell_size_um(extent_um: float, cells: int = 40, minimum_um: float = 25.0) -> float:
    """A round cell side (1, 2 or 5 x 10^k µm) giving about ``cells`` cells along ``extent_um``.

    Examples
    --------
    >>> cell_size_um(25_000.0), cell_size_um(250.0)
    (500.0, 25.0)
    """
    raw = extent_um / cells
    k = 10.0 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    nice = min((m * k for m in (1, 2, 5, 10)), key=lambda v: abs(math.log(v / raw)) if raw > 0 else v)
    return float(max(nice, minimum_um))


def density_grid(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], mpp: float,
                 cell_um: float) -> DensityGrid:
    """Count nucleus anchors (working ``rows``, ``cols``) per cell of ``cell_um`` on a grid of ``shape``."""
    cell_px = max(1, round(cell_um / mpp))
    H, W = shape
    gy, gx = -(-H // cell_px), -(-W // cell_px)
    counts = np.zeros((gy, gx), np.int64)
    np.add.at(counts, (np.asarray(rows) // cell_px, np.asarray(cols) // cell_px), 1)
    hy = np.minimum(cell_px, H - np.arange(gy) * cell_px)
    hx = np.minimum(cell_px, W - np.arange(gx) * cell_px)
    area_mm2 = np.outer(hy, hx) * mpp**2 / 1e6
    return DensityGrid(counts, counts / area_mm2, cell_px, cell_px * mpp, area_mm2)


@dataclass(frozen=True)
class PreviewLayout:
    """Where the thumbnail sits in the preview PNG and the colour scale of its heat map."""

    image_origin: tuple[int, int]  # (x, y) of thumbnail pixel (0, 0) in the PNG
    vmax: float  # nuclei/mm² at the top of the colour bar


def heat_composite(thumb: np.ndarray, cell_of_row: np.ndarray, cell_of_col: np.ndarray, grid: DensityGrid,
                   tissue: np.ndarray | None, vmax: float) -> np.ndarray:
    """The thumbnail with each cell's heat colour blended in (cells with tissue or nuclei) and the tissue outline.

    ``cell_of_row`` / ``cell_of_col`` give the density cell of each thumbnail row / column (-1: outside).
    """
    inside = (cell_of_row[:, None] >= 0) & (cell_of_col[None, :] >= 0)
    r, c = np.clip(cell_of_row, 0, None), np.clip(cell_of_col, 0, None)
    shown = inside & ((grid.counts[np.ix_(r, c)] > 0) | (tissue if tissue is not None else False))
    heat = colorize(grid.per_mm2, 0.0, vmax)[np.ix_(r, c)]  # colour per cell, then per pixel
    out = np.array(thumb, np.uint8, copy=True)
    # round(thumb * (1 - a) + heat * a) of every pair of uint8 levels, looked up: the same values, ~6x faster
    o, h = np.meshgrid(np.arange(256.0), np.arange(256.0), indexing="ij")
    blend = np.round(o * (1 - HEAT_ALPHA) + h * HEAT_ALPHA).astype(np.uint8)
    np.copyto(out, blend[out, heat], where=np.broadcast_to(shown[..., None], out.shape))
    if tissue is not None:
        out = paint(out, outline_mask(tissue.astype(np.int32)), TISSUE_COLOUR)
    return out


def render_preview(composite: np.ndarray, title: str, extent_mm: tuple[float, float],
                   vmax: float) -> tuple[np.ndarray, PreviewLayout]:
    """The nuclei preview: ``composite`` at 1:1 pixels, axes in mm, a colour bar in nuclei/mm², a title.

    Returns
    -------
    rgb : ndarray (H, W, 3) uint8
    layout : PreviewLayout
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    def colour_bar(fig, cax) -> None:
        fig.colorbar(ScalarMappable(Normalize(0.0, vmax), CMAP), cax=cax).set_label("nuclei / mm²")

    rgb, origin = render_framed(composite, title, extent_mm, colour_bar)
    return rgb, PreviewLayout(origin, vmax)


def render_framed(composite: np.ndarray, title: str, extent_mm: tuple[float, float],
                  side) -> tuple[np.ndarray, tuple[int, int]]:
    """``composite`` at 1:1 pixels framed by axes in mm and a title, with ``side(fig, cax)`` drawn beside it.

    matplotlib draws the frame (axes, ticks, title, and whatever ``side`` puts in the axes ``cax`` right of
    the image: a colour bar, a legend) around an empty image area and the composite is pasted into it
    unresampled, which is what ``figimage`` would do at a fraction of its cost.

    Returns
    -------
    rgb : ndarray (H, W, 3) uint8
    image_origin : tuple of int
        (x, y) of composite pixel (0, 0) in ``rgb``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = composite.shape[:2]
    m = _MARGIN
    fw, fh = w + m["left"] + m["right"], h + m["top"] + m["bottom"]
    fig = Figure(figsize=(fw / _DPI, fh / _DPI), dpi=_DPI, facecolor="white")
    ax = fig.add_axes((m["left"] / fw, m["bottom"] / fh, w / fw, h / fh))
    ax.patch.set_visible(False)  # the axes only carry the mm scale over the image
    ax.set_xlim(0.0, extent_mm[0])
    ax.set_ylim(extent_mm[1], 0.0)
    for spine in ax.spines.values():  # the frame would cover the thumbnail's edge pixels
        spine.set_visible(False)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_title(title, fontsize=9)
    side(fig, fig.add_axes(((m["left"] + w + 12) / fw, m["bottom"] / fh, 14 / fw, h / fh)))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.array(np.asarray(canvas.buffer_rgba())[..., :3])
    if rgb.shape[:2] != (fh, fw):
        raise RuntimeError(f"preview canvas is {rgb.shape[1]}x{rgb.shape[0]}, expected {fw}x{fh}")
    rgb[m["top"]:m["top"] + h, m["left"]:m["left"] + w] = composite
    return rgb, (m["left"], m["top"])


def choose_overlay_cells(grid: DensityGrid, n: int) -> list[tuple[int, int]]:
    """``n`` cells across the density range, densest first, then median, then sparsest, then between.

    Only cells holding nuclei qualify; ties go to the earlier cell in raster order, so the choice is
    deterministic.
    """
    flat = grid.per_mm2.ravel()
    idx = np.flatnonzero(grid.counts.ravel() > 0)
    if n <= 0 or idx.size == 0:
        return []
    ranked = idx[np.lexsort((idx, -flat[idx]))]  # densest first, raster order among ties
    quantiles = [0.0, 0.5, 1.0] + [q / (n + 1) for q in range(1, n + 1)]
    picked: list[int] = []
    for q in quantiles:
        i = int(ranked[round(q * (ranked.size - 1))])
        if i not in picked:
            picked.append(i)
        if len(picked) == min(n, ranked.size):
            break
    for i in ranked:  # fewer distinct quantiles than n: fill in density order
        if len(picked) >= min(n, ranked.size):
            break
        if int(i) not in picked:
            picked.append(int(i))
    gx = grid.counts.shape[1]
    return [(i // gx, i % gx) for i in picked]
