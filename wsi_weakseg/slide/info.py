"""A JSON-serialisable summary of a slide (for ``wsi-weakseg info`` and run metadata)."""

from __future__ import annotations

from typing import Any

from wsi_weakseg.slide.reader import Slide
from wsi_weakseg.slide.tissue import TissueMask, compute_tissue_mask


def slide_info(slide: Slide, tissue: TissueMask | None = None) -> dict[str, Any]:
    """Describe a slide: levels, pixel size and its source, bounds and tissue fraction.

    Parameters
    ----------
    slide : Slide
        An open slide.
    tissue : TissueMask, optional
        A precomputed tissue mask; computed with default settings when omitted.

    Returns
    -------
    dict
        Keys ``path``, ``vendor``, ``levels`` (list of ``{width, height, downsample, mpp}``),
        ``mpp``, ``mpp_source``, ``objective``, ``bounds`` (``{x, y, width, height}``),
        ``tissue_fraction``, ``tissue_area_mm2`` and ``property_count``; only builtin types.
    """
    if tissue is None:
        tissue = compute_tissue_mask(slide)
    x, y, w, h = slide.bounds
    return {
        "path": str(slide.path),
        "vendor": slide.vendor,
        "levels": [
            {"width": int(lw), "height": int(lh), "downsample": float(ds), "mpp": float(slide.mpp * ds)}
            for (lw, lh), ds in zip(slide.level_dimensions, slide.level_downsamples)
        ],
        "mpp": float(slide.mpp),
        "mpp_source": slide.mpp_source,
        "objective": None if slide.objective is None else float(slide.objective),
        "bounds": {"x": int(x), "y": int(y), "width": int(w), "height": int(h)},
        "tissue_fraction": round(float(tissue.fraction), 6),
        "tissue_area_mm2": round(tissue.area_um2(slide.mpp) / 1e6, 6),
        "property_count": len(slide.properties),
    }
