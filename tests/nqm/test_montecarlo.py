"""Monte-Carlo simulation (`nqm.simulate`) against the exact expected loss.

Statistical oracle: the replica mean must lie within ``N_SE`` standard errors of
the exact expectation at every reported step, and the standard error must be small
enough (``MAX_REL_SE``) for that check to have power. All runs use fixed seeds, so
each test is deterministic; the CUDA test (skipped without a GPU) draws other random
numbers than the CPU, so it is checked against the exact expectation and against
the CPU run statistically.
"""

from __future__ import annotations

import numpy as np
import pytest

import nqm

N_SE = 4.0
MAX_REL_SE = 0.05
REPLICAS = 1000
DIM = 60
STEPS = [0, 1, 7, 40, 150]
BATCH = 4


@pytest.fixture(scope="module")
def problem():
    return nqm.NQMProblem.power_law(dim=DIM)


def assert_agrees(
    problem,
    opt,
    batch=BATCH,
    steps=STEPS,
    noise="gaussian",
    seed=0,
    replicas=REPLICAS,
    device="cpu",
):
    mc = nqm.simulate(
        problem,
        opt,
        batch,
        steps,
        replicas=replicas,
        seed=seed,
        noise=noise,
        device=device,
        chunk=250,
    )
    exact = nqm.expected_loss(problem, opt, batch, steps)
    assert mc.replicas == replicas
    np.testing.assert_array_equal(mc.steps, steps)
    assert np.all(mc.stderr > 0)
    assert np.all(mc.stderr <= MAX_REL_SE * exact), (mc.stderr, exact)
    z = (mc.mean - exact) / mc.stderr
    assert np.all(np.abs(z) <= N_SE), z
    return mc, exact


FAMILIES = {
    "sgd": dict(lr=0.8),
    "momentum": dict(lr=0.2, momentum=0.7),
    "ema": dict(lr=0.8, ema=0.9),
    "momentum+ema": dict(lr=0.2, momentum=0.7, ema=0.9),
}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_gaussian_noise_agrees_with_exact(problem, family, p):
    assert_agrees(
        problem,
        nqm.Optimizer(**FAMILIES[family], precond_power=p),
        seed=list(FAMILIES).index(family) + int(10 * p),
    )


@pytest.mark.parametrize(
    "sched",
    [
        nqm.PiecewiseConstant(boundaries=(20, 60), values=(0.9, 0.4, 0.1)),
        nqm.LinearDecay(lr0=0.9, decay=0.1, horizon=100),
    ],
)
def test_schedules_agree_with_exact(problem, sched):
    assert_agrees(
        problem,
        nqm.Optimizer(sched, momentum=0.3, ema=0.5, precond_power=0.5),
        steps=[0, 19, 20, 21, 60, 100, 150],
    )


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_per_example_noise_agrees_with_exact(problem, batch):
    """Rademacher per-example draws: non-Gaussian, same covariance, same mean loss."""
    assert_agrees(
        problem,
        nqm.Optimizer(0.3, momentum=0.5, ema=0.5),
        batch=batch,
        noise=nqm.NoiseModel.PER_EXAMPLE,
        seed=batch,
    )


def test_per_example_noise_is_not_gaussian():
    """One mode, theta_0 = 0, B = 1: theta_1 = -alpha eps = +-1, so the loss is 0.5."""
    prob = nqm.NQMProblem(h=[1.0], c=[4.0], init_sq=0.0)
    mc = nqm.simulate(
        prob,
        nqm.Optimizer(0.5),
        1,
        [1],
        replicas=500,
        seed=3,
        noise="per_example",
        device="cpu",
    )
    # loss = 0.5 * (0.5 * 2)^2 = 0.5 for every replica: no spread at all
    assert mc.mean[0] == pytest.approx(0.5, rel=1e-14, abs=0)
    assert mc.stderr[0] < 1e-12
    gauss = nqm.simulate(
        prob, nqm.Optimizer(0.5), 1, [1], replicas=500, seed=3, device="cpu"
    )
    assert gauss.stderr[0] > 0.01


def test_rotated_noise_with_isotropic_c_agrees_with_exact():
    prob = nqm.NQMProblem(h=1.0 / np.arange(1, 41), c=0.7, init_sq=1.0)
    assert_agrees(
        prob,
        nqm.Optimizer(0.5, momentum=0.5, ema=0.3, precond_power=0.5),
        noise="rotated",
        seed=5,
    )


def test_rotated_noise_with_anisotropic_c_runs_and_is_reproducible(problem):
    opt = nqm.Optimizer(0.5, momentum=0.5)
    kw = dict(replicas=200, noise="rotated", device="cpu")
    a = nqm.simulate(problem, opt, 2, [0, 10, 50], seed=1, **kw)
    b = nqm.simulate(problem, opt, 2, [0, 10, 50], seed=1, **kw)
    c = nqm.simulate(problem, opt, 2, [0, 10, 50], seed=2, **kw)
    assert np.all(np.isfinite(a.mean)) and np.all(a.mean > 0)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.stderr, b.stderr)
    assert np.all(a.mean[1:] != c.mean[1:])
    with pytest.raises(ValueError, match="rotated"):
        nqm.simulate(
            nqm.NQMProblem.power_law(dim=nqm.montecarlo.MAX_ROTATED_DIM + 1),
            opt,
            2,
            [1],
            replicas=2,
            noise="rotated",
            device="cpu",
        )


def test_same_seed_identical_different_seed_different(problem):
    opt = nqm.Optimizer(0.3, momentum=0.5, ema=0.5, precond_power=0.5)
    kw = dict(replicas=64, device="cpu")
    a = nqm.simulate(problem, opt, 2, [0, 5, 30], seed=11, **kw)
    b = nqm.simulate(problem, opt, 2, [0, 5, 30], seed=11, **kw)
    c = nqm.simulate(problem, opt, 2, [0, 5, 30], seed=12, **kw)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.stderr, b.stderr)
    assert np.all(a.mean != c.mean)


def test_check_has_power_wrong_batch_size_is_rejected(problem):
    """The same statistics detect a wrong answer: B = 4 samples vs B = 1 exact."""
    opt = nqm.Optimizer(0.8)
    mc = nqm.simulate(problem, opt, 4, [150], replicas=REPLICAS, seed=9, device="cpu")
    wrong = nqm.expected_loss(problem, opt, 1, 150)
    assert abs(mc.mean[0] - wrong) > 10 * N_SE * mc.stderr[0]


def test_unsorted_and_repeated_steps(problem):
    opt = nqm.Optimizer(0.5)
    mc = nqm.simulate(
        problem, opt, 2, [30, 0, 30, 5], replicas=50, seed=0, device="cpu"
    )
    np.testing.assert_array_equal(mc.steps, [30, 0, 30, 5])
    assert mc.mean[0] == mc.mean[2]
    ref = nqm.simulate(problem, opt, 2, [0, 5, 30], replicas=50, seed=0, device="cpu")
    np.testing.assert_array_equal(mc.mean[[1, 3, 0]], ref.mean)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 0.9}, "batch_size"),
        ({"steps": [-1, 3]}, "steps"),
        ({"steps": -5}, "steps"),
        ({"replicas": 1}, "replicas"),
        ({"replicas": 2.5}, "replicas"),
        ({"noise": "laplace"}, "noise"),
        ({"noise": "per_example", "batch_size": 2.5}, "batch_size"),
        ({"chunk": 0}, "chunk"),
    ],
)
def test_simulate_rejects_bad_inputs(problem, kwargs, param):
    args = dict(batch_size=2, steps=[1], replicas=4, device="cpu") | kwargs
    with pytest.raises(ValueError, match=param):
        nqm.simulate(problem, nqm.Optimizer(0.1), **args)


def test_simulate_rejects_a_device_that_cannot_compute(problem):
    with pytest.raises(ValueError, match="meta"):
        nqm.simulate(problem, nqm.Optimizer(0.1), 2, [1], replicas=4, device="meta")


@pytest.mark.cuda
@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA device"
)
@pytest.mark.parametrize("noise", list(nqm.NoiseModel))
def test_cuda_agrees_with_exact_and_with_the_cpu_run(problem, noise):
    """On CUDA, in float64: every noise model agrees with the exact expectation,
    and with the CPU run of the same seed within ``N_SE`` standard errors of the
    difference (the two devices draw different random numbers); a repeated run
    with the same seed is identical."""
    opt = nqm.Optimizer(
        nqm.PiecewiseConstant((40,), (0.3, 0.1)), momentum=0.5, ema=0.5,
        precond_power=0.5,
    )  # fmt: skip
    if noise is nqm.NoiseModel.ROTATED:  # exact only for isotropic noise
        problem = nqm.NQMProblem(h=1.0 / np.arange(1, 41), c=0.7, init_sq=1.0)
    gpu, _ = assert_agrees(problem, opt, noise=noise, seed=21, device="cuda")
    cpu, _ = assert_agrees(problem, opt, noise=noise, seed=21, device="cpu")
    z = (gpu.mean - cpu.mean) / np.sqrt(gpu.stderr**2 + cpu.stderr**2)
    assert np.all(np.abs(z) <= N_SE), z
    again = nqm.simulate(
        problem, opt, BATCH, STEPS, replicas=REPLICAS, seed=21, noise=noise,
        device="cuda", chunk=250,
    )  # fmt: skip
    np.testing.assert_array_equal(again.mean, gpu.mean)
