"""Figures of a measured sweep.

Each function takes tidy rows (the tables of :mod:`analysis.netscale.results`,
also written beside the figure as CSV) and returns a matplotlib
:class:`~matplotlib.figure.Figure` on an explicit Agg canvas; they compute
nothing but grouping and drawing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "plot_steps_vs_batch",
    "plot_tuned_lr",
    "plot_steps_by_threshold",
    "FIGURES",
]

Rows = Iterable[Mapping[str, Any]]


def _axes(n: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(4.2 * n, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, n, i + 1) for i in range(n)]


def _finite_xy(rows: Rows, y: str) -> tuple[list[float], list[float]]:
    pts = sorted(
        (float(r["batch_size"]), float(r[y]))
        for r in rows
        if r.get(y) not in (None, "") and math.isfinite(float(r[y]))
    )
    return [p[0] for p in pts], [p[1] for p in pts]


def _by(rows: Rows, key: str) -> dict[Any, list[Mapping[str, Any]]]:
    out: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return dict(sorted(out.items(), key=lambda kv: str(kv[0])))


def _log2(ax: Any, ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("batch size B")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _legend(ax: Any, **kw: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, **kw)
    else:
        ax.text(0.5, 0.5, "no finite points", ha="center", transform=ax.transAxes)


def plot_steps_vs_batch(rows: Rows) -> Figure:
    """Steps to result vs batch size, one curve per optimizer, with the
    perfect-scaling line :math:`S \\propto 1/B` through each curve's first point."""
    fig, (ax,) = _axes()
    for opt, group in _by(rows, "optimizer").items():
        x, y = _finite_xy(group, "steps")
        if not x:
            continue
        (line,) = ax.plot(x, y, "o-", ms=3, label=opt)
        ax.plot(x, [y[0] * x[0] / b for b in x], ":", color=line.get_color(), lw=1)
    _log2(ax, "steps to result")
    ax.set_title("steps vs batch size (dotted: perfect scaling)")
    _legend(ax)
    return fig


def plot_tuned_lr(rows: Rows) -> Figure:
    """The best trial's learning rate vs batch size, one curve per optimizer."""
    fig, (ax,) = _axes()
    for opt, group in _by(rows, "optimizer").items():
        x, y = _finite_xy(group, "hp_lr")
        if x:
            ax.plot(x, y, "o-", ms=3, label=opt)
    _log2(ax, "tuned learning rate")
    ax.set_title("tuned learning rate vs batch size")
    _legend(ax)
    return fig


def plot_steps_by_threshold(rows: Rows) -> Figure:
    """Steps vs batch size for several thresholds, one panel per optimizer."""
    groups = _by(rows, "optimizer")
    fig, axes = _axes(max(1, len(groups)))
    for ax, (opt, group) in zip(axes, groups.items(), strict=False):
        for tau, trs in _by(group, "threshold").items():
            x, y = _finite_xy(trs, "steps")
            if x:
                ax.plot(x, y, "o-", ms=3, label=f"{float(tau):g}")
        _log2(ax, "steps to result")
        ax.set_title(opt)
        _legend(ax, title="threshold")
    return fig


#: figure name -> (function, name of the table it draws)
FIGURES: Mapping[str, Any] = {
    "steps_vs_batch": plot_steps_vs_batch,
    "tuned_lr": plot_tuned_lr,
    "steps_by_threshold": plot_steps_by_threshold,
}
