"""Warm-up-stable-decay and cosine-with-warm-up schedules: their values written
out, and the exact risk under them against a step-by-step float64 oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nqm_oracles import brute_force_problem_loss

import nqm

RTOL_BRUTE = 1e-10
#: values computed here from the formula vs the schedule's own
RTOL_VALUE = 1e-14


def wsd_value(t, peak, warmup, start, horizon, final, sqrt):
    """WSD written out one step at a time."""
    if t < warmup:
        return peak * (t + 1) / warmup
    if t < start:
        return peak
    if t >= horizon:
        return peak * final
    x = (t - start) / (horizon - start)
    phi = 1 - math.sqrt(x) if sqrt else 1 - x
    return peak * (final + (1 - final) * phi)


def cosine_value(t, peak, warmup, horizon, final):
    if t < warmup:
        return peak * (t + 1) / warmup
    if t >= horizon:
        return peak * final
    x = (t - warmup) / (horizon - warmup)
    return peak * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * x)))


CASES = {
    "wsd_linear": (
        nqm.WarmupStableDecay(0.9, 5, 30, 70, final=0.05),
        lambda t: wsd_value(t, 0.9, 5, 30, 70, 0.05, False),
    ),
    "wsd_sqrt": (
        nqm.WarmupStableDecay(0.9, 0, 12, 70, final=0.01, shape="one_minus_sqrt"),
        lambda t: wsd_value(t, 0.9, 0, 12, 70, 0.01, True),
    ),
    "cosine": (
        nqm.CosineWarmup(0.8, 10, 90, final=0.02),
        lambda t: cosine_value(t, 0.8, 10, 90, 0.02),
    ),
    "cosine_no_warmup": (
        nqm.CosineWarmup(0.8, 0, 50),
        lambda t: cosine_value(t, 0.8, 0, 50, 1e-3),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_values_written_out(name):
    sched, value = CASES[name]
    steps = np.arange(120)
    want = [value(int(t)) for t in steps]
    np.testing.assert_allclose(sched(steps), want, rtol=RTOL_VALUE, atol=0)
    assert sched(7) == pytest.approx(value(7), rel=RTOL_VALUE)
    starts, lrs = sched.pieces(120)
    # the pieces reproduce every step's value
    idx = np.searchsorted(starts, steps, side="right") - 1
    np.testing.assert_allclose(lrs[idx], want, rtol=RTOL_VALUE, atol=0)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(
    ("beta", "gamma", "p"), [(0.0, 0.0, 0.0), (0.5, 0.0, 0.5), (0.0, 0.9, 0.0)]
)
def test_exact_risk_matches_step_by_step(name, beta, gamma, p):
    sched, value = CASES[name]
    rng = np.random.default_rng(5)
    h = np.exp(rng.uniform(np.log(1e-3), 0.0, 6))
    problem = nqm.NQMProblem(
        h=h * 0.9 / h.max(), c=rng.uniform(0, 2, 6), init_sq=rng.uniform(0, 2, 6)
    )
    opt = nqm.Optimizer(sched, momentum=beta, ema=gamma, precond_power=p)
    steps = [0, 3, 11, 40, 69, 70, 89, 90, 130]
    got = nqm.expected_loss(problem, opt, 4, steps)
    want = brute_force_problem_loss(
problem, value,
        beta, gamma, p, 4, steps,
    )  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=RTOL_BRUTE, atol=0)


@pytest.mark.parametrize(
    ("build", "param"),
    [
        (lambda: nqm.WarmupStableDecay(0.0, 1, 2, 3), "peak_lr"),
        (lambda: nqm.WarmupStableDecay(1.0, 5, 2, 9), "warmup <= decay_start"),
        (lambda: nqm.WarmupStableDecay(1.0, 1, 12, 9), "decay_start <= horizon"),
        (lambda: nqm.WarmupStableDecay(1.0, 1, 2, 9, final=0.0), "final"),
        (lambda: nqm.WarmupStableDecay(1.0, 1, 2, 9, shape="cubic"), "shape"),
        (lambda: nqm.WarmupStableDecay(1.0, 1.5, 2, 9), "warmup"),
        (lambda: nqm.CosineWarmup(1.0, 10, 9), "warmup <= horizon"),
        (lambda: nqm.CosineWarmup(1.0, 0, 0), "horizon"),
        (lambda: nqm.CosineWarmup(1.0, 0, 5, final=1.5), "final"),
    ],
)
def test_bad_arguments_are_rejected(build, param):
    with pytest.raises(ValueError, match=param):
        build()


def test_constant_after_and_stability():
    sched = nqm.WarmupStableDecay(1.0, 3, 5, 40, final=0.5)
    assert sched.constant_after() == 40
    problem = nqm.NQMProblem(h=[1.0, 0.1], c=[1.0, 1.0])
    # stability is decided by the tail lr (limit 2 / max h = 2)
    big = nqm.WarmupStableDecay(3.0, 3, 5, 40, final=0.5)  # tail 1.5
    assert nqm.is_stable(problem, nqm.Optimizer(big))
    bigger = nqm.WarmupStableDecay(5.0, 3, 5, 40, final=0.5)  # tail 2.5
    assert not nqm.is_stable(problem, nqm.Optimizer(bigger))


# ------------------------------------------------------------------- tuning
def staircase(values_at, total, stairs=64):
    """SGD lrs held for stair k over the updates [round(k T/K), round((k+1)T/K)),
    each the schedule's value at the stair's start fraction k/K."""
    edges = np.round(np.linspace(0, total, stairs + 1)).astype(int)
    keep = np.diff(edges) > 0
    vals = [values_at(k / stairs) for k in range(stairs)]
    starts = edges[:-1][keep]
    vals = [v for v, kp in zip(vals, keep, strict=True) if kp]
    return nqm.PiecewiseConstant(tuple(int(s) for s in starts[1:]), tuple(vals))


def wsd_fraction(x, peak, w, d, final, stairs=64):
    if x < w:
        return peak * min(1.0, (x + 1.0 / stairs) / w)
    if x < d:
        return peak
    return peak * (final + (1 - final) * (1 - math.sqrt((x - d) / (1 - d))))


def cosine_fraction(x, peak, w, final, stairs=64):
    if x < w:
        return peak * min(1.0, (x + 1.0 / stairs) / w)
    y = (x - w) / (1 - w)
    return peak * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * y)))


@pytest.mark.parametrize("family", ["wsd", "cosine"])
@pytest.mark.parametrize("batch", [1.0, pytest.param(64.0, marks=pytest.mark.slow)])
def test_tuning_never_worse_than_a_reference_grid(family, batch):
    problem = nqm.NQMProblem.power_law(30)
    target = 0.1 * problem.initial_loss()
    a_max = 2.0 / problem.h.max()
    bs = [batch]
    tuned = nqm.best_steps(problem, family, bs, target, surrogate_bins=16)
    sgd = nqm.best_steps(problem, "sgd", bs, target)
    for b, res, base in zip(bs, tuned, sgd, strict=True):
        grid_best = math.inf
        for total in np.unique(np.round(base.steps * np.array([0.5, 1.0]))):
            for peak in a_max * np.array([0.3, 0.6, 0.9]):
                for w in (0.0, 0.1):
                    shapes = (
                        [lambda x, a=peak, w=w, d=d, f=f: wsd_fraction(x, a, w, d, f)
                         for d in (0.3, 0.7) for f in (0.02, 0.2)]
                        if family == "wsd"
                        else [lambda x, a=peak, w=w, f=f: cosine_fraction(x, a, w, f)
                              for f in (0.02, 0.2)]
                    )  # fmt: skip
                    for values_at in shapes:
                        opt = nqm.Optimizer(staircase(values_at, int(total)))
                        s = nqm.steps_to_target(problem, opt, b, target)
                        grid_best = min(grid_best, s)
        assert res.steps <= grid_best
        if b == 1.0:  # the grid has power where noise dominates: it beats SGD
            assert grid_best < base.steps
        # the result is certified: its own exact steps
        assert nqm.steps_to_target(problem, res.optimizer, b, target) == res.steps
