"""nqm._pointwise and the tuner's side-by-side local searches: losses evaluated
together equal the losses evaluated one at a time, and the searches they serve
find no more steps than a brute-force grid."""

import numpy as np
import pytest
from nqm_oracles import brute_force_problem_loss

import nqm
from nqm import _tuning
from nqm._pointwise import pointwise_terms
from nqm.search import Family, best_steps

#: A surrogate value against the exact per-point one: both are certified to
#: the surrogate accuracy the tuner asks for.
SURROGATE_RTOL = 1e-8
#: Certified closed-form values against the step-by-step recursion (its
#: rounding grows with the number of steps).
RTOL_STEPWISE = 1e-9


def _points(rng, problem, n, t_max):
    """Settings of every kind (no momentum or averaging, either, both; real and
    complex momentum roots; near the stability edge), each at its own step."""
    hh_max = float(problem.h.max())
    beta = np.where(rng.random(n) < 0.3, 0.0, -np.expm1(rng.uniform(-12.0, 0.0, n)))
    gamma = np.where(rng.random(n) < 0.3, 0.0, -np.expm1(rng.uniform(-12.0, 0.0, n)))
    frac = np.exp(rng.uniform(np.log(1e-6), np.log(0.999), n))
    lr = frac * 2.0 * (1.0 + beta) / hh_max
    steps = rng.integers(0, t_max, n)
    return lr, beta, gamma, steps


def test_repeated_points_take_their_values_alone():
    """A long request that repeats points bit for bit (some differing only in
    their step, or in the sign of a zero momentum) gives each point what it
    gets evaluated alone."""
    problem = nqm.NQMProblem.power_law(2000).binned(64)
    rng = np.random.default_rng(7)
    lr, beta, gamma, steps = _points(rng, problem, 30, 10**6)
    beta[0] = 0.0
    pick = rng.integers(0, 30, 120)
    lr, beta, gamma, steps = lr[pick], beta[pick], gamma[pick], steps[pick].copy()
    steps[:5] += 1  # the same settings at other steps
    beta[np.flatnonzero(beta == 0.0)[:2]] = -0.0
    d, n = pointwise_terms(problem, lr, beta, gamma, 0.5, steps, rtol=SURROGATE_RTOL)
    for i in range(lr.size):
        one = pointwise_terms(
            problem, lr[i : i + 1], beta[i : i + 1], gamma[i : i + 1], 0.5,
            steps[i : i + 1], rtol=SURROGATE_RTOL,
        )  # fmt: skip
        assert (one[0][0], one[1][0]) == (d[i], n[i])


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_points_together_equal_points_alone_and_expected_loss(p):
    """Every point's loss is exactly what it is evaluated alone and in any
    order, and equals ``nqm.expected_loss`` of its optimizer at its step."""
    problem = nqm.NQMProblem.power_law(2000).binned(64)
    rng = np.random.default_rng(19)
    lr, beta, gamma, steps = _points(rng, problem, 60, 10**6)
    d, n = pointwise_terms(problem, lr, beta, gamma, p, steps, rtol=SURROGATE_RTOL)
    perm = rng.permutation(lr.size)
    d2, n2 = pointwise_terms(
        problem, lr[perm], beta[perm], gamma[perm], p, steps[perm],
        rtol=SURROGATE_RTOL,
    )  # fmt: skip
    np.testing.assert_array_equal(d2, d[perm])
    np.testing.assert_array_equal(n2, n[perm])
    b = 8.0
    for i in range(lr.size):
        one = pointwise_terms(
            problem, lr[i : i + 1], beta[i : i + 1], gamma[i : i + 1], p,
            steps[i : i + 1], rtol=SURROGATE_RTOL,
        )  # fmt: skip
        assert (one[0][0], one[1][0]) == (d[i], n[i])
        opt = nqm.Optimizer(lr[i], momentum=beta[i], ema=gamma[i], precond_power=p)
        want = nqm.expected_loss(problem, opt, b, int(steps[i]))
        assert d[i] + n[i] / b == pytest.approx(want, rel=SURROGATE_RTOL, abs=0)


def test_points_equal_the_step_by_step_recursion():
    """On a small problem, every point against the update rule iterated step by
    step (the oracle of ``nqm_oracles``), near critical damping included."""
    problem = nqm.NQMProblem.power_law(12)
    rng = np.random.default_rng(7)
    lr, beta, gamma, steps = _points(rng, problem, 24, 300)
    # critical damping of the largest mode: coinciding momentum roots
    h = float(problem.h.max())
    lr[0], beta[0], gamma[0], steps[0] = (1.0 - np.sqrt(0.81)) ** 2 / h, 0.81, 0.5, 200
    b = 4.0
    d, n = pointwise_terms(problem, lr, beta, gamma, 0.0, steps, rtol=1e-12)
    for i in range(lr.size):
        want = brute_force_problem_loss(
            problem, lambda t, a=lr[i]: a, beta[i], gamma[i], 0.0, b,
            np.array([steps[i]]),
        )  # fmt: skip
        assert d[i] + n[i] / b == pytest.approx(want[0], rel=RTOL_STEPWISE)


def test_bad_points_are_rejected():
    problem = nqm.NQMProblem.power_law(10)
    one = np.ones(1)
    with pytest.raises(ValueError, match="lr"):
        pointwise_terms(
            problem, -one, 0 * one, 0 * one, 0.0, np.ones(1, int), rtol=1e-8
        )
    with pytest.raises(ValueError, match="momentum"):
        pointwise_terms(problem, one, one, 0 * one, 0.0, np.ones(1, int), rtol=1e-8)
    with pytest.raises(ValueError, match="steps"):
        pointwise_terms(
            problem, one, 0 * one, 0 * one, 0.0, -np.ones(1, int), rtol=1e-8
        )
    with pytest.raises(ValueError, match="one length"):
        pointwise_terms(problem, one, 0 * one, 0 * one, 0.0, np.ones(2, int), rtol=1e-8)


def test_local_searches_side_by_side_equal_searches_alone():
    """Nelder-Mead searches run side by side, their losses evaluated together
    in one call per round, end where each ends alone (exact equality)."""
    problem = nqm.NQMProblem.power_law(1000).binned(32)
    hh_max = float(problem.h.max())
    space = _tuning._Space(Family.MOMENTUM_EMA, hh_max, 0.5)
    starts = [
        (np.array([-1.0, -2.0, -3.0]), 1000, 1.0),
        (np.array([-3.0, -0.5, -1.0]), 20000, 64.0),
        (np.array([-0.2, -6.0, -0.1]), 300, 4096.0),
    ]

    def search(x0, t, b):
        return _tuning._local_min(
            problem, space, x0, t, b, _tuning._Evaluations(), 1e-8
        )

    alone = [_tuning._run_alone(space, search(*s)) for s in starts]
    together = _tuning._run_together(space, [search(*s) for s in starts])
    for (xa, va), (xt, vt) in zip(alone, together, strict=True):
        np.testing.assert_array_equal(xa, xt)
        assert va == vt


def test_tuned_steps_at_most_a_brute_force_grid():
    """Momentum tuned at several batch sizes at once (side-by-side searches)
    needs no more steps than the best point of a (lr, beta) grid whose steps
    are the first crossings of the step-by-step recursion."""
    problem = nqm.NQMProblem.power_law(8)
    target = 0.05
    batches = [1.0, 16.0, 256.0]
    tuned = best_steps(problem, Family.MOMENTUM, batches, target)
    h_max = float(problem.h.max())
    horizon = np.arange(250)
    for r in tuned:
        best = np.inf
        for beta in (0.0, 0.5, 0.9):
            for frac in np.geomspace(0.02, 0.98, 8):
                lr = frac * 2.0 * (1.0 + beta) / h_max
                curve = brute_force_problem_loss(
                    problem, lambda t, a=lr: a, beta, 0.0, 0.0, r.batch_size, horizon
                )
                hit = np.nonzero(curve <= target)[0]
                if hit.size:
                    best = min(best, int(hit[0]))
        assert np.isfinite(best), "the grid must reach the target in the horizon"
        assert r.steps <= best
