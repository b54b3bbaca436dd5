"""``wsi-weakseg evaluate``: score predictions (files, folders or a model run) against ground truth."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .cli import _positive_float

#: Table columns: (report key, header, kind) with kind "n" for counts and "f" for metrics.
_COLUMNS = (
    ("n_gt", "n_gt", "n"),
    ("n_pred", "n_pred", "n"),
    ("pixel_accuracy", "pix_acc", "f"),
    ("pixel_f1", "pix_F1", "f"),
    ("pixel_iou", "IoU", "f"),
    ("object_dice", "obj_Dice", "f"),
    ("mdice", "mDice", "f"),
    ("aji", "AJI", "f"),
    ("pq", "PQ", "f"),
    ("precision", "det_P", "f"),
    ("recall", "det_R", "f"),
    ("f1", "det_F1", "f"),
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predictions against ground-truth label maps or point files",
        description="Score nucleus predictions against ground truth: pixel accuracy, F1 and IoU, object Dice (GlaS), "
        "mean object Dice (mDice, Nishimura), "
        "AJI (Kumar), PQ (IoU > 0.5) and detection precision/recall/F1 (centroids matched one-to-one within a "
        "radius). PRED and GT are two files or two folders (paired by file name without .geojson[.gz], .png, "
        ".tif[f], .npy). Predictions: label maps or GeoJSON detections (e.g. `segment` output); ground truth: "
        "instance label maps (all metrics) or QuPath point exports (detection metrics only). Or run a model on a "
        "data spec's split with --spec. Scores are on the ground truth's pixel grid; means are per image.",
    )
    p.add_argument("pred", nargs="?", metavar="PRED", help="prediction file or folder (file mode)")
    p.add_argument("gt", nargs="?", metavar="GT", help="ground-truth file or folder (file mode)")
    p.add_argument("--mpp", type=_positive_float,
                   help="µm per ground-truth pixel, for the radius in µm (needed when GT files carry none, e.g. "
                   "MoNuSeg PNGs: 0.25); overrides their metadata")
    radius = p.add_mutually_exclusive_group()
    radius.add_argument("--radius-um", type=_positive_float,
                        help="detection matching radius in µm (default 3, i.e. 6 px at 20x)")
    radius.add_argument("--radius-px", type=_positive_float,
                        help="detection matching radius in ground-truth pixels instead (no --mpp needed)")
    p.add_argument("--point-class", action="append", metavar="NAME",
                   help="keep only ground-truth points of this class (repeatable; default all classes, merged "
                   "within 1 px). E.g. Nucleus for CRCHistoPhenotypes, whose class subsets repeat the clicks")
    p.add_argument("--spec", help="model mode: data spec YAML whose split is predicted and scored")
    p.add_argument("--model", help="model mode: packaged model name or model folder (default: the packaged default)")
    p.add_argument("--split", choices=("train", "validation", "test"),
                   help="model mode: spec split to evaluate (default validation)")
    p.add_argument("--device", help="model mode: auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--overlays", metavar="DIR",
                   help="write DIR/<image>.overlay.png per image with label maps on both sides: matches (IoU > 0.5), "
                   "false positives, misses and merges outlined in colour-blind-safe colours with a legend; over "
                   "the image in model mode, over a grey stand-in (ground-truth nuclei darker) in file mode")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .evaluate.run import DEFAULT_RADIUS_UM, evaluate_files, evaluate_model

    radius_um = args.radius_um or DEFAULT_RADIUS_UM
    if args.spec:
        given = [name for name, v in (("PRED", args.pred), ("--mpp", args.mpp), ("--point-class", args.point_class))
                 if v]
        if given:
            raise ConfigError(f"with --spec, give no {', '.join(given)}: the spec names the images, ground truth, "
                              "pixel sizes and point classes")
        report = evaluate_model(args.spec, model=args.model, split=args.split or "validation",
                                device=args.device or "auto", radius_um=radius_um, radius_px=args.radius_px,
                                overlays=args.overlays)
    else:
        given = [name for name, v in (("--model", args.model), ("--split", args.split), ("--device", args.device))
                 if v]
        if given:
            raise ConfigError(f"{', '.join(given)} apply only with --spec (model mode); to score a model's saved "
                              "output, pass its `segment` GeoJSON as PRED")
        if not args.pred or not args.gt:
            raise ConfigError("give PRED and GT (files or folders), or --spec SPEC to run a model")
        report = evaluate_files(args.pred, args.gt, mpp=args.mpp, radius_um=radius_um, radius_px=args.radius_px,
                                point_classes=args.point_class, overlays=args.overlays)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_table(report))
    return 0


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    return str(int(value)) if kind == "n" else f"{value:.4f}"


def format_table(report: dict[str, Any]) -> str:
    """The report of :func:`~wsi_weakseg.evaluate.run.evaluate_files` as a text table with notes."""
    images, mean, pooled = report["images"], report["mean"], report["pooled"]
    body = [[r["name"], r["gt_kind"], *(_cell(r[k], kind) for k, _, kind in _COLUMNS)] for r in images]
    n_masks = sum(r["aji"] is not None for r in images)
    body.append(["mean", "", "", "", *(_cell(mean[k], kind) for k, _, kind in _COLUMNS[2:])])
    body.append(["pooled", "", str(pooled["n_gt"]), str(pooled["n_pred"]), *([""] * (len(_COLUMNS) - 5)),
                 *(_cell(pooled[k], "f") for k in ("precision", "recall", "f1"))])
    header = ["image", "gt", *(h for _, h, _ in _COLUMNS)]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in body[:-2]),
           "  ".join("-" * w for w in widths), *(line(r) for r in body[-2:])]
    px = sorted({round(r["radius_px"], 4) for r in images})
    if report.get("radius_um") is not None:
        radius = f"{report['radius_um']:g} µm" + (f" ({px[0]:g} px)" if len(px) == 1 else "")
    else:
        radius = f"{report['radius_px']:g} px"
    notes = [
        f"detection: centroids matched one-to-one within {radius}; PQ at IoU > 0.5; AJI as Kumar et al.",
        f"mean: per-image mean over {len(images)} image(s) (mask metrics over the {n_masks} with label maps); "
        f"pooled: detection counts summed over images (tp {pooled['tp']}, fp {pooled['fp']}, fn {pooled['fn']})",
    ]
    if report.get("mode") == "model":
        notes.insert(0, f"model {report['model']} on split {report['split']} of {report['spec']}")
    return "\n".join(out + [""] + notes)
