"""Pixel size (mpp, microns per pixel) from slide metadata.

Metadata pixel sizes are only trusted inside a plausible range for microscopy: TIFF and PNG writers
often store a screen default (72 or 96 dpi, i.e. 353 or 265 µm/px) that says nothing about the
specimen, and such a value would silently make every physical size wrong.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from wsi_weakseg.errors import ConfigError

log = logging.getLogger(__name__)

#: Metadata pixel sizes outside this range (µm/px) are treated as absent (bogus defaults).
PLAUSIBLE_MPP = (0.01, 25.0)

#: Relative difference between mpp-x and mpp-y above which a warning is logged.
ANISOTROPY_TOLERANCE = 0.01

_UM_PER_UNIT = {"centimeter": 1e4, "cm": 1e4, "inch": 25400.0, "meter": 1e6, "m": 1e6}

#: TIFF ``ResolutionUnit`` tag values (TIFF 6.0) as the unit names of :func:`mpp_from_resolution`: 1 is no
#: absolute unit; an absent tag means 2, inch (the TIFF default). The one table every TIFF reader here uses.
TIFF_RESOLUTION_UNITS = {1: "none", 2: "inch", 3: "centimeter"}


def validate_user_mpp(mpp: float) -> float:
    """Check an mpp given by the user (``--mpp``) and return it as a float.

    Raises
    ------
    ConfigError
        If ``mpp`` is not a finite positive number.
    """
    try:
        value = float(mpp)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--mpp must be a positive number of microns per pixel, got {mpp!r}") from exc
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--mpp must be a positive number of microns per pixel, got {mpp!r}")
    return value


def mpp_from_resolution(resolution: float | None, unit: str | None) -> float | None:
    """Pixel size in µm from a resolution (pixels per ``unit``) and its unit name.

    Returns ``None`` when the unit is not a physical length (TIFF's "none", PNG's unknown unit)
    or the resolution is missing, zero or not finite.

    Examples
    --------
    >>> mpp_from_resolution(20000.0, "centimeter")
    0.5
    >>> mpp_from_resolution(72.0, "none") is None
    True
    """
    if resolution is None or unit is None:
        return None
    factor = _UM_PER_UNIT.get(str(unit).strip().lower())
    try:
        resolution = float(resolution)
    except (TypeError, ValueError):
        return None
    if factor is None or not math.isfinite(resolution) or resolution <= 0:
        return None
    return factor / resolution


def tiff_resolution(tags: Mapping[str, Any]) -> tuple[float | None, float | None, str | None]:
    """X and Y resolution (pixels per unit) and the unit name of TIFF tags.

    Parameters
    ----------
    tags : mapping
        Tag name to value as tifffile gives them (``XResolution`` / ``YResolution`` rationals as
        ``(numerator, denominator)``, ``ResolutionUnit`` an int or enum).

    Returns
    -------
    x_resolution, y_resolution : float or None
        ``None`` when absent or with a zero denominator.
    unit : str or None
        From :data:`TIFF_RESOLUTION_UNITS`; ``None`` for values it does not hold.

    Examples
    --------
    >>> tiff_resolution({"XResolution": (40000, 1), "YResolution": (40000, 2), "ResolutionUnit": 3})
    (40000.0, 20000.0, 'centimeter')
    >>> tiff_resolution({"XResolution": (300, 0)})
    (None, None, 'inch')
    """
    try:
        unit = TIFF_RESOLUTION_UNITS.get(int(tags.get("ResolutionUnit", 2)))
    except (TypeError, ValueError):
        unit = None
    res = []
    for key in ("XResolution", "YResolution"):
        value = tags.get(key)
        ok = isinstance(value, tuple) and len(value) == 2 and value[1]
        res.append(float(value[0]) / float(value[1]) if ok else None)
    return res[0], res[1], unit


def mpp_from_tiff_tags(tags: Mapping[str, Any], where: str) -> float | None:
    """Pixel size in µm/px from TIFF resolution tags (see :func:`tiff_resolution` and :func:`combine_xy`)."""
    x, y, unit = tiff_resolution(tags)
    return combine_xy(mpp_from_resolution(x, unit), mpp_from_resolution(y, unit), where)


def mpp_from_dpi(dpi: Sequence[float] | None, where: str) -> float | None:
    """Pixel size in µm/px from PIL's ``info["dpi"]`` (pixels per inch, set only for physical units)."""
    if not dpi:
        return None
    return combine_xy(mpp_from_resolution(dpi[0], "inch"), mpp_from_resolution(dpi[1], "inch"), where)


def combine_xy(mpp_x: float | None, mpp_y: float | None, where: str) -> float | None:
    """Merge per-axis pixel sizes into one; warn when they differ by more than 1 %.

    ``None`` in one axis falls back to the other. Implausible values (see :data:`PLAUSIBLE_MPP`)
    are logged and discarded.
    """
    values = [v for v in (mpp_x, mpp_y) if v is not None and math.isfinite(v) and v > 0]
    if not values:
        return None
    if len(values) == 2 and abs(values[0] - values[1]) > ANISOTROPY_TOLERANCE * max(values):
        log.warning(
            "%s: non-square pixels (mpp-x %.4g, mpp-y %.4g µm); using their mean", where, values[0], values[1]
        )
    mpp = sum(values) / len(values)
    lo, hi = PLAUSIBLE_MPP
    if not lo <= mpp <= hi:
        log.warning(
            "%s: ignoring implausible pixel size %.4g µm/px in the metadata (a screen-resolution default?)",
            where,
            mpp,
        )
        return None
    return mpp


def mpp_from_properties(props: Mapping[str, str], where: str) -> tuple[float | None, str]:
    """Pixel size from OpenSlide-style properties.

    Returns
    -------
    mpp : float or None
        Level-0 µm/px, ``None`` when absent or implausible.
    source : str
        "metadata" (vendor metadata via ``openslide.mpp-*``), "tiff-resolution" (TIFF resolution
        tags, including OpenSlide's generic-tiff, which derives ``openslide.mpp-*`` from them).
    """
    vendor = props.get("openslide.vendor", "")
    mx, my = _float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y"))
    if mx is not None or my is not None:
        # OpenSlide's value already reflects the TIFF tags when it derived it from them.
        return combine_xy(mx, my, where), ("tiff-resolution" if vendor == "generic-tiff" else "metadata")
    unit = props.get("tiff.ResolutionUnit")
    mx = mpp_from_resolution(_float(props.get("tiff.XResolution")), unit)
    my = mpp_from_resolution(_float(props.get("tiff.YResolution")), unit)
    return combine_xy(mx, my, where), "tiff-resolution"


def _float(value: str | float | None) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None
