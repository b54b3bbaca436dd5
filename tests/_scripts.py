"""Run a script of ``scripts/`` in-process, as its command line would, for the tests of those scripts."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(name: str, *argv: str) -> None:
    """``python scripts/NAME ARGV...`` in this process; fails unless it exits with status 0."""
    path = SCRIPTS / name
    old, sys.argv = sys.argv, [str(path), *argv]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = old
    assert done.value.code == 0
