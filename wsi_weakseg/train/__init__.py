"""Training: configuration, datasets, recipes (points first) and the loop."""

from __future__ import annotations

from .config import load_config

__all__ = ["load_config"]
