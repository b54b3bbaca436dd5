"""Train jobs of the server: a config and a data spec under the roots in, a served model out.

``POST /v1/train`` is checked before anything is queued (:func:`prepare_training`): the config layers over
the packaged defaults like ``train --config`` (unknown keys are 400); ``data.spec`` is a name relative to a
served root, confined like a slide name (403); every image, slide, points, scribbles, masks, region and labels
path inside the spec must resolve (symlinks followed) inside a served root too (403), checked on the spec's text
before any of those files is touched, so a spec cannot probe for files outside the roots. The checked spec is
frozen into the job folder (``spec.yaml``, absolute paths) with the resolved config (``config.json``): the job
trains exactly what was checked. Config keys that name other files (``data.items``, ``data.cache_dir``, ``model.imagenet_weights``)
are refused; ``device`` is the server's.

A train job runs :func:`~wsi_weakseg.train.trainer.train` in the server's train thread (one at a time, its
own bounded queue, so segment jobs keep running on the cluster meanwhile) into ``<job>/model/<name>/``; its
step and epoch hooks update the job (progress, epochs done, per-epoch validation means) and stop training
when the job was cancelled. The finished folder is renamed to ``STATE/models/<name>/`` and served by name.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, SlideNotFoundError, UserInputError
from .jobs import FINISHED, Job, JobStore, QueueFullError
from .models import ModelRegistry
from .paths import PathOutsideRootsError, Roots

log = logging.getLogger(__name__)

TRAIN_FIELDS = ("config", "name", "epochs")
_PATH_KEYS = ("image", "slide", "points", "scribbles", "masks", "region", "region_points", "labels")
_REFUSED = (("data", "items"), ("data", "cache_dir"), ("model", "imagenet_weights"))
MAX_EPOCHS = 10_000
#: Share of the progress given to the epochs; the rest is context measurement, threshold tuning, publishing.
EPOCH_SHARE = 0.95


class TrainingCancelled(Exception):
    """Raised inside the training hooks when the job was cancelled."""


def hide_paths(message: str, folders: Sequence[Path]) -> str:
    """``message`` with every folder of ``folders`` (longest first) replaced by ``<root>``."""
    for folder in sorted(map(str, folders), key=len, reverse=True):
        message = message.replace(folder + "/", "").replace(folder, "<root>")
    return message


def _inside(path: Path, roots: Roots) -> bool:
    return any(path.is_relative_to(r) for r in roots.paths)


def check_spec_paths(spec_path: Path, roots: Roots) -> None:
    """Refuse (403) a spec whose items name files outside the roots, before any of them is opened."""
    try:
        data = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the data spec is not a readable YAML file: {type(exc).__name__}") from None
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ConfigError("the data spec must be a mapping with an 'items' list")
    for index, item in enumerate(items):
        for key in _PATH_KEYS if isinstance(item, dict) else ():
            value = item.get(key)
            if not isinstance(value, str):
                continue
            p = Path(value).expanduser()
            if not _inside((p if p.is_absolute() else spec_path.parent / p).resolve(), roots):
                raise PathOutsideRootsError(f"data spec item {index}: its {key} file is outside the served roots; "
                                            "every file a spec names must lie under a --root")


def _frozen_spec(spec, roots: Roots) -> dict[str, Any]:
    """The loaded spec as YAML data with absolute paths, every one re-checked inside the roots."""
    items = []
    for index, it in enumerate(spec.items):
        for p in (it.image, it.points, it.scribbles, it.masks, it.region, it.region_points, it.labels):
            if p is not None and not _inside(p, roots):
                raise PathOutsideRootsError(f"data spec item {index} names a file outside the served roots")
        entry: dict[str, Any] = {it.kind: str(it.image), "split": it.split}
        for key in ("points", "scribbles", "masks", "region", "region_points"):
            if getattr(it, key) is not None:
                entry[key] = str(getattr(it, key))
        if it.mpp is not None:
            entry["mpp"] = it.mpp
        if it.point_classes is not None:
            entry["point_classes"] = list(it.point_classes)
        for key in ("region_classes", "nucleus_classes", "background_classes", "in_classes", "out_classes"):
            if getattr(it, key) is not None:
                entry[key] = list(getattr(it, key))
        if it.labels is not None:
            entry["labels"] = str(it.labels)
        items.append(entry)
    return {"items": items}


def prepare_training(body: dict[str, Any], roots: Roots, device: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config, frozen spec)`` of a train request, every check done; raises typed errors (400/403/404)."""
    from ..train.config import config_from_mapping
    from ..weak.spec import load_spec

    unknown = sorted(set(body) - set(TRAIN_FIELDS))
    if unknown:
        raise ConfigError(f"unknown fields {unknown}; a train request has config, name and optionally epochs")
    user = body.get("config")
    if not isinstance(user, dict):
        raise ConfigError("'config' must be a training config object (as configs/train-points.yaml holds it)")
    epochs = body.get("epochs")
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or not 0 < epochs <= MAX_EPOCHS):
        raise ConfigError(f"'epochs' must be an integer from 1 to {MAX_EPOCHS}, got {epochs!r}")
    for section, key in _REFUSED:
        if isinstance(user.get(section), dict) and user[section].get(key) is not None:
            raise ConfigError(f"config key '{section}.{key}' names a server file and is not accepted over the API; "
                              "leave it out (data.spec names the data, relative to a served root)")
    data = user.get("data") if isinstance(user.get("data"), dict) else {}
    try:
        spec_path = roots.resolve(data.get("spec"))  # 403 / 404 like a slide name
    except PathOutsideRootsError:
        raise PathOutsideRootsError(f"config 'data.spec' must be a data spec YAML named relative to a served root "
                                    f"(no '..', absolute paths or symlinks leaving a root); got {data.get('spec')!r}") from None
    except SlideNotFoundError:
        raise SlideNotFoundError(f"no served root holds a data spec {data.get('spec')!r}") from None
    check_spec_paths(spec_path, roots)
    overrides: dict[str, Any] = {"device": device}
    if epochs is not None:
        overrides["optim"] = {"epochs": epochs}
    try:
        cfg = config_from_mapping({**user, "data": {**data, "spec": str(spec_path)}}, None, overrides)
    except ConfigError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"invalid training config: {type(exc).__name__}: {exc}") from None
    spec = load_spec(spec_path)
    frozen = _frozen_spec(spec, roots)
    n_train = len(spec.split(cfg["data"]["train_split"]))
    if n_train < 2:
        raise ConfigError(f"split {cfg['data']['train_split']!r} of the data spec has {n_train} item(s); the points "
                          "recipe co-trains two nets on disjoint halves and needs at least 2")
    return cfg, frozen


class TrainRunner:
    """The bounded queue of train jobs and the thread that runs them one at a time.

    Parameters
    ----------
    store : JobStore
    models : ModelRegistry
        Where finished models are published (``models.trained_dir``) and served.
    max_queued : int
        Train jobs waiting beyond the running one before submissions are refused (429).
    private : sequence of path
        Server folders (roots, state) that error messages must not show (:func:`hide_paths`).
    """

    def __init__(self, store: JobStore, models: ModelRegistry, max_queued: int = 4,
                 private: Sequence[Path] = ()) -> None:
        self.store, self.models, self.private = store, models, list(private)
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._loop, name="wsi-weakseg-train", daemon=True)
        self._thread.start()

    def submit(self, job: Job, cfg: dict[str, Any], spec: dict[str, Any]) -> None:
        """Write the job's folder (config, frozen spec) and queue it; the name must be claimed already."""
        folder = self.store.folder(job.id)
        folder.mkdir(parents=True)
        (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        cfg = {**cfg, "data": {**cfg["data"], "spec": str(folder / "spec.yaml")}}
        (folder / "config.json").write_text(json.dumps(cfg, indent=1, default=str) + "\n")
        self.store.add(job)
        try:
            self._queue.put_nowait(job.id)
        except queue.Full:
            shutil.rmtree(folder, ignore_errors=True)
            raise QueueFullError(f"the train queue is full ({self._queue.maxsize} waiting); retry after a train job "
                                 "finishes or DELETE a queued one") from None

    def close(self) -> None:
        """Stop the thread after its current job."""
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            job = self.store.get(job_id)
            try:
                self._run(job_id)
            except TrainingCancelled:
                log.info("train job %s cancelled", job_id)
            except Exception as exc:
                if not isinstance(exc, UserInputError):
                    log.exception("train job %s failed", job_id)
                self.store.update(job_id, lambda j: j.state not in FINISHED, state="failed", finished=time.time(),
                                  error={"type": type(exc).__name__, "message": self._public(str(exc))})
            finally:
                if self.store.get(job_id).state != "done":
                    self.models.release(job.model)
                    shutil.rmtree(self.store.folder(job_id) / "model", ignore_errors=True)

    def _public(self, message: str) -> str:
        return hide_paths(message, self.private)

    def _run(self, job_id: str) -> None:
        from ..train.trainer import train

        job = self.store.update(job_id, lambda j: j.state == "queued", state="running", started=time.time())
        if job is None:  # cancelled while queued
            return
        folder = self.store.folder(job_id)
        cfg = json.loads((folder / "config.json").read_text())
        epochs = int(cfg["optim"]["epochs"])
        running = lambda j: j.state == "running"

        def check() -> None:
            if self.store.get(job_id).state == "cancelled":
                raise TrainingCancelled(job_id)

        def on_step(step: int, total: int) -> None:
            check()
            self.store.update(job_id, running, progress=round(EPOCH_SHARE * min(1.0, step / max(1, total)), 4))

        def on_epoch(history: list[dict]) -> None:
            check()
            detail = {"epochs": epochs, "epochs_done": len(history), "history": [_epoch(h) for h in history]}
            self.store.update(job_id, running, detail=detail,
                              progress=round(EPOCH_SHARE * min(1.0, len(history) / epochs), 4))

        from .progress import Throttled

        self.store.update(job_id, running, detail={"epochs": epochs, "epochs_done": 0, "history": []})
        out = folder / "model" / job.model
        result = train(cfg, out, progress=False, on_step=Throttled(on_step, 0.5, final=lambda s, t: s >= t),
                       on_epoch=on_epoch)
        check()
        target = self.models.trained_dir / job.model
        out.rename(target)  # same file system (both under STATE): atomic; fails if the name appeared meanwhile
        self.models.add_trained(job.model, target)
        detail = {**(self.store.get(job_id).detail or {}), "shipped": result.best,
                  "metrics": (result.metrics or {}).get("mean")}
        done = self.store.update(job_id, running, state="done", progress=1.0, finished=time.time(), detail=detail)
        if done is not None:
            log.info("train job %s done in %.1f s: model %r", job_id, done.finished - done.created, job.model)


def _epoch(record: dict[str, Any]) -> dict[str, Any]:
    """A history entry as the job shows it: 0-based epoch, mean loss, validation means per net."""
    return {"epoch": record["epoch"], "loss": round(float(record["loss"]), 6),
            "validation": record.get("validation") or {}}
