"""Read plain (non-pyramidal) images fully into memory, with their pixel size when it is physical."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from wsi_weakseg.errors import SlideReadError, UnsupportedFormatError
from wsi_weakseg.slide import _mpp

log = logging.getLogger(__name__)

#: Largest plain (non-pyramidal) image read, in pixels (2**28 = 268 Mpx, about 16384 x 16384; 805 MB as RGB).
#: Larger ones are refused from their header alone, before any pixel is decoded. Formats PIL decodes are
#: also bound by PIL's own decompression-bomb guard (``2 * PIL.Image.MAX_IMAGE_PIXELS``, 179 Mpx by
#: default), which wsi-weakseg leaves in place and reports the same way.
MAX_PLAIN_IMAGE_PIXELS = 2**28
#: Above this many pixels a plain image is still read, but a warning suggests a pyramidal format.
LARGE_IMAGE_PIXELS = 10_000 * 10_000


def read_plain_image(path: Path) -> tuple[np.ndarray, float | None, str, dict[str, str]]:
    """Decode an image file to RGB.

    Returns
    -------
    rgb : numpy.ndarray
        uint8 (height, width, 3).
    mpp : float or None
        Pixel size from TIFF resolution tags, PNG pHYs (metre unit) or JPEG density (inch/cm unit);
        ``None`` when absent, unit-less or implausible.
    source : str
        "tiff-resolution" or "metadata".
    properties : dict
        A few metadata entries (format, size, resolution tags).

    Raises
    ------
    SlideReadError
        The file is truncated or corrupt, or its header gives more than :data:`MAX_PLAIN_IMAGE_PIXELS` pixels
        (checked before decoding).
    UnsupportedFormatError
        The file is not a readable image.
    """
    from wsi_weakseg.slide.reader import is_tiff

    if is_tiff(path):
        return _read_tiff(path)
    return _read_pil(path)


def _too_large(path: Path, width: int, height: int) -> SlideReadError:
    return SlideReadError(
        f"{path}: a {width}x{height} plain image is too large to read into memory (limit "
        f"{MAX_PLAIN_IMAGE_PIXELS / 1e6:.0f} Mpx); convert it to a tiled pyramidal TIFF, e.g. "
        f"vips tiffsave {path.name} out.tif --tile --pyramid --compression jpeg"
    )


def _check_size(path: Path, width: int, height: int) -> None:
    """Refuse an image over :data:`MAX_PLAIN_IMAGE_PIXELS`; warn above :data:`LARGE_IMAGE_PIXELS`."""
    if width * height > MAX_PLAIN_IMAGE_PIXELS:
        raise _too_large(path, width, height)
    if width * height > LARGE_IMAGE_PIXELS:
        log.warning("%s: a %dx%d plain image is read fully into memory; a pyramidal TIFF is faster", path, width, height)


def _read_tiff(path: Path) -> tuple[np.ndarray, float | None, str, dict[str, str]]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            _check_size(path, int(page.imagewidth), int(page.imagelength))
            arr = page.asarray()
            photometric = int(page.photometric)
            tags = {t.name: t.value for t in page.tags.values() if t.name in ("XResolution", "YResolution", "ResolutionUnit")}
    except SlideReadError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise SlideReadError(f"{path}: cannot decode TIFF (corrupt or truncated?): {exc}") from exc
    props = {"image.format": "TIFF"}
    x_res, y_res, unit = _mpp.tiff_resolution(tags)
    for axis, res in (("XResolution", x_res), ("YResolution", y_res)):
        if tags.get(axis) is not None:
            props[f"tiff.{axis}"] = repr(res)
    if "ResolutionUnit" in tags:
        props["tiff.ResolutionUnit"] = unit or "none"
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar configuration
    if photometric == 0 and arr.ndim == 2:  # MinIsWhite
        arr = np.iinfo(arr.dtype).max - arr if arr.dtype.kind == "u" else arr
    rgb = _to_rgb8(arr, path)
    return rgb, _mpp.mpp_from_tiff_tags(tags, str(path)), "tiff-resolution", props


def _read_pil(path: Path) -> tuple[np.ndarray, float | None, str, dict[str, str]]:
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)  # reads the header only; PIL's decompression-bomb guard stays on
    except Image.DecompressionBombError as exc:
        size = re.search(r"\((\d+) pixels\)", str(exc))
        raise SlideReadError(
            f"{path}: the image is too large to read into memory ({size.group(1) if size else 'over the limit'} "
            f"pixels); convert it to a tiled pyramidal TIFF, e.g. vips tiffsave {path.name} out.tif --tile --pyramid"
        ) from None
    except UnidentifiedImageError as exc:
        raise UnsupportedFormatError(
            f"{path} is not a slide or image format wsi-weakseg reads (OpenSlide formats, PNG, JPEG, TIFF, BMP)"
        ) from exc
    except OSError as exc:
        raise SlideReadError(f"{path}: cannot read: {exc}") from exc
    with im:
        fmt = im.format or "unknown"
        _check_size(path, im.width, im.height)  # also when the caller disabled PIL's guard
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise SlideReadError(f"{path}: cannot decode {fmt} image (corrupt or truncated?): {exc}") from exc
        props = {"image.format": fmt, "image.mode": im.mode}
        dpi = im.info.get("dpi")  # PIL sets it only for physical units (PNG metre, JPEG inch/cm)
        if dpi is not None:
            props["image.dpi"] = repr(tuple(float(d) for d in dpi))
        mpp = _mpp.mpp_from_dpi(dpi, str(path))
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            arr = np.asarray(im.convert("RGBA"))
        elif im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im)
        else:
            arr = np.asarray(im.convert("RGB"))
    return _to_rgb8(arr, path), mpp, "metadata", props


def _to_rgb8(arr: np.ndarray, path: Path) -> np.ndarray:
    from wsi_weakseg.slide.reader import composite_on_white

    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise UnsupportedFormatError(f"{path}: pixel type {arr.dtype} is not supported (need 8- or 16-bit)")
    if arr.ndim not in (2, 3):
        raise UnsupportedFormatError(f"{path}: unsupported image shape {arr.shape}")
    return composite_on_white(arr)
