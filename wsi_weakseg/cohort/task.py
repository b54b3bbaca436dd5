"""One slide of a cohort on a worker, and the done-manifest that commits it.

A slide is done when ``OUT/<slide id>/done.json`` exists and matches: it is written last, after
``segment`` has renamed its outputs into place, and holds a digest of everything that decides the result
(result-affecting options with the ROI file's content hash in place of its path, model sha256, package
version, the slide file's size and modification time). Anything else — no manifest, another digest, an
output file gone — means the slide is computed again. An attempt holds the slide's lock
(:mod:`.lock`) from before it checks ``done.json`` until it has committed, so no slide is computed twice.

:func:`process_slide` runs inside a dask worker process. Those are daemonic, so it uses threads only
(``segment``'s readers and merge blocks are threads); it never raises for a failing slide but returns
the failure as a ledger row, so one bad slide cannot stop a cohort.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
import time
import traceback
import uuid
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..engine.segment import SegmentOptions
from ..errors import ModelCardError, UserInputError
from .inputs import SlideJob
from .lock import slide_lock, sweep_staging

log = logging.getLogger(__name__)

DONE_NAME = "done.json"
#: SegmentOptions fields that change a slide's outputs (batch size, threads, device and progress do not).
RESULT_OPTIONS = ("tile_size", "block_size", "mpp", "roi", "compress", "preview", "overlays")

_MODELS: dict[tuple[str, str], Any] = {}  # per worker process: (model ref, sha256) -> Model


def job_options(job: SlideJob, options: SegmentOptions) -> SegmentOptions:
    """The options one slide runs with: the cohort's, with the manifest's mpp and regions file when it gives them."""
    return replace(options, mpp=job.mpp if job.mpp is not None else options.mpp, progress=False,
                   regions=str(job.regions) if job.regions is not None else options.regions)


def expected_identity(job: SlideJob, options: SegmentOptions, model_sha256: str) -> dict[str, Any]:
    """What a matching done-manifest must record for ``job``: its inputs and their digest.

    A missing slide file gets size and mtime None; its task fails, so no done-manifest records them.
    The ROI is digested by content (``sha256:<hex>``, or ``missing``); like the slide, its path is
    recorded but not digested.
    """
    opts = job_options(job, options)
    try:
        st = job.path.stat()
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size = mtime = None
    inputs = {
        # a regions file joins the digest only when given, so slides done before it existed stay done
        "options": {**{k: getattr(opts, k) for k in RESULT_OPTIONS}, "roi": _roi_digest(opts.roi),
                    **({"regions": _roi_digest(opts.regions)} if opts.regions else {})},
        "model_sha256": model_sha256,
        "wsi_weakseg_version": __version__,
        "slide": {"size": size, "mtime_ns": mtime},
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    # the path is recorded but not digested: moving a cohort's data folder does not recompute it
    return {"digest": digest, "inputs": inputs, "slide_path": str(job.path.resolve()),
            "roi_path": str(Path(opts.roi).resolve()) if opts.roi else None}


def _roi_digest(roi: str | None) -> str | None:
    """``sha256:<hex>`` of the ROI file's bytes, ``missing`` when it cannot be read, None without a ROI."""
    if not roi:
        return None
    try:
        st = os.stat(roi)
        return f"sha256:{_sha256_file(str(Path(roi).resolve()), st.st_size, st.st_mtime_ns)}"
    except OSError:
        return "missing"


@functools.lru_cache(maxsize=16)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, read once per (path, size, mtime) however many slides share it."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_done(out_dir: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The slide's done-manifest when it matches ``identity`` and its outputs exist, else None."""
    try:
        done = json.loads((out_dir / DONE_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict) or done.get("digest") != identity["digest"]:
        return None
    outputs = done.get("outputs")
    if not isinstance(outputs, list) or not all((out_dir / name).exists() for name in outputs):
        return None
    return done


def _write_done(out_dir: Path, record: dict[str, Any]) -> None:
    tmp = out_dir / f".{DONE_NAME}.{uuid.uuid4().hex[:12]}.tmp"
    with open(tmp, "w") as fh:
        fh.write(json.dumps(record, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out_dir / DONE_NAME)


def _model(ref: str, sha256: str):
    """The model for ``ref``, loaded once per worker process; its sha256 must be the driver's."""
    from ..model.card import load_model

    key = (ref, sha256)
    if key not in _MODELS:
        model = load_model(ref)
        if model.sha256 != sha256:
            raise ModelCardError(
                f"model {ref!r} on worker {socket.gethostname()} has sha256 {model.sha256[:12]}..., the cohort "
                f"started with {sha256[:12]}...; give workers the same model folder (a shared path)"
            )
        _MODELS.clear()
        _MODELS[key] = model
    return _MODELS[key]


def process_slide(
    job: SlideJob,
    out_root: str,
    model_ref: str,
    model_sha256: str,
    options: SegmentOptions,
    identity: dict[str, Any],
    torch_threads: int | dict[str, int] | None = None,
    device: str | None = None,
    recheck_done: bool = True,
) -> dict[str, Any]:
    """Segment one slide into ``out_root/<slide id>/`` and commit it with its done-manifest.

    The slide's lock is held throughout: when another live process holds it, the slide fails at once
    (:class:`~.lock.SlideLockedError`, not retried). Holding it, staging folders of dead attempts are
    removed, and a done-manifest that matches (written by another driver meanwhile) makes it ``skipped``.

    Parameters
    ----------
    torch_threads : int, mapping or None
        Intra-op threads for torch: a number, or ``{"slots": {host: n}}`` (the driver's count of task slots
        per host of the cluster), which gives each task the host's cores over its slots, so that several
        workers on one host do not oversubscribe it.
    device : str, optional
        Device overriding ``options.device``; ``"worker-gpu"`` picks the GPU numbered like the worker
        (LocalCluster workers are named 0, 1, ...).
    recheck_done : bool
        Skip the slide when, under its lock, its done-manifest matches (False for ``--overwrite``).

    Returns
    -------
    dict
        A ledger row: status ``done``, ``skipped`` or ``failed``, error type and message, whether a retry may help
        (``transient``), duration, nucleus count, tissue area and nuclei per mm².
    """
    start = time.perf_counter()
    row: dict[str, Any] = {"slide_id": job.slide_id, "path": str(job.path), "host": socket.gethostname(), "pid": os.getpid()}
    held = ExitStack()
    try:
        _set_threads(torch_threads)
        out_dir = Path(out_root) / job.slide_id
        held.enter_context(slide_lock(out_dir))
        sweep_staging(out_dir)
        done = read_done(out_dir, identity) if recheck_done else None
        if done is not None:  # finished by another driver after ours looked
            return result_row(job, done)
        try:
            (out_dir / DONE_NAME).unlink()  # the outputs are about to change: uncommit first
        except FileNotFoundError:
            pass
        result = _segment_and_commit(job, out_dir, _model(model_ref, model_sha256), options, device, identity)
        row.update(status="done", **result)
    except Exception as exc:  # noqa: BLE001 - every failure becomes this slide's ledger row
        row.update(
            status="failed", error_type=type(exc).__name__, error=str(exc),
            transient=not isinstance(exc, UserInputError),
        )
        if not isinstance(exc, UserInputError):
            row["traceback"] = traceback.format_exc(limit=8)
    finally:
        held.close()  # after done.json is written: the lock covers the commit
    row["duration_s"] = round(time.perf_counter() - start, 3)
    return row


def _segment_and_commit(job: SlideJob, out_dir: Path, model, options: SegmentOptions, device: str | None,
                        identity: dict[str, Any]) -> dict[str, Any]:
    """Segment the slide into ``out_dir``, write its done-manifest and return the ledger's result fields."""
    from ..engine.segment import segment

    opts = job_options(job, options)
    if device:
        opts = replace(opts, device=_worker_gpu() if device == "worker-gpu" else device)
    res = segment(job.path, out_dir, model, opts)
    run = json.loads(res.run_json.read_text())
    area = float(run["tissue"]["area_mm2"])
    result = {
        "nuclei": res.n_nuclei,
        "tissue_area_mm2": round(area, 6),
        "nuclei_per_mm2": round(res.n_nuclei / area, 3) if area > 0 else None,
        "device": run["device"],
        **_region_results(run),
    }
    _write_done(out_dir, {
        **identity, "slide_id": job.slide_id,
        "outputs": [p.name for p in (res.geojson, res.zarr, *res.pictures, res.run_json)],
        "result": result, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return result


#: Ledger fields of slides with regions: nuclei per mm² per region class (``--regions``, a manifest's
#: ``regions`` column) and, for a regions model, the area per class.
REGION_RESULTS = ("nuclei_per_mm2_by_region", "region_area_mm2_by_class")


def _region_results(run: dict[str, Any]) -> dict[str, Any]:
    """The :data:`REGION_RESULTS` a run's ``run.json`` has."""
    out = {}
    if "nuclei_per_region" in run:
        out["nuclei_per_mm2_by_region"] = {k: v["nuclei_per_mm2"] for k, v in run["nuclei_per_region"].items()}
    if "regions" in run:
        out["region_area_mm2_by_class"] = run["regions"]["area_mm2_by_class"]
    return out


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):  # not inside a dask worker (a direct call)
        return None


def _set_threads(torch_threads: int | dict | None) -> None:
    n = torch_threads
    if isinstance(torch_threads, dict):
        worker = _worker()
        host = worker.address.split("://")[-1].rsplit(":", 1)[0] if worker is not None else None
        slots = torch_threads.get("slots", {}).get(host)
        n = max(1, usable_cores() // slots) if slots else None
    if n:
        import torch

        torch.set_num_threads(int(n))


def _worker_gpu() -> str:
    import torch

    worker = _worker()
    name = str(worker.name) if worker is not None else "0"
    index = int(name) if name.isdigit() else 0
    return f"cuda:{index % max(1, torch.cuda.device_count())}"


def result_row(job: SlideJob, done: dict[str, Any]) -> dict[str, Any]:
    """The ledger row of a slide skipped because its done-manifest matches."""
    result = done.get("result") or {}
    return {"slide_id": job.slide_id, "path": str(job.path), "status": "skipped", "duration_s": 0.0,
            **{k: result.get(k) for k in ("nuclei", "tissue_area_mm2", "nuclei_per_mm2")},
            **{k: result[k] for k in REGION_RESULTS if k in result}}
