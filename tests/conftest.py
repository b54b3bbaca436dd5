"""Shared fixtures: the location of ``../shared/data`` (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path | None:
    env = os.environ.get("WSI_WEAKSEG_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(_REPO.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared (never committed) data; skips the test when it is absent."""
    root = _data_root()
    if root is None:
        pytest.skip("shared data not found: set WSI_WEAKSEG_DATA or place it at ../shared/data")
    return root
