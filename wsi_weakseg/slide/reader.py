"""Open whole-slide images (via OpenSlide) and plain images (PNG, JPEG, TIFF, ...) behind one interface.

Coordinates follow OpenSlide and QuPath: ``read_region`` takes the level-0 pixel position of the
top-left corner of the region and a size in pixels of the requested level; pixel (col i, row j)
spans [i, i+1) x [j, j+1).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType

import numpy as np

from wsi_weakseg.errors import MissingMppError, SlideNotFoundError, SlideReadError, UnsupportedFormatError
from wsi_weakseg.slide import _mpp

log = logging.getLogger(__name__)

#: Block edge (level pixels) of the fixed grid used to read levels with a non-integer downsample.
LEVEL_BLOCK = 256

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class Slide:
    """A pyramidal RGB image with a physical pixel size.

    Attributes
    ----------
    path : Path
        The file the slide was read from.
    vendor : str
        OpenSlide's vendor name ("aperio", "generic-tiff", "leica", ...) or "image" for plain images.
    level_dimensions : tuple of (int, int)
        (width, height) of each pyramid level, level 0 first.
    level_downsamples : tuple of float
        Level-0 pixels per level pixel, one per level.
    mpp : float
        Level-0 pixel size in microns per pixel.
    mpp_source : str
        Where ``mpp`` came from: "metadata", "tiff-resolution" or "user".
    objective : float or None
        Nominal objective power, when the metadata has one.
    bounds : tuple of int
        (x, y, width, height) in level-0 pixels of the scanned region (``openslide.bounds-*``),
        else the whole level 0.
    properties : dict of str to str
        Metadata key/value pairs (OpenSlide's property map for OpenSlide slides).
    """

    path: Path
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float
    mpp_source: str
    objective: float | None
    bounds: tuple[int, int, int, int]
    properties: dict[str, str]

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    def level_mpp(self, level: int) -> float:
        """Pixel size (µm/px) of pyramid level ``level``."""
        return self.mpp * self.level_downsamples[level]

    def read_region(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """Read a region of one pyramid level as RGB.

        Parameters
        ----------
        level : int
            Pyramid level.
        x0, y0 : int
            Level-0 coordinates of the region's top-left corner.
        width, height : int
            Region size in pixels of ``level``.

        Returns
        -------
        numpy.ndarray
            uint8 array of shape (height, width, 3). Transparent pixels are composited onto white and
            pixels outside the slide are white (255).
        """
        self._check_request(level, width, height)
        if width == 0 or height == 0:
            return np.full((height, width, 3), 255, np.uint8)
        return self._read(level, int(x0), int(y0), int(width), int(height))

    def read_level_region(self, level: int, lx: int, ly: int, width: int, height: int) -> np.ndarray:
        """Read a region of one level addressed in that level's own pixel coordinates.

        Unlike :meth:`read_region`, the value of each pixel depends only on its level coordinates,
        never on where the request starts. OpenSlide places a level-0 position ``x0`` at level
        coordinate ``x0 / downsample``; for a non-integer downsample (e.g. 2.0005) that is a
        fractional position, which OpenSlide resamples. Such levels are therefore read in blocks
        aligned on a fixed global grid (each block shifted by at most half a level-0 pixel).

        Returns
        -------
        numpy.ndarray
            uint8 (height, width, 3); white outside the level.
        """
        self._check_request(level, width, height)
        if width == 0 or height == 0:
            return np.full((height, width, 3), 255, np.uint8)
        ds = self.level_downsamples[level]
        if abs(ds - round(ds)) < 1e-9:
            k = int(round(ds))
            return self._read(level, lx * k, ly * k, width, height)
        b = LEVEL_BLOCK
        out = np.empty((height, width, 3), np.uint8)
        for by in range(ly // b, (ly + height - 1) // b + 1):
            for bx in range(lx // b, (lx + width - 1) // b + 1):
                block = self._read(level, int(round(bx * b * ds)), int(round(by * b * ds)), b, b)
                ya, yb = max(by * b, ly), min((by + 1) * b, ly + height)
                xa, xb = max(bx * b, lx), min((bx + 1) * b, lx + width)
                out[ya - ly : yb - ly, xa - lx : xb - lx] = block[ya - by * b : yb - by * b, xa - bx * b : xb - bx * b]
        return out

    def _read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        raise NotImplementedError

    def _check_request(self, level: int, width: int, height: int) -> None:
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range: the slide has {self.level_count} level(s)")
        if width < 0 or height < 0:
            raise ValueError(f"region size must be non-negative, got {width}x{height}")

    def _init_mpp(self, meta_mpp: float | None, meta_source: str, user_mpp: float | None) -> None:
        if user_mpp is not None:
            self.mpp, self.mpp_source = _mpp.validate_user_mpp(user_mpp), "user"
            if meta_mpp is not None and abs(meta_mpp - self.mpp) > 0.01 * meta_mpp:
                log.warning(
                    "%s: --mpp %.4g overrides the pixel size %.4g µm/px in the metadata", self.path, self.mpp, meta_mpp
                )
        elif meta_mpp is not None:
            self.mpp, self.mpp_source = meta_mpp, meta_source
        else:
            raise MissingMppError(
                f"{self.path} has no usable pixel size metadata; pass --mpp MICRONS_PER_PIXEL "
                "(e.g. --mpp 0.25 for a 40x scan, --mpp 0.5 for 20x)"
            )

    def close(self) -> None:
        """Release the file handle (idempotent)."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (
            f"{type(self).__name__}({str(self.path)!r}, vendor={self.vendor!r}, {w}x{h}, "
            f"levels={self.level_count}, mpp={self.mpp:.4g} ({self.mpp_source}))"
        )


class OpenSlideSlide(Slide):
    """A slide read lazily through OpenSlide (SVS, NDPI, MRXS, SCN, generic tiled TIFF, ...)."""

    def __init__(self, path: Path, mpp: float | None = None) -> None:
        import openslide

        self.path = path
        try:
            self._osr = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as exc:
            raise SlideReadError(f"{path} looks like a slide but cannot be read (corrupt or truncated?): {exc}") from exc
        try:
            self._init_from_openslide(mpp)
        except BaseException:
            self._osr.close()
            raise

    def _init_from_openslide(self, mpp: float | None) -> None:
        osr = self._osr
        self.properties = dict(osr.properties)
        self.vendor = self.properties.get("openslide.vendor", "unknown")
        self.level_dimensions = tuple((int(w), int(h)) for w, h in osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in osr.level_downsamples)
        meta_mpp, source = _mpp.mpp_from_properties(self.properties, str(self.path))
        self._init_mpp(meta_mpp, source, mpp)
        obj = _mpp._float(self.properties.get("openslide.objective-power"))
        self.objective = obj if obj is not None and obj > 0 else None
        w0, h0 = self.level_dimensions[0]
        keys = ("openslide.bounds-x", "openslide.bounds-y", "openslide.bounds-width", "openslide.bounds-height")
        if all(k in self.properties for k in keys):
            self.bounds = tuple(int(self.properties[k]) for k in keys)  # type: ignore[assignment]
        else:
            self.bounds = (0, 0, w0, h0)
        # Fail now rather than mid-run on a truncated file: decode one pixel of the smallest level,
        # whose tiles most writers place last in the file.
        last = self.level_count - 1
        lw, lh = self.level_dimensions[last]
        ds = self.level_downsamples[last]
        self._read(last, int((lw - 1) * ds), int((lh - 1) * ds), 1, 1)
        log.debug("opened %r", self)

    def _read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        import openslide

        try:
            rgba = np.asarray(self._osr.read_region((x0, y0), level, (width, height)))
        except openslide.OpenSlideError as exc:
            raise SlideReadError(f"{self.path}: cannot read level {level} at ({x0}, {y0}): {exc}") from exc
        return composite_on_white(rgba)

    def close(self) -> None:
        osr = getattr(self, "_osr", None)
        if osr is not None:
            osr.close()
            self._osr = None


class ImageSlide(Slide):
    """A single-level slide held in memory (a plain image file or an array).

    Parameters
    ----------
    rgb : numpy.ndarray
        uint8 image of shape (height, width, 3).
    path : Path
        Where the image came from (for messages).
    meta_mpp : float or None
        Pixel size from the file's metadata, if any.
    mpp : float or None
        Pixel size given by the user; overrides ``meta_mpp``.
    meta_source : str
        Provenance of ``meta_mpp``.
    properties : dict, optional
        Metadata to expose.
    """

    def __init__(
        self,
        rgb: np.ndarray,
        path: Path | str = "<memory>",
        meta_mpp: float | None = None,
        mpp: float | None = None,
        meta_source: str = "metadata",
        properties: dict[str, str] | None = None,
    ) -> None:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (height, width, 3) array, got {rgb.dtype} {rgb.shape}")
        self.path = Path(path)
        self._rgb = rgb
        self.vendor = "image"
        h, w = rgb.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.objective = None
        self.bounds = (0, 0, w, h)
        self.properties = dict(properties or {})
        self._init_mpp(meta_mpp, meta_source, mpp)

    def _read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        out = np.full((height, width, 3), 255, np.uint8)
        h, w = self._rgb.shape[:2]
        xa, ya = max(x0, 0), max(y0, 0)
        xb, yb = min(x0 + width, w), min(y0 + height, h)
        if xa < xb and ya < yb:
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = self._rgb[ya:yb, xa:xb]
        return out


def composite_on_white(pixels: np.ndarray) -> np.ndarray:
    """Convert a grey, grey+alpha, RGB or RGBA uint8 array to RGB, compositing alpha onto white."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    channels = pixels.shape[2]
    if channels in (2, 4):
        colour = pixels[..., :-1].astype(np.uint32)
        alpha = pixels[..., -1:].astype(np.uint32)
        pixels = ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
        channels -= 1
    if channels == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif channels != 3:
        raise UnsupportedFormatError(f"cannot display an image with {channels} channels as RGB")
    return np.ascontiguousarray(pixels)


def open_slide(path: str | os.PathLike, mpp: float | None = None) -> Slide:
    """Open a whole-slide image or a plain image.

    Parameters
    ----------
    path : str or path-like
        Slide file (anything OpenSlide reads) or image file (PNG, JPEG, BMP, TIFF, ...).
    mpp : float, optional
        Level-0 pixel size in µm; overrides the metadata. Required when the file has none.

    Returns
    -------
    Slide
        Lazy for OpenSlide formats; plain images are read into memory.

    Raises
    ------
    SlideNotFoundError
        ``path`` does not exist.
    SlideReadError
        The file is empty, corrupt or truncated.
    UnsupportedFormatError
        The file is neither a slide nor an image format that can be read.
    MissingMppError
        No pixel size in the metadata and ``mpp`` not given.
    ConfigError
        ``mpp`` is not a finite positive number.
    """
    import openslide

    path = Path(path)
    if mpp is not None:
        mpp = _mpp.validate_user_mpp(mpp)
    if not path.exists():
        raise SlideNotFoundError(f"slide not found: {path}")
    if not path.is_file():
        raise UnsupportedFormatError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise SlideReadError(f"{path} is empty (0 bytes)")
    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        fmt = None
    if fmt is not None:
        return OpenSlideSlide(path, mpp)
    from wsi_weakseg.slide._image import read_plain_image

    rgb, meta_mpp, meta_source, props = read_plain_image(path)
    return ImageSlide(rgb, path, meta_mpp=meta_mpp, mpp=mpp, meta_source=meta_source, properties=props)


def is_tiff(path: Path) -> bool:
    """Whether the file starts with a TIFF or BigTIFF signature."""
    with open(path, "rb") as fh:
        return fh.read(4) in _TIFF_MAGIC
