"""nqm.families: a constant-lr setting is the same point as its optimizer."""

import math

import numpy as np
import pytest
from nqm_oracles import brute_force_problem_loss

import nqm
from nqm.families import ConstantSetting
from nqm.search import steps_to_target

HORIZON = 400


@pytest.mark.parametrize(
    "values",
    [
        dict(lr=0.6),
        dict(lr=0.4, momentum=0.95),
        dict(lr=1.5, ema=0.6),
        dict(lr=1.2, momentum=0.8, ema=0.7, precond_power=0.5),
    ],
)
def test_setting_certifies_like_its_optimizer_and_brute_force(values):
    """``steps_to_target`` of a setting equals that of the optimizer built from
    it, and both equal the first crossing of a step-by-step recursion of the
    update rule (the oracle of ``nqm_oracles``)."""
    problem = nqm.NQMProblem.power_law(30)
    setting = ConstantSetting(**values)
    opt = nqm.Optimizer(**values)
    assert setting.optimizer() == opt
    assert ConstantSetting.of(opt) == setting
    b, target = 256.0, 0.05
    curve = brute_force_problem_loss(
problem, lambda t: values["lr"], setting.momentum, setting.ema,
        setting.precond_power, b, np.arange(HORIZON + 1),
    )  # fmt: skip
    hit = np.nonzero(curve <= target)[0]
    assert hit.size, "the oracle must cross the target within the horizon"
    expected = int(hit[0])
    assert steps_to_target(problem, setting, b, target) == expected
    assert steps_to_target(problem, opt, b, target) == expected


def test_setting_values_are_the_optimizers_floats():
    s = ConstantSetting(np.float64(0.3), 0, np.float32(0.5), 1)
    for name in ("lr", "momentum", "ema", "precond_power"):
        assert type(getattr(s, name)) is float
    assert s.optimizer().schedule.lr == s.lr
    assert ConstantSetting.of(nqm.Optimizer(nqm.LinearDecay(1.0, 0.5, 10))) is None


@pytest.mark.parametrize(
    ("values", "name"),
    [
        (dict(lr=0.0), "lr"),
        (dict(lr=math.inf), "lr"),
        (dict(lr=0.1, momentum=1.0), "momentum"),
        (dict(lr=0.1, ema=-0.1), "ema"),
        (dict(lr=0.1, precond_power=1.5), "precond_power"),
        (dict(lr=0.1, precond_power=math.nan), "precond_power"),
    ],
)
def test_setting_rejects_out_of_range_values(values, name):
    with pytest.raises(ValueError, match=name):
        ConstantSetting(**values)
