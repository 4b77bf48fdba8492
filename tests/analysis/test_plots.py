"""Tests of analysis.plots: every figure is a Figure that draws exactly its table.

Oracle: the synthetic table itself. Plot functions compute nothing, so the data of
each drawn line must equal the rows it came from, in batch-size order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from analysis import plots

FAMILIES = ("sgd", "momentum")
POWERS = (0.0, 1.0)
BATCH = (1, 2, 4, 8)


def _steps(fam, p, b):
    return 1000.0 / b + (10 if fam == "sgd" else 5) * (1 + p)


@pytest.fixture()
def records():
    rows = [
        {
            "family": f,
            "precond_power": p,
            "batch_size": b,
            "target": 0.01,
            "steps": _steps(f, p, b),
            "lr": 0.01 * b,
            "effective_lr": 0.1 * b,
            "final_lr": 0.001 * b,
        }
        for f in FAMILIES
        for p in POWERS
        for b in BATCH
    ]
    # an unreachable point must be left out, not drawn as inf
    rows.append(
        {
            "family": "sgd",
            "precond_power": 0.0,
            "batch_size": 16,
            "target": 0.01,
            "steps": math.inf,
            "lr": None,
            "effective_lr": None,
            "final_lr": None,
        }
    )
    bound = [
        {"family": "lower_bound", "target": 0.01, "batch_size": b, "steps": 100.0 / b}
        for b in BATCH
    ]
    return rows, bound


def _lines(ax):
    return {
        ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.lines
    }


def test_steps_by_family_draws_the_table(records):
    rows, bound = records
    fig = plots.plot_steps_vs_batch_by_family(rows + bound)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == len(FAMILIES)
    for ax in fig.axes:
        fam = {"SGD": "sgd", "momentum": "momentum"}[ax.get_title()]
        lines = _lines(ax)
        assert set(lines) == {"p = 0", "p = 1", "lower bound"}
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        for p in POWERS:
            x, y = lines[f"p = {p:g}"]
            assert x == list(BATCH)
            assert y == [_steps(fam, p, b) for b in BATCH]
        assert lines["lower bound"][1] == [100.0 / b for b in BATCH]


def test_steps_by_power_has_one_panel_per_power(records):
    rows, bound = records
    fig = plots.plot_steps_vs_batch_by_power(rows + bound)
    assert len(fig.axes) == len(POWERS)
    ax = fig.axes[1]
    assert ax.get_title() == "precond power p = 1"
    assert _lines(ax)["momentum"][1] == [_steps("momentum", 1.0, b) for b in BATCH]


def test_loss_threshold_one_curve_and_bound_per_target():
    rows = []
    for t in (0.1, 0.01):
        rows += [
            {"family": "sgd", "target": t, "batch_size": b, "steps": 1 / t / b}
            for b in BATCH
        ]
        rows += [
            {
                "family": "lower_bound",
                "target": t,
                "batch_size": b,
                "steps": 0.1 / t / b,
            }
            for b in BATCH
        ]
    fig = plots.plot_loss_threshold(rows)
    (ax,) = fig.axes
    assert len(ax.lines) == 4
    lines = _lines(ax)
    assert lines["target 0.01"][1] == pytest.approx([100.0 / b for b in BATCH])


def test_optimal_lr_panels(records):
    rows, _ = records
    # the fixed-momentum panel (b) gets its own rows: momentum held at 0.9
    fixed = [
        dict(r, momentum=0.9, effective_lr=0.2 * r["batch_size"], momentum_tuned=False)
        for r in rows
        if r["family"] == "momentum"
    ]
    fig = plots.plot_optimal_lr(rows + fixed)
    a, b, c = fig.axes
    assert [ln.get_ydata().tolist() for ln in a.lines][0] == [0.01 * x for x in BATCH]
    # (b) fixed and (c) tuned momentum: effective lr solid, SGD lr dashed
    for ax, slope in ((b, 0.2), (c, 0.1)):
        solid = [ln for ln in ax.lines if ln.get_linestyle() == "-"]
        dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
        assert len(solid) == len(dashed) == len(POWERS)
        assert solid[0].get_ydata().tolist() == [slope * x for x in BATCH]
    assert "0.9" in b.get_title()


def test_optimal_lr_draws_degenerate_optima_as_ranges(records):
    rows, _ = records
    # at B = 8 every lr of [0.05, 0.2] (effective [0.5, 2]) is optimal
    wide = {"degenerate": True, "lr_min": 0.05, "lr_max": 0.2,
            "effective_lr_min": 0.5, "effective_lr_max": 2.0}  # fmt: skip
    rows = [
        dict(r, **wide) if r["batch_size"] == 8 else dict(r, degenerate=False)
        for r in rows
    ]
    fig = plots.plot_optimal_lr(rows)
    a, _, c = fig.axes
    # the line leaves the degenerate point out; a bar spans its range instead
    assert a.lines[0].get_xdata().tolist() == [1, 2, 4]
    for ax, (lo, hi) in ((a, (0.05, 0.2)), (c, (0.5, 2.0))):  # one bar per power
        bars = [col.get_segments() for col in ax.collections]
        assert [[s.tolist() for s in segs] for segs in bars] == [
            [[[8, lo], [8, hi]]]
        ] * len(POWERS)
    assert "range" in fig._suptitle.get_text()


def test_optimal_lr_draws_an_unbounded_range_open(records):
    rows, _ = records
    # S* = 1: every momentum < 1 is optimal, so the effective lr has no upper end
    open_range = {"degenerate": True, "effective_lr_min": 0.5,
                  "effective_lr_max": math.inf}  # fmt: skip
    rows = [
        dict(r, **open_range)
        if r["family"] == "momentum" and r["batch_size"] == 4 and r["precond_power"]
        else r
        for r in rows
    ]
    c = plots.plot_optimal_lr(rows).axes[2]
    (bars,) = [col.get_segments() for col in c.collections]
    assert [s.tolist() for s in bars] == [[[4, 0.5], [4, 0.5 * plots.OPEN_BAR_SPAN]]]
    heads = [ln for ln in c.lines if ln.get_marker() == "^"]
    assert [(ln.get_xdata().tolist(), ln.get_ydata().tolist()) for ln in heads] == [
        ([4], [0.5 * plots.OPEN_BAR_SPAN])
    ]


def test_pwc_final_lr(records):
    rows, _ = records
    fig = plots.plot_pwc_final_lr(rows)
    assert len(fig.axes[0].lines) == len(POWERS)


def test_schedule_shapes_and_transient():
    shapes = [
        {
            "family": "pwc",
            "precond_power": 0.0,
            "batch_size": b,
            "normalised_step": s,
            "relative_lr": 1.0 if s < 0.5 else 0.1,
        }
        for b in (1, 64)
        for s in np.linspace(0, 0.99, 10)
    ]
    fig = plots.plot_schedule_shapes(shapes)
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 2
    trans = [
        {"one_minus_beta": o, "update": u, "step": t, "normalised_risk": 0.9**t}
        for o in (0.5, 0.1)
        for u in ("momentum", "sgd_effective_lr")
        for t in range(5)
    ]
    fig = plots.plot_momentum_transient(trans)
    assert len(fig.axes) == 2
    assert all(len(ax.lines) == 2 for ax in fig.axes)
    assert fig.axes[0].get_title() == "1 − β = 0.5"


@pytest.mark.parametrize("name", sorted(plots.FIGURES))
def test_every_figure_accepts_an_empty_table(name):
    assert isinstance(plots.FIGURES[name]([]), Figure)
