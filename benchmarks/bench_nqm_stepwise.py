"""Cost per update of the exact risk under an lr that changes at every step.

A callable lr (``nqm.FromCallable``) makes every update its own piece. The
exact risk builds those pieces a chunk at a time, vectorised over pieces and
modes (plain SGD: closed-form pieces composed by a scan; momentum / EMA: the
per-piece matrices). This script times that against the same engine with a
chunk of one piece (one piece per NumPy call, as a per-step loop would), side
by side in one run, and prints microseconds per update and the speed-up, for
plain SGD and for momentum, and the largest relative difference of the losses.

The machine is shared: the methods run interleaved in rounds, each call timed
in process CPU time with BLAS/OpenMP limited to one thread; each ratio is the
median over rounds.

Usage::

    python benchmarks/bench_nqm_stepwise.py [--dim 100] [--steps 20000]
        [--rounds 5]
"""

from __future__ import annotations

from benchtools import interleaved, median_ratio, one_blas_thread

one_blas_thread()

import argparse  # noqa: E402
import statistics  # noqa: E402

import numpy as np  # noqa: E402

import nqm  # noqa: E402
from nqm import dynamics  # noqa: E402


def _loss(problem, opt, steps, chunk_elements):
    saved = dynamics._PIECE_CHUNK
    dynamics._PIECE_CHUNK = chunk_elements
    try:
        return nqm.expected_loss(problem, opt, 4, steps)
    finally:
        dynamics._PIECE_CHUNK = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    problem = nqm.NQMProblem.power_law(args.dim)
    steps = np.array([args.steps // 2, args.steps])

    def lr(t):
        return 0.5 / (1.0 + np.asarray(t) / 1000.0)

    print(
        f"callable lr, d = {args.dim}, {args.steps} updates, "
        f"median of {args.rounds} rounds"
    )
    for name, momentum in (("sgd", 0.0), ("momentum 0.9", 0.9)):
        opt = nqm.Optimizer(lr=nqm.FromCallable(lr), momentum=momentum)
        times, values = interleaved(
            {
                "chunked": lambda o=opt: _loss(
                    problem, o, steps, dynamics._PIECE_CHUNK
                ),
                "one piece": lambda o=opt: _loss(problem, o, steps, 1),
            },
            args.rounds,
        )
        per_step = {
            k: statistics.median(v) / args.steps * 1e6 for k, v in times.items()
        }
        agree = np.max(np.abs(values["chunked"] / values["one piece"] - 1.0))
        print(
            f"{name:13s} chunked {per_step['chunked']:7.1f} us/update, one piece "
            f"at a time {per_step['one piece']:7.1f} us/update, speed-up "
            f"{median_ratio(times['one piece'], times['chunked']):.2f}x, "
            f"max rel. difference {agree:.1e}"
        )


if __name__ == "__main__":
    main()
