"""Resume inside a slide: a ``segment`` process killed with SIGKILL mid-inference and mid-merge, rerun into the
same folder, reuses the finished tiles and blocks and writes outputs byte-identical to an uninterrupted run.

The runs are real subprocesses of the CLI. A small driver slows the forward pass or the blocks down (sleep
before each call, nothing else changed) so that the kill lands while the stage runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.engine.resume import PARTIAL_PREFIX
from wsi_weakseg.slide.testing import write_pyramid_tiff

DRIVER = """
import os, sys, time
import wsi_weakseg.engine.inference as inference
import wsi_weakseg.engine.merge as merge

tile_delay = float(os.environ.get("SLOW_TILE", "0"))
block_delay = float(os.environ.get("SLOW_BLOCK", "0"))
forward = inference.Predictor.__call__
process_block = merge.process_block

def slow_forward(self, *a, **k):
    time.sleep(tile_delay)
    return forward(self, *a, **k)

def slow_block(*a, **k):
    time.sleep(block_delay)
    return process_block(*a, **k)

inference.Predictor.__call__ = slow_forward
merge.process_block = slow_block
from wsi_weakseg.cli import main
sys.exit(main(sys.argv[1:]))
"""

FLAGS = ("--batch-size", "1", "--tile-size", "256", "--block-size", "256", "--num-workers", "1", "--no-preview")


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    rgb, _ = synthetic_he(size=(768, 1024), mpp=0.5, seed=3)
    return write_pyramid_tiff(tmp_path_factory.mktemp("resume") / "s.tiff", rgb, 0.5)


def _start(driver: Path, slide: Path, out: Path, *extra: str, **delays: float) -> subprocess.Popen:
    env = {**os.environ, **{k: str(v) for k, v in delays.items()}}
    return subprocess.Popen([sys.executable, str(driver), "segment", str(slide), "-o", str(out), *FLAGS, *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; fail if it ends first."""
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() - t0 < timeout, "the stage to kill never started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _tree(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every published file (run.json aside: it holds timings)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".run.json")}


def _published(folder: Path) -> list[str]:
    """What a user sees: everything but the hidden working folder and the (free) lock of a killed run."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigkill_mid_inference_and_mid_merge_resumes_to_identical_outputs(slide: Path, tmp_path: Path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    ref, out = tmp_path / "ref", tmp_path / "out"
    done = subprocess.run([sys.executable, str(driver), "segment", str(slide), "-o", str(ref), *FLAGS],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    n_tiles = json.loads((ref / "s.run.json").read_text())["tiles"]["processed"]
    assert n_tiles >= 4
    partial = out / f"{PARTIAL_PREFIX}s"

    # 1. killed mid-inference: some tiles recorded, nothing published
    proc = _start(driver, slide, out, SLOW_TILE=0.5)
    _kill_when(proc, lambda: _lines(partial / "tiles.log") >= 2)
    kept = _lines(partial / "tiles.log")
    assert 2 <= kept < n_tiles
    assert _published(out) == []

    # 2. resumed, then killed mid-merge (blocks run while tiles are still inferred): some blocks recorded
    proc = _start(driver, slide, out, SLOW_BLOCK=0.3)
    _kill_when(proc, lambda: len(list((partial / "blocks").glob("*.npz"))) >= 3)
    log = (partial / "tiles.log").read_text().splitlines()
    assert len(log) == len(set(log)) >= kept  # no tile of the killed run was predicted again
    n_blocks = len(list((partial / "blocks").glob("*.npz")))
    assert _published(out) == []

    # 3. resumed to the end: outputs byte-identical to the uninterrupted run
    done = subprocess.run([sys.executable, str(driver), "segment", str(slide), "-o", str(out), *FLAGS],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = json.loads((out / "s.run.json").read_text())["resumed"]
    assert resumed["tiles_reused"] == len(log) and resumed["blocks_reused"] >= n_blocks >= 3
    assert _tree(out) == _tree(ref)
    assert not partial.exists()


def test_changed_options_start_afresh(slide: Path, tmp_path: Path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "out"
    partial = out / f"{PARTIAL_PREFIX}s"
    proc = _start(driver, slide, out, SLOW_TILE=0.5)
    _kill_when(proc, lambda: _lines(partial / "tiles.log") >= 2)
    done = subprocess.run([sys.executable, str(driver), "segment", str(slide), "-o", str(out), *FLAGS,
                           "--block-size", "512"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "s.run.json").read_text())["resumed"] == {"tiles_reused": 0, "blocks_reused": 0}
