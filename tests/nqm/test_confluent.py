"""The divided-difference closed form (`nqm._confluent`) where eigenvalues meet.

Near-coincidences (critical damping on either side, averaging at the SGD
eigenvalue, averaging at a momentum root, all three together) at relative gaps
from 0 to 1e-2 and up to t = 10^12, against the 50-digit mpmath binary powering
of tests/nqm/nqm_oracles.py (built from the update rule, independent of
``nqm``). Inputs are dyadic where a regime must be hit exactly; a gap is then a
relative perturbation of one parameter. The benchmark's random settings are
checked against the step-by-step float64 recursion and the mpmath oracle.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from nqm_oracles import (
    brute_force_problem_loss,
    mp_mode_terms,
    mp_problem_loss,
)

import nqm
from nqm._closed import CRITICAL_MARGIN, HAS_EXTENDED, extended_terms
from nqm._confluent import confluent_terms
from nqm._system import Features
from nqm.dynamics import CLOSED_FORM_RTOL, CONFLUENT_MIN_STEPS

ORACLE_DPS = 50
#: relative error of each mode's F_t and G_t, and of the total loss.
RTOL = 1e-10
#: oracle values below this are compared as "underflows to ~0".
TINY = 1e-280
GAPS = (0.0, 1e-16, 1e-14, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2)
STEPS = (1, 2, 3, 10, 100, 10**4, 10**6, 10**9, 10**12)

# (name, s = lr h, beta, gamma, which parameter the gap perturbs)
#  critical damping: beta = (1 - sqrt s)^2 at s = 1/16 (double root 3/4), and
#  beta = (sqrt s - 1)^2 at s = 49/16 (double root -3/4, next to the stability
#  edge); averaging at the SGD eigenvalue 1 - s = 3/4; averaging at a momentum
#  root (s = 3/8, beta = 1/8: roots 1/2 and 1/4); the triple root 3/4.
CASES = [
    ("critical", 1 / 16, 9 / 16, 0.0, "beta"),
    ("critical_ema", 1 / 16, 9 / 16, 0.5, "beta"),
    ("critical_left", 49 / 16, 9 / 16, 0.0, "beta"),
    ("critical_left_ema", 49 / 16, 9 / 16, 0.9, "beta"),
    ("ema_at_sgd_root", 1 / 4, 0.0, 3 / 4, "gamma"),
    ("ema_at_big_root", 3 / 8, 1 / 8, 1 / 2, "gamma"),
    ("ema_at_small_root", 3 / 8, 1 / 8, 1 / 4, "gamma"),
    ("triple", 1 / 16, 9 / 16, 3 / 4, "gamma"),
    ("triple_split", 1 / 16, 9 / 16, 3 / 4, "beta"),
]


def extended_available() -> bool:
    """Whether this platform's long double is wider than double."""
    return HAS_EXTENDED


def _perturbed(s, beta, gamma, which, gap):
    if which == "beta":
        return s, beta * (1.0 + gap), gamma
    return s, beta, gamma * (1.0 + gap)


def _assert_close(got, want, rtol, what):
    want = float(want)
    if abs(want) < TINY:
        assert abs(got) < 2 * TINY, what
        return
    assert math.isfinite(got), what
    assert abs(got - want) <= rtol * abs(want), (*what, got, want, got / want - 1)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize(
    "sign", [1.0, pytest.param(-1.0, marks=pytest.mark.slow)], ids=["above", "below"]
)
def test_each_mode_matches_the_oracle_at_every_gap(case, sign):
    """F_t and G_t to 1e-10, and each certified by its own error bound (so the
    mode is never doubled), from exact coincidence to a 1e-2 gap."""
    name, s, beta, gamma, which = case
    steps = np.array(STEPS)
    for gap in GAPS:
        ss, bb, gg = _perturbed(s, beta, gamma, which, sign * gap)
        feats = Features(bb > 0, gg > 0)
        F, G, eF, eG = confluent_terms(ss, 1.0, bb, gg, feats, steps)
        with mpmath.workdps(ORACLE_DPS):
            with_oracle = mp_mode_terms(1.0, ss, 0.0, bb, gg, STEPS)
        for i, (wf, wg) in enumerate(with_oracle):
            what = (name, gap, int(steps[i]))
            _assert_close(F[i], wf, RTOL, ("F", *what))
            _assert_close(G[i], wg, RTOL, ("G", *what))
            assert eF[i] <= CLOSED_FORM_RTOL * max(F[i], TINY), ("bound F", *what)
            assert eG[i] <= CLOSED_FORM_RTOL * G[i], ("bound G", *what)


@pytest.mark.parametrize(
    "gap",
    [0.0, 1e-16, 1e-8, 1e-2]
    + [
        pytest.param(g, marks=pytest.mark.slow)
        for g in GAPS[2:]
        if g not in (1e-8, 1e-2)
    ],
)
def test_total_loss_at_near_coincidences_needs_no_doubling(gap):
    """The whole loss of a problem whose modes sit at the coincidences above
    (through lr and h: alpha h = 1/16, 3/8, 1/4, 49/16 for the modes h = 1/16,
    3/8, 1/4, 49/16 at lr 1), with momentum and averaging combined, against
    the mpmath oracle; no mode is doubled (from CONFLUENT_MIN_STEPS steps on;
    shorter horizons are doubled by design, at most six levels)."""
    h = np.array([1 / 16, 3 / 8, 1 / 4, 49 / 16, 2.0**-10])
    problem = nqm.NQMProblem(h=h, c=[1.0, 0.5, 2.0, 1.0, 3.0], init_sq=[1, 2, 3, 1, 5])
    steps = [1, 7, 100, 10**4, 10**6, 10**12]
    for beta, gamma in ((9 / 16 * (1 + gap), 0.0), (9 / 16, 3 / 4 * (1 + gap))):
        opt = nqm.Optimizer(1.0, beta, gamma)
        got = nqm.expected_loss(problem, opt, 4, steps)
        want = mp_problem_loss(
            problem,
            1.0,
            beta,
            gamma,
            0.0,
            4,
            steps,
            dps=ORACLE_DPS,
        )
        for t, g, w in zip(steps, got, want, strict=True):
            _assert_close(g, w, RTOL, (beta, gamma, t))
        long = [t for t in steps if t >= CONFLUENT_MIN_STEPS]
        assert (
            nqm.doubled_modes(problem, 1.0, momentum=beta, ema=gamma, steps=long) == 0
        )


def _near_coincident_settings(problem):
    """Stable settings that put one mode of the power-law spectrum exactly at
    critical damping, at a triple root, at averaging = SGD eigenvalue, or at
    averaging = a momentum root."""
    out = []
    for p in (0.0, 0.5):
        hh = problem.h ** (1 - p)
        for i in (10, 100, 1000, 5000):
            for beta in (0.9, 0.99):
                lr = (1 - math.sqrt(beta)) ** 2 / hh[i]
                out.append((lr, beta, 0.0, p))
                out.append((lr, beta, math.sqrt(beta), p))
            lr = 0.05 / hh[i]
            out.append((lr, 0.0, 1 - lr * hh[i], p))
            s, beta = 0.01, 0.5
            tau = 1 - s + beta
            out.append(
                (s / hh[i], beta, (tau + math.sqrt(tau * tau - 4 * beta)) / 2, p)
            )
    return [x for x in out if x[0] < nqm.max_stable_lr(problem, x[1], x[3])]


def test_near_coincident_set_needs_no_doubling():
    """On 40 near-coincident settings at d = 10^4, each at t = 10^3 and 10^6,
    no mode is doubled."""
    problem = nqm.NQMProblem.power_law(10_000)
    settings = _near_coincident_settings(problem)
    assert len(settings) == 40
    for lr, beta, gamma, p in settings:
        assert (
            nqm.doubled_modes(
                problem,
                lr,
                momentum=beta,
                ema=gamma,
                precond_power=p,
                steps=[1000, 10**6],
            )
            == 0
        )


@pytest.mark.slow
def test_near_coincident_set_matches_doubling_every_mode():
    """The same settings: D and N agree to 1e-11 with every mode by exact
    doubling (the independent engine of nqm._doubling; D to 1e-11 of D(0),
    the accuracy of doubling's mean)."""
    import nqm.dynamics as dyn

    problem = nqm.NQMProblem.power_law(10_000)
    for lr, beta, gamma, p in _near_coincident_settings(problem):
        for t in (1000, 10**6):
            D, N = nqm.risk_terms(problem, lr, beta, gamma, p, t)
            hh, wd, wn = dyn._modes(problem, p)
            n = hh.size
            F, G = dyn._doubling_terms(
                hh,
                np.full(n, lr),
                np.full(n, beta),
                np.full(n, gamma),
                Features(beta > 0, gamma > 0),
                [t],
            )
            assert float(N) == pytest.approx(float(G[0] @ wn), rel=1e-11, abs=0)
            # doubling forms A^t u as u - (I - A^t) u: accurate to eps D(0)
            assert float(D) == pytest.approx(
                float(F[0] @ wd), rel=1e-11, abs=1e-11 * wd.sum()
            )


def _small_problem(seed, d=6):
    rng = np.random.default_rng(seed)
    h = np.exp(rng.uniform(np.log(1e-4), 0.0, d))
    return nqm.NQMProblem(h, rng.uniform(0.1, 2.0, d), rng.uniform(0.1, 2.0, d))


#: float64 step loop vs exact: rounding accumulates over the steps.
RTOL_LOOP = 1e-9
LOOP_STEPS = (1, 10, 300)


def test_random_settings_against_the_step_loop(load_benchmark):
    """The benchmark's random settings (same generator and seed), at d = 6,
    against the step-by-step float64 recursion for the first 300 steps."""
    bench = load_benchmark("bench_nqm")
    problem = _small_problem(1)
    settings = bench.random_settings(
        problem, 40, np.random.default_rng(bench.SETTINGS_SEED)
    )
    for lr, beta, gamma, p, _ in settings:
        got = nqm.expected_loss(
            problem, nqm.Optimizer(lr, beta, gamma, p), 8, LOOP_STEPS
        )
        want = brute_force_problem_loss(
            problem,
            lambda _, lr=lr: lr,
            beta,
            gamma,
            p,
            8,
            LOOP_STEPS,
        )
        np.testing.assert_allclose(got, want, rtol=RTOL_LOOP, atol=0)


@pytest.mark.slow
def test_random_settings_against_the_mpmath_oracle_at_their_horizon(load_benchmark):
    """The same settings at their drawn horizon (10^3, 10^6 or 10^9 steps)
    against the 50-digit oracle, to 1e-10."""
    bench = load_benchmark("bench_nqm")
    problem = _small_problem(2)
    settings = bench.random_settings(
        problem, 60, np.random.default_rng(bench.SETTINGS_SEED)
    )
    for lr, beta, gamma, p, t in settings:
        got = nqm.expected_loss(problem, nqm.Optimizer(lr, beta, gamma, p), 8, t)
        want = mp_problem_loss(
            problem,
            lr,
            beta,
            gamma,
            p,
            8,
            [t],
            dps=ORACLE_DPS,
        )[0]
        _assert_close(got, want, RTOL, (lr, beta, gamma, p, t))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_extended_lagrange_form_is_accurate_where_it_certifies(case):
    """The Lagrange sums re-evaluated in extended precision: wherever their
    bound certifies F_t and G_t to CLOSED_FORM_RTOL, they match the oracle to
    1e-10, on both sides of each coincidence; next to critical damping they
    certify nothing; where averaging meets an SGD or momentum root they
    certify some horizons at the gap 1e-2."""
    name, s, beta, gamma, which = case
    steps = np.array(STEPS)
    n = steps.size
    for gap in GAPS:
        for sign in (1.0, -1.0):
            ss, bb, gg = _perturbed(s, beta, gamma, which, sign * gap)
            feats = Features(bb > 0, gg > 0)
            F, G, eF, eG = extended_terms(
                np.full(n, ss), np.ones(n), np.full(n, bb), np.full(n, gg), feats, steps
            )
            ok = (
                np.isfinite(F)
                & np.isfinite(G)
                & (eF <= CLOSED_FORM_RTOL * np.maximum(F, TINY))
                & (eG <= CLOSED_FORM_RTOL * G)
            )
            what = (name, gap, sign)
            if not extended_available():
                assert not np.any(ok), what
                continue
            critical = bb > 0 and abs((1 - math.sqrt(ss)) ** 2 - bb) < (
                CRITICAL_MARGIN * bb
            )
            if critical:
                assert not np.any(ok), what
            elif gap >= 1e-2 and name.startswith("ema_at"):
                assert np.any(ok), what
            if not np.any(ok):
                continue
            with mpmath.workdps(ORACLE_DPS):
                want = mp_mode_terms(1.0, ss, 0.0, bb, gg, STEPS)
            for i in np.nonzero(ok)[0]:
                at = (*what, int(steps[i]))
                _assert_close(F[i], want[i][0], RTOL, ("F", *at))
                _assert_close(G[i], want[i][1], RTOL, ("G", *at))


def test_without_an_extended_format_nothing_is_certified(monkeypatch):
    """Where long double is the double format, the re-evaluation certifies
    nothing, so every flagged mode goes on to the divided differences."""
    import nqm._closed as closed

    monkeypatch.setattr(closed, "HAS_EXTENDED", False)
    F, G, eF, eG = closed.extended_terms(
        np.array([0.25]), 1.0, 0.0, 0.75 * (1 + 1e-4), Features(False, True), [100]
    )
    assert np.isinf(eF).all() and np.isinf(eG).all()


def test_benchmark_compare_with_loads_another_checkout(load_benchmark, tmp_path):
    """``bench_nqm.py --compare-with DIR`` imports DIR's nqm as a separate
    package (here this checkout's own, so the values must agree exactly), and
    refuses a directory without one (exit 2)."""
    import sys
    from pathlib import Path

    bench = load_benchmark("bench_nqm")
    root = Path(nqm.__file__).resolve().parents[1]
    try:
        other = bench.load_other_nqm(root)
        assert other is not nqm and other.__name__ == "nqm_other"
        problem = _small_problem(3)
        opt = (0.05, 0.9, 0.99, 0.5)
        mine = nqm.expected_loss(problem, nqm.Optimizer(*opt), 8, 1000)
        theirs = other.expected_loss(
            other.NQMProblem(problem.h, problem.c, problem.init_sq),
            other.Optimizer(*opt),
            8,
            1000,
        )
        assert mine == theirs
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "nqm_other"]:
            del sys.modules[name]
    with pytest.raises(SystemExit) as err:
        bench.load_other_nqm(tmp_path)
    assert err.value.code == 2
