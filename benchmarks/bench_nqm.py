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

Usage::

    python benchmarks/bench_nqm.py [--dim 10000] [--steps 1000000] [--rounds 101]
        [--default-allocator]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import nqm  # noqa: E402


def interleaved(fns: dict, rounds: int) -> tuple[dict, dict]:
    """CPU seconds of every call, methods interleaved; returns (times, values)."""
    values = {k: f() for k, f in fns.items()}  # warm-up (fills per-problem caches)
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.process_time()
            f()
            times[k].append(time.process_time() - t0)
    return times, values


def median_ratio(num: list, den: list) -> float:
    return statistics.median(a / b for a, b in zip(num, den, strict=True) if b > 0)


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
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--short-steps", type=int, default=1_000)
    ap.add_argument("--batch", type=float, default=128.0)
    ap.add_argument("--rounds", type=int, default=101)
    ap.add_argument("--loop-steps", type=int, default=1_000)
    ap.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's heap trimming on (see nqm.runtime); by default freed "
        "memory is kept, as the analysis CLI does",
    )
    args = ap.parse_args(argv)
    kept = False if args.default_allocator else nqm.runtime.keep_freed_memory()

    problem = nqm.NQMProblem.power_law(dim=args.dim)
    beta, gamma, p = 0.9, 0.99, 0.5
    lr = 0.5 * nqm.max_stable_lr(problem, momentum=beta, precond_power=p)
    opt = nqm.Optimizer(lr, momentum=beta, ema=gamma, precond_power=p)
    sgd_lr = 0.5 * nqm.max_stable_lr(problem)
    b, r = args.batch, args.rounds

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
    print("| t | ours | (a) sgd_risk | ours / (a) | (b) doubling | (b) / ours |")
    print("|---|---|---|---|---|---|")
    verdicts = []
    for t in (args.steps, args.short_steps):
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
                "dbl": lambda t=t: doubling_reference(
                    problem, lr, beta, gamma, p, b, t
                ),
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

    n_loop = args.loop_steps
    ltimes, lvals = interleaved(
        {
            "loop": lambda: step_loop(problem, lr, beta, gamma, p, b, n_loop),
            "ours": lambda: nqm.expected_loss(problem, opt, b, n_loop),
        },
        3,
    )
    t_loop = statistics.median(ltimes["loop"]) * args.steps / n_loop
    t_ours = statistics.median(ltimes["ours"])
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        nqm.expected_loss(problem, opt, b, args.steps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / 20
    print()
    print(
        f"minor page faults per evaluation of ours (t={args.steps:.0e}): {faults:.1f}"
    )
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
        f"{args.steps:.0e} steps gives {t_loop:.3g} s, {t_loop / t_ours:.3g}x ours"
    )
    print()
    for t, ratio_a, ratio_b, _, _ in verdicts:
        print(
            f"targets at t={t:.0e}: ours <= 10x sgd_risk: {ratio_a:.2f}x "
            f"({'met' if ratio_a <= 10 else 'NOT met'}); ours >= 20x faster than "
            f"doubling: {ratio_b:.1f}x ({'met' if ratio_b >= 20 else 'NOT met'})"
        )
    print()

    families = {
        "sgd": nqm.Optimizer(sgd_lr),
        "momentum": nqm.Optimizer(lr, momentum=beta),
        "ema": nqm.Optimizer(sgd_lr, ema=gamma),
        "momentum+ema": nqm.Optimizer(lr, momentum=beta, ema=gamma),
        "momentum+ema+precond": opt,
    }
    for t in (args.steps, args.short_steps):
        times, vals = interleaved(
            {
                name: (lambda o=o, t=t: nqm.expected_loss(problem, o, b, t))
                for name, o in families.items()
            },
            max(3, r // 4),
        )
        print(f"| family (d = {args.dim}, t = {t:.0e}) | expected_loss | value |")
        print("|---|---|---|")
        for name in families:
            ms = statistics.median(times[name]) * 1e3
            print(f"| {name} | {ms:.3g} ms | {vals[name]:.12g} |")
        print()


if __name__ == "__main__":
    main()
