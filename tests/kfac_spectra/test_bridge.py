"""Tests for kfac_spectra.bridge: the NQM of a linear-Gaussian model.

Model: y = w*^T x + eps with x ~ N(0, Sigma), eps ~ N(0, sigma^2), fitted by a
bias-free ``nn.Linear(d, 1)`` under the per-example loss (f - y)^2 (the unit-scale
MSE of ``kfac_spectra.gradient_stats``). Then, exactly,

* H = E[2 x x^T] = 2 Sigma (the GGN is the Hessian), so the single Kronecker
  block is exact and its eigen-directions are those of Sigma: h_i = 2 lambda_i;
* at w = w*, g = -2 eps x, so C = Cov(g) = 4 sigma^2 Sigma: c_i = 4 sigma^2
  lambda_i, co-diagonal with H (sigma^2 = 0.3 makes C != H, so swapping the two
  would fail).

One extra input feature is identically zero: its direction has h = 0 and must be
dropped and counted.

Statistical tolerance (N examples, all checks at ``Z_SCORE`` standard errors, so
a false failure has probability < 1e-5 over all ten checks):

* h_i is twice the i-th eigenvalue of the sample second moment (the factor and
  the measurement use the same sample). For Gaussian data and distinct
  eigenvalues its relative standard deviation is sqrt(2/N) (Anderson 1963).
* c_i is a sample variance of z = -2 eps (v^T x), a product of two independent
  centred Gaussians, whose kurtosis is 3 * 3 = 9: the relative standard deviation
  of a sample second moment is sqrt((kurtosis - 1)/N) = sqrt(8/N).

The initial second moment (v^T (theta_s - theta_T))^2 is checked against an
independent float64 numpy eigendecomposition of the same sample (exact up to
round-off).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kfac_spectra import estimate_nqm  # the documented entry point
from kfac_spectra.bridge import measure_nqm
from kfac_spectra.train import collect_checkpoint

N = 20_000
EIGENVALUES = np.array([4.0, 2.0, 1.0, 0.5, 0.25])
NOISE_VAR = 0.3
Z_SCORE = 5.0
H_RTOL = Z_SCORE * math.sqrt(2.0 / N)
C_RTOL = Z_SCORE * math.sqrt(8.0 / N)
EXACT_RTOL = 1e-8


def _linear_gaussian(tmp_path):
    rng = np.random.default_rng(0)
    d = EIGENVALUES.size
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    sigma_half = q * np.sqrt(EIGENVALUES)
    x = np.zeros((N, d + 1))
    x[:, :d] = rng.standard_normal((N, d)) @ sigma_half.T  # last feature is 0
    w_star = np.append(rng.standard_normal(d), 0.7)
    y = x @ w_star + math.sqrt(NOISE_VAR) * rng.standard_normal(N)
    delta = rng.standard_normal(d + 1)

    model = nn.Linear(d + 1, 1, bias=False).double()
    inputs = torch.from_numpy(x)
    targets = torch.from_numpy(y)[:, None]
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(w_star)[None])
    collect_checkpoint(
        tmp_path, 0, model, inputs, targets, loss="mse", fisher_type="type2"
    )
    with torch.no_grad():
        model.weight.add_(torch.from_numpy(delta)[None])
    collect_checkpoint(
        tmp_path, 10, model, inputs, targets, loss="mse", fisher_type="type2"
    )
    return x, y, w_star, delta


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("linear_gaussian")
    return path, _linear_gaussian(path)


def test_recovers_h_and_c_of_linear_gaussian(linear_run):
    path, _ = linear_run
    estimate = measure_nqm(path, 0, final_step=10)
    problem = estimate.problem
    assert estimate.num_directions == EIGENVALUES.size + 1
    assert estimate.num_dropped == 1
    assert problem.n_modes == EIGENVALUES.size
    np.testing.assert_allclose(problem.h, 2.0 * EIGENVALUES, rtol=H_RTOL)
    np.testing.assert_allclose(problem.c, 4.0 * NOISE_VAR * EIGENVALUES, rtol=C_RTOL)
    # the two are distinguishable at this tolerance: C = 0.6 H, not H
    assert np.all(np.abs(problem.c / problem.h - 1.0) > 2 * C_RTOL)


def test_init_sq_is_projected_distance_to_final(linear_run):
    path, (x, y, w_star, delta) = linear_run
    problem = estimate_nqm(path, 0, final_step=10)
    values, vectors = np.linalg.eigh(x.T @ x / N)
    order = np.argsort(values)[::-1][: EIGENVALUES.size]
    expected = np.square(vectors[:, order].T @ (-delta))
    np.testing.assert_allclose(problem.init_sq, expected, rtol=EXACT_RTOL, atol=1e-12)
    # at the final step itself the distance is zero
    assert np.all(estimate_nqm(path, 10, final_step=10).init_sq < 1e-24)


def test_c_matches_brute_force_per_example_gradients(linear_run):
    """Exact finite-sample oracle: variance of v^T g_n with g_n = 2 (w^T x - y) x."""
    path, (x, y, w_star, delta) = linear_run
    problem = estimate_nqm(path, 0, final_step=10)
    values, vectors = np.linalg.eigh(x.T @ x / N)
    order = np.argsort(values)[::-1][: EIGENVALUES.size]
    grads = 2.0 * (x @ w_star - y)[:, None] * x
    z = grads @ vectors[:, order]
    np.testing.assert_allclose(problem.c, z.var(axis=0, ddof=1), rtol=EXACT_RTOL)
    np.testing.assert_allclose(problem.h, 2.0 * values[order], rtol=EXACT_RTOL)


def test_problem_file_round_trip(linear_run, tmp_path):
    from nqm import NQMProblem

    path, _ = linear_run
    problem = estimate_nqm(path, 0, final_step=10)
    problem.save(tmp_path / "p.npz")
    loaded = NQMProblem.load(tmp_path / "p.npz")
    for key in ("h", "c", "init_sq", "weight"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(problem, key))


def test_bad_arguments(linear_run):
    path, _ = linear_run
    with pytest.raises(ValueError, match="relative_floor"):
        measure_nqm(path, 0, final_step=10, relative_floor=1.5)
    with pytest.raises(ValueError, match="step"):
        measure_nqm(path, 5, final_step=10)
    with pytest.raises(ValueError, match="step"):
        measure_nqm(path, 0, final_step=7)
    with pytest.raises(ValueError, match="run_dir"):
        measure_nqm(path, 0)  # no run manifest: final step unknown
