"""First-passage times of the NQM (`nqm.first_passage_steps`) against exact laws.

Oracles:

* noise-free one-mode SGD: :math:`L_t = \\tfrac12 h\\theta_0^2 (1-\\alpha h)^{2t}`
  with :math:`\\theta_0 \\sim N(0, s)`, so
  :math:`P(\\tau \\le t) = P(|\\theta_0| \\le \\sqrt{2L^*/h}\\,|1-\\alpha h|^{-t})`,
  an exact normal probability; the empirical CDF must lie within the
  Dvoretzky-Kiefer-Wolfowitz band;
* with noise, momentum and averaging: an independent float64 NumPy simulation of
  the recursion, compared by a two-sample Kolmogorov-Smirnov test;
* a monotone (noise-free) curve checked on a coarser grid crosses at the first
  grid point at or after its fine-grid crossing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import nqm

#: DKW band: P(sup |F_n - F| > eps) <= 2 exp(-2 n eps^2) = DKW_DELTA.
DKW_DELTA = 1e-4
#: Significance below which a KS test rejects the independent oracle's law.
KS_ALPHA = 1e-3
REPLICAS = 3000


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_noise_free_single_mode_matches_the_exact_law():
    h, s, lr, target, t_max = 2.0, 1.5, 0.1, 1e-3, 200
    problem = nqm.NQMProblem(h=[h], c=[0.0], init_sq=[s])
    tau = nqm.first_passage_steps(
        problem, nqm.Optimizer(lr=lr), 1, target, t_max, REPLICAS, _gen(0)
    )
    assert tau.dtype == np.float64 and tau.shape == (REPLICAS,)
    t = np.arange(t_max + 1)
    bound = math.sqrt(2 * target / h) / abs(1 - lr * h) ** t
    exact_cdf = 2 * stats.norm.cdf(bound / math.sqrt(s)) - 1
    empirical = (tau[None, :] <= t[:, None]).mean(axis=1)
    eps = math.sqrt(math.log(2 / DKW_DELTA) / (2 * REPLICAS))
    assert np.max(np.abs(empirical - exact_cdf)) <= eps
    # every replica crosses well within the budget here
    assert np.all(np.isfinite(tau))


def _numpy_oracle(problem, lr, beta, gamma, batch, target, t_max, rng):
    h, c = np.array(problem.h), np.array(problem.c)
    theta = rng.standard_normal((REPLICAS, h.size)) * np.sqrt(np.array(problem.init_sq))
    mom = np.zeros_like(theta)
    avg = theta.copy()
    tau = np.full(REPLICAS, np.inf)
    for step in range(t_max + 1):
        shown = avg if gamma > 0 else theta
        loss = 0.5 * (shown**2) @ h
        tau[(loss <= target) & np.isinf(tau)] = step
        eps = rng.standard_normal(theta.shape) * np.sqrt(c / batch)
        mom = beta * mom + h * theta + eps
        theta = theta - lr * mom
        avg = gamma * avg + (1 - gamma) * theta
    return tau


@pytest.mark.parametrize(
    "lr,beta,gamma", [(0.5, 0.0, 0.0), (0.2, 0.6, 0.0), (0.5, 0.0, 0.8)]
)
def test_noisy_first_passage_matches_an_independent_simulation(lr, beta, gamma):
    problem = nqm.NQMProblem.power_law(40)
    batch, target, t_max = 4, 0.4, 120
    opt = nqm.Optimizer(lr=lr, momentum=beta, ema=gamma)
    tau = nqm.first_passage_steps(problem, opt, batch, target, t_max, REPLICAS, _gen(1))
    oracle = _numpy_oracle(
        problem, lr, beta, gamma, batch, target, t_max, np.random.default_rng(2)
    )
    assert np.isfinite(tau).mean() > 0.9 and np.isfinite(oracle).mean() > 0.9
    assert stats.ks_2samp(tau, oracle).pvalue > KS_ALPHA


def test_coarse_grid_of_a_monotone_curve_rounds_up():
    problem = nqm.NQMProblem(h=[1.0, 0.3], c=[0.0, 0.0], init_sq=[1.0, 2.0])
    opt, target, t_max, k = nqm.Optimizer(lr=0.5), 0.01, 97, 10
    fine = nqm.first_passage_steps(problem, opt, 1, target, t_max, 200, _gen(3))
    coarse = nqm.first_passage_steps(
        problem, opt, 1, target, t_max, 200, _gen(3), every=k
    )
    expect = np.where(np.isinf(fine), np.inf, np.minimum(np.ceil(fine / k) * k, t_max))
    np.testing.assert_array_equal(coarse, expect)


def test_same_generator_seed_same_sample():
    problem = nqm.NQMProblem.power_law(10)
    opt = nqm.Optimizer(lr=0.5)
    a = nqm.first_passage_steps(problem, opt, 2, 0.3, 50, 64, _gen(5), chunk=20)
    b = nqm.first_passage_steps(problem, opt, 2, 0.3, 50, 64, _gen(5), chunk=20)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(target=0.0), "target"),
        (dict(max_steps=-1), "max_steps"),
        (dict(replicas=0), "replicas"),
        (dict(every=0), "every"),
        (dict(generator=np.random.default_rng(0)), "generator"),
        (dict(batch_size=0), "batch"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, name):
    args = dict(
        problem=nqm.NQMProblem.power_law(5),
        optimizer=nqm.Optimizer(lr=0.5),
        batch_size=1,
        target=0.1,
        max_steps=10,
        replicas=4,
        generator=_gen(0),
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        nqm.first_passage_steps(**args)
