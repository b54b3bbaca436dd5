"""Where to work: the tissue rule (``--tissue auto|all|FILE``) and the region of interest (``--roi``).

The tissue rule decides which tiles run; the ROI also decides which nuclei are kept (by their anchor).

- ``mask``: the slide's tissue mask (:func:`~wsi_weakseg.slide.compute_tissue_mask`); ``auto`` on a
  pyramidal slide.
- ``all``: every tile; ``auto`` on a plain image (one OpenSlide does not open: PNG, JPEG, strip TIFF; a crop the user chose,
  where a mask can only lose tissue), or ``--tissue all``. Tissue area is still measured with the mask.
- ``annotations``: the polygon annotations of a QuPath GeoJSON (``--tissue FILE``), read like an ROI;
  tissue area is their area inside the slide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, GeoJSONError
from .plan import TissueTest

log = logging.getLogger(__name__)

TISSUE_OPTIONS = ("auto", "all")


@dataclass(frozen=True)
class TissueSelection:
    """The tissue rule that ran, its tissue test and its measurements.

    Attributes
    ----------
    option : str
        What was asked: ``auto``, ``all`` or a GeoJSON path.
    rule : str
        What ran: ``mask``, ``all`` or ``annotations``.
    has_tissue : callable
        ``has_tissue(x0, y0, x1, y1)`` on level-0 boxes (absolute coordinates).
    fraction : float
        Tissue fraction of the slide's bounds region (the mask not grown, or the annotations).
    area_mm2 : float
        Tissue area in mm² (the mask not grown, or the annotations inside the bounds).
    selected_fraction : float
        Fraction of the bounds region the rule lets tiles run on.
    outline : TissueMask or shapely geometry, optional
        What the preview draws as tissue: the mask (rules ``mask`` and ``all``) or the annotations (output frame).
    """

    option: str
    rule: str
    has_tissue: TissueTest
    fraction: float
    area_mm2: float
    selected_fraction: float
    outline: Any = None

    def record(self) -> dict[str, Any]:
        """The ``tissue`` entry of ``run.json``."""
        return {"option": self.option, "rule": self.rule, "fraction": self.fraction, "area_mm2": self.area_mm2,
                "selected_fraction": self.selected_fraction}


def check_tissue_option(option: str) -> None:
    """Raise :class:`~wsi_weakseg.errors.ConfigError` unless ``option`` is ``auto``, ``all`` or a path."""
    if not isinstance(option, str) or not option.strip():
        raise ConfigError(f"--tissue must be auto, all or a QuPath GeoJSON file of tissue annotations, got {option!r}")


def select_tissue(option: str, slide) -> TissueSelection:
    """Resolve ``--tissue`` for ``slide``.

    Raises
    ------
    ConfigError
        ``option`` is empty.
    GeoJSONError
        The annotation file is missing, malformed or holds no polygon annotation.
    """
    check_tissue_option(option)
    if option not in TISSUE_OPTIONS:
        return _annotations(option, slide)
    from ..slide import compute_tissue_mask

    mask = compute_tissue_mask(slide)
    area = mask.area_um2(slide.mpp) / 1e6
    if option == "all" or slide.vendor == "image":
        log.info("%s: segmenting the whole image (--tissue %s%s)", slide.path.name, option,
                 ", a plain image" if option == "auto" else "")
        return TissueSelection(option, "all", _everywhere, mask.fraction, area, 1.0, mask)
    return TissueSelection(option, "mask", mask.region_has_tissue, mask.fraction, area, mask.selected_fraction, mask)


def _everywhere(x0: float, y0: float, x1: float, y1: float) -> bool:
    return x1 > x0 and y1 > y0


def _annotations(path: str, slide) -> TissueSelection:
    """The ``annotations`` rule: polygon annotations of a QuPath GeoJSON, in the output frame."""
    import shapely
    from shapely.geometry import box

    from ..io.geojson import read_roi

    try:
        tissue = read_roi(path)
    except GeoJSONError as exc:
        raise GeoJSONError(f"--tissue {exc}") from None
    bx, by, bw, bh = slide.bounds
    inside = tissue.intersection(box(0, 0, bw, bh)).area
    shapely.prepare(tissue)

    def has_tissue(x0: float, y0: float, x1: float, y1: float) -> bool:
        if not (x1 > x0 and y1 > y0):
            return False
        b = box(x0 - bx, y0 - by, x1 - bx, y1 - by)  # half-open: touching the outline is not overlapping
        return tissue.intersects(b) and not tissue.touches(b)

    fraction = inside / (bw * bh) if bw * bh else 0.0
    return TissueSelection(path, "annotations", has_tissue, fraction, inside * slide.mpp**2 / 1e6, fraction, tissue)


def load_roi(path: str | None):
    """The ``--roi`` region (output frame) or ``None``."""
    if path is None:
        return None
    from ..io.geojson import read_roi

    return read_roi(path)
