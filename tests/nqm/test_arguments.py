"""Edge cases of the nqm entry points' arguments (``nqm.arguments``).

Oracles: an mpmath evaluation of the exact loss (binary powering of each mode's
transition and noise moments at 80 digits, ``nqm_oracles.mp_loss``) for the
largest supported step count and for tiny curvatures under preconditioning; for
refusals, the rule that bad input is one ``ValueError`` line naming the
parameter, never a truncation or a silent answer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nqm_oracles import mp_loss

import nqm
from nqm.adam import record_steps
from nqm.arguments import MAX_T
from nqm.closed_form import sgd_risk
from nqm.dynamics import second_moments
from nqm.montecarlo import first_passage_steps

#: Relative agreement with the 80-digit oracle. The exact risk certifies 1e-11;
#: hat h = h^(1-p) from exp/log costs |log h| ulps (about 500 at h = 1e-200).
RTOL_ORACLE = 1e-11
ORACLE_DPS = 80


def _oracle(problem, lr, beta, gamma, p, batch, steps):
    return np.array(
        [
            float(v)
            for v in mp_loss(
                problem.h, problem.c, problem.init_sq, problem.weight,
                lr, beta, gamma, p, batch, steps, dps=ORACLE_DPS,
            )
        ]
    )  # fmt: skip


@pytest.mark.parametrize(("beta", "gamma"), [(0.0, 0.0), (0.9, 0.0), (0.5, 0.75)])
def test_largest_supported_t_matches_mpmath(beta, gamma):
    """At t near 2**63 a mode with alpha h = 1e-19 has still not converged:
    (1 - 1e-19)^(2t) = exp(-1.8). The closed form is exact there."""
    problem = nqm.NQMProblem(h=[2e-19, 1e-3, 1.0], c=[1.0, 0.5, 2.0])
    steps = [2**62 + 1, MAX_T]
    opt = nqm.Optimizer(lr=0.5, momentum=beta, ema=gamma)
    got = nqm.expected_loss(problem, opt, 4, steps)
    want = _oracle(problem, 0.5, beta, gamma, 0.0, 4, steps)
    np.testing.assert_allclose(got, want, rtol=RTOL_ORACLE)
    # an unsigned NumPy integer means the same step count
    assert nqm.expected_loss(problem, opt, 4, np.uint64(MAX_T)) == got[1]
    assert nqm.expected_loss(problem, opt, 4, np.array([MAX_T], np.uint64)) == got[1]


@pytest.mark.parametrize(
    "steps",
    [2**63, 2**70, np.uint64(2**63), [1, 2**64], np.array([2**63], np.uint64), 1e19],
)
def test_steps_beyond_largest_supported_t_are_refused(steps):
    problem = nqm.NQMProblem.power_law(4)
    opt = nqm.Optimizer(lr=0.5)
    for call in (
        lambda: nqm.expected_loss(problem, opt, 4, steps),
        lambda: nqm.risk_terms(problem, 0.5, steps=steps),
        lambda: second_moments(problem, opt, 4, steps),
    ):
        with pytest.raises(ValueError, match=r"at most 2\*\*63 - 1 = 9223372036854775807 \(the largest supported t\)"):  # fmt: skip
            call()


@pytest.mark.parametrize("p", [0.8, 0.9, 1.0])
@pytest.mark.parametrize(("beta", "gamma"), [(0.0, 0.0), (0.5, 0.5)])
def test_tiny_curvature_under_preconditioning_matches_mpmath(p, beta, gamma):
    """c h^(-2p) overflows for h <= 1e-154 and p >= 0.8, but the loss weight
    h c h^(-2p) is finite: the scaled form gives the true value."""
    problem = nqm.NQMProblem(h=[1e-300, 1e-200, 1e-155, 0.5], c=[3.0, 1.0, 2.0, 1.0])
    steps = [10, 1000]
    opt = nqm.Optimizer(lr=0.5, momentum=beta, ema=gamma, precond_power=p)
    want = _oracle(problem, 0.5, beta, gamma, p, 2, steps)
    assert np.all(np.isfinite(want))
    np.testing.assert_allclose(
        nqm.expected_loss(problem, opt, 2, steps), want, rtol=RTOL_ORACLE
    )
    D, N = nqm.risk_terms(problem, 0.5, beta, gamma, p, steps)
    np.testing.assert_allclose(D + N / 2, want, rtol=RTOL_ORACLE)
    if beta == 0.0:
        np.testing.assert_allclose(
            sgd_risk(problem, 0.5, 2, steps, p), want, rtol=RTOL_ORACLE
        )


def _problem_and_opt():
    return nqm.NQMProblem.power_law(4), nqm.Optimizer(lr=0.5)


def _calls():
    """(label, call with a bad argument, the parameter the message names)."""
    prob, opt = _problem_and_opt()
    return [
        ("expected_loss batch", lambda: nqm.expected_loss(prob, opt, True, 3), "batch_size"),
        ("expected_loss steps", lambda: nqm.expected_loss(prob, opt, 4, True), "steps"),
        ("expected_loss bool array", lambda: nqm.expected_loss(prob, opt, 4, np.array([True, False])), "steps"),
        ("expected_loss steps 3.5", lambda: nqm.expected_loss(prob, opt, 4, 3.5), "steps"),
        ("expected_loss str batch", lambda: nqm.expected_loss(prob, opt, ["a"], 3), "batch_size"),
        ("risk_terms steps", lambda: nqm.risk_terms(prob, 0.5, steps=True), "steps"),
        ("second_moments batch", lambda: second_moments(prob, opt, True, 3), "batch_size"),
        ("second_moments list", lambda: second_moments(prob, opt, [1, 2], 3), "batch_size"),
        ("steps_to_target max 3.5", lambda: nqm.steps_to_target(prob, opt, 4, 0.1, max_steps=3.5), "max_steps"),
        ("steps_to_target max True", lambda: nqm.steps_to_target(prob, opt, 4, 0.1, max_steps=True), "max_steps"),
        ("steps_to_target batch", lambda: nqm.steps_to_target(prob, opt, True, 0.1), "batch_size"),
        ("steps_to_target list", lambda: nqm.steps_to_target(prob, opt, [4, 8], 0.1), "batch_size"),
        ("simulate batch", lambda: nqm.simulate(prob, opt, True, 3, replicas=2), "batch_size"),
        ("simulate steps", lambda: nqm.simulate(prob, opt, 4, True, replicas=2), "steps"),
        ("simulate list", lambda: nqm.simulate(prob, opt, [4, 8], 3, replicas=2), "batch_size"),
        ("first passage max 3.5", lambda: first_passage_steps(prob, opt, 4, 0.1, 3.5, 2, torch.Generator()), "max_steps"),
        ("first passage list", lambda: first_passage_steps(prob, opt, [4, 8], 0.1, 3, 2, torch.Generator()), "batch_size"),
        ("noise_scales list", lambda: nqm.noise_scale.noise_scales(prob, opt, [4, 8], 3), "batch_size"),
        ("sgd_risk list", lambda: sgd_risk(prob, 0.5, [4, 8], 3), "batch_size"),
        ("record_steps True", lambda: record_steps(True), "max_steps"),
        ("record_steps 3.5", lambda: record_steps(3.5), "max_steps"),
        ("batch schedule value", lambda: nqm.BatchSchedule((), (True,)), "batch_size"),
        ("batch schedule boundary", lambda: nqm.BatchSchedule((True,), (1, 2)), "boundaries"),
        ("lr schedule boundary", lambda: nqm.PiecewiseConstant((2.5,), (0.1, 0.2)), "boundaries"),
        ("lr schedule value", lambda: nqm.PiecewiseConstant((2,), (True, 0.2)), "lr"),
        ("ramp steps", lambda: nqm.BatchSchedule.ramp(1, 8, True, 2), "ramp_steps"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", range(len(_calls())))
def test_bad_argument_is_one_line_naming_it(case):
    label, call, name = _calls()[case]
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert name in message and "\n" not in message, (label, message)


def test_max_steps_is_never_truncated():
    """max_steps = 3.5 is refused, never truncated to 3; an integral float is the
    integer."""
    prob, opt = _problem_and_opt()
    target = float(nqm.expected_loss(prob, opt, 4, 4))
    assert nqm.steps_to_target(prob, opt, 4, target, max_steps=4.0) == 4
    assert math.isinf(nqm.steps_to_target(prob, opt, 4, target, max_steps=3))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_stepwise_schedule_beyond_its_limit_is_refused_before_any_work(momentum):
    """An lr that may change at every step over 10**12 updates would take hours:
    refused at once, naming the limit; with a constant tail the same horizon is
    exact and cheap."""
    from nqm.dynamics import MAX_STEPWISE_PIECES

    problem = nqm.NQMProblem.power_law(4)

    def lr(t):
        return 0.5 / (1.0 + np.asarray(t) / 100.0)

    opt = nqm.Optimizer(lr=nqm.FromCallable(lr), momentum=momentum)
    with pytest.raises(ValueError, match=f"at most {MAX_STEPWISE_PIECES} are accepted"):
        nqm.expected_loss(problem, opt, 4, 10**12)
    tail = nqm.Optimizer(lr=nqm.FromCallable(lr, constant_after=200), momentum=momentum)
    assert math.isfinite(nqm.expected_loss(problem, tail, 4, 10**12))


def test_stepwise_sgd_states_beyond_memory_limit_are_refused():
    """Plain SGD keeps each piece's state: 5e6 pieces x 100 modes (8 GB) is
    refused at once, naming the limit on kept values."""
    from nqm.dynamics import MAX_PIECE_STATES

    problem = nqm.NQMProblem.power_law(100)
    opt = nqm.Optimizer(lr=nqm.FromCallable(lambda t: 0.5 / (1.0 + np.asarray(t))))
    with pytest.raises(ValueError, match=f"at most {MAX_PIECE_STATES} are kept"):
        nqm.expected_loss(problem, opt, 4, 5 * 10**6)
