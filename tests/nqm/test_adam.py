"""Adam on the NQM by Monte Carlo (`nqm.adam`), against its exact limits.

Oracles: for large eps, Adam is SGD with lr alpha/eps (heavy ball with a
bias-correction schedule when beta1 > 0), whose risk the exact engine gives; for
beta1 = 0, beta2 -> 0, eps -> 0 it is signSGD, whose risk is computed here from
the exact Markov chain of each coordinate on its lattice theta_0 + alpha Z,
averaged over theta_0 by Gauss-Hermite quadrature (no simulation).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

import nqm
from nqm.adam import (
    Adam,
    adam_curves,
    adam_steps_to_target,
    first_crossing,
    record_steps,
    tune_adam,
)

#: Monte Carlo mean vs exact risk, in standard errors.
MC_SIGMAS = 4.0
#: Binomial slack (standard deviations) on an empirical coverage rate.
COVERAGE_SIGMAS = 4.0
#: eps so large that Adam's denominator is eps to relative 1e-6 or better.
BIG_EPS = 1e6
#: Gauss-Hermite nodes of the signSGD oracle.
GH_NODES = 80


def small_problem(d: int = 6):
    h = np.geomspace(1.0, 0.05, d)
    return nqm.NQMProblem(h=h, c=np.linspace(1.0, 0.3, d), init_sq=1.0)


@pytest.mark.parametrize("f32", [True, False])
def test_large_eps_is_sgd(f32):
    problem = small_problem()
    lr = 0.5
    adam = Adam(lr * BIG_EPS, beta1=0.0, eps=BIG_EPS)
    steps = [0, 1, 5, 20, 60]
    (cv,) = adam_curves(problem, [adam], 3, steps, replicas=3000, seed=1,
                        device="cpu", float32_draws=f32)  # fmt: skip
    exact = nqm.expected_loss(problem, nqm.Optimizer(lr), 3, steps)
    assert np.all(np.abs(cv.mean - exact) <= MC_SIGMAS * cv.stderr)
    # the check has power: lr 10% off is rejected
    off = nqm.expected_loss(problem, nqm.Optimizer(0.9 * lr), 3, steps)
    assert np.any(np.abs(cv.mean - off) > MC_SIGMAS * cv.stderr)


def test_large_eps_with_beta1_is_bias_corrected_heavy_ball():
    r"""m = b1 m + (1-b1) g, theta -= (a/eps) m / (1 - b1^(t+1)) is heavy ball
    M = b1 M + g with lr a (1-b1) / (eps (1 - b1^(t+1)))."""
    problem = small_problem()
    lr, b1 = 0.3, 0.8
    adam = Adam(lr * BIG_EPS, beta1=b1, eps=BIG_EPS)
    sched = nqm.FromCallable(
        lambda t: lr * (1 - b1) / -np.expm1((np.asarray(t) + 1) * math.log(b1))
    )
    steps = [1, 2, 8, 30, 80]
    (cv,) = adam_curves(problem, [adam], 2, steps, replicas=3000, seed=2,
                        device="cpu")  # fmt: skip
    exact = nqm.expected_loss(problem, nqm.Optimizer(sched, momentum=b1), 2, steps)
    assert np.all(np.abs(cv.mean - exact) <= MC_SIGMAS * cv.stderr)


def sign_sgd_loss(problem, lr, batch, steps):
    """Exact E[L] of theta <- theta - lr sign(h theta + eps), eps ~ N(0, c/B)."""
    x, w = np.polynomial.hermite_e.hermegauss(GH_NODES)
    w = w / math.sqrt(2.0 * math.pi)
    t_max = max(steps)
    k = np.arange(-t_max, t_max + 1)
    total = np.zeros(len(steps))
    for h, c, init, wt in zip(problem.h, problem.c, problem.init_sq, problem.weight,
                              strict=True):  # fmt: skip
        theta = math.sqrt(init) * x[:, None] + lr * k[None, :]  # (nodes, lattice)
        down = stats.norm.cdf(h * theta / math.sqrt(c / batch))  # P(sign g > 0)
        prob = np.zeros_like(theta)
        prob[:, t_max] = 1.0
        m2 = {}
        for t in range(t_max + 1):
            if t in steps:
                m2[t] = float(w @ (prob * theta**2).sum(axis=1))
            new = np.zeros_like(prob)
            new[:, :-1] += (prob * down)[:, 1:]  # theta - lr
            new[:, 1:] += (prob * (1.0 - down))[:, :-1]  # theta + lr
            prob = new
        total += 0.5 * wt * h * np.array([m2[t] for t in steps])
    return total


def test_sign_limit_is_sign_sgd():
    problem = small_problem(4)
    lr = 0.05
    adam = Adam(lr, beta1=0.0, beta2=1e-12, eps=1e-14)
    steps = [0, 1, 3, 10, 25, 50]
    (cv,) = adam_curves(problem, [adam], 2, steps, replicas=4000, seed=3,
                        device="cpu")  # fmt: skip
    exact = sign_sgd_loss(problem, lr, 2, steps)
    assert np.all(np.abs(cv.mean - exact) <= MC_SIGMAS * cv.stderr)
    # and it is not SGD at a matched rate (power check)
    sgd = nqm.expected_loss(problem, nqm.Optimizer(lr), 2, steps)
    assert np.any(np.abs(cv.mean - sgd) > MC_SIGMAS * cv.stderr)


def _coverage_runs(target, level, experiments=400, replicas=100):
    problem = nqm.NQMProblem.power_law(20)
    lr, batch = 0.4, 2
    opt = nqm.Optimizer(lr)
    s_true = nqm.steps_to_target(problem, opt, batch, target)
    rec = np.arange(2 * s_true + 5)
    t_true = first_crossing(rec, nqm.expected_loss(problem, opt, batch, rec), target)
    adam = Adam(lr * BIG_EPS, beta1=0.0, eps=BIG_EPS)
    curves = adam_curves(problem, [adam] * experiments, batch, rec,
                         replicas=replicas, seed=11, device="cpu")  # fmt: skip
    ests = [c.steps_to_target(target, level) for c in curves]
    cont = np.mean([e.crossing_low <= t_true <= e.crossing_high for e in ests])
    integer = np.mean([e.ci_low <= s_true <= e.ci_high for e in ests])
    return cont, integer


@pytest.mark.parametrize("level", [0.8, 0.95])
def test_confidence_intervals_cover_at_nominal_rate(level):
    """400 independent experiments of 100 replicas each (one batched run): on a
    steep stretch of the curve the interval for the interpolated crossing covers
    at the nominal rate (within binomial error), and the integer interval at
    least at it."""
    n = 400
    slack = COVERAGE_SIGMAS * math.sqrt(level * (1 - level) / n)
    cont, integer = _coverage_runs(0.6, level, n)
    assert abs(cont - level) <= slack
    assert integer >= level - slack
    # where the curve flattens the intervals are valid but conservative
    cont, integer = _coverage_runs(0.3, level, n)
    assert cont >= level - slack and integer >= level - slack


def test_estimate_fields_written_out():
    """A hand-made curve: crossing points and bands by hand."""
    curve = nqm.adam.AdamCurve(
        Adam(1.0),
        steps=np.array([0, 1, 2, 4, 8]),
        mean=np.array([5.0, 3.0, 2.0, 1.0, 0.5]),
        stderr=np.array([0.0, 0.5, 0.5, 0.25, 0.1]),
        replicas=10,
    )
    z = stats.norm.ppf(0.975)
    est = curve.steps_to_target(1.5, 0.95)
    assert est.steps == 4 and est.resolution_steps == 2
    # lower band 2 - 0.98 <= 1.5 first at step 2: the crossing may be after 1
    assert est.ci_low == 2
    # upper band at 4 is 1 + 0.49 < 1.5, at 2 it is 2.98: last above is 2 -> 4
    assert est.ci_high == 4
    assert est.crossing == pytest.approx(2 + (2.0 - 1.5) / (2.0 - 1.0) * 2)
    lo = 3.0 - z * 0.5
    assert est.crossing_low == pytest.approx(1 + (lo - 1.5) / (lo - (2.0 - z * 0.5)))
    assert curve.steps_to_target(0.1).steps == math.inf


def test_record_steps():
    r = record_steps(1000, 1 / 16)
    assert r[0] == 0 and r[-1] == 1000
    np.testing.assert_array_equal(r[:17], np.arange(17))
    ratios = r[17:] / r[16:-1]
    assert np.all(ratios <= 1 + 1 / 16 + 1 / 16)  # rounding adds at most 1/16
    assert record_steps(5).tolist() == [0, 1, 2, 3, 4, 5]


def test_adam_steps_to_target_ci_covers_exact_in_sgd_limit():
    problem = small_problem()
    adam = Adam(0.5 * BIG_EPS, beta1=0.0, eps=BIG_EPS)
    target = 0.4
    exact = nqm.steps_to_target(problem, nqm.Optimizer(0.5), 4, target)
    est = adam_steps_to_target(problem, adam, 4, target, 200, replicas=2000,
                               seed=5, device="cpu")  # fmt: skip
    assert est.ci_low <= exact <= est.ci_high
    assert est.ci_low <= est.steps <= est.ci_high


def test_tuner_reports_fresh_estimate_near_the_grid_optimum():
    problem = small_problem()
    target, max_steps = 0.1, 400
    lrs = np.geomspace(0.05, 1.2, 7) * BIG_EPS
    res = tune_adam(problem, [1, 8], target, max_steps, lrs=lrs, beta1s=(0.0,),
                    eps=BIG_EPS, replicas=128, confirm_replicas=2000, refine=1,
                    seed=0, device="cpu")  # fmt: skip
    for r in res:
        chosen = r.adam.lr / BIG_EPS
        exact = nqm.steps_to_target(problem, nqm.Optimizer(chosen), r.batch_size,
                                    target)  # fmt: skip
        # the fresh replicas' interval holds the chosen setting's exact steps
        assert r.estimate.ci_low <= exact <= r.estimate.ci_high
        grid_best = min(
            nqm.steps_to_target(
                problem, nqm.Optimizer(a / BIG_EPS), r.batch_size, target
            )  # fmt: skip
            for a in lrs
        )
        # selected on noisy replicas: near the best of the grid, not always on it
        assert exact <= 1.15 * grid_best + 2
    assert res[1].estimate.steps < res[0].estimate.steps  # a larger batch helps


@pytest.mark.parametrize(
    ("build", "param"),
    [
        (lambda: Adam(0.0), "lr"),
        (lambda: Adam(1.0, beta1=1.0), "beta1"),
        (lambda: Adam(1.0, beta2=-0.1), "beta2"),
        (lambda: Adam(1.0, eps=-1.0), "eps"),
        (lambda: adam_curves(small_problem(), [], 1, [1]), "configs"),
        (lambda: adam_curves(small_problem(), [Adam(1.0)], 0, [1]), "batch_size"),
        (
            lambda: adam_curves(small_problem(), [Adam(1.0)], 1, [1], replicas=1),
            "replicas",
        ),  # fmt: skip
        (
            lambda: adam_curves(small_problem(), [Adam(1.0)], 1, [1], noise="rotated"),
            "noise",
        ),  # fmt: skip
        (lambda: record_steps(0), "max_steps"),
        (
            lambda: (
                Adam(1.0)
                and nqm.adam.AdamCurve(
                    Adam(1.0), np.arange(2), np.ones(2), np.ones(2), 2
                ).steps_to_target(1.0, level=1.0)
            ),
            "level",
        ),  # fmt: skip
    ],
)
def test_bad_arguments_are_rejected(build, param):
    with pytest.raises(ValueError, match=param):
        build()
