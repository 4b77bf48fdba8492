"""L-BFGS for many independent problems at once (torch, vectorised over rows).

Row ``r`` of the parameter matrix ``x`` (shape ``(R, n)``) is its own problem:
``fun(x, rows)`` returns one value per selected row, and row ``r``'s value may
depend on ``x[r]`` only. Each row keeps its own curvature pairs, its own step
length and its own stopping test, so a row's iterates depend on which other rows
share the call only through rounding (a batched reduction may sum in another
order): stacking problems (batch sizes, preconditioning powers) into one call is a
way to run them as a few large tensor operations, on any torch device. (A single ``torch.optim.LBFGS`` over the concatenated parameters would
couple them through one shared line search and one shared curvature model.)

Each iteration: the two-loop recursion of Nocedal & Wright (2006, Algorithm 7.4)
with the initial scaling ``sᵀy / yᵀy`` of the newest pair, then a weak Wolfe line
search per row (Lewis & Overton 2013: double the step while it satisfies the
sufficient decrease and still descends steeply, bisect once bracketed), trial step
1 (a row without pairs: ``min(1, 1/|g|₁)``); only rows still searching are
evaluated. A pair is stored only when ``sᵀy > 10⁻¹⁰ |s| |y|`` (the
curvature condition, scale-free); a row whose direction is not a descent direction restarts from the
gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LBFGSResult", "batched_lbfgs"]


@dataclass
class LBFGSResult:
    """Per-row minimiser, value, iterations and function evaluations."""

    x: Tensor
    f: Tensor
    iterations: Tensor
    evaluations: Tensor


def _value_grad(fun, x: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        f = fun(xr, rows)
        (g,) = torch.autograd.grad(f.sum(), xr)
    return f.detach(), g


def batched_lbfgs(
    fun: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    *,
    history: int = 10,
    max_iter: int = 60,
    tol_grad: float = 1e-10,
    tol_change: float = 1e-12,
    armijo: float = 1e-4,
    curvature: float = 0.9,
    max_backtracks: int = 40,
) -> LBFGSResult:
    """Minimise ``R`` independent smooth functions, one per row of ``x0``.

    Args:
        fun: ``fun(x, rows) -> values``: ``x`` of shape ``(len(rows), n)`` holds
            the parameters of rows ``rows`` (a long tensor of indices into
            ``x0``); returns their values, shape ``(len(rows),)``, differentiable
            in ``x``. Non-finite values are rejected by the line search.
        x0: starting points ``(R, n)`` (float dtype, any device).
        history: curvature pairs kept per row.
        max_iter: iterations per row at most.
        tol_grad: a row stops once ``max |∇f| <= tol_grad``.
        tol_change: a row stops once its step (max norm) or its decrease in value
            is below this.
        armijo: sufficient-decrease constant of the line search (``c₁``).
        curvature: curvature constant of the weak Wolfe conditions (``c₂``).
        max_backtracks: trial steps per line search; a row that has not met both
            Wolfe conditions by then takes the lowest point found that meets the
            sufficient decrease, and stops if there is none.

    Returns:
        :class:`LBFGSResult`: ``x`` ``(R, n)``, ``f`` ``(R,)``, ``iterations``
        ``(R,)`` and ``evaluations`` ``(R,)`` (each row's function values computed).

    Raises:
        ValueError: for a non-2-D ``x0`` or non-positive ``history``/``max_iter``.
    """
    if x0.ndim != 2:
        raise ValueError(
            f"x0 must have shape (rows, parameters), got {tuple(x0.shape)}"
        )
    if history < 1 or max_iter < 1:
        raise ValueError("history and max_iter must be positive")
    x = x0.detach().clone()
    n_rows, n_par = x.shape
    dev = x.device
    every = torch.arange(n_rows, device=dev)
    f, g = _value_grad(fun, x, every)
    evaluations = torch.ones(n_rows, dtype=torch.long, device=dev)
    S = torch.zeros(n_rows, history, n_par, dtype=x.dtype, device=dev)
    Y = torch.zeros_like(S)
    rho = torch.zeros(n_rows, history, dtype=x.dtype, device=dev)  # 0: empty slot
    stored = torch.zeros(n_rows, dtype=torch.long, device=dev)
    iters = torch.zeros(n_rows, dtype=torch.long, device=dev)
    active = torch.isfinite(f) & (g.abs().amax(dim=1) > tol_grad)
    for _ in range(max_iter):
        rows = torch.nonzero(active).flatten()
        if rows.numel() == 0:
            break
        gr, f0 = g[rows], f[rows]
        has = stored[rows] > 0
        d = _two_loop_direction(gr, S[rows], Y[rows], rho[rows], has)
        gd = (gr * d).sum(dim=1)
        restart = ~(torch.isfinite(gd) & (gd < 0))
        if bool(restart.any()):  # not a descent direction: forget, go downhill
            d[restart] = -gr[restart]
            gd = torch.where(restart, -(gr * gr).sum(dim=1), gd)
            forget = rows[restart]
            S[forget], Y[forget], rho[forget], stored[forget] = 0.0, 0.0, 0.0, 0
            has = has & ~restart
        x_new, f_new, g_new, moved = _weak_wolfe_search(
            fun, x, f, rows, d, gr, gd, has, evaluations,
            armijo=armijo, curvature=curvature, max_backtracks=max_backtracks,
        )  # fmt: skip
        # rows that found no acceptable step keep their point and stop
        s = x_new - x[rows]
        y = g_new - gr
        ys = (s * y).sum(dim=1)
        # the curvature condition, relative (scale-free): cos(s, y) > 1e-10
        keep = moved & (ys > 1e-10 * s.norm(dim=1) * y.norm(dim=1))
        if bool(keep.any()):
            k = rows[keep]
            S[k] = torch.cat([S[k, 1:], s[keep, None]], dim=1)
            Y[k] = torch.cat([Y[k, 1:], y[keep, None]], dim=1)
            rho[k] = torch.cat([rho[k, 1:], (1.0 / ys[keep])[:, None]], dim=1)
            stored[k] += 1
        x[rows], f[rows], g[rows] = x_new, f_new, g_new
        iters[rows[moved]] += 1
        small_step = s.abs().amax(dim=1) <= tol_change
        small_drop = (f0 - f_new).abs() < tol_change
        flat = g_new.abs().amax(dim=1) <= tol_grad
        stop = ~moved | small_step | small_drop | flat
        active[rows[stop]] = False
    return LBFGSResult(x, f, iters, evaluations)


def _two_loop_direction(
    gr: Tensor, Sr: Tensor, Yr: Tensor, rr: Tensor, has: Tensor
) -> Tensor:
    """The L-BFGS direction :math:`-H g` of each row: the two-loop recursion of
    Nocedal & Wright (2006, Algorithm 7.4) over the row's pairs (newest in slot
    ``history - 1``; an empty slot has ``rho = 0`` and contributes nothing),
    scaled initially by ``sᵀy / yᵀy`` of the newest pair when the row ``has``
    one.

    Args:
        gr: gradients ``(R, n)``; Sr, Yr: pairs ``(R, history, n)``; rr:
            ``1 / sᵀy`` ``(R, history)``; has: ``(R,)`` bool.
    """
    history = Sr.shape[1]
    q = gr.clone()
    alphas = []
    for i in range(history - 1, -1, -1):
        a = rr[:, i] * (Sr[:, i] * q).sum(dim=1)
        q -= a[:, None] * Yr[:, i]
        alphas.append(a)
    sy = (Sr[:, -1] * Yr[:, -1]).sum(dim=1)
    yy = (Yr[:, -1] * Yr[:, -1]).sum(dim=1)
    scale = torch.where(has, sy / torch.where(has, yy, 1.0), 1.0)
    r = scale[:, None] * q
    for i in range(history):
        b = rr[:, i] * (Yr[:, i] * r).sum(dim=1)
        r += Sr[:, i] * (alphas[history - 1 - i] - b)[:, None]
    return -r


def _weak_wolfe_search(
    fun, x, f, rows, d, gr, gd, has, evaluations, *, armijo, curvature,
    max_backtracks,
):  # fmt: skip
    """A weak Wolfe line search along ``d`` for every row of ``rows`` at once
    (Lewis & Overton 2013: double the step while it satisfies sufficient
    decrease and still descends steeply, bisect once bracketed). Trial step 1,
    or ``min(1, 1/|g|₁)`` for a row without pairs. Adds each row's function
    evaluations to ``evaluations``.

    Returns:
        ``(x_new, f_new, g_new, moved)``: per row the Wolfe point, else the
        lowest point found that meets sufficient decrease, else the start
        (``moved`` False).
    """
    dev = x.device
    # first step of a row without curvature pairs: at most unit length in l1
    l1 = gr.abs().sum(dim=1)
    t = torch.where(has, 1.0, torch.clamp(1.0 / l1, max=1.0))
    f0 = f[rows]
    x_new, f_new, g_new = x[rows].clone(), f0.clone(), gr.clone()
    moved = torch.zeros(rows.numel(), dtype=torch.bool, device=dev)
    search = torch.ones_like(moved)
    lo = torch.zeros_like(t)  # largest step known to satisfy Armijo
    hi = torch.full_like(t, float("inf"))  # smallest step known to fail it
    for _ in range(max_backtracks):
        idx = torch.nonzero(search).flatten()
        if idx.numel() == 0:
            break
        ti = t[idx]
        trial = x[rows[idx]] + ti[:, None] * d[idx]
        ft, gt = _value_grad(fun, trial, rows[idx])
        evaluations[rows[idx]] += 1
        sufficient = torch.isfinite(ft) & torch.isfinite(gt).all(dim=1)
        sufficient &= ft <= f0[idx] + armijo * ti * gd[idx]
        flat = (gt * d[idx]).sum(dim=1) >= curvature * gd[idx]
        # keep the lowest Armijo point (the Wolfe point when one is found:
        # the search stops there)
        better = sufficient & (~moved[idx] | (ft < f_new[idx]) | flat)
        acc = idx[better]
        x_new[acc], f_new[acc], g_new[acc] = trial[better], ft[better], gt[better]
        acc = idx[sufficient]
        moved[acc] = True
        lo[acc] = ti[sufficient]
        hi[idx[~sufficient]] = ti[~sufficient]
        search[idx[sufficient & flat]] = False
        # weak Wolfe bracketing (Lewis & Overton 2013): bisect a bracket,
        # double the step while it still descends steeply
        t[idx] = torch.where(
            torch.isinf(hi[idx]), 2.0 * lo[idx], 0.5 * (lo[idx] + hi[idx])
        )
    return x_new, f_new, g_new, moved
