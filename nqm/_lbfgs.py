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
1 (a row without pairs: ``min(1, 1/|g|₁)``), ended early once the decrease a
trial could show is below the rounding of ``f``. A pair is stored only when
``sᵀy > 10⁻¹⁰ |s| |y|`` (the curvature condition, scale-free); a row whose
direction is not a descent direction restarts from the gradient.

Rows advance on their own: each call of ``fun`` evaluates one trial step of
every row still running, whatever its iteration, so a row in a long line search
does not hold the others, and the number of calls is that of the row with the
most trials, not the sum over iterations of the longest line search.
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
    st = _State(x, f, g, history)
    active = torch.isfinite(f) & (g.abs().amax(dim=1) > tol_grad)
    ls = _LineSearch.empty(x, g)
    fresh = active.clone()  # running rows whose next line search has not started
    while True:
        # rows that finished a line search start the next one, or stop after
        # max_iter of them
        spent = fresh & (st.searches >= max_iter)
        active &= ~spent
        fresh &= ~spent
        if bool(fresh.any()):
            rows = torch.nonzero(fresh).flatten()
            ls.start(st, rows)
            st.searches[rows] += 1
            fresh.zero_()
        rows = torch.nonzero(active).flatten()
        if rows.numel() == 0:
            break
        # one trial step of every row still searching, all in one call
        done = ls.trial(fun, st, rows, armijo, curvature, max_backtracks)
        if bool(done.any()):
            ended = rows[done]
            stop = st.accept(ls, ended, tol_grad, tol_change)
            active[ended[stop]] = False
            fresh[ended[~stop]] = True
    return LBFGSResult(st.x, st.f, st.iters, st.evaluations)


class _State:
    """Per row: the iterate, its value and gradient, the curvature pairs and the
    counters."""

    def __init__(self, x: Tensor, f: Tensor, g: Tensor, history: int) -> None:
        n_rows, n_par = x.shape
        dev = x.device
        self.x, self.f, self.g = x, f, g
        self.S = torch.zeros(n_rows, history, n_par, dtype=x.dtype, device=dev)
        self.Y = torch.zeros_like(self.S)
        self.rho = torch.zeros(n_rows, history, dtype=x.dtype, device=dev)  # 0: empty
        self.stored = torch.zeros(n_rows, dtype=torch.long, device=dev)
        self.iters = torch.zeros(n_rows, dtype=torch.long, device=dev)
        self.searches = torch.zeros(n_rows, dtype=torch.long, device=dev)
        self.evaluations = torch.ones(n_rows, dtype=torch.long, device=dev)

    def forget(self, rows: Tensor) -> None:
        """Drop the curvature pairs of ``rows``."""
        self.S[rows], self.Y[rows], self.rho[rows], self.stored[rows] = 0.0, 0.0, 0.0, 0

    def accept(self, ls: _LineSearch, rows: Tensor, tol_grad: float,
               tol_change: float) -> Tensor:  # fmt: skip
        """Move ``rows`` to the points their line searches found, store the new
        curvature pairs, and return which of them stop."""
        x_new, f_new, g_new, moved = ls.x[rows], ls.f[rows], ls.g[rows], ls.moved[rows]
        f0 = self.f[rows]
        # rows that found no acceptable step keep their point and stop
        s = x_new - self.x[rows]
        y = g_new - self.g[rows]
        ys = (s * y).sum(dim=1)
        # the curvature condition, relative (scale-free): cos(s, y) > 1e-10
        keep = moved & (ys > 1e-10 * s.norm(dim=1) * y.norm(dim=1))
        if bool(keep.any()):
            k = rows[keep]
            self.S[k] = torch.cat([self.S[k, 1:], s[keep, None]], dim=1)
            self.Y[k] = torch.cat([self.Y[k, 1:], y[keep, None]], dim=1)
            self.rho[k] = torch.cat([self.rho[k, 1:], (1.0 / ys[keep])[:, None]], dim=1)
            self.stored[k] += 1
        self.x[rows], self.f[rows], self.g[rows] = x_new, f_new, g_new
        self.iters[rows[moved]] += 1
        small_step = s.abs().amax(dim=1) <= tol_change
        small_drop = (f0 - f_new).abs() < tol_change
        flat = g_new.abs().amax(dim=1) <= tol_grad
        return ~moved | small_step | small_drop | flat


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


#: A line search stops once the decrease ``t |gᵀd|`` its next trial step
#: predicts is at most this fraction of ``|f|`` (a few units of rounding).
_ROUNDING = 4.0 * torch.finfo(torch.float64).eps


@dataclass
class _LineSearch:
    """The weak Wolfe line search of every row (Lewis & Overton 2013: double
    the step while it satisfies sufficient decrease and still descends steeply,
    bisect once bracketed), one trial step per row and call of :meth:`trial`.

    Per row (the search starts from the row's iterate in :class:`_State`,
    which stays put until :meth:`_State.accept`): the direction ``d`` and slope
    ``gd`` along it, the trial step
    ``t``, the bracket ``[lo, hi]`` (largest step known to satisfy sufficient
    decrease, smallest known to fail it), the trials made, and the point kept
    (``x``, ``f``, ``g``; ``moved`` once one meets sufficient decrease): the
    Wolfe point when one is found, else the lowest point with sufficient
    decrease, else the start.
    """

    d: Tensor
    gd: Tensor
    t: Tensor
    lo: Tensor
    hi: Tensor
    x: Tensor
    f: Tensor
    g: Tensor
    moved: Tensor
    trials: Tensor

    @classmethod
    def empty(cls, x: Tensor, g: Tensor) -> _LineSearch:
        n_rows = x.shape[0]
        vec = torch.zeros(n_rows, dtype=x.dtype, device=x.device)
        return cls(
            d=torch.zeros_like(x), gd=vec.clone(), t=vec.clone(), lo=vec.clone(),
            hi=vec.clone(), x=x.clone(), f=vec.clone(), g=torch.zeros_like(g),
            moved=torch.zeros_like(vec, dtype=torch.bool),
            trials=torch.zeros_like(vec, dtype=torch.long),
        )  # fmt: skip

    def start(self, st: _State, rows: Tensor) -> None:
        """A new line search for ``rows`` along their L-BFGS directions (from
        the gradient where that is not a descent direction). Trial step 1, or
        ``min(1, 1/|g|₁)`` for a row without pairs."""
        gr = st.g[rows]
        has = st.stored[rows] > 0
        d = _two_loop_direction(gr, st.S[rows], st.Y[rows], st.rho[rows], has)
        gd = (gr * d).sum(dim=1)
        restart = ~(torch.isfinite(gd) & (gd < 0))
        if bool(restart.any()):  # not a descent direction: forget, go downhill
            d[restart] = -gr[restart]
            gd = torch.where(restart, -(gr * gr).sum(dim=1), gd)
            st.forget(rows[restart])
            has = has & ~restart
        l1 = gr.abs().sum(dim=1)
        self.t[rows] = torch.where(has, 1.0, torch.clamp(1.0 / l1, max=1.0))
        self.d[rows], self.gd[rows] = d, gd
        self.x[rows], self.f[rows], self.g[rows] = st.x[rows], st.f[rows], gr
        self.lo[rows], self.hi[rows] = 0.0, float("inf")
        self.moved[rows], self.trials[rows] = False, 0

    def trial(self, fun, st: _State, rows: Tensor, armijo: float, curvature: float,
              max_backtracks: int) -> Tensor:  # fmt: skip
        """Evaluate the trial step of every row of ``rows`` in one call, update
        their searches, and return which of them are done (a Wolfe point, a
        next trial below rounding, or ``max_backtracks`` trials)."""
        ti, d, gd, f0 = self.t[rows], self.d[rows], self.gd[rows], st.f[rows]
        trial = st.x[rows] + ti[:, None] * d
        ft, gt = _value_grad(fun, trial, rows)
        st.evaluations[rows] += 1
        self.trials[rows] += 1
        sufficient = torch.isfinite(ft) & torch.isfinite(gt).all(dim=1)
        sufficient &= ft <= f0 + armijo * ti * gd
        flat = (gt * d).sum(dim=1) >= curvature * gd
        # keep the lowest Armijo point (the Wolfe point when one is found:
        # the search stops there)
        better = sufficient & (~self.moved[rows] | (ft < self.f[rows]) | flat)
        acc = rows[better]
        self.x[acc], self.f[acc], self.g[acc] = trial[better], ft[better], gt[better]
        self.moved[rows[sufficient]] = True
        lo, hi = self.lo[rows], self.hi[rows]
        lo = torch.where(sufficient, ti, lo)
        hi = torch.where(sufficient, hi, ti)
        self.lo[rows], self.hi[rows] = lo, hi
        # weak Wolfe bracketing (Lewis & Overton 2013): bisect a bracket,
        # double the step while it still descends steeply
        t_next = torch.where(torch.isinf(hi), 2.0 * lo, 0.5 * (lo + hi))
        self.t[rows] = t_next
        # a decrease the next trial could show is below the rounding of f: its
        # sufficient-decrease test would compare rounding errors
        unresolved = t_next * gd.abs() <= _ROUNDING * f0.abs()
        done = (sufficient & flat) | unresolved
        return done | (self.trials[rows] >= max_backtracks)
