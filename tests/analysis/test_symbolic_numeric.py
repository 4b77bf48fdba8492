"""Derived closed forms (lambdified) against the ``nqm`` package's exact dynamics.

The symbolic side never calls ``nqm``; ``nqm`` propagates the moments with its own
engine. Agreement of the two is the cross-check asked for by issue 4.
"""

from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest

import nqm
from analysis.symbolic.numeric import Quantity, risk

#: Two float64 evaluations of the same exact quantity (closed forms with complex
#: roots vs nqm's engine), away from repeated roots.
CROSS_RTOL = 1e-9
#: Steps at which transients are compared: long enough to matter, short enough
#: that no term decays below float64 resolution of the total.
STEPS = np.array([0, 1, 2, 3, 5, 10, 25, 60, 150])
POWERS = (0.0, 0.5, 1.0)
N_SETTINGS = 6


def _settings(method: str, power: float, seed: int):
    """Seeded random stable settings away from repeated roots."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < N_SETTINGS:
        hv = rng.uniform(0.05, 2.0)
        hh = hv ** (1.0 - power)
        lr = rng.uniform(0.02, 1.2) / hh
        coef = rng.uniform(0.1, 0.95) if method != "sgd" else 0.0
        if method == "momentum":
            s = lr * hh
            crit = (1.0 - np.sqrt(s)) ** 2 if s < 1 else np.inf
            if abs(coef - crit) < 0.05:
                continue
        if method == "ema" and abs(coef - (1.0 - lr * hh)) < 0.05:
            continue
        out.append(
            {
                "h": hv,
                "c": rng.uniform(0.1, 3.0),
                "lr": lr,
                "coef": coef,
                "batch": float(rng.integers(1, 129)),
                "init": rng.uniform(0.5, 2.0),
            }
        )
    return out


def _problem(s):
    return nqm.NQMProblem(h=np.array([s["h"]]), c=np.array([s["c"]]), init_sq=s["init"])


def _optimizer(method, s, power):
    kw = {"momentum": s["coef"]} if method == "momentum" else {}
    kw = {"ema": s["coef"]} if method == "ema" else kw
    return nqm.Optimizer(s["lr"], precond_power=power, **kw)


def _mine(method, quantity, s, power, steps=STEPS, noise=None):
    c_val = s["c"] if noise is None else noise
    return risk(
        method,
        quantity,
        s["lr"],
        s["coef"],
        s["h"],
        c_val,
        s["batch"],
        s["init"],
        steps,
        power,
    )


@pytest.mark.parametrize("power", POWERS)
@pytest.mark.parametrize("method", ["sgd", "momentum", "ema"])
def test_exact_closed_form_equals_nqm_dynamics(method, power):
    for s in _settings(method, power, seed=100 + int(10 * power)):
        want = nqm.expected_loss(
            _problem(s), _optimizer(method, s, power), s["batch"], STEPS
        )
        got = _mine(method, Quantity.EXACT, s, power)
        np.testing.assert_allclose(got, want, rtol=CROSS_RTOL, err_msg=str(s))


@pytest.mark.parametrize("power", POWERS)
@pytest.mark.parametrize("method", ["momentum", "ema"])
def test_bounds_equal_nqm_closed_forms_and_dominate_exact(method, power):
    bound_fn = (
        nqm.closed_form.momentum_bound
        if method == "momentum"
        else nqm.closed_form.averaging_bound
    )
    for s in _settings(method, power, seed=200 + int(10 * power)):
        prob = _problem(s)
        exact = nqm.expected_loss(prob, _optimizer(method, s, power), s["batch"], STEPS)
        theirs = bound_fn(prob, s["lr"], s["coef"], s["batch"], STEPS, power)
        mine = _mine(method, Quantity.BOUND, s, power)
        np.testing.assert_allclose(mine, theirs, rtol=CROSS_RTOL, err_msg=str(s))
        assert np.all(mine >= exact * (1 - CROSS_RTOL)), s
        # Not an equality: at t = 0 the bound exceeds the exact risk by the whole
        # steady state (the noise tail is then the full sum).
        steady = float(_mine(method, Quantity.STEADY_STATE, s, power, steps=0))
        assert mine[0] - exact[0] == pytest.approx(steady, rel=1e-9), s


@pytest.mark.parametrize("power", POWERS)
@pytest.mark.parametrize("method", ["sgd", "momentum", "ema"])
def test_steady_state_equals_nqm(method, power):
    for s in _settings(method, power, seed=300 + int(10 * power)):
        mine = float(_mine(method, Quantity.STEADY_STATE, s, power, steps=0))
        kw = {"momentum": s["coef"]} if method == "momentum" else {}
        kw = {"ema": s["coef"]} if method == "ema" else kw
        theirs = nqm.closed_form.steady_state_risk(
            _problem(s), s["lr"], s["batch"], precond_power=power, **kw
        )
        assert mine == pytest.approx(theirs, rel=CROSS_RTOL), s
        # and the exact dynamics converge to it (zero initial state: no transient)
        late = nqm.expected_loss(
            nqm.NQMProblem(h=[s["h"]], c=[s["c"]], init_sq=0.0),
            _optimizer(method, s, power),
            s["batch"],
            200_000,
        )
        assert late == pytest.approx(mine, rel=1e-7), s


def _mp_transient(method, s, power, steps):
    """Noise-free risk by iterating the literal update rule in 60-digit arithmetic."""
    with mp.workdps(60):
        hv = mp.mpf(s["h"])
        hh, lr, coef = hv ** (1 - mp.mpf(power)), mp.mpf(s["lr"]), mp.mpf(s["coef"])
        theta, other, out = mp.mpf(1), mp.mpf(0 if method == "momentum" else 1), []
        for t in range(int(max(steps)) + 1):
            if t in set(int(x) for x in steps):
                tracked = other if method == "ema" else theta
                out.append(float(hv / 2 * tracked**2 * mp.mpf(s["init"])))
            if method == "momentum":
                other = coef * other + hh * theta
                theta = theta - lr * other
            else:
                theta = theta - lr * hh * theta
                other = coef * other + (1 - coef) * theta
    return np.array(out)


@pytest.mark.parametrize("method", ["sgd", "momentum", "ema"])
def test_transient_is_exact_without_noise(method):
    power = 0.5
    for s in _settings(method, power, seed=400):
        prob = nqm.NQMProblem(h=[s["h"]], c=[0.0], init_sq=s["init"])
        want = nqm.expected_loss(prob, _optimizer(method, s, power), s["batch"], STEPS)
        got = _mine(method, Quantity.TRANSIENT, s, power)
        np.testing.assert_allclose(got, want, rtol=CROSS_RTOL, err_msg=str(s))
        if method != "sgd":
            oracle = _mp_transient(method, s, power, STEPS)
            np.testing.assert_allclose(got, oracle, rtol=1e-8, err_msg=str(s))


@pytest.mark.parametrize("method", ["momentum", "ema"])
def test_nqm_deep_transient_matches_closed_form(method):
    power = 0.5
    s = _settings(method, power, seed=400)[5 if method == "momentum" else 1]
    prob = nqm.NQMProblem(h=[s["h"]], c=[0.0], init_sq=s["init"])
    steps = np.array([150])
    want = _mp_transient(method, s, power, steps)
    got = nqm.expected_loss(prob, _optimizer(method, s, power), s["batch"], steps)
    np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=str(s))


def test_sgd_risk_equals_nqm_closed_form_on_a_power_law_problem():
    prob = nqm.NQMProblem.power_law(dim=50, h_power=1.0, c_power=1.0, init_sq=1.0)
    for power in POWERS:
        lr, batch = 0.7, 16.0
        mine = sum(
            risk("sgd", "exact", lr, 0.0, hv, cv, batch, 1.0, STEPS, power)
            for hv, cv in zip(prob.h, prob.c, strict=True)
        )
        theirs = nqm.closed_form.sgd_risk(prob, lr, batch, STEPS, power)
        exact = nqm.expected_loss(
            prob, nqm.Optimizer(lr, precond_power=power), batch, STEPS
        )
        np.testing.assert_allclose(mine, theirs, rtol=CROSS_RTOL)
        np.testing.assert_allclose(mine, exact, rtol=CROSS_RTOL)
