"""Figures of the NQM batch-size scaling study.

Every function takes the tidy rows of one table (as written by
:func:`analysis.scaling.figure_tables`) and returns a matplotlib
:class:`~matplotlib.figure.Figure`. They compute nothing: no tuning, no fits, no
risks; only grouping and drawing. Figures are drawn on an Agg canvas attached
explicitly (no display needed, and no global ``matplotlib.use`` call at import)
with the object API, never ``pyplot``, so nothing leaks into a global figure
registry.

:data:`FIGURES` maps each figure name to its function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "FIGURES",
    "plot_steps_vs_batch_by_family",
    "plot_steps_vs_batch_by_power",
    "plot_loss_threshold",
    "plot_optimal_lr",
    "plot_pwc_final_lr",
    "plot_schedule_shapes",
    "plot_momentum_transient",
]

Rows = Iterable[Mapping[str, Any]]

#: Display names of the families.
FAMILY_LABELS: dict[str, str] = {
    "sgd": "SGD",
    "momentum": "momentum",
    "ema": "EMA",
    "momentum_ema": "momentum + EMA",
    "pwc": "piecewise constant",
    "linear_decay": "linear decay",
    "lower_bound": "lower bound",
}


def _figure(
    n_panels: int, width: float = 4.0, height: float = 3.3
) -> tuple[Figure, list]:
    cols = min(n_panels, 4 if n_panels == 4 else 3)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def _group(rows: Rows, key: str) -> dict[Any, list[Mapping[str, Any]]]:
    out: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return out


def _xy(rows: Rows, x: str, y: str) -> tuple[list[float], list[float]]:
    pts = sorted(
        (r[x], r[y])
        for r in rows
        if r.get(y) is not None and r.get(x) is not None and math.isfinite(r[y])
    )
    return [p[0] for p in pts], [p[1] for p in pts]


def _log2_axes(ax: Any, xlabel: str, ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)


def _draw_bound(ax: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    x, y = _xy(rows, "batch_size", "steps")
    if x:
        ax.plot(x, y, "k--", lw=1.2, label=FAMILY_LABELS["lower_bound"])


def _empty(ax: Any, text: str = "no finite points") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _steps_panels(
    rows: Rows, panel_key: str, curve_key: str, title: Callable
) -> Figure:
    rows = list(rows)
    bound = [r for r in rows if r["family"] == "lower_bound"]
    data = [r for r in rows if r["family"] != "lower_bound"]
    panels = _group(data, panel_key)
    fig, axes = _figure(max(len(panels), 1))
    if not panels:
        _empty(axes[0], "no data")
    for ax, (key, prs) in zip(
        axes, sorted(panels.items(), key=lambda kv: str(kv[0])), strict=False
    ):
        for ckey, crs in sorted(
            _group(prs, curve_key).items(), key=lambda kv: str(kv[0])
        ):
            x, y = _xy(crs, "batch_size", "steps")
            if x:
                label = FAMILY_LABELS.get(
                    ckey, f"p = {ckey:g}" if isinstance(ckey, float) else ckey
                )
                ax.plot(x, y, "o-", ms=3, lw=1.2, label=label)
        _draw_bound(ax, bound)
        _log2_axes(ax, "batch size B", "steps to target")
        ax.set_title(title(key))
        ax.legend(fontsize=7)
    return fig


def plot_steps_vs_batch_by_family(rows: Rows) -> Figure:
    """Steps to target vs batch size (log2 axes), one panel per family, one
    curve per preconditioning power, with the lower bound (dashed).

    Args:
        rows: records with ``family``, ``precond_power``, ``batch_size``,
            ``steps``; rows with ``family == "lower_bound"`` are the bound.
    """
    return _steps_panels(
        rows, "family", "precond_power", lambda k: FAMILY_LABELS.get(k, k)
    )


def plot_steps_vs_batch_by_power(rows: Rows) -> Figure:
    """Steps to target vs batch size, one panel per preconditioning power, one
    curve per family, with the lower bound (Zhang et al. 2019, section 3.7,
    Figures 5-6)."""
    return _steps_panels(
        rows, "precond_power", "family", lambda k: f"precond power p = {k:g}"
    )


def plot_loss_threshold(rows: Rows) -> Figure:
    """Steps to target vs batch size for several target losses (SGD; E.5,
    Figure 13), each with its lower bound (dotted, same colour)."""
    rows = list(rows)
    fig, (ax,) = _figure(1, 5.0, 3.8)
    by_target = _group(rows, "target")
    cmap = matplotlib.colormaps["viridis"]
    targets = sorted(by_target)
    for i, t in enumerate(targets):
        color = cmap(i / max(len(targets) - 1, 1))
        grp = _group(by_target[t], "family")
        for fam, rs in grp.items():
            x, y = _xy(rs, "batch_size", "steps")
            if not x:
                continue
            if fam == "lower_bound":
                ax.plot(x, y, ":", color=color, lw=1)
            else:
                ax.plot(x, y, "o-", ms=3, color=color, label=f"target {t:g}")
    _log2_axes(ax, "batch size B", "steps to target")
    ax.set_title("SGD: effect of the loss threshold (dotted: lower bound)")
    if ax.get_legend_handles_labels()[0]:  # an empty table has no curves
        ax.legend(fontsize=7)
    return fig


#: Drawn length (a factor on the log axis) of a range of lrs without upper end.
OPEN_BAR_SPAN = 2.0**6


def _draw_lr_curve(
    ax: Any, rows: Sequence[Mapping[str, Any]], y: str, style: str, **kw: Any
) -> None:
    """The tuned lrs of one curve: a line through the sharp optima and, at batch
    sizes whose optimum is degenerate (``degenerate`` true), a bar over the
    range ``y_min .. y_max`` of lrs that are all optimal instead of a point."""
    sharp = [r for r in rows if not r.get("degenerate")]
    wide = [r for r in rows if r.get("degenerate")]
    x, v = _xy(sharp, "batch_size", y)
    ax.plot(x, v, style, **kw)
    if not wide or style == "--":
        return
    x = [r["batch_size"] for r in wide]
    lows = [r[f"{y}_min"] for r in wide]
    # an unbounded range (every momentum < 1 optimal) is an open bar, arrow up
    opened = [not math.isfinite(r[f"{y}_max"]) for r in wide]
    tops = [
        lo * OPEN_BAR_SPAN if op else r[f"{y}_max"]
        for lo, op, r in zip(lows, opened, wide, strict=True)
    ]
    color = kw.get("color")
    ax.vlines(x, lows, tops, color=color, lw=3, alpha=0.6)
    ends = [(b, t) for b, t, op in zip(x, tops, opened, strict=True) if op]
    if ends:
        ax.plot([b for b, _ in ends], [t for _, t in ends], "^", ms=6, color=color)


def plot_optimal_lr(rows: Rows) -> Figure:
    """Optimal (effective) learning rate vs batch size per power (E.6, Figure 14):
    (a) SGD's lr; (b) momentum held fixed (``momentum_tuned`` false), lr tuned;
    (c) tuned momentum. (b) and (c) show the effective lr :math:`\\alpha/(1-\\beta)`
    with SGD's curves dashed for comparison. Where every lr of a range is optimal
    (``degenerate`` rows, see :mod:`analysis.lr_range`) a vertical bar shows the
    range (``lr_min .. lr_max`` or ``effective_lr_min .. effective_lr_max``); an
    unbounded one (``inf``) is an open bar ending in an arrow head."""
    rows = list(rows)
    fig, axes = _figure(3)
    sgd = _group([r for r in rows if r["family"] == "sgd"], "precond_power")
    mom = [r for r in rows if r["family"] == "momentum"]
    fixed = _group(
        [r for r in mom if not r.get("momentum_tuned", True)], "precond_power"
    )
    tuned = _group([r for r in mom if r.get("momentum_tuned", True)], "precond_power")
    cmap = matplotlib.colormaps["plasma"]
    powers = sorted(set(sgd) | set(fixed) | set(tuned))
    colors = {p: cmap(0.85 * i / max(len(powers) - 1, 1)) for i, p in enumerate(powers)}
    for p, rs in sorted(sgd.items()):
        _draw_lr_curve(
            axes[0], rs, "lr", "o-", ms=3, color=colors[p], label=f"p = {p:g}"
        )
        for ax in axes[1:]:
            _draw_lr_curve(ax, rs, "lr", "--", lw=0.8, color=colors[p])
    for ax, groups in ((axes[1], fixed), (axes[2], tuned)):
        for p, rs in sorted(groups.items()):
            _draw_lr_curve(
                ax, rs, "effective_lr", "o-", ms=3, color=colors[p], label=f"p = {p:g}"
            )
    betas = sorted({r["momentum"] for rs in fixed.values() for r in rs})
    fixed_label = ", ".join(f"{b:g}" for b in betas) if betas else "fixed"
    axes[0].set_title("(a) without momentum: lr")
    axes[1].set_title(f"(b) momentum {fixed_label}: α/(1−β)")
    axes[2].set_title("(c) tuned momentum: α/(1−β)")
    for ax in axes:
        _log2_axes(ax, "batch size B", "optimal learning rate")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            _empty(ax)
    if any(r.get("degenerate") for r in rows):
        fig.suptitle("bars: every lr in the range reaches the target in the "
                     "optimal number of steps", fontsize=8)  # fmt: skip
    return fig


def plot_pwc_final_lr(rows: Rows) -> Figure:
    """Final learning rate of the optimal piecewise-constant schedule vs batch
    size, one curve per power (E.7, Figure 15)."""
    fig, (ax,) = _figure(1, 5.0, 3.8)
    for p, rs in sorted(_group(rows, "precond_power").items()):
        x, y = _xy(rs, "batch_size", "final_lr")
        ax.plot(x, y, "o-", ms=3, label=f"p = {p:g}")
    _log2_axes(ax, "batch size B", "final learning rate")
    ax.set_title("optimal piecewise-constant schedule: final lr")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        _empty(ax)
    return fig


def plot_schedule_shapes(rows: Rows) -> Figure:
    """Tuned schedules, lr relative to its initial value vs normalised step
    :math:`t/S^*`; one panel per (family, power), one curve per batch size."""
    rows = list(rows)
    panels = _group(rows, "family")
    keys = sorted({(r["family"], r["precond_power"]) for r in rows}, key=str)
    fig, axes = _figure(max(len(keys), 1))
    if not keys:
        _empty(axes[0], "no scheduled family")
    for ax, (fam, p) in zip(axes, keys, strict=False):
        mine = [r for r in panels[fam] if r["precond_power"] == p]
        for b, rs in sorted(_group(mine, "batch_size").items()):
            x, y = _xy(rs, "normalised_step", "relative_lr")
            ax.step(x, y, where="post", lw=1.2, label=f"B = {b}")
        ax.set_yscale("log")
        ax.set_xlabel("normalised step t / S*")
        ax.set_ylabel("lr / initial lr")
        ax.set_title(f"{FAMILY_LABELS.get(fam, fam)}, p = {p:g}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def plot_momentum_transient(rows: Rows) -> Figure:
    """Appendix E.3 (Figure 11): the normalised transient term of eqn (6),
    momentum with lr α (red) vs SGD with lr α/(1−β) (blue), one panel per
    value of 1−β."""
    groups = _group(rows, "one_minus_beta")
    fig, axes = _figure(max(len(groups), 1))
    style = {
        "momentum": ("tab:red", "-", "momentum, lr α"),
        "sgd_effective_lr": ("tab:blue", "--", "SGD, lr α/(1−β)"),
    }
    for ax, (omb, rs) in zip(axes, sorted(groups.items(), reverse=True), strict=False):
        for rule, urs in _group(rs, "update").items():
            color, ls, label = style.get(rule, ("k", "-", rule))
            x, y = _xy(urs, "step", "normalised_risk")
            ax.plot(x, y, ls, color=color, lw=1.4, label=label)
        ax.set_title(f"1 − β = {omb:g}")
        ax.set_xlabel("step t")
        ax.set_ylabel("first term of eqn (6), normalised")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return fig


#: Figure name -> plotting function (names match ``figure_tables``).
FIGURES: dict[str, Callable[[Rows], Figure]] = {
    "steps_vs_batch_by_family": plot_steps_vs_batch_by_family,
    "steps_vs_batch_by_power": plot_steps_vs_batch_by_power,
    "loss_threshold": plot_loss_threshold,
    "optimal_lr": plot_optimal_lr,
    "pwc_final_lr": plot_pwc_final_lr,
    "schedule_shapes": plot_schedule_shapes,
    "momentum_transient": plot_momentum_transient,
}
