"""``wsi-weakseg serve``: segment regions of slides over a local HTTP API (for QuPath), jobs on Dask."""

from __future__ import annotations

import argparse
import os


def _default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "wsi-weakseg", "serve")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP service: segment a region of a slide under --root, poll the job, fetch QuPath GeoJSON",
        description="Serve segment jobs over HTTP (JSON). Slides are named relative to a --root; nothing outside "
        "the roots is read. Every endpoint but GET /health needs 'Authorization: Bearer <token>'. Jobs run as "
        "cohort tasks on a Dask LocalCluster (or --scheduler-address); finished jobs survive a restart (--state-dir).",
    )
    p.add_argument("--root", action="append", required=True, metavar="DIR", help="folder of slides, repeatable")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--token-file", help="file whose first line is the bearer token (default: $WSI_WEAKSEG_TOKEN, "
                   "else a random token printed at start); required beyond loopback")
    p.add_argument("--state-dir", default=None, help=f"jobs and results (default {_default_state_dir()})")
    p.add_argument("--scheduler-address", metavar="tcp://HOST:PORT", help="run jobs on this Dask scheduler")
    p.add_argument("--n-workers", type=int, default=1, help="LocalCluster worker processes (default 1)")
    p.add_argument("--in-process", action="store_true", help="run jobs in server threads instead of on Dask")
    p.add_argument("--max-queued", type=int, default=16, help="jobs waiting before new ones are refused (default 16)")
    p.add_argument("--max-body", type=int, default=4 * 2**20, help="largest request body in bytes (default 4 MiB)")
    p.add_argument("--model", default=None, help="model used when a request names none (default: the packaged default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--tile-size", type=int, default=None, help="tile core size of every job, a multiple of 32 "
                   "(default: the model card's)")
    p.add_argument("--max-train-queued", type=int, default=4, help="train jobs waiting before new ones are refused (default 4)")
    p.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass (default 8)")
    p.add_argument("--num-workers", type=int, default=2, help="reader / post-processing threads per job (default 2)")


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    import socket
    from pathlib import Path

    import uvicorn

    from .engine.segment import SegmentOptions
    from .errors import ConfigError
    from .model.card import DEFAULT_MODEL
    from .serve.app import ServeConfig, create_app
    from .serve.auth import check_bind, load_token
    from .serve.jobs import JobRunner, JobStore
    from .serve.models import ModelRegistry
    from .serve.paths import Roots
    from .serve.training import TrainRunner

    log = logging.getLogger("wsi_weakseg.serve")
    check_bind(args.host, args.token_file)
    roots = Roots(args.root)
    token, generated = load_token(args.token_file)
    if args.max_queued < 1 or args.max_train_queued < 1 or args.max_body < 1024:
        raise ConfigError("--max-queued and --max-train-queued must be >= 1, --max-body >= 1024")
    state = Path(args.state_dir or _default_state_dir())
    try:
        store = JobStore(state)
    except OSError as exc:
        raise ConfigError(f"cannot use --state-dir {state}: {exc.strerror or exc}; choose a writable folder") from None
    models = ModelRegistry(args.model or DEFAULT_MODEL, state.resolve() / "models")
    models.ref(models.default)
    options = SegmentOptions(tile_size=args.tile_size, batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                             preview=False, progress=False)
    options.validate(32)
    try:
        sock = socket.create_server((args.host, args.port), family=socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; choose another --port") from None
    # accepted sockets inherit it: without it a keep-alive response's body waits ~40 ms for the delayed ACK of
    # its headers (Nagle), which capped /health at ~22 requests/s per client
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cluster = client = None
    slots, threads, scheduler = 1, None, "in-process"
    if not args.in_process:
        cluster, client, slots, threads, scheduler = _dask(args)
    runner = JobRunner(store, client, options, models.ref, slots=slots, max_queued=args.max_queued,
                       torch_threads=threads)
    trainer = TrainRunner(store, models, max_queued=args.max_train_queued, private=[*roots.paths, state.resolve()])
    app = create_app(ServeConfig(roots=roots, token=token, store=store, runner=runner, models=models,
                                 trainer=trainer, device=args.device, max_body=args.max_body, scheduler=scheduler))
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    line = {"url": f"http://{host}:{port}", "state_dir": str(state), "scheduler": scheduler}
    if generated:
        line["token"] = token  # the only place it is shown
    print(json.dumps(line), flush=True)
    log.info("serving %s on %s (jobs: %s)", ", ".join(map(str, roots.paths)), line["url"], scheduler)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        runner.close()
        trainer.close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return 0


def _dask(args: argparse.Namespace):
    """``(cluster, client, task slots, torch threads, description)`` for the jobs."""
    import logging

    from distributed import Client, LocalCluster

    from .cohort.runner import _host_slots, local_cluster_size
    from .errors import ConfigError

    for name in list(logging.root.manager.loggerDict):
        if (name == "distributed" or name.startswith("distributed.")) and args.verbose < 2:
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.scheduler_address:
        try:
            client = Client(args.scheduler_address, timeout="30s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {args.scheduler_address}: {exc}; start it "
                              "(dask scheduler) or fix the address") from None
        slots = sum(w["nthreads"] for w in client.scheduler_info(n_workers=-1)["workers"].values())
        return None, client, max(1, slots), _host_slots(client), args.scheduler_address
    if args.n_workers < 1:
        raise ConfigError(f"--n-workers must be >= 1, got {args.n_workers}")
    n, threads, _ = local_cluster_size(args.n_workers, "cpu")
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    return cluster, Client(cluster), n, threads, f"LocalCluster({n} workers)"
