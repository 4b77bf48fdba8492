r"""The sweep as a plan of executor tasks.

Tuning trials: for every optimizer, the same budget of ``trials`` points at every
batch size, drawn by a scrambled Halton sequence (:class:`scipy.stats.qmc.Halton`)
over the optimizer's unit cube and mapped by its search space
(:func:`~analysis.netscale.optimizers.from_unit`). The points depend only on the
sweep seed and the optimizer, so every batch size gets the same points (Shallue et
al. 2018 use the same search space and budget at every batch size; the same
points also remove one source of noise between batch sizes).

Repeats (``seeds = K``): for every (optimizer, batch size), K runs of its best
tuning trial with independent seeds (``repeat = 1..K``), each over the whole
step budget so that the K-seed mean curve is known at every evaluated step. A
repeat task *needs* the tuning trials of its group that are still to run and
receives the finished ones as data, so it starts as soon as its group is done
and a resumed sweep plans it the same way.

Trials already in the log are left out of the plan: a rerun of the same command
runs only what is missing.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import qmc

from analysis.executor import Task

from .optimizers import OptimizerName, Schedule, from_unit, search_space
from .records import record_key
from .results import best_record
from .trial import TrialSpec, hparams_tuple, run_trial
from .workload import WorkloadSpec

__all__ = ["SweepSpec", "trial_points", "plan_sweep", "run_repeat"]


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """What a sweep runs.

    Attributes:
        workload: the workload.
        optimizers: the optimizers tuned.
        batch_sizes: the batch sizes (each ``<=`` the training set).
        trials: tuning trials per (optimizer, batch size).
        max_steps: step budget of every trial.
        eval_every: steps between evaluations.
        seed: the sweep seed.
        seeds: repeats of each best trial (0: none).
        schedule: learning-rate schedule.
        ema: evaluate the exponential moving average of the iterates.
    """

    workload: WorkloadSpec
    optimizers: tuple[OptimizerName, ...]
    batch_sizes: tuple[int, ...]
    trials: int
    max_steps: int
    eval_every: int
    seed: int = 0
    seeds: int = 0
    schedule: Schedule = Schedule.CONSTANT
    ema: bool = False


def trial_points(optimizer: OptimizerName, spec: SweepSpec) -> list[dict[str, float]]:
    """The ``spec.trials`` hyperparameter points of one optimizer.

    Returns:
        One dict per trial, in trial order.
    """
    space = search_space(optimizer, ema=spec.ema, schedule=spec.schedule)
    index = list(OptimizerName).index(optimizer)
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(index,)))
    sampler = qmc.Halton(d=len(space), scramble=True, seed=rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # balance warnings do not apply to Halton
        unit = sampler.random(spec.trials)
    return [from_unit(space, u) for u in unit]


def _spec(
    sweep: SweepSpec,
    optimizer: OptimizerName,
    batch_size: int,
    trial: int,
    hparams: Mapping[str, float],
    repeat: int = 0,
) -> TrialSpec:
    return TrialSpec(
        workload=sweep.workload,
        optimizer=optimizer,
        batch_size=batch_size,
        trial=trial,
        hparams=hparams_tuple(hparams),
        seed=sweep.seed,
        max_steps=sweep.max_steps,
        eval_every=sweep.eval_every,
        schedule=sweep.schedule,
        repeat=repeat,
        stop_at_target=repeat == 0,
    )


def run_repeat(
    sweep: SweepSpec,
    optimizer: OptimizerName,
    batch_size: int,
    repeat: int,
    finished: Sequence[Mapping[str, Any]],
    inputs: Mapping[Any, Any] | None = None,
) -> dict[str, Any] | None:
    """Run repeat ``repeat`` of the best tuning trial of one group.

    Args:
        sweep: the sweep.
        optimizer: the group's optimizer.
        batch_size: the group's batch size.
        repeat: ``>= 1``.
        finished: tuning records of the group already in the log.
        inputs: tuning records of the group run in this plan (by the executor).

    Returns:
        The repeat's record, or ``None`` when no tuning trial reached the target.
    """
    records = list(finished) + list((inputs or {}).values())
    best = best_record(records)
    if best is None:
        return None
    spec = _spec(
        sweep, optimizer, batch_size, int(best["trial"]), best["hparams"], repeat
    )
    return run_trial(spec)


def _check_done(record: Mapping[str, Any], hparams: Mapping[str, float]) -> None:
    """A logged trial must be the planned one (same point), or the log belongs
    to another sweep."""
    if record["hparams"] != {k: float(v) for k, v in hparams.items()}:
        raise ValueError(
            f"trial log: trial {record_key(record)} has hyperparameters "
            f"{record['hparams']}, this sweep plans {dict(hparams)}; the output "
            "directory holds another sweep (use another --out)"
        )


def plan_sweep(sweep: SweepSpec, done: Iterable[Mapping[str, Any]] = ()) -> list[Task]:
    """The tasks of a sweep that are not in ``done``.

    Args:
        sweep: the sweep.
        done: records already finished (read from the log).

    Returns:
        Tuning tasks (batch sizes ascending, the slow small batches first; then
        optimizers; then trials), then repeat tasks. Keys are the records'
        :func:`~analysis.netscale.records.record_key`.
    """
    done_records = {record_key(r): r for r in done}
    tasks: list[Task] = []
    points = {opt: trial_points(opt, sweep) for opt in sweep.optimizers}
    for b in sweep.batch_sizes:
        for opt in sweep.optimizers:
            for i, hp in enumerate(points[opt]):
                key = (opt.value, b, i, 0)
                if key in done_records:
                    _check_done(done_records[key], hp)
                else:
                    spec = _spec(sweep, opt, b, i, hp)
                    tasks.append(Task(key=key, fn=run_trial, args=(spec,)))
    planned = {t.key for t in tasks}
    for b in sweep.batch_sizes:
        for opt in sweep.optimizers:
            group = [(opt.value, b, i, 0) for i in range(sweep.trials)]
            finished = [done_records[k] for k in group if k in done_records]
            needs = tuple(k for k in group if k in planned)
            for r in range(1, sweep.seeds + 1):
                key = (opt.value, b, -1, r)
                if key in done_records:
                    continue
                tasks.append(
                    Task(
                        key=key,
                        fn=run_repeat,
                        args=(sweep, opt, b, r, finished),
                        needs=needs,
                    )
                )
    return tasks
