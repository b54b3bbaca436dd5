"""Run a cohort on Dask: one task per slide, resumable, failure-isolated, with a ledger.

The driver (this module) decides what to run, submits one :func:`~.task.process_slide` task per slide to a
``dask.distributed`` cluster — a LocalCluster by default, or an existing scheduler — with a bounded number
in flight, appends one ledger row per slide and attempt to ``OUT/cohort.jsonl``, and resubmits a slide
whose failure may be transient (not a bad-input error; a dead worker) up to ``retries`` times. Dask itself
moves a task off a worker that dies and reruns it elsewhere; no scheduling is done here. ``OUT/report.html``
(:mod:`.report`) is rewritten each time a slide's final row is recorded, so a running cohort can be watched.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.segment import SegmentOptions
from ..errors import CohortInputError, OutputError
from ..model.card import DEFAULT_MODEL, PACKAGED, load_model, resolve_model_dir
from .inputs import SlideJob
from .report import write_report
from .task import expected_identity, process_slide, read_done, result_row, usable_cores

log = logging.getLogger(__name__)

LEDGER_NAME = "cohort.jsonl"
#: Memory one LocalCluster worker is sized for (a slide task holds a batch of tiles and a block row).
WORKER_MEMORY = 4 * 2**30


@dataclass
class CohortOptions:
    """How a cohort runs (the ``cohort`` command's flags).

    Attributes
    ----------
    scheduler_address, scheduler_file : str, optional
        An existing Dask scheduler (``tcp://host:port``) or its scheduler file (dask-jobqueue, SLURM);
        neither starts a LocalCluster on this machine.
    n_workers : int, optional
        LocalCluster worker processes (default: one per core, at most one per 4 GiB of memory, or one per
        GPU when the device is a GPU).
    torch_threads : int, optional
        Torch threads per slide task (default: the host's cores over the task slots on that host).
    retries : int
        Extra attempts for a slide whose failure may be transient; bad input is never retried.
    overwrite : bool
        Recompute slides whose done-manifest matches.
    max_in_flight : int, optional
        Slides submitted but not finished (default: twice the cluster's task slots).
    resources : dict, optional
        Abstract resources every slide task needs (e.g. ``{"GPU": 1}`` for workers started with
        ``--resources GPU=1``): one slide runs per unit a worker declares.
    progress : bool
        A progress bar over slides on stderr.
    """

    scheduler_address: str | None = None
    scheduler_file: str | None = None
    n_workers: int | None = None
    torch_threads: int | None = None
    retries: int = 1
    overwrite: bool = False
    max_in_flight: int | None = None
    resources: dict[str, float] | None = None
    progress: bool = True


@dataclass
class CohortSummary:
    """The final ledger row of every slide, the ledger's path and the wall time."""

    rows: list[dict[str, Any]]
    ledger: Path
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = {s: sum(r["status"] == s for r in self.rows) for s in ("done", "skipped", "failed")}

    @property
    def exit_code(self) -> int:
        """0 when every slide is done (now or before), 1 when any failed."""
        return 1 if self.counts["failed"] else 0

    def table(self) -> str:
        """A plain-text table: one line per slide, then the totals."""
        head = f"{'slide':<24} {'status':<8} {'nuclei':>9} {'tissue mm²':>11} {'nuclei/mm²':>11} {'time s':>8}  error"
        lines = [head]
        for r in self.rows:
            err = f"{r.get('error_type')}: {r.get('error')}" if r["status"] == "failed" else ""
            lines.append(
                f"{r['slide_id'][:24]:<24} {r['status']:<8} {_fmt(r.get('nuclei'), 'd'):>9} "
                f"{_fmt(r.get('tissue_area_mm2'), '.3f'):>11} {_fmt(r.get('nuclei_per_mm2'), '.0f'):>11} "
                f"{_fmt(r.get('duration_s'), '.1f'):>8}  {err[:200]}"
            )
        n = sum(r.get("nuclei") or 0 for r in self.rows)
        c = self.counts
        lines.append(
            f"{len(self.rows)} slides: {c['done']} done, {c['skipped']} skipped (already done), {c['failed']} failed; "
            f"{n} nuclei; {self.seconds:.1f} s; ledger {self.ledger}"
        )
        return "\n".join(lines)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


class Ledger:
    """``cohort.jsonl``: rows appended and flushed to disk one at a time, so a killed driver loses none.

    The file (and the output folder) is created at the first row, so a cohort refused before any slide
    ran leaves nothing behind.
    """

    def __init__(self, path: Path, run_id: str) -> None:
        self.path, self.run_id = path, run_id
        self._fh = None
        existing = next(p for p in (path.parent, *path.parent.parents) if p.exists())
        if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
            raise OutputError(f"cannot write the cohort output folder {path.parent} ({existing} is not writable); choose another -o")

    def write(self, row: dict[str, Any], attempt: int) -> None:
        if self._fh is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a", encoding="utf-8")
            except OSError as exc:
                raise OutputError(f"cannot write the cohort ledger {self.path}: {exc.strerror or exc}; choose another -o") from None
        full = {"run": self.run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "attempt": attempt, **row}
        self._fh.write(json.dumps(full, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def run_cohort(
    jobs: Sequence[SlideJob],
    out_dir: str | os.PathLike,
    model: str | os.PathLike = DEFAULT_MODEL,
    options: SegmentOptions | None = None,
    cohort: CohortOptions | None = None,
) -> CohortSummary:
    """Segment every slide of ``jobs`` into ``out_dir/<slide id>/`` on a Dask cluster.

    Parameters
    ----------
    jobs : sequence of SlideJob
        From :func:`~wsi_weakseg.cohort.find_slides` (ids unique).
    out_dir : path
        Cohort output folder (on a file system every worker sees).
    model : str or path
        Packaged model name or model folder (every worker must see the folder).
    options : SegmentOptions, optional
        ``segment``'s options for every slide (a manifest's mpp overrides ``mpp`` per slide).
    cohort : CohortOptions, optional

    Returns
    -------
    CohortSummary
        Final rows; ``exit_code`` is 1 when any slide failed. Failing slides never raise.

    Raises
    ------
    UserInputError
        Before any work: bad options, a model that does not load, an unwritable output folder,
        colliding slide ids, or a scheduler that cannot be reached.
    """
    from .inputs import check_unique_ids

    start = time.perf_counter()
    opts = options or SegmentOptions()
    co = cohort or CohortOptions()
    if co.retries < 0:
        raise CohortInputError(f"--retries must be >= 0, got {co.retries}")
    check_unique_ids(jobs)
    loaded = load_model(model)
    opts.validate(loaded.card.tile_size)
    model_ref = _model_ref(model)
    out = Path(out_dir).resolve()
    ledger = Ledger(out / LEDGER_NAME, uuid.uuid4().hex[:12])
    final: dict[str, dict[str, Any]] = {}
    todo: deque[tuple[SlideJob, int]] = deque()
    identities = {}
    for job in jobs:
        identities[job.slide_id] = ident = expected_identity(job, opts, loaded.sha256)
        done = None if co.overwrite else read_done(out / job.slide_id, ident)
        if done is not None:
            final[job.slide_id] = row = result_row(job, done)
            ledger.write(row, attempt=0)
        else:
            todo.append((job, 1))
    log.info("cohort: %d slides, %d already done, %d to run", len(jobs), len(final), len(todo))
    sha = loaded.sha256
    del loaded  # the driver needs only its identity; workers load their own copy
    report = _Reporter(out, jobs, final, start)
    try:
        if todo:
            with _connect(co, opts.device) as (client, threads, device, resources):
                _run(client, todo, out, (model_ref, sha), opts, co, identities, ledger, final, threads, device,
                     resources, report)
    finally:
        ledger.close()
    report(final=True)
    rows = [final[j.slide_id] for j in jobs]
    return CohortSummary(rows=rows, ledger=ledger.path, seconds=time.perf_counter() - start)


class _Reporter:
    """Rewrites ``OUT/report.html`` from the final rows so far; a report that cannot be written only warns.

    Between slides it waits ten times as long as the last rewrite took, so a cohort of thousands of slides
    spends at most about a tenth of the driver's time on its report; the last rewrite (``final``) always runs.
    """

    def __init__(self, out: Path, jobs: Sequence[SlideJob], final: dict[str, dict[str, Any]], start: float) -> None:
        self.out, self.jobs, self.final, self.start = out, jobs, final, start
        self.next_at = 0.0

    def __call__(self, final: bool = False) -> None:
        now = time.perf_counter()
        if not (final or now >= self.next_at) or not self.final:
            return
        rows = [self.final[j.slide_id] for j in self.jobs if j.slide_id in self.final]
        try:
            write_report(self.out, rows, seconds=now - self.start, pending=len(self.jobs) - len(rows))
        except OSError as exc:
            log.warning("cannot write the cohort report in %s: %s", self.out, exc.strerror or exc)
        self.next_at = time.perf_counter() + 10 * (time.perf_counter() - now)


def _model_ref(model: str | os.PathLike) -> str:
    """A packaged model travels by name (workers have the package); any other by its absolute folder."""
    folder = resolve_model_dir(model).resolve()
    return folder.name if folder.parent == PACKAGED.resolve() else str(folder)


def _run(client, todo, out, model, opts, co, identities, ledger, final, threads, device, resources, report) -> None:
    """Submit ``todo`` with at most ``limit`` in flight; record each result (then ``report()``); resubmit
    transient failures."""
    from distributed import as_completed

    from ..engine.progress import progress_bar

    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    for name in resources or {}:
        if not any(name in (w.get("resources") or {}) for w in workers):
            raise CohortInputError(
                f"no Dask worker declares the resource {name!r} that every slide task needs, so none would run; "
                f"start workers with `dask worker --resources {name}=1` or drop --resource"
            )
    slots = max(1, sum(w["nthreads"] for w in workers))
    limit = co.max_in_flight or 2 * slots
    if limit < 1:
        raise CohortInputError(f"--max-in-flight must be >= 1, got {limit}")
    in_flight: dict[str, tuple[SlideJob, int]] = {}
    pending = as_completed()

    def submit() -> None:
        while todo and len(in_flight) < limit:
            job, attempt = todo.popleft()
            fut = client.submit(
                process_slide, job, str(out), *model, opts, identities[job.slide_id], threads, device,
                recheck_done=not co.overwrite,
                key=f"slide-{job.slide_id}-{ledger.run_id}-{attempt}", pure=False, resources=resources,
            )
            in_flight[fut.key] = (job, attempt)
            pending.add(fut)

    with progress_bar(len(todo), "slides", co.progress) as bar:
        submit()
        for fut in pending:
            job, attempt = in_flight.pop(fut.key)
            try:
                row = fut.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker (KilledWorker), a task that cannot unpickle ...
                row = {"slide_id": job.slide_id, "path": str(job.path), "status": "failed",
                       "error_type": type(exc).__name__, "error": str(exc) or repr(exc), "transient": True}
            fut.release()
            retry = row["status"] == "failed" and row.get("transient") and attempt <= co.retries
            if retry:
                row["retrying"] = True
                todo.appendleft((job, attempt + 1))
                log.warning("%s: attempt %d failed (%s: %s); retrying", job.slide_id, attempt,
                            row.get("error_type"), row.get("error"))
            elif row["status"] == "failed":
                log.error("%s: failed: %s: %s", job.slide_id, row.get("error_type"), row.get("error"))
            ledger.write(row, attempt)
            if not retry:
                final[job.slide_id] = row
                report()
                bar.update(1)
                bar.set_postfix_str(f"{sum(r['status'] == 'failed' for r in final.values())} failed")
            submit()


@contextmanager
def _connect(co: CohortOptions, device: str) -> Iterator[tuple[Any, Any, str | None, dict | None]]:
    """A Client on the chosen cluster, with torch threads per task, a per-worker device and task resources."""
    from distributed import Client, LocalCluster

    if co.scheduler_address and co.scheduler_file:
        raise CohortInputError("give --scheduler-address or --scheduler-file, not both")
    if co.scheduler_address or co.scheduler_file:
        where = co.scheduler_address or co.scheduler_file
        try:
            if co.scheduler_file:
                client = Client(scheduler_file=co.scheduler_file, timeout="30s")
            else:
                client = Client(co.scheduler_address, timeout="30s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise CohortInputError(
                f"cannot reach the Dask scheduler at {where}: {exc}; start it (dask scheduler) or fix the address"
            ) from None
        with client:
            threads = co.torch_threads or _host_slots(client)
            yield client, threads, None, co.resources
        return
    n, threads, gpus = local_cluster_size(co.n_workers, device)
    resources = co.resources or ({"GPU": 1} if gpus else None)
    log.info("LocalCluster: %d worker process(es), %d torch thread(s) each%s", n, threads,
             f", one GPU each ({gpus} GPUs)" if gpus else "")
    with LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",  # any free port
        silence_logs=logging.ERROR, resources=resources,
    ) as cluster, Client(cluster) as client:
        log.info("Dask dashboard: %s", cluster.dashboard_link)
        yield client, co.torch_threads or threads, "worker-gpu" if gpus else None, resources


def local_cluster_size(n_workers: int | None, device: str = "auto") -> tuple[int, int, int]:
    """LocalCluster sizing: (worker processes, torch threads per worker, GPUs used).

    One worker per GPU when the device is a GPU; otherwise one per core, at most one per 4 GiB of memory.
    Torch threads are the cores over the workers, so workers never oversubscribe the machine.
    """
    import psutil

    cores = usable_cores()
    gpus = 0
    if device == "auto" or device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_workers is not None and n_workers < 1:
        raise CohortInputError(f"--n-workers must be >= 1, got {n_workers}")
    n = n_workers or gpus or max(1, min(cores, psutil.virtual_memory().total // WORKER_MEMORY))
    return int(n), max(1, cores // int(n)), gpus


def _host_slots(client) -> dict[str, int]:
    """Task slots per host of an existing cluster: the task divides its host's cores by this."""
    slots: dict[str, int] = {}
    for addr, w in client.scheduler_info(n_workers=-1)["workers"].items():
        host = w.get("host") or addr.split("://")[-1].rsplit(":", 1)[0]
        slots[host] = slots.get(host, 0) + int(w["nthreads"])
    return {"slots": slots}
