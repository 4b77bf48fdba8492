"""Closed forms of Theorems 1 and 2, the SGD risk, the claims and preconditioning."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from analysis.symbolic.claims import critical_damping, effective_rate_series
from analysis.symbolic.numeric import Quantity, second_moment
from analysis.symbolic.preconditioning import (
    preconditioned_equivalence,
    preconditioned_sgd_risk,
    transformed_problem,
)
from analysis.symbolic.recursions import Method, second_moment_system, update_rule
from analysis.symbolic.symbols import A0, B, alpha, beta, c, gamma, h, k, p, r1, r2, t
from analysis.symbolic.theorems import (
    iterate_second_moments,
    loss_component,
    noise_solution,
    noise_sum,
    roots,
    sgd_second_moment,
    sgd_steady_state,
    signed_noise_root,
)
from analysis.symbolic.ztransform import Recurrence, is_zero, satisfies_recurrence

#: Closed form (complex roots, float64) vs exact rational iteration.
CLOSED_RTOL = 1e-9
#: Appendix E.3: normalised transients of momentum and SGD at the effective rate
#: (alpha h = 5e-4) differ by less than this anywhere on the curve.
E3_ATOL = 2e-3
TWO_STATE = [Method.MOMENTUM, Method.EMA]


@pytest.mark.parametrize("method", TWO_STATE)
def test_noise_sum_is_the_fixed_point_of_the_second_moment_system(method):
    trans, noise, _ = second_moment_system(update_rule(method))
    fixed = (sp.eye(3) - trans).LUsolve(noise)
    j = loss_component(method)
    assert is_zero(fixed[j] - noise_sum(method)[1])


def test_steady_states_have_the_known_sgd_limits():
    # beta -> 0 and gamma -> 0 both reduce to SGD.
    sgd = sgd_steady_state()
    assert is_zero(sgd - alpha * c / (B * h * (2 - alpha * h)))
    assert is_zero(noise_sum(Method.MOMENTUM)[1].subs(beta, 0) - sgd)
    assert is_zero(noise_sum(Method.EMA)[1].subs(gamma, 0) - sgd)


@pytest.mark.parametrize("method", TWO_STATE)
def test_noise_root_solution_solves_its_recurrence(method):
    sol = noise_solution(method)
    a_root, b_root = roots(method)
    rec = sol.recurrence
    closed = sol.closed.subs({r1: a_root, r2: b_root})
    # numeric: closed form vs the components of M**(k-1) q_1
    vals = {alpha: 0.3, beta: 0.5, gamma: 0.4, h: 1.1, c: 2.0, B: 3.0}
    mat = np.array(update_rule(method).transition.subs(vals), dtype=float)
    q = np.array(signed_noise_root(method).subs(vals), dtype=float)[:, 0]
    j = loss_component(method)
    for kk in range(1, 8):
        want = (np.linalg.matrix_power(mat, kk - 1) @ q)[j]
        got = complex(sp.N(closed.subs(vals).subs(k, kk)))
        assert abs(got - want) < 1e-12
    assert rec.y0 == 0
    in_roots = Recurrence(r1 + r2, -r1 * r2, rec.y0, rec.y1)
    assert satisfies_recurrence(sol.closed, in_roots)


def test_signed_noise_root_matches_paper_sign():
    assert is_zero(signed_noise_root(Method.MOMENTUM)[0] - sp.sqrt(alpha**2 * c / B))


def _random_setting(rng, method):
    while True:
        lr, hv = rng.uniform(0.05, 0.9), rng.uniform(0.2, 1.5)
        coef = rng.uniform(0.05, 0.95)
        if method is Method.MOMENTUM:
            crit = (1 - np.sqrt(lr * hv)) ** 2 if lr * hv < 1 else 2.0
            if abs(coef - crit) > 0.05 and lr * hv < 2 * (1 + coef):
                return lr, coef, hv
        elif abs(coef - (1 - lr * hv)) > 0.05:
            return lr, coef, hv


@pytest.mark.parametrize("method", TWO_STATE)
def test_exact_closed_form_equals_iteration_and_bound_dominates(method):
    rng = np.random.default_rng(11)
    steps = 6
    trans, noise, _ = second_moment_system(update_rule(method))
    j = loss_component(method)
    coef_sym = gamma if method is Method.EMA else beta
    system = sp.lambdify((alpha, coef_sym, h, c, B), (trans, noise), "numpy")
    v0 = np.array([float(x) for x in iterate_second_moments(method, 0)[0].subs(A0, 1)])
    for _ in range(4):
        lr, coef, hv = _random_setting(rng, method)
        cv, bsz, init = rng.uniform(0.1, 2.0), float(rng.integers(1, 32)), 1.7
        t_num, n_num = (np.array(x, dtype=float) for x in system(lr, coef, hv, cv, bsz))
        vec, want = v0 * init, []
        for _ in range(steps + 1):
            want.append(vec[j])
            vec = t_num @ vec + n_num[:, 0]
        ts = np.arange(steps + 1)
        args = (lr, coef, hv, cv, bsz, init, ts)
        exact = second_moment(method, Quantity.EXACT, *args)
        bnd = second_moment(method, Quantity.BOUND, *args)
        np.testing.assert_allclose(exact, want, rtol=CLOSED_RTOL)
        gap = bnd - exact
        assert np.all(gap > 0), "the bound must be strict at finite t when c > 0"
        assert np.all(np.diff(gap) < 0), "the gap (noise tail) shrinks with t"
        # noise-free: the transient term is exact
        trans = second_moment(
            method, Quantity.TRANSIENT, lr, coef, hv, 0.0, bsz, init, ts
        )
        nfree = second_moment(method, Quantity.EXACT, lr, coef, hv, 0.0, bsz, init, ts)
        np.testing.assert_allclose(trans, nfree, rtol=CLOSED_RTOL)


def test_sgd_second_moment_is_the_stated_formula():
    rho = (1 - alpha * h) ** 2
    stated = rho**t * A0 + alpha**2 * c / B * (1 - rho**t) / (1 - rho)
    assert is_zero(sgd_second_moment() - stated)
    moments = [A0]
    for _ in range(3):
        moments.append(rho * moments[-1] + alpha**2 * c / B)
    for tt, m in enumerate(moments):
        assert is_zero(sgd_second_moment().subs(t, tt) - m)


def test_critical_damping_claim():
    crit = critical_damping()
    assert is_zero(sp.expand(crit.beta_star - (1 - sp.sqrt(alpha * h)) ** 2))
    assert crit.all_equal_beta and crit.eigenvalues_are_lifted
    assert is_zero(crit.derivative_gap - 4 * alpha * h)


def test_critical_momentum_minimises_the_spectral_radius():
    trans, _, _ = second_moment_system(update_rule(Method.MOMENTUM))
    f = sp.lambdify((alpha, beta, h), trans, "numpy")
    for ah in (0.01, 0.1, 0.5):
        grid = np.linspace(0.0, 0.99, 991)
        radius = [
            np.max(np.abs(np.linalg.eigvals(np.array(f(ah, b, 1.0))))) for b in grid
        ]
        best = grid[int(np.argmin(radius))]
        assert abs(best - (1 - np.sqrt(ah)) ** 2) <= 1.5e-3
        assert np.min(radius) == pytest.approx((1 - np.sqrt(ah)) ** 2, abs=2e-3)


def test_effective_rate_series():
    ser = effective_rate_series(3)
    assert ser.first_order_agrees()
    gap2 = sp.expand(ser.slow_root - ser.sgd_factor).coeff(alpha, 2)
    assert is_zero(gap2 + beta * h**2 / (1 - beta) ** 3)
    assert is_zero(ser.steady_ratio.coeff(alpha, 1) + beta * h / (1 - beta**2))
    assert ser.fast_root_limit == beta
    with pytest.raises(ValueError, match="order"):
        effective_rate_series(1)


def test_effective_rate_numerically_as_in_appendix_e3():
    """alpha h = 5e-4: normalised transients of momentum and SGD(alpha/(1-beta))."""
    hv, lr_h = 1.0, 5e-4
    ts = np.arange(0, 40_001, 500)
    for mom in (0.5, 0.9, 0.99):
        m = second_moment("momentum", "transient", lr_h, mom, hv, 0.0, 1.0, 1.0, ts)
        s = second_moment(
            "sgd", "transient", lr_h / (1 - mom), 0.0, hv, 0.0, 1.0, 1.0, ts
        )
        assert np.max(np.abs(m - s)) < E3_ATOL


@pytest.mark.parametrize("method", list(Method))
def test_preconditioning_is_a_transformed_problem(method):
    eq = preconditioned_equivalence(method)
    assert eq.holds


def test_preconditioned_risk_keeps_the_loss_weight_h():
    risk_t, steady = preconditioned_sgd_risk()
    assert is_zero(risk_t.subs(t, 0) - h / 2 * A0)
    expected = alpha * c * h ** (-p) / (2 * B * (2 - alpha * h ** (1 - p)))
    assert is_zero(steady - expected)
    curv, noise, weight = transformed_problem()
    assert (curv, noise, weight) == (h ** (1 - p), c * h ** (-2 * p), h)


def test_two_state_helpers_reject_sgd():
    with pytest.raises(ValueError, match="method"):
        loss_component(Method.SGD)


def test_numeric_rejects_bad_options():
    with pytest.raises(ValueError, match="method"):
        second_moment("adam", "exact", 0.1, 0.0, 1.0, 1.0, 1.0, 1.0, 3)
    with pytest.raises(ValueError, match="quantity"):
        second_moment("sgd", "median", 0.1, 0.0, 1.0, 1.0, 1.0, 1.0, 3)
    with pytest.raises(ValueError, match="steps"):
        second_moment("sgd", "exact", 0.1, 0.0, 1.0, 1.0, 1.0, 1.0, -1)
