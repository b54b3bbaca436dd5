"""CI cannot go green on a machine without the shared data: the skip becomes a failure when required."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parent / "conftest.py"


@pytest.mark.parametrize("require, outcome", [(None, "1 skipped"), ("1", "1 error")])  # a failing fixture: an error
def test_missing_data_skips_or_fails(tmp_path, require, outcome):
    tests = tmp_path / "repo" / "tests"  # no ../shared/data beside this copy
    tests.mkdir(parents=True)
    shutil.copy(CONFTEST, tests / "conftest.py")
    (tests / "test_needs_data.py").write_text("def test_it(shared_data):\n    assert shared_data.is_dir()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("WSI_WEAKSEG_DATA", "WSI_WEAKSEG_REQUIRE_DATA")}
    env["WSI_WEAKSEG_DATA"] = str(tmp_path / "nowhere")
    if require:
        env["WSI_WEAKSEG_REQUIRE_DATA"] = require
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert outcome in run.stdout, run.stdout + run.stderr


def test_ci_script_requires_the_data():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "WSI_WEAKSEG_REQUIRE_DATA=1 python -m pytest" in ci
