"""Command-line interface: ``wsi-weakseg segment|info|demo|models|train|evaluate|labels|cohort|serve``.

Thin: parse flags, call the library, map errors to exit codes (0 ok, 1 processing failure,
2 bad input or usage) with a one-line message and no traceback for user errors.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import traceback
from pathlib import Path

from . import __version__
from .errors import OutputError, WsiWeaksegError

log = logging.getLogger("wsi_weakseg")

#: Commands living in their own modules: each defines ``add_parser(subparsers)`` (importing only the standard
#: library at module level, so ``--help`` stays fast) and ``run(args) -> int``.
COMMAND_MODULES = {"train": "cli_train", "evaluate": "cli_evaluate", "labels": "cli_labels", "cohort": "cli_cohort",
                   "serve": "cli_serve"}


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def _add_run_flags(p: argparse.ArgumentParser, roi: bool = True) -> None:
    p.add_argument("--model", default=None, help="packaged model name or model folder (default: the packaged default)")
    p.add_argument("--mpp", type=_positive_float, help="slide pixel size in µm/px; overrides metadata")
    p.add_argument("--tile-size", type=int, help="tile core in working pixels, multiple of 32 (default: model card)")
    p.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass (default 8)")
    p.add_argument("--num-workers", type=int, default=2, help="reader / post-processing threads (default 2)")
    p.add_argument("--block-size", type=int, default=1024, help="merge block in working pixels (default 1024)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    if roi:
        p.add_argument("--roi", help="QuPath GeoJSON whose polygon annotations restrict the work")
    p.add_argument("--outlines", default=None, metavar="smooth|pixel",
                   help="nucleus outlines in the GeoJSON: pixel (default: exact pixel edges) or smooth (through "
                        "the pixel edges' midpoints, simplified within 0.5 px: ~1/3 of the vertices, ~1.5x smaller files)")
    p.add_argument("--compress", action="store_true", help="write .geojson.gz")
    p.add_argument("--no-preview", action="store_true",
                   help="skip <stem>.preview.png (thumbnail, tissue outline, and the nuclei/mm² heat map or, for "
                        "a regions model, the region outlines)")
    p.add_argument("--overlays", type=int, default=0, metavar="N",
                   help="also write N full-resolution crops with nucleus outlines (dense, median, sparse areas); "
                        "for a regions model, crops at its resolution around the region outlines")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsi-weakseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"wsi-weakseg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging: -v info, -vv debug")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment nuclei of a slide: QuPath GeoJSON + OME-Zarr maps")
    seg.add_argument("slide", help="whole-slide image or plain image")
    seg.add_argument("-o", "--output", default="wsi-weakseg-output", help="output folder (default ./wsi-weakseg-output)")
    seg.add_argument(
        "--tissue", default="auto", metavar="auto|all|FILE",
        help="where tiles run: auto (default: the whole image for plain images, the tissue mask for slides), "
             "all (everything), or a QuPath GeoJSON of tissue annotations",
    )
    seg.add_argument("--regions", metavar="FILE",
                     help="QuPath GeoJSON of classified region annotations (e.g. a regions model's output): each "
                          "nucleus gets a 'Region: <class>' measurement and run.json nuclei per mm² per class")
    _add_run_flags(seg)

    info = sub.add_parser("info", help="slide metadata: vendor, levels, mpp, objective, bounds, tissue fraction")
    info.add_argument("slide")
    info.add_argument("--mpp", type=_positive_float, help="pixel size in µm/px when the slide has none")
    info.add_argument("--json", action="store_true", help="machine-readable output")

    demo = sub.add_parser("demo", help="write a small synthetic slide and segment it (no download needed)")
    demo.add_argument("-o", "--output", default="wsi-weakseg-demo", help="output folder (default ./wsi-weakseg-demo)")
    _add_run_flags(demo)

    sub.add_parser("models", help="list packaged models")
    for module in COMMAND_MODULES.values():
        importlib.import_module(f".{module}", __package__).add_parser(sub)
    return parser


def _options(args: argparse.Namespace):
    from .engine.segment import SegmentOptions

    return SegmentOptions(
        tile_size=args.tile_size, batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
        block_size=args.block_size, mpp=args.mpp, roi=getattr(args, "roi", None),
        tissue=getattr(args, "tissue", "auto"), regions=getattr(args, "regions", None), compress=args.compress,
        progress=not args.no_progress and sys.stderr.isatty(), preview=not args.no_preview, overlays=args.overlays,
        **({} if args.outlines is None else {"outlines": args.outlines}),
    )


def _cmd_segment(args: argparse.Namespace) -> int:
    from .engine.segment import segment
    from .model.card import DEFAULT_MODEL

    res = segment(args.slide, args.output, args.model or DEFAULT_MODEL, _options(args))
    log.info("%d nuclei, %d regions -> %s", res.n_nuclei, res.n_regions, res.geojson)
    print(json.dumps({"nuclei": res.n_nuclei, "regions": res.n_regions, "geojson": str(res.geojson), "zarr": str(res.zarr), "run": str(res.run_json),
                      "pictures": [str(p) for p in res.pictures]}))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import write_demo_slide
    from .engine.outputs import missing_folders, remove_empty
    from .engine.segment import segment
    from .model.card import DEFAULT_MODEL

    out = Path(args.output)
    slide_path = out / "demo-slide.tiff"  # kept beside the GeoJSON: open it in QuPath, drop the GeoJSON on it
    created = missing_folders(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        slide, n_drawn = write_demo_slide(slide_path)
    except OSError as exc:
        remove_empty(created)
        raise OutputError(f"cannot write the demo slide into {out}: {exc.strerror or exc}; choose another -o") from None
    log.info("wrote a synthetic %d-nucleus slide to %s; segmenting it", n_drawn, slide)
    try:
        res = segment(slide, out, args.model or DEFAULT_MODEL, _options(args))
    except BaseException:
        slide.unlink(missing_ok=True)  # nothing left behind by a failed demo
        remove_empty(created)
        raise
    preview = next((str(p) for p in res.pictures if p.name.endswith(".preview.png")), None)
    print(json.dumps({"nuclei_drawn": n_drawn, "nuclei_found": res.n_nuclei, "slide": str(slide),
                      "geojson": str(res.geojson), "preview": preview, "zarr": str(res.zarr), "run": str(res.run_json),
                      "pictures": [str(p) for p in res.pictures]}))
    log.info("open %s in QuPath (File > Open), then drag %s onto it; preview: %s", slide, res.geojson.name, preview)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .slide import open_slide, slide_info

    with open_slide(args.slide, mpp=args.mpp) as slide:
        info = slide_info(slide)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            if k == "levels":
                for i, lv in enumerate(v):
                    print(f"level {i}: {lv['width']} x {lv['height']}  downsample {lv['downsample']:g}  {lv['mpp']:.4f} µm/px")
            else:
                print(f"{k}: {v}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .model.card import DEFAULT_MODEL, available_models, load_model

    for name in available_models():
        card = load_model(name).card
        tag = " (default)" if name == DEFAULT_MODEL else ""
        state = "trained" if card.trained else "UNTRAINED"
        print(f"{name}{tag}: {card.architecture}, {card.mpp} µm/px, {state}. {card.description}")
        if card.license:
            print(f"    licence: {card.license}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wsi-weakseg`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    handlers = {"segment": _cmd_segment, "demo": _cmd_demo, "info": _cmd_info, "models": _cmd_models}
    if args.command in COMMAND_MODULES:
        handler = importlib.import_module(f".{COMMAND_MODULES[args.command]}", __package__).run
    else:
        handler = handlers[args.command]
    # Errors are printed, not logged: the message must reach stderr even when logging is configured elsewhere.
    try:
        return handler(args)
    except WsiWeaksegError as exc:
        print(f"wsi-weakseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("wsi-weakseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug or an environment failure: exit 1, traceback only with -v
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
        print(f"wsi-weakseg: error: unexpected {type(exc).__name__}: {exc}; rerun with -v for the traceback "
              "and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
