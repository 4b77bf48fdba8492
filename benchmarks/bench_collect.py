"""Cost of a collection checkpoint relative to a K-FAC training step.

A collection (``kfac_spectra.train.collect_checkpoint``: Kronecker factors on the
measurement batch, their eigendecompositions, the eigenbasis gradient statistics,
and the atomic ``.npz`` writes) should cost at most 3 training steps. For each
model and width, measured side by side in one process on MNIST-1D at batch 256:

* step: a K-FAC step with the harness's defaults (``TrainConfig``: damping 0.03,
  KL clip 1e-3, factors every step, inverses every 10 steps), timed over 10
  consecutive steps so the inverse updates are amortised;
* collect: one collection on a 256-example measurement batch with the default
  measurement Fisher (MC) and the harness's default factor source (K-FAC's own
  factors, ``factor_source="optimizer"``); for comparison, with factors computed
  on the measurement batch (``"measure"``), with the statistics forced to float64
  throughout (``compute_dtype=torch.float64``; the default forms the projections
  and per-example products of float32 models' convolutions in float32) and with
  the type-2 Fisher (exact GGN; ~10 backward passes for 10 classes).

Each repeat times a 10-step window and then each collection, interleaved so that
the load of a shared machine hits all alike. Printed: medians over the repeats
of wall-clock times and the ratios median collect / median step, and the same
ratio in CPU time of the process (one thread for torch and for NumPy's BLAS, which
does the eigendecompositions), which load from other processes disturbs less; the
``eigh`` column is the part of the default collection spent in the float64
eigendecompositions of the factors (``kronecker_bases``, timed alone on the same
factors), in steps. The last column is the largest relative difference of the
default statistics (variance, second moment, curvature) from the float64 ones
over all directions whose value exceeds 1e-12 of its block's largest.

Run from the repository root: ``python benchmarks/bench_collect.py [--repeats 7]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kfac_spectra import train  # noqa: E402
from kfac_spectra.data import load_mnist1d  # noqa: E402
from kfac_spectra.eigenbasis import kronecker_bases  # noqa: E402
from kfac_spectra.layer_capture import find_blocks  # noqa: E402
from kfac_spectra.models import build_model  # noqa: E402
from kfac_spectra.train import TrainConfig, collect_checkpoint  # noqa: E402

BATCH = 256
CASES = (
    ("resnet8", (0.5, 1.0, 2.0)),
    ("simple_cnn", (0.125, 0.25, 0.5, 1.0)),
)
#: Directions compared for accuracy: value above this fraction of the block's max.
ACCURACY_FLOOR = 1e-12


class _Clock:
    """Wall-clock and process CPU time of a block of code."""

    def __enter__(self) -> _Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def _step_window(model, optimizer, x, y) -> _Clock:
    """Mean times of 10 consecutive K-FAC steps (one inverse update among them)."""
    with _Clock() as clock:
        for _ in range(10):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    clock.wall, clock.cpu = clock.wall / 10, clock.cpu / 10
    return clock


def _collect(folder, step, twin, x, y, fisher, factors=None, exact=False):
    """One collection; returns its clock and the statistics file's arrays."""
    with _Clock() as clock:
        collect_checkpoint(
            folder,
            step,
            twin,
            x,
            y,
            loss="ce",
            fisher_type=fisher,
            generator=torch.Generator().manual_seed(step),
            factors=factors,
            compute_dtype=torch.float64 if exact else None,
        )
    with np.load(train.step_dir(folder, step) / "stats.npz") as data:
        arrays = dict(data)
    return clock, arrays


def _max_relative_error(got: dict, ref: dict) -> float:
    worst = 0.0
    for key, value in ref.items():
        if not key.endswith(("/variance", "/second_moment", "/curvature")):
            continue
        keep = np.abs(value) > ACCURACY_FLOOR * np.abs(value).max()
        err = np.abs(got[key] - value)[keep] / np.abs(value)[keep]
        worst = max(worst, float(err.max(initial=0.0)))
    return worst


def _measure(name, width, data, x, y, fisher, defaults, repeats) -> str:
    """One table row: step, collections and ratios."""
    model = build_model(
        name, data.spec, width, generator=torch.Generator().manual_seed(0)
    )
    twin = build_model(
        name, data.spec, width, generator=torch.Generator().manual_seed(0)
    )
    optimizer = train.make_optimizer(defaults, model)
    times = {k: [] for k in ("step", "own", "eigh", "measure", "float64")}
    error = 0.0
    with tempfile.TemporaryDirectory() as folder:
        _step_window(model, optimizer, x, y)  # warm-up
        twin.load_state_dict(model.state_dict())
        _collect(folder, 0, twin, x, y, fisher, optimizer.factors())
        for r in range(repeats):
            times["step"].append(_step_window(model, optimizer, x, y))
            twin.load_state_dict(model.state_dict())
            factors = optimizer.factors()
            own, got = _collect(folder, r, twin, x, y, fisher, factors)
            wide, ref = _collect(folder, r, twin, x, y, fisher, factors, exact=True)
            times["own"].append(own)
            with _Clock() as eigh:
                kronecker_bases(factors, find_blocks(twin))
            times["eigh"].append(eigh)
            times["float64"].append(wide)
            times["measure"].append(_collect(folder, r, twin, x, y, fisher)[0])
            error = max(error, _max_relative_error(got, ref))
        exact = _collect(folder, 0, twin, x, y, "type2")[0]  # one call
    wall = {k: statistics.median(c.wall for c in v) for k, v in times.items()}
    cpu = {k: statistics.median(c.cpu for c in v) for k, v in times.items()}
    params = sum(p.numel() for p in model.parameters())
    optimizer.remove_hooks()
    step = wall["step"]
    return (
        f"{name:>10} {width:>6g} {params:>7d} {step * 1e3:>7.0f} "
        f"{wall['own'] * 1e3:>7.0f} {wall['own'] / step:>6.2f} "
        f"{cpu['own'] / cpu['step']:>6.2f} {wall['eigh'] / step:>6.2f} "
        f"{wall['measure'] / step:>7.2f} {wall['float64'] / step:>7.2f} "
        f"{exact.wall / step:>6.2f} {error:>8.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # NumPy's BLAS/LAPACK (the eigendecompositions)
    defaults = TrainConfig()
    fisher = defaults.measure_fisher
    data = load_mnist1d(2000, seed=0)
    x, y = data.x_train[:BATCH], data.y_train[:BATCH]
    print(
        f"batch {BATCH}, {args.threads} thread(s), medians of {args.repeats}; "
        f"measurement Fisher {defaults.measure_fisher} (default); ratios are "
        "collection / step"
    )
    print(
        f"{'':>10} {'':>6} {'':>7} {'step':>7} {'default':>7} {'ratio':>6} "
        f"{'ratio':>6} {'eigh':>6} {'measure':>7} {'float64':>7} {'type2':>6} "
        f"{'max rel':>8}"
    )
    print(
        f"{'model':>10} {'width':>6} {'params':>7} {'ms':>7} {'ms':>7} "
        f"{'wall':>6} {'cpu':>6} {'steps':>6} {'ratio':>7} {'ratio':>7} "
        f"{'ratio':>6} {'error':>8}"
    )
    name, widths = CASES[0]  # warm-up of threads and allocator, not printed
    _measure(name, widths[0], data, x, y, fisher, defaults, 1)
    for name, widths in CASES:
        for width in widths:
            print(
                _measure(name, width, data, x, y, fisher, defaults, args.repeats),
                flush=True,
            )


if __name__ == "__main__":
    main()
