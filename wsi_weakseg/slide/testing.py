"""Write small synthetic slides for tests and demos (no pytest dependency).

``write_pyramid_tiff`` writes a generic tiled pyramidal TIFF that OpenSlide opens as "generic-tiff"
and whose pixel size it derives from the resolution tags. ``write_leica_scn`` writes a minimal Leica
SCN, the smallest format we found for which OpenSlide reports ``openslide.bounds-*`` (the main image
sits at an offset inside a larger, empty slide area).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_LEICA_XMLNS = "http://www.leica-microsystems.com/scn/2010/10/01"


def downsample2(rgb: np.ndarray) -> np.ndarray:
    """Halve an image by 2x2 area averaging (odd trailing rows/columns are dropped)."""
    h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
    blocks = rgb[: 2 * h, : 2 * w].astype(np.float32).reshape(h, 2, w, 2, -1)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def pyramid(rgb: np.ndarray, levels: int) -> list[np.ndarray]:
    """Level images from full resolution down, each half the previous."""
    out = [np.ascontiguousarray(rgb)]
    for _ in range(levels - 1):
        out.append(downsample2(out[-1]))
    return out


def write_pyramid_tiff(
    path: str | os.PathLike,
    rgb: np.ndarray,
    mpp: float | None,
    levels: int = 3,
    tile: int = 256,
    compression: str | None = None,
) -> Path:
    """Write a tiled pyramidal TIFF, one page per level, with resolution tags in pixels per cm.

    Parameters
    ----------
    path : path-like
        Output file.
    rgb : numpy.ndarray
        uint8 (height, width, 3) level-0 image.
    mpp : float or None
        Level-0 µm/px written as XResolution/YResolution (ResolutionUnit centimetre); ``None``
        writes no physical resolution.
    levels : int
        Number of levels; each is a 2x area average of the previous one.
    tile : int
        Tile edge in pixels (multiple of 16).
    compression : str, optional
        tifffile compression name ("jpeg", "zlib", ...); ``None`` (default) writes lossless raw tiles.

    Returns
    -------
    Path
        ``path``.
    """
    import tifffile

    path = Path(path)
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(pyramid(rgb, levels)):
            kwargs = {}
            if mpp is not None:
                res = 1e4 / (mpp * 2**i)
                kwargs = {"resolution": (res, res), "resolutionunit": "CENTIMETER"}
            tw.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                subfiletype=1 if i else 0,
                metadata=None,
                **kwargs,
            )
    return path


def write_leica_scn(
    path: str | os.PathLike,
    rgb: np.ndarray,
    mpp: float,
    offset: tuple[int, int],
    slide_size: tuple[int, int],
    levels: int = 2,
    tile: int = 256,
) -> Path:
    """Write a minimal Leica SCN whose main image lies at ``offset`` inside a ``slide_size`` area.

    OpenSlide reports ``openslide.bounds-x/-y/-width/-height`` = (offset, image size) for it, and
    reads transparent (background) pixels outside the main image.

    Parameters
    ----------
    path : path-like
        Output file (suffix ``.scn``).
    rgb : numpy.ndarray
        uint8 (height, width, 3) main image; height and width divisible by ``2**(levels-1)``.
    mpp : float
        Level-0 µm/px; must make ``mpp * 1000`` (nm per pixel) an integer.
    offset : (int, int)
        (x, y) level-0 position of the main image.
    slide_size : (int, int)
        (width, height) of the whole slide area in level-0 pixels.
    levels, tile : int
        Pyramid levels and tile edge.
    """
    import tifffile

    nm = int(round(mpp * 1000))
    h, w = rgb.shape[:2]
    dims = "\n".join(
        f'<dimension sizeX="{w >> i}" sizeY="{h >> i}" r="{i}" ifd="{i}"/>' for i in range(levels)
    )
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<scn xmlns="{_LEICA_XMLNS}">
<collection name="synthetic" uuid="0" sizeX="{slide_size[0] * nm}" sizeY="{slide_size[1] * nm}">
<barcode>U1lOVEhFVElD</barcode>
<image name="main" uuid="1">
<creationDate>2024-01-01T00:00:00Z</creationDate>
<device model="wsi-weakseg synthetic" version="1"/>
<pixels sizeX="{w}" sizeY="{h}">
{dims}
</pixels>
<view sizeX="{w * nm}" sizeY="{h * nm}" offsetX="{offset[0] * nm}" offsetY="{offset[1] * nm}" spacingZ="0"/>
<scanSettings><objectiveSettings><objective>20</objective></objectiveSettings>
<illuminationSettings><numericalAperture>0.7</numericalAperture>
<illuminationSource>brightfield</illuminationSource></illuminationSettings></scanSettings>
</image>
</collection>
</scn>"""
    path = Path(path)
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(pyramid(rgb, levels)):
            res = 1e7 / (nm * 2**i)
            tw.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                description=xml if i == 0 else None,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
    return path
