"""A markdown table of finished training runs' validation metrics, one row per model folder.

Each folder is a ``train --out`` folder with a ``card.json`` (written last, so only finished runs have one). A row
holds the recipe, the shipped epoch and net, the tuned thresholds, the card's validation means (the shipped net
with the shipped thresholds) and the run's wall time. Used for the recipe evaluations in ``docs/training.md``
(scribbles amounts beside points, few-masks beside SupOnly), so the table there is what the cards say.

Usage::

    python scripts/compare_runs.py runs/s2l/r2/scribbles-10 runs/s2l/r2/points [--metrics pixel_iou mdice aji]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("compare_runs")

METRICS = ("pixel_iou", "mdice", "aji", "object_dice", "pq", "pixel_f1", "f1")


def run_row(folder: Path, metrics: tuple[str, ...] = METRICS) -> dict:
    """What one finished run's card says: name, recipe, shipped epoch/net, thresholds, metrics, minutes.

    Raises
    ------
    FileNotFoundError
        ``folder`` holds no ``card.json`` (the run has not finished, or it is not a ``train`` output).
    """
    card_path = folder / "card.json"
    if not card_path.is_file():
        raise FileNotFoundError(f"{folder}: no card.json; the run has not finished or is not a `train --out` folder")
    card = json.loads(card_path.read_text())
    training = card.get("training", {})
    shipped = training.get("shipped") or {}
    mean = (card.get("metrics") or {}).get("mean", {})
    th = card.get("thresholds", {})
    return {
        "run": folder.name, "recipe": training.get("recipe", "?"),
        "epochs": (training.get("config") or {}).get("optim", {}).get("epochs"),
        "shipped": f"{shipped.get('net', '?')}@{shipped.get('epoch', '?')}",
        "thresholds": f"{th.get('foreground', '?')}/{th.get('centre', '?')}",
        "minutes": f"{float(training.get('wall_s', 0.0)) / 60:.1f}",
        **{m: mean.get(m) for m in metrics},
    }


def markdown(rows: list[dict], metrics: tuple[str, ...] = METRICS) -> str:
    """The rows as a markdown table, metrics to 3 decimals ('–' where a card lacks one)."""
    cols = ["run", "recipe", "epochs", "shipped", "thresholds", *metrics, "minutes"]
    fmt = lambda v: "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="train --out folders")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), help="card metric keys, in column order")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics = tuple(args.metrics)
    try:
        rows = [run_row(folder, metrics) for folder in args.runs]
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    sys.stdout.write(markdown(rows, metrics) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
