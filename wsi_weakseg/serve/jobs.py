"""Jobs of the server: for segment jobs a bounded queue, dispatcher threads, one cohort task per job, and their state.

A job is a folder ``STATE/jobs/<id>/`` holding ``job.json`` (its state, rewritten by temporary name and
``os.replace`` on every change, so a reader or a restart never sees half a file), ``roi.geojson`` (the ROI
the request gave, as the QuPath annotation ``segment --roi`` reads) and, once done, ``result/`` with
``segment``'s outputs. A job runs as one :func:`~wsi_weakseg.cohort.task.process_slide` task on the Dask
cluster (the cohort engine: a LocalCluster by default, or an existing scheduler), so a job's outputs are
exactly what ``wsi-weakseg segment --roi roi.geojson`` writes. The queue is bounded (:class:`QueueFullError`);
a job leaves it only when a dispatcher thread has a free task slot, so queued jobs cancel at once. A running
job's cancel releases its future: the server forgets it at once, the worker finishes its task unobserved.

Progress: a job run on Dask passes a :class:`~.progress.ProgressFile` as ``SegmentOptions.on_progress``; the
worker rewrites ``<id>/progress.json`` as tiles and blocks finish and the dispatcher copies it into the job
while it waits on the future (every 0.25 s). A job run in the dispatcher thread reports straight into the store.
Train jobs (``kind: train``) share the store and the cancel; they run in :mod:`.training`'s thread.

On start, finished jobs (done, failed, cancelled) are loaded from the state folder; jobs that were queued or
running when the server stopped become ``failed`` with a message saying to submit them again.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..cohort.inputs import SlideJob
from ..cohort.task import expected_identity, process_slide
from ..engine.segment import SegmentOptions
from ..errors import UserInputError
from .progress import PROGRESS_NAME, ProgressFile, Throttled, read_progress

log = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
_ID = re.compile(r"^[0-9a-f]{16}$")
RESULT_DIR = "result"  # process_slide writes into <job folder>/<slide id>; this is the slide id


class QueueFullError(UserInputError):
    """The job queue is full (HTTP 429)."""


class JobNotFoundError(UserInputError, LookupError):
    """No job has this id (HTTP 404)."""


@dataclass
class Job:
    """One job (segment or train): request, state, timings and outcome (``job.json``)."""

    id: str
    slide: str = ""  # the name the request used (relative to a root); train jobs: ""
    slide_path: str = ""
    model: str = ""  # segment: the model used; train: the name of the model being trained
    mpp: float | None = None
    kind: str = "segment"  # or "train" (jobs.json of the first slice have no kind: segment)
    detail: dict[str, Any] | None = None  # train: epochs, epochs_done, history, shipped, metrics
    state: str = "queued"
    progress: float = 0.0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: dict[str, str] | None = None
    nuclei: int | None = None
    result: str | None = None  # file name of the GeoJSON inside result/

    def public(self) -> dict[str, Any]:
        """What ``GET /v1/jobs/{id}`` returns (no server paths)."""
        t = {"queued_s": _span(self.created, self.started or self.finished),
             "running_s": _span(self.started, self.finished), "total_s": _span(self.created, self.finished)}
        common = {"job": self.id, "kind": self.kind, "state": self.state, "progress": self.progress,
                  "model": self.model, "error": self.error, "timings": t, "created": self.created,
                  "started": self.started, "finished": self.finished}
        if self.kind == "train":
            return {**common, **(self.detail or {})}
        return {**common, "slide": self.slide, "mpp": self.mpp, "nuclei": self.nuclei}


def _running(job: Job) -> bool:
    """The guard of updates a cancel must win against."""
    return job.state == "running"


def _span(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 4)


class JobStore:
    """Jobs in memory and on disk under ``state_dir/jobs``; every method is thread-safe."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        for folder in sorted(self.root.iterdir()):
            job = self._load(folder)
            if job is None:
                continue
            if job.state not in FINISHED:
                job.state, job.finished = "failed", time.time()
                job.error = {"type": "ServerRestarted",
                             "message": "the server stopped before this job finished; submit it again"}
                self._write(job)
            self._jobs[job.id] = job
        log.info("state %s: %d jobs loaded", state_dir, len(self._jobs))

    def _load(self, folder: Path) -> Job | None:
        try:
            data = json.loads((folder / "job.json").read_text())
            return Job(**{k: data[k] for k in Job.__dataclass_fields__ if k in data})
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring job folder %s: %s", folder, exc)
            return None

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def _write(self, job: Job) -> None:
        folder = self.folder(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".job.json.{secrets.token_hex(6)}.tmp"
        tmp.write_text(json.dumps(asdict(job), indent=1) + "\n")
        os.replace(tmp, folder / "job.json")

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job
            self._write(job)

    def get(self, job_id: str) -> Job:
        """A copy of the job (raises :class:`JobNotFoundError`)."""
        with self._lock:
            job = self._jobs.get(job_id) if _ID.match(job_id or "") else None
            if job is None:
                raise JobNotFoundError(f"no job {job_id!r}; POST /v1/segment and POST /v1/train return the ids of new jobs")
            return replace(job)

    def update(self, job_id: str, when: Callable[[Job], bool] = lambda j: True, **changes: Any) -> Job | None:
        """Apply ``changes`` when ``when(job)`` holds (atomically with the check); the updated copy or None."""
        with self._lock:
            job = self._jobs[job_id]
            if not when(job):
                return None
            for k, v in changes.items():
                setattr(job, k, v)
            self._write(job)
            return replace(job)

    def all(self) -> list[Job]:
        with self._lock:
            return [replace(j) for j in self._jobs.values()]


def new_id() -> str:
    """A random 16-hex-digit job id."""
    return secrets.token_hex(8)


class JobRunner:
    """The bounded queue and the dispatcher threads that run jobs as cohort tasks on a Dask client.

    Parameters
    ----------
    store : JobStore
    client : distributed.Client or None
        Where tasks run; None runs :func:`process_slide` in the dispatcher thread itself (used by unit tests).
    options : SegmentOptions
        Options of every job (the job's ROI and mpp are filled in per job).
    models : callable
        ``models(name) -> (ref, sha256)`` of a model the request may name.
    slots : int
        Dispatcher threads = jobs running at once (the cluster's task slots).
    max_queued : int
        Jobs waiting beyond the running ones before submissions are refused.
    """

    def __init__(self, store: JobStore, client, options: SegmentOptions, models: Callable[[str], tuple[str, str]],
                 slots: int = 1, max_queued: int = 16, torch_threads: Any = None) -> None:
        self.store, self.client, self.options, self.models = store, client, options, models
        self.torch_threads = torch_threads
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=max_queued)
        self._futures: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, name=f"wsi-weakseg-job-{i}", daemon=True)
                         for i in range(max(1, slots))]
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> None:
        """Queue ``job`` (its folder must hold ``roi.geojson``); :class:`QueueFullError` when the queue is full."""
        self.store.add(job)
        try:
            self._queue.put_nowait(job.id)
        except queue.Full:
            shutil.rmtree(self.store.folder(job.id), ignore_errors=True)
            raise QueueFullError(f"the job queue is full ({self._queue.maxsize} waiting); retry after a job finishes "
                                 "or DELETE a queued job") from None

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; a finished job is returned unchanged."""
        self.store.get(job_id)
        job = self.store.update(job_id, lambda j: j.state not in FINISHED, state="cancelled", finished=time.time())
        with self._lock:
            fut = self._futures.pop(job_id, None)
        if fut is not None:
            fut.cancel()
        return job or self.store.get(job_id)

    def close(self) -> None:
        """Stop the dispatcher threads after their current job (queued jobs stay queued on disk)."""
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break

    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._run(job_id)
            except Exception as exc:
                log.exception("job %s: dispatcher failed", job_id)
                self.store.update(job_id, lambda j: j.state not in FINISHED, state="failed", finished=time.time(),
                                  error={"type": type(exc).__name__, "message": str(exc)})

    def _run(self, job_id: str) -> None:
        job = self.store.update(job_id, lambda j: j.state == "queued", state="running", started=time.time())
        if job is None:  # cancelled while queued
            return
        folder = self.store.folder(job_id)
        ref, sha = self.models(job.model)
        if self.client is None:  # this thread: straight into the store
            report = Throttled(lambda f: self.store.update(job_id, _running, progress=round(f, 4)),
                               final=lambda f: f >= 1.0)
        else:  # a worker process: through a file in the job folder, read while waiting (_wait)
            report = ProgressFile(str(folder / PROGRESS_NAME))
        opts = replace(self.options, roi=str(folder / "roi.geojson"), mpp=job.mpp, progress=False, on_progress=report)
        slide = SlideJob(RESULT_DIR, Path(job.slide_path), job.mpp)
        identity = expected_identity(slide, opts, sha)
        args = (slide, str(folder), ref, sha, opts, identity, self.torch_threads)
        if self.client is None:
            row = process_slide(*args)
        else:
            fut = self.client.submit(process_slide, *args, key=f"serve-{job_id}", pure=False)
            with self._lock:
                self._futures[job_id] = fut
            row = self._wait(job_id, fut)
            if row is None:
                return
        self._finish(job_id, row)

    def _wait(self, job_id: str, fut) -> dict[str, Any] | None:
        """The task's ledger row, or None when the job was cancelled meanwhile."""
        from distributed import TimeoutError as DaskTimeout

        progress_file = self.store.folder(job_id) / PROGRESS_NAME
        while True:
            job = self.store.get(job_id)
            if job.state == "cancelled":
                return None
            fraction = read_progress(progress_file)
            if fraction is not None and fraction > job.progress:
                self.store.update(job_id, _running, progress=fraction)
            try:
                row = fut.result(timeout=0.25)
            except (DaskTimeout, TimeoutError):
                continue
            except Exception as exc:  # noqa: BLE001 - cancelled future, lost worker ...
                if self.store.get(job_id).state == "cancelled":
                    return None
                row = {"status": "failed", "error_type": type(exc).__name__, "error": str(exc) or repr(exc)}
            with self._lock:
                self._futures.pop(job_id, None)
            return row

    def _finish(self, job_id: str, row: dict[str, Any]) -> None:
        not_cancelled = _running
        if row.get("status") == "done":
            done = json.loads((self.store.folder(job_id) / RESULT_DIR / "done.json").read_text())
            job = self.store.update(job_id, not_cancelled, state="done", progress=1.0, finished=time.time(),
                                    nuclei=row.get("nuclei"), result=done["outputs"][0])
        else:
            job = self.store.get(job_id)  # the server's folders stay private: name the slide as the request did
            message = str(row.get("error") or "").replace(job.slide_path, job.slide)
            job = self.store.update(job_id, not_cancelled, state="failed", finished=time.time(),
                                    error={"type": row.get("error_type") or "Error", "message": message})
        if job is not None:
            log.info("job %s %s in %.2f s", job_id, job.state, job.finished - job.created)
