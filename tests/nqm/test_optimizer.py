"""`nqm.Optimizer` and the learning-rate schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nqm


def test_optimizer_normalises_lr():
    opt = nqm.Optimizer(0.5, momentum=0.75, ema=0.2, precond_power=0.5)
    assert isinstance(opt.schedule, nqm.Constant)
    assert opt.constant_lr == 0.5
    assert opt.effective_lr == pytest.approx(2.0, rel=1e-15)
    assert nqm.Optimizer(3).constant_lr == 3.0
    sched = nqm.LinearDecay(1.0, 0.5, 10)
    assert nqm.Optimizer(sched).schedule is sched
    assert nqm.Optimizer(sched).constant_lr is None
    assert nqm.Optimizer(sched).effective_lr is None
    call = nqm.Optimizer(lambda s: 0.1)
    assert isinstance(call.schedule, nqm.FromCallable)
    assert call.schedule(7) == 0.1


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"lr": math.inf}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"lr": "0.1"}, "lr"),
        ({"lr": True}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -1e-9}, "momentum"),
        ({"momentum": math.nan}, "momentum"),
        ({"ema": 1.0}, "ema"),
        ({"ema": -0.5}, "ema"),
        ({"precond_power": 1.0 + 1e-12}, "precond_power"),
        ({"precond_power": -0.1}, "precond_power"),
        ({"precond_power": math.nan}, "precond_power"),
    ],
)
def test_optimizer_rejects_bad_inputs(kwargs, param):
    with pytest.raises(ValueError, match=rf"^{param}\b"):
        nqm.Optimizer(**({"lr": 0.1} | kwargs))


def test_optimizer_accepts_range_ends():
    nqm.Optimizer(1e-300, momentum=0.0, ema=0.0, precond_power=0.0)
    nqm.Optimizer(1e300, momentum=1 - 1e-16, ema=1 - 1e-16, precond_power=1.0)


def test_constant_schedule():
    s = nqm.Constant(0.3)
    assert s(0) == 0.3 and s(10**12) == 0.3
    np.testing.assert_array_equal(s(np.arange(4)), np.full(4, 0.3))
    starts, lrs = s.pieces(100)
    np.testing.assert_array_equal(starts, [0])
    np.testing.assert_array_equal(lrs, [0.3])
    assert s.constant_after() == 0


def _expand(starts, lrs, n):
    """The per-step lr described by constant pieces over [0, n)."""
    out = np.empty(n)
    ends = list(starts[1:]) + [n]
    for a, b, v in zip(starts, ends, lrs, strict=True):
        out[a:b] = v
    return out


def test_piecewise_constant_schedule():
    s = nqm.PiecewiseConstant(boundaries=(3, 10), values=(1.0, 0.5, 0.1))
    want = np.array([1.0] * 3 + [0.5] * 7 + [0.1] * 5)
    np.testing.assert_array_equal(s(np.arange(15)), want)
    assert s(2) == 1.0 and s(3) == 0.5 and s(10**9) == 0.1
    for n in (1, 3, 4, 10, 15):
        starts, lrs = s.pieces(n)
        assert starts[0] == 0 and np.all(np.diff(starts) > 0) and np.all(starts < n)
        np.testing.assert_array_equal(_expand(starts, lrs, n), want[:n])
    assert s.constant_after() == 10
    single = nqm.PiecewiseConstant(boundaries=(), values=(0.2,))
    assert single(5) == 0.2 and single.constant_after() == 0


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"boundaries": (3, 3), "values": (1.0, 0.5, 0.1)}, "boundaries"),
        ({"boundaries": (0,), "values": (1.0, 0.5)}, "boundaries"),
        ({"boundaries": (3,), "values": (1.0,)}, "values"),
        ({"boundaries": (3,), "values": (1.0, -0.5)}, "lr"),
        ({"boundaries": (3,), "values": (1.0, 0.0)}, "lr"),
    ],
)
def test_piecewise_constant_rejects_bad_inputs(kwargs, param):
    with pytest.raises(ValueError, match=param):
        nqm.PiecewiseConstant(**kwargs)


def test_linear_decay_schedule():
    s = nqm.LinearDecay(lr0=2.0, decay=0.25, horizon=8)
    t = np.arange(12)
    want = np.where(t < 8, 2.0 * (1 - 0.75 * t / 8), 0.5)
    np.testing.assert_allclose(s(t), want, rtol=1e-15)
    assert s(0) == 2.0 and s(8) == pytest.approx(0.5) and s(10**6) == pytest.approx(0.5)
    starts, lrs = s.pieces(12)
    np.testing.assert_allclose(_expand(starts, lrs, 12), want, rtol=1e-15)
    starts, lrs = s.pieces(5)
    np.testing.assert_allclose(_expand(starts, lrs, 5), want[:5], rtol=1e-15)
    assert s.constant_after() == 8
    flat = nqm.LinearDecay(lr0=0.7, decay=1.0, horizon=5)
    np.testing.assert_array_equal(flat(np.arange(9)), np.full(9, 0.7))
    assert len(flat.pieces(100)[0]) == 1


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"lr0": 0.0}, "lr0"),
        ({"decay": 0.0}, "decay"),
        ({"decay": 1.5}, "decay"),
        ({"horizon": 0}, "horizon"),
        ({"horizon": 2.5}, "horizon"),
    ],
)
def test_linear_decay_rejects_bad_inputs(kwargs, param):
    with pytest.raises(ValueError, match=param):
        nqm.LinearDecay(**({"lr0": 1.0, "decay": 0.1, "horizon": 10} | kwargs))


def test_from_callable_schedule():
    calls = []

    def scalar_only(step):
        calls.append(step)
        return 0.5 if int(step) < 4 else 0.25

    s = nqm.FromCallable(scalar_only, constant_after=4)
    want = np.array([0.5] * 4 + [0.25] * 6)
    np.testing.assert_array_equal(s(np.arange(10)), want)
    assert s(2) == 0.5
    starts, lrs = s.pieces(10)
    np.testing.assert_array_equal(starts, [0, 4])  # equal values merged
    np.testing.assert_array_equal(lrs, [0.5, 0.25])
    assert s.constant_after() == 4
    vec = nqm.FromCallable(lambda t: 1.0 / (1.0 + np.asarray(t)))
    np.testing.assert_allclose(vec(np.arange(5)), 1.0 / np.arange(1, 6), rtol=1e-15)
    assert vec.constant_after() is None
    with pytest.raises(ValueError, match="lr"):
        nqm.FromCallable(lambda t: -1.0)(3)
    with pytest.raises(ValueError, match="lr"):
        nqm.FromCallable(0.3)


def test_schedule_with_bad_value_fails_in_expected_loss():
    prob = nqm.NQMProblem.power_law(dim=3)
    opt = nqm.Optimizer(nqm.FromCallable(lambda t: 0.5 if int(t) < 3 else float("nan")))
    with pytest.raises(ValueError, match="lr"):
        nqm.expected_loss(prob, opt, 1, 10)
