"""K-FAC speed: step time relative to SGD, and factor cost vs curvlinops.

Run: ``python benchmarks/bench_kfac.py`` (about two minutes on 2 CPU cores;
``--quick`` for a smoke run). Prints medians over interleaved repetitions and the
ratios, all measured side by side in one run (the machine is shared and noisy).

1. Step time (zero_grad, forward, loss, backward, step) at batch 256 on CPU for an
   MLP and a small 1-D CNN on MNIST-1D, for SGD, K-FAC with factors every 10 and
   inverses every 100 steps (the default ``stats_batch_size=None``: statistics from
   the whole batch), the same with the statistics from 64 of the 256 examples
   (``stats_batch_size=64``, Martens & Grosse 2015, arXiv §8), and K-FAC with
   factors and inverses every step.
Single-threaded by default (``--threads``) so that ratios are not distorted by
thread contention on the shared machine.

2. Factor computation cost in gradient-equivalents (time / time of one
   forward+backward), ``kfac_spectra.compute_factors`` next to curvlinops'
   ``KFACLinearOperator.compute_kronecker_factors`` on the same models and batch
   (curvlinops 3.0.1 has no Conv1d support, so the CNN row has only ours).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kfac_spectra import KFAC, compute_factors
from kfac_spectra.data import load_mnist1d
from kfac_spectra.kfac.toy_models import cnn1d, mlp

# stable settings (the benchmark times steps; it must not diverge)
KFAC_KW = {"lr": 0.01, "damping": 0.03, "kl_clip": 1e-3}
STATS_ROWS = 64  # examples of the batch used for the factor statistics
SUBSET = f"kfac(10,100) stats {STATS_ROWS}"


def _models() -> dict[str, Callable[[], nn.Module]]:
    return {
        "mlp": lambda: mlp(40, 256, 10, depth=2),
        "cnn": lambda: cnn1d(40, 32, 10),
    }


def _time(fn: Callable[[], None], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def step_times(build, x, y, windows: dict[str, int], rounds: int) -> dict[str, float]:
    """Amortised per-step seconds of each optimizer, interleaved in rounds.

    Each round times one window of consecutive steps per optimizer; a window of
    100 steps of K-FAC(10, 100) holds exactly 10 factor steps and one inverse
    step wherever it starts, so window time / 100 is the amortised step. The
    ratio to SGD is taken within each round (same load on the shared machine) and
    its median over rounds reported, next to the medians of the times and of the
    single steps (a non-factor K-FAC step).
    """
    variants = {
        "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9),
        "kfac(10,100)": lambda m: KFAC(
            m, "ce", **KFAC_KW, factor_interval=10, inverse_interval=100
        ),
        SUBSET: lambda m: KFAC(
            m,
            "ce",
            **KFAC_KW,
            factor_interval=10,
            inverse_interval=100,
            stats_batch_size=STATS_ROWS,
        ),
        "kfac(1,1)": lambda m: KFAC(
            m, "ce", **KFAC_KW, factor_interval=1, inverse_interval=1
        ),
    }
    runs = {}
    for name, make in variants.items():
        torch.manual_seed(0)
        model = build()
        runs[name] = (model, make(model))
    amortised: dict[str, list[float]] = {k: [] for k in variants}
    single: dict[str, list[float]] = {k: [] for k in variants}
    ratios: dict[str, list[float]] = {k: [] for k in variants}

    def one(model, opt) -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for model, opt in runs.values():  # warm-up, includes first inverses
        for _ in range(3):
            one(model, opt)
    skipped_before = {
        k: o.counters["skipped_steps"] for k, (_, o) in runs.items() if k != "sgd"
    }
    for _ in range(rounds):
        for name, (model, opt) in runs.items():
            ts = _time(lambda m=model, o=opt: one(m, o), windows[name])
            amortised[name].append(statistics.fmean(ts))
            single[name] += ts
        for name in variants:
            ratios[name].append(amortised[name][-1] / amortised["sgd"][-1])
    for k, before in skipped_before.items():  # a diverged run would time nothing
        if runs[k][1].counters["skipped_steps"] != before:
            raise RuntimeError(f"{k} skipped steps during the benchmark")
    out = {k: statistics.median(v) for k, v in amortised.items()}
    out |= {f"{k} ratio": statistics.median(v) for k, v in ratios.items()}
    out |= {f"{k} single": statistics.median(v) for k, v in single.items()}
    return out


def factor_costs(build, x, y, reps: int) -> dict[str, float]:
    """Median seconds of a gradient, our factors (MC, type-2), curvlinops' factors."""
    torch.manual_seed(0)
    model = build()

    def grad() -> None:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()

    def ours(fisher: str) -> Callable[[], None]:
        return lambda: compute_factors(model, x, y, "ce", fisher)

    fns = {"gradient": grad, "ours mc": ours("mc"), "ours type2": ours("type2")}
    has_conv1d = any(isinstance(m, nn.Conv1d) for m in model.modules())
    try:  # curvlinops 3.0.1 supports Linear and Conv2d only
        if has_conv1d:
            raise ImportError
        import curvlinops

        def theirs(fisher: str) -> Callable[[], None]:
            def run() -> None:
                op = curvlinops.KFACLinearOperator(
                    model,
                    nn.CrossEntropyLoss(),
                    list(model.parameters()),
                    [(x, y)],
                    fisher_type=fisher,
                    separate_weight_and_bias=False,
                    check_deterministic=False,
                    num_per_example_loss_terms=1,
                    num_data=x.shape[0],
                )
                op.compute_kronecker_factors()

            return run

        fns |= {"curvlinops mc": theirs("mc"), "curvlinops type2": theirs("type-2")}
    except ImportError:
        pass
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(reps):
        for k, fn in fns.items():
            times[k] += _time(fn, 1)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: robust ratios on a shared, oversubscribed machine)",
    )
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds, reps = (2, 3) if args.quick else (args.rounds, 15)
    window = 20 if args.quick else 100
    windows = {
        "sgd": window,
        "kfac(10,100)": window,
        SUBSET: window,
        "kfac(1,1)": window // 10,
    }
    data = load_mnist1d(2000, seed=0)
    x, y = data.x_train[: args.batch], data.y_train[: args.batch]
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, threads {threads}, batch {x.shape[0]}")
    print(
        f"\n== step time, amortised over windows of {window} steps (median of "
        f"{rounds} rounds; ratio to SGD within a round; single = median step) =="
    )
    print(
        f"(kfac(f,i): factors every f, inverses every i steps; stats {STATS_ROWS}: "
        f"factor statistics from {STATS_ROWS} of the {x.shape[0]} examples)"
    )
    for name, build in _models().items():
        t = step_times(build, x, y, windows, rounds)
        print(f"{name}:")
        for k in windows:
            print(
                f"  {k:<22} {t[k] * 1e3:6.2f} ms/step  {t[k + ' ratio']:5.2f}x SGD  "
                f"(single step {t[k + ' single'] * 1e3:.2f} ms)"
            )
    print("\n== factor cost (median; in gradient-equivalents = time / fwd+bwd) ==")
    for name, build in _models().items():
        c = factor_costs(build, x, y, reps)
        g = c["gradient"]
        line = "  ".join(
            f"{k}: {v * 1e3:.2f} ms ({v / g:.2f} grads)" for k, v in c.items()
        )
        print(f"{name}: {line}")


if __name__ == "__main__":
    main()
