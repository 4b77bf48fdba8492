"""Speed of the exact NQM risk, measured side by side in one run.

One evaluation of ``nqm.expected_loss`` (momentum + EMA + preconditioning, d = 10^4
power-law modes, t = 10^6 steps) against:

(a) the plain-SGD closed form ``nqm.closed_form.sgd_risk`` at the same d;
(b) a straightforward batched 3x3 matrix-doubling written here: repeated squaring
    of each mode's transition A and accumulation of the noise term
    N <- N + A^k N A^kT, batched over the modes with ``np.matmul``;
(c) a step-by-step propagation of the 3x3 second moments, timed for a few
    thousand steps and extrapolated linearly to t (stated in the output).

Every method's value is printed; they must agree. The machine is shared, so each
timing is the median over repeats and ratios are taken within this one run.

Usage::

    python benchmarks/bench_nqm.py [--dim 10000] [--steps 1000000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import nqm


def median_time(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up (also fills per-problem caches, as in real use)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


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


# ----------------------------------------------------------------------- main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--batch", type=float, default=128.0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--loop-steps", type=int, default=1_000)
    args = ap.parse_args(argv)

    problem = nqm.NQMProblem.power_law(dim=args.dim)
    beta, gamma, p = 0.9, 0.99, 0.5
    lr = 0.5 * nqm.max_stable_lr(problem, momentum=beta, precond_power=p)
    opt = nqm.Optimizer(lr, momentum=beta, ema=gamma, precond_power=p)
    t, b, r = args.steps, args.batch, args.repeats

    print(
        f"d = {args.dim} power-law modes (h = c = 1/i), t = {t:.0e}, B = {b:g}, "
        f"median of {r} repeats"
    )
    print(
        f"setting: lr = {lr:.4g}, momentum = {beta}, ema = {gamma}, precond_power = {p}"
    )
    print()

    t_ours, v_ours = median_time(lambda: nqm.expected_loss(problem, opt, b, t), r)
    sgd_lr = 0.5 * nqm.max_stable_lr(problem)
    t_sgd, v_sgd = median_time(
        lambda: nqm.closed_form.sgd_risk(problem, sgd_lr, b, t), r
    )
    v_sgd_exact = nqm.expected_loss(problem, nqm.Optimizer(sgd_lr), b, t)
    t_dbl, v_dbl = median_time(
        lambda: doubling_reference(problem, lr, beta, gamma, p, b, t), max(3, r // 2)
    )
    n_loop = args.loop_steps
    t_loop_part, v_loop = median_time(
        lambda: step_loop(problem, lr, beta, gamma, p, b, n_loop), 3
    )
    t_loop = t_loop_part * t / n_loop
    v_ours_loop = nqm.expected_loss(problem, opt, b, n_loop)

    rows = [
        ("nqm.expected_loss (momentum+EMA+precond)", t_ours, v_ours, "1"),
        (
            "(a) closed_form.sgd_risk (plain SGD)",
            t_sgd,
            v_sgd,
            f"{t_ours / t_sgd:.2f}x of (a)",
        ),
        (
            "(b) batched 3x3 doubling (numpy)",
            t_dbl,
            v_dbl,
            f"{t_dbl / t_ours:.1f}x faster",
        ),
        (
            f"(c) step loop, {n_loop} steps x {t // n_loop} (extrapolated)",
            t_loop,
            None,
            f"{t_loop / t_ours:.0f}x faster",
        ),
    ]
    print("| method | time per evaluation | value | ours vs it |")
    print("|---|---|---|---|")
    for name, secs, val, ratio in rows:
        vs = "n/a (see below)" if val is None else f"{val:.12g}"
        print(f"| {name} | {secs * 1e3:.3g} ms | {vs} | {ratio} |")
    print()
    print("agreement:")
    print(
        f"  ours vs (b) doubling at t={t:.0e}: rel diff {abs(v_ours / v_dbl - 1):.2e}"
    )
    print(
        f"  ours vs (c) loop at t={n_loop}: {v_ours_loop:.12g} vs {v_loop:.12g}, "
        f"rel diff {abs(v_ours_loop / v_loop - 1):.2e}"
    )
    print(
        f"  (a) sgd_risk vs expected_loss(SGD, lr={sgd_lr:.4g}): "
        f"rel diff {abs(v_sgd / v_sgd_exact - 1):.2e}"
    )
    print(
        f"  (c) timing: {n_loop} steps took {t_loop_part * 1e3:.3g} ms; linear "
        f"extrapolation to {t:.0e} steps gives {t_loop:.3g} s"
    )
    print()
    print(
        f"targets: ours <= 10x sgd_risk: {t_ours / t_sgd:.2f}x "
        f"({'met' if t_ours <= 10 * t_sgd else 'NOT met'}); "
        f"ours >= 20x faster than doubling: {t_dbl / t_ours:.1f}x "
        f"({'met' if t_dbl >= 20 * t_ours else 'NOT met'})"
    )
    print()

    families = {
        "sgd": nqm.Optimizer(0.5 * nqm.max_stable_lr(problem)),
        "momentum": nqm.Optimizer(lr, momentum=beta),
        "ema": nqm.Optimizer(0.5 * nqm.max_stable_lr(problem), ema=gamma),
        "momentum+ema": nqm.Optimizer(lr, momentum=beta, ema=gamma),
        "momentum+ema+precond": opt,
    }
    print(f"| family (d = {args.dim}, t = {t:.0e}) | expected_loss time | value |")
    print("|---|---|---|")
    for name, o in families.items():
        secs, val = median_time(lambda o=o: nqm.expected_loss(problem, o, b, t), r)
        print(f"| {name} | {secs * 1e3:.3g} ms | {val:.12g} |")


if __name__ == "__main__":
    main()
