"""Figures of a prediction and its check.

Each function takes the rows of ``prediction.json`` (also written beside each
figure as CSV) and returns a matplotlib :class:`~matplotlib.figure.Figure` on
an explicit Agg canvas; they compute nothing but grouping and drawing. The
spectrum and the H-vs-C scatter the prediction used are the reference run's
own report figures (:func:`kfac_spectra.report.write_report`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_steps_panels", "plot_normalised_overlay", "plot_b_crit_summary"]


def _finite(xs: Sequence[float], ys: Sequence[float]) -> tuple[list, list]:
    pts = [
        (x, y)
        for x, y in zip(xs, ys, strict=True)
        if y is not None and math.isfinite(y) and y > 0
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_steps_panels(optimizers: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Predicted (lines) and measured (markers) steps vs batch size, one panel
    per optimizer; Adam's sensitivity powers dashed.

    Args:
        optimizers: label -> ``{"predicted": {"batch_sizes", "steps",
            "precond_power", "sensitivity": {power: {"steps": ...}}},
            "measured": {"batch_sizes", "steps"} or None}``.
    """
    names = list(optimizers)
    n = max(len(names), 1)
    fig = Figure(figsize=(3.6 * n, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, n, i + 1)
        entry = optimizers[name]
        pred = entry["predicted"]
        ax.plot(*_finite(pred["batch_sizes"], pred["steps"]), "-o", ms=3,
                label=f"NQM p={pred['precond_power']:g}")  # fmt: skip
        for p, sens in pred.get("sensitivity", {}).items():
            ax.plot(*_finite(pred["batch_sizes"], sens["steps"]), "--", lw=1,
                    label=f"NQM p={float(p):g}")  # fmt: skip
        meas = entry.get("measured")
        if meas:
            ax.plot(*_finite(meas["batch_sizes"], meas["steps"]), "s", ms=5,
                    mfc="none", label="measured")  # fmt: skip
        if ax.has_data() and any(len(line.get_xdata()) for line in ax.lines):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "no step count > 0", ha="center",
                    transform=ax.transAxes)  # fmt: skip
        ax.set_xlabel("batch size")
        ax.set_ylabel("steps to target")
        ax.set_title(name)
        ax.legend(fontsize="x-small")
    return fig


def plot_normalised_overlay(optimizers: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Every optimizer's steps over its own S_min, predicted (lines) and measured
    (markers, same colour), on one log-log panel: the shape without the absolute
    step scale.

    Args:
        optimizers: as :func:`plot_steps_panels`, each part with ``s_min``.
    """
    fig = Figure(figsize=(5.0, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for name, entry in optimizers.items():
        colour = None
        for part, style in (("predicted", "-"), ("measured", "s")):
            data = entry.get(part)
            if not data or not _positive(data.get("s_min")):
                continue
            xs, ys = _finite(data["batch_sizes"], data["steps"])
            ys = [y / data["s_min"] for y in ys]
            (line,) = ax.plot(xs, ys, style, color=colour, mfc="none",
                              label=f"{name} ({part})")  # fmt: skip
            colour = line.get_color()
            drawn = drawn or bool(xs)
    if drawn:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend(fontsize="x-small")
    ax.set_xlabel("batch size")
    ax.set_ylabel("steps / S_min")
    ax.set_title("steps normalised by S_min")
    return fig


def _positive(v: Any) -> bool:
    return v is not None and math.isfinite(v) and v > 0


def plot_b_crit_summary(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Predicted against measured critical batch size, log axes, identity line.

    Args:
        rows: ``optimizer, predicted, measured, measured_low, measured_high``.
    """
    fig = Figure(figsize=(4.2, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    values = []
    for r in rows:
        x, y = r["measured"], r["predicted"]
        if not all(v is not None and math.isfinite(v) and v > 0 for v in (x, y)):
            continue
        lo, hi = r.get("measured_low"), r.get("measured_high")
        err = None
        if lo is not None and hi is not None and math.isfinite(lo + hi):
            err = [[max(x - lo, 0.0)], [max(hi - x, 0.0)]]
        ax.errorbar([x], [y], xerr=err, fmt="o", capsize=3, label=r["optimizer"])
        values += [x, y] + ([lo, hi] if err else [])
    if values:
        pos = [v for v in values if v > 0]
        lo_v, hi_v = min(pos) / 2, max(pos) * 2
        ax.plot([lo_v, hi_v], [lo_v, hi_v], "k:", lw=1, label="identity")
        ax.set_xlim(lo_v, hi_v)
        ax.set_ylim(lo_v, hi_v)
        ax.legend(fontsize="x-small")
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no finite pair", ha="center", transform=ax.transAxes)
    ax.set_xlabel("measured B_crit")
    ax.set_ylabel("predicted B_crit (NQM)")
    ax.set_title("critical batch size")
    return fig
