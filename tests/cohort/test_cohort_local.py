"""The LocalCluster default, a manifest with per-slide mpp, retries, and the done-manifest rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from wsi_weakseg.cli import main
from wsi_weakseg.cohort import CohortOptions, find_slides, run_cohort
from wsi_weakseg.cohort import runner
from wsi_weakseg.cohort.task import expected_identity, process_slide, read_done
from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.engine.segment import SegmentOptions
from wsi_weakseg.slide.testing import write_pyramid_tiff

from .conftest import MODEL, ledger_rows


def test_local_cluster_default_with_manifest_mpp(cohort_slides: Path, tmp_path: Path, capsys):
    rgb, _ = synthetic_he((384, 640), mpp=0.5, seed=0)  # the pixels of s0.tiff, without resolution tags
    write_pyramid_tiff(tmp_path / "nompp.tiff", rgb, None, levels=2, tile=128)
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(
        "path,mpp,slide_id,patient\n"
        f"{cohort_slides / 's0.tiff'},,case-A,p1\n"
        "nompp.tiff,0.5,case-B,p1\n"        # relative to the manifest; mpp from the manifest
        "nompp.tiff,,case-C,p2\n"           # no mpp anywhere: fails, the rest runs
        "missing.svs,,case-D,p3\n"          # a listed file that does not exist: fails as its task
    )
    out = tmp_path / "out"
    rc = main(["cohort", str(manifest), "-o", str(out), "--model", MODEL, "--no-progress", "--batch-size", "4"])
    assert rc == 1
    status = {r["slide_id"]: r for r in ledger_rows(out)}
    assert {k: v["status"] for k, v in status.items()} == {
        "case-A": "done", "case-B": "done", "case-C": "failed", "case-D": "failed"}
    assert status["case-C"]["error_type"] == "MissingMppError"
    assert status["case-D"]["error_type"] == "SlideNotFoundError"
    run_b = json.loads((out / "case-B" / "nompp.run.json").read_text())
    assert run_b["slide"]["mpp"] == 0.5 and run_b["slide"]["mpp_source"] != "metadata"
    # same pixels, same pixel size (from the manifest instead of the TIFF tags): same label map
    labels = [zarr.open_array(out / c / f"{s}.ome.zarr" / "labels" / "nuclei" / "0")[:]
              for c, s in (("case-A", "s0"), ("case-B", "nompp"))]
    np.testing.assert_array_equal(labels[0], labels[1])
    assert labels[0].max() > 50
    printed = capsys.readouterr().out
    assert "case-C" in printed and "MissingMppError" in printed and "2 done" in printed
    assert len({r["pid"] for r in ledger_rows(out)}) >= 1


def test_local_cluster_sizing_never_oversubscribes():
    n, threads, gpus = runner.local_cluster_size(None, "cpu")
    assert gpus == 0 and n >= 1 and n * threads <= max(n, len(__import__("os").sched_getaffinity(0)))
    assert runner.local_cluster_size(3, "cpu")[0] == 3
    with pytest.raises(ValueError, match="--n-workers"):
        runner.local_cluster_size(0, "cpu")


CALLS: dict[str, int] = {}  # module level: tasks are pickled by reference, so they share it


def flaky_process_slide(job, *args, **kwargs):
    """process_slide that fails transiently the first time it sees s0."""
    CALLS[job.slide_id] = CALLS.get(job.slide_id, 0) + 1
    if job.slide_id == "s0" and CALLS["s0"] == 1:
        return {"slide_id": "s0", "path": str(job.path), "status": "failed", "error_type": "RuntimeError",
                "error": "simulated transient failure", "transient": True, "duration_s": 0.0}
    return process_slide(job, *args, **kwargs)


@pytest.mark.parametrize("retries", [1, 0])
def test_retries_transient_failures_only(cohort_slides, tmp_path, monkeypatch, retries):
    from distributed import LocalCluster

    CALLS.clear()
    monkeypatch.setattr(runner, "process_slide", flaky_process_slide)
    jobs = [j for j in find_slides(cohort_slides) if j.slide_id in ("bad", "s0", "s1")]
    out = tmp_path / "out"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        summary = run_cohort(jobs, out, MODEL, SegmentOptions(batch_size=4, progress=False),
                             CohortOptions(scheduler_address=cluster.scheduler_address, retries=retries, progress=False))
    rows = ledger_rows(out)
    attempts = {sid: [(r["attempt"], r["status"]) for r in rows if r["slide_id"] == sid] for sid in ("bad", "s0", "s1")}
    assert attempts["bad"] == [(1, "failed")]  # bad input: not retried
    assert attempts["s1"] == [(1, "done")]
    if retries:
        assert attempts["s0"] == [(1, "failed"), (2, "done")]
        assert rows[[r["slide_id"] for r in rows].index("s0")]["retrying"] is True
    else:
        assert attempts["s0"] == [(1, "failed")]
    assert summary.exit_code == 1


def test_done_manifest_matches_only_the_same_inputs(cohort_slides, tmp_path):
    job = next(j for j in find_slides(cohort_slides) if j.slide_id == "s2")
    opts = SegmentOptions(batch_size=4, progress=False)
    from wsi_weakseg.model.card import load_model

    sha = load_model(MODEL).sha256
    ident = expected_identity(job, opts, sha)
    assert read_done(tmp_path / "s2", ident) is None
    row = process_slide(job, str(tmp_path), MODEL, sha, opts, ident)  # a direct call, no cluster
    assert row["status"] == "done" and row["nuclei"] > 50
    assert read_done(tmp_path / "s2", ident)["result"]["nuclei"] == row["nuclei"]
    # batch size, threads and device do not change results; tile size, pixel size and the model do
    same = SegmentOptions(batch_size=1, num_workers=1, device="cpu", progress=True)
    assert expected_identity(job, same, sha)["digest"] == ident["digest"]
    for other in (SegmentOptions(tile_size=256), SegmentOptions(mpp=0.4), SegmentOptions(compress=True)):
        assert read_done(tmp_path / "s2", expected_identity(job, other, sha)) is None
    assert read_done(tmp_path / "s2", expected_identity(job, opts, "0" * 64)) is None
    # an output removed by hand: not done any more
    (tmp_path / "s2" / "s2.geojson").unlink()
    assert read_done(tmp_path / "s2", ident) is None
    # a wrong model sha on a worker is that slide's failure, with a message saying what to do
    bad = process_slide(job, str(tmp_path), MODEL, "f" * 64, opts, ident)
    assert bad["status"] == "failed" and bad["error_type"] == "ModelCardError" and "same model" in bad["error"]


def test_task_resources_must_exist_on_some_worker(cohort_slides, tmp_path):
    from distributed import LocalCluster

    jobs = [j for j in find_slides(cohort_slides) if j.slide_id == "s3"]
    opts = SegmentOptions(batch_size=4, progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                      resources={"GPU": 1}) as cluster:
        addr = cluster.scheduler_address
        with pytest.raises(ValueError, match="--resources TPU=1"):
            run_cohort(jobs, tmp_path / "a", MODEL, opts,
                       CohortOptions(scheduler_address=addr, resources={"TPU": 1}, progress=False))
        assert not (tmp_path / "a").exists()  # refused before any slide ran: nothing written
        summary = run_cohort(jobs, tmp_path / "b", MODEL, opts,
                             CohortOptions(scheduler_address=addr, resources={"GPU": 1}, progress=False))
    assert [r["status"] for r in summary.rows] == ["done"]
