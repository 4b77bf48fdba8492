"""Cost of a collection checkpoint relative to a K-FAC training step.

A collection (``kfac_spectra.train.collect_checkpoint``: Kronecker factors on the
measurement batch, their eigendecompositions, the eigenbasis gradient statistics,
and the atomic ``.npz`` writes) should cost at most 3 training steps. For each
model and width, measured side by side in one process on MNIST-1D at batch 256:

* step: a K-FAC step with the harness's defaults (``TrainConfig``: damping 0.03,
  KL clip 1e-3, factors every step, inverses every 10 steps), timed over 10
  consecutive steps so the inverse updates are amortised; median of the repeats;
* collect: one collection on a 256-example measurement batch with the default
  measurement Fisher (MC), with the harness's default factor source (K-FAC's own
  factors, ``factor_source="optimizer"``), and for comparison with factors
  computed on the measurement batch (``"measure"``) and with the type-2 Fisher
  (exact GGN; ~10 backward passes for 10 classes; a single call); medians of
  the repeats, each repeat timing a 10-step window and then the collections.

Prints the ratio median collect / median step per model and width.

Run from the repository root: ``python benchmarks/bench_collect.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kfac_spectra import KFAC  # noqa: E402
from kfac_spectra.data import load_mnist1d  # noqa: E402
from kfac_spectra.models import build_model  # noqa: E402
from kfac_spectra.train import TrainConfig, collect_checkpoint  # noqa: E402

BATCH = 256
CASES = (
    ("resnet8", (0.5, 1.0, 2.0)),
    ("simple_cnn", (0.125, 0.25, 0.5)),
)


def _step_window(model, optimizer, x, y) -> float:
    """Mean time of 10 consecutive K-FAC steps (one inverse update among them)."""
    start = time.perf_counter()
    for _ in range(10):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return (time.perf_counter() - start) / 10


def _collect_once(folder, step, twin, x, y, fisher: str, factors=None) -> float:
    start = time.perf_counter()
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
    )
    return time.perf_counter() - start


def _measure(name, width, data, x, y, fisher, defaults, repeats) -> str:
    """One table row: step, collect (own factors / measured / type-2) and ratios."""
    model = build_model(
        name, data.spec, width, generator=torch.Generator().manual_seed(0)
    )
    twin = build_model(
        name, data.spec, width, generator=torch.Generator().manual_seed(0)
    )
    optimizer = KFAC(
        model,
        "ce",
        lr=defaults.lr,
        momentum=defaults.momentum,
        damping=defaults.damping,
        kl_clip=defaults.kl_clip,
        factor_interval=defaults.factor_interval,
        inverse_interval=defaults.inverse_interval,
        seed=0,
    )
    # Interleaved, so that the load of a shared machine hits all alike.
    steps, own, measured = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        _step_window(model, optimizer, x, y)  # warm-up
        twin.load_state_dict(model.state_dict())
        _collect_once(folder, 0, twin, x, y, fisher, optimizer.factors())
        for r in range(repeats):
            steps.append(_step_window(model, optimizer, x, y))
            twin.load_state_dict(model.state_dict())
            factors = optimizer.factors()
            own.append(_collect_once(folder, r, twin, x, y, fisher, factors))
            measured.append(_collect_once(folder, r, twin, x, y, fisher))
        exact = _collect_once(folder, 0, twin, x, y, "type2")  # one call
    step = statistics.median(steps)
    collect, measured = statistics.median(own), statistics.median(measured)
    params = sum(p.numel() for p in model.parameters())
    optimizer.remove_hooks()
    return (
        f"{name:>10} {width:>6g} {params:>8d} {step * 1e3:>8.0f} "
        f"{collect * 1e3:>10.0f} {collect / step:>6.2f} "
        f"{measured * 1e3:>10.0f} {measured / step:>6.2f} "
        f"{exact * 1e3:>9.0f} {exact / step:>6.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    defaults = TrainConfig()
    fisher = defaults.measure_fisher
    data = load_mnist1d(2000, seed=0)
    x, y = data.x_train[:BATCH], data.y_train[:BATCH]
    print(
        f"batch {BATCH}, {args.threads} threads, medians of {args.repeats}; "
        f"measurement Fisher {defaults.measure_fisher} (default) and type2"
    )
    print(
        f"{'model':>10} {'width':>6} {'params':>8} {'step ms':>8} "
        f"{'default ms':>10} {'ratio':>6} {'measure ms':>10} {'ratio':>6} "
        f"{'type2 ms':>9} {'ratio':>6}"
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
