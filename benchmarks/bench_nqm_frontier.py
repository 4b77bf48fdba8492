"""Speed of the NQM's frontier capabilities, measured side by side in one run.

Batch schedules: one exact ``nqm.expected_loss`` under a 64-piece batch-size
schedule (a geometric ramp) at d = 10^4 power-law modes, against the same
64-piece lr schedule with a constant batch size; for plain SGD and for momentum
+ EMA. Two batch schedules: with its boundaries on the lr schedule's (64 joint
pieces) and between them (127 joint pieces). Target: ratio <= 2.

Adam Monte Carlo: replica-mode-steps per second on the CPU (one torch thread),
for one configuration and for a grid of 26 simulated together. Target: >= 10^8.

The machine is shared, so the methods run interleaved in rounds, each call is
timed in process CPU time with BLAS/OpenMP limited to one thread, and each ratio
is the median over rounds of that round's ratio.

Usage::

    python benchmarks/bench_nqm_frontier.py [--dim 10000] [--steps 100000]
        [--rounds 21] [--adam-replicas 64] [--adam-steps 200]
"""

from __future__ import annotations

from benchtools import interleaved, median_ratio, one_blas_thread

one_blas_thread()

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import nqm  # noqa: E402


def bench_batch_schedule(dim: int, steps: int, rounds: int) -> None:
    problem = nqm.NQMProblem.power_law(dim)
    pieces = 64
    edges = np.round(np.geomspace(1, steps, pieces + 1)[1:-1]).astype(int)
    edges = np.unique(np.maximum(edges, np.arange(1, pieces)))  # strictly increasing
    lr_max = 2.0 / problem.h.max()
    lr_vals = lr_max * np.geomspace(0.9, 0.01, edges.size + 1)
    lr_sched = nqm.PiecewiseConstant(tuple(int(e) for e in edges), tuple(lr_vals))
    b_vals = np.round(np.geomspace(1, 4096, edges.size + 1)).astype(int)
    aligned = nqm.BatchSchedule(
        tuple(int(e) for e in edges), tuple(int(b) for b in b_vals)
    )
    mids = np.concatenate([[1], edges[:-1] + np.diff(edges) // 2])
    mids = np.unique(np.maximum(mids, 1))
    between = nqm.BatchSchedule(
        tuple(int(e) for e in mids), tuple(int(b) for b in b_vals[: mids.size + 1])
    )
    print(
        f"batch schedule: d = {dim}, t = {steps}, lr pieces = {edges.size + 1}, "
        f"batch pieces = {len(aligned.values)} (aligned) / {len(between.values)} "
        f"(between)"
    )
    for label, kw in (("sgd", {}), ("momentum+ema", {"momentum": 0.9, "ema": 0.99})):
        opt = nqm.Optimizer(
            nqm.PiecewiseConstant(lr_sched.boundaries, tuple(
                v * (1.0 - kw.get("momentum", 0.0)) for v in lr_sched.values
            )),
            **kw,
        )  # fmt: skip
        fns = {
            "constant B": lambda opt=opt: nqm.expected_loss(problem, opt, 64, steps),
            "aligned": lambda opt=opt: nqm.expected_loss(problem, opt, aligned, steps),
            "between": lambda opt=opt: nqm.expected_loss(problem, opt, between, steps),
        }
        times, values = interleaved(fns, rounds)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(
            f"  {label:13s} constant B {med['constant B']:8.2f} ms | "
            f"aligned {med['aligned']:8.2f} ms "
            f"(ratio {median_ratio(times['aligned'], times['constant B']):.2f}) | "
            f"between {med['between']:8.2f} ms "
            f"(ratio {median_ratio(times['between'], times['constant B']):.2f}) "
            f"[target <= 2]; losses {values['constant B']:.4g} "
            f"{values['aligned']:.4g} {values['between']:.4g}"
        )


def bench_adam(dim: int, replicas: int, steps: int, rounds: int) -> None:
    """Replica-mode-steps per second of the Adam Monte Carlo on the CPU (one
    torch thread), for one configuration and for a tuning grid of 26 at once."""
    import torch

    from nqm.adam import Adam, adam_curves

    torch.set_num_threads(1)
    problem = nqm.NQMProblem.power_law(dim)
    grid = [Adam(lr, b1) for b1 in (0.0, 0.9) for lr in np.geomspace(1e-4, 1, 13)]
    for label, configs, reps in (
        ("one config", [Adam(1e-3)], replicas),
        ("grid of 26", grid, max(2, replicas // len(grid))),
    ):
        rates = []
        for _ in range(rounds):
            t0 = time.process_time()
            adam_curves(problem, configs, 32, [steps], replicas=reps, seed=0,
                        device="cpu")  # fmt: skip
            rates.append(reps * len(configs) * dim * steps / (time.process_time() - t0))
        print(
            f"adam MC ({label}): d = {dim}, {reps * len(configs)} replicas, "
            f"{steps} steps: {statistics.median(rates) / 1e6:.0f} M "
            f"replica-mode-steps/s (CPU time, 1 thread; target >= 100 M)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--adam-replicas", type=int, default=64)
    parser.add_argument("--adam-steps", type=int, default=200)
    args = parser.parse_args()
    bench_batch_schedule(args.dim, args.steps, args.rounds)
    bench_adam(args.dim, args.adam_replicas, args.adam_steps, max(3, args.rounds // 4))


if __name__ == "__main__":
    main()
