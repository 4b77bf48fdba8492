r"""One trial: train a workload with one optimizer, batch size and hyperparameters.

A trial is a pure function of its :class:`TrialSpec` (the sweep seed and the
trial's identity), so every executor and every rerun gives the same record, bit
for bit, on the same machine. Its randomness comes from three generators derived
from ``(seed, repeat)`` by :class:`numpy.random.SeedSequence`:

* the initialisation (:func:`~analysis.netscale.workload.build_network`),
* the batch order: epochs without replacement, a fresh permutation of the
  training set per epoch, consecutive batches of ``B`` examples (an epoch's
  remainder of fewer than ``B`` examples is skipped),
* K-FAC's Monte-Carlo targets.

They do not depend on the optimizer, the batch size or the trial's
hyperparameters: all tuning trials of a sweep share the initialisation and the
data order (common random numbers, so trials differ only by what is tuned), and
``repeat = r > 0`` gives an independent seed for the repeats of a best trial.

The metric is evaluated at step 0, every ``eval_every`` steps and at the budget;
``steps`` is the first evaluated step whose metric is ``<=`` the target. A
non-finite mini-batch loss or metric marks the trial ``diverged`` (infeasible);
it is recorded, never dropped.

References:
    Shallue et al. (2018), section 3.2 (steps to result, the trial budget).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .optimizers import OptimizerName, Schedule, learning_rate, make_optimizer
from .workload import Evaluator, WorkloadSpec, build_network, load_data, loss_value

__all__ = [
    "Status",
    "TrialSpec",
    "run_trial",
    "trial_seeds",
    "hparams_tuple",
    "TIMING_KEYS",
]

#: Record fields that measure time and so differ between identical reruns.
TIMING_KEYS: tuple[str, ...] = ("seconds",)


class Status(enum.StrEnum):
    """How a trial ended."""

    REACHED = "reached"
    """The metric reached the target."""
    BUDGET = "budget"
    """The step budget ran out first (feasible, steps unknown: ``inf``)."""
    DIVERGED = "diverged"
    """A non-finite loss or metric (infeasible)."""


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    """Everything that determines a trial.

    Attributes:
        workload: what is trained and measured.
        optimizer: which optimizer.
        batch_size: examples per step, ``1 <= B <= N``.
        trial: index of the hyperparameter point within its (optimizer, batch
            size) budget.
        hparams: the hyperparameters, as ``(name, value)`` pairs.
        seed: the sweep seed.
        max_steps: step budget.
        eval_every: steps between evaluations of the metric.
        schedule: the learning-rate schedule.
        repeat: 0 for a tuning trial; ``r > 0`` for the r-th repeat of a best
            trial with an independent seed.
        stop_at_target: end the trial at the first evaluation at or below the
            target (repeats run the whole budget, for the mean curve).
    """

    workload: WorkloadSpec
    optimizer: OptimizerName
    batch_size: int
    trial: int
    hparams: tuple[tuple[str, float], ...]
    seed: int
    max_steps: int
    eval_every: int
    schedule: Schedule = Schedule.CONSTANT
    repeat: int = 0
    stop_at_target: bool = True

    @property
    def key(self) -> tuple[str, int, int, int]:
        """The trial's identity within a sweep: (optimizer, batch, trial, repeat)."""
        return (self.optimizer.value, self.batch_size, self.trial, self.repeat)


def trial_seeds(seed: int, repeat: int) -> tuple[int, int, int]:
    """Seeds of the initialisation, the batch order and K-FAC's sampling.

    Returns:
        Three independent 63-bit seeds from ``SeedSequence(seed, spawn_key=(repeat,))``.
    """
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(repeat),))
    words = ss.generate_state(6, np.uint32).astype(np.uint64)
    return tuple(int((words[2 * i] << 31) ^ words[2 * i + 1]) for i in range(3))


def run_trial(spec: TrialSpec) -> dict[str, Any]:
    """Train one trial and return its record.

    The trial runs on one torch intra-op thread (the caller's setting is
    restored afterwards): the bits of a reduction depend on how many threads
    split it, so a trial run in this process, in a pool worker or on Ray gives
    the same record only with the thread count fixed. Parallelism comes from
    running trials side by side.

    Args:
        spec: the trial.

    Returns:
        A JSON-ready record: ``optimizer, batch_size, trial, repeat, hparams``,
        ``status`` (a :class:`Status` value), ``steps`` (``None`` when the
        target was not reached), ``metric, target, curve_steps, curve`` (the
        measured metric at each evaluated step) and ``seconds`` (wall time).

    Raises:
        ValueError: if the batch size exceeds the training set.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(spec)
    finally:
        torch.set_num_threads(threads)


def _train(spec: TrialSpec) -> dict[str, Any]:
    t0 = time.perf_counter()
    wl = spec.workload
    data = load_data(wl)
    x, y = data.x_train, data.y_train
    n, b = x.shape[0], spec.batch_size
    if not 1 <= b <= n:
        raise ValueError(f"batch_size must lie in [1, {n}] (the training set), got {b}")
    hp = dict(spec.hparams)
    s_init, s_order, s_kfac = trial_seeds(spec.seed, spec.repeat)
    model = build_network(wl, data.spec, torch.Generator().manual_seed(s_init))
    opt = make_optimizer(spec.optimizer, model, hp, loss=wl.loss.value, seed=s_kfac)
    params = [p for p in model.parameters() if p.requires_grad]
    gamma = 1.0 - hp["one_minus_gamma"] if "one_minus_gamma" in hp else None
    average = [p.detach().clone() for p in params] if gamma is not None else None
    evaluate = Evaluator(wl, data)
    order_gen = torch.Generator().manual_seed(s_order)

    curve_steps: list[int] = []
    curve: list[float] = []
    status, steps = Status.BUDGET, None

    def measure(step: int) -> float:
        value = (
            evaluate(model)
            if average is None
            else _evaluate_average(evaluate, model, params, average)
        )
        curve_steps.append(step)
        curve.append(value)
        return value

    value = measure(0)
    if value <= wl.target:
        status, steps = Status.REACHED, 0
    elif not math.isfinite(value):
        status = Status.DIVERGED
    perm, pos = torch.randperm(n, generator=order_gen), 0
    varying_lr = spec.schedule is not Schedule.CONSTANT
    step = 0
    while step < spec.max_steps and not (
        status is Status.DIVERGED or (steps is not None and spec.stop_at_target)
    ):
        if pos + b > n:
            perm, pos = torch.randperm(n, generator=order_gen), 0
        idx = perm[pos : pos + b]
        pos += b
        if varying_lr:
            lr = learning_rate(hp, step, spec.schedule, spec.max_steps)
            for group in opt.param_groups:
                group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss = loss_value(wl.loss, model(x[idx]), y[idx])
        if not math.isfinite(loss.item()):
            status = Status.DIVERGED
            break
        loss.backward()
        opt.step()
        if average is not None:
            # avg <- gamma avg + (1 - gamma) theta
            torch._foreach_lerp_(average, [p.detach() for p in params], 1.0 - gamma)
        step += 1
        if step % spec.eval_every == 0 or step == spec.max_steps:
            value = measure(step)
            if not math.isfinite(value):
                status = Status.DIVERGED
            elif value <= wl.target and steps is None:
                status, steps = Status.REACHED, step
    if status is Status.DIVERGED:
        steps = None
    return {
        "optimizer": spec.optimizer.value,
        "batch_size": b,
        "trial": spec.trial,
        "repeat": spec.repeat,
        "hparams": dict(spec.hparams),
        "status": status.value,
        "steps": steps,
        "metric": wl.metric.value,
        "target": wl.target,
        "curve_steps": curve_steps,
        "curve": [v if math.isfinite(v) else None for v in curve],
        "seconds": time.perf_counter() - t0,
    }


@torch.no_grad()
def _evaluate_average(
    evaluate: Evaluator,
    model: torch.nn.Module,
    params: list[torch.Tensor],
    average: list[torch.Tensor],
) -> float:
    """The metric at the averaged iterate (parameters swapped in and back)."""
    saved = [p.detach().clone() for p in params]
    torch._foreach_copy_(params, average)
    try:
        return evaluate(model)
    finally:
        torch._foreach_copy_(params, saved)


def hparams_tuple(hparams: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    """``dict`` -> the hashable ``(name, value)`` pairs of :class:`TrialSpec`."""
    return tuple((str(k), float(v)) for k, v in hparams.items())
