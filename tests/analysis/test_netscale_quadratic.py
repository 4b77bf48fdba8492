"""The exact workload: the NQM written as a network, run through real trials.

Its mini-batch gradient is exactly H theta + eps with eps ~ N(0, C/B) independent
of theta (see analysis.netscale.quadratic), so

* the K-seed mean curve estimates the exact expected loss of
  :func:`nqm.expected_loss`, and its first crossing must equal
  :func:`nqm.steps_to_target` within the Monte-Carlo error of the mean;
* each single run's crossing is a first-passage time, whose law comes from an
  independent float64 simulation of the NQM's SGD recursion.
"""

import math

import numpy as np
import pytest
import torch
from netscale_workloads import QUAD_PROBLEM
from scipy import stats

import nqm
from analysis.netscale.optimizers import OptimizerName
from analysis.netscale.quadratic import NoisyQuadraticNet, quadratic_dataset
from analysis.netscale.results import mean_curve_steps, steps_at
from analysis.netscale.trial import TrialSpec, run_trial
from analysis.netscale.workload import WorkloadSpec, loss_value

LR, TARGET, SEEDS, MAX_STEPS = 0.5, 0.3, 16, 150
#: Monte-Carlo half-width of the mean curve, in standard errors.
MEAN_Z = 4.5
#: Significance below which the single-run crossings reject the oracle's law.
KS_ALPHA = 1e-3
#: Replicas of the independent first-passage simulation.
ORACLE_REPLICAS = 4000

WORKLOAD = WorkloadSpec(
    model="netscale_workloads:quadratic_model",
    data="netscale_workloads:quadratic_data",
    loss="mse",
    metric="test_loss",
    target=TARGET,
)


def test_gradient_is_exactly_h_theta_plus_the_batch_noise():
    problem = nqm.NQMProblem.power_law(7)
    data = quadratic_dataset(problem, 32, seed=4)
    model = NoisyQuadraticNet(problem, torch.Generator().manual_seed(0))
    idx = torch.tensor([3, 9, 10, 30])
    loss = loss_value(WORKLOAD.loss, model(data.x_train[idx]), data.y_train[idx])
    (grad,) = torch.autograd.grad(loss, [model.theta])
    h = torch.tensor(np.array(problem.h))
    d = h.numel()
    s = torch.sqrt(d * h / 2)
    z = -(2 * s / d) * data.y_train[idx]  # the examples' noise draws
    expect = h * model.theta.detach() + z.mean(0)
    torch.testing.assert_close(grad, expect, rtol=1e-12, atol=1e-14)
    test_loss = loss_value(WORKLOAD.loss, model(data.x_test), data.y_test)
    nqm_loss = 0.5 * (h * model.theta.detach() ** 2).sum()
    torch.testing.assert_close(test_loss, nqm_loss, rtol=1e-12, atol=0)


def _runs(batch_size):
    return [
        run_trial(
            TrialSpec(
                workload=WORKLOAD,
                optimizer=OptimizerName.SGD,
                batch_size=batch_size,
                trial=0,
                hparams=(("lr", LR),),
                seed=0,
                max_steps=MAX_STEPS,
                eval_every=1,
                repeat=r,
                stop_at_target=False,
            )
        )
        for r in range(1, SEEDS + 1)
    ]


def _first_passage_oracle(batch_size, rng):
    """Independent float64 simulation of theta <- theta - lr (h theta + eps)."""
    h = np.array(QUAD_PROBLEM.h)
    c = np.array(QUAD_PROBLEM.c)
    theta = rng.standard_normal((ORACLE_REPLICAS, h.size)) * np.sqrt(
        np.array(QUAD_PROBLEM.init_sq)
    )
    passage = np.full(ORACLE_REPLICAS, np.inf)
    mean = np.empty(MAX_STEPS + 1)
    std = np.empty(MAX_STEPS + 1)
    for t in range(MAX_STEPS + 1):
        loss = 0.5 * (theta**2) @ h
        mean[t], std[t] = loss.mean(), loss.std(ddof=1)
        passage[(loss <= TARGET) & np.isinf(passage)] = t
        eps = rng.standard_normal(theta.shape) * np.sqrt(c / batch_size)
        theta = theta - LR * (h * theta + eps)
    return passage, mean, std


def _first(steps, mask):
    return float(steps[np.argmax(mask)]) if mask.any() else math.inf


@pytest.mark.parametrize("batch_size", [4, 16])
def test_mean_curve_and_single_runs_against_their_oracles(batch_size):
    runs = _runs(batch_size)
    curves = np.array([r["curve"] for r in runs], dtype=np.float64)
    steps = np.arange(MAX_STEPS + 1)
    assert runs[0]["curve_steps"] == list(steps)
    exact = nqm.expected_loss(QUAD_PROBLEM, nqm.Optimizer(lr=LR), batch_size, steps)
    mean = curves.mean(0)
    passage, oracle_mean, oracle_std = _first_passage_oracle(
        batch_size, np.random.default_rng(1)
    )
    # the oracle itself follows the exact expected loss
    oracle_se = oracle_std / math.sqrt(ORACLE_REPLICAS)
    assert np.all(np.abs(oracle_mean - exact) <= MEAN_Z * oracle_se)
    # the standard error of a K-seed mean (the spread from the oracle's replicas:
    # K = 16 skewed samples estimate it poorly)
    se = oracle_std / math.sqrt(SEEDS)
    # the whole mean curve is the exact expected loss within its MC error
    assert np.all(np.abs(mean - exact) <= MEAN_Z * se + 1e-12)
    # its first crossing is nqm.steps_to_target, within the MC error of the mean
    t_star = nqm.steps_to_target(QUAD_PROBLEM, nqm.Optimizer(lr=LR), batch_size, TARGET)
    t_hat = mean_curve_steps(runs)
    t_lo = _first(steps, exact - MEAN_Z * se <= TARGET)
    t_hi = _first(steps, exact + MEAN_Z * se <= TARGET)  # inf: past the budget
    assert t_lo <= t_star <= t_hi
    assert t_lo <= t_hat <= t_hi, (t_hat, t_star, t_lo, t_hi)
    # single runs: first-passage times with the oracle's law
    single = np.array([steps_at(r) for r in runs])
    assert np.all(np.isfinite(single)) and np.all(np.isfinite(passage))
    assert stats.ks_2samp(single, passage).pvalue > KS_ALPHA
    # first passage comes before the mean crossing on average
    assert np.median(single) <= t_hat
