"""Cohorts against real Dask processes on loopback: results, resume, a killed worker, a killed driver.

Oracle: every good slide's GeoJSON bytes and label array equal those of a direct ``segment`` call on the
same slide, however the cohort ran (interrupted, with a worker lost, or resumed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import get_task_stream

from wsi_weakseg.cohort import CohortOptions, find_slides, run_cohort
from wsi_weakseg.engine.segment import SegmentOptions, segment

from .conftest import MODEL, N_GOOD, ledger_rows

GOOD = [f"s{i}" for i in range(N_GOOD)]
OPTS = SegmentOptions(batch_size=4, progress=False)


@pytest.fixture(scope="module")
def reference(cohort_slides: Path, tmp_path_factory) -> dict[str, tuple[bytes, np.ndarray]]:
    """Direct ``segment`` outputs of every good slide."""
    out = tmp_path_factory.mktemp("reference")
    ref = {}
    for sid in GOOD:
        res = segment(cohort_slides / f"{sid}.tiff", out / sid, MODEL, OPTS)
        ref[sid] = (res.geojson.read_bytes(), zarr.open_array(res.zarr / "labels" / "nuclei" / "0")[:])
    return ref


def outputs(out: Path, sid: str) -> tuple[bytes, np.ndarray]:
    return (out / sid / f"{sid}.geojson").read_bytes(), zarr.open_array(out / sid / f"{sid}.ome.zarr" / "labels" / "nuclei" / "0")[:]


def assert_matches_reference(out: Path, reference) -> None:
    for sid in GOOD:
        got = outputs(out, sid)
        assert got[0] == reference[sid][0], f"{sid}: GeoJSON differs from a direct segment run"
        np.testing.assert_array_equal(got[1], reference[sid][1], err_msg=sid)
        assert got[1].max() > 50, f"{sid}: too few nuclei for a meaningful comparison"


def file_stats(out: Path, sids) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file of the given slides' outputs."""
    stats = {}
    for sid in sids:
        for p in sorted((out / sid).rglob("*")):
            if p.is_file():
                st = p.stat()
                stats[str(p)] = (st.st_ino, st.st_mtime_ns)
    return stats


def last_status(rows: list[dict]) -> dict[str, str]:
    return {r["slide_id"]: r["status"] for r in rows}


def cli(slides: Path, out: Path, scheduler_file: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "wsi_weakseg.cli", "cohort", str(slides), "-o", str(out), "--scheduler-file",
            str(scheduler_file), "--model", MODEL, "--batch-size", "4", "--no-progress", *extra]


def test_cohort_on_running_cluster_matches_segment_and_resumes(dask_cluster, cohort_slides, reference, tmp_path):
    jobs = find_slides(cohort_slides)
    assert [j.slide_id for j in jobs] == ["bad", *GOOD]
    out = tmp_path / "out"
    co = CohortOptions(scheduler_file=str(dask_cluster.scheduler_file), progress=False)
    with dask_cluster.client() as observer, get_task_stream(client=observer) as stream:
        summary = run_cohort(jobs, out, MODEL, OPTS, co)
    # one task per slide and nothing else: a slide's own dask work (merge blocks, pyramid) stays in its worker
    keys = {str(t["key"]) for t in stream.data}
    assert all(k.startswith("slide-") for k in keys), sorted(keys)[:5]
    assert sorted({k.split("-")[1] for k in keys}) == sorted(["bad", *GOOD])

    assert summary.exit_code == 1
    assert last_status(summary.rows) == {"bad": "failed", **{s: "done" for s in GOOD}}
    bad = summary.rows[0]
    assert bad["error_type"] == "UnsupportedFormatError" and "bad.svs" in bad["error"]
    rows = ledger_rows(out)
    assert [r["attempt"] for r in rows if r["slide_id"] == "bad"] == [1]  # bad input is never retried
    assert len({r["pid"] for r in rows}) == 2, "both workers should have run slides"
    for r in summary.rows[1:]:
        assert r["nuclei"] > 50 and r["tissue_area_mm2"] > 0
        assert r["nuclei_per_mm2"] == pytest.approx(r["nuclei"] / r["tissue_area_mm2"], rel=1e-3)
        assert (out / r["slide_id"] / "done.json").is_file()
    assert_matches_reference(out, reference)
    table = summary.table()
    assert "5 done, 0 skipped (already done), 1 failed" in table and "UnsupportedFormatError" in table

    # rerun: done slides are skipped with their files untouched; the failed one is tried again
    before = file_stats(out, GOOD)
    again = run_cohort(jobs, out, MODEL, SegmentOptions(batch_size=2, num_workers=1, progress=False), co)
    assert last_status(again.rows) == {"bad": "failed", **{s: "skipped" for s in GOOD}}
    assert [r["nuclei"] for r in again.rows[1:]] == [r["nuclei"] for r in summary.rows[1:]]
    assert file_stats(out, GOOD) == before

    # a result-affecting option (tile size) recomputes; --overwrite recomputes
    one = [j for j in jobs if j.slide_id == "s0"]
    tiled = run_cohort(one, out, MODEL, SegmentOptions(tile_size=128, batch_size=4, progress=False), co)
    assert last_status(tiled.rows) == {"s0": "done"}
    forced = run_cohort(one, out, MODEL, SegmentOptions(tile_size=128, batch_size=4, progress=False),
                        CohortOptions(scheduler_file=str(dask_cluster.scheduler_file), progress=False, overwrite=True))
    assert last_status(forced.rows) == {"s0": "done"}
    assert_matches_reference(out, reference)  # the baseline is exactly local: tile size changes nothing
    # a touched slide file (new mtime) recomputes
    os.utime(cohort_slides / "s1.tiff", ns=(time.time_ns(), time.time_ns()))
    touched = run_cohort([j for j in jobs if j.slide_id in ("s1", "s2")], out, MODEL, OPTS, co)
    assert last_status(touched.rows) == {"s1": "done", "s2": "skipped"}


def test_sigkill_worker_mid_run_every_good_slide_completes(dask_cluster, cohort_slides, reference, tmp_path):
    out = tmp_path / "out"
    driver = subprocess.Popen(cli(cohort_slides, out, dask_cluster.scheduler_file), stderr=subprocess.PIPE)
    victim = slide = None
    with dask_cluster.client() as client:
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and driver.poll() is None:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            for addr, keys in client.processing().items():
                busy = [k for k in keys if str(k).startswith("slide-s")]
                if busy and addr in workers:
                    victim, slide = workers[addr]["name"], str(busy[0]).split("-")[1]
                    break
            else:
                time.sleep(0.05)
        assert victim is not None, "no good slide was seen processing"
        killed_pid = dask_cluster.workers[victim].pid
        dask_cluster.kill_worker(victim)
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 1, err.decode()
    rows = ledger_rows(out)
    assert last_status(rows) == {"bad": "failed", **{s: "done" for s in GOOD}}
    done_row = [r for r in rows if r["slide_id"] == slide and r["status"] == "done"][-1]
    assert done_row["pid"] != killed_pid  # the slide the dead worker held was finished by the other one
    assert_matches_reference(out, reference)
    # the dead attempt's staging was swept when the slide's lock was taken again; no lock is left behind
    assert not list(out.glob("*/.wsi-weakseg-tmp-*")) and not list(out.glob("*/.lock"))


def test_killed_driver_rerun_skips_finished_slides(dask_cluster, cohort_slides, reference, tmp_path):
    out = tmp_path / "out"
    args = cli(cohort_slides, out, dask_cluster.scheduler_file, "--max-in-flight", "2")
    driver = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(r["status"] == "done" for r in ledger_rows(out)):
        assert time.monotonic() < deadline and driver.poll() is None, "no slide finished before the driver exited"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = [s for s in GOOD if (out / s / "done.json").is_file()]
    assert 1 <= len(finished) < N_GOOD
    before = file_stats(out, finished)

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 1, rerun.stderr
    run_ids = list(dict.fromkeys(r["run"] for r in ledger_rows(out)))
    second = [r for r in ledger_rows(out) if r["run"] == run_ids[-1]]
    status = last_status(second)
    assert status["bad"] == "failed"
    assert all(status[s] == "skipped" for s in finished)
    assert all(status[s] in ("done", "skipped") for s in GOOD)
    assert file_stats(out, finished) == before  # finished slides were not recomputed
    assert_matches_reference(out, reference)
    assert "1 failed" in rerun.stdout


def test_two_drivers_on_one_output_folder_compute_each_slide_once(dask_cluster, cohort_slides, reference, tmp_path):
    out = tmp_path / "out"
    args = cli(cohort_slides, out, dask_cluster.scheduler_file)
    drivers = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [d.communicate(timeout=300) for d in drivers]
    assert [d.returncode for d in drivers] == [1, 1], [err for _, err in results]  # bad.svs fails in both
    rows = ledger_rows(out)
    assert len({r["run"] for r in rows}) == 2
    for sid in GOOD:
        mine = [r for r in rows if r["slide_id"] == sid]
        assert [r["status"] for r in mine].count("done") == 1, mine  # one driver computed it
        other = [r for r in mine if r["status"] != "done"]
        # the other found it done (before submitting, or under the lock) or found it locked
        assert len(other) == 1 and (other[0]["status"] == "skipped" or other[0]["error_type"] == "SlideLockedError"), other
    assert_matches_reference(out, reference)
    assert not list(out.glob("*/.wsi-weakseg-tmp-*")) and not list(out.glob("*/.lock"))
