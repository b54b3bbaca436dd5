"""Shared fixtures: the location of ``../shared/data``.

Tests that need the data skip when it is absent, unless ``WSI_WEAKSEG_REQUIRE_DATA=1`` (set by ``.ci/run``):
then they fail, so CI can never go green because the data vanished.
"""

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
    """Root of the shared (never committed) data; skips (or, with WSI_WEAKSEG_REQUIRE_DATA=1, fails) when absent."""
    root = _data_root()
    if root is None:
        message = "shared data not found: set WSI_WEAKSEG_DATA or place it at ../shared/data"
        if os.environ.get("WSI_WEAKSEG_REQUIRE_DATA") == "1":
            pytest.fail(message + " (WSI_WEAKSEG_REQUIRE_DATA=1: the data is required here)")
        pytest.skip(message)
    return root
