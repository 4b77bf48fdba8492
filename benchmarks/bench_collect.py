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
  (exact GGN; ~10 backward passes for 10 classes); median of the repeats.

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


def _step_time(model, optimizer, x, y, repeats: int) -> float:
    def window() -> float:
        start = time.perf_counter()
        for _ in range(10):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        return (time.perf_counter() - start) / 10

    window()  # warm-up: first factors and inverses
    return statistics.median(window() for _ in range(repeats))


def _collect_time(twin, x, y, fisher: str, repeats: int, factors=None) -> float:
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for r in range(repeats + 1):
            generator = torch.Generator().manual_seed(r)
            start = time.perf_counter()
            collect_checkpoint(
                folder,
                r,
                twin,
                x,
                y,
                loss="ce",
                fisher_type=fisher,
                generator=generator,
            )
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # first call is a warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    defaults = TrainConfig()
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
    for name, widths in CASES:
        for width in widths:
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
            step = _step_time(model, optimizer, x, y, args.repeats)
            twin.load_state_dict(model.state_dict())
            fisher = defaults.measure_fisher
            own = optimizer.factors()
            collect = _collect_time(twin, x, y, fisher, args.repeats, factors=own)
            measured = _collect_time(twin, x, y, fisher, args.repeats)
            exact = _collect_time(twin, x, y, "type2", args.repeats)
            params = sum(p.numel() for p in model.parameters())
            print(
                f"{name:>10} {width:>6g} {params:>8d} {step * 1e3:>8.0f} "
                f"{collect * 1e3:>10.0f} {collect / step:>6.2f} "
                f"{measured * 1e3:>10.0f} {measured / step:>6.2f} "
                f"{exact * 1e3:>9.0f} {exact / step:>6.2f}",
                flush=True,
            )
            optimizer.remove_hooks()


if __name__ == "__main__":
    main()
