"""The HTTP API of ``wsi-weakseg serve`` (FastAPI): health, models, slides, segment and train jobs.

Every route but ``GET /health`` needs ``Authorization: Bearer <token>`` (401). Request bodies are JSON of at
most ``max_body`` bytes (413, checked on ``Content-Length`` and again while streaming, so a chunked body
cannot pass it). Every error is a JSON body ``{"error": <type>, "message": <what to do>}``; typed errors of
:mod:`wsi_weakseg.errors` keep their message and map to a status (:data:`STATUS`).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import SlideNotFoundError, UserInputError, WsiWeaksegError
from .auth import token_matches
from .jobs import (
    FINISHED,
    RESULT_DIR,
    Job,
    JobNotFoundError,
    JobRunner,
    JobStore,
    QueueFullError,
    new_id,
)
from .models import ModelNameTakenError, ModelRegistry
from .paths import PathOutsideRootsError, Roots
from .roi import write_roi
from .training import TrainRunner, hide_paths, prepare_training

log = logging.getLogger(__name__)

#: HTTP status of each typed error (most specific first); other UserInputErrors are 400, the rest 500.
STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (PathOutsideRootsError, 403), (SlideNotFoundError, 404), (JobNotFoundError, 404), (QueueFullError, 429),
    (ModelNameTakenError, 409), (UserInputError, 400),
)


class ApiError(WsiWeaksegError):
    """An error with its own HTTP status (body too large, malformed JSON, job not finished ...)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


@dataclass
class ServeConfig:
    """What the app serves: roots, token, state, job runner, limits."""

    roots: Roots
    token: str
    store: JobStore
    runner: JobRunner
    models: ModelRegistry
    trainer: TrainRunner | None = None  # None: POST /v1/train answers 404
    device: str = "auto"
    max_body: int = 4 * 2**20
    scheduler: str = "LocalCluster"
    _info_cache: dict[tuple[str, int, int], dict[str, Any]] = field(default_factory=dict)


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "message": message}, status_code=status, headers=headers)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object; 413 beyond ``limit`` bytes, 400 when it is not a JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "BodyTooLarge", f"request bodies are at most {limit} bytes; send a smaller ROI "
                       "(simplify the annotation) or start the server with a larger --max-body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "BodyTooLarge", f"request bodies are at most {limit} bytes; send a smaller ROI")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "MalformedJSON", f"the request body is not valid JSON ({exc}); send a JSON object "
                       "with Content-Type: application/json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "MalformedJSON", "the request body must be a JSON object, e.g. {\"slide\": ..., \"roi\": ...}")
    return body


def create_app(cfg: ServeConfig) -> FastAPI:
    """The FastAPI application serving ``cfg``: error handlers, then the routes (all but /health guarded)."""
    app = FastAPI(title="wsi-weakseg", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    guarded = [Depends(_auth_dependency(cfg))]
    for router in (_catalogue_routes(cfg), _submit_routes(cfg), _job_routes(cfg)):
        app.include_router(router, dependencies=guarded)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error becomes ``{"error", "message"}`` JSON; typed errors map to their status (:data:`STATUS`)."""

    @app.exception_handler(WsiWeaksegError)
    async def _typed(request: Request, exc: WsiWeaksegError) -> JSONResponse:
        if isinstance(exc, ApiError):
            return _error(exc.status, exc.kind, str(exc))
        status = next((s for t, s in STATUS if isinstance(exc, t)), 500)
        headers = {"Retry-After": "5"} if status == 429 else None
        return _error(status, type(exc).__name__, str(exc), headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        hint = {404: "no such endpoint; see GET /health and the README's serve section",
                405: "this endpoint does not take that method"}.get(exc.status_code, str(exc.detail))
        return _error(exc.status_code, "HTTPError", f"{exc.detail}: {hint}")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "BadRequest", f"invalid request: {exc.errors()}")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, type(exc).__name__, f"unexpected {type(exc).__name__}: {exc}; see the server log and report it")


def _auth_dependency(cfg: ServeConfig):
    """A dependency that answers 401 unless the request carries the server's bearer token."""

    def auth(request: Request) -> None:
        if not token_matches(request.headers.get("authorization"), cfg.token):
            raise ApiError(401, "Unauthorized", "send the server's token as 'Authorization: Bearer <token>' "
                           "(from --token-file, WSI_WEAKSEG_TOKEN, or printed when the server started)")

    return auth


def _catalogue_routes(cfg: ServeConfig) -> APIRouter:
    """``GET /v1/models`` and ``GET /v1/slides``: what a client may ask for."""
    router = APIRouter()

    @router.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"models": cfg.models.describe(), "default": cfg.models.default}

    @router.get("/v1/slides")
    def slides() -> dict[str, Any]:
        return {"slides": [_slide_entry(cfg, name, path) for name, path in cfg.roots.list()]}

    return router


def _submit_routes(cfg: ServeConfig) -> APIRouter:
    """``POST /v1/segment`` and ``POST /v1/train``: validate the body now (400 / 403 / 404), queue the job (202)."""
    router = APIRouter()

    @router.post("/v1/segment", status_code=202)
    async def segment(request: Request) -> JSONResponse:
        job = _segment_job(cfg, await read_json(request, cfg.max_body))
        log.info("job %s queued: %s (%s)", job.id, job.slide, job.model)
        return _accepted(job, {})

    @router.post("/v1/train", status_code=202)
    async def train(request: Request) -> JSONResponse:
        body = await read_json(request, cfg.max_body)
        if cfg.trainer is None:
            raise ApiError(404, "HTTPError", "this server does not train models")
        job = _train_job(cfg, body)
        log.info("train job %s queued: model %r, %d epochs", job.id, job.model, job.detail["epochs"])
        return _accepted(job, {"model": job.model})

    return router


def _accepted(job: Job, extra: dict[str, Any]) -> JSONResponse:
    return JSONResponse({"job": job.id, "state": job.state, **extra}, status_code=202,
                        headers={"Location": f"/v1/jobs/{job.id}"})


def _segment_job(cfg: ServeConfig, body: dict[str, Any]) -> Job:
    """Check a segment request, write its ROI into the job folder and submit the job (no folder on failure)."""
    unknown = sorted(set(body) - {"slide", "roi", "model", "mpp"})
    if unknown:
        raise ApiError(400, "BadRequest", f"unknown fields {unknown}; a segment request has slide, roi, model, mpp")
    path = cfg.roots.resolve(body.get("slide"))
    model = body.get("model") or cfg.models.default
    cfg.models.ref(model)  # unknown model: 400 now, not a failed job later
    mpp = body.get("mpp")
    if mpp is not None and not (isinstance(mpp, (int, float)) and not isinstance(mpp, bool) and 0 < mpp < 1e3):
        raise ApiError(400, "BadRequest", f"'mpp' must be a positive number of µm per pixel, got {mpp!r}")
    if "roi" not in body:
        raise ApiError(400, "BadRequest", "a segment request needs 'roi': a GeoJSON Polygon or [x, y, w, h]")
    job = Job(id=new_id(), slide=body["slide"], slide_path=str(path), model=model,
              mpp=None if mpp is None else float(mpp))
    folder = cfg.store.folder(job.id)
    folder.mkdir(parents=True)
    try:
        write_roi(body["roi"], folder / "roi.geojson")
        cfg.runner.submit(job)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return job


def _train_job(cfg: ServeConfig, body: dict[str, Any]) -> Job:
    """Check a train request (config + spec confined to the roots), claim the model name, submit the job."""
    try:
        config, spec = prepare_training(body, cfg.roots, cfg.device)
    except UserInputError as exc:  # the spec's files are named relative to their root, never by server path
        raise type(exc)(hide_paths(str(exc), cfg.roots.paths)) from None
    name = cfg.models.claim(body.get("name"))  # 400 / 409
    job = Job(id=new_id(), model=name, kind="train",
              detail={"epochs": int(config["optim"]["epochs"]), "epochs_done": 0, "history": []})
    try:
        cfg.trainer.submit(job, config, spec)
    except BaseException:
        cfg.models.release(name)
        raise
    return job


def _job_routes(cfg: ServeConfig) -> APIRouter:
    """List, inspect, cancel jobs and fetch a segment job's GeoJSON."""
    router = APIRouter()

    @router.get("/v1/jobs")
    def jobs() -> dict[str, Any]:
        return {"jobs": [j.public() for j in sorted(cfg.store.all(), key=lambda j: j.created)]}

    @router.get("/v1/jobs/{job_id}")
    def job_status(job_id: str) -> dict[str, Any]:
        return cfg.store.get(job_id).public()

    @router.delete("/v1/jobs/{job_id}")
    def job_cancel(job_id: str) -> dict[str, Any]:
        return cfg.runner.cancel(job_id).public()

    @router.get("/v1/jobs/{job_id}/result")
    def job_result(job_id: str) -> FileResponse:
        return _result_file(cfg, job_id)

    return router


def _result_file(cfg: ServeConfig, job_id: str) -> FileResponse:
    """A done segment job's GeoJSON; 409 with what to do for train jobs and unfinished or failed ones."""
    job = cfg.store.get(job_id)
    if job.kind == "train":
        raise ApiError(409, "NoResultFile", f"a train job has no result file; once done, its model {job.model!r} "
                       "is listed by GET /v1/models and a segment request may name it")
    if job.state != "done":
        what = (f"the job {job.state}: {job.error['type']}: {job.error['message']}" if job.error
                else f"the job is {job.state}")
        todo = "submit a new job" if job.state in FINISHED else f"poll GET /v1/jobs/{job_id} until its state is done"
        raise ApiError(409, "JobNotDone", f"{what}; {todo}")
    path = cfg.store.folder(job_id) / RESULT_DIR / str(job.result)
    return FileResponse(path, media_type="application/geo+json", filename=path.name)


def _slide_entry(cfg: ServeConfig, name: str, path: Path) -> dict[str, Any]:
    """``info``'s fields for one slide (cached per file size and mtime), or its error; the server path hidden."""
    from ..slide import open_slide, slide_info

    try:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in cfg._info_cache:
            with open_slide(path) as slide:
                cfg._info_cache[key] = slide_info(slide)
        info = dict(cfg._info_cache[key])
    except (WsiWeaksegError, OSError) as exc:
        return {"slide": name, "error": type(exc).__name__, "message": str(exc)}
    info.pop("path", None)
    return {"slide": name, **info}
