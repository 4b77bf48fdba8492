"""The expand input factor of a convolution: the patches' Gram matrix against
the lagged channel correlations (``kfac_spectra.kfac.blocks.conv_gram``).

Run: ``python benchmarks/bench_conv_factor.py`` (one thread, about a minute;
``--threads``, ``--reps``). For each geometry: the flops of each way, their
median times (interleaved, side by side in this run), the time ratio, the
largest relative difference of the two results, and which one
``ConvBlock.input_gram`` picks (``prefer_lagged``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from kfac_spectra.kfac.blocks.conv import (
    conv_padding,
    prefer_lagged,
    unfolded_patch_gram,
)
from kfac_spectra.kfac.blocks.conv_gram import (
    correlation_flops,
    lagged_patch_gram,
    unfolded_gram_flops,
)

# (label, module, input shape)
CASES: list[tuple[str, nn.Module, tuple[int, ...]]] = [
    ("bench CNN conv2 (stride 2), N=128", nn.Conv1d(32, 32, 5, 2, 2), (128, 32, 40)),
    ("bench CNN conv2 (stride 2), N=2048", nn.Conv1d(32, 32, 5, 2, 2), (2048, 32, 40)),
    ("1-D 32->32, k5, stride 1, N=128", nn.Conv1d(32, 32, 5, 1, 2), (128, 32, 40)),
    ("1-D 64->64, k9, stride 1, N=64", nn.Conv1d(64, 64, 9, 1, 4), (64, 64, 64)),
    ("2-D 16->16, 3x3, 16x16, N=128", nn.Conv2d(16, 16, 3, 1, 1), (128, 16, 16, 16)),
    ("2-D 32->32, 3x3, 16x16, N=64", nn.Conv2d(32, 32, 3, 1, 1), (64, 32, 16, 16)),
    ("2-D 64->64, 3x3, 8x8, N=64", nn.Conv2d(64, 64, 3, 1, 1), (64, 64, 8, 8)),
    ("2-D 16->16, 5x5, 16x16, N=64", nn.Conv2d(16, 16, 5, 1, 2), (64, 16, 16, 16)),
    ("2-D 16->32, 3x3, stride 2, N=128", nn.Conv2d(16, 32, 3, 2, 1), (128, 16, 16, 16)),
]


def _median_ms(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(reps):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _padded(x: Tensor, module: nn.Conv1d | nn.Conv2d) -> Tensor:
    flat = [p for lr in reversed(conv_padding(module)) for p in lr]
    return torch.nn.functional.pad(x, flat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    if args.threads < 1 or args.reps < 1:
        parser.error("--threads and --reps must be >= 1")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    one, five, _ = os.getloadavg()
    print(
        f"expand input factor, float32, {args.threads} thread(s), medians of "
        f"{args.reps}; load average {one:.1f} (1 min), {five:.1f} (5 min)"
    )
    print(
        f"  {'geometry':<36} {'GFLOP unfolded':>14} {'lagged':>7} "
        f"{'ms unfolded':>12} {'lagged':>7} {'speed-up':>9} {'rel diff':>9}  picks"
    )
    for label, module, shape in CASES:
        x = torch.randn(shape, generator=gen)
        xp = _padded(x, module)
        k, s, d = module.kernel_size, module.stride, module.dilation
        fns = {
            "unfolded": lambda x=x, m=module: unfolded_patch_gram(x, m, True),
            "lagged": lambda xp=xp, k=k, s=s, d=d: lagged_patch_gram(xp, k, s, d, True),
        }
        ms = _median_ms(fns, args.reps)
        a, _ = fns["unfolded"]()
        b, _ = fns["lagged"]()
        diff = float((a - b).abs().max() / a.abs().max())
        flops = (
            unfolded_gram_flops(shape[0], shape[1], xp.shape[2:], k, s, d),
            correlation_flops(shape[0], shape[1], xp.shape[2:], k),
        )
        pick = "lagged" if prefer_lagged(x, module) else "unfolded"
        print(
            f"  {label:<36} {flops[0] / 1e9:14.3f} {flops[1] / 1e9:7.3f} "
            f"{ms['unfolded']:12.2f} {ms['lagged']:7.2f} "
            f"{ms['unfolded'] / ms['lagged']:8.2f}x {diff:9.1e}  {pick}"
        )
    one, five, _ = os.getloadavg()
    print(f"  load average {one:.1f} (1 min), {five:.1f} (5 min) at the end")


if __name__ == "__main__":
    main()
