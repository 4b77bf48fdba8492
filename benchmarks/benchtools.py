"""Timing helpers shared by the benchmark scripts.

A script calls :func:`one_blas_thread` before it imports numpy, so that another
user's load on a shared machine does not count against whichever method happened
to be running; :func:`interleaved` then times every method once per round in
process CPU time, and :func:`median_ratio` is the median over rounds of that
round's ratio.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def one_blas_thread() -> None:
    """BLAS/OpenMP on one thread unless the user set otherwise (call before
    numpy is imported)."""
    for var in THREAD_VARIABLES:
        os.environ.setdefault(var, "1")


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, object]]:
    """CPU seconds of every call, methods interleaved; returns (times, values).

    One warm-up call of each method fills per-problem caches and gives the
    values that the caller checks against each other."""
    values = {k: f() for k, f in fns.items()}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.process_time()
            f()
            times[k].append(time.process_time() - t0)
    return times, values


def median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of ``num[i] / den[i]`` (rounds too short to time are
    left out)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True) if b > 0)
