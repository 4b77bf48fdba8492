"""B_crit as a function of the target, and the examples-vs-steps trade-off."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nqm
from nqm.critical_batch import (
    critical_batch_vs_target,
    hyperbola,
    steps_examples_tradeoff,
)

#: a curve that follows the model exactly is recovered to rounding
RTOL_EXACT = 1e-8


def test_tradeoff_recovers_the_hyperbola_exactly():
    """A curve built to follow McCandlish et al. (2018, eq. 2.11)."""
    s_min, b_crit = 37.0, 250.0
    bs = np.geomspace(1, 1e5, 21)
    steps = s_min * (1.0 + b_crit / bs)
    tr = steps_examples_tradeoff(bs, steps)
    assert tr.s_min == pytest.approx(s_min, rel=RTOL_EXACT)
    assert tr.b_crit == pytest.approx(b_crit, rel=RTOL_EXACT)
    assert tr.e_min == pytest.approx(s_min * b_crit, rel=RTOL_EXACT)
    np.testing.assert_allclose(tr.excess_steps, b_crit / bs, rtol=RTOL_EXACT)
    np.testing.assert_allclose(tr.excess_examples, bs / b_crit, rtol=RTOL_EXACT)
    np.testing.assert_allclose(
        tr.excess_steps, hyperbola(tr.excess_examples), rtol=RTOL_EXACT
    )
    assert tr.hyperbola_log_rmse < RTOL_EXACT


def test_tradeoff_measures_departure():
    """A curve with a different bend (S = S_min (1 + (B_c/B)^2)^(1/2)) is off the
    hyperbola by a measurable amount; infinite points are dropped."""
    bs = np.geomspace(1, 1e5, 21)
    steps = 50.0 * np.sqrt(1.0 + (300.0 / bs) ** 2)
    steps[0] = math.inf
    tr = steps_examples_tradeoff(bs, steps)
    assert tr.batch_sizes.size == 20
    assert tr.hyperbola_log_rmse > 0.1


@pytest.mark.parametrize(
    "family", ["sgd", pytest.param("momentum", marks=pytest.mark.slow)]
)
def test_b_crit_grows_as_the_target_falls(family):
    """McCandlish et al. (2018, §2.2): the critical batch tracks the noise scale
    tr(H C) / (G^T H G), which grows as the gradient shrinks; on the NQM the
    tuned critical batch of SGD and heavy ball grows as the target falls."""
    problem = nqm.NQMProblem.power_law(100)
    l0 = problem.initial_loss()
    targets = l0 * np.array([0.3, 0.15, 0.07, 0.03])
    points = critical_batch_vs_target(problem, family, targets, 4.0 ** np.arange(9))
    b_crit = [p.b_crit for p in points]
    assert all(p.fit.b_crit_in_range for p in points)
    assert np.all(np.diff(b_crit) > 0), b_crit


def test_bad_arguments():
    problem = nqm.NQMProblem.power_law(10)
    with pytest.raises(ValueError, match="batch_sizes"):
        critical_batch_vs_target(problem, "sgd", [0.1], [1, 2])
    with pytest.raises(ValueError, match="targets"):
        critical_batch_vs_target(problem, "sgd", [], [1, 2, 4])
    with pytest.raises(ValueError, match="finite points"):
        steps_examples_tradeoff([1, 2, 4], [math.inf, 3, math.inf])
