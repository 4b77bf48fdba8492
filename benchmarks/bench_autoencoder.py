"""Block-tridiagonal vs block-diagonal K-FAC on the deep autoencoder (Martens &
Grosse 2015, §7, Figure 4).

Run: ``python benchmarks/bench_autoencoder.py`` (a few minutes on 2 CPU cores;
``--quick`` for a smoke run). Single-threaded by default (``--threads``) so that
thread contention on a shared machine does not distort the ratios.

1. Step cost: the whole step (zero_grad, forward, loss, backward, ``step`` with
   the closure) of block-diagonal and block-tridiagonal K-FAC on the embedded
   digits autoencoder, with the benchmark's settings (factors every step,
   inverses every ``kfac_inverse_interval`` steps, the quadratic-model step rule
   and Levenberg–Marquardt damping), at a fixed mini-batch size, interleaved in
   rounds of one inverse cycle each. Prints the median step and the mean over
   whole cycles (which includes the amortised inverse updates) and their ratios.
   Target: tridiagonal ≤ 1.5 × block-diagonal.

2. The comparison of ``python -m kfac_spectra autoencoder`` (SGD with Nesterov
   momentum, both K-FACs) for each seed: the iterations and the wall time each
   method needs to reach (a) the highest final training error among the methods
   (every method reaches it) and (b) the higher final error of the two K-FACs;
   then whether the tridiagonal version needs fewer iterations and less time
   than the block-diagonal one. Curves, CSV and figure go to ``--out/seed<k>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from kfac_spectra.autoencoder import (
    DIGITS_ENCODER,
    AutoencoderConfig,
    AutoencoderMethod,
    build_autoencoder,
    load_images,
    make_optimizer,
    reach_summary,
    run_comparison,
)

#: The two K-FAC structures, by the method that trains with each.
STRUCTURES = {
    "block_diagonal": AutoencoderMethod.KFAC_BLOCKDIAG,
    "block_tridiagonal": AutoencoderMethod.KFAC_TRIDIAG,
}
STEP_COST_TARGET = 1.5


def step_cost(cfg: AutoencoderConfig, batch: int, rounds: int) -> None:
    """Interleaved step timings of the two structures at one batch size."""
    images = load_images(None)[:batch].float()
    runs = {}
    for structure in STRUCTURES:
        model = build_autoencoder(DIGITS_ENCODER, cfg.seed)
        runs[structure] = (model, make_optimizer(STRUCTURES[structure], model, cfg))
    cycle = cfg.kfac_inverse_interval
    times: dict[str, list[float]] = {s: [] for s in STRUCTURES}
    cycles: dict[str, list[float]] = {s: [] for s in STRUCTURES}

    def one_step(structure: str) -> float:
        model, opt = runs[structure]
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(images), images)
        loss.backward()
        opt.step(
            lambda: F.binary_cross_entropy_with_logits(model(images), images),
            loss=loss.detach(),
        )
        return time.perf_counter() - start

    for structure in STRUCTURES:  # warm-up: one cycle each
        for _ in range(cycle):
            one_step(structure)
    for _ in range(rounds):
        for structure in STRUCTURES:
            took = [one_step(structure) for _ in range(cycle)]
            times[structure] += took
            cycles[structure].append(sum(took) / cycle)
    med = {s: statistics.median(times[s]) for s in STRUCTURES}
    mean = {s: statistics.median(cycles[s]) for s in STRUCTURES}
    print(
        f"\nstep cost, digits autoencoder {'-'.join(map(str, DIGITS_ENCODER))} "
        f"(mirrored), batch {batch}, inverses every {cycle} steps, {rounds} rounds:"
    )
    for s in STRUCTURES:
        print(
            f"  {s:18s} median step {med[s] * 1e3:7.2f} ms   "
            f"mean over a cycle {mean[s] * 1e3:7.2f} ms"
        )
    ratio_med = med["block_tridiagonal"] / med["block_diagonal"]
    ratio_mean = mean["block_tridiagonal"] / mean["block_diagonal"]
    ok = "meets" if max(ratio_med, ratio_mean) <= STEP_COST_TARGET else "MISSES"
    print(
        f"  tridiagonal / block-diagonal: median {ratio_med:.2f}x, cycle mean "
        f"{ratio_mean:.2f}x ({ok} the {STEP_COST_TARGET}x target)"
    )


def comparison(cfg: AutoencoderConfig, out: Path) -> None:
    """The three-method comparison, with the iterations and time to target."""
    curves = run_comparison(cfg, out)
    by = {c.method: c for c in curves}
    kfac = [by["kfac_blockdiag"], by["kfac_tridiag"]]
    targets = {
        "all methods' level": None,
        "K-FAC level": max(c.errors[-1] for c in kfac),
    }
    print(f"\nseed {cfg.seed} -> {out}")
    for c in curves:
        print(
            f"  {c.method:15s} final error {c.errors[-1]:.4f} after "
            f"{c.iterations[-1]} iterations, {c.seconds[-1]:.1f}s"
        )
    for label, value in targets.items():
        target, reached = reach_summary(curves, value)
        print(f"  target {target:.4f} ({label}):")
        hits = dict(reached)
        for method, hit in reached:
            where = "not reached" if hit is None else f"{hit[0]:5d} it, {hit[1]:6.1f}s"
            print(f"    {method:15s} {where}")
        diag, tri = hits.get("kfac_blockdiag"), hits.get("kfac_tridiag")
        if diag is not None and tri is not None:
            print(
                f"    tridiagonal vs block-diagonal: iterations {tri[0]} vs {diag[0]} "
                f"({'fewer' if tri[0] < diag[0] else 'not fewer'}), time "
                f"{tri[1]:.1f}s vs {diag[1]:.1f}s "
                f"({'faster' if tri[1] < diag[1] else 'not faster'})"
            )
        done = {m: h for m, h in reached if h is not None}
        least_it = min(h[0] for h in done.values())
        least_s = min(h[1] for h in done.values())
        fewest = ", ".join(m for m, h in done.items() if h[0] == least_it)
        fastest = ", ".join(m for m, h in done.items() if h[1] == least_s)
        print(f"    fewest iterations: {fewest}; least time: {fastest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--out", default="runs/bench_autoencoder")
    parser.add_argument("--batch", type=int, default=1797, help="step-cost batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    cfg = AutoencoderConfig()
    rounds = 8
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        cfg = dataclasses.replace(
            cfg, iterations=20, sgd_iterations=100, kfac_full_batch_at=10
        )
        rounds, seeds = 2, seeds[:1]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    step_cost(cfg, args.batch, rounds)
    for seed in seeds:
        comparison(dataclasses.replace(cfg, seed=seed), Path(args.out) / f"seed{seed}")


if __name__ == "__main__":
    main()
