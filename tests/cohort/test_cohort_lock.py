"""The per-slide lock (real processes racing for it), the sweep of dead attempts' staging, the ROI digest."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from shapely.geometry import box

from wsi_weakseg.cohort import find_slides
from wsi_weakseg.cohort.lock import LOCK_NAME, SlideLockedError, slide_lock, sweep_staging
from wsi_weakseg.cohort.task import expected_identity, process_slide, read_done
from wsi_weakseg.engine.segment import SegmentOptions
from wsi_weakseg.model.card import load_model

from .conftest import MODEL

OPTS = SegmentOptions(batch_size=4, progress=False)

# A process that waits for `go`, tries the lock of `slide`, prints the outcome and holds a won lock until `release`.
LOCKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from wsi_weakseg.cohort.lock import SlideLockedError, slide_lock
    slide, go, release = (Path(a) for a in sys.argv[1:4])
    Path(sys.argv[4]).touch()  # ready
    while not go.exists():
        time.sleep(0.005)
    try:
        with slide_lock(slide):
            print("won", os.getpid(), flush=True)
            while not release.exists():
                time.sleep(0.02)
    except SlideLockedError as exc:
        print("lost", exc, flush=True)
""")


def start_lockers(n: int, slide: Path, tmp: Path) -> tuple[list[subprocess.Popen], Path]:
    """``n`` processes that race for ``slide``'s lock once ``go`` exists; returns them and the release file."""
    go, release = tmp / "go", tmp / "release"
    procs = [subprocess.Popen([sys.executable, "-c", LOCKER, str(slide), str(go), str(release), str(tmp / f"ready{i}")],
                              stdout=subprocess.PIPE, text=True) for i in range(n)]
    deadline = time.monotonic() + 120
    while not all((tmp / f"ready{i}").exists() for i in range(n)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "lockers did not start"
        time.sleep(0.02)
    go.touch()
    return procs, release


def test_concurrent_lock_attempts_one_wins(tmp_path: Path):
    slide = tmp_path / "out" / "s0"
    procs, release = start_lockers(3, slide, tmp_path)
    first = [p.stdout.readline().split(maxsplit=1) for p in procs]  # each prints once it has tried
    winners = [(p, line) for p, line in zip(procs, first) if line[0] == "won"]
    assert len(winners) == 1, first
    winner_pid = int(winners[0][1][1])
    losers = [line[1] for line in first if line[0] == "lost"]
    assert len(losers) == 2 and all(f"pid {winner_pid}" in m and "not computed twice" in m for m in losers), losers
    # this process cannot take it either while the winner lives
    with pytest.raises(SlideLockedError, match=f"pid {winner_pid}"):
        with slide_lock(slide):
            pass
    release.touch()
    for p in procs:
        assert p.wait(timeout=60) == 0
    assert not slide.exists()  # the lock file is removed on release, with the folder it left empty
    with slide_lock(slide) as lock:  # free again
        assert json.loads(lock.read_text())["pid"] > 0


def test_lock_of_a_killed_holder_is_free(tmp_path: Path):
    slide = tmp_path / "s0"
    procs, _ = start_lockers(1, slide, tmp_path)
    assert procs[0].stdout.readline().startswith("won")
    procs[0].kill()  # SIGKILL: no clean-up ran, the lock file stays, the kernel drops the lock
    procs[0].wait()
    assert (slide / LOCK_NAME).exists()
    with slide_lock(slide):
        pass


def _stale_staging(out_dir: Path) -> Path:
    tmp = out_dir / ".wsi-weakseg-tmp-0123456789ab"
    (tmp / "s0.ome.zarr" / "0").mkdir(parents=True)
    (tmp / "s0.ome.zarr" / "0" / "c").write_bytes(b"\0" * 4096)
    return tmp


def test_locked_slide_fails_at_once_and_stale_staging_goes_on_the_next_run(cohort_slides: Path, tmp_path: Path):
    job = next(j for j in find_slides(cohort_slides) if j.slide_id == "s0")
    sha = load_model(MODEL).sha256
    ident = expected_identity(job, OPTS, sha)
    out = tmp_path / "out"
    stale = _stale_staging(out / "s0")  # a killed attempt's staging: GBs of zarr in real life
    procs, release = start_lockers(1, out / "s0", tmp_path)  # another live driver's task holds the slide
    assert procs[0].stdout.readline().startswith("won")
    row = process_slide(job, str(out), MODEL, sha, OPTS, ident)
    assert row["status"] == "failed" and row["error_type"] == "SlideLockedError", row
    assert row["transient"] is False and "not computed twice" in row["error"]
    assert stale.is_dir(), "staging swept without holding the lock"
    assert not (out / "s0" / "done.json").exists()
    release.touch()
    assert procs[0].wait(timeout=60) == 0

    row = process_slide(job, str(out), MODEL, sha, OPTS, ident)  # the next run: lock acquired, staging swept
    assert row["status"] == "done" and row["nuclei"] > 50
    assert not stale.exists()
    assert sorted(p.name for p in (out / "s0").iterdir()) == ["done.json", "s0.geojson", "s0.ome.zarr", "s0.preview.png", "s0.run.json"]
    # finished by someone else after our driver looked: under the lock it is skipped, not recomputed
    before = (out / "s0" / "s0.geojson").stat().st_mtime_ns
    again = process_slide(job, str(out), MODEL, sha, OPTS, ident)
    assert again["status"] == "skipped" and again["nuclei"] == row["nuclei"]
    assert (out / "s0" / "s0.geojson").stat().st_mtime_ns == before
    assert process_slide(job, str(out), MODEL, sha, OPTS, ident, recheck_done=False)["status"] == "done"  # --overwrite


def test_sweep_leaves_other_files(tmp_path: Path):
    _stale_staging(tmp_path)
    (tmp_path / "s0.geojson").write_text("{}")
    (tmp_path / ".wsi-weakseg-tmp-file").write_text("not a folder")
    assert [p.name for p in sweep_staging(tmp_path)] == [".wsi-weakseg-tmp-0123456789ab"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".wsi-weakseg-tmp-file", "s0.geojson"]


def _roi(path: Path, x1: float) -> Path:
    feature = {"type": "Feature", "geometry": box(0, 0, x1, 384).__geo_interface__,
               "properties": {"objectType": "annotation"}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


def test_roi_content_is_digested(cohort_slides: Path, tmp_path: Path):
    job = next(j for j in find_slides(cohort_slides) if j.slide_id == "s1")
    sha = load_model(MODEL).sha256
    roi = _roi(tmp_path / "roi.geojson", 640)
    opts = SegmentOptions(batch_size=4, progress=False, roi=str(roi))
    ident = expected_identity(job, opts, sha)
    assert ident["roi_path"] == str(roi.resolve())
    row = process_slide(job, str(tmp_path / "out"), MODEL, sha, opts, ident)
    assert row["status"] == "done" and row["nuclei"] > 50
    assert read_done(tmp_path / "out" / "s1", ident) is not None
    # same content elsewhere: still done (the path is recorded, not digested)
    moved = tmp_path / "moved"
    moved.mkdir()
    copy = _roi(moved / "roi.geojson", 640)
    assert expected_identity(job, SegmentOptions(roi=str(copy), batch_size=4), sha)["digest"] == ident["digest"]
    # new content at the same path: not done any more
    _roi(roi, 320)
    changed = expected_identity(job, opts, sha)
    assert changed["digest"] != ident["digest"]
    assert read_done(tmp_path / "out" / "s1", changed) is None
    half = process_slide(job, str(tmp_path / "out"), MODEL, sha, opts, changed)
    assert half["status"] == "done" and 0 < half["nuclei"] < row["nuclei"]
    # a ROI file that is gone is not the same as no ROI
    roi.unlink()
    gone = expected_identity(job, opts, sha)
    assert gone["inputs"]["options"]["roi"] == "missing"
    assert gone["digest"] != expected_identity(job, OPTS, sha)["digest"]
