"""Extreme regimes of the exact dynamics against a 50-digit mpmath oracle.

Each case is checked at the level of the total expected loss, to relative
``RTOL_EXTREME``. Inputs are chosen so that the products that define a regime
(``alpha * h``, ``beta = (1 - sqrt(alpha h))^2``, ``gamma = 1 - alpha h``, a momentum
root) are exact in binary, so the regime is hit exactly rather than to rounding;
the oracle converts every float64 input exactly.
"""

from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pytest
from nqm_oracles import (
    mp_loss_pieces,
    mp_mode_terms,
    mp_mode_terms_expanded,
    mp_problem_loss,
    transition_matrix_numpy,
)

import nqm

ORACLE_DPS = 50
RTOL_EXTREME = 1e-9
#: Two 50-digit oracles of one mode agree to this (the eigen-expansion loses up
#: to about 24 digits to a gap between eigenvalues, see nqm_oracles._MIN_GAP).
ORACLE_AGREEMENT = mpmath.mpf(10) ** -20
#: float64 overflows above this; mpmath values beyond it must come back as inf.
FLOAT_MAX = np.finfo(np.float64).max


def oracle(problem, lr, beta, gamma, p, batch, steps):
    vals = mp_problem_loss(
        problem,
        lr,
        beta,
        gamma,
        p,
        batch,
        steps,
        dps=ORACLE_DPS,
    )
    return vals


def assert_matches_oracle(problem, lr, beta, gamma, p, batch, steps, rtol=RTOL_EXTREME):
    got = np.atleast_1d(
        nqm.expected_loss(problem, nqm.Optimizer(lr, beta, gamma, p), batch, steps)
    )
    want = oracle(problem, lr, beta, gamma, p, batch, steps)
    assert not np.any(np.isnan(got)), got
    for t, g, w in zip(steps, got, want, strict=True):
        if w > FLOAT_MAX:
            assert g == np.inf, (t, g, w)
        else:
            w = float(w)
            assert math.isfinite(g), (t, g, w)
            assert abs(g - w) <= rtol * abs(w), (t, g, w, abs(g / w - 1) if w else None)


def dyadic_problem(h, c=1.0, init_sq=1.0):
    return nqm.NQMProblem(h=np.asarray(h, dtype=np.float64), c=c, init_sq=init_sq)


STEPS_LONG = [1, 2, 10, 100, 10**4, 10**6, 10**9, 10**12]


# ------------------------------------------------------------ critical damping
# alpha h = 1/16 for the first mode: beta_crit = (1 - 1/4)^2 = 9/16 exactly.
CRIT_H = [1.0, 0.25, 2.0**-6, 2.0**-12]
CRIT_LR = 1.0 / 16.0
CRIT_BETA = 9.0 / 16.0


@pytest.mark.parametrize("rel", [0.0, 1e-12, -1e-12, 1e-9])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.75])  # 0.75: the double root as well
def test_critical_damping(rel, gamma):
    beta = CRIT_BETA * (1.0 + rel)
    problem = dyadic_problem(
        CRIT_H, c=[1.0, 0.5, 2.0, 1.0], init_sq=[1.0, 3.0, 0.5, 2.0]
    )
    assert_matches_oracle(
        problem, CRIT_LR, beta, gamma, 0.0, 4, [1, 2, 3, 10, 50, 100, 1000, 10**5]
    )


@pytest.mark.parametrize("gamma", [0.0, 0.75])
def test_critical_damping_noise_free_moderate_steps(gamma):
    """c = 0: the loss is the transient alone (steps kept where it is >= 1e-12)."""
    problem = dyadic_problem([1.0], c=0.0)
    assert_matches_oracle(problem, CRIT_LR, CRIT_BETA, gamma, 0.0, 1, [1, 2, 5, 20, 60])


def test_critical_damping_preconditioned():
    h = np.array([2.0**-8, 2.0**-2, 1.0])
    p = 0.5
    lr = 0.25
    # critical for the first mode in the preconditioned coordinates: s = lr h^(1/2)
    beta = (1.0 - math.sqrt(lr * 2.0**-4)) ** 2
    assert_matches_oracle(dyadic_problem(h), lr, beta, 0.3, p, 2, [1, 7, 100, 10**4])


# ------------------------------------------------------------ alpha h near 2
@pytest.mark.parametrize(
    ("beta", "gamma"), [(0.0, 0.0), (0.0, 0.9), (0.5, 0.0), (0.5, 0.6)]
)
def test_step_near_stability_limit(beta, gamma):
    """alpha h = 2 (1 + beta) - 2^-30 for the stiffest mode (eigenvalue near -1)."""
    lr = 2.0 * (1.0 + beta) - 2.0**-30
    problem = dyadic_problem([1.0, 0.5, 2.0**-20], c=[1.0, 2.0, 1.0])
    assert_matches_oracle(problem, lr, beta, gamma, 0.0, 8, STEPS_LONG)


def test_sgd_near_two_and_tiny_curvature():
    """SGD with both alpha h = 2 - 1e-9 (h = 1) and alpha h ~ 1e-8 (h = 5e-9)."""
    lr = 2.0 - 1e-9
    problem = nqm.NQMProblem(h=[1.0, 5e-9], c=[1.0, 1.0], init_sq=[1.0, 1e6])
    assert_matches_oracle(problem, lr, 0.0, 0.0, 0.0, 1, STEPS_LONG)
    assert nqm.closed_form.sgd_risk(problem, lr, 1, 10**12) == pytest.approx(
        float(oracle(problem, lr, 0.0, 0.0, 0.0, 1, [10**12])[0]),
        rel=RTOL_EXTREME,
        abs=0,
    )


# ------------------------------------------------- eight orders of magnitude of h
@pytest.mark.parametrize(
    ("beta", "gamma", "p"), list(itertools.product((0.0, 0.9), (0.0, 0.99), (0.0, 0.5)))
)
def test_wide_spectrum_long_horizon(beta, gamma, p):
    h = np.logspace(0, -8, 9)
    c = np.logspace(0, -4, 9)
    problem = nqm.NQMProblem(h=h, c=c, init_sq=np.linspace(1.0, 5.0, 9))
    lr = 0.5
    assert_matches_oracle(
        problem, lr, beta, gamma, p, 2**30, [1, 10**3, 10**6, 10**9, 10**12]
    )


@pytest.mark.parametrize("batch", [1, 2**10, 2**30])
def test_huge_batch(batch):
    problem = nqm.NQMProblem.power_law(dim=6)
    assert_matches_oracle(problem, 0.9, 0.8, 0.5, 0.5, batch, [3, 300, 10**12])


# ---------------------------------------------------- coinciding eigenvalues
def test_ema_equal_to_sgd_eigenvalue():
    """gamma = 1 - alpha h for the middle mode (lr 1/2, h 1/2, gamma 3/4)."""
    problem = dyadic_problem([1.0, 0.5, 2.0**-10])
    for rel in (0.0, 1e-12):
        assert_matches_oracle(
            problem, 0.5, 0.0, 0.75 * (1 + rel), 0.0, 2, [1, 2, 30, 1000, 10**6, 10**12]
        )


@pytest.mark.parametrize("gamma", [0.5, 0.25])
def test_ema_equal_to_a_momentum_root(gamma):
    """alpha h = 3/8, beta = 1/8: roots 1/2 and 1/4 of z^2 - (1 - s + beta) z + beta."""
    problem = dyadic_problem([1.0, 2.0**-4])
    for rel in (0.0, 1e-12):
        assert_matches_oracle(
            problem,
            0.375,
            0.125,
            gamma * (1 + rel),
            0.0,
            3,
            [1, 2, 5, 40, 10**4, 10**12],
        )


# ---------------------------------------------------------------- divergence
@pytest.mark.parametrize(
    ("beta", "gamma", "factor"),
    [
        (0.0, 0.0, 1.5),
        (0.0, 0.9, 1.01),
        (0.9, 0.0, 1.2),
        (0.5, 0.5, 2.9),
        (0.99, 0.3, 1.001),
    ],
)
def test_diverging_settings_overflow_to_inf_never_nan(beta, gamma, factor):
    problem = nqm.NQMProblem.power_law(dim=5)
    lr = factor * nqm.max_stable_lr(problem, momentum=beta)
    opt = nqm.Optimizer(lr, beta, gamma)
    assert not nqm.is_stable(problem, opt)
    steps = [1, 5, 50, 200, 500, 2000, 10**5, 10**12]
    assert_matches_oracle(problem, lr, beta, gamma, 0.0, 4, steps)
    got = nqm.expected_loss(problem, opt, [1, 2**30], steps)
    assert not np.any(np.isnan(got))
    assert np.all(got[:, -1] == np.inf)


def test_exactly_at_the_stability_limit_is_finite():
    """alpha h = 2 exactly: |eigenvalue| = 1, the noise accumulates linearly."""
    problem = dyadic_problem([1.0, 0.25])
    assert nqm.max_stable_lr(problem) == 2.0
    assert not nqm.is_stable(problem, nqm.Optimizer(2.0))
    assert_matches_oracle(problem, 2.0, 0.0, 0.0, 0.0, 1, [1, 2, 101, 10**6, 10**12])


@pytest.mark.parametrize(
    ("lr", "beta", "gamma"), [(2.0, 0.0, 0.5), (3.0, 0.5, 0.0), (3.0, 0.5, 0.5)]
)
def test_eigenvalue_minus_one_is_finite(lr, beta, gamma):
    problem = dyadic_problem([1.0, 0.25])
    assert not nqm.is_stable(problem, nqm.Optimizer(lr, beta, gamma))
    assert_matches_oracle(problem, lr, beta, gamma, 0.0, 1, [1, 2, 101, 10**6])


# ----------------------------------------------------------------- stability
def _spectral_radius(lr, h, p, beta, gamma):
    return max(
        np.max(
            np.abs(np.linalg.eigvals(transition_matrix_numpy(lr, hi, p, beta, gamma)))
        )
        for hi in h
    )


def test_is_stable_agrees_with_spectral_radius():
    rng = np.random.default_rng(2024)
    problem = nqm.NQMProblem(h=np.exp(rng.uniform(-6, 1, 12)), c=1.0)
    checked = 0
    for _ in range(300):
        beta = float(rng.choice([0.0, rng.uniform(0, 0.999)]))
        gamma = float(rng.choice([0.0, rng.uniform(0, 0.999)]))
        p = float(rng.choice([0.0, 0.5, rng.uniform(0, 1)]))
        lr = float(np.exp(rng.uniform(-3, 3)))
        rho = _spectral_radius(lr, problem.h, p, beta, gamma)
        if abs(rho - 1.0) < 1e-7:
            continue  # numpy's eigenvalues cannot decide this one
        assert nqm.is_stable(problem, nqm.Optimizer(lr, beta, gamma, p)) == (rho < 1.0)
        checked += 1
    assert checked > 250


@pytest.mark.parametrize(("beta", "p"), [(0.0, 0.0), (0.7, 0.0), (0.95, 0.5)])
def test_max_stable_lr_is_the_spectral_boundary(beta, p):
    problem = nqm.NQMProblem(h=[3.0, 0.2, 1e-3], c=1.0)
    lr = nqm.max_stable_lr(problem, momentum=beta, precond_power=p)
    assert _spectral_radius(lr * (1 - 1e-7), problem.h, p, beta, 0.0) < 1.0
    assert _spectral_radius(lr * (1 + 1e-7), problem.h, p, beta, 0.0) > 1.0


def test_is_stable_uses_the_final_lr_of_a_schedule():
    problem = nqm.NQMProblem(h=[1.0, 0.1], c=1.0)
    decaying = nqm.PiecewiseConstant(boundaries=(5,), values=(3.0, 1.0))
    assert nqm.is_stable(problem, nqm.Optimizer(decaying))
    growing = nqm.PiecewiseConstant(boundaries=(5,), values=(1.0, 3.0))
    assert not nqm.is_stable(problem, nqm.Optimizer(growing))
    assert nqm.is_stable(problem, nqm.Optimizer(nqm.LinearDecay(3.0, 0.5, 10)))
    tail = nqm.FromCallable(lambda s: 3.0 if s < 4 else 0.5, constant_after=4)
    assert nqm.is_stable(problem, nqm.Optimizer(tail))
    with pytest.raises(ValueError, match="constant_after"):
        nqm.is_stable(problem, nqm.Optimizer(lambda s: 0.5))


def test_oracle_self_check():
    """The mpmath oracle reproduces the textbook SGD formula at t = 10^12."""
    h, lr, c, t = 2.0**-30, 1.0, 3.0, 10**12
    with mpmath.workdps(ORACLE_DPS):
        lam2 = (1 - mpmath.mpf(lr) * h) ** 2
        want = h / 2 * (lam2**t + lr**2 * c * (1 - lam2**t) / (1 - lam2))
        got = oracle(dyadic_problem([h], c=c), lr, 0.0, 0.0, 0.0, 1, [t])[0]
        assert abs(got / want - 1) < mpmath.mpf(10) ** -40


# --------------------------------------------------- schedules, long horizons
PIECE_BOUNDS = (1000, 10**5, 10**8)
PIECE_LRS = (1.0, 1.0 / 16.0, 0.01, 0.001)


def _pieces(bounds, lrs, t):
    starts = (0, *bounds, t)
    return [
        (lr, min(starts[k + 1], t) - starts[k])
        for k, lr in enumerate(lrs)
        if starts[k] < t
    ]


@pytest.mark.parametrize(
    ("beta", "gamma", "p"),
    [
        (0.0, 0.0, 0.0),
        (0.9, 0.0, 0.0),
        (0.0, 0.99, 0.5),
        (0.9, 0.99, 0.5),
        (CRIT_BETA, 0.75, 0.0),  # critical damping in the second piece (lr 1/16, h 1)
    ],
)
@pytest.mark.parametrize("as_callable", [False, True])
def test_piecewise_schedule_to_huge_horizons(beta, gamma, p, as_callable):
    problem = nqm.NQMProblem(
        h=np.logspace(0, -8, 9),
        c=np.logspace(0, -4, 9),
        init_sq=np.linspace(1.0, 5.0, 9),
    )
    bounds, lrs = PIECE_BOUNDS, PIECE_LRS
    sched = nqm.PiecewiseConstant(boundaries=bounds, values=lrs)
    if as_callable:
        # a callable is evaluated at every step before its constant tail: keep it short
        bounds, lrs = (1000, 10**4), (1.0, 1.0 / 16.0, 0.001)
        table = nqm.PiecewiseConstant(boundaries=bounds, values=lrs)
        sched = nqm.FromCallable(lambda s: np.asarray(table(s)), constant_after=10**4)
    for t in (10**6, 10**12):
        got = nqm.expected_loss(problem, nqm.Optimizer(sched, beta, gamma, p), 4, t)
        want = mp_loss_pieces(
            problem.h,
            problem.c,
            problem.init_sq,
            problem.weight,
            _pieces(bounds, lrs, t),
            beta,
            gamma,
            p,
            4,
            dps=ORACLE_DPS,
        )
        assert got == pytest.approx(float(want), rel=RTOL_EXTREME, abs=0), t


def test_schedule_through_a_diverging_piece_recovers():
    """lr 3x the stability limit for 40 steps, then stable: finite, exact values."""
    problem = nqm.NQMProblem.power_law(dim=4)
    big = 3.0 * nqm.max_stable_lr(problem, momentum=0.5) * 0.99
    bounds, lrs = (40,), (big, 0.1)
    sched = nqm.PiecewiseConstant(boundaries=bounds, values=lrs)
    for t in (10, 40, 41, 1000, 10**7):
        got = nqm.expected_loss(problem, nqm.Optimizer(sched, 0.5, 0.5), 2, t)
        want = mp_loss_pieces(
            problem.h,
            problem.c,
            problem.init_sq,
            problem.weight,
            _pieces(bounds, lrs, t),
            0.5,
            0.5,
            0.0,
            2,
            dps=ORACLE_DPS,
        )
        assert math.isfinite(got)
        assert got == pytest.approx(float(want), rel=RTOL_EXTREME, abs=0), t


@pytest.mark.parametrize(
    ("beta", "gamma"),
    [
        (1 - 1e-12, 0.0),
        (0.0, 1 - 1e-12),
        (1 - 2.0**-40, 0.9),
        (0.5, 1 - 1e-12),
    ],
)
def test_momentum_and_ema_next_to_one_and_tiny_curvature(beta, gamma):
    """beta, gamma within 1e-12 of 1, h down to 1e-200 (eigenvalues 1 - 1e-200)."""
    problem = nqm.NQMProblem(h=[1e-200, 1e-100, 1e-12, 1.0], c=1.0, init_sq=1.0)
    assert_matches_oracle(problem, 1.0, beta, gamma, 0.0, 2, [1, 10, 10**6, 10**12])


#: The problem, hyperparameters and steps of the coinciding-modes tests.
UNDEFINED_CASE = dict(dim=10_000, lr=1.9, beta=0.9, gamma=0.99, steps=(1000, 10**6))


def _spied_risk_terms(monkeypatch, t):
    """``risk_terms`` of the coinciding-modes case at step ``t``, asserting that
    the engine sent no mode to exact doubling (a spy on the doubling path)."""
    import nqm.dynamics as dyn

    c = UNDEFINED_CASE
    prob = nqm.NQMProblem.power_law(c["dim"])
    doubled = []
    real = dyn._doubling_terms

    def spy(hh, *args, **kwargs):
        doubled.append(np.size(hh))
        return real(hh, *args, **kwargs)

    monkeypatch.setattr(dyn, "_doubling_terms", spy)
    D, N = dyn.risk_terms(prob, c["lr"], c["beta"], c["gamma"], 0.0, t)
    # no mode went to doubling, by the spy and by the public count
    assert sum(doubled) == 0
    assert (
        nqm.doubled_modes(prob, c["lr"], momentum=c["beta"], ema=c["gamma"], steps=t)
        == 0
    )
    return D, N


@pytest.fixture(scope="module")
def undefined_case_oracle():
    """``(D, N)`` at each step of ``UNDEFINED_CASE``, every mode by the 50-digit
    eigen-expansion of its one-step matrix (binary powering where eigenvalues
    coincide), summed in mpmath."""
    c = UNDEFINED_CASE
    prob = nqm.NQMProblem.power_law(c["dim"])
    steps = c["steps"]
    D = [mpmath.mpf(0)] * len(steps)
    N = [mpmath.mpf(0)] * len(steps)
    with mpmath.workdps(ORACLE_DPS):
        for h, cc, init, w in zip(
            prob.h, prob.c, prob.init_sq, prob.weight, strict=True
        ):
            terms = mp_mode_terms_expanded(
                c["lr"], h, 0.0, c["beta"], c["gamma"], steps
            )
            half_wh = mpmath.mpf(float(w)) * mpmath.mpf(float(h)) / 2
            for j, (f, g) in enumerate(terms):
                D[j] += half_wh * mpmath.mpf(float(init)) * f
                N[j] += half_wh * mpmath.mpf(float(cc)) * g
    return {t: (float(d), float(n)) for t, d, n in zip(steps, D, N, strict=True)}


@pytest.mark.parametrize(
    ("lr", "h", "p", "beta", "gamma"),
    [
        (1.9, 1.0, 0.0, 0.9, 0.99),  # complex momentum roots
        (1.9, 1 / 724, 0.0, 0.9, 0.99),  # near critical damping
        (1.9, 1 / 1900, 0.0, 0.9, 0.99),  # a momentum root near gamma
        (1.9, 1e-4, 0.0, 0.9, 0.99),
        (0.7, 0.3, 0.5, 0.0, 0.0),
        (0.5, 0.4, 0.0, 0.0, 0.8),  # alpha h = 1 - gamma (to rounding)
    ],
)
def test_expansion_oracle_agrees_with_binary_powering(lr, h, p, beta, gamma):
    """The two mpmath oracles agree: the eigen-expansion (used on 10⁴ modes) and
    binary powering of the one-step matrix (used everywhere else)."""
    steps = [0, 1, 7, 1000, 10**6]
    with mpmath.workdps(ORACLE_DPS):
        fast = mp_mode_terms_expanded(lr, h, p, beta, gamma, steps)
        slow = mp_mode_terms(lr, h, p, beta, gamma, steps)
        for (f1, g1), (f2, g2) in zip(fast, slow, strict=True):
            assert abs(f1 - f2) <= ORACLE_AGREEMENT * abs(f2)
            assert abs(g1 - g2) <= ORACLE_AGREEMENT * abs(g2)


@pytest.mark.parametrize("t", UNDEFINED_CASE["steps"])
def test_coinciding_modes_need_no_doubling(monkeypatch, t):
    """At d = 10⁴, lr 1.9, β = 0.9, γ = 0.99 and no preconditioning, a few modes
    have a momentum root that coincides with γ to rounding, where the Lagrange
    form is undefined (F = inf). Their divided-difference form is certified, so
    no mode is doubled, and the others keep their Lagrange form. The totals are
    checked against mpmath in the slow test below."""
    D, N = _spied_risk_terms(monkeypatch, t)
    # every mode is stable (alpha h < 2 (1 + beta)): both totals are finite
    assert math.isfinite(float(D)) and math.isfinite(float(N))


@pytest.mark.slow
@pytest.mark.parametrize("t", UNDEFINED_CASE["steps"])
def test_coinciding_modes_need_no_doubling_and_match_mpmath(
    monkeypatch, undefined_case_oracle, t
):
    """The case above, with its totals: no mode doubled, and D and N equal to a
    50-digit mpmath evaluation of every mode (about 10 s of CPU for the 10⁴
    modes, shared by both steps)."""
    D, N = _spied_risk_terms(monkeypatch, t)
    want_d, want_n = undefined_case_oracle[t]
    assert float(N) == pytest.approx(want_n, rel=1e-11)
    assert float(D) == pytest.approx(want_d, rel=1e-11, abs=1e-300)
