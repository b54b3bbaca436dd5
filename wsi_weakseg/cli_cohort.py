"""``wsi-weakseg cohort``: segment a folder or manifest of slides on a Dask cluster, resumably."""

from __future__ import annotations

import argparse
import sys


def _resource(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        amount = float(value)
    except ValueError:
        amount = -1.0
    if not sep or not name or not amount > 0:
        raise argparse.ArgumentTypeError(f"expected NAME=AMOUNT (e.g. GPU=1), got {text!r}")
    return name, amount


def add_parser(sub) -> None:
    from .cli import _add_run_flags

    p = sub.add_parser(
        "cohort",
        help="segment many slides on a Dask cluster (resumable, failure-isolated)",
        description="Segment every slide of a folder (searched recursively) or manifest CSV (columns: path, "
        "optional mpp and slide_id) into OUT/<slide id>/, one Dask task per slide, on a LocalCluster or an existing "
        "scheduler. Finished slides are skipped when rerun; each attempt is a row of OUT/cohort.jsonl. "
        "Exit code 0 when every slide is done, 1 when any failed.",
    )
    p.add_argument("input", help="folder of slides, or manifest .csv/.tsv")
    p.add_argument("-o", "--output", required=True, help="cohort output folder (shared by all workers)")
    p.add_argument("--pattern", action="append", metavar="GLOB",
                   help="slide file pattern in a folder, repeatable (default: *.svs *.tif *.tiff *.ndpi *.mrxs ...)")
    p.add_argument("--scheduler-address", metavar="tcp://HOST:PORT", help="use this running Dask scheduler")
    p.add_argument("--scheduler-file", metavar="JSON", help="use the scheduler named in this file (dask-jobqueue, SLURM)")
    p.add_argument("--n-workers", type=int, help="LocalCluster worker processes (default: sized to cores and memory)")
    p.add_argument("--torch-threads", type=int, help="torch threads per slide task (default: cores / task slots)")
    p.add_argument("--retries", type=int, default=1, help="extra attempts after a transient failure (default 1)")
    p.add_argument("--overwrite", action="store_true", help="recompute slides that are already done")
    p.add_argument("--max-in-flight", type=int, help="slides submitted at once (default: 2 x task slots)")
    p.add_argument("--resource", action="append", type=_resource, metavar="NAME=N",
                   help="resource each slide task needs, e.g. GPU=1 for workers started with --resources GPU=1")
    _add_run_flags(p, roi=False)


def run(args: argparse.Namespace) -> int:
    import importlib
    import logging
    from pathlib import Path

    from .cli import _options
    from .cohort import CohortOptions, find_slides, run_cohort
    from .model.card import DEFAULT_MODEL

    if args.verbose < 2:  # dask's own INFO lines (workers starting, clients connecting) only with -vv
        importlib.import_module("distributed")  # configures its loggers, which are then quietened

        for name in list(logging.root.manager.loggerDict):
            if name == "distributed" or name.startswith("distributed."):
                logging.getLogger(name).setLevel(logging.WARNING)
    jobs = find_slides(args.input, args.pattern, exclude=Path(args.output))
    cohort = CohortOptions(
        scheduler_address=args.scheduler_address, scheduler_file=args.scheduler_file, n_workers=args.n_workers,
        torch_threads=args.torch_threads, retries=args.retries, overwrite=args.overwrite,
        max_in_flight=args.max_in_flight, resources=dict(args.resource) if args.resource else None,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    summary = run_cohort(jobs, args.output, args.model or DEFAULT_MODEL, _options(args), cohort)
    print(summary.table())
    return summary.exit_code
