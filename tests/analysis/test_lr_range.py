"""Tests of the range of optimal learning rates (analysis.lr_range).

Oracle: a brute-force scan of learning rates, each point's steps to target
computed by :func:`nqm.steps_to_target` (the certified first crossing), not by
the bisection under test.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import nqm
from analysis.lr_range import (
    DEGENERATE_RATIO,
    RANGE_RTOL,
    optimal_lr_range,
    optimal_lr_ranges,
)
from nqm.search import best_steps

#: Points of the brute-force scan inside and on both sides of the range.
SCAN_POINTS = 201
TARGET = 0.05


@pytest.fixture(scope="module")
def problem() -> nqm.NQMProblem:
    return nqm.NQMProblem.power_law(20)


def _steps(problem, opt, b, lr):
    return nqm.steps_to_target(problem, dataclasses.replace(opt, lr=float(lr)), b,
                               TARGET)  # fmt: skip


@pytest.mark.parametrize(
    ("family", "power", "batch_size", "options", "degenerate"),
    [
        ("sgd", 1.0, 2**16, {}, True),  # one step: lr near 1 for every mode
        ("sgd", 0.75, 2**14, {}, True),
        ("sgd", 0.0, 1, {}, False),  # hundreds of steps: a narrow optimum
        ("momentum", 0.5, 64, {"fixed_momentum": 0.9}, True),
    ],
)
def test_range_matches_a_brute_force_scan(
    problem, family, power, batch_size, options, degenerate
):
    tuned = best_steps(problem, family, batch_size, TARGET, power, **options)
    opt, s = tuned.optimizer, tuned.steps
    rng = optimal_lr_range(problem, opt, batch_size, TARGET, s)
    assert rng.steps == s and rng.lr_min <= opt.schedule.lr <= rng.lr_max
    # every scanned lr inside the range takes exactly s steps ...
    inside = np.geomspace(rng.lr_min, rng.lr_max, SCAN_POINTS)
    assert all(_steps(problem, opt, batch_size, a) == s for a in inside)
    # ... and the range is maximal: just beyond either end, s steps are not met
    for end, beyond in ((rng.lr_min, -1), (rng.lr_max, +1)):
        out = end * (1.0 + 2.0 * RANGE_RTOL) ** beyond
        assert _steps(problem, opt, batch_size, out) != s
    # the scan beyond the range, over as wide again on each side, never re-enters
    ratio = rng.lr_max / rng.lr_min
    below = np.geomspace(rng.lr_min / ratio, rng.lr_min, 40, endpoint=False)
    above = np.geomspace(rng.lr_max * ratio, rng.lr_max, 40, endpoint=False)
    assert all(_steps(problem, opt, batch_size, a) > s for a in [*below, *above])
    assert rng.degenerate is degenerate
    assert degenerate == (ratio > DEGENERATE_RATIO)


def test_rows_carry_effective_lrs_and_skip_what_has_no_range(problem):
    tuned = best_steps(problem, "momentum", 64, TARGET, 0.5, fixed_momentum=0.9)
    opt = tuned.optimizer
    rec = {"family": "momentum", "precond_power": 0.5, "target": TARGET,
           "batch_size": 64, "steps": tuned.steps, "schedule": "constant",
           "lr": opt.schedule.lr, "momentum": 0.9, "ema": 0.0}  # fmt: skip
    skipped = [dict(rec, steps=math.inf), dict(rec, steps=0),
               dict(rec, schedule="piecewise_constant")]  # fmt: skip
    (row,) = optimal_lr_ranges(problem, [rec, *skipped])
    rng = optimal_lr_range(problem, opt, 64, TARGET, tuned.steps)
    assert (row["lr_min"], row["lr_max"]) == (rng.lr_min, rng.lr_max)
    assert row["effective_lr_min"] == pytest.approx(rng.lr_min / 0.1, rel=1e-12)
    assert row["effective_lr_max"] == pytest.approx(rng.lr_max / 0.1, rel=1e-12)
    assert row["degenerate"] is rng.degenerate


def test_bad_inputs(problem):
    opt = nqm.Optimizer(0.1)
    s = nqm.steps_to_target(problem, opt, 4, TARGET)
    with pytest.raises(ValueError, match="does not reach the target in exactly"):
        optimal_lr_range(problem, opt, 4, TARGET, s + 1)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        optimal_lr_range(problem, opt, 4, TARGET, 0)
    sched = nqm.Optimizer(nqm.LinearDecay(0.1, 0.5, 10))
    with pytest.raises(ValueError, match="constant lr"):
        optimal_lr_range(problem, sched, 4, TARGET, s)
