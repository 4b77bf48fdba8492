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
    ONE_MINUS_BETA_FLOOR,
    RANGE_RTOL,
    optimal_lr_range,
    optimal_lr_ranges,
)
from nqm.search import best_steps

#: Points of the brute-force scan inside the range.
SCAN_POINTS = 41
#: Rounding of 1 - (1 - beta) against beta in the effective lr.
RTOL = 1e-12
TARGET = 0.05


@pytest.fixture(scope="module")
def problem() -> nqm.NQMProblem:
    return nqm.NQMProblem.power_law(20)


def _steps(problem, opt, b, lr=None, momentum=None):
    lr = opt.schedule.lr if lr is None else float(lr)
    momentum = opt.momentum if momentum is None else float(momentum)
    changed = dataclasses.replace(opt, lr=lr, momentum=momentum)
    return nqm.steps_to_target(problem, changed, b, TARGET)


def _check_interval(steps_at, lo, hi, s, top=math.inf):
    """``steps_at(x) == s`` on a scan of [lo, hi], not just beyond either end,
    and above s on scans as wide again beyond both ends (up to ``top``)."""
    assert all(steps_at(x) == s for x in np.geomspace(lo, hi, SCAN_POINTS))
    for end, beyond in ((lo, -1), (hi, +1)):
        out = end * (1.0 + 2.0 * RANGE_RTOL) ** beyond
        assert out > top or steps_at(out) != s
    ratio = hi / lo
    below = np.geomspace(lo / ratio, lo, SCAN_POINTS // 2, endpoint=False)
    above = np.geomspace(hi * ratio, hi, SCAN_POINTS // 2, endpoint=False)
    assert all(steps_at(x) > s for x in [*below, *above] if x <= top)


@pytest.mark.parametrize(
    ("family", "power", "batch_size", "options", "degenerate"),
    [
        ("sgd", 1.0, 2**16, {}, True),  # one step: lr near 1 for every mode
        ("sgd", 0.0, 1, {}, False),  # hundreds of steps: a narrow optimum
        ("momentum", 0.5, 64, {"fixed_momentum": 0.9}, True),
    ],
)
def test_lr_interval_matches_a_brute_force_scan(
    problem, family, power, batch_size, options, degenerate
):
    tuned = best_steps(problem, family, batch_size, TARGET, power, **options)
    opt, s = tuned.optimizer, tuned.steps
    rng = optimal_lr_range(problem, opt, batch_size, TARGET, s)
    assert rng.steps == s and rng.lr_min <= opt.schedule.lr <= rng.lr_max
    _check_interval(
        lambda a: _steps(problem, opt, batch_size, lr=a), rng.lr_min, rng.lr_max, s
    )
    gap = 1.0 - opt.momentum  # effective lr = lr / (1 - beta), as documented
    assert (rng.effective_lr_min, rng.effective_lr_max) == (
        rng.lr_min / gap, rng.lr_max / gap
    )  # fmt: skip
    assert rng.momentum_min is None and rng.momentum_max is None
    assert rng.degenerate is degenerate


@pytest.mark.parametrize(("power", "batch_size"), [(0.5, 64), (0.0, 2**12)])
def test_momentum_interval_matches_a_brute_force_scan(problem, power, batch_size):
    tuned = best_steps(problem, "momentum", batch_size, TARGET, power)
    opt, s = tuned.optimizer, tuned.steps
    rng = optimal_lr_range(problem, opt, batch_size, TARGET, s, vary_momentum=True)
    assert 0 < rng.momentum_min <= opt.momentum <= rng.momentum_max < 1
    # the scan is geometric in 1 - beta, as the search is
    _check_interval(
        lambda u: _steps(problem, opt, batch_size, momentum=1.0 - u),
        1.0 - rng.momentum_max, 1.0 - rng.momentum_min, s, top=1.0,
    )  # fmt: skip
    lr = opt.schedule.lr
    assert rng.effective_lr_min == pytest.approx(
        min(rng.lr_min / (1 - opt.momentum), lr / (1 - rng.momentum_min)), rel=RTOL
    )
    assert rng.effective_lr_max == pytest.approx(
        max(rng.lr_max / (1 - opt.momentum), lr / (1 - rng.momentum_max)), rel=RTOL
    )


def test_one_step_optimum_holds_for_every_momentum(problem):
    """In one step the momentum buffer is the first gradient: any beta < 1 is
    optimal, so the effective lr alpha / (1 - beta) has no upper end."""
    tuned = best_steps(problem, "momentum", 2**16, TARGET, 1.0)
    opt = tuned.optimizer
    assert tuned.steps == 1
    rng = optimal_lr_range(problem, opt, 2**16, TARGET, 1, vary_momentum=True)
    assert (rng.momentum_min, rng.momentum_max) == (0.0, 1.0)
    assert rng.effective_lr_max == math.inf and rng.degenerate
    for beta in (0.0, 0.5, 0.99, 1.0 - 1e-9, 1.0 - ONE_MINUS_BETA_FLOOR):
        assert _steps(problem, opt, 2**16, momentum=beta) == 1


def test_rows_carry_effective_lrs_and_skip_what_has_no_range(problem):
    tuned = best_steps(problem, "momentum", 64, TARGET, 0.5, fixed_momentum=0.9)
    opt = tuned.optimizer
    rec = {"family": "momentum", "precond_power": 0.5, "target": TARGET,
           "batch_size": 64, "steps": tuned.steps, "schedule": "constant",
           "lr": opt.schedule.lr, "momentum": 0.9, "ema": 0.0}  # fmt: skip
    skipped = [dict(rec, steps=math.inf), dict(rec, steps=0),
               dict(rec, schedule="piecewise_constant")]  # fmt: skip
    (row,) = optimal_lr_ranges(
        problem, [dict(r, momentum_tuned=False) for r in (rec, *skipped)]
    )
    rng = optimal_lr_range(problem, opt, 64, TARGET, tuned.steps)
    assert (row["lr_min"], row["lr_max"]) == (rng.lr_min, rng.lr_max)
    assert row["effective_lr_min"] == pytest.approx(rng.lr_min / 0.1, rel=RTOL)
    assert row["effective_lr_max"] == pytest.approx(rng.lr_max / 0.1, rel=RTOL)
    assert row["degenerate"] is rng.degenerate
    assert row["momentum_min"] is None  # a fixed momentum is not varied
    # a tuned momentum is varied too
    (row,) = optimal_lr_ranges(problem, [dict(rec, momentum_tuned=True)])
    assert row["momentum_min"] <= 0.9 <= row["momentum_max"]


def test_bad_inputs(problem):
    opt = nqm.Optimizer(0.1)
    s = nqm.steps_to_target(problem, opt, 4, TARGET)
    with pytest.raises(ValueError, match="does not reach the target in\n?.*exactly"):
        optimal_lr_range(problem, opt, 4, TARGET, s + 1)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        optimal_lr_range(problem, opt, 4, TARGET, 0)
    sched = nqm.Optimizer(nqm.LinearDecay(0.1, 0.5, 10))
    with pytest.raises(ValueError, match="constant lr"):
        optimal_lr_range(problem, sched, 4, TARGET, s)
