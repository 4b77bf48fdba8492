"""The appendix's closed forms (`nqm.closed_form`) against the exact dynamics.

Published identities (Zhang et al. 2019, appendices B-D): the SGD risk; Theorem 1,
eqns (31) and (34); Theorem 2, eqn (49). The transient terms of (34) and (49) are the exact mean response, so
with c = 0 the bounds equal the exact loss; their noise terms are the stationary
variances, so the bounds dominate the exact loss, and equal it as t -> infinity
when init_sq = 0. The independent oracle is the step-wise/binary-powered second
moment recursion of tests/nqm/nqm_oracles.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from nqm_oracles import brute_force_loss, mp_loss, mp_mode_terms

import nqm
from nqm import closed_form as cf

#: closed form vs exact engine (both float64, different formulas).
RTOL_CLOSED = 1e-10
#: a step count at which every transient of the problems below is below rounding.
HUGE_T = 10**9


def problem_with(seed, d=40, c_scale=1.0, init_scale=1.0):
    rng = np.random.default_rng(seed)
    h = np.exp(rng.uniform(np.log(1e-2), 0.0, d))
    c = c_scale * rng.uniform(0.0, 2.0, d)
    init_sq = init_scale * rng.uniform(0.1, 2.0, d)
    return nqm.NQMProblem(h, c, init_sq), rng


STEPS = np.array([0, 1, 3, 20, 333, 5000])


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("batch", [1, 32, 2**20])
def test_sgd_risk_equals_expected_loss(p, batch):
    problem, _ = problem_with(1)
    for lr in (0.05, 0.999, 1.9):
        want = nqm.expected_loss(
            problem, nqm.Optimizer(lr, precond_power=p), batch, STEPS
        )
        got = cf.sgd_risk(problem, lr, batch, STEPS, precond_power=p)
        np.testing.assert_allclose(got, want, rtol=RTOL_CLOSED, atol=0)
    assert isinstance(cf.sgd_risk(problem, 0.3, 4, 10), float)


def test_sgd_risk_at_unit_step_and_zero_steps():
    problem = nqm.NQMProblem(h=[1.0, 0.25], c=[1.0, 1.0], init_sq=1.0)
    got = cf.sgd_risk(problem, 1.0, 1, [0, 1, 5])
    want = nqm.expected_loss(problem, nqm.Optimizer(1.0), 1, [0, 1, 5])
    np.testing.assert_allclose(got, want, rtol=RTOL_CLOSED)


def test_sgd_risk_matches_brute_force():
    problem, _ = problem_with(2, d=8)
    steps = [0, 1, 17, 200]
    got = cf.sgd_risk(problem, 0.8, 3, steps, precond_power=0.5)
    want = brute_force_loss(
        problem.h,
        problem.c,
        problem.init_sq,
        1.0,
        lambda s: 0.8,
        0.0,
        0.0,
        0.5,
        3,
        steps,
    )
    np.testing.assert_allclose(got, want, rtol=RTOL_CLOSED)


def _oracle_stationary(hh, lr, beta, gamma):
    """Per-mode stationary E[theta_o^2] per unit noise from the mpmath recursion."""
    return np.array(
        [float(mp_mode_terms(lr, h, 0.0, beta, gamma, [2**80])[0][1]) for h in hh]
    )


@pytest.mark.parametrize(
    ("beta", "gamma"), list(itertools.product((0.0, 0.5, 0.95), (0.0, 0.9)))
)
def test_steady_state_second_moment_matches_oracle(beta, gamma):
    hh = np.array([1e-3, 0.1, 0.7, 1.5])
    lr = 1.0
    got = cf.steady_state_second_moment(hh, lr, beta, gamma)
    np.testing.assert_allclose(got, _oracle_stationary(hh, lr, beta, gamma), rtol=1e-10)


def test_paper_steady_states_match_oracle():
    hh = np.array([1e-3, 0.1, 0.7, 1.5])
    lr = 1.0
    np.testing.assert_allclose(
        cf.sgd_steady_state(hh, lr), _oracle_stationary(hh, lr, 0.0, 0.0), rtol=1e-12
    )
    # eqn (31)
    np.testing.assert_allclose(
        cf.momentum_steady_state(hh, lr, 0.8),
        _oracle_stationary(hh, lr, 0.8, 0.0),
        rtol=1e-12,
    )
    # eqn (49), noise term (the stationary variance of the average)
    np.testing.assert_allclose(
        cf.averaging_steady_state(hh, lr, 0.9),
        _oracle_stationary(hh, lr, 0.0, 0.9),
        rtol=1e-12,
    )


@pytest.mark.parametrize(
    ("beta", "gamma"), list(itertools.product((0.0, 0.9), (0.0, 0.7)))
)
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_steady_state_risk_equals_long_run_loss(beta, gamma, p):
    problem, _ = problem_with(3)
    lr = 0.5
    batch = 8
    opt = nqm.Optimizer(lr, beta, gamma, p)
    long_run = nqm.expected_loss(problem, opt, batch, HUGE_T)
    ss = cf.steady_state_risk(problem, lr, batch, beta, gamma, p)
    assert ss == pytest.approx(long_run, rel=RTOL_CLOSED, abs=0)
    assert nqm.steady_state_loss(problem, opt, batch) == pytest.approx(
        long_run, rel=RTOL_CLOSED, abs=0
    )
    # paper formulas, summed with loss weight h and noise c h^(-2p)
    hh, cc = problem.h ** (1 - p), problem.c * problem.h ** (-2 * p)
    if gamma == 0.0:
        per_mode = cf.momentum_steady_state(hh, lr, beta)
    elif beta == 0.0:
        per_mode = cf.averaging_steady_state(hh, lr, gamma)
    else:
        per_mode = None
    if per_mode is not None:
        paper = 0.5 * np.sum(problem.h * cc * per_mode) / batch
        assert paper == pytest.approx(long_run, rel=RTOL_CLOSED, abs=0)


def test_steady_state_loss_of_schedule_uses_final_lr():
    problem, _ = problem_with(4)
    sched = nqm.PiecewiseConstant(boundaries=(10,), values=(1.0, 0.2))
    opt = nqm.Optimizer(sched, momentum=0.5)
    assert nqm.steady_state_loss(problem, opt, 4) == pytest.approx(
        cf.steady_state_risk(problem, 0.2, 4, momentum=0.5), rel=RTOL_CLOSED, abs=0
    )
    batches = np.array([1.0, 4.0])
    arr = nqm.steady_state_loss(problem, opt, batches)
    np.testing.assert_allclose(arr * batches, arr[0], rtol=1e-13)
    unstable = nqm.Optimizer(10.0 * nqm.max_stable_lr(problem))
    assert nqm.steady_state_loss(problem, unstable, 4) == np.inf


def _bound_cases():
    for beta in (0.3, 0.9, 0.99):  # real roots for large h, complex for small
        yield "momentum", beta
    for gamma in (0.2, 0.9, 0.999):
        yield "averaging", gamma


def _bound(kind, problem, lr, x, batch, steps, p):
    f = cf.momentum_bound if kind == "momentum" else cf.averaging_bound
    return f(problem, lr, x, batch, steps, precond_power=p)


def _opt(kind, lr, x, p):
    if kind == "momentum":
        return nqm.Optimizer(lr, momentum=x, precond_power=p)
    return nqm.Optimizer(lr, ema=x, precond_power=p)


@pytest.mark.parametrize(("kind", "x"), list(_bound_cases()))
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_bounds_dominate_exact_loss(kind, x, p):
    problem, _ = problem_with(5)
    lr = 0.7
    steps = np.array([0, 1, 4, 50, 700, 10**5])
    bound = _bound(kind, problem, lr, x, 16, steps, p)
    exact = nqm.expected_loss(problem, _opt(kind, lr, x, p), 16, steps)
    assert np.all(bound >= exact * (1 - RTOL_CLOSED))
    # the slack is exactly the noise not yet accumulated: it vanishes as t grows
    assert bound[-1] == pytest.approx(exact[-1], rel=1e-6, abs=0)


@pytest.mark.parametrize(("kind", "x"), list(_bound_cases()))
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_bound_transient_is_exact_without_noise(kind, x, p):
    problem, _ = problem_with(6, c_scale=0.0)
    lr = 0.7
    steps = STEPS[STEPS <= 100]  # transients still above 1e-8 of the initial loss
    bound = _bound(kind, problem, lr, x, 1, steps, p)
    exact = nqm.expected_loss(problem, _opt(kind, lr, x, p), 1, steps)
    np.testing.assert_allclose(bound, exact, rtol=RTOL_CLOSED, atol=0)
    oracle = mp_loss(
        problem.h,
        problem.c,
        problem.init_sq,
        1.0,
        lr,
        *((x, 0.0) if kind == "momentum" else (0.0, x)),
        p,
        1,
        steps,
    )
    np.testing.assert_allclose(bound, [float(v) for v in oracle], rtol=RTOL_CLOSED)


@pytest.mark.parametrize(
    ("kind", "x", "p", "t"),
    [
        ("momentum", 0.3, 0.0, 5000),
        # underdamped (complex roots): |r|^t = beta^(t/2) far below 1e-16
        ("momentum", 0.61, 0.5, 150),
        ("momentum", 0.95, 0.0, 2000),
        ("averaging", 0.2, 0.0, 5000),
        ("averaging", 0.9, 0.5, 333),
    ],
)
def test_noise_free_loss_keeps_relative_accuracy_deep_in_the_transient(kind, x, p, t):
    problem, _ = problem_with(6, c_scale=0.0)
    lr = 0.7
    exact = nqm.expected_loss(problem, _opt(kind, lr, x, p), 1, t)
    oracle = mp_loss(
        problem.h,
        problem.c,
        problem.init_sq,
        1.0,
        lr,
        *((x, 0.0) if kind == "momentum" else (0.0, x)),
        p,
        1,
        [t],
    )
    assert exact == pytest.approx(float(oracle[0]), rel=1e-9, abs=0)
    # the paper's formula, evaluated with plain powers, is accurate here
    assert _bound(kind, problem, lr, x, 1, t, p) == pytest.approx(
        float(oracle[0]), rel=1e-9, abs=0
    )


@pytest.mark.parametrize(("kind", "x"), [("momentum", 0.5), ("averaging", 0.5)])
def test_bound_noise_term_is_the_exact_limit(kind, x):
    problem, _ = problem_with(7, init_scale=0.0)
    lr = 0.7
    bound = _bound(kind, problem, lr, x, 2, HUGE_T, 0.0)
    exact = nqm.expected_loss(problem, _opt(kind, lr, x, 0.0), 2, HUGE_T)
    assert bound == pytest.approx(exact, rel=RTOL_CLOSED, abs=0)


def test_closed_forms_reject_bad_inputs():
    problem, _ = problem_with(8, d=3)
    with pytest.raises(ValueError, match="batch_size"):
        cf.sgd_risk(problem, 0.1, 0, 5)
    with pytest.raises(ValueError, match="steps"):
        cf.momentum_bound(problem, 0.1, 0.5, 1, -1)
    with pytest.raises(ValueError, match="precond_power"):
        cf.averaging_bound(problem, 0.1, 0.5, 1, 3, precond_power=1.5)


#: Modes where the expanded numerator F(r) = r^2 - (beta + gamma(1-s)) r +
#: beta gamma cancels (a momentum root or averaging rate next to 1, small s):
#: (s, beta, gamma, t), real and complex momentum roots.
CANCELLING_NUMERATORS = [
    (1.0854748946667831e-07, 0.9991391195978796, 0.9998362699384483, 1),
    (8.225565322902652e-07, 0.9943641071013077, 0.9998824721733284, 3),
    (1.7105117137479863e-07, 0.9992459482138636, 0.9997348706311663, 12345),
    (4.809695516555944e-07, 0.9998071779517388, 0.9992848966576949, 100),
]


def _certified_modes_match_the_oracle(cases):
    """Every (s, beta, gamma, t) whose closed form certifies F and G to
    CLOSED_FORM_RTOL matches the 40-digit oracle to RTOL_CLOSED; returns how
    many were certified."""
    import mpmath

    from nqm._closed import closed_form_terms
    from nqm._system import Features
    from nqm.dynamics import CLOSED_FORM_RTOL

    certified = 0
    for s, beta, gamma, t in cases:
        feats = Features(beta > 0, gamma > 0)
        F, G, eF, eG = (
            float(np.ravel(x)[0])
            for x in closed_form_terms(np.array([s]), 1.0, beta, gamma, feats, t)
        )
        with mpmath.workdps(40):
            wF, wG = (float(x) for x in mp_mode_terms(1.0, s, 0.0, beta, gamma, [t])[0])
        for v, e, w, name in ((F, eF, wF, "F"), (G, eG, wG, "G")):
            if np.isfinite(v) and e <= CLOSED_FORM_RTOL * v and w > 1e-250:
                certified += 1
                assert abs(v / w - 1) <= RTOL_CLOSED, (name, s, beta, gamma, t)
    return certified


def test_certified_modes_with_cancelling_numerators_match_the_oracle():
    """Where the expanded Lagrange numerator would cancel, the closed form
    (which factors it) is accurate wherever it certifies itself."""
    assert _certified_modes_match_the_oracle(CANCELLING_NUMERATORS) >= 4


def test_certified_modes_at_random_match_the_oracle():
    """Random momentum + averaging and averaging-alone modes, rates up to
    1 - 1e-4 and s down to 1e-8, t <= 1000 (where the parameters' own
    rounding moves the loss by less than 1e-12): every certified F and G
    matches the oracle to 1e-10."""
    rng = np.random.default_rng(11)
    cases = []
    for _ in range(120):
        beta = 0.0 if rng.random() < 0.3 else float(-np.expm1(rng.uniform(-9.2, -0.4)))
        gamma = float(-np.expm1(rng.uniform(-9.2, -0.4)))
        s = float(np.exp(rng.uniform(np.log(1e-8), np.log(2 * (1 + beta)))))
        t = int(rng.choice([1, 3, 10, 100, 1000]))
        if s < 2 * (1 + beta):
            cases.append((s, beta, gamma, t))
    assert _certified_modes_match_the_oracle(cases) >= 100


#: Step counts at which the decayed-transient shortcuts of nqm._closed apply.
LONG_STEPS = (10**6, 10**9)


def _long_horizon_settings(seed, n, modes=5):
    """``n`` random (s array, beta, gamma, t), t in LONG_STEPS, every s >= 4000/t
    so that each real root has t (1 - r) >= 2000 (its power underflows in every
    mode); complex roots and gamma decay or not."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        beta = 0.0 if rng.random() < 0.3 else float(-np.expm1(rng.uniform(-9.2, -0.4)))
        gamma = 0.0 if rng.random() < 0.3 else float(-np.expm1(rng.uniform(-9.2, -0.4)))
        if beta == 0.0 and gamma == 0.0:
            continue
        t = int(rng.choice(LONG_STEPS))
        lo, hi = np.log(4000.0 / t), np.log(min(1.0, 1.9 * (1.0 + beta)))
        s = np.sort(np.exp(rng.uniform(lo, hi, modes)))
        out.append((s, beta, gamma, t))
    return out


def test_long_horizon_modes_match_the_oracle_and_their_single_evaluation():
    """Several modes at once at t = 1e6 and 1e9 (the real roots decayed in
    every mode, where the closed form skips their powers): every certified
    F and G matches the 40-digit oracle to RTOL_CLOSED, and each mode's
    values are those of the same mode evaluated alone (one-mode arrays never
    take that shortcut)."""
    import mpmath

    from nqm._closed import closed_form_terms
    from nqm._system import Features
    from nqm.dynamics import CLOSED_FORM_RTOL

    certified = 0
    for s, beta, gamma, t in _long_horizon_settings(29, 14):
        feats = Features(beta > 0, gamma > 0)
        together = closed_form_terms(s, 1.0, beta, gamma, feats, t)
        for i, si in enumerate(s):
            alone = closed_form_terms(s[i : i + 1], 1.0, beta, gamma, feats, t)
            for x, y in zip(together, alone, strict=True):
                assert x[i] == y[0] or (np.isnan(x[i]) and np.isnan(y[0]))
            with mpmath.workdps(40):
                wF, wG = (
                    float(x) for x in mp_mode_terms(1.0, si, 0.0, beta, gamma, [t])[0]
                )
            F, G, eF, eG = (float(x[i]) for x in together)
            # an underdamped transient that survives t = 1e6 has the phase
            # t arg(r), whose rounding (relative t eps: conditioning, not the
            # cancellation the bound certifies) can reach 1e-10 of F; real
            # roots' powers carry t eps |log r| <= 750 eps
            disc = ((1 - np.sqrt(si)) ** 2 - beta) * ((1 + np.sqrt(si)) ** 2 - beta)
            pairs = (
                [(G, eG, wG)] if beta > 0 and disc < 0 else [(F, eF, wF), (G, eG, wG)]
            )
            for v, e, w in pairs:
                if np.isfinite(v) and e <= CLOSED_FORM_RTOL * v and w > 1e-250:
                    certified += 1
                    assert abs(v / w - 1) <= RTOL_CLOSED, (si, beta, gamma, t)
    assert certified >= 60


def test_extended_terms_of_decayed_modes_match_the_oracle():
    """One entry in extended precision at t = 1e9, its real roots decayed
    below that format's range (their powers skipped): certified values match
    the 40-digit oracle."""
    import mpmath

    from nqm._closed import HAS_EXTENDED, extended_terms
    from nqm._system import Features
    from nqm.dynamics import CLOSED_FORM_RTOL

    if not HAS_EXTENDED:
        pytest.skip("no extended format on this platform")
    certified = 0
    for s, beta, gamma, _ in _long_horizon_settings(31, 8, modes=2):
        t = 10**9
        feats = Features(beta > 0, gamma > 0)
        for si in s:
            one = [np.array([x]) for x in (si, 1.0, beta, gamma)]
            F, G, eF, eG = (
                float(x[0]) for x in extended_terms(*one, feats, np.array([t]))
            )
            with mpmath.workdps(40):
                wF, wG = (
                    float(x) for x in mp_mode_terms(1.0, si, 0.0, beta, gamma, [t])[0]
                )
            for v, e, w in ((F, eF, wF), (G, eG, wG)):
                if np.isfinite(v) and e <= CLOSED_FORM_RTOL * v and w > 1e-250:
                    certified += 1
                    assert abs(v / w - 1) <= RTOL_CLOSED, (si, beta, gamma)
    assert certified >= 8


def test_exp_without_the_underflow_path_has_numpys_values():
    """nqm._closed._exp returns np.exp's values bit for bit, underflowing,
    subnormal, infinite and NaN arguments included."""
    from nqm._closed import _exp

    rng = np.random.default_rng(3)
    x = np.concatenate(
        [
            -np.exp(rng.uniform(np.log(1e-3), np.log(1e9), 4000)),
            rng.uniform(-760.0, -700.0, 2000),
            [-np.inf, np.inf, np.nan, 0.0, -746.0, -745.13, 5.0],
        ]
    )
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(_exp(x), np.exp(x))
        np.testing.assert_array_equal(_exp(x[:10]), np.exp(x[:10]))


def test_weighted_totals_are_the_totals_of_the_squared_terms():
    """The four weighted totals from the Lagrange sums equal those of
    squared_terms' per-mode arrays exactly, and are None when one is not finite."""
    from nqm._closed import squared_terms, weighted_totals

    rng = np.random.default_rng(4)
    for _ in range(20):
        m = int(rng.integers(1, 300))
        f = rng.normal(size=m) * 10.0 ** rng.uniform(-8, 2, m)
        f_abs = np.abs(f) * (1.0 + 10.0 ** rng.uniform(-3, 6, m))
        G = rng.normal(size=m) * 10.0 ** rng.uniform(-8, 2, m)
        g_abs = np.abs(G) * (1.0 + 10.0 ** rng.uniform(-3, 6, m))
        wd, wn = rng.uniform(0.0, 2.0, m), rng.uniform(0.0, 2.0, m)
        F, Gs, eF, eG = squared_terms(f, f_abs, G, g_abs)
        want = (F @ wd, Gs @ wn, eF @ wd, eG @ wn)
        assert weighted_totals(f, f_abs, G, g_abs, wd, wn) == want
        g_abs[0] = np.inf
        assert weighted_totals(f, f_abs, G, g_abs, wd, wn) is None


def test_underdamped_momentum_with_averaging_matches_the_oracle():
    """Complex momentum roots with averaging (the pair's weights carried on
    the reciprocals of its quotients), several modes per call, t <= 10^4:
    every certified F and G matches the 40-digit oracle to RTOL_CLOSED."""
    import mpmath

    from nqm._closed import closed_form_terms
    from nqm._system import Features
    from nqm.dynamics import CLOSED_FORM_RTOL

    rng = np.random.default_rng(37)
    certified = 0
    for _ in range(24):
        beta = float(-np.expm1(rng.uniform(-9.2, -0.4)))
        gamma = float(-np.expm1(rng.uniform(-9.2, -0.1)))
        t = int(rng.choice([1, 2, 10, 1000, 10**4]))
        # s strictly inside ((1 - sqrt beta)^2, (1 + sqrt beta)^2): complex roots
        lo, hi = (1 - np.sqrt(beta)) ** 2, (1 + np.sqrt(beta)) ** 2
        s = np.sort(lo + (hi - lo) * rng.uniform(0.01, 0.99, 4))
        together = closed_form_terms(s, 1.0, beta, gamma, Features(True, True), t)
        for i, si in enumerate(s):
            with mpmath.workdps(40):
                wF, wG = (
                    float(x) for x in mp_mode_terms(1.0, si, 0.0, beta, gamma, [t])[0]
                )
            F, G, eF, eG = (float(x[i]) for x in together)
            for v, e, w in ((F, eF, wF), (G, eG, wG)):
                if np.isfinite(v) and e <= CLOSED_FORM_RTOL * v and w > 1e-250:
                    certified += 1
                    assert abs(v / w - 1) <= RTOL_CLOSED, (si, beta, gamma, t)
    assert certified >= 120
