"""Pictures people look at: PNG writing, colour maps, outlines and palettes shared by every picture.

Colour rules (issue 19): continuous quantities use ``cividis`` (monotonic lightness, so it reads in grey, and
designed for colour-vision deficiency); categories use the Okabe-Ito palette. Figures are drawn with
matplotlib's object-oriented API on the Agg canvas (no pyplot global state, no display needed).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

#: Okabe & Ito (2008) colour-blind-safe palette, RGB.
OKABE_ITO = {
    "orange": (230, 159, 0), "sky": (86, 180, 233), "green": (0, 158, 115), "yellow": (240, 228, 66),
    "blue": (0, 114, 178), "vermillion": (213, 94, 0), "purple": (204, 121, 167), "black": (0, 0, 0),
}
#: Continuous colour map of every heat map and colour bar.
CMAP = "cividis"


def save_png(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) or (H, W, 4) uint8 array as PNG, atomically (temporary name, then rename).

    zlib level 1: on a 2180 x 2086 slide preview 4x faster than PIL's default level 6 (0.31 vs 1.32 CPU-s) for a
    file 4 % larger (7.1 vs 6.8 MB), and pictures are written on every ``segment`` run.
    """
    from PIL import Image

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG", optimize=False, compress_level=1)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_figure(fig, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Render a :class:`matplotlib.figure.Figure` on the Agg canvas and write it atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return save_png(path, np.asarray(canvas.buffer_rgba())[..., :3])


def colorize(values: np.ndarray, vmin: float, vmax: float, cmap: str = CMAP) -> np.ndarray:
    """Map values to uint8 RGB with a matplotlib colour map; values are clipped to [vmin, vmax]."""
    from matplotlib import colormaps

    span = (vmax - vmin) or 1.0
    t = np.clip((np.asarray(values, np.float64) - vmin) / span, 0.0, 1.0)
    return (colormaps[cmap](t)[..., :3] * 255 + 0.5).astype(np.uint8)


def outline_mask(labels: np.ndarray) -> np.ndarray:
    """Pixels of an instance whose 4-neighbour (or the image edge) has another label: the inner outline."""
    labels = np.asarray(labels)
    pad = np.pad(labels, 1, mode="edge")
    centre = pad[1:-1, 1:-1]
    diff = ((pad[:-2, 1:-1] != centre) | (pad[2:, 1:-1] != centre) | (pad[1:-1, :-2] != centre)
            | (pad[1:-1, 2:] != centre))
    return diff & (labels != 0)


def paint(rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], alpha: float = 1.0) -> np.ndarray:
    """``rgb`` with ``color`` blended in at ``alpha`` where ``mask`` is set (a new array)."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    c = np.asarray(color, np.float64)
    out[mask] = np.round(out[mask] * (1 - alpha) + c * alpha).astype(np.uint8)
    return out
