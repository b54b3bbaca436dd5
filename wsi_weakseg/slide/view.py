"""The slide at the model's working resolution.

A :class:`WorkingView` maps a working-pixel grid onto the slide's bounds region. When a pyramid level
already has the target pixel size (within a tolerance) it is read as is; otherwise the view
resamples with a position-independent bilinear interpolation (plus an anti-alias Gaussian when it
shrinks by more than 1.5x), so that every working pixel depends only on its global coordinates:
reading a big region and cropping it gives, bit for bit, what reading the sub-region gives.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage

from wsi_weakseg.errors import ConfigError
from wsi_weakseg.slide.reader import Slide

log = logging.getLogger(__name__)

#: Residual shrink factor above which the level image is low-pass filtered before interpolation.
ANTIALIAS_ABOVE = 1.5
#: Gaussian kernel radius in sigmas (scipy's ``truncate``).
_TRUNCATE = 4.0
_BAND_ROWS = 512  # output rows per resampled read: bounds its float32 buffers
_EPS = 1e-9


def grid_to_level0(origin: tuple[int, int], scale: float, x, y) -> tuple:
    """Level-0 (x, y) of working-grid coordinates (continuous, corner convention; arrays allowed).

    Working pixel (x, y) spans level-0 ``[origin + x*scale, origin + (x+1)*scale)`` on each axis, so its
    centre is at ``x + 0.5``. The one place this mapping is written: :class:`WorkingView`, the engine's
    frame and the training reader all use it.
    """
    return origin[0] + x * scale, origin[1] + y * scale


def level0_to_grid(origin: tuple[int, int], scale: float, x, y) -> tuple:
    """Working-grid (x, y) of level-0 coordinates: the inverse of :func:`grid_to_level0`."""
    return (x - origin[0]) / scale, (y - origin[1]) / scale


class WorkingView:
    """Read a slide's bounds region at a target pixel size.

    Parameters
    ----------
    slide : Slide
        An open slide.
    target_mpp : float
        Working pixel size in µm/px (the model's).
    tolerance : float
        Relative mpp mismatch up to which a pyramid level is read without resampling.

    Attributes
    ----------
    level : int
        Pyramid level the pixels are read from.
    scale : float
        Level-0 pixels per working pixel.
    mpp : float
        Working pixel size actually used (``slide.mpp * scale``).
    resampled : bool
        Whether pixels are interpolated (False: a level's pixels are returned as they are).
    origin : tuple of int
        Level-0 (x, y) of the top-left corner of working pixel (0, 0): the bounds origin, snapped
        onto the level's pixel grid when a level > 0 is read directly (rounded to the nearest
        level-0 pixel if the level's downsample is not an integer).
    shape : tuple of int
        (height, width) in working pixels covering the bounds region.

    Notes
    -----
    Working pixel (x, y) covers level-0 [origin_x + x*scale, origin_x + (x+1)*scale) (same for y).
    In the resampled case its centre maps to continuous coordinate
    ``u = (origin_x + (x + 0.5) * scale) / ds - 0.5`` of the read level (pixel centres at integers),
    clamped to the level's extent, and is bilinearly interpolated.

    Examples
    --------
    >>> import numpy as np
    >>> from wsi_weakseg.slide.reader import ImageSlide
    >>> view = WorkingView(ImageSlide(np.zeros((100, 80, 3), np.uint8), mpp=0.2456), 0.25)
    >>> view.resampled, view.scale, view.shape
    (False, 1.0, (100, 80))
    """

    def __init__(self, slide: Slide, target_mpp: float, tolerance: float = 0.05) -> None:
        try:
            target = float(target_mpp)
        except (TypeError, ValueError):
            target = math.nan
        if not (math.isfinite(target) and target > 0):
            raise ConfigError(f"target mpp must be a positive number, got {target_mpp!r}")
        target_mpp = target
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ConfigError(f"mpp tolerance must be >= 0, got {tolerance!r}")
        self.slide = slide
        self.target_mpp = float(target_mpp)
        bx, by, bw, bh = slide.bounds
        errors = [abs(slide.level_mpp(i) - target_mpp) / target_mpp for i in range(slide.level_count)]
        direct = [i for i, e in enumerate(errors) if e <= tolerance]
        if direct:
            self.level = min(direct, key=lambda i: errors[i])
            ds = slide.level_downsamples[self.level]
            lw, lh = slide.level_dimensions[self.level]
            self.resampled = False
            self.scale = ds
            # first level pixel whose corner is at or after the bounds origin
            self._lx0 = math.ceil(bx / ds - _EPS)
            self._ly0 = math.ceil(by / ds - _EPS)
            self.origin = (int(round(self._lx0 * ds)), int(round(self._ly0 * ds)))
            width = min(math.floor((bx + bw - self._lx0 * ds) / ds + _EPS), lw - self._lx0)
            height = min(math.floor((by + bh - self._ly0 * ds) / ds + _EPS), lh - self._ly0)
        else:
            self.scale = self.target_mpp / slide.mpp
            usable = [i for i, d in enumerate(slide.level_downsamples) if d <= self.scale * (1 + tolerance)]
            self.level = max(usable, key=lambda i: slide.level_downsamples[i]) if usable else 0
            self.resampled = True
            self.origin = (int(bx), int(by))
            width = math.floor(bw / self.scale + _EPS)
            height = math.floor(bh / self.scale + _EPS)
        self.shape = (max(int(height), 0), max(int(width), 0))
        self.mpp = slide.mpp * self.scale
        self._ds = slide.level_downsamples[self.level]
        factor = self.scale / self._ds
        self._sigma = (factor - 1) / 2 if self.resampled and factor > ANTIALIAS_ABOVE else 0.0
        self._margin = int(_TRUNCATE * self._sigma + 0.5) + 1 if self._sigma else 0
        log.info(
            "%s: working at %.4g µm/px (target %.4g) from level %d (%.4g µm/px), %s, %dx%d working px",
            slide.path.name,
            self.mpp,
            self.target_mpp,
            self.level,
            slide.level_mpp(self.level),
            f"resampled x{factor:.4g}" + (f" with anti-alias sigma {self._sigma:.3g}" if self._sigma else "")
            if self.resampled
            else "no resampling",
            self.shape[1],
            self.shape[0],
        )

    def to_level0(self, x, y) -> tuple:
        """Level-0 coordinates of working-pixel coordinates (continuous, corner convention; arrays allowed)."""
        return grid_to_level0(self.origin, self.scale, x, y)

    def from_level0(self, x, y) -> tuple:
        """Working-pixel coordinates of level-0 coordinates (the inverse of :meth:`to_level0`)."""
        return level0_to_grid(self.origin, self.scale, x, y)

    def read(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        """Read working pixels [y, y+height) x [x, x+width).

        Returns
        -------
        numpy.ndarray
            uint8 (height, width, 3).

        Raises
        ------
        ValueError
            If the region is not inside [0, H) x [0, W) (see :attr:`shape`).
        """
        H, W = self.shape
        if height < 0 or width < 0 or y < 0 or x < 0 or y + height > H or x + width > W:
            raise ValueError(
                f"region rows [{y}, {y + height}) x cols [{x}, {x + width}) is not inside the view's {H}x{W} pixels"
            )
        if height == 0 or width == 0:
            return np.full((height, width, 3), 255, np.uint8)
        if not self.resampled:
            return self._read_level(self._ly0 + y, self._lx0 + x, height, width)
        if height <= _BAND_ROWS:
            return self._read_resampled(int(y), int(x), int(height), int(width))
        # in bands of rows, so memory stays bounded for large regions (a thumbnail of a whole slide); each band
        # reads its own filter margin, so the result equals one read (the same rule makes tiled == whole)
        out = np.empty((height, width, 3), np.uint8)
        for r in range(0, height, _BAND_ROWS):
            n = min(_BAND_ROWS, height - r)
            out[r : r + n] = self._read_resampled(int(y + r), int(x), n, int(width))
        return out

    def _read_level(self, ly: int, lx: int, height: int, width: int) -> np.ndarray:
        """Read pixels of the chosen level by level-pixel coordinates."""
        return self.slide.read_level_region(self.level, lx, ly, width, height)

    def _axis(self, start: int, count: int, origin: int, size: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Integer positions and weights along one axis, and the level range [lo, hi) to read."""
        pos = np.arange(start, start + count, dtype=np.float64)
        u = (origin + (pos + 0.5) * self.scale) / self._ds - 0.5
        u = np.clip(u, 0.0, size - 1)
        i0 = np.minimum(np.floor(u), max(size - 2, 0)).astype(np.int64)
        t = (u - i0).astype(np.float32)
        lo = max(int(i0[0]) - self._margin, 0)
        hi = min(int(i0[-1]) + 2 + self._margin, size)
        return i0, t, lo, hi

    def _read_resampled(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        lw, lh = self.slide.level_dimensions[self.level]
        ix, tx, xa, xb = self._axis(x, width, self.origin[0], lw)
        iy, ty, ya, yb = self._axis(y, height, self.origin[1], lh)
        img = self._read_level(ya, xa, yb - ya, xb - xa).astype(np.float32)
        if self._sigma:
            img = ndimage.gaussian_filter(
                img, sigma=(self._sigma, self._sigma, 0), mode="nearest", truncate=_TRUNCATE
            )
        ix1 = np.minimum(ix + 1, lw - 1) - xa
        iy1 = np.minimum(iy + 1, lh - 1) - ya
        ix, iy = ix - xa, iy - ya
        tx, ty = tx[None, :, None], ty[:, None, None]
        cols = img[:, ix] * (1 - tx) + img[:, ix1] * tx
        out = cols[iy] * (1 - ty) + cols[iy1] * ty
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def __repr__(self) -> str:
        return (
            f"WorkingView(level={self.level}, scale={self.scale:.4g}, mpp={self.mpp:.4g}, "
            f"resampled={self.resampled}, origin={self.origin}, shape={self.shape})"
        )
