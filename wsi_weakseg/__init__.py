"""wsi-weakseg: nucleus instance segmentation for H&E whole-slide images, trained from weak labels."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
