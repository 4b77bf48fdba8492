"""Batch-size warm-up on the NQM: steps a tuned ramp saves at equal examples.

For budgets of k times the constant batch's fewest examples E_min, prints the
fewest steps to the target of

* the best constant batch at a constant lr, and a tuned ramp at a constant lr
  (the saving Merrill et al. 2025 measured, 43% for OLMo-1B, is of this kind);
* the best constant batch and a tuned ramp, both with a tuned linear lr decay;
* the best constant batch with a tuned 10-piece lr schedule (``pwc``, exact).

Usage::

    python benchmarks/ramp_savings.py [--dim 1000] [--target-frac 0.03]
        [--budgets 1.2,1.5,3,10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import nqm
from nqm.batch_ramp import best_constant, ramp_savings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--target-frac", type=float, default=0.03)
    parser.add_argument("--budgets", default="1.2,1.5,3,10")
    args = parser.parse_args()
    problem = nqm.NQMProblem.power_law(args.dim)
    target = args.target_frac * problem.initial_loss()
    bs = 2 ** np.arange(0, 17)
    tuned = nqm.best_steps(problem, "sgd", bs.astype(float), target)
    examples = np.array([b * r.steps for b, r in zip(bs, tuned, strict=True)])
    e_min = examples[np.isfinite(examples)].min()
    pwc = nqm.best_steps(problem, "pwc", bs.astype(float), target, baseline=tuned)
    print(f"power-law NQM d = {args.dim}, target {target:.4g}, E_min {e_min:g}")
    for k in (float(v) for v in args.budgets.split(",")):
        t0 = time.perf_counter()
        (flat,) = ramp_savings(problem, target, [k * e_min], bs)
        (decay,) = ramp_savings(problem, target, [k * e_min], bs, lr_decay=True)
        sched = best_constant(problem, target, bs, examples=k * e_min, family="pwc",
                              tuned=pwc)  # fmt: skip
        print(
            f"E = {k:g} E_min | constant lr: batch {flat.constant.steps} steps, "
            f"ramp {flat.ramp.steps} ({100 * flat.saving:.0f}% fewer) | linear "
            f"decay: batch {decay.constant.steps}, ramp {decay.ramp.steps} "
            f"({100 * decay.saving:.0f}% fewer) | pwc at a constant batch "
            f"{sched.steps}: ramp + decay "
            f"{100 * (1 - decay.ramp.steps / sched.steps):.0f}% fewer "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
