"""nqm.polynomial_floor: the least deterministic loss of any polynomial method,
against a 50-digit least-squares oracle, its exact cases (it is reached by SGD
with the right lr schedule, and is 0 once a polynomial can vanish on every
curvature), and the losses of every optimizer family."""

import mpmath
import numpy as np
import pytest
from nqm_oracles import brute_force_loss

import nqm
from nqm import _tuning
from nqm.polynomial_floor import christoffel_at_zero, polynomial_floor
from nqm.search import Family, best_steps


def _mp_floor(x, w, t, dps=50):
    """min over p of degree <= t with p(0) = 1 of sum w p(x)^2, and that p's
    coefficients (1, c_1, ..., c_t), by the normal equations in ``dps`` digits."""
    with mpmath.workdps(dps):
        xs = [mpmath.mpf(float(v)) for v in x]
        ws = [mpmath.mpf(float(v)) for v in w]
        if t == 0:
            return float(mpmath.fsum(ws)), [mpmath.mpf(1)]
        # minimise sum_i w_i (1 + sum_k c_k x_i^k)^2 over c
        a = mpmath.matrix(t, t)
        rhs = mpmath.matrix(t, 1)
        for xi, wi in zip(xs, ws, strict=True):
            powers = [xi ** (k + 1) for k in range(t)]
            for j in range(t):
                rhs[j] -= wi * powers[j]
                for k in range(t):
                    a[j, k] += wi * powers[j] * powers[k]
        c = mpmath.lu_solve(a, rhs)
        coef = [mpmath.mpf(1)] + [c[k] for k in range(t)]
        value = mpmath.fsum(
            wi * mpmath.polyval(coef[::-1], xi) ** 2
            for xi, wi in zip(xs, ws, strict=True)
        )
        return float(value), coef


def _measure(seed, n):
    rng = np.random.default_rng(seed)
    x = np.sort(np.exp(rng.uniform(np.log(1e-2), 0.0, n)))
    w = np.exp(rng.uniform(-3.0, 0.0, n))
    return x, w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_floor_matches_50_digit_least_squares(seed):
    x, w = _measure(seed, 9)
    floors = christoffel_at_zero(x, w)
    got = [next(floors) for _ in range(9)]
    for t in range(9):
        want, _ = _mp_floor(x, w, t)
        assert got[t] == pytest.approx(want, rel=1e-10, abs=0)


def test_floor_is_zero_once_a_polynomial_vanishes_on_every_node():
    """Exact case: with n distinct nodes, prod(1 - x/x_i) (degree n) vanishes on
    all of them, while no polynomial of lower degree with p(0) = 1 does."""
    x, w = _measure(3, 6)
    floors = christoffel_at_zero(np.concatenate([x, x[:2]]), np.concatenate([w, w[:2]]))
    got = [next(floors) for _ in range(10)]
    assert got[5] > 0.0
    assert got[6:] == [0.0] * 4
    # nodes repeated count once; the weights at a node add up
    merged = christoffel_at_zero(x, w + np.r_[w[:2], np.zeros(4)])
    assert got[:6] == pytest.approx([next(merged) for _ in range(6)], rel=1e-12)


@pytest.mark.parametrize("t", [1, 2, 4])
def test_sgd_with_the_optimal_polynomials_roots_as_lrs_reaches_the_floor(t):
    """The floor is attained: SGD whose k-th update has lr 1/r_k, with r_k the
    roots of the optimal polynomial, has mean response exactly that polynomial
    (step-by-step oracle, noise-free problem)."""
    x, w = _measure(4, 7)
    want, coef = _mp_floor(x, w, t)
    with mpmath.workdps(50):
        roots = mpmath.polyroots(coef[::-1], maxsteps=200, extraprec=200)
    assert all(abs(mpmath.im(r)) < 1e-30 for r in roots)  # real roots
    lrs = [float(1 / mpmath.re(r)) for r in roots]
    h, init_sq = x, 2.0 * w / x  # omega = h init_sq / 2
    loss = brute_force_loss(
        h, np.zeros_like(h), init_sq, 1.0, lambda k: lrs[k], 0.0, 0.0, 0.0, 1.0, [t]
    )
    problem = nqm.NQMProblem(h, np.zeros_like(h), init_sq)
    floor = polynomial_floor(problem, t)
    assert float(loss[0]) == pytest.approx(want, rel=1e-9)
    assert float(floor) == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_no_optimizer_goes_below_the_floor(p):
    """D(t) of random SGD, momentum, averaging and momentum + averaging
    settings (certified closed form) never falls below the floor."""
    problem = nqm.NQMProblem.power_law(300)
    rng = np.random.default_rng(11)
    hh_max = float(problem.preconditioned(p)[0].max())
    steps = np.array([0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 400])
    floor = polynomial_floor(problem, steps, p)
    assert np.all(np.diff(floor) <= 0.0)
    assert floor[0] == pytest.approx(float(nqm.risk_terms(problem, 1.0, steps=0)[0]))
    if p < 1.0:  # at p = 1 every curvature is 1: one step can zero the mean
        assert floor[4] > floor[8] > 0.0
    for _ in range(40):
        beta = 0.0 if rng.random() < 0.3 else 1.0 - np.exp(rng.uniform(-8.0, 0.0))
        gamma = 0.0 if rng.random() < 0.3 else 1.0 - np.exp(rng.uniform(-8.0, 0.0))
        lr = np.exp(rng.uniform(np.log(1e-4), 0.0)) * 2.0 * (1.0 + beta) / hh_max
        d, _ = nqm.risk_terms(problem, lr, beta, gamma, p, steps)
        assert np.all(d >= floor * (1.0 - 1e-9))


def test_bad_arguments_are_refused():
    problem = nqm.NQMProblem.power_law(10)
    assert isinstance(polynomial_floor(problem, 3), float)
    assert polynomial_floor(problem, [[0, 10], [11, 2**62]])[1].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="steps"):
        polynomial_floor(problem, -1)
    with pytest.raises(ValueError, match="precond_power"):
        polynomial_floor(problem, 3, 1.5)


def test_skipping_short_steps_leaves_the_tuned_steps_unchanged(monkeypatch):
    """Stage 1 skips grid steps below the floor's reach; the results equal
    those of evaluating every step."""
    problem = nqm.NQMProblem.power_law(1000)
    bs = [1, 64, 4096, 2**18]
    kw = dict(surrogate_bins=32)
    skipped = best_steps(problem, Family.MOMENTUM, bs, 0.01, **kw)
    monkeypatch.setattr(_tuning, "_FLOOR_MARGIN", np.inf)
    every = best_steps(problem, Family.MOMENTUM, bs, 0.01, **kw)
    assert [r.steps for r in skipped] == [r.steps for r in every]
    assert _tuning._first_useful(problem.binned(32), 0.0, _tuning._t_grid(), 0.04) == 0
    monkeypatch.undo()
    assert _tuning._first_useful(problem.binned(32), 0.0, _tuning._t_grid(), 0.04) > 0
