"""K-FAC speed: step time relative to SGD, and factor cost vs curvlinops.

Run: ``python benchmarks/bench_kfac.py`` (one to three minutes on 2 CPU cores;
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

2. A width sweep of the MLP (40-h-h-10, h = 64, 100 — the MNIST-1D paper's MLP —,
   128, 256) with K-FAC(10, 100), the measured ratio next to a flop model: per step
   the preconditioning ``P = Σ 2·out·in'·(out + in')`` (two products with the cached
   damped inverses, ``in' = in + 1``), per factor step the Gram matrices
   ``Σ 2B(in'² + out²)`` and the probe's backward, per inverse step ``11 n³`` per
   factor of size n (eigh counted as 9n³, Golub & Van Loan's symmetric QR with
   vectors, plus 2n³ to form the damped inverse), all against the ``F`` of forward
   and backward (``6B·in·out`` per layer, ``4B·in·out`` for the first: no input
   gradient). ``floor = 1 + P/F`` is what the every-step preconditioning alone
   costs if every flop ran at the speed of SGD's; ``model`` adds the factor and
   inverse work amortised over 10 and 100 steps. P/F grows like 2h/(3B) (about
   0.64 at h = 256, B = 256), so 1.5x is out of reach there whatever the code.

3. Factor computation cost in gradient-equivalents (time / time of one
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
SWEEP_WIDTHS = (64, 100, 128, 256)  # 100: the MNIST-1D paper's reference MLP
FACTOR_INTERVAL, INVERSE_INTERVAL = 10, 100
EIGH_FLOPS = 9.0  # × n³ (Golub & Van Loan, symmetric QR with eigenvectors)


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


def mlp_flops(sizes: list[int], batch: int) -> dict[str, float]:
    """Flop model of one step of an MLP with biases (see the module docstring).

    Args:
        sizes: Layer widths ``[in, h1, ..., out]``.
        batch: Batch size B.

    Returns:
        ``fwd_bwd`` (F), ``precond`` (P, every step), ``factors`` (per factor
        step), ``inverses`` (per inverse step).
    """
    layers = list(zip(sizes[:-1], sizes[1:], strict=True))
    macs = [batch * i * o for i, o in layers]
    fwd_bwd = 2 * sum(macs) + 2 * sum(macs) + 2 * sum(macs[1:])
    precond = sum(2 * o * (i + 1) * (o + i + 1) for i, o in layers)
    grams = sum(2 * batch * ((i + 1) ** 2 + o**2) for i, o in layers)
    probe_backward = 2 * sum(macs[1:])
    inverses = sum((EIGH_FLOPS + 2) * ((i + 1) ** 3 + o**3) for i, o in layers)
    return {
        "fwd_bwd": float(fwd_bwd),
        "precond": float(precond),
        "factors": float(grams + probe_backward),
        "inverses": float(inverses),
    }


def predicted_ratios(flops: dict[str, float]) -> tuple[float, float]:
    """``(1 + P/F, 1 + (P + factors/10 + inverses/100)/F)``."""
    f = flops["fwd_bwd"]
    floor = 1 + flops["precond"] / f
    extra = flops["factors"] / FACTOR_INTERVAL + flops["inverses"] / INVERSE_INTERVAL
    return floor, floor + extra / f


def step_times(build, x, y, windows: dict[str, int], rounds: int) -> dict[str, float]:
    """Amortised per-step seconds of each optimizer in ``windows``, interleaved.

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
            m,
            "ce",
            **KFAC_KW,
            factor_interval=FACTOR_INTERVAL,
            inverse_interval=INVERSE_INTERVAL,
        ),
        SUBSET: lambda m: KFAC(
            m,
            "ce",
            **KFAC_KW,
            factor_interval=FACTOR_INTERVAL,
            inverse_interval=INVERSE_INTERVAL,
            stats_batch_size=STATS_ROWS,
        ),
        "kfac(1,1)": lambda m: KFAC(
            m, "ce", **KFAC_KW, factor_interval=1, inverse_interval=1
        ),
    }
    variants = {k: v for k, v in variants.items() if k in windows}
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
    print(
        f"\n== MLP 40-h-h-10 width sweep, batch {x.shape[0]}, kfac(10,100): measured "
        "(median ratio of interleaved windows) vs flop model =="
    )
    print(
        "(floor: 1 + P/F, the every-step preconditioning; model: floor + factor "
        "work / 10 + inverse work / 100, every flop at SGD's speed; rest: "
        "(measured - model) x SGD ms/step, what the flops do not explain)"
    )
    print(
        f"  {'h':>4} {'sgd ms':>7} {'kfac ms':>8} {'measured':>9} {'floor':>6} "
        f"{'model':>6} {'rest ms':>8}  {'P/F':>5} {'fact/10F':>8} {'inv/100F':>8}"
    )
    sweep_windows = {"sgd": window, "kfac(10,100)": window}
    for h in SWEEP_WIDTHS:
        t = step_times(lambda h=h: mlp(40, h, 10, depth=2), x, y, sweep_windows, rounds)
        fl = mlp_flops([40, h, h, 10], x.shape[0])
        floor, model = predicted_ratios(fl)
        f, measured = fl["fwd_bwd"], t["kfac(10,100) ratio"]
        print(
            f"  {h:>4} {t['sgd'] * 1e3:7.2f} {t['kfac(10,100)'] * 1e3:8.2f} "
            f"{measured:8.2f}x {floor:5.2f}x {model:5.2f}x "
            f"{(measured - model) * t['sgd'] * 1e3:8.2f}  {fl['precond'] / f:5.2f} "
            f"{fl['factors'] / FACTOR_INTERVAL / f:8.2f} "
            f"{fl['inverses'] / INVERSE_INTERVAL / f:8.2f}"
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
