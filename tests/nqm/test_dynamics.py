"""Exact dynamics (`nqm.expected_loss`, `nqm.risk_terms`) against independent oracles.

Oracles (tests/nqm/nqm_oracles.py): a step-by-step float64 propagation of the full
3x3 second moment of (theta, m, averaged theta), with the one-step matrix read off
the update rule itself; and the same recursion in mpmath at a few points.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from nqm_oracles import (
    brute_force_problem_loss,
    mp_loss_scheduled,
    mp_problem_loss,
    mp_second_moments_stepwise,
)

import nqm

#: float64 engine vs float64 brute force (both accumulate ~t eps of rounding).
RTOL_BRUTE = 1e-10
#: float64 engine vs a 30-digit mpmath recursion.
RTOL_MP = 1e-11
#: float64 per-mode second moments vs the 50-digit step-by-step mean and
#: covariance: each mode's closed form is certified to this (CLOSED_FORM_RTOL),
#: modes it cannot certify are doubled exactly.
RTOL_MP_MODES = 1e-11
#: two float64 evaluations of mathematically identical settings.
RTOL_SAME = 1e-12

BETAS = (0.0, 0.6, 0.97)  # none, overdamped-ish, underdamped for most modes
GAMMAS = (0.0, 0.8)
POWERS = (0.0, 0.5, 1.0)
STEPS = [0, 1, 2, 7, 60, 250]


def random_problem(seed: int, d: int = 9):
    rng = np.random.default_rng(seed)
    h = np.exp(rng.uniform(np.log(1e-3), 0.0, d))
    c = rng.uniform(0.0, 3.0, d)
    init_sq = rng.uniform(0.0, 2.0, d)
    weight = rng.integers(1, 5, d).astype(np.float64)
    return nqm.NQMProblem(h=h, c=c, init_sq=init_sq, weight=weight), rng


def stable_lr(problem, beta, p, rng, lo=0.05, hi=0.95):
    """A random lr below the heavy-ball stability limit 2(1+beta)/max h^(1-p)."""
    limit = 2.0 * (1.0 + beta) / np.max(problem.h ** (1.0 - p))
    return float(limit * rng.uniform(lo, hi))


def oracle(problem, lr_of_step, beta, gamma, p, batch, steps):
    return brute_force_problem_loss(
        problem,
        lr_of_step,
        beta,
        gamma,
        p,
        batch,
        steps,
    )


@pytest.mark.parametrize(
    ("beta", "gamma", "p"), list(itertools.product(BETAS, GAMMAS, POWERS))
)
def test_constant_lr_matches_brute_force(beta, gamma, p):
    seed = int(1000 * beta + 100 * gamma + 10 * p)
    problem, rng = random_problem(seed)
    lr = stable_lr(problem, beta, p, rng)
    batch = float(rng.integers(1, 64))
    opt = nqm.Optimizer(lr, momentum=beta, ema=gamma, precond_power=p)
    got = nqm.expected_loss(problem, opt, batch, STEPS)
    want = oracle(problem, lambda s: lr, beta, gamma, p, batch, STEPS)
    np.testing.assert_allclose(got, want, rtol=RTOL_BRUTE, atol=0)


def _schedules():
    return {
        "piecewise": nqm.PiecewiseConstant(
            boundaries=(3, 40, 41), values=(0.9, 0.5, 1.3, 0.2)
        ),
        "linear": nqm.LinearDecay(lr0=0.9, decay=0.1, horizon=100),
        "callable_array": nqm.FromCallable(
            lambda s: 0.8 / (1.0 + 0.05 * np.asarray(s))
        ),
        "callable_scalar": nqm.FromCallable(
            lambda s: 0.7 if int(s) % 3 else 0.35, constant_after=None
        ),
        "callable_tail": nqm.FromCallable(
            lambda s: np.where(np.asarray(s) < 20, 0.9, 0.3), constant_after=20
        ),
    }


@pytest.mark.parametrize("name", list(_schedules()))
@pytest.mark.parametrize(
    ("beta", "gamma", "p"),
    [
        (0.0, 0.0, 0.0),
        (0.5, 0.0, 0.5),
        (0.0, 0.9, 0.0),
        (0.8, 0.7, 0.5),
    ],
)
def test_schedules_match_brute_force(name, beta, gamma, p):
    sched = _schedules()[name]
    problem, rng = random_problem(7, d=6)
    # scale h so that the largest lr in the schedule is stable
    problem = nqm.NQMProblem(
        h=problem.h * 0.9 / np.max(problem.h),
        c=problem.c,
        init_sq=problem.init_sq,
        weight=problem.weight,
    )
    opt = nqm.Optimizer(sched, momentum=beta, ema=gamma, precond_power=p)
    steps = [150, 0, 41, 3, 40, 1, 99, 100, 101]  # unsorted on purpose
    got = nqm.expected_loss(problem, opt, 5, steps)
    want = oracle(problem, lambda s: float(sched(s)), beta, gamma, p, 5, steps)
    np.testing.assert_allclose(got, want, rtol=RTOL_BRUTE, atol=0)


@pytest.mark.parametrize(
    ("beta", "gamma", "p"),
    [
        (0.0, 0.0, 0.5),
        (0.9, 0.0, 0.0),
        (0.0, 0.95, 0.5),
        (0.9, 0.5, 0.25),
    ],
)
def test_constant_lr_matches_mpmath(beta, gamma, p):
    problem, rng = random_problem(11, d=5)
    lr = stable_lr(problem, beta, p, rng)
    steps = [1, 13, 500, 12345]
    opt = nqm.Optimizer(lr, momentum=beta, ema=gamma, precond_power=p)
    got = nqm.expected_loss(problem, opt, 3.0, steps)
    want = mp_problem_loss(
        problem,
        lr,
        beta,
        gamma,
        p,
        3.0,
        steps,
        dps=30,
    )
    np.testing.assert_allclose(got, [float(w) for w in want], rtol=RTOL_MP, atol=0)


@pytest.mark.parametrize("name", ["piecewise", "linear", "callable_array"])
def test_schedule_matches_mpmath(name):
    sched = _schedules()[name]
    problem, _ = random_problem(3, d=3)
    problem = nqm.NQMProblem(
        h=problem.h * 0.8 / problem.h.max(),
        c=problem.c,
        init_sq=problem.init_sq,
        weight=problem.weight,
    )
    beta, gamma, p = 0.7, 0.6, 0.5
    t = 45
    opt = nqm.Optimizer(sched, momentum=beta, ema=gamma, precond_power=p)
    got = nqm.expected_loss(problem, opt, 2, t)
    want = mp_loss_scheduled(
        problem.h,
        problem.c,
        problem.init_sq,
        problem.weight,
        [float(sched(s)) for s in range(t)],
        beta,
        gamma,
        p,
        2,
    )
    assert got == pytest.approx(float(want), rel=RTOL_MP, abs=0)


@pytest.mark.parametrize("chunk_pieces", [1, 4, None])
@pytest.mark.parametrize(("beta", "gamma"), [(0.0, 0.0), (0.7, 0.6)])
def test_stepwise_schedule_in_chunks_matches_mpmath(chunk_pieces, beta, gamma):
    """An lr that changes at every step, its pieces built in chunks of one, four
    or (None) the default number: each step count, inside a chunk and at its
    ends, equals the oracle's update-by-update propagation."""
    from nqm import dynamics

    sched = _schedules()["callable_array"]
    problem, _ = random_problem(5, d=3)
    problem = nqm.NQMProblem(
        h=problem.h * 0.8 / problem.h.max(), c=problem.c, init_sq=problem.init_sq
    )
    steps = [1, 4, 9, 30]
    opt = nqm.Optimizer(sched, momentum=beta, ema=gamma)
    saved = dynamics._PIECE_CHUNK
    if chunk_pieces is not None:
        dynamics._PIECE_CHUNK = chunk_pieces * problem.n_modes
    try:
        got = nqm.expected_loss(problem, opt, 2, steps)
    finally:
        dynamics._PIECE_CHUNK = saved
    lrs = [float(sched(s)) for s in range(max(steps))]
    want = [
        float(
            mp_loss_scheduled(
                problem.h, problem.c, problem.init_sq, problem.weight,
                lrs[:t], beta, gamma, 0.0, 2,
            )
        )
        for t in steps
    ]  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=RTOL_MP, atol=0)


def test_output_shapes_and_batch_grid():
    problem, rng = random_problem(5)
    opt = nqm.Optimizer(0.5, momentum=0.3, ema=0.2)
    batches = np.array([[1.0, 4.0, 1024.0]])
    steps = np.array([0, 10, 200])
    grid = nqm.expected_loss(problem, opt, batches, steps)
    assert grid.shape == (1, 3, 3)
    for i, b in enumerate(batches[0]):
        want = oracle(problem, lambda s: 0.5, 0.3, 0.2, 0.0, b, steps)
        np.testing.assert_allclose(grid[0, i], want, rtol=RTOL_BRUTE)
    scalar = nqm.expected_loss(problem, opt, 4, 10)
    assert isinstance(scalar, float)
    assert scalar == pytest.approx(grid[0, 1, 1], rel=RTOL_SAME, abs=0)
    assert nqm.expected_loss(problem, opt, 4, 0) == pytest.approx(
        problem.initial_loss(), abs=0
    )


def test_risk_terms_vectorised_over_settings():
    problem, _ = random_problem(8)
    lr = np.array([[0.2], [1.1]])
    beta = np.array([0.0, 0.5, 0.9])
    gamma = 0.4
    steps = np.array([0, 5, 80])
    D, N = nqm.risk_terms(problem, lr, beta, gamma, precond_power=0.5, steps=steps)
    assert D.shape == N.shape == (2, 3, 3)
    for i, j in itertools.product(range(2), range(3)):
        a, b = float(lr[i, 0]), float(beta[j])
        for batch in (1.0, 16.0):
            want = oracle(problem, lambda s, a=a: a, b, gamma, 0.5, batch, steps)
            np.testing.assert_allclose(D[i, j] + N[i, j] / batch, want, rtol=RTOL_BRUTE)
    # noise-free part: the loss of a problem with c = 0
    quiet = nqm.NQMProblem(problem.h, 0.0, problem.init_sq, problem.weight)
    want_d = oracle(quiet, lambda s: 0.2, 0.5, gamma, 0.5, 1.0, steps)
    np.testing.assert_allclose(D[0, 1], want_d, rtol=RTOL_BRUTE)
    d0, n0 = nqm.risk_terms(problem, 0.3, steps=7)
    assert np.ndim(d0) == 0 and np.ndim(n0) == 0


# ------------------------------------------------------------------ limits
@pytest.mark.parametrize("gamma", [0.0, 0.6])
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_zero_and_tiny_momentum_equal_sgd(gamma, p):
    problem, _ = random_problem(21)
    steps = [0, 1, 9, 300, 10**6]
    sgd = nqm.expected_loss(
        problem, nqm.Optimizer(0.7, ema=gamma, precond_power=p), 8, steps
    )
    for beta in (0.0, 1e-300, 5e-324):
        mom = nqm.Optimizer(0.7, momentum=beta, ema=gamma, precond_power=p)
        np.testing.assert_allclose(
            nqm.expected_loss(problem, mom, 8, steps), sgd, rtol=RTOL_SAME, atol=0
        )


def test_tiny_momentum_at_unit_step_equals_sgd():
    """alpha h = 1 exactly: SGD kills the mean in one step; beta = 1e-300 must too."""
    problem = nqm.NQMProblem(h=np.array([1.0, 0.5, 0.25]), c=1.0, init_sq=1.0)
    steps = [1, 2, 50]
    sgd = nqm.expected_loss(problem, nqm.Optimizer(1.0), 2, steps)
    tiny = nqm.expected_loss(problem, nqm.Optimizer(1.0, momentum=1e-300), 2, steps)
    np.testing.assert_allclose(tiny, sgd, rtol=RTOL_SAME)


@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_zero_and_tiny_ema_equal_no_averaging(beta):
    problem, _ = random_problem(22)
    steps = [0, 1, 9, 300]
    plain = nqm.expected_loss(problem, nqm.Optimizer(0.4, momentum=beta), 2, steps)
    for gamma in (0.0, 1e-300):
        avg = nqm.Optimizer(0.4, momentum=beta, ema=gamma)
        np.testing.assert_allclose(
            nqm.expected_loss(problem, avg, 2, steps), plain, rtol=RTOL_SAME
        )


@pytest.mark.parametrize(("beta", "gamma"), [(0.0, 0.0), (0.8, 0.5)])
def test_precond_power_is_a_change_of_problem(beta, gamma):
    """P = H^p on (h, c, w) equals p = 0 on (h^(1-p), c h^(-2p), w h^p).

    The reparametrised problem keeps every mode's loss weight w h, so the two
    expected losses are the same number (an identity of the update rule).
    """
    problem, _ = random_problem(23)
    steps = [0, 3, 77]
    for p in (0.0, 1e-300, 0.3, 1.0):
        hp = problem.h**p
        twin = nqm.NQMProblem(
            problem.h / hp, problem.c / hp**2, problem.init_sq, problem.weight * hp
        )
        got = nqm.expected_loss(problem, nqm.Optimizer(0.5, beta, gamma, p), 4, steps)
        want = nqm.expected_loss(twin, nqm.Optimizer(0.5, beta, gamma), 4, steps)
        np.testing.assert_allclose(got, want, rtol=1e-11)
    got0 = nqm.expected_loss(problem, nqm.Optimizer(0.5, beta, gamma, 0.0), 4, steps)
    np.testing.assert_allclose(
        got0,
        nqm.expected_loss(problem, nqm.Optimizer(0.5, beta, gamma, 1e-300), 4, steps),
        rtol=RTOL_SAME,
    )


@pytest.mark.parametrize(("beta", "gamma"), [(0.0, 0.0), (0.9, 0.0), (0.6, 0.9)])
def test_degenerate_schedules_equal_constant(beta, gamma):
    problem, _ = random_problem(24)
    steps = [0, 2, 30, 31, 500]
    const = nqm.expected_loss(problem, nqm.Optimizer(0.6, beta, gamma), 3, steps)
    for sched in (
        nqm.PiecewiseConstant(boundaries=(2, 30), values=(0.6, 0.6, 0.6)),
        nqm.LinearDecay(lr0=0.6, decay=1.0, horizon=50),
        nqm.FromCallable(lambda s: np.full(np.shape(s), 0.6)),
        nqm.FromCallable(lambda s: 0.6, constant_after=0),
    ):
        got = nqm.expected_loss(problem, nqm.Optimizer(sched, beta, gamma), 3, steps)
        np.testing.assert_allclose(got, const, rtol=1e-11)


def test_batch_size_enters_as_one_over_b():
    problem, _ = random_problem(25)
    opt = nqm.Optimizer(0.3, momentum=0.5, ema=0.5, precond_power=0.5)
    t = 40
    quiet = nqm.NQMProblem(problem.h, 0.0, problem.init_sq, problem.weight)
    d = nqm.expected_loss(quiet, opt, 1, t)
    e1 = nqm.expected_loss(problem, opt, 1, t)
    for b in (2.0, 7.5, 2.0**20):
        assert nqm.expected_loss(problem, opt, b, t) == pytest.approx(
            d + (e1 - d) / b, rel=1e-12, abs=0
        )


def test_merged_equal_modes_are_exact():
    """Modes that share h (and so h^(1-p)) are merged internally; the total is exact."""
    rng = np.random.default_rng(26)
    h = np.repeat(rng.uniform(0.01, 1.0, 4), 3)
    c = rng.uniform(0, 1, h.size)
    init_sq = rng.uniform(0, 1, h.size)
    problem = nqm.NQMProblem(h, c, init_sq)
    steps = [0, 5, 120]
    got = nqm.expected_loss(problem, nqm.Optimizer(0.9, 0.4, 0.3, 0.5), 2, steps)
    want = oracle(problem, lambda s: 0.9, 0.4, 0.3, 0.5, 2, steps)
    np.testing.assert_allclose(got, want, rtol=RTOL_BRUTE)


def test_zero_steps_of_a_schedule_is_initial_loss():
    problem, _ = random_problem(27)
    opt = nqm.Optimizer(nqm.LinearDecay(1.0, 0.5, 10), momentum=0.5, ema=0.5)
    assert nqm.expected_loss(problem, opt, 1, 0) == pytest.approx(
        problem.initial_loss(), rel=RTOL_SAME, abs=0
    )


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"batch_size": 0.5}, "batch_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": np.nan}, "batch_size"),
        ({"steps": -1}, "steps"),
        ({"steps": [3, -2]}, "steps"),
        ({"steps": 2.5}, "steps"),
    ],
)
def test_expected_loss_rejects_bad_inputs(kwargs, param):
    problem, _ = random_problem(1)
    args = {"batch_size": 4, "steps": 10} | kwargs
    with pytest.raises(ValueError, match=param):
        nqm.expected_loss(problem, nqm.Optimizer(0.1), **args)


def test_risk_terms_rejects_bad_hyperparameters():
    problem, _ = random_problem(1)
    for kwargs, param in (
        ({"lr": 0.0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"ema": -0.1}, "ema"),
        ({"steps": -3}, "steps"),
    ):
        args = {"lr": 0.1, "momentum": 0.0, "ema": 0.0, "steps": 1} | kwargs
        with pytest.raises(ValueError, match=param):
            nqm.risk_terms(problem, **args)
    with pytest.raises(ValueError, match="optimizer"):
        nqm.expected_loss(problem, 0.1, 1, 1)


def test_random_settings_fuzz_against_brute_force():
    """Random problems and settings, stable and (mildly) diverging, all families."""
    rng = np.random.default_rng(314)
    steps = [0, 1, 2, 5, 31, 120]
    for _ in range(120):
        d = 5
        h = np.exp(rng.uniform(-5, 0, d))
        prob = nqm.NQMProblem(h, rng.uniform(0, 2, d), rng.uniform(0, 2, d))
        beta = float(rng.choice([0.0, rng.uniform(0, 0.999)]))
        gamma = float(rng.choice([0.0, rng.uniform(0, 0.999)]))
        p = float(rng.choice([0.0, 0.5, rng.uniform()]))
        limit = 2.0 * (1.0 + beta) / np.max(h ** (1.0 - p))
        lr = limit * float(np.exp(rng.uniform(-6, 0.5)))
        batch = float(rng.integers(1, 100))
        got = nqm.expected_loss(prob, nqm.Optimizer(lr, beta, gamma, p), batch, steps)
        want = oracle(prob, lambda s, lr=lr: lr, beta, gamma, p, batch, steps)
        np.testing.assert_allclose(got, want, rtol=RTOL_BRUTE, atol=0)


SECOND_MOMENT_CASES = {
    "sgd": nqm.Optimizer(0.9),
    "momentum, p=0.5": nqm.Optimizer(0.5, momentum=0.9, precond_power=0.5),
    "ema near alpha h = 1 - gamma": nqm.Optimizer(0.2, ema=0.8),
    "momentum + ema": nqm.Optimizer(1.2, momentum=0.7, ema=0.9),
    "piecewise, momentum + ema": nqm.Optimizer(
        nqm.PiecewiseConstant((7, 25), (1.5, 0.6, 0.1)), momentum=0.5, ema=0.6
    ),
    "linear decay": nqm.Optimizer(nqm.LinearDecay(1.8, 0.1, 40)),
}


@pytest.mark.parametrize("name", list(SECOND_MOMENT_CASES))
def test_second_moments_match_mpmath_mean_and_covariance(name):
    """``second_moments`` per mode against the mean and covariance of
    x' = A x + n eps propagated one update at a time in 50-digit mpmath."""
    opt = SECOND_MOMENT_CASES[name]
    problem = nqm.NQMProblem(
        h=[1.0, 0.25, 0.01], c=[0.5, 2.0, 1.0], init_sq=[1.0, 0.3, 2.0]
    )
    steps = [0, 1, 2, 9, 33, 60]
    batch = 4
    got = nqm.dynamics.second_moments(problem, opt, batch, steps)
    want = mp_second_moments_stepwise(
        problem.h, problem.c, problem.init_sq, lambda t: float(opt.schedule(t)),
        opt.momentum, opt.ema, opt.precond_power, batch, steps,
    )  # fmt: skip
    assert got.shape == (len(steps), problem.n_modes)
    for j, t in enumerate(steps):
        for i in range(problem.n_modes):
            w = float(want[j, i])
            assert abs(got[j, i] - w) <= RTOL_MP_MODES * w, (t, i, got[j, i], w)
    scalar = nqm.dynamics.second_moments(problem, opt, batch, 9)
    np.testing.assert_allclose(scalar, got[3], rtol=RTOL_SAME, atol=0)


def test_steady_state_loss_shape_follows_the_batch_size():
    """A float for a scalar batch size, an array of its shape otherwise, for
    stable and unstable settings alike; the limit is the long-run exact risk."""
    problem = nqm.NQMProblem(h=[1.0, 0.25, 0.01], c=[0.5, 2.0, 1.0], init_sq=1.0)
    stable = nqm.Optimizer(0.5, momentum=0.5, ema=0.3)
    unstable = nqm.Optimizer(1.01 * nqm.max_stable_lr(problem, 0.5), momentum=0.5)
    batches = np.array([[1.0, 4.0], [16.0, 64.0]])
    got = nqm.steady_state_loss(problem, stable, batches)
    assert got.shape == batches.shape
    long_run = nqm.expected_loss(problem, stable, batches, 200_000)
    np.testing.assert_allclose(got, long_run, rtol=RTOL_BRUTE, atol=0)
    assert isinstance(nqm.steady_state_loss(problem, stable, 4), float)
    inf = nqm.steady_state_loss(problem, unstable, batches)
    assert inf.shape == batches.shape and np.all(inf == np.inf)
    assert nqm.steady_state_loss(problem, unstable, 4) == math.inf
    with pytest.raises(ValueError, match="batch_size"):
        nqm.steady_state_loss(problem, unstable, 0.5)


def _random_errors(rng, fractions):
    """A row of per-mode errors (a few or many dominating, some exactly 0), its
    budget (a random fraction of their sum) and the total whose ``1e-11`` is
    that budget."""
    m = int(rng.choice([50, 1000]))
    err = rng.lognormal(0.0, rng.uniform(0.5, 8.0), m)
    err *= rng.random(m) < rng.uniform(0.05, 1.0)
    budget = err.sum() * rng.choice(fractions)
    return err, budget, budget / 1e-11


def _flag_largest(err, want, rest, bound):
    """The oracle: flag the largest errors not yet flagged, by a plain Python
    sort, until the unflagged ``rest`` is within ``bound``."""
    if rest <= bound * (1 + 1e-12):
        return
    for i in sorted(range(len(err)), key=lambda i: -err[i]):
        if want[i]:
            continue
        if rest <= bound * (1 + 1e-12):
            break
        want[i] = True
        rest -= err[i]


def test_flagging_takes_the_fewest_largest_errors():
    """``_needs_doubling`` flags, per row whose summed error exceeds the budget,
    the shortest run of largest errors whose removal leaves the rest within it
    (plus infinite ones): against a plain Python sort, on rows where a few
    errors dominate (the partial sort) and where many do (the full sort), as
    a batch of one row and as one setting's row."""
    from nqm.dynamics import _needs_doubling

    rng = np.random.default_rng(4)
    for _ in range(300):
        err, budget, total = _random_errors(rng, [1e-3, 0.1, 0.5, 2.0])
        got = _needs_doubling(err[None, :], np.array([total]), rtol=1e-11)[0]
        got_row = _needs_doubling(err, np.float64(total), rtol=1e-11)
        want = np.zeros(len(err), dtype=bool)
        _flag_largest(err, want, err.sum(), budget)
        assert np.array_equal(got, want)
        assert np.array_equal(got_row, want)


def test_flagging_with_a_margin_leaves_the_rest_within_that_fraction():
    """With ``fill < 1``, a row over its budget gets the shortest run of
    largest errors flagged whose removal leaves the rest within ``fill`` times
    the budget (a row within the budget still gets nothing, but an infinite
    error is always flagged): against a plain Python sort."""
    from nqm.dynamics import _needs_doubling

    rng = np.random.default_rng(5)
    fill = 0.5
    for _ in range(200):
        err, budget, total = _random_errors(rng, [1e-3, 0.1, 0.7, 2.0])
        m = len(err)
        want = np.zeros(m, dtype=bool)
        rest = err.sum()
        if rng.random() < 0.2:  # an undefined mode: always flagged
            j = int(rng.integers(m))
            rest -= err[j]
            err[j] = np.inf
            want[j] = True
        got = _needs_doubling(err[None, :], np.array([total]), 1e-11, fill)[0]
        got_row = _needs_doubling(err, np.float64(total), 1e-11, fill)
        if rest > budget * (1 + 1e-12):
            _flag_largest(err, want, rest, fill * budget)
        assert np.array_equal(got, want)
        assert np.array_equal(got_row, want)
