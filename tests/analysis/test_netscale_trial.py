"""Trials: pure functions of (sweep seed, identity); the workload contract."""

import math

import numpy as np
import pytest
import torch

from analysis.netscale.optimizers import (
    OptimizerName,
    Param,
    Scale,
    Schedule,
    from_unit,
    learning_rate,
    search_space,
)
from analysis.netscale.trial import TIMING_KEYS, Status, TrialSpec, run_trial
from analysis.netscale.workload import WorkloadSpec

BLOBS = WorkloadSpec(
    model="netscale_workloads:small_mlp", data="netscale_workloads:blobs", target=0.6
)

HP = {
    OptimizerName.SGD: {"lr": 0.5},
    OptimizerName.MOMENTUM: {"lr": 0.1, "one_minus_beta": 0.1},
    OptimizerName.NESTEROV: {"lr": 0.1, "one_minus_beta": 0.1},
    OptimizerName.ADAM: {
        "lr": 1e-2,
        "one_minus_beta1": 0.1,
        "one_minus_beta2": 1e-3,
        "eps": 1e-8,
    },
    OptimizerName.KFAC: {
        "lr": 0.1,
        "damping": 1e-2,
        "kl_clip": 1e-2,
        "one_minus_beta": 0.1,
    },
}


def _spec(opt, hp=None, **kw):
    base = dict(
        workload=BLOBS,
        optimizer=opt,
        batch_size=16,
        trial=0,
        hparams=tuple((hp or HP[opt]).items()),
        seed=3,
        max_steps=60,
        eval_every=5,
    )
    base.update(kw)
    return TrialSpec(**base)


def _strip(record):
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


@pytest.mark.parametrize("opt", list(OptimizerName))
def test_same_identity_same_curve_bit_for_bit(opt):
    a, b = run_trial(_spec(opt)), run_trial(_spec(opt))
    assert _strip(a) == _strip(b)
    assert a["curve_steps"][0] == 0 and len(a["curve"]) >= 2


def test_seed_and_repeat_change_the_run_but_not_the_hparams():
    base = run_trial(_spec(OptimizerName.SGD, stop_at_target=False))
    other_seed = run_trial(_spec(OptimizerName.SGD, seed=4, stop_at_target=False))
    repeat = run_trial(_spec(OptimizerName.SGD, repeat=1, stop_at_target=False))
    assert base["curve"] != other_seed["curve"]
    assert base["curve"] != repeat["curve"]
    # common random numbers: the initial point does not depend on the optimizer
    adam = run_trial(_spec(OptimizerName.ADAM))
    assert adam["curve"][0] == base["curve"][0]


def test_global_random_state_untouched():
    torch.manual_seed(123)
    np.random.seed(5)  # noqa: NPY002
    before = (torch.get_rng_state().clone(), np.random.get_state()[1].copy())  # noqa: NPY002
    run_trial(_spec(OptimizerName.ADAM))
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1])  # noqa: NPY002


def test_steps_is_the_first_evaluation_at_or_below_target():
    r = run_trial(_spec(OptimizerName.SGD, max_steps=400))
    assert r["status"] == Status.REACHED
    hits = [
        s
        for s, v in zip(r["curve_steps"], r["curve"], strict=True)
        if v <= BLOBS.target
    ]
    assert r["steps"] == hits[0] == r["curve_steps"][-1]  # stopped there
    assert all(v > BLOBS.target for v in r["curve"][:-1])
    assert all(s % 5 == 0 for s in r["curve_steps"])


def test_budget_ends_with_an_evaluation_at_the_last_step():
    r = run_trial(_spec(OptimizerName.SGD, hp={"lr": 1e-3}, max_steps=23))
    assert r["status"] == Status.BUDGET and r["steps"] is None
    assert r["curve_steps"] == [0, 5, 10, 15, 20, 23]


def test_divergence_is_recorded_as_infeasible():
    wl = WorkloadSpec(
        model="netscale_workloads:small_mlp",
        data="netscale_workloads:blobs",
        loss="mse",
        target=0.1,
    )
    r = run_trial(_spec(OptimizerName.SGD, workload=wl, hp={"lr": 1e3}, max_steps=500))
    assert r["status"] == Status.DIVERGED and r["steps"] is None
    assert r["curve_steps"][0] == 0 and math.isfinite(r["curve"][0])


def test_ema_with_gamma_zero_limit_equals_plain_iterates():
    """1 - gamma = 1 makes the average the iterate itself: identical curves."""
    hp = {**HP[OptimizerName.SGD], "one_minus_gamma": 1.0}
    plain = run_trial(_spec(OptimizerName.SGD, stop_at_target=False))
    ema = run_trial(_spec(OptimizerName.SGD, hp=hp, stop_at_target=False))
    assert ema["curve"] == plain["curve"]
    slow = run_trial(
        _spec(
            OptimizerName.SGD, hp={**hp, "one_minus_gamma": 0.05}, stop_at_target=False
        )
    )
    assert slow["curve"][0] == plain["curve"][0]
    assert slow["curve"][1:] != plain["curve"][1:]


def test_linear_decay_schedule():
    hp = {"lr": 2.0, "decay_factor": 0.25, "decay_fraction": 0.5}
    s = Schedule.LINEAR_DECAY
    assert learning_rate(hp, 0, s, 100) == 2.0
    assert learning_rate(hp, 25, s, 100) == pytest.approx(2.0 * (1 - 0.75 * 0.5))
    assert learning_rate(hp, 50, s, 100) == pytest.approx(0.5)
    assert learning_rate(hp, 99, s, 100) == pytest.approx(0.5)
    assert learning_rate(hp, 70, Schedule.CONSTANT, 100) == 2.0
    r = run_trial(_spec(OptimizerName.SGD, hp={**hp, "lr": 0.5}, schedule=s))
    assert r["status"] in (Status.REACHED, Status.BUDGET)


def test_search_space_maps_the_unit_cube_onto_its_ranges():
    p = Param("lr", 1e-3, 1e1)
    assert p.value(0.0) == pytest.approx(1e-3) and p.value(1.0) == pytest.approx(10)
    assert p.value(0.5) == pytest.approx(0.1)  # log-midpoint
    q = Param("f", 0.1, 1.0, Scale.LINEAR)
    assert q.value(0.5) == pytest.approx(0.55)
    space = search_space("adam", ema=True, schedule="linear_decay")
    names = [x.name for x in space]
    assert names[-3:] == ["decay_factor", "decay_fraction", "one_minus_gamma"]
    hp = from_unit(space, [0.5] * len(space))
    assert set(hp) == set(names)
    with pytest.raises(ValueError, match="optimizer"):
        search_space("lbfgs", ema=False, schedule="constant")


def test_factory_with_generator_initialises_itself():
    wl = WorkloadSpec(
        model="netscale_workloads:own_init_mlp",
        data="netscale_workloads:blobs",
        target=0.6,
    )
    a = run_trial(_spec(OptimizerName.SGD, workload=wl))
    b = run_trial(_spec(OptimizerName.SGD, workload=wl))
    c = run_trial(_spec(OptimizerName.SGD))
    assert _strip(a) == _strip(b)
    assert (
        a["curve"][0] != c["curve"][0]
    )  # another initialisation than init_parameters_


def test_mse_with_float_targets():
    def mse_on(data):
        return WorkloadSpec(
            model="netscale_workloads:small_mlp", data=data, loss="mse", target=0.1
        )

    onehot_mse = run_trial(
        _spec(OptimizerName.SGD, workload=mse_on("netscale_workloads:blobs_regression"))
    )
    same = run_trial(
        _spec(OptimizerName.SGD, workload=mse_on("netscale_workloads:blobs"))
    )
    assert _strip(onehot_mse) == _strip(same)  # one-hot labels == float targets


def test_bad_workloads():
    with pytest.raises(ValueError, match="model"):
        WorkloadSpec(model="vgg")
    with pytest.raises(ValueError, match="data_dir"):
        WorkloadSpec(data="cifar10")
    with pytest.raises(ValueError, match="metric"):
        WorkloadSpec(metric="accuracy")
    bad = WorkloadSpec(data="netscale_workloads:not_a_dataset")
    with pytest.raises(ValueError, match="Dataset"):
        run_trial(_spec(OptimizerName.SGD, workload=bad))
    missing = WorkloadSpec(data="no_such_module_xyz:data")
    with pytest.raises(ValueError, match="cannot import"):
        run_trial(_spec(OptimizerName.SGD, workload=missing))
    with pytest.raises(ValueError, match="batch_size"):
        run_trial(_spec(OptimizerName.SGD, batch_size=257))


def test_record_does_not_depend_on_the_callers_thread_count():
    # MNIST-1D at a batch large enough for torch to split reductions over threads
    spec = _spec(
        OptimizerName.KFAC,
        workload=WorkloadSpec(eval_size=1000),
        batch_size=1024,
        max_steps=6,
        eval_every=3,
        stop_at_target=False,
    )
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_trial(spec)
        torch.set_num_threads(2)
        two = run_trial(spec)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    assert _strip(one) == _strip(two)
