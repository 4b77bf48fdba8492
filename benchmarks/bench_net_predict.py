"""The prediction side of ``net-predict`` against the measured sweep it replaces.

Run: ``python benchmarks/bench_net_predict.py`` (the embedded default workload:
the ``net-scaling`` defaults, MNIST-1D MLP, 4 optimizers x 7 batch sizes x 8
trials; several minutes on 2 cores) or ``--quick`` (the ``net-scaling --quick``
sweep and a 100-step reference run on both sides' reduced settings). Prints,
measured in one run on the same machine:

* the prediction side: the reference run with its checkpoint collections
  (``kfac_spectra`` training, 300 steps, checkpoints 0 and 150), the NQM
  estimate at both checkpoints, the floor, and the tuned NQM study of every
  optimizer's counterpart (sgd, momentum, ema, linear_decay at p = 0; momentum
  at p = 1 for K-FAC and p = 0.25, 0.5, 0.75 for Adam) at the sweep's batch
  sizes, on 2 workers;
  The study runs at the relative mapping's target: the excess mapping's can
  lie above the estimated NQM's initial loss, where there is nothing to tune;
* the measured sweep (``run_sweep``) of the same workload, on 2 workers;
* their ratio (target <= 0.1).

Everything is written under a fresh temporary directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

from analysis.netpredict import reference
from analysis.netpredict.mapping import (
    PredictedOptimizer,
    nqm_target,
)
from analysis.netpredict.prediction import tuned_prediction
from analysis.netscale.config import QUICK_OVERRIDES, NetScalingConfig
from analysis.netscale.sweep import run_sweep

WORKERS = 2


def prediction_side(cfg: NetScalingConfig, root: Path, steps: int) -> dict:
    checkpoints = (0, steps // 2)
    times = {}
    t = time.perf_counter()
    train_cfg = reference.reference_config(
        cfg.workload(), checkpoints, overrides={"steps": steps}
    )
    run_dir = reference.run_reference(train_cfg, root / "reference")
    times["reference run + collection"] = time.perf_counter() - t
    t = time.perf_counter()
    est = reference.estimate_checkpoints(run_dir, checkpoints)
    floor = reference.final_metric(run_dir, cfg.workload())
    times["estimate + floor"] = time.perf_counter() - t
    problem = est[0].problem
    # The excess mapping's target can lie at or above the estimated NQM's
    # initial loss (every predicted step count 0: nothing to tune), so the
    # study is timed at the relative mapping's target, which always needs
    # steps (``net-predict --target-mapping relative``); printed with the rest.
    excess = nqm_target(cfg.target, floor)
    maps = reference.relative_target_maps(run_dir, est, floor, cfg.metric)
    target = maps[checkpoints[0]](cfg.target)
    t = time.perf_counter()
    rows = tuned_prediction(
        problem, tuple(PredictedOptimizer), cfg.batch_sizes, [target], workers=WORKERS
    )
    times["NQM study"] = time.perf_counter() - t
    return {"times": times, "floor": floor, "target": target, "excess": excess,
            "initial": problem.initial_loss(), "modes": problem.n_modes,
            "rows": rows}  # fmt: skip


def measured_side(cfg: NetScalingConfig, root: Path) -> float:
    t = time.perf_counter()
    run_sweep(cfg.sweep(), root / "trials.jsonl", workers=WORKERS, progress=False)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced settings")
    args = parser.parse_args()
    cfg = NetScalingConfig()
    steps = 300
    if args.quick:
        cfg = dataclasses.replace(cfg, **QUICK_OVERRIDES)
        steps = 100
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pred = prediction_side(cfg, root, steps)
        sweep_s = measured_side(cfg, root)
    pred_s = sum(pred["times"].values())
    print(f"workload: {cfg.model} on {cfg.data}, width {cfg.width}, target "
          f"{cfg.target}; floor {pred['floor']:.4f}; {pred['modes']} modes, NQM "
          f"initial loss {pred['initial']:.4g}; NQM target {pred['target']:.4g} "
          f"(relative mapping; the excess mapping's {pred['excess']:.4g})")  # fmt: skip
    steps = [s for r in pred["rows"] for s in r["steps"]]
    print(f"  tuned NQM curves: {len(pred['rows'])}, {len(steps)} points, steps "
          f"{min(steps):.0f} to {max(steps):.0f}")  # fmt: skip
    for name, s in pred["times"].items():
        print(f"  prediction: {name:28s} {s:8.1f} s")
    print(f"  prediction side total            {pred_s:8.1f} s")
    print(f"  measured sweep ({len(cfg.optimizers)} optimizers x "
          f"{len(cfg.batch_sizes)} batch sizes x {cfg.trials} trials) {sweep_s:8.1f} s")  # fmt: skip
    print(f"ratio prediction / sweep: {pred_s / sweep_s:.3f} (target <= 0.1)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
