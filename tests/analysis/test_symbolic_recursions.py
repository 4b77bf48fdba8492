"""Moment recursions derived with sympy vs the literal update rules (numpy oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from analysis.symbolic.recursions import (
    Method,
    covariance_recursion,
    mean_recursion,
    moment_symbols,
    quadratic_lift,
    second_moment_recursion,
    second_moment_system,
    update_rule,
)
from analysis.symbolic.symbols import B, alpha, beta, c, gamma, h, p

#: Float64 agreement of two exact computations of the same moments.
EXACT_RTOL = 1e-12
#: Monte-Carlo: allowed deviation in units of the standard error.
MC_SIGMAS = 6.0


def literal_step(method, state, eps, lr, coef, hv, pw):
    """One update written exactly as the task states the rules (not via sympy)."""
    theta, other = state
    g = hv * theta + eps
    d = hv ** (-pw) * g
    if method is Method.SGD:
        return np.array([theta - lr * d, 0.0 * other])
    if method is Method.MOMENTUM:
        m = coef * other + d
        return np.array([theta - lr * m, m])
    new_theta = theta - lr * d
    return np.array([new_theta, coef * other + (1 - coef) * new_theta])


def literal_matrices(method, lr, coef, hv, pw):
    """M and u read off the literal update by applying it to unit inputs."""
    n = 1 if method is Method.SGD else 2
    cols = [
        literal_step(method, np.eye(2)[j], 0.0, lr, coef, hv, pw)[:n] for j in range(n)
    ]
    mat = np.stack(cols, axis=1)
    u = literal_step(method, np.zeros(2), 1.0, lr, coef, hv, pw)[:n]
    return mat, u


def _params(rng):
    return {
        alpha: rng.uniform(0.05, 0.8),
        beta: rng.uniform(0.1, 0.9),
        gamma: rng.uniform(0.1, 0.9),
        h: rng.uniform(0.2, 2.0),
        c: rng.uniform(0.1, 3.0),
        B: float(rng.integers(1, 64)),
        p: rng.uniform(0.0, 1.0),
    }


@pytest.mark.parametrize("method", list(Method))
def test_recursions_match_literal_update(method):
    rng = np.random.default_rng(17)
    upd = update_rule(method, p)
    sym = moment_symbols(upd.state)
    n = len(upd.state)
    for _ in range(3):
        par = _params(rng)
        coef = par[gamma] if method is Method.EMA else par[beta]
        mat, u = literal_matrices(method, par[alpha], coef, par[h], par[p])
        mean0 = rng.normal(size=n)
        root = rng.normal(size=(n, n))
        cov0 = root @ root.T
        noise_var = par[c] / par[B]
        mean1 = mat @ mean0
        cov1 = mat @ cov0 @ mat.T + noise_var * np.outer(u, u)
        raw0 = cov0 + np.outer(mean0, mean0)
        raw1 = cov1 + np.outer(mean1, mean1)
        vals = dict(par)
        vals.update({sym.mean[i]: mean0[i] for i in range(n)})
        for i in range(n):
            for j in range(n):
                vals[sym.cov[i, j]] = cov0[i, j]
                vals[sym.second[i, j]] = raw0[i, j]
        got_mean = [float(e.subs(vals)) for e in mean_recursion(upd)]
        got_cov = np.array(covariance_recursion(upd).subs(vals), dtype=float)
        got_raw = np.array(second_moment_recursion(upd).subs(vals), dtype=float)
        np.testing.assert_allclose(got_mean, mean1, rtol=EXACT_RTOL, atol=1e-13)
        np.testing.assert_allclose(got_cov, cov1, rtol=EXACT_RTOL, atol=1e-13)
        np.testing.assert_allclose(got_raw, raw1, rtol=EXACT_RTOL, atol=1e-13)


@pytest.mark.parametrize("method", [Method.MOMENTUM, Method.EMA])
def test_recursions_match_monte_carlo(method):
    """Sampled trajectories of the literal rules agree with the derived moments."""
    rng = np.random.default_rng(4)
    lr, coef, hv, cv, bsz, pw = 0.3, 0.6, 0.8, 1.5, 4.0, 0.5
    n_samples, steps = 200_000, 5
    theta = rng.normal(1.0, 0.5, size=n_samples)
    other = np.zeros(n_samples) if method is Method.MOMENTUM else theta.copy()
    upd = update_rule(method, p)
    trans, noise, v = second_moment_system(upd)
    sub = {alpha: lr, beta: coef, gamma: coef, h: hv, c: cv, B: bsz, p: pw}
    t_num = np.array(trans.subs(sub), dtype=float)
    n_num = np.array(noise.subs(sub), dtype=float)[:, 0]
    vec = np.array(
        [np.mean(theta**2), np.mean(other**2), np.mean(theta * other)], dtype=float
    )
    for _ in range(steps):
        eps = rng.normal(0.0, np.sqrt(cv / bsz), size=n_samples)
        theta, other = literal_step(method, (theta, other), eps, lr, coef, hv, pw)
        vec = t_num @ vec + n_num
    samples = np.stack([theta**2, other**2, theta * other])
    err = np.abs(samples.mean(axis=1) - vec)
    stderr = samples.std(axis=1) / np.sqrt(n_samples)
    assert np.all(err < MC_SIGMAS * stderr), (err, stderr)


@pytest.mark.parametrize("method", [Method.MOMENTUM, Method.EMA, Method.SGD])
def test_second_moment_system_is_quadratic_lift(method):
    upd = update_rule(method)
    trans, noise, _ = second_moment_system(upd)
    assert (
        (trans - quadratic_lift(upd.transition)).applyfunc(sp.simplify).is_zero_matrix
    )
    u = upd.noise_gain
    # order of the lift basis: squares first, then the cross term
    lifted = [u[i] ** 2 for i in range(u.rows)] + [
        u[i] * u[j] for i in range(u.rows) for j in range(i + 1, u.rows)
    ]
    assert (
        (noise - upd.noise_var * sp.Matrix(lifted))
        .applyfunc(sp.simplify)
        .is_zero_matrix
    )


def test_quadratic_lift_eigenvalues_are_pairwise_products():
    rng = np.random.default_rng(3)
    for n in (2, 3):
        mat = rng.normal(size=(n, n))
        lifted = np.array(quadratic_lift(sp.Matrix(mat)), dtype=float)
        ev = np.linalg.eigvals(mat)
        expected = [ev[i] * ev[j] for i in range(n) for j in range(i, n)]
        got = np.linalg.eigvals(lifted)
        np.testing.assert_allclose(
            np.sort_complex(got), np.sort_complex(np.array(expected)), atol=1e-10
        )


def test_momentum_transition_matrix_is_the_paper_form():
    """The mean matrix of heavy ball: [[1 - alpha h, -alpha beta], [h, beta]]."""
    mat = update_rule(Method.MOMENTUM).transition
    assert mat == sp.Matrix([[1 - alpha * h, -alpha * beta], [h, beta]])


def test_update_rule_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        update_rule("adam")


def test_quadratic_lift_rejects_non_square():
    with pytest.raises(ValueError, match="mat"):
        quadratic_lift(sp.zeros(2, 3))
