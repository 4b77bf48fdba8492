"""Tuned batch-size ramps (`nqm.batch_ramp`): certified results, budgets kept,
never worse than the constant batch, and no saving where noise is absent."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nqm
from nqm.batch_ramp import (
    best_constant,
    ramp_savings,
    tune_ramp_examples,
    tune_ramp_steps,
)

BATCHES = 2 ** np.arange(0, 11)


@pytest.fixture(scope="module")
def problem():
    return nqm.NQMProblem.power_law(50)


def scan(problem, result):
    """First step at or below the target and the examples spent until then, by
    evaluating the exact loss at every step and summing the batch sizes."""
    steps = np.arange(int(result.steps) + 1)
    losses = nqm.expected_loss(problem, result.optimizer, result.batch, steps)
    first = int(np.flatnonzero(losses <= result.target)[0])
    return first, sum(int(result.batch(t)) for t in range(first))


def test_ramp_for_an_example_budget_is_certified(problem):
    target = 0.05 * problem.initial_loss()
    const = best_constant(problem, target, BATCHES, examples=4000)
    ramp = tune_ramp_steps(problem, target, 4000, start=const)
    assert ramp.steps <= const.steps
    assert scan(problem, ramp) == (ramp.steps, ramp.examples)
    assert ramp.examples <= 4000
    assert scan(problem, const) == (const.steps, const.examples)
    assert const.examples <= 4000
    assert len(ramp.batch.values) > 1  # a ramp, not the constant start


@pytest.mark.slow
def test_ramp_for_a_step_budget_is_certified(problem):
    target = 0.05 * problem.initial_loss()
    const = best_constant(problem, target, BATCHES, steps=200)
    ramp = tune_ramp_examples(problem, target, 200, start=const)
    assert ramp.examples <= const.examples and ramp.steps <= 200
    assert scan(problem, ramp) == (ramp.steps, ramp.examples)


def test_best_constant_is_the_best_of_the_curve(problem):
    """Against the tuned curve itself: the fewest steps among the batch sizes
    whose examples fit, and the fewest examples among those within the steps."""
    target = 0.05 * problem.initial_loss()
    curve = nqm.best_steps(problem, "sgd", BATCHES.astype(float), target)
    s = np.array([r.steps for r in curve])
    e = BATCHES * s
    for budget in (2000, 5000, 20000):
        got = best_constant(problem, target, BATCHES, examples=budget, tuned=curve)
        assert got.steps == s[e <= budget].min()
        assert got.examples == e[(e <= budget) & (s == got.steps)].min()
    got = best_constant(problem, target, BATCHES, steps=150, tuned=curve)
    assert got.examples == e[s <= 150].min()


def test_no_noise_no_saving():
    """Without gradient noise the batch size changes nothing but the examples:
    no ramp reaches the target in fewer steps than the constant batch."""
    problem = nqm.NQMProblem(h=np.geomspace(1.0, 0.01, 20), c=0.0)
    target = 0.05 * problem.initial_loss()
    (row,) = ramp_savings(problem, target, [3000], BATCHES)
    assert row.ramp.steps == row.constant.steps
    assert row.saving == 0.0


def test_bad_arguments(problem):
    with pytest.raises(ValueError, match="target"):
        tune_ramp_steps(problem, -1.0, 100)
    with pytest.raises(ValueError, match="examples"):
        tune_ramp_steps(problem, 0.1, 0.5)
    with pytest.raises(ValueError, match="pieces"):
        tune_ramp_steps(problem, 0.1, 100, pieces=0)
    with pytest.raises(ValueError, match="shape"):
        tune_ramp_steps(problem, 0.1, 100, shape="cubic")
    with pytest.raises(ValueError, match="steps"):
        tune_ramp_examples(problem, 0.1, 0)
    with pytest.raises(ValueError, match="exactly one"):
        best_constant(problem, 0.1, BATCHES)
    # one example cannot buy two steps
    assert math.isinf(tune_ramp_steps(problem, 0.1, 1.0).steps)
