"""Benchmark of the NQM batch-size scaling study.

(a) Wall and CPU time of the whole default study: every family x 5
    preconditioning powers x 21 batch sizes (2^0..2^20) on the exact d = 10^4
    problem (h = c = 1/i, E[theta(0)^2] = 1, target 0.01), through
    ``analysis.scaling.run_study`` as the CLI runs it (one process per CPU by
    default, ``--workers``).

(b) Side by side in the same run: ``nqm.search.best_steps`` against the grid
    search the NQM authors published: a 100-point log-spaced lr grid (for
    momentum, x 20 values of 1 - beta log-spaced from 1 down to 1e-5), each grid
    point searched for its steps to target by doubling t and then bisecting on
    t with ``nqm.expected_loss``; the answer is the best grid point. The baseline
    is slow, so by default it runs on a subset of batch sizes (``--subset``)
    and its time for all 21 batch sizes is extrapolated linearly in the number
    of batch sizes (each batch size is an independent grid search). Steps found
    by both procedures are reported per batch size. Both sides run in this
    process, so the speed-up is printed in wall time and in CPU time; on a
    shared machine the CPU ratio varies less with the load.

Usage::

    python benchmarks/bench_scaling.py                   # (a) and (b)
    python benchmarks/bench_scaling.py --skip-full       # (b) only
    python benchmarks/bench_scaling.py --subset 2^0,2^10 --baseline-families sgd

The machine is shared and noisy: timings are single runs unless ``--repeats`` is
given (then medians), and the ratio compares runs made back to back.

``--compare-with DIR`` runs (a) first on another checkout of the project (its
own ``benchmarks/bench_scaling.py``, with ``DIR`` first on the import path, in
a child process), then on this one, on the same machine in the same run, and
prints both times, their ratio, the load average around each, and whether every
record's steps are identical or better (fewer) here::

    python benchmarks/bench_scaling.py --skip-baseline --workers 2 \
        --compare-with /path/to/other/checkout
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nqm  # noqa: E402
from analysis.config import parse_batch_sizes  # noqa: E402
from analysis.scaling import run_study  # noqa: E402
from nqm.search import Family, best_steps  # noqa: E402

#: The baseline's grid (the NQM authors' procedure).
LR_POINTS = 100
LR_DECADES = 5.0  # lr from alpha_max * 10^-5 up to alpha_max (exclusive)
BETA_POINTS = 20
ONE_MINUS_BETA_MIN = 1e-5
#: The baseline's doubling stops here (beyond: never reached).
BASELINE_MAX_STEPS = 2**34


# --------------------------------------------------------------- baseline
def baseline_steps_at(problem, optimizer, batch_size, target, counter):
    """Doubling then bisection on t for one grid point (assumes monotone loss).

    Returns the t found, or ``inf``; ``counter[0]`` counts loss evaluations.
    """

    def loss(t):
        counter[0] += 1
        return nqm.expected_loss(problem, optimizer, batch_size, t)

    if loss(0) <= target:
        return 0
    hi = 1
    while loss(hi) > target:
        hi *= 2
        if hi > BASELINE_MAX_STEPS:
            return math.inf
    lo = hi // 2  # loss(lo) > target (or lo == 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if loss(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def baseline_grid(problem, family, precond_power):
    """The (lr, momentum) grid of the published procedure."""
    hh, _ = problem.preconditioned(precond_power)
    if family == Family.SGD:
        one_minus_beta = np.array([1.0])
    elif family == Family.MOMENTUM:
        one_minus_beta = np.logspace(0.0, math.log10(ONE_MINUS_BETA_MIN), BETA_POINTS)
    else:
        raise ValueError(f"baseline implements sgd and momentum, not {family!r}")
    grid = []
    for omb in one_minus_beta:
        beta = 1.0 - omb
        lr_max = 2.0 * (1.0 + beta) / hh.max()
        lrs = lr_max * np.logspace(-LR_DECADES, 0.0, LR_POINTS, endpoint=False)
        grid += [(float(a), float(beta)) for a in lrs]
    return grid


def baseline_best(problem, family, batch_size, target, precond_power=0.0):
    """Best grid point: (steps, lr, momentum, evaluations)."""
    counter = [0]
    best = (math.inf, None, None)
    for lr, beta in baseline_grid(problem, family, precond_power):
        opt = nqm.Optimizer(lr, momentum=beta, precond_power=precond_power)
        s = baseline_steps_at(problem, opt, batch_size, target, counter)
        if s < best[0]:
            best = (s, lr, beta)
    return (*best, counter[0])


# ------------------------------------------------------------------ timing
def _timed(fn, repeats):
    """Median wall and CPU seconds of ``repeats`` calls, and the last result."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), out


def _fmt_steps(s):
    return "inf" if not math.isfinite(s) else f"{int(s):d}"


def _fmt_float(v, spec):
    return "-" if v is None else format(v, spec)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def full_study(problem, target, batch_sizes, repeats, workers, families=tuple(Family)):
    """(a): every family x 5 powers x all batch sizes in one ``run_study``, as the
    CLI runs it (``workers`` processes, freed memory kept, SGD shared as every
    family's baseline); wall and CPU time, and tuning time per family."""
    powers = (0.0, 0.25, 0.5, 0.75, 1.0)
    kept = nqm.runtime.keep_freed_memory()
    walls, cpus = [], []
    recs = []
    for _ in range(repeats):
        c0, t0 = _cpu_seconds(), time.perf_counter()
        recs = run_study(
            problem,
            families,
            powers,
            batch_sizes,
            [target],
            progress=False,
            workers=workers,
            keep_freed_memory=kept,
        )
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu_seconds() - c0)
    n_proc = workers or os.cpu_count()
    print(
        f"\n(a) the study, d = {problem.n_modes}, target {target:g}, "
        f"{len(families)} families x {len(powers)} powers x {len(batch_sizes)} B, "
        f"workers = {n_proc}, freed memory kept: {kept}"
    )
    print("| family | finite | evaluations | tuning s (sum over curves) |")
    print("|---|---|---|---|")
    rows = []
    for fam in families:
        fr = [r for r in recs if r["family"] == Family(fam).value]
        row = {
            "family": Family(fam).value,
            "points": len(fr),
            "finite": sum(math.isfinite(r["steps"]) for r in fr),
            "seconds": sum(r["seconds"] for r in fr),
            "evaluations": sum(r["evaluations"] for r in fr),
            "steps": {
                f"p={r['precond_power']:g},B={r['batch_size']}": r["steps"] for r in fr
            },
        }
        rows.append(row)
        print(
            f"| {row['family']} | {row['finite']}/{row['points']} | "
            f"{row['evaluations']} | {row['seconds']:.1f} |"
        )
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    whole = len(families) == len(Family) and len(batch_sizes) == 21
    verdict = f"under 120 s wall on 2 cores ({'met' if wall < 120 else 'NOT met'})"
    print(
        f"{'whole study' if whole else 'study subset'}: wall {wall:.1f} s, "
        f"CPU {cpu:.1f} s (all processes); "
        f"target: {verdict if whole else 'only for the whole default study'}"
    )
    return {"rows": rows, "wall_seconds": wall, "cpu_seconds": cpu}


def side_by_side(problem, target, batch_sizes, subset, families, repeats):
    """(b): best_steps vs the published grid search, in wall time and in this
    process's CPU time (both sides run in this process, one after the other;
    on a shared machine the CPU ratio is the steadier one)."""
    out = []
    for fam in families:
        # ours on all batch sizes (vectorised), and on the subset for per-B steps
        ours_all_s, ours_all_cpu, ours_all = _timed(
            lambda fam=fam: best_steps(problem, fam, batch_sizes, target), repeats
        )
        ours_by_b = {int(r.batch_size): r for r in ours_all}
        base_rows = []
        base_total = base_cpu = 0.0
        for b in subset:
            sec, cpu, (steps, lr, beta, evals) = _timed(
                lambda b=b, fam=fam: baseline_best(problem, fam, b, target), repeats
            )
            base_total += sec
            base_cpu += cpu
            base_rows.append((b, steps, lr, beta, evals, sec))
        per_b = base_total / len(subset)
        base_all = per_b * len(batch_sizes)
        ratio = base_all / ours_all_s
        cpu_ratio = base_cpu / len(subset) * len(batch_sizes) / ours_all_cpu
        print(
            f"\nfamily {fam.value}: grid {len(baseline_grid(problem, fam, 0.0))} points"
        )
        print(
            "| B | steps (best_steps) | steps (grid search) | grid lr | grid beta "
            "| grid evals | grid s |"
        )
        print("|---|---|---|---|---|---|---|")
        for b, steps, lr, beta, evals, sec in base_rows:
            mine = ours_by_b[b]
            print(
                f"| {b} | {_fmt_steps(mine.steps)} | {_fmt_steps(steps)} | "
                f"{_fmt_float(lr, '.3g')} | {_fmt_float(beta, '.6g')} | {evals} | "
                f"{sec:.1f} |"
            )
        print(
            f"best_steps, all {len(batch_sizes)} B: {ours_all_s:.1f} s; grid search: "
            f"{per_b:.1f} s per B measured on {len(subset)} B -> "
            f"{base_all:.0f} s extrapolated to {len(batch_sizes)} B; "
            f"speed-up x{ratio:.0f}"
        )
        print(
            f"CPU time: best_steps {ours_all_cpu:.1f} s; grid search "
            f"{base_cpu / len(subset):.1f} s per B; speed-up x{cpu_ratio:.0f}"
        )
        out.append(
            {
                "family": fam.value,
                "ours_seconds_all_B": ours_all_s,
                "ours_cpu_seconds_all_B": ours_all_cpu,
                "ours_steps": {int(r.batch_size): r.steps for r in ours_all},
                "baseline_subset": [
                    {
                        "batch_size": b,
                        "steps": s,
                        "lr": lr,
                        "momentum": be,
                        "evaluations": ev,
                        "seconds": sec,
                    }
                    for b, s, lr, be, ev, sec in base_rows
                ],
                "baseline_seconds_per_B": per_b,
                "baseline_seconds_extrapolated": base_all,
                "speedup": ratio,
                "baseline_cpu_seconds_per_B": base_cpu / len(subset),
                "cpu_speedup": cpu_ratio,
            }
        )
    return out


def _other_full_study(args) -> dict:
    """(a) of the checkout ``args.compare_with``, run in a child process."""
    import subprocess
    import tempfile

    root = args.compare_with.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "other.json"
        cmd = [
            sys.executable,
            str(root / "benchmarks" / "bench_scaling.py"),
            "--skip-baseline",
            "--dim",
            str(args.dim),
            "--target",
            str(args.target),
            "--batch-sizes",
            args.batch_sizes,
            "--repeats",
            str(args.repeats),
            "--workers",
            str(args.workers),
            "--full-families",
            args.full_families,
            "--json",
            str(out),
        ]
        env = dict(os.environ, PYTHONPATH=str(root))
        load0 = os.getloadavg()
        print(f"\n(a) on {root} first (child process):", flush=True)
        subprocess.run(cmd, env=env, check=True, cwd=root)
        load1 = os.getloadavg()
        other = json.loads(out.read_text())["full_study"]
    other["load_before"], other["load_after"] = load0, load1
    other["root"] = str(root)
    return other


def _print_comparison(other: dict, mine: dict) -> None:
    """Times, ratio, load and the per-record steps of two (a) runs."""
    print(f"\n(a) side by side: {other['root']} (first) vs this checkout")
    print("| checkout | wall s | CPU s | load avg (1, 5, 15 min) before -> after |")
    print("|---|---|---|---|")
    for name, res in (("other", other), ("this", mine)):
        lb = ", ".join(f"{x:.1f}" for x in res["load_before"])
        la = ", ".join(f"{x:.1f}" for x in res["load_after"])
        print(
            f"| {name} | {res['wall_seconds']:.1f} | {res['cpu_seconds']:.1f} | "
            f"{lb} -> {la} |"
        )
    print(
        f"speed-up: wall x{other['wall_seconds'] / mine['wall_seconds']:.2f}, "
        f"CPU x{other['cpu_seconds'] / mine['cpu_seconds']:.2f}"
    )
    same = better = worse = 0
    # rows matched by family: the other checkout may time more families
    theirs = {row["family"]: row for row in other["rows"]}
    missing = [row["family"] for row in mine["rows"] if row["family"] not in theirs]
    if missing:
        print(f"  not timed by the other checkout: {', '.join(missing)}")
    for b in mine["rows"]:
        a = theirs.get(b["family"])
        if a is None:
            continue
        for key, s_other in a["steps"].items():
            s_mine = b["steps"][key]
            s_other = math.inf if s_other is None else float(s_other)
            s_mine = math.inf if s_mine is None else float(s_mine)
            if s_mine == s_other:
                same += 1
            elif s_mine < s_other:
                better += 1
            else:
                worse += 1
                print(f"  worse: {a['family']} {key}: {s_mine} vs {s_other}")
    print(f"records: {same} identical steps, {better} fewer here, {worse} more here")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=10_000)
    ap.add_argument("--target", type=float, default=0.01)
    ap.add_argument("--batch-sizes", default="2^0..2^20")
    ap.add_argument(
        "--subset",
        default="2^0,2^10,2^20",
        help="batch sizes the grid-search baseline actually runs on",
    )
    ap.add_argument(
        "--momentum-subset",
        default="2^10",
        help="subset for the (20x larger) momentum baseline grid",
    )
    ap.add_argument("--baseline-families", default="sgd,momentum")
    ap.add_argument("--skip-full", action="store_true", help="skip (a)")
    ap.add_argument(
        "--full-families",
        default=",".join(f.value for f in Family),
        help="families timed in (a) (default all)",
    )
    ap.add_argument("--skip-baseline", action="store_true", help="skip (b)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--workers", type=int, default=0, help="processes for (a) (0: one per CPU)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write results here")
    ap.add_argument(
        "--compare-with",
        type=Path,
        default=None,
        help="another checkout whose (a) runs first, in the same run",
    )
    args = ap.parse_args(argv)
    if (
        args.compare_with is not None
        and not (args.compare_with / "benchmarks" / "bench_scaling.py").is_file()
    ):
        print(
            f"--compare-with: no benchmarks/bench_scaling.py under {args.compare_with}",
            file=sys.stderr,
        )
        return 2
    warnings.filterwarnings("ignore", category=UserWarning)

    try:
        families = tuple(Family(n.strip()) for n in args.full_families.split(","))
    except ValueError as err:
        ap.error(f"--full-families: {err}")
    problem = nqm.NQMProblem.power_law(args.dim)
    batch_sizes = list(parse_batch_sizes(args.batch_sizes))
    result = {"dim": args.dim, "target": args.target, "batch_sizes": batch_sizes}
    t0 = time.perf_counter()
    if not args.skip_full:
        other = None
        if args.compare_with is not None:
            other = _other_full_study(args)
        load0 = os.getloadavg()
        result["full_study"] = full_study(
            problem, args.target, batch_sizes, args.repeats, args.workers, families
        )
        result["full_study"]["load_before"] = load0
        result["full_study"]["load_after"] = os.getloadavg()
        if other is not None:
            result["compared_with"] = other
            _print_comparison(other, result["full_study"])
    if not args.skip_baseline:
        result["side_by_side"] = []
        # both sides with freed memory kept, as the CLI runs (the grid's many
        # evaluations would otherwise fault their buffers back in on every call)
        kept = nqm.runtime.keep_freed_memory()
        print(
            "\n(b) best_steps vs the published grid search (p = 0), freed memory "
            f"kept: {kept}; load average {os.getloadavg()[0]:.1f}"
        )
        for name in args.baseline_families.split(","):
            fam = Family(name.strip())
            subset = parse_batch_sizes(
                args.momentum_subset if fam == Family.MOMENTUM else args.subset
            )
            result["side_by_side"] += side_by_side(
                problem, args.target, batch_sizes, list(subset), [fam], args.repeats
            )
        print(f"load average at the end of (b): {os.getloadavg()[0]:.1f}")
    result["benchmark_seconds"] = time.perf_counter() - t0
    print(f"\nbenchmark wall time {result['benchmark_seconds']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
