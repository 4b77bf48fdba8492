"""Throughput of the measured sweep's executors and the cost of one trial's step.

Run: ``python benchmarks/bench_net_scaling.py`` (a few minutes on 2 cores;
``--quick`` for a smoke run). Prints, measured side by side in one run:

1. local executor, 2 workers vs 1: trials per second (target >= 1.7x on 2 cores),
   in steady state (after each worker's first trial) and including the
   workers' start-up (imports, MNIST-1D generation: a one-off per worker);
2. Ray (2 CPUs) vs the local executor (2 workers) for trials of >= 2 s
   (target: within 10%);
3. one trial's training step vs a plain torch loop with the same model, optimizer
   and batches, for SGD and Adam (target: within 10%).

Every trial is the same MNIST-1D MLP workload with an unreachable target, so each
runs its whole step budget. The load average is printed before and after: on a
shared machine the ratios are only as good as the load allows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from analysis.executor import Task, run_plan
from analysis.netscale.optimizers import OptimizerName, make_optimizer
from analysis.netscale.trial import TrialSpec, run_trial, trial_seeds
from analysis.netscale.workload import (
    WorkloadSpec,
    build_network,
    load_data,
    loss_value,
)

WORKLOAD = WorkloadSpec(target=0.0, eval_size=1000)  # never reached
HP = {
    OptimizerName.SGD: {"lr": 0.1},
    OptimizerName.ADAM: {
        "lr": 1e-3,
        "one_minus_beta1": 0.1,
        "one_minus_beta2": 1e-3,
        "eps": 1e-8,
    },
}


def _spec(opt: OptimizerName, trial: int, steps: int, batch: int) -> TrialSpec:
    return TrialSpec(
        workload=WORKLOAD,
        optimizer=opt,
        batch_size=batch,
        trial=trial,
        hparams=tuple(HP[opt].items()),
        seed=0,
        max_steps=steps,
        eval_every=steps,
    )


def _throughput(n: int, steps: int, batch: int, **kw) -> tuple[float, float]:
    """Trials per second: steady state (after each worker's first trial, which
    pays for the worker's start, imports and data generation) and overall."""
    tasks = [
        Task(key=i, fn=run_trial, args=(_spec(OptimizerName.SGD, i, steps, batch),))
        for i in range(n)
    ]
    done: list[float] = []
    t0 = time.perf_counter()
    run_plan(tasks, on_result=lambda t, r: done.append(time.perf_counter()), **kw)
    wall = done[-1] - t0
    warm = max(1, int(kw.get("workers", 1)))
    steady = (n - warm) / (done[-1] - done[warm - 1])
    return steady, n / wall


def _plain_loop(opt: OptimizerName, steps: int, batch: int) -> float:
    """Seconds per step of the loop a user would write (same model and batches)."""
    data = load_data(WORKLOAD)
    s_init, s_order, s_kfac = trial_seeds(0, 0)
    model = build_network(WORKLOAD, data.spec, torch.Generator().manual_seed(s_init))
    optim = make_optimizer(opt, model, HP[opt], loss="ce", seed=s_kfac)
    gen = torch.Generator().manual_seed(s_order)
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    perm, pos = torch.randperm(n, generator=gen), 0
    t0 = time.perf_counter()
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + batch]
        pos += batch
        optim.zero_grad(set_to_none=True)
        loss = loss_value(WORKLOAD.loss, model(x[idx]), y[idx])
        loss.backward()
        optim.step()
    return (time.perf_counter() - t0) / steps


def _trial_step(opt: OptimizerName, steps: int, batch: int) -> float:
    """Seconds per step of run_trial (model build and two evaluations included)."""
    return run_trial(_spec(opt, 0, steps, batch))["seconds"] / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    quick = args.quick
    print(f"load average before: {os.getloadavg()}")
    load_data(WORKLOAD)  # warm the in-process cache

    n, steps = (4, 300) if quick else (10, 3000)
    one, one_wall = _throughput(n, steps, 128, workers=1)
    two, two_wall = _throughput(n, steps, 128, workers=2)
    print(
        f"local throughput ({n} trials x {steps} steps, B=128), steady state: "
        f"1 worker {one:.3f}/s, 2 workers {two:.3f}/s, ratio {two / one:.2f}x "
        f"(target >= 1.7); with worker start-up: {one_wall:.3f}/s, "
        f"{two_wall:.3f}/s, ratio {two_wall / one_wall:.2f}x"
    )
    try:
        import ray  # noqa: F401

        ray_tp, ray_wall = _throughput(n, steps, 128, executor="ray", workers=2)
        print(
            f"ray (2 CPUs) vs local 2 workers, steady state: {ray_tp:.3f}/s vs "
            f"{two:.3f}/s, ratio {ray_tp / two:.2f} (target >= 0.9); with "
            f"start-up: {ray_wall:.3f}/s vs {two_wall:.3f}/s"
        )
    except ImportError:
        print("ray not installed: pip install .[ray]")

    loop_steps = 200 if quick else 2000
    for opt in (OptimizerName.SGD, OptimizerName.ADAM):
        plain, trial = [], []
        for _ in range(args.repeats):  # alternated, so both see the same load
            plain.append(_plain_loop(opt, loop_steps, 128))
            trial.append(_trial_step(opt, loop_steps, 128))
        p, t = statistics.median(plain), statistics.median(trial)
        print(
            f"{opt.value}: trial step {t * 1e3:.3f} ms, plain loop {p * 1e3:.3f} ms, "
            f"ratio {t / p:.3f} (target <= 1.10)"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
