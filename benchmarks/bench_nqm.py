"""Speed of the exact NQM risk, measured side by side in one run.

One evaluation of ``nqm.expected_loss`` (momentum + EMA + preconditioning, d = 10^4
power-law modes, t = 10^6 steps) against:

(a) the plain-SGD closed form ``nqm.closed_form.sgd_risk`` at the same d;
(b) a straightforward batched 3x3 matrix-doubling written here: repeated squaring
    of each mode's transition A and accumulation of the noise term
    N <- N + A^k N A^kT, batched over the modes with ``np.matmul``;
(c) a step-by-step propagation of the 3x3 second moments, timed for a few
    thousand steps and extrapolated linearly to t (stated in the output).

Every method's value is printed; they must agree. The machine is shared, so the
methods run interleaved in rounds (each round calls every method once), each call
is timed in process CPU time with BLAS/OpenMP limited to one thread (so another
user's load does not count against whichever method happened to be running), and
every ratio is the median over rounds of that round's ratio.

By default the process keeps freed heap memory (:mod:`nqm.runtime`, as the
analysis CLI does); ``--default-allocator`` measures glibc's defaults, under which
every method pays page faults for its temporaries.

Two horizons are timed: the issue's t = 10^6, where |r|^t = beta^(t/2) of the
underdamped momentum roots has underflowed to zero (the closed form then skips the
phase exactly), and t = 10^3, where the transient is alive and every term is
computed.

A second table times random settings that no tuning of the code can have
aimed at (:func:`random_settings`, fixed seed, the same d): cost of ours /
``sgd_risk`` at each setting's own horizon, and the speed-up over (b) at
t = 10^6, as distributions (median, 90th percentile, worst), with the
hand-picked setting above as one row, and how many modes each setting sends to
doubling (``nqm.doubled_modes``: those that neither the Lagrange closed form
nor its divided-difference form can certify).

The random table times the cost ratio over ``--rounds`` rounds per setting
(every call is below a few milliseconds) and the doubling speed-up over 3.
``--compare-with DIR`` adds the ``nqm`` package of another checkout (imported
under another name, so that its calls interleave with these in the same
rounds) as one more method of that table: its cost / ``sgd_risk`` per setting
and in distribution, side by side with this checkout's.

Usage::

    python benchmarks/bench_nqm.py [--dim 10000] [--steps 1000000] [--rounds 101]
        [--settings 40] [--default-allocator] [--compare-with DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchtools import interleaved, median_ratio, one_blas_thread

one_blas_thread()
# this checkout's nqm, not whichever one is installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402

import numpy as np  # noqa: E402

import nqm  # noqa: E402


# --------------------------------------------------- reference implementations
def transition(h, lr, beta, gamma, p):
    """Per-mode A (d, 3, 3) and noise vector n (d, 3) of x = (theta, m, avg).

    m' = beta m + h^-p (h theta + eps), theta' = theta - lr m',
    avg' = gamma avg + (1 - gamma) theta'.
    """
    pinv = h ** (-p)
    hh = h * pinv
    d = h.size
    a = np.zeros((d, 3, 3))
    a[:, 1, 0] = hh
    a[:, 1, 1] = beta
    a[:, 0, 0] = 1.0 - lr * hh
    a[:, 0, 1] = -lr * beta
    a[:, 2, :] = (1.0 - gamma) * a[:, 0, :]
    a[:, 2, 2] += gamma
    n = np.stack([-lr * pinv, pinv, -(1.0 - gamma) * lr * pinv], axis=-1)
    return a, n


def loss_from_moments(problem, mean_out, var_out, batch):
    """0.5 sum h (init_sq mean^2 + c/B var) for the reported component."""
    return float(
        0.5
        * np.sum(
            problem.h * (problem.init_sq * mean_out**2 + problem.c / batch * var_out)
        )
    )


def doubling_reference(problem, lr, beta, gamma, p, batch, steps):
    """Batched 3x3 matrix doubling: O(27 d log t) multiply-adds, plain numpy."""
    a, n = transition(problem.h, lr, beta, gamma, p)
    q = n[:, :, None] * n[:, None, :]
    eye = np.broadcast_to(np.eye(3), a.shape)
    pw, acc_n = eye.copy(), np.zeros_like(a)  # A^k and N_k of the steps taken so far
    sq, sq_n = a, q  # A^(2^j) and N_(2^j)
    t = int(steps)
    while t:
        if t & 1:
            acc_n = np.matmul(np.matmul(sq, acc_n), np.swapaxes(sq, -1, -2)) + sq_n
            pw = np.matmul(sq, pw)
        t >>= 1
        if t:
            sq_n = np.matmul(np.matmul(sq, sq_n), np.swapaxes(sq, -1, -2)) + sq_n
            sq = np.matmul(sq, sq)
    u = np.array([1.0, 0.0, 1.0])
    o = 2 if gamma > 0 else 0
    mean_out = pw[:, o, :] @ u
    return loss_from_moments(problem, mean_out, acc_n[:, o, o], batch)


def step_loop(problem, lr, beta, gamma, p, batch, steps):
    """Step-by-step Z <- A Z A^T + n n^T (unit noise) and the mean, batched."""
    a, n = transition(problem.h, lr, beta, gamma, p)
    q = n[:, :, None] * n[:, None, :]
    at = np.swapaxes(a, -1, -2)
    z = np.zeros_like(a)
    mean = np.broadcast_to(np.array([1.0, 0.0, 1.0]), n.shape).copy()
    for _ in range(int(steps)):
        z = np.matmul(np.matmul(a, z), at) + q
        mean = np.einsum("dij,dj->di", a, mean)
    o = 2 if gamma > 0 else 0
    return loss_from_moments(problem, mean[:, o], z[:, o, o], batch)


# ------------------------------------------------------------ random settings
#: Seed of the random settings (fixed: every run draws the same settings).
SETTINGS_SEED = 19
#: Preconditioning powers and step counts the random settings draw from.
SETTING_POWERS = (0.0, 0.25, 0.5, 0.75, 1.0)
SETTING_STEPS = (10**3, 10**6, 10**9)
#: lr is log-uniform over this many decades below the stability edge.
LR_DECADES = 4.0
#: beta and gamma are 0 with this probability, else 1 - x, x log-uniform in
#: [ONE_MINUS_MIN, ONE_MINUS_MAX].
P_ZERO = 1.0 / 3.0
ONE_MINUS_MIN, ONE_MINUS_MAX = 1e-4, 0.5


def random_settings(problem, n: int, rng: np.random.Generator) -> list[tuple]:
    """``n`` settings ``(lr, momentum, ema, precond_power, steps)``.

    beta and gamma: each 0 with probability ``P_ZERO``, else ``1 - x`` with
    ``x`` log-uniform in ``[1e-4, 0.5]``; p uniform over ``SETTING_POWERS``; lr
    log-uniform over ``LR_DECADES`` decades below the stability edge
    ``nqm.max_stable_lr(problem, beta, p)`` (exclusive); t uniform over
    ``SETTING_STEPS``.
    """
    lo, hi = np.log(ONE_MINUS_MIN), np.log(ONE_MINUS_MAX)

    def rate():
        if rng.random() < P_ZERO:
            return 0.0
        return float(-np.expm1(rng.uniform(lo, hi)))

    out = []
    for _ in range(n):
        beta, gamma = rate(), rate()
        p = float(rng.choice(SETTING_POWERS))
        edge = nqm.max_stable_lr(problem, momentum=beta, precond_power=p)
        lr = float(edge * 10.0 ** rng.uniform(-LR_DECADES, 0.0))
        t = int(rng.choice(SETTING_STEPS))
        out.append((lr, beta, gamma, p, t))
    return out


# ----------------------------------------------------------------------- main
def _parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--short-steps", type=int, default=1_000)
    ap.add_argument("--batch", type=float, default=128.0)
    ap.add_argument("--rounds", type=int, default=101)
    ap.add_argument("--loop-steps", type=int, default=1_000)
    ap.add_argument(
        "--settings", type=int, default=40, help="random settings (0: skip)"
    )
    ap.add_argument(
        "--compare-with",
        type=Path,
        default=None,
        metavar="DIR",
        help="another checkout whose nqm joins the random table, interleaved",
    )
    ap.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's heap trimming on (see nqm.runtime); by default freed "
        "memory is kept, as the analysis CLI does",
    )
    return ap.parse_args(argv)


def hand_picked_table(problem, setting, sgd_lr, b, r, horizons) -> list[tuple]:
    """(a) and (b) at the hand-picked setting, at each horizon; returns
    ``(t, ours / (a), (b) / ours, rel diff to (b), rel diff of (a))`` rows."""
    lr, beta, gamma, p = setting
    opt = nqm.Optimizer(lr, momentum=beta, ema=gamma, precond_power=p)
    print("| t | ours | (a) sgd_risk | ours / (a) | (b) doubling | (b) / ours |")
    print("|---|---|---|---|---|---|")
    verdicts = []
    for t in horizons:
        times, vals = interleaved(
            {
                "ours": lambda t=t: nqm.expected_loss(problem, opt, b, t),
                "sgd": lambda t=t: nqm.closed_form.sgd_risk(problem, sgd_lr, b, t),
            },
            r,
        )
        dtimes, dvals = interleaved(
            {
                "ours": lambda t=t: nqm.expected_loss(problem, opt, b, t),
                "dbl": lambda t=t: doubling_reference(problem, *setting, b, t),
            },
            max(3, r // 10),
        )
        ratio_a = median_ratio(times["ours"], times["sgd"])
        ratio_b = median_ratio(dtimes["dbl"], dtimes["ours"])
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        med_d = statistics.median(dtimes["dbl"]) * 1e3
        print(
            f"| {t:.0e} | {med['ours']:.3g} ms | {med['sgd']:.3g} ms | "
            f"{ratio_a:.2f}x | {med_d:.3g} ms | {ratio_b:.1f}x faster |"
        )
        rel = abs(vals["ours"] / dvals["dbl"] - 1)
        sgd_exact = nqm.expected_loss(problem, nqm.Optimizer(sgd_lr), b, t)
        verdicts.append((t, ratio_a, ratio_b, rel, abs(vals["sgd"] / sgd_exact - 1)))
    return verdicts


def loop_and_agreement(problem, setting, b, steps, n_loop, verdicts) -> None:
    """(c) the step loop (extrapolated), page faults per evaluation, and how
    the methods agree; then the targets of the hand-picked rows."""
    lr, beta, gamma, p = setting
    opt = nqm.Optimizer(lr, momentum=beta, ema=gamma, precond_power=p)
    ltimes, lvals = interleaved(
        {
            "loop": lambda: step_loop(problem, *setting, b, n_loop),
            "ours": lambda: nqm.expected_loss(problem, opt, b, n_loop),
        },
        3,
    )
    t_loop = statistics.median(ltimes["loop"]) * steps / n_loop
    t_ours = statistics.median(ltimes["ours"])
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        nqm.expected_loss(problem, opt, b, steps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / 20
    print()
    print(f"minor page faults per evaluation of ours (t={steps:.0e}): {faults:.1f}")
    print()
    print("agreement:")
    for t, _, _, rel, rel_sgd in verdicts:
        print(
            f"  t={t:.0e}: ours vs (b) doubling rel diff {rel:.2e}; "
            f"(a) sgd_risk vs expected_loss(SGD) rel diff {rel_sgd:.2e}"
        )
    print(
        f"  ours vs (c) loop at t={n_loop}: {lvals['ours']:.12g} vs "
        f"{lvals['loop']:.12g}, rel diff {abs(lvals['ours'] / lvals['loop'] - 1):.2e}"
    )
    print(
        f"(c) step loop: {n_loop} steps took "
        f"{statistics.median(ltimes['loop']) * 1e3:.3g} ms; linear extrapolation to "
        f"{steps:.0e} steps gives {t_loop:.3g} s, {t_loop / t_ours:.3g}x ours"
    )
    print()
    for t, ratio_a, ratio_b, _, _ in verdicts:
        print(
            f"targets at t={t:.0e}: ours <= 10x sgd_risk: {ratio_a:.2f}x "
            f"({'met' if ratio_a <= 10 else 'NOT met'}); ours >= 20x faster than "
            f"doubling: {ratio_b:.1f}x ({'met' if ratio_b >= 20 else 'NOT met'})"
        )
    print()


def family_table(problem, families, b, rounds, horizons) -> None:
    """``expected_loss`` per family at each horizon."""
    for t in horizons:
        times, vals = interleaved(
            {
                name: (lambda o=o, t=t: nqm.expected_loss(problem, o, b, t))
                for name, o in families.items()
            },
            rounds,
        )
        print(
            f"| family (d = {problem.n_modes}, t = {t:.0e}) | expected_loss | value |"
        )
        print("|---|---|---|")
        for name in families:
            ms = statistics.median(times[name]) * 1e3
            print(f"| {name} | {ms:.3g} ms | {vals[name]:.12g} |")
        print()


def load_other_nqm(root: Path):
    """The ``nqm`` package of the checkout ``root``, imported as ``nqm_other``
    (its relative imports stay inside it), or exit 2 if it has none."""
    init = root / "nqm" / "__init__.py"
    if not init.is_file():
        print(f"--compare-with: no nqm/__init__.py under {root}", file=sys.stderr)
        raise SystemExit(2)
    spec = importlib.util.spec_from_file_location(
        "nqm_other", init, submodule_search_locations=[str(root / "nqm")]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["nqm_other"] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> None:
    args = _parse(argv)
    other = load_other_nqm(args.compare_with) if args.compare_with else None
    kept = False if args.default_allocator else nqm.runtime.keep_freed_memory()
    problem = nqm.NQMProblem.power_law(dim=args.dim)
    beta, gamma, p = 0.9, 0.99, 0.5
    lr = 0.5 * nqm.max_stable_lr(problem, momentum=beta, precond_power=p)
    setting = (lr, beta, gamma, p)
    sgd_lr = 0.5 * nqm.max_stable_lr(problem)
    b, r = args.batch, args.rounds
    horizons = (args.steps, args.short_steps)

    print(
        f"d = {args.dim} power-law modes (h = c = 1/i), B = {b:g}; CPU time per "
        f"call, one thread, methods interleaved over {r} rounds (doubling: "
        f"{max(3, r // 10)}), medians"
    )
    print(
        f"setting: lr = {lr:.4g}, momentum = {beta}, ema = {gamma}, precond_power = {p}"
    )
    print(
        "allocator: "
        + ("freed memory kept (nqm.runtime)" if kept else "glibc defaults (trimming)")
    )
    print()
    verdicts = hand_picked_table(problem, setting, sgd_lr, b, r, horizons)
    loop_and_agreement(problem, setting, b, args.steps, args.loop_steps, verdicts)
    families = {
        "sgd": nqm.Optimizer(sgd_lr),
        "momentum": nqm.Optimizer(lr, momentum=beta),
        "ema": nqm.Optimizer(sgd_lr, ema=gamma),
        "momentum+ema": nqm.Optimizer(lr, momentum=beta, ema=gamma),
        "momentum+ema+precond": nqm.Optimizer(
            lr, momentum=beta, ema=gamma, precond_power=p
        ),
    }
    family_table(problem, families, b, max(3, r // 4), horizons)
    if args.settings:
        hand = (*setting, args.steps)
        random_table(problem, args.settings, hand, b, r, args.steps, other)


def _quantiles(x, worst_is_max: bool):
    x = np.asarray(x, dtype=np.float64)
    q = (0.5, 0.9) if worst_is_max else (0.5, 0.1)
    worst = x.max() if worst_is_max else x.min()
    return (*np.quantile(x, q), worst)


def random_table(problem, n, hand, b, rounds, t_double, other=None) -> None:
    """Cost / sgd_risk at each setting's horizon, speed-up over (b) at
    ``t_double``, and doubled modes, over ``n`` random settings (and ``hand``);
    with ``other`` (another checkout's nqm) its cost / sgd_risk alongside."""
    settings = random_settings(problem, n, np.random.default_rng(SETTINGS_SEED))
    if other is not None:
        problem_o = other.NQMProblem(
            problem.h, problem.c, problem.init_sq, weight=problem.weight
        )
    rows = []
    load0 = os.getloadavg()
    for k, (lr, beta, gamma, p, t) in enumerate([hand] + settings):
        opt = nqm.Optimizer(lr, momentum=beta, ema=gamma, precond_power=p)
        sgd_lr = min(lr, 0.5 * nqm.max_stable_lr(problem, precond_power=p))
        methods = {
            "ours": lambda o=opt, t=t: nqm.expected_loss(problem, o, b, t),
            "sgd": lambda p=p, t=t, a=sgd_lr: nqm.closed_form.sgd_risk(
                problem, a, b, t, precond_power=p
            ),
        }
        if other is not None:
            opt_o = other.Optimizer(lr, momentum=beta, ema=gamma, precond_power=p)
            methods["other"] = lambda o=opt_o, t=t: other.expected_loss(
                problem_o, o, b, t
            )
        times, vals = interleaved(methods, rounds)
        dtimes, dvals = interleaved(
            {
                "ours": lambda o=opt: nqm.expected_loss(problem, o, b, t_double),
                "dbl": lambda s=(lr, beta, gamma, p): doubling_reference(
                    problem, *s, b, t_double
                ),
            },
            3,
        )
        setting = dict(momentum=beta, ema=gamma, precond_power=p)
        hh = problem.h ** (1.0 - p)
        row = {
            "name": "hand-picked" if k == 0 else f"random {k}",
            "setting": (lr, beta, gamma, p, t),
            "s_range": (lr * float(hh.min()), lr * float(hh.max())),
            "cost": median_ratio(times["ours"], times["sgd"]),
            "ms": statistics.median(times["ours"]) * 1e3,
            "sgd_ms": statistics.median(times["sgd"]) * 1e3,
            "speedup": median_ratio(dtimes["dbl"], dtimes["ours"]),
            "agree": abs(dvals["ours"] / dvals["dbl"] - 1),
            "doubled": nqm.doubled_modes(problem, lr, **setting, steps=t)
            + nqm.doubled_modes(problem, lr, **setting, steps=t_double),
        }
        if other is not None:
            row["other_cost"] = median_ratio(times["other"], times["sgd"])
            row["other_diff"] = abs(vals["other"] / vals["ours"] - 1)
        rows.append(row)
    load1 = os.getloadavg()
    print(
        f"random settings (seed {SETTINGS_SEED}, d = {problem.n_modes}): lr "
        f"log-uniform over {LR_DECADES:g} decades below the stability edge; beta, "
        f"gamma 0 w.p. {P_ZERO:.2g}, else 1 - x, x log-uniform in "
        f"[{ONE_MINUS_MIN:g}, {ONE_MINUS_MAX:g}]; p in {SETTING_POWERS}; t in "
        f"{tuple(f'{x:.0e}' for x in SETTING_STEPS)}; cost over {rounds} rounds; "
        f"speed-up over (b) at t = {t_double:.0e}; load average (1, 5, 15 min) "
        f"{', '.join(f'{x:.1f}' for x in load0)} -> "
        f"{', '.join(f'{x:.1f}' for x in load1)}"
    )
    print()
    head = "| setting | lr | lr h range | beta | gamma | p | t | ours ms | sgd ms "
    head += "| ours / (a) |"
    if other is not None:
        head += " other / (a) |"
    head += " (b) / ours | doubled |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for row in rows:
        lr, beta, gamma, p, t = row["setting"]
        lo, hi = row["s_range"]
        line = (
            f"| {row['name']} | {lr:.3g} | {lo:.2g}..{hi:.2g} | {beta:.6g} | "
            f"{gamma:.6g} | {p:g} | {t:.0e} | {row['ms']:.3f} | "
            f"{row['sgd_ms']:.3f} | {row['cost']:.2f}x |"
        )
        if other is not None:
            line += f" {row['other_cost']:.2f}x |"
        line += f" {row['speedup']:.1f}x | {row['doubled']} |"
        print(line)
    rand = rows[1:]
    cost = _quantiles([r["cost"] for r in rand], worst_is_max=True)
    speed = _quantiles([r["speedup"] for r in rand], worst_is_max=False)
    print()
    print(f"over the {len(rand)} random settings:")
    print("| quantity | median | 90th percentile | worst |")
    print("|---|---|---|---|")
    print(f"| ours / sgd_risk | {cost[0]:.2f}x | {cost[1]:.2f}x | {cost[2]:.2f}x |")
    if other is not None:
        oc = _quantiles([r["other_cost"] for r in rand], worst_is_max=True)
        print(
            f"| other / sgd_risk (same rounds) | {oc[0]:.2f}x | {oc[1]:.2f}x | "
            f"{oc[2]:.2f}x |"
        )
    print(
        f"| (b) doubling / ours at t = {t_double:.0e} | {speed[0]:.1f}x | "
        f"{speed[1]:.1f}x | {speed[2]:.1f}x |"
    )
    doubled = [r["doubled"] for r in rand]
    print(
        f"doubled modes: {sum(doubled)} in total, at most {max(doubled)} in one "
        f"setting; worst rel diff ours vs (b): {max(r['agree'] for r in rand):.2e}"
    )
    if other is not None:
        print(f"worst rel diff ours vs other: {max(r['other_diff'] for r in rows):.2e}")
    print(
        f"targets: median <= 2x sgd_risk ({'met' if cost[0] <= 2 else 'NOT met'}), "
        f"90th percentile <= 3x ({'met' if cost[1] <= 3 else 'NOT met'}); "
        f"speed-up >= 20x at the 90th percentile "
        f"({'met' if speed[1] >= 20 else 'NOT met'}), median >= 40x "
        f"({'met' if speed[0] >= 40 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
