"""Adam on the NQM (Monte Carlo) against the preconditioning proxies p = 0.25,
0.5, 0.75 that Zhang et al. (2019, section 3) used in its place.

Prints Adam's tuned steps to target (with the 95% interval of fresh replicas),
the exact tuned heavy-ball steps at each power, and per power the mean and
spread of log(S_adam / S_p): the mean says how far apart the curves are, the
spread whether their shapes agree.

Usage::

    python benchmarks/compare_adam_proxies.py [--dim 200] [--target-frac 0.05]
        [--replicas 32] [--confirm-replicas 256]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

import nqm
from analysis.frontier import adam_proxy_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=200)
    parser.add_argument("--target-frac", type=float, default=0.05)
    parser.add_argument("--replicas", type=int, default=32)
    parser.add_argument("--confirm-replicas", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = nqm.NQMProblem.power_law(args.dim)
    target = args.target_frac * problem.initial_loss()
    bs = 4.0 ** np.arange(0, 7)
    rows = adam_proxy_rows(
        problem, target, bs, replicas=args.replicas,
        confirm_replicas=args.confirm_replicas, beta1s=(0.0, 0.9), refine=1,
        seed=args.seed, device="cpu",
    )  # fmt: skip
    adam = {r["batch_size"]: r for r in rows if r["optimizer"] == "adam"}
    print(f"power-law NQM d = {args.dim}, target {target:.4g}")
    print("B        adam [95% CI]          " + "  ".join(
        f"p={p:<5g}" for p in (0.0, 0.25, 0.5, 0.75)))  # fmt: skip
    by_p = {}
    for r in rows:
        if r["optimizer"] == "momentum":
            by_p.setdefault(r["precond_power"], {})[r["batch_size"]] = r["steps"]
    for b in bs:
        a = adam[b]
        cells = "  ".join(f"{by_p[p][b]:<7g}" for p in sorted(by_p))
        print(f"{b:<8g} {a['steps']:<6g} [{a['ci_low']:g}, {a['ci_high']:g}]"
              f"   {cells}")  # fmt: skip
    for p in sorted(by_p):
        d = np.array([math.log(adam[b]["steps"] / by_p[p][b]) for b in bs])
        print(f"p = {p:g}: mean log(S_adam/S_p) {d.mean():+.3f}, spread {d.std():.3f}")


if __name__ == "__main__":
    main()
