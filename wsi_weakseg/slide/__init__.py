"""Slides: readers (OpenSlide and plain images), pixel sizes, the working-resolution view, tissue masks."""

from __future__ import annotations

from wsi_weakseg.slide.info import slide_info
from wsi_weakseg.slide.reader import Slide, open_slide
from wsi_weakseg.slide.tissue import TissueMask, compute_tissue_mask
from wsi_weakseg.slide.view import WorkingView

__all__ = ["Slide", "TissueMask", "WorkingView", "compute_tissue_mask", "open_slide", "slide_info"]
