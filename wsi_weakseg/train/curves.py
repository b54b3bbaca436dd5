"""Training curves: ``<out>/training/curves.png``, redrawn after every epoch from the run's history.

Left panel: the loss per epoch (the total in black, each loss term of :meth:`PointsRecipe.step` in its own
Okabe-Ito colour, net ``a`` solid and net ``b`` dashed), on a log axis when the values span more than a decade.
Right panel: the validation metrics per epoch (colour per metric, line style per net). The shipped epoch (the
best validation value so far, as :func:`~wsi_weakseg.train.trainer.train` chooses it) is marked by a dotted
vertical line in both panels and a star on the metric that chose it. Epochs are numbered from 0, as in the
card's ``training.history`` and ``training.shipped``.

Drawing never stops training: :func:`write_curves` logs a warning and returns ``None`` on any failure
(for example matplotlib missing on a lean GPU machine).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..viz import OKABE_ITO, save_figure

log = logging.getLogger(__name__)

CURVES = "curves.png"
FIGSIZE = (11.0, 4.2)  # inches
DPI = 100
#: Category colours in drawing order (yellow last: weakest contrast on white; black kept for the total loss).
COLOURS = tuple(OKABE_ITO[k] for k in ("blue", "vermillion", "green", "purple", "orange", "sky", "yellow"))
#: Validation metrics in the order they are drawn (the card's ``metrics.mean`` keys).
METRICS = ("aji", "f1", "pq", "object_dice", "pixel_f1", "precision", "recall")
NET_STYLE = {"a": "-", "b": "--", "student": "-", "teacher": "--"}  # points nets; few-masks student, teacher
#: Markers per pass through ``COLOURS``: metrics beyond the seventh keep a colour but change marker.
MARKERS = (".", "x", "^", "s")


def _rgb(c: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(v / 255 for v in c)


def _series(history: Sequence[Mapping], get) -> np.ndarray:
    """One value per epoch (NaN where absent)."""
    out = []
    for rec in history:
        v = get(rec)
        out.append(float(v) if v is not None else math.nan)
    return np.asarray(out, np.float64)


def loss_series(history: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """``{"loss": total, "<net>/<term>": ...}`` per epoch, in drawing order."""
    series = {"loss": _series(history, lambda r: r.get("loss"))}
    names = []
    for rec in history:
        names += [k for k in rec.get("terms", {}) if k not in names]
    for k in sorted(names, key=lambda n: (n.split("/")[-1], n)):
        series[k] = _series(history, lambda r, k=k: r.get("terms", {}).get(k))
    return series


def metric_series(history: Sequence[Mapping]) -> dict[tuple[str, str], np.ndarray]:
    """``{(net, metric): values per epoch}`` for every net and metric the history's validation holds."""
    nets = sorted({n for rec in history for n in (rec.get("validation") or {})})
    present = {m for rec in history for v in (rec.get("validation") or {}).values() for m in v}
    metrics = [m for m in METRICS if m in present] + sorted(present - set(METRICS))
    return {(n, m): _series(history, lambda r, n=n, m=m: (r.get("validation") or {}).get(n, {}).get(m))
            for m in metrics for n in nets}


def _log_useful(values: Sequence[np.ndarray]) -> bool:
    v = np.concatenate([np.asarray(a) for a in values]) if values else np.empty(0)
    v = v[np.isfinite(v)]
    return bool(v.size) and bool(np.all(v > 0)) and v.max() / v.min() > 10.0


def _draw_losses(ax, epochs: np.ndarray, history: Sequence[Mapping]) -> None:
    from matplotlib.lines import Line2D

    series = loss_series(history)
    terms = sorted({k.split("/")[-1] for k in series if k != "loss"})
    colour = {t: _rgb(COLOURS[i % len(COLOURS)]) for i, t in enumerate(terms)}
    handles = []
    for key, y in series.items():
        if key == "loss":
            ax.plot(epochs, y, color="black", lw=2.0, marker="o", ms=3, label="loss")
            continue
        net, term = key.split("/", 1) if "/" in key else ("", key)
        ax.plot(epochs, y, color=colour[term], ls=NET_STYLE.get(net, "-"), lw=1.2, marker=".", ms=3, label=key)
    handles.append(Line2D([], [], color="black", lw=2.0, label="total"))
    handles += [Line2D([], [], color=colour[t], lw=1.2, label=t) for t in terms]
    _add_net_handles(handles, {k.split("/")[0] for k in series if "/" in k})
    if _log_useful(list(series.values())):
        ax.set_yscale("log")
    ax.set(xlabel="epoch (from 0)", ylabel="loss (mean over the epoch's steps)", title="training loss")
    ax.legend(handles=handles, fontsize=7, loc="upper right")


def _add_net_handles(handles: list, nets: set[str]) -> None:
    from matplotlib.lines import Line2D

    if len(nets) > 1:
        handles += [Line2D([], [], color="grey", ls=NET_STYLE.get(n, "-"), label=f"net {n}") for n in sorted(nets)]


def metric_styles(metrics: Sequence[str]) -> dict[str, tuple[tuple[float, float, float], str]]:
    """A distinct (colour, marker) per metric: colours cycle, the marker changes on each cycle."""
    n = len(COLOURS)
    return {m: (_rgb(COLOURS[i % n]), MARKERS[(i // n) % len(MARKERS)]) for i, m in enumerate(metrics)}


def _draw_metrics(ax, epochs: np.ndarray, history: Sequence[Mapping], best: Mapping | None) -> None:
    from matplotlib.lines import Line2D

    series = metric_series(history)
    metrics = list(dict.fromkeys(m for _, m in series))
    style = metric_styles(metrics)
    for (net, m), y in series.items():
        ax.plot(epochs, y, color=style[m][0], ls=NET_STYLE.get(net, "-"), lw=1.2, marker=style[m][1], ms=4,
                label=f"{net}/{m}")
    ax.set(xlabel="epoch (from 0)", ylabel="validation score (mean over images, 0-1)", title="validation")
    if not series:
        ax.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=ax.transAxes)
        return
    handles = [Line2D([], [], color=style[m][0], marker=style[m][1], lw=1.2, label=m) for m in metrics]
    _add_net_handles(handles, {n for n, _ in series})
    if best and best.get("epoch") is not None and best.get("value") is not None:
        ax.plot([best["epoch"]], [best["value"]], marker="*", ms=13, color="black", ls="none", label="shipped")
        handles.append(Line2D([], [], marker="*", ms=10, color="black", ls="none",
                              label=f"shipped: net {best.get('net')}, epoch {best['epoch']}, "
                                    f"{best.get('metric')} {best['value']:.3f}"))
    ax.legend(handles=handles, fontsize=7, loc="lower right")


def curves_figure(history: Sequence[Mapping], best: Mapping | None = None):
    """The two-panel :class:`matplotlib.figure.Figure` of ``history`` (axes 0: loss, axes 1: validation).

    Parameters
    ----------
    history : sequence of dict
        Per-epoch records of :func:`~wsi_weakseg.train.loop.run`: ``epoch``, ``loss``, optionally ``terms``
        (``{"<net>/<term>": mean}``) and ``validation`` (``{net: {metric: value}}``).
    best : dict, optional
        ``{"epoch", "net", "value", "metric"}`` of the shipped net; marked when its epoch is set.

    Returns
    -------
    matplotlib.figure.Figure
        Each data line carries a label (``loss``, ``a/voronoi``, ``b/aji``, ...); the shipped-epoch line is
        labelled ``shipped epoch`` and the star ``shipped``.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax_loss, ax_val = fig.subplots(1, 2)
    epochs = np.asarray([int(r["epoch"]) for r in history], np.float64)
    _draw_losses(ax_loss, epochs, history)
    _draw_metrics(ax_val, epochs, history, best)
    for ax in (ax_loss, ax_val):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, color="0.9", lw=0.6)
        if best and best.get("epoch") is not None:
            ax.axvline(best["epoch"], color="black", ls=":", lw=1.0, label="shipped epoch")
    return fig


def write_curves(history: Sequence[Mapping], path: str | os.PathLike[str], best: Mapping | None = None) -> Path | None:
    """Draw :func:`curves_figure` to ``path`` (PNG, atomic); on any failure log a warning and return ``None``.

    Parameters
    ----------
    history : sequence of dict
        As :func:`curves_figure`.
    path : path
        PNG to (over)write.
    best : dict, optional
        Shipped (net, epoch) to mark.

    Returns
    -------
    Path or None
        ``path``, or ``None`` when drawing failed (training goes on).
    """
    try:
        if not history:
            return None
        return save_figure(curves_figure(history, best), path, dpi=DPI)
    except Exception as exc:  # noqa: BLE001 - a picture must never stop a training run
        log.warning("could not draw the training curves %s: %s: %s", path, type(exc).__name__, exc)
        return None
