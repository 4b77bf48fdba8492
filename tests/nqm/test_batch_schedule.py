"""Batch-size schedules (`nqm.BatchSchedule`) against a step-by-step oracle.

The oracle (tests/nqm/nqm_oracles.py) propagates the full 3x3 second moment one
update at a time, with update ``s``'s noise variance ``c / B_s`` read from a plain
Python function of the step written here, independently of the schedule class.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from nqm_oracles import brute_force_problem_loss

import nqm

#: float64 engine vs float64 brute force (both accumulate ~t eps of rounding).
RTOL_BRUTE = 1e-10
#: Monte Carlo mean vs exact risk, in standard errors.
MC_SIGMAS = 4.0


def problem_for(seed: int, d: int = 7):
    rng = np.random.default_rng(seed)
    h = np.exp(rng.uniform(np.log(1e-3), 0.0, d))
    h = h * 0.9 / h.max()
    c = rng.uniform(0.0, 3.0, d)
    init_sq = rng.uniform(0.0, 2.0, d)
    weight = rng.integers(1, 5, d).astype(np.float64)
    return nqm.NQMProblem(h=h, c=c, init_sq=init_sq, weight=weight)


def batch_of_step(step: int) -> int:
    """The schedule below, written out: 2 until step 5, 7 until 23, 3 until 40,
    then 16."""
    return 2 if step < 5 else 7 if step < 23 else 3 if step < 40 else 16


SCHEDULE = nqm.BatchSchedule(boundaries=(5, 23, 40), values=(2, 7, 3, 16))

#: One optimizer per family: (lr or schedule, momentum, ema).
FAMILIES = {
    "sgd": (0.8, 0.0, 0.0),
    "momentum": (0.3, 0.7, 0.0),
    "ema": (0.9, 0.0, 0.8),
    "momentum_ema": (0.25, 0.6, 0.7),
    "pwc": (nqm.PiecewiseConstant((9, 30), (1.2, 0.6, 0.2)), 0.0, 0.0),
    "linear_decay": (nqm.LinearDecay(lr0=1.1, decay=0.1, horizon=60), 0.0, 0.0),
    "pwc_momentum": (nqm.PiecewiseConstant((9, 30), (0.5, 0.3, 0.1)), 0.5, 0.0),
}
STEPS = [0, 1, 4, 5, 6, 22, 23, 39, 40, 41, 77, 200]


def oracle(problem, lr, beta, gamma, p, batch, steps):
    lr_of_step = (lambda s: float(lr(s))) if callable(lr) else (lambda s: lr)
    return brute_force_problem_loss(
problem, lr_of_step,
        beta, gamma, p, batch, steps,
    )  # fmt: skip


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_expected_loss_matches_per_step_recursion(family, p):
    problem = problem_for(3)
    lr, beta, gamma = FAMILIES[family]
    opt = nqm.Optimizer(lr, momentum=beta, ema=gamma, precond_power=p)
    got = nqm.expected_loss(problem, opt, SCHEDULE, STEPS)
    want = oracle(problem, lr, beta, gamma, p, batch_of_step, STEPS)
    np.testing.assert_allclose(got, want, rtol=RTOL_BRUTE, atol=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_schedule_of_equal_pieces_equals_the_int(family):
    problem = problem_for(4)
    lr, beta, gamma = FAMILIES[family]
    opt = nqm.Optimizer(lr, momentum=beta, ema=gamma, precond_power=0.25)
    split = nqm.BatchSchedule((5, 17), (8, 8, 8))  # propagated piece by piece
    got = nqm.expected_loss(problem, opt, split, STEPS)
    want = nqm.expected_loss(problem, opt, 8, STEPS)
    np.testing.assert_allclose(got, want, rtol=RTOL_BRUTE, atol=0)
    one = nqm.BatchSchedule.constant(8)
    np.testing.assert_array_equal(nqm.expected_loss(problem, opt, one, STEPS), want)


def test_ramps_match_recursion():
    problem = problem_for(5)
    for shape in nqm.RampShape:
        ramp = nqm.BatchSchedule.ramp(2, 64, 50, 8, shape)
        values = [ramp(s) for s in range(120)]
        opt = nqm.Optimizer(0.7, momentum=0.4)
        got = nqm.expected_loss(problem, opt, ramp, [0, 10, 49, 50, 119])
        want = oracle(problem, 0.7, 0.4, 0.0, 0.0, lambda s, v=values: v[s],
                      [0, 10, 49, 50, 119])  # fmt: skip
        np.testing.assert_allclose(got, want, rtol=RTOL_BRUTE, atol=0)


def test_risk_terms_with_schedule_matches_recursion():
    problem = problem_for(6)
    lrs = np.array([[0.3, 0.6], [0.2, 0.5]])
    betas = np.array([[0.0, 0.0], [0.5, 0.5]])
    steps = [0, 7, 41]
    d, n = nqm.risk_terms(problem, lrs, betas, 0.0, 0.0, steps, batch_size=SCHEDULE)
    assert d.shape == (2, 2, 3)
    for i in np.ndindex(2, 2):
        want = oracle(problem, lrs[i], betas[i], 0.0, 0.0, batch_of_step, steps)
        np.testing.assert_allclose(d[i] + n[i], want, rtol=RTOL_BRUTE, atol=0)


# ------------------------------------------------------------ construction
def test_ramp_values_written_out():
    lin = nqm.BatchSchedule.ramp(4, 12, 8, 4, "linear")
    assert [lin(s) for s in range(10)] == [4, 4, 6, 6, 8, 8, 10, 10, 12, 12]
    geo = nqm.BatchSchedule.ramp(1, 16, 4, 4, "geometric")
    assert [geo(s) for s in range(6)] == [1, 2, 4, 8, 16, 16]
    # more pieces than steps: empty pieces vanish; no ramp: the end at once
    assert nqm.BatchSchedule.ramp(2, 9, 0, 5).values == (9,)
    short = nqm.BatchSchedule.ramp(2, 10, 2, 4)
    # pieces [0,0) [0,1) [1,2) [2,2): the empty first and last vanish
    assert [short(s) for s in range(3)] == [4, 6, 10]


def test_examples_written_out():
    # 5 updates of 2, 18 of 7, 17 of 3, then 16 each
    assert SCHEDULE.examples(0) == 0
    assert SCHEDULE.examples(5) == 10
    assert SCHEDULE.examples(23) == 10 + 126
    assert SCHEDULE.examples(45) == 10 + 126 + 51 + 5 * 16
    np.testing.assert_array_equal(SCHEDULE.examples([1, 6]), [2, 10 + 7])
    assert SCHEDULE.examples(math.inf) == math.inf
    brute = np.cumsum([0] + [batch_of_step(s) for s in range(300)])
    for n in (0, 1, 9, 10, 11, 136, 500, brute[-2]):
        t = SCHEDULE.steps_for_examples(n)
        assert brute[t] <= n < brute[t + 1]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"boundaries": (3,), "values": (2,)}, "len"),
        ({"boundaries": (3, 3), "values": (1, 2, 3)}, "increasing"),
        ({"boundaries": (0,), "values": (1, 2)}, "increasing"),
        ({"boundaries": (2.5,), "values": (1, 2)}, "integers"),
        ({"boundaries": (), "values": (0,)}, "batch_size"),
        ({"boundaries": (), "values": (2.5,)}, "batch_size"),
        ({"boundaries": (), "values": (math.inf,)}, "batch_size"),
    ],
)
def test_bad_schedules_are_rejected(kwargs, param):
    with pytest.raises(ValueError, match=param):
        nqm.BatchSchedule(**kwargs)


@pytest.mark.parametrize(
    ("args", "param"),
    [
        ((0, 8, 10, 2), "start"),
        ((2, 8.5, 10, 2), "end"),
        ((2, 8, -1, 2), "ramp_steps"),
        ((2, 8, 10, 0), "pieces"),
        ((2, 8, 10, True), "pieces"),
        ((2, 8, 10, 2, "cubic"), "shape"),
    ],
)
def test_bad_ramps_are_rejected(args, param):
    with pytest.raises(ValueError, match=param):
        nqm.BatchSchedule.ramp(*args)


# ------------------------------------------------------------ steps, examples
def _first_crossing(losses, target):
    hit = np.nonzero(np.asarray(losses) <= target)[0]
    return int(hit[0]) if hit.size else math.inf


@pytest.mark.parametrize("family", ["sgd", "pwc", "linear_decay", "momentum"])
def test_steps_and_examples_to_target_match_recursion(family):
    problem = problem_for(8)
    lr, beta, gamma = FAMILIES[family]
    opt = nqm.Optimizer(lr, momentum=beta, ema=gamma)
    horizon = 400
    curve = oracle(problem, lr, beta, gamma, 0.0, batch_of_step, range(horizon))
    # off the curve's values by far more than rounding: no ties
    for target in np.quantile(curve[1:], [0.1, 0.5, 0.9]) * (1.0 + 1e-7):
        want = _first_crossing(curve, target)
        steps, examples = nqm.examples_to_target(
            problem, opt, SCHEDULE, target, max_steps=horizon - 1
        )
        assert steps == want
        assert examples == sum(batch_of_step(s) for s in range(want))


def test_certified_search_agrees_with_scan_beyond_schedules():
    """Plain SGD under a ramp uses certified pruning over a long horizon: the
    answer must equal a scan of the exact curve."""
    problem = nqm.NQMProblem.power_law(dim=50)
    ramp = nqm.BatchSchedule.ramp(1, 256, 3000, 16, "geometric")
    opt = nqm.Optimizer(nqm.PiecewiseConstant((2000,), (1.5, 0.5)))
    curve = nqm.expected_loss(problem, opt, ramp, np.arange(20001))
    for target in (curve[100] * 1.001, curve[4000] * 1.001, curve[20000] * 1.001):
        assert nqm.steps_to_target(problem, opt, ramp, target) == _first_crossing(
            curve, target
        )


def test_examples_to_target_with_int():
    problem = problem_for(9)
    opt = nqm.Optimizer(0.5)
    steps, examples = nqm.examples_to_target(problem, opt, 6, 0.5)
    assert examples == 6 * steps == 6 * nqm.steps_to_target(problem, opt, 6, 0.5)


def test_steady_state_uses_the_final_batch_size():
    problem = problem_for(10)
    opt = nqm.Optimizer(0.4)
    assert nqm.steady_state_loss(problem, opt, SCHEDULE) == pytest.approx(
        nqm.steady_state_loss(problem, opt, 16), rel=1e-15
    )


@pytest.mark.parametrize("noise", ["gaussian", "per_example"])
def test_simulation_under_schedule_agrees_with_exact(noise):
    problem = problem_for(11, d=5)
    opt = nqm.Optimizer(0.6, momentum=0.3)
    steps = [3, 20, 30, 60]
    mc = nqm.simulate(problem, opt, SCHEDULE, steps, replicas=4000, seed=1,
                      noise=noise, device="cpu")  # fmt: skip
    exact = nqm.expected_loss(problem, opt, SCHEDULE, steps)
    assert np.all(np.abs(mc.mean - exact) <= MC_SIGMAS * mc.stderr)
    # and the schedule is seen: a constant batch of 2 is measurably worse late
    const = nqm.expected_loss(problem, opt, 2, steps)
    assert np.abs(mc.mean[-1] - const[-1]) > MC_SIGMAS * mc.stderr[-1]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batch_changing_at_every_step_matches_recursion(family):
    """A new batch size at every one of the first 60 updates."""
    problem = problem_for(12)
    rng = np.random.default_rng(12)
    values = [int(v) for v in rng.integers(1, 50, 61)]
    sched = nqm.BatchSchedule(tuple(range(1, 61)), tuple(values))
    lr, beta, gamma = FAMILIES[family]
    opt = nqm.Optimizer(lr, momentum=beta, ema=gamma, precond_power=0.5)
    steps = [0, 1, 2, 30, 59, 60, 61, 90]
    got = nqm.expected_loss(problem, opt, sched, steps)
    want = oracle(problem, lr, beta, gamma, 0.5, lambda s: values[min(s, 60)], steps)
    np.testing.assert_allclose(got, want, rtol=RTOL_BRUTE, atol=0)
