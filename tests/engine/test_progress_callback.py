"""``SegmentOptions.on_progress``: per-tile/per-block fractions, and never part of the result or its resume key."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.engine.progress import COUNTED_SHARE, ProgressCounter
from wsi_weakseg.engine.segment import SegmentOptions, _resume_key, segment
from wsi_weakseg.model.card import BASELINE_MODEL, load_model
from wsi_weakseg.slide.testing import write_pyramid_tiff


def test_segment_reports_rising_fractions_and_records_no_callback(tmp_path: Path) -> None:
    rgb, _ = synthetic_he(size=(320, 320), mpp=0.5)
    write_pyramid_tiff(tmp_path / "s.tiff", rgb, 0.5)
    seen: list[float] = []
    opts = SegmentOptions(tile_size=64, block_size=128, progress=False, preview=False, on_progress=seen.append)
    res = segment(tmp_path / "s.tiff", tmp_path / "out", BASELINE_MODEL, opts)
    assert seen[-1] == 1.0 and seen == sorted(seen) and len(set(seen)) == len(seen)
    assert any(0.0 < f < COUNTED_SHARE for f in seen)  # tiles and blocks, one by one
    config = json.loads(res.run_json.read_text())["config"]
    assert "on_progress" not in config and config["tile_size"] == 64
    model = load_model(BASELINE_MODEL)
    plain = SegmentOptions(tile_size=64, block_size=128, progress=False, preview=False)
    assert _resume_key("fp", model, opts, 64, 0.5) == _resume_key("fp", model, plain, 64, 0.5)


def test_counter_is_monotonic_across_threads_and_survives_a_failing_callback() -> None:
    seen: list[float] = []
    counter = ProgressCounter(seen.append)
    counter.add(3)  # before the total is known: counted, not reported
    assert seen == []
    counter.start(400, already=0)
    threads = [threading.Thread(target=lambda: [counter.add() for _ in range(99)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == sorted(seen) and seen[-1] == pytest.approx(COUNTED_SHARE * 399 / 400)
    counter.finish()
    assert seen[-1] == 1.0

    def boom(_: float) -> None:
        raise RuntimeError("no")

    failing = ProgressCounter(boom)
    failing.start(2)
    failing.add()
    failing.finish()  # logged once, never raised
