"""Hyperparameter tuning behind :func:`nqm.search.best_steps`.

Question: the fewest steps :math:`S(B) = \\min_x \\min\\{t : L_B(t; x) \\le
\\text{target}\\}`. Equivalently, :math:`S(B)` is the first :math:`t` at which
:math:`M_B(t) = \\min_x L_B(t; x)` reaches the target, so the search alternates
between a continuous minimisation over hyperparameters :math:`x` at fixed
:math:`t` and a search over :math:`t`.

Stages (constant-lr families):

1. *Grid on a surrogate.* The problem's modes are geometrically binned
   (``surrogate_bins``, an explicit approximation, see
   :meth:`NQMProblem.binned`; skipped for small problems). A log-spaced grid of
   hyperparameters is evaluated on a geometric grid of steps (ratio
   :math:`\\sqrt2`); since :math:`L_B = D + N/B`, one evaluation serves every batch
   size. This brackets each :math:`S(B)`.
2. *Continuous refinement on the surrogate.* Regula falsi (safeguarded by
   bisection) on integer :math:`t` inside the bracket, each probe minimising
   :math:`\\log L_B(t; x)` continuously (bounded Brent in one dimension,
   Nelder-Mead in more), warm-started; then a check one probe below the answer
   from other starts (the row profile of the grid), since momentum's loss surface
   has several basins. The searches of all batch sizes are generators
   (:mod:`nqm._coroutine_search`) run side by side in one thread; each round's
   requests are evaluated in one vectorised call, each point at its own step.
3. *Exact certification and polish.* The reported steps are the exact
   :func:`~nqm.search.steps_to_target` of the reported optimizer on the full
   problem (searched from the surrogate's step count); then the loss at one step
   fewer is minimised locally on a finer surrogate (16 times the bins; the
   problem itself when small) and, while the exact steps of the result are
   fewer, the optimizer is replaced (``polish`` rounds). On long runs the first
   round starts from the exact crossing located by bisection on exact losses
   (cheap single evaluations), so that a successful round needs one
   certification, not two.

Schedules (``pwc``, ``linear_decay``, ``wsd``, ``cosine``) are SGD with
piecewise-constant lrs: a bisection on each run length, each probe optimising
the schedules of every (power, batch size) still searching at once, with a
batched L-BFGS
(:mod:`nqm._lbfgs`: independent rows, each with its own curvature pairs and line
search) through a differentiable torch implementation of the exact piecewise
dynamics (on the surrogate), then exact certification. Certification also tries
the tuned parameters stretched over the steps they turned out to need, and each
batch size tries its neighbours' schedules rescaled to it (lrs divided, pieces
lengthened by the batch-size ratio: the same dynamics to first order where noise
dominates); each is certified exactly and kept only when it needs fewer steps.

Nesting (:attr:`~nqm.families.Family.contained`) is enforced: every family
contains plain SGD, so its result is never worse than the SGD ``baseline``
(computed if not given); ``momentum_ema`` also contains ``momentum`` and ``ema``
and is never worse than their results (``contained``, computed if not given).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ._coroutine_search import bounded_minimum, nelder_mead
from ._pointwise import pointwise_terms
from .crossing import steps_to_target
from .dynamics import CLOSED_FORM_RTOL, _modes, expected_loss, risk_terms
from .families import MAX_STEPS, ConstantSetting, Family, TuneResult
from .optimizer import DecayShape, Optimizer, PiecewiseConstant
from .polynomial_floor import christoffel_at_zero
from .problem import NQMProblem
from .runtime import torch_device

#: The lr coordinate is the effective lr α/(1−β) as a fraction of plain SGD's
#: stability limit 2/max ĥ; it may not fall below this (a run that slow never
#: reaches a useful target), whatever β is.
_U_MIN = math.log(1e-9)
_U_TOP = math.log1p(-1e-9)  # stay just inside the stability edge
_V_MIN = math.log(1e-6)  # log(1 - beta), log(1 - gamma)
_LOGIT_MAX = 40.0  # schedule logits are clipped to ±this before certification


# ------------------------------------------------------------- search spaces
class _Space:
    r"""Hyperparameters as coordinates ``x = (u[, v][, w])``.

    ``u = log(α ĥ_max / (2(1 − β)))``: the effective lr :math:`\alpha/(1-\beta)`
    relative to SGD's stability limit :math:`2/\max\hat h`; ``v = log(1 − β)``;
    ``w = log(1 − γ)``. ``v = 0`` (``w = 0``) is exactly no momentum (no
    averaging). The box is ``u ≥ log 1e-9``, ``v, w ∈ [log 1e-6, 0]``, and ``u``
    is further capped by heavy ball's stability edge
    :math:`\alpha\hat h < 2(1+\beta)`, i.e. ``u < log((1+β)/(1−β))``, which
    depends on ``v``: :meth:`params` clips to it.

    Measuring the lr by the effective lr keeps the lower bound meaningful at every
    β: near critical damping :math:`\alpha \approx (1-\beta)^2/(4\hat h)`, a
    bound on :math:`\alpha` relative to its stability limit would exclude the
    optimum once :math:`1-\beta \lesssim 10^{-4}`.
    """

    def __init__(self, family: Family, hh_max: float, p: float, fixed_momentum=None):
        self.family, self.hh_max, self.p = family, hh_max, p
        # a fixed momentum is a constant, not a coordinate
        self.fixed_beta = None if fixed_momentum is None else float(fixed_momentum)
        self.has_m = (
            family in (Family.MOMENTUM, Family.MOMENTUM_EMA) and self.fixed_beta is None
        )
        self.has_e = family in (Family.EMA, Family.MOMENTUM_EMA)
        top_beta = -math.expm1(_V_MIN) if self.has_m else (self.fixed_beta or 0.0)
        self.lo = [_U_MIN] + [_V_MIN] * (self.has_m + self.has_e)
        self.hi = [float(self.u_max(top_beta))] + [0.0] * (self.has_m + self.has_e)
        self.dim = len(self.lo)

    @staticmethod
    def u_max(beta):
        """Largest ``u`` inside heavy ball's stability region at momentum ``beta``."""
        beta = np.asarray(beta, dtype=np.float64)
        return np.log1p(beta) - np.log1p(-beta) + _U_TOP

    def grid_sizes(self):
        sizes = _GRID[self.family]
        if self.fixed_beta is not None:
            sizes = sizes[:1] + sizes[2:]  # the momentum axis is gone
        return sizes

    def _beta_gamma(self, x):
        j = 1
        beta = np.zeros(x.shape[:-1])
        if self.fixed_beta is not None:
            beta = np.full(x.shape[:-1], self.fixed_beta)
        gamma = np.zeros(x.shape[:-1])
        if self.has_m:
            beta = -np.expm1(x[..., j])
            j += 1
        if self.has_e:
            gamma = -np.expm1(x[..., j])
        return beta, gamma

    def clip(self, x):
        """``x`` moved into the domain (the box, then the stability cap on ``u``)."""
        x = np.clip(np.asarray(x, dtype=np.float64), self.lo, self.hi)
        x[..., 0] = np.minimum(x[..., 0], self.u_cap(x))
        return x

    def u_cap(self, x):
        """The stability cap on ``u`` at ``x``'s momentum (``x`` inside the box)."""
        beta, _ = self._beta_gamma(np.asarray(x, dtype=np.float64))
        return self.u_max(beta)

    def params(self, x):
        """``(α, β, γ)`` of the points ``x`` moved into the domain (as
        :meth:`clip` moves them: the cap on ``u`` leaves β and γ as they are)."""
        x = np.clip(np.asarray(x, dtype=np.float64), self.lo, self.hi)
        beta, gamma = self._beta_gamma(x)
        u = np.minimum(x[..., 0], self.u_max(beta))
        alpha = 2.0 * (1.0 - beta) / self.hh_max * np.exp(u)
        return alpha, beta, gamma

    def setting(self, x) -> ConstantSetting:
        """The point ``x`` as the floats of a constant-lr optimizer."""
        a, b, g = (float(v) for v in self.params(x))
        return ConstantSetting(a, momentum=b, ema=g, precond_power=self.p)

    def grid(self, sizes):
        """Grid rows (one per combination of the ``v``/``w`` values), each with
        ``sizes[0]`` values of ``u`` evenly spaced up to that row's stability cap.

        Returns:
            ``(n_rows, sizes[0], dim)``.
        """
        slow = [
            np.linspace(lo, hi, n)
            for lo, hi, n in zip(self.lo[1:], self.hi[1:], sizes[1:], strict=True)
        ]
        if slow:
            mesh = np.meshgrid(*slow, indexing="ij")
            rows = np.stack([m.ravel() for m in mesh], axis=-1)
        else:
            rows = np.zeros((1, 0))
        beta, _ = self._beta_gamma(np.concatenate([np.zeros((len(rows), 1)), rows], -1))
        s = np.linspace(0.0, 1.0, sizes[0])
        u = _U_MIN + s[None, :] * (self.u_max(beta)[:, None] - _U_MIN)
        out = np.empty((rows.shape[0], sizes[0], self.dim))
        out[..., 0] = u
        out[..., 1:] = rows[:, None, :]
        return out


class _Evaluations:
    """Loss evaluations spent by one tuning run, counted across its stages (one
    per hyperparameter setting and step evaluated, surrogate or exact)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int) -> None:
        self.count += n


class _Ask(NamedTuple):
    """A search's request: the terms ``(D, N)`` of the point(s) ``x`` (one
    point ``(dim,)``, or ``(n, dim)``) at step ``t`` on ``problem``, certified
    to ``rtol``; ``t`` is one step, or (for ``(n, dim)`` points) an integer
    array ``(n,)``, a step per point. The search is a generator that yields its
    requests and is resumed with their terms (:func:`_run_alone`,
    :func:`_run_together`)."""

    problem: NQMProblem
    x: np.ndarray
    t: int | np.ndarray
    rtol: float


def _ask_terms(space: _Space, ask: _Ask):
    """The terms of one request evaluated on their own: at one step by
    :func:`~nqm.dynamics.risk_terms`, at a step per point by
    :func:`~nqm._pointwise.pointwise_terms`."""
    a, be, g = space.params(ask.x)
    if np.ndim(ask.t):
        return pointwise_terms(ask.problem, a, be, g, space.p, ask.t, rtol=ask.rtol)
    return risk_terms(ask.problem, a, be, g, space.p, ask.t, rtol=ask.rtol)


def _run_alone(space: _Space, search):
    """Run one search generator to its end, each request evaluated on its own
    (:func:`_ask_terms`); returns its value. A request of one point ``(dim,)``
    gets two floats, one of ``(n, dim)`` points two arrays ``(n,)``."""
    value = None
    try:
        while True:
            ask = search.send(value)
            d, n = _ask_terms(space, ask)
            value = (float(d), float(n)) if np.ndim(ask.x) == 1 else (d, n)
    except StopIteration as stop:
        return stop.value


#: A request of at least this many points (a grid at a new step) is evaluated in
#: a call of its own, vectorised over its points at its one step: faster than
#: adding it to the round's call, which sums each point's modes separately.
_OWN_CALL_POINTS = 64


def _run_together(space: _Space, searches) -> list:
    """Run search generators side by side; returns their values.

    Each search is a batch size's stages 2 and 3. Every round, each live
    search is resumed until it yields its next request; the requests of the
    round are evaluated in one :func:`~nqm._pointwise.pointwise_terms` call per
    (problem, rtol), each point at its own step, except that a request of
    :data:`_OWN_CALL_POINTS` or more points gets a call of its own
    (:func:`_ask_terms`). A value does not depend on the other searches'
    requests: a grouped point gets its one-setting value (its modes summed on
    their own), an own call the values of its request alone. So neither do the
    results; evaluated together, the numpy overhead of a call is shared by every
    batch size still searching. Values are sent in the form :func:`_run_alone`
    sends them.
    """
    out: list[Any] = [None] * len(searches)
    asks: dict[int, _Ask] = {}

    def resume(i, value):
        try:
            asks[i] = searches[i].send(value)
        except StopIteration as stop:
            out[i] = stop.value
            asks.pop(i, None)

    for i in range(len(searches)):
        resume(i, None)
    while asks:
        groups: dict[tuple[int, float], list[int]] = {}
        values = {}
        for i, ask in asks.items():
            if ask.x.ndim == 2 and len(ask.x) >= _OWN_CALL_POINTS:
                values[i] = _ask_terms(space, ask)
            else:
                groups.setdefault((id(ask.problem), ask.rtol), []).append(i)
        for idx in groups.values():
            rows, steps = [], []  # the round's points and their steps, in order
            for i in idx:
                ask = asks[i]
                if ask.x.ndim == 1:
                    rows.append(ask.x)
                    steps.append(ask.t)
                else:
                    rows.extend(ask.x)
                    steps.extend(
                        ask.t.tolist() if np.ndim(ask.t) else [ask.t] * len(ask.x)
                    )
            a, be, g = space.params(np.array(rows))
            first = asks[idx[0]]
            t = np.array(steps, dtype=np.int64)
            d, n = pointwise_terms(first.problem, a, be, g, space.p, t, rtol=first.rtol)
            d_list, n_list = d.tolist(), n.tolist()
            start = 0
            for i in idx:
                x = asks[i].x
                if x.ndim == 1:
                    values[i] = (d_list[start], n_list[start])
                    start += 1
                else:
                    values[i] = (d[start : start + len(x)], n[start : start + len(x)])
                    start += len(x)
        for i in sorted(values):
            resume(i, values[i])
    return out


class _Bracket(NamedTuple):
    """Steps ``lo < hi`` around the first step count that reaches the target on
    the surrogate: no grid point reaches it at ``lo`` (best loss ``loss_lo``);
    ``x`` reaches it at ``hi`` (loss ``loss_hi``)."""

    lo: int
    hi: int
    x: np.ndarray
    loss_lo: float
    loss_hi: float


_GRID = {
    Family.SGD: (48,),
    Family.MOMENTUM: (32, 13),
    Family.EMA: (32, 13),
    Family.MOMENTUM_EMA: (20, 8, 8),
}


def _surrogate(problem: NQMProblem, bins: int) -> NQMProblem:
    return problem.binned(bins) if problem.n_modes > 2 * bins else problem


def _t_grid():
    return np.unique(np.round(2.0 ** (np.arange(0, 2 * 50 + 1) / 2.0)).astype(np.int64))


# ---------------------------------------------------- constant-lr families
#: Accuracy the surrogate's risk is certified to: the surrogate is itself an
#: approximation (binning), so the exact doubling fallback is kept for modes whose
#: closed form could be off by more than this; reported steps are always exact.
_SURROGATE_RTOL = 1e-8


def _losses(d, n, b):
    """:math:`L_B = D + N/B` (broadcast), ``inf`` where it is not finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        val = d + n / b
    return np.where(np.isfinite(val), val, np.inf)


def _point_loss(d: float, n: float, b) -> float:
    """:func:`_losses` of one point, in floats: the same IEEE operations without
    numpy's per-call overhead (local searches make tens of thousands of
    these)."""
    v = d + n / float(b)
    return v if math.isfinite(v) else math.inf


def _loss(problem, space, x, t, b, rtol=CLOSED_FORM_RTOL):
    a, be, g = space.params(x)
    return _losses(*risk_terms(problem, a, be, g, space.p, int(t), rtol=rtol), b)


def _local_min(problem, space, x0, t, b, spent, rtol=CLOSED_FORM_RTOL):
    """Minimise log L_B(t; x) locally from x0 (a search generator, see
    :class:`_Ask`); returns (x, loss)."""

    seen = {}  # the end point and the start are usually evaluated already

    t = int(t)

    def f(x):
        x = np.asarray(x, dtype=np.float64)
        key = x.tobytes()
        value = seen.get(key)
        if value is None:
            spent.add(1)
            d, n = yield _Ask(problem, x, t, rtol)
            v = _point_loss(d, n, b)
            value = seen[key] = math.log(v) if v > 0 and math.isfinite(v) else 1e300
        return value

    x0 = space.clip(x0)
    u_cap = float(space.u_cap(x0))
    if space.dim == 1:
        lo = max(space.lo[0], x0[0] - 1.5)
        hi = min(u_cap, x0[0] + 1.5)
        xu = yield from bounded_minimum(lambda u: f(np.array([u])), lo, hi, xatol=1e-4)
        x = np.array([xu])
    else:
        upper = [u_cap] + list(space.hi[1:])
        simplex = [x0] + [
            space.clip(
                x0
                + 0.25 * np.eye(space.dim)[i] * (1 if x0[i] < upper[i] - 0.25 else -1)
            )
            for i in range(space.dim)
        ]
        xn = yield from nelder_mead(
            f, np.array(simplex), xatol=1e-3, fatol=1e-7, maxfev=40 * space.dim
        )
        x = space.clip(xn)
    cands = [((yield from f(x)), x), ((yield from f(x0)), x0)]
    val, x = min(cands, key=lambda c: c[0])
    return x, math.exp(val) if val < 700 else math.inf


#: Golden-section iterations of the per-row refinement in u (a bracket of two
#: grid spacings shrinks to 0.3% of its width; the local search refines further).
_ROW_ITERS = 12
#: Stage 1 refines the rows of a batch size whose best grid loss is within this
#: factor of the target, so that a minimum narrower than the grid spacing cannot
#: hide the first step count that reaches the target.
_NEAR = 4.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _grid_terms(surr, X, t, spent):
    """``(D, N)`` of the points ``X`` (``(n, dim)``) at step ``t`` (one step, or
    one per point) on the surrogate, one request (:class:`_Ask`)."""
    spent.add(len(X))
    t = np.asarray(t, dtype=np.int64) if np.ndim(t) else int(t)
    return (yield _Ask(surr, X, t, _SURROGATE_RTOL))


def _row_minima(surr, space, X, L, bs_sel, t, spent):
    """Minimise the loss along ``u`` in every grid row, for several batch sizes.

    Each row (fixed ``v``/``w``) is bracketed by the neighbours of its best grid
    point and refined by a golden-section search, vectorised over rows and batch
    sizes (one request per iteration: a search generator, see :class:`_Ask`).

    Args:
        X: Grid, ``(R, n_u, dim)``.
        L: Its losses, ``(k, R, n_u)``, for ``bs_sel`` (``(k,)``) at step ``t``:
            one step, or one per batch size (``(k,)``).

    Returns:
        ``(x, loss)``: the best point seen in each row, ``(k, R, dim)`` and
        ``(k, R)``.
    """
    k, n_rows, n_u = L.shape
    j = np.argmin(L, axis=2)
    u = np.broadcast_to(X[None, :, :, 0], L.shape)
    pick = np.take_along_axis
    lo = pick(u, np.maximum(j - 1, 0)[..., None], 2)[..., 0]
    hi = pick(u, np.minimum(j + 1, n_u - 1)[..., None], 2)[..., 0]
    best_u = pick(u, j[..., None], 2)[..., 0]
    best_l = pick(L, j[..., None], 2)[..., 0]
    slow = np.broadcast_to(X[None, :, 0, 1:], (k, n_rows, space.dim - 1))
    b_col = np.asarray(bs_sel, dtype=np.float64)[:, None]

    t_pts = np.repeat(t, n_rows) if np.ndim(t) else t

    def f(uu):
        x = np.concatenate([uu[..., None], slow], axis=-1).reshape(-1, space.dim)
        d, n = yield from _grid_terms(surr, x, t_pts, spent)
        return _losses(d.reshape(k, n_rows), n.reshape(k, n_rows), b_col)

    def keep(uu, val):
        better = val < best_l
        best_u[better] = uu[better]
        best_l[better] = val[better]

    x1 = hi - _GOLDEN * (hi - lo)
    x2 = lo + _GOLDEN * (hi - lo)
    f1 = yield from f(x1)
    f2 = yield from f(x2)
    keep(x1, f1)
    keep(x2, f2)
    for _ in range(_ROW_ITERS):
        left = f1 <= f2  # the minimum lies in [lo, x2]
        hi = np.where(left, x2, hi)
        lo = np.where(left, lo, x1)
        new = np.where(left, hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo))
        fn = yield from f(new)
        keep(new, fn)
        x1, x2 = np.where(left, new, x2), np.where(left, x1, new)
        f1, f2 = np.where(left, fn, f2), np.where(left, f1, fn)
    x = np.concatenate([best_u[..., None], slow], axis=-1)
    return x, best_l


def _profile(surr, space, X, t, bs_sel, spent, keep=1, known=None):
    """Best points of the grid at step ``t`` after refining every row in ``u``
    (a search generator, see :class:`_Ask`).

    ``known`` maps steps to the grid's terms ``(d, n)`` already evaluated there
    (stage 1's, :func:`_brackets`): at such a step they are not evaluated again.

    Returns:
        ``(x, loss)``: the ``keep`` best rows' points for each of the ``k`` batch
        sizes, best first, ``(k, keep, dim)`` and ``(k, keep)``.
    """
    bs_sel = np.atleast_1d(np.asarray(bs_sel, dtype=np.float64))
    hit = None if known is None else known.get(int(t))
    if hit is None:
        d, n = yield from _grid_terms(surr, X.reshape(-1, space.dim), t, spent)
    else:
        d, n = hit
    L = _losses(d[None, :], n[None, :], bs_sel[:, None])
    L = L.reshape((bs_sel.size,) + X.shape[:2])
    xr, lr = yield from _row_minima(surr, space, X, L, bs_sel, t, spent)
    r = np.argsort(lr, axis=1, kind="stable")[:, :keep]
    k = np.arange(bs_sel.size)[:, None]
    return xr[k, r], lr[k, r]


def _tune_constant(
    problem, fam, bs, target, p, *, surrogate_bins, grid, polish, fixed_momentum=None
):
    """A constant-lr family at one power and every batch size: the three stages
    of the module docstring, one :class:`_Evaluations` counter for all."""
    hh, _, _ = _modes(problem, p)
    space = _Space(fam, float(hh.max()), p, fixed_momentum)
    surr = _surrogate(problem, surrogate_bins)
    fine = _surrogate(problem, _POLISH_BINS * surrogate_bins)
    G = space.grid(grid or space.grid_sizes())
    spent = _Evaluations()
    brackets, known = _brackets(surr, space, G, bs, target, spent)
    found = _searches_together(
        problem, surr, fine, space, G, bs, brackets, target, polish, known
    )
    results = []
    total = spent.count  # counted as if the batch sizes ran one after the other
    for b, one in zip(bs, found, strict=True):
        if one is None:
            results.append(TuneResult(math.inf, None, fam, float(b), p, target, total))
            continue
        steps, setting, own = one
        total += own
        results.append(
            TuneResult(steps, setting.optimizer(), fam, float(b), p, target, total)
        )
    return results


def _searches_together(
    problem, surr, fine, space, G, bs, brackets, target, polish, known=None
):
    """Stages 2 and 3 of every batch size with a bracket, side by side.

    Each batch size's search is a generator (see :class:`_Ask`) run with the
    others' by :func:`_run_together`; the results are those of searching the
    batch sizes one after the other.

    Returns:
        Per batch size, ``None`` (no bracket) or ``(steps, setting,
        evaluations)``.
    """
    todo = [i for i, br in enumerate(brackets) if br is not None]

    def search(i):
        own = _Evaluations()
        b = bs[i]
        # Stage 2: smallest t on the surrogate with min_x L <= target.
        t_s, x = yield from _first_t_guarded(
            surr, space, G, brackets[i], b, target, own, known
        )
        # Stage 3: exact certification and polish.
        steps, setting = yield from _certify(
            problem, fine, space, x, t_s, b, target, polish, own
        )
        return steps, setting, own.count

    out: list[Any] = [None] * len(brackets)
    found = _run_together(space, [search(i) for i in todo])
    for i, one in zip(todo, found, strict=True):
        out[i] = one
    return out


class _Near(NamedTuple):
    """A batch size ``i`` whose best grid loss at step ``t`` misses the target
    by less than the factor :data:`_NEAR`: its grid losses there ``L``
    (``(n_points,)``), the previous grid step and the best loss there."""

    i: int
    t: int
    prev_t: int
    lo_min: float
    L: np.ndarray


def _brackets(surr, space, G, bs, target, spent):
    """Stage 1: per batch size, the first geometric grid step at which some
    point reaches the target on the surrogate, as a :class:`_Bracket` (``None``
    when none does up to :data:`MAX_STEPS`): a grid point, or, at a step where
    the grid misses the target by less than the factor :data:`_NEAR`, the
    minimum of a grid row refined in ``u`` (:func:`_row_minima`; a minimum
    narrower than the grid spacing may reach the target between its points).

    The refinements wait (as :class:`_Near` entries) until every batch size
    without a bracket has one waiting; they then run together, each at its own
    step (:func:`_refine_near`). Each batch size's bracket is the first step at
    which either succeeds, as if every step were refined before the next one;
    a refinement at a step after a batch size's first success is work spent
    for nothing, and the price of one golden-section search for many steps.

    Steps at which the least loss any setting can reach
    (:mod:`nqm.polynomial_floor`) exceeds :data:`_FLOOR_MARGIN` times the
    near factor are not evaluated, but the last of them is: its losses close
    the brackets of the next step. (Short steps are the grid's dearest: near
    coincident momentum roots there go to doubling.)

    Args:
        G: the grid, ``(R, n_u, dim)``.
        bs: batch sizes ``(n_B,)``.

    Returns:
        ``(brackets, known)``: the brackets, and the grid's terms ``(d, n)`` at
        each step evaluated, by step (stage 2 starts at a bracket's ``hi``).
    """
    X = G.reshape(-1, space.dim)
    a, be, g = space.params(X)
    n_b = bs.size
    bracket: list[_Bracket | None] = [None] * n_b
    waiting: list[_Near] = []
    prev_t = 0
    prev_L = None
    known = {}
    steps = _t_grid()
    for t in steps[_first_useful(surr, space.p, steps, _NEAR * target) :]:
        if t > MAX_STEPS:
            break
        open_ = [i for i in range(n_b) if bracket[i] is None]
        if waiting and {w.i for w in waiting}.issuperset(open_):
            _refine_near(surr, space, G, bs, waiting, target, spent, bracket)
            waiting = []
            open_ = [i for i in open_ if bracket[i] is None]
        if not open_:
            break
        d, n = risk_terms(surr, a, be, g, space.p, int(t), rtol=_SURROGATE_RTOL)
        spent.add(X.shape[0])
        known[int(t)] = (d, n)
        L = _losses(d[None, :], n[None, :], bs[:, None])
        # the previous grid step's best loss (a failure) closes each bracket below
        lo_min = np.full(n_b, math.inf) if prev_L is None else prev_L.min(axis=1)
        for i in open_:
            j = int(np.argmin(L[i]))
            if L[i, j] <= target:
                bracket[i] = _Bracket(
                    prev_t, int(t), X[j], float(lo_min[i]), float(L[i, j])
                )
            elif L[i, j] <= _NEAR * target:
                waiting.append(_Near(i, int(t), prev_t, float(lo_min[i]), L[i]))
        prev_t = int(t)
        prev_L = L
    if waiting:
        _refine_near(surr, space, G, bs, waiting, target, spent, bracket)
    return bracket, known


#: Stage 1 skips a step only when the polynomial floor exceeds the near
#: factor times this margin (far above the rounding of the floor and of the
#: certified losses it stands for).
_FLOOR_MARGIN = 2.0


def _first_useful(surr, p, steps, near):
    """Index into ``steps`` (increasing) of the step before the first at which
    some setting could come within ``near`` of the target on ``surr``: before
    it, :func:`~nqm.polynomial_floor.christoffel_at_zero` of the surrogate's
    modes (a lower bound of every setting's loss) exceeds
    ``_FLOOR_MARGIN * near``; 0 when that holds at no step."""
    hh, wd, _ = _modes(surr, p)
    floors = christoffel_at_zero(hh, wd)
    done = -1  # the floor's step reached so far
    floor = math.inf
    for k, t in enumerate(steps.tolist()):
        while done < t:
            floor = next(floors)
            done += 1
        if not floor > _FLOOR_MARGIN * near:
            return max(k - 1, 0)
    return 0


def _refine_near(surr, space, G, bs, waiting, target, spent, bracket):
    """Refine the grid rows of every :class:`_Near` entry of ``waiting`` (in
    order of step) in one golden-section search, each at its own step, and
    move each batch size's bracket to its first step whose refined minimum
    reaches the target, when that comes before the bracket's."""
    L = np.stack([w.L for w in waiting]).reshape((len(waiting),) + G.shape[:2])
    sel = np.array([w.i for w in waiting])
    t = np.array([w.t for w in waiting], dtype=np.int64)
    xr, lr = _run_alone(space, _row_minima(surr, space, G, L, bs[sel], t, spent))
    for k, w in enumerate(waiting):
        r = int(np.argmin(lr[k]))
        br = bracket[w.i]
        if lr[k, r] <= target and (br is None or w.t < br.hi):
            bracket[w.i] = _Bracket(w.prev_t, w.t, xr[k, r], w.lo_min, float(lr[k, r]))


def _certify(problem, fine, space, x, t_s, b, target, polish, spent):
    """Stage 3: the exact steps of ``x`` on the full problem (searched from the
    surrogate's ``t_s``), then up to ``polish`` rounds of a local search at one
    step fewer on the finer surrogate ``fine``, each kept only if its exact steps
    are fewer. Candidates are certified from their floats
    (:class:`~nqm.families.ConstantSetting`).

    On runs of at least :data:`_EARLY_POLISH_MIN_STEPS` surrogate steps the
    first round runs before ``x`` is certified: it searches at one step
    below :func:`_exact_crossing`'s estimate of ``x``'s crossing (exact losses at
    single steps, far cheaper than a certification), and a candidate that then
    certifies below the estimate is kept without certifying ``x`` (its steps
    are the certified ones; ``x`` reaches the target at the estimate, so it
    needs no fewer unless its loss dips below the target earlier and rises
    again). Otherwise ``x`` is certified and the rounds run as described, unless
    its steps are the estimate (the first round, from them, found nothing).
    A search generator (see :class:`_Ask`).

    Returns:
        ``(steps, setting)``.
    """
    fine_rtol = CLOSED_FORM_RTOL if fine is problem else _SURROGATE_RTOL
    setting = space.setting(x)
    rounds = polish
    steps = None
    t_x = None
    if polish and t_s >= _EARLY_POLISH_MIN_STEPS:
        t_x = _exact_crossing(problem, space, x, t_s, b, target, spent)
    tried = t_x is not None and t_x > 1
    if tried:
        found = yield from _polish_round(
            problem, fine, space, x, t_x, b, target, spent, fine_rtol
        )
        if found is not None:
            steps, setting, x = found
            rounds -= 1
    if steps is None:
        steps = steps_to_target(problem, setting, b, target, guess=t_x or t_s)
        if tried and steps == t_x:
            rounds = 0  # the first round, from these steps, found nothing
    for _ in range(rounds if math.isfinite(steps) and steps > 1 else 0):
        found = yield from _polish_round(
            problem, fine, space, x, steps, b, target, spent, fine_rtol
        )
        if found is None:
            break
        steps, setting, x = found
    return steps, setting


def _polish_round(problem, fine, space, x, steps, b, target, spent, rtol):
    """One polish round: the local minimum of the loss at ``steps - 1`` on
    ``fine`` from ``x``, certified exactly below ``steps`` (a search
    generator, see :class:`_Ask`).

    Returns:
        ``(steps, setting, x)`` of the candidate when it needs fewer than
        ``steps`` exact steps, else ``None``.
    """
    xm, val = yield from _local_min(fine, space, x, steps - 1, b, spent, rtol)
    if val > target:
        return None
    cand = space.setting(xm)
    # only an improvement matters: the search may stop below ``steps``
    s2 = steps_to_target(problem, cand, b, target, max_steps=steps - 1, guess=steps - 1)
    return (s2, cand, xm) if s2 < steps else None


#: The first polish round runs before certification (see :func:`_certify`) only
#: from this many surrogate steps: on shorter runs the loss of a tuned momentum
#: can ripple across the target near its crossing (reference problem, p = 0,
#: B = 2^17: below the target at 167 steps, above it at 175), and a certification
#: there costs less.
_EARLY_POLISH_MIN_STEPS = 1024
#: :func:`_exact_crossing` first steps this fraction of the surrogate's estimate
#: away from it (then twice as far each time) to bracket the exact crossing.
_CROSSING_STEP = 1.0 / 1024.0


def _exact_crossing(problem, space, x, t_s, b, target, spent):
    """A step at which ``x``'s exact loss reaches ``target`` one step after
    exceeding it, searched near the surrogate's ``t_s``: a bracket grown
    geometrically from ``t_s``, then bisection, each probe one exact loss.

    Not certified (a loss that dips below the target earlier is not seen):
    :func:`_certify` uses it only as the step to polish at, and every reported
    step count is certified.

    Returns:
        The step, or ``None`` when no bracket is found within
        :data:`MAX_STEPS` (or the loss reaches the target at step 0).
    """

    def reached(t):
        spent.add(1)
        return float(_loss(problem, space, x, t, b)) <= target

    width = max(1, math.ceil(_CROSSING_STEP * t_s))
    if reached(t_s):
        hi = t_s
        while True:
            lo = max(hi - width, 0)
            if not reached(lo):
                break
            if lo == 0:
                return None
            hi, width = lo, 2 * width
    else:
        lo = t_s
        while True:
            hi = min(lo + width, MAX_STEPS)
            if reached(hi):
                break
            if hi == MAX_STEPS:
                return None
            lo, width = hi, 2 * width
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reached(mid):
            hi = mid
        else:
            lo = mid
    return hi


#: Stage 2 locates the first step count on the surrogate to this relative
#: precision.
_T_RTOL = 1e-3
#: The polish searches on a surrogate with this many times more bins than the
#: search (the problem itself when it has at most twice as many modes): on the
#: reference problem (10^4 modes) a local search on 2048 bins is several times
#: cheaper than one on every mode and lands within a few steps of it; the result
#: is certified exactly either way.
_POLISH_BINS = 16
#: Restarts of stage 2 when a check finds the target reached earlier.
_RESTARTS = 3
#: The check refines a start locally only if its loss is within this factor of
#: the target.
_GUARD_NEAR = 1.5


def _first_t_guarded(surr, space, G, bracket, b, target, spent, known=None):
    """Stage 2 with a global check: ``(t, x)``, the first ``t`` on the surrogate
    (within 1e-3 relative) at which ``x`` reaches the target, from stage 1's
    :class:`_Bracket`.

    The local search of :func:`_first_t_on_surrogate` keeps to the basin it
    starts in, and loss surfaces of momentum have several: an SGD-like one, and
    heavy-ball ones near critical damping whose valleys are narrower than the
    grid. So it starts from the better (at ``hi``) of the bracket's grid point
    and the best point of the row profile (:func:`_profile`). Once it converges,
    one probe below its answer is tried again from other starts: the two best
    rows of the profile there and the start not taken, each refined locally. If
    one reaches the target, the search restarts below from it. ``known``: the
    grid's terms by step from stage 1 (see :func:`_profile`). A search
    generator (see :class:`_Ask`).
    """
    lo, hi, x, l_lo, l_hi = bracket
    xp, lp = yield from _profile(surr, space, G, hi, b, spent, keep=1, known=known)
    starts = sorted([(l_hi, 0, x), (float(lp[0, 0]), 1, xp[0, 0])], key=lambda s: s[:2])
    (l_hi, _, x), (_, _, other) = starts
    t_hi, x = yield from _first_t_on_surrogate(
        surr, space, x, lo, hi, l_lo, l_hi, b, target, spent
    )
    for _ in range(_RESTARTS):
        probe = t_hi - max(1, int(_T_RTOL * t_hi))
        if probe <= lo:
            break
        xp, lp = yield from _profile(surr, space, G, probe, b, spent, keep=2)
        found = None
        for x0, l0 in [(xp[0, k], lp[0, k]) for k in range(xp.shape[1])] + [
            (other, None)
        ]:
            if l0 is None:
                d, n = yield _Ask(surr, x0, int(probe), _SURROGATE_RTOL)
                l0 = _point_loss(d, n, b)
            if l0 > _GUARD_NEAR * target:
                continue  # a local refinement will not close that gap
            xm, val = yield from _local_min(
                surr, space, x0, probe, b, spent, _SURROGATE_RTOL
            )
            if val <= target:
                found = (xm, val)
                break
        if found is None:
            break
        t_hi, x = yield from _first_t_on_surrogate(
            surr, space, found[0], lo, probe, l_lo, found[1], b, target, spent
        )
    return t_hi, x


def _first_t_on_surrogate(surr, space, x, lo, hi, l_lo, l_hi, b, target, spent):
    """Smallest t (within 1e-3 relative) with :math:`\\min_x L_B(t; x) \\le`
    target on the surrogate, from a bracket: ``lo`` fails, ``hi`` succeeds with
    ``x`` (grid losses ``l_lo > target >= l_hi``).

    Illinois regula falsi on :math:`g(t) = \\log(\\min_x L / \\text{target})` in
    :math:`\\log t`, which is close to linear across a bracket of ratio
    :math:`\\sqrt2`; a bisection step whenever the same end was kept twice in a
    row guarantees the bracket halves at least every other probe. Each probe is a
    warm-started local minimisation. A search generator (see :class:`_Ask`);
    returns ``(hi, x)``.
    """
    g_lo = math.log(l_lo / target) if math.isfinite(l_lo) else math.inf
    g_hi = math.log(max(l_hi, 1e-300) / target)
    kept = 0  # +k: hi moved k times in a row (lo kept); -k: lo moved
    while hi - lo > max(1, int(_T_RTOL * hi)):
        if lo < 1 or not math.isfinite(g_lo) or abs(kept) >= 2 or g_lo <= g_hi:
            mid = (lo + hi) // 2
        else:
            frac = min(max(g_lo / (g_lo - g_hi), 0.05), 0.95)
            mid = round(math.exp(math.log(lo) + frac * (math.log(hi) - math.log(lo))))
            mid = min(max(mid, lo + 1), hi - 1)
        xm, val = yield from _local_min(surr, space, x, mid, b, spent, _SURROGATE_RTOL)
        g_mid = math.log(max(val, 1e-300) / target) if math.isfinite(val) else math.inf
        if val <= target:
            hi, x, g_hi = mid, xm, g_mid
            kept = kept + 1 if kept > 0 else 1
            if kept == 2:
                g_lo *= 0.5
        else:
            lo, g_lo = mid, g_mid
            kept = kept - 1 if kept < 0 else -1
            if kept == -2:
                g_hi *= 0.5
        if abs(kept) > 2:
            kept = 0  # after the forced bisection
    return hi, x


# ------------------------------------------------------------ schedules
#: Families tuned as SGD with a piecewise-constant schedule (batched L-BFGS).
SCHEDULE_FAMILIES = (Family.PWC, Family.LINEAR_DECAY, Family.WSD, Family.COSINE)
#: Parameters tuned per schedule family besides the peak lr (raw, logit scale).
_SCHEDULE_INIT = {
    # decay to sigmoid(2) ~ 0.88: near the constant lr, but not where the
    # sigmoid saturates (at sigmoid(6) L-BFGS barely moved it: 2.3x more steps).
    Family.LINEAR_DECAY: (2.0,),
    # warm-up fraction sigmoid(-6) (a warm-up shorter than one stair is none),
    # decay from 88% of the run to half the peak: near the constant lr
    Family.WSD: (-6.0, 2.0, 0.0),
    # warm-up as above; cosine down to sigmoid(2) ~ 0.88 of the peak
    Family.COSINE: (-6.0, 2.0),
}
#: L-BFGS iterations per bisection probe. The warm-up and decay-start kinks of
#: ``wsd`` and ``cosine`` keep L-BFGS iterating long after the staircase stops
#: improving (reference problem, 4 batch sizes: 50 iterations gave the steps of
#: 200 at 0.6x the time).
_LBFGS_ITERS = {
    Family.PWC: 200,
    Family.LINEAR_DECAY: 200,
    Family.WSD: 50,
    Family.COSINE: 50,
}
#: sqrt is evaluated at no less than this (its derivative at 0 is infinite; the
#: clamp in front passes no gradient there, and 0 * a finite value is 0)
_SQRT_FLOOR = 1e-30


def _schedule_values(fam, params, pieces, decay_shape=DecayShape.ONE_MINUS_SQRT):
    r"""Map raw parameters (torch, shape (n_b, n_par)) to per-piece lr fractions.

    Stair :math:`k` starts at the fraction :math:`x_k = k/K` of the run and
    takes the schedule's value there: ``linear_decay``
    :math:`a(1 - (1-\delta)x)`; ``wsd`` and ``cosine`` with warm-up fraction
    :math:`w`, :math:`a\min(1, (x + 1/K)/w)` while :math:`x < w`, then for
    ``wsd`` :math:`a` until the decay start :math:`d = w + (1-w)\sigma`, then
    :math:`a(\delta + (1-\delta)\phi((x-d)/(1-d)))`, and for ``cosine``
    :math:`a(\delta + (1-\delta)(1 + \cos\pi y)/2)`, :math:`y = (x-w)/(1-w)`.
    Every parameter is a sigmoid of a raw one.
    """
    import torch

    if fam is Family.PWC:
        return torch.sigmoid(params)
    sig = torch.sigmoid(params)
    peak = sig[:, :1]
    x = torch.arange(pieces, dtype=params.dtype, device=params.device)[None, :]
    x = x / pieces
    if fam is Family.LINEAR_DECAY:
        return peak * (1.0 - (1.0 - sig[:, 1:2]) * x)
    w = sig[:, 1:2]
    warm = torch.clamp((x + 1.0 / pieces) / w, max=1.0)
    if fam is Family.WSD:
        d = w + (1.0 - w) * sig[:, 2:3]
        final = sig[:, 3:4]
        y = torch.clamp((x - d) / torch.clamp(1.0 - d, min=1e-12), 0.0, 1.0)
        if DecayShape(decay_shape) is DecayShape.LINEAR:
            phi = 1.0 - y
        else:
            phi = 1.0 - torch.sqrt(torch.clamp(y, min=_SQRT_FLOOR))
        after = torch.where(x >= d, final + (1.0 - final) * phi, torch.ones_like(x))
    else:
        final = sig[:, 2:3]
        y = torch.clamp((x - w) / torch.clamp(1.0 - w, min=1e-12), 0.0, 1.0)
        after = final + (1.0 - final) * 0.5 * (1.0 + torch.cos(math.pi * y))
    return peak * torch.where(x < w, warm, after)


def tune_schedules(
    problem: NQMProblem,
    fam: Family,
    bs: np.ndarray,
    target: float,
    powers: Sequence[float],
    baselines: Sequence[Sequence[TuneResult]],
    **kw: Any,
) -> list[list[TuneResult]]:
    """Schedules for every (power, batch size) at once: one batched L-BFGS.

    Args:
        problem: the NQM.
        fam: ``Family.PWC`` or ``Family.LINEAR_DECAY``.
        bs: batch sizes, shape ``(n_B,)``.
        target: the target loss.
        powers: precondition powers, ``(n_P,)``.
        baselines: per power, SGD's results at every batch size (a schedule
            contains the constant lr, so it starts there and is never worse).
        **kw: ``surrogate_bins``, ``pieces``, ``stairs``, ``device``.

    Returns:
        Per power, the list of :class:`TuneResult` over ``bs`` (``evaluations``:
        the schedule losses evaluated for that power, all batch sizes).

    Every (power, batch size) is one row of a single tensor program (on
    ``device``); rows are independent problems with their own L-BFGS state and
    line search, so a row's result depends on what it is stacked with only through
    rounding.
    Runs torch on one intra-op thread (restored after): the tensors are small, and
    with several threads every operation pays synchronisation, and on a loaded
    machine waits for a descheduled thread (measured: 7x slower overall).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _tune_schedules_lbfgs(problem, fam, bs, target, powers, baselines, **kw)
    finally:
        torch.set_num_threads(threads)


def _row_modes(problem, powers, n_b, f64):
    """Per-row (hh, wd, wn), each (n_P * n_B, M), rows ordered power-major, and
    each row's number of modes before padding, ``(n_P * n_B,)``.

    Powers whose modes merge to fewer than M (p = 1: one) are padded by
    repeating their last mode with zero weights, which adds exactly 0.
    """
    import torch

    modes = [_modes(problem, p) for p in powers]
    width = max(m[0].size for m in modes)
    rows = []
    for hh, wd, wn in modes:
        pad = width - hh.size
        hh = np.concatenate([hh, np.full(pad, hh[-1])])
        wd, wn = (np.concatenate([w, np.zeros(pad)]) for w in (wd, wn))
        rows.append(np.stack([hh, wd, wn]))
    stacked = np.repeat(np.stack(rows), n_b, axis=0)  # (n_P * n_B, 3, M)
    widths = np.repeat([m[0].size for m in modes], n_b)
    return tuple(torch.tensor(stacked[:, i], **f64) for i in range(3)), widths


def _tune_schedules_lbfgs(
    problem, fam, bs, target, powers, baselines, *, surrogate_bins, pieces, stairs,
    device, decay_shape=DecayShape.ONE_MINUS_SQRT,
):  # fmt: skip
    import torch

    f64 = {"dtype": torch.float64, "device": device}
    powers = [float(p) for p in powers]
    n_b = bs.size
    n_rows = len(powers) * n_b
    surr = _surrogate(problem, surrogate_bins)
    modes, widths = _row_modes(surr, powers, n_b, f64)
    a_max = np.repeat([2.0 / float(_modes(problem, p)[0].max()) for p in powers], n_b)
    a_max_t = torch.tensor(a_max, **f64)
    bs_t = torch.tensor(np.tile(bs, len(powers)), **f64)
    k = pieces if fam is Family.PWC else stairs
    base = [r for results in baselines for r in results]  # row order
    # Start every row from its tuned constant lr (a schedule contains it).
    hi = np.array([r.steps if math.isfinite(r.steps) else MAX_STEPS for r in base])
    frac = np.array(
        [
            r.optimizer.schedule.lr / a if r.optimizer is not None else 0.5
            for r, a in zip(base, a_max, strict=True)
        ]
    )
    frac = np.clip(frac, 1e-9, 1 - 1e-9)
    logit = np.log(frac) - np.log1p(-frac)
    if fam is Family.PWC:
        best = np.repeat(logit[:, None], k, axis=1)
    else:
        rest = np.broadcast_to(_SCHEDULE_INIT[fam], (n_rows, len(_SCHEDULE_INIT[fam])))
        best = np.concatenate([logit[:, None], rest], axis=1)
    hi = hi.astype(np.int64)
    active = hi > 1
    evaluations = np.zeros(n_rows, dtype=np.int64)  # per row
    hi, shorter = _bisect_runs(
        fam, best, hi, active, (modes, widths), a_max_t, bs_t, k, target,
        decay_shape, evaluations,
    )  # fmt: skip
    out = []
    for j, p in enumerate(powers):
        results = []
        spent = int(evaluations[j * n_b : (j + 1) * n_b].sum())  # this power's
        for i, b in enumerate(bs):
            r = j * n_b + i
            results.append(
                _certified_schedule(
                    problem, fam, b, target, p, base[r], best[r], hi[r], a_max[r], k,
                    active=active[r], evaluations=spent, f64=f64, decay_shape=decay_shape,
                    shorter=shorter[r],
                )
            )  # fmt: skip
        out.append(_batch_transfer(problem, bs, target, results, a_max[j * n_b]))
    return out


def _lengths(steps, k, f64):
    """Per row, the ``k`` piece lengths of runs of ``steps`` (``(R,)`` integers)
    as a float tensor ``(R, k)`` (:func:`_piece_bounds_fixed`)."""
    import torch

    return torch.tensor(
        np.stack([np.diff(_piece_bounds_fixed(int(m), k)) for m in steps]), **f64
    )


def _minimise_rows(fam, x0, rows, steps, modes, a_max_t, bs_t, k, decay_shape, iters):
    """One batched L-BFGS over rows ``rows``: each row minimises the log loss
    of its schedule (parameters from ``x0``, pieces stretched over its run of
    ``steps``) on the surrogate ``modes`` (``((hh, wd, wn), widths)``, see
    :func:`_row_modes`).

    The rows of each mode count are evaluated on their own modes only (``p =
    1``: one of the padded width): the padding adds exact zeros, so each row's
    value and gradient are the same, at a fraction of the work.
    """
    import torch

    from ._lbfgs import batched_lbfgs
    from ._piecewise_risk import piecewise_risk

    (hh, wd, wn), widths = modes
    dev = a_max_t.device
    f64 = {"dtype": a_max_t.dtype, "device": dev}
    lengths = _lengths(steps, k, f64)
    rows_t = torch.as_tensor(rows, device=dev)
    scale, sizes = a_max_t[rows_t], bs_t[rows_t]
    # per mode count: a mask over this call's rows and their modes cut to it
    groups = []
    for w in np.unique(widths[rows]):
        mask = torch.as_tensor(widths[rows] == w, device=dev)
        groups.append((mask, tuple(m[rows_t, :w] for m in (hh, wd, wn))))

    def objective(params, idx):
        lrs = scale[idx, None] * _schedule_values(fam, params, k, decay_shape)
        parts, order = [], []
        for mask, sel in groups:
            at = torch.nonzero(mask[idx]).flatten()
            if at.numel():
                r = idx[at]
                parts.append(piecewise_risk(
                    *(m[r] for m in sel), lrs[at], lengths[r], sizes[r]
                ))  # fmt: skip
                order.append(at)
        # back in the order of idx
        return torch.log(torch.cat(parts)[torch.argsort(torch.cat(order))])

    return batched_lbfgs(
        objective, torch.tensor(x0, **f64), max_iter=iters, tol_grad=1e-10,
        tol_change=1e-12,
    )  # fmt: skip


def _bisect_runs(
    fam, best, hi, active, modes, a_max_t, bs_t, k, target, decay_shape, evaluations
):  # fmt: skip
    """Bisection on each row's run length in ``(0, hi]``; every probe minimises
    the log loss of the rows still searching at their own midpoints, all in one
    batched L-BFGS (:data:`_LBFGS_ITERS`), warm-started from the row's last
    feasible parameters. Updates ``best`` in place.

    Returns:
        ``(hi, shorter)``: per row the shortest run length found feasible and
        the run length its parameters need (:func:`_shortest_runs`).
    """
    import torch

    hi0 = hi.copy()
    hi = hi.copy()
    lo = np.zeros_like(hi)
    while True:
        todo = active & (hi - lo > np.maximum(1, (_RUN_RTOL * hi).astype(np.int64)))
        if not np.any(todo):
            break
        rows = np.flatnonzero(todo)
        mid = (lo[rows] + hi[rows]) // 2
        res = _minimise_rows(
            fam, best[rows], rows, mid, modes, a_max_t, bs_t, k, decay_shape,
            _LBFGS_ITERS[fam],
        )  # fmt: skip
        evaluations[rows] += res.evaluations.cpu().numpy()
        ok = (torch.exp(res.f) <= target).cpu().numpy()
        best[rows[ok]] = res.x.cpu().numpy()[ok]
        hi[rows[ok]] = mid[ok]
        lo[rows[~ok]] = mid[~ok]
    shorter = _shortest_runs(
        fam, best, lo, hi, active & (hi < hi0), modes, a_max_t, bs_t, k, target,
        decay_shape, evaluations,
    )  # fmt: skip
    return hi, shorter


#: The bisection on each row's run length stops once its bracket is narrower
#: than this fraction of its upper end (then :func:`_shortest_runs` resolves the
#: run length of the tuned parameters to a step).
_RUN_RTOL = 1e-3


def _shortest_runs(
    fam, best, lo, hi, rows, modes, a_max_t, bs_t, k, target, decay_shape, evaluations
):  # fmt: skip
    """Per row, the shortest run length in ``(lo, hi]`` at which the row's tuned
    schedule (its parameters ``best``, its pieces stretched over that length)
    reaches the target on the surrogate, by bisection from ``hi`` (where it
    does); ``hi`` itself for rows not in ``rows``.

    The bisection on run length stops within 0.1% of the answer, each probe
    re-optimising the schedule; this one keeps the parameters and costs one
    loss per row and probe, so it resolves the last 0.1% to a step. The
    certification tries the schedule at this length as well and keeps the one
    with fewer exact steps.
    """
    import torch

    from ._piecewise_risk import piecewise_risk

    f64 = {"dtype": a_max_t.dtype, "device": a_max_t.device}
    out = hi.copy()
    idx = np.flatnonzero(rows)
    a, b = lo[idx].copy(), hi[idx].copy()
    params = torch.tensor(best[idx], **f64)
    sel = [m[torch.as_tensor(idx, device=a_max_t.device)] for m in modes[0]]
    scale = a_max_t[torch.as_tensor(idx, device=a_max_t.device)]
    sizes = bs_t[torch.as_tensor(idx, device=a_max_t.device)]
    with torch.no_grad():
        lrs = scale[:, None] * _schedule_values(fam, params, k, decay_shape)
    while True:
        go = np.flatnonzero(b - a > 1)
        if go.size == 0:
            break
        mid = (a[go] + b[go]) // 2
        lengths = _lengths(mid, k, f64)
        g = torch.as_tensor(go, device=a_max_t.device)
        with torch.no_grad():
            loss = piecewise_risk(
                sel[0][g], sel[1][g], sel[2][g], lrs[g], lengths, sizes[g]
            )
        evaluations[idx[go]] += 1
        ok = (loss <= target).cpu().numpy()
        b[go[ok]] = mid[ok]
        a[go[~ok]] = mid[~ok]
    out[idx] = b
    return out


def _schedule_candidate(fam, params, steps, a_max, k, p, f64, decay_shape):
    """The optimizer of a row's schedule parameters over a run of ``steps``."""
    import torch

    # L-BFGS may push a logit far into the sigmoid's flat tails, where it rounds
    # to exactly 0 or 1 (an lr of 0 is not an optimizer); within ±40 it is off by
    # at most 4e-18, the same dynamics to rounding, and certified as such.
    params = np.clip(params, -_LOGIT_MAX, _LOGIT_MAX)
    with torch.no_grad():
        vals = a_max * _schedule_values(
            fam, torch.tensor(params[None], **f64), k, decay_shape
        )
    vals = vals.cpu().numpy()[0]
    edges = _piece_bounds_fixed(int(steps), k)
    keep = np.diff(edges) > 0  # runs shorter than k steps leave empty pieces
    starts = edges[:-1][keep]  # starts[0] == 0: empty pieces all start at 0
    return Optimizer(
        PiecewiseConstant(
            tuple(int(x) for x in starts[1:]), tuple(float(v) for v in vals[keep])
        ),
        precond_power=p,
    )


def _certified_schedule(
    problem, fam, b, target, p, base, params, steps, a_max, k, *, active,
    evaluations, f64, decay_shape=DecayShape.ONE_MINUS_SQRT, shorter=None,
):  # fmt: skip
    """The exact steps of a row's schedule, or its baseline when not better.

    With ``shorter`` (a run length below ``steps``, :func:`_shortest_runs`),
    the same parameters over that run are certified too, below the better of
    the two others, and kept if they need fewer steps.
    """
    if not active:
        return TuneResult(base.steps, base.optimizer, fam, float(b), p, target,
                          evaluations)  # fmt: skip
    cand = _schedule_candidate(fam, params, steps, a_max, k, p, f64, decay_shape)
    # Only an improvement on the baseline matters: stop the search below it. The
    # surrogate's run length is a guess of the answer: the search for an upper
    # end starts there instead of at one step (every step below is certified
    # either way, so the answer does not depend on it).
    limit = _below(base.steps)
    run = int(steps)
    guess = max(int(steps), 1) if limit is None else min(max(int(steps), 1), limit)
    found = steps_to_target(
        problem, cand, b, target, max_steps=limit, guess=guess if guess >= 1 else None
    )

    def stretched(length, guess):
        """The exact steps, below the best so far, of the same parameters over
        a run of ``length``, and their optimizer; ``None`` when no step is left
        below. The search's upper end starts at ``guess`` (``None``: the limit)."""
        limit = _below(min(found, base.steps))
        if limit is not None and limit < 1:
            return None
        alt = _schedule_candidate(fam, params, length, a_max, k, p, f64, decay_shape)
        if guess is None:
            guess = limit
        elif limit is not None:
            guess = min(guess, limit)
        got = steps_to_target(problem, alt, b, target, max_steps=limit, guess=guess)
        return got, alt

    if shorter is not None and 1 <= shorter < steps:
        tried = stretched(int(shorter), int(shorter))
        if tried is not None and tried[0] < found:
            (found, cand), run = tried, int(shorter)
    for _ in range(_EXACT_STRETCH_ROUNDS):
        # the schedule reaches the target before its run ends: the same
        # parameters stretched over those steps finish their decay by then
        if not (math.isfinite(found) and 1 <= found < run):
            break
        tried = stretched(int(found), None)
        if tried is None or tried[0] >= found:
            break
        (found, cand), run = tried, int(found)
    if base.steps <= found:
        return TuneResult(base.steps, base.optimizer, fam, float(b), p, target,
                          evaluations)  # fmt: skip
    return TuneResult(found, cand, fam, float(b), p, target, evaluations)


def _batch_transfer(problem, bs, target, results, a_max):
    r"""Each batch size also tries its neighbours' schedules rescaled to it.

    Where the noise term dominates, the loss of a schedule at batch size
    :math:`B'` equals that at :math:`B` with every lr divided by :math:`c =
    B'/B` and every piece :math:`c` times longer (SGD's mean response depends on
    :math:`\alpha t`, the noise on :math:`\alpha^2 t / B`, both kept to first
    order in :math:`\alpha h`), so a neighbour tuned into a better local optimum
    predicts :math:`c\,S(B')` steps here. A neighbour's schedule is certified
    at this batch size (exactly, below its own steps) when that prediction is
    fewer steps and its rescaled lrs stay below the stability edge ``a_max``,
    and kept if it needs fewer steps. Batch sizes are visited in increasing
    order, each trying the already visited smaller one and the next larger one;
    the sweep is repeated while it improves a batch size (at most
    :data:`_TRANSFER_SWEEPS` times), so that a schedule improved late in one
    sweep reaches its smaller neighbours in the next.

    Args:
        problem: the NQM.
        bs: batch sizes ``(n_B,)``, in the order of ``results``.
        target: the target loss.
        results: one :class:`TuneResult` per batch size.
        a_max: plain SGD's stability limit :math:`2/\max\hat h` at this power.

    Returns:
        The results, each never more steps than given.
    """
    out = list(results)
    order = [int(i) for i in np.argsort(bs, kind="stable")]
    tried: set[tuple[int, int, float]] = set()  # (here, neighbour, its steps)
    for _ in range(_TRANSFER_SWEEPS):
        improved = False
        for pos, i in enumerate(order):
            for n in order[max(pos - 1, 0) : pos] + order[pos + 1 : pos + 2]:
                if (i, n, out[n].steps) in tried:  # same schedule, same answer
                    continue
                tried.add((i, n, out[n].steps))
                better = _transferred(problem, target, out[i], out[n], a_max)
                if better is not None:
                    out[i], improved = better, True
        if not improved:
            break
    return out


#: Sweeps of :func:`_batch_transfer` at most.
_TRANSFER_SWEEPS = 3


def _transferred(problem, target, own, nb, a_max):
    """``own`` replaced by the neighbour ``nb``'s schedule rescaled to its batch
    size (:func:`_batch_transfer`) when that certifies fewer steps, else
    ``None``."""
    sched = None if nb.optimizer is None else nb.optimizer.schedule
    if not isinstance(sched, PiecewiseConstant) or own.steps < 2:
        return None
    c = float(nb.batch_size) / float(own.batch_size)
    if not math.isfinite(nb.steps) or c * nb.steps >= own.steps:
        return None
    values = tuple(v / c for v in sched.values)
    bounds = [int(round(x * c)) for x in sched.boundaries]
    if max(values) >= a_max or any(
        b1 >= b2 for b1, b2 in zip([0] + bounds, bounds, strict=False)
    ):
        return None
    opt = Optimizer(
        PiecewiseConstant(tuple(bounds), values),
        precond_power=nb.optimizer.precond_power,
    )
    limit = _below(own.steps)
    guess = min(max(int(round(c * nb.steps)), 1), limit)
    got = steps_to_target(
        problem, opt, own.batch_size, target, max_steps=limit, guess=guess
    )
    if got >= own.steps:
        return None
    return TuneResult(got, opt, own.family, own.batch_size, own.precond_power,
                      target, own.evaluations)  # fmt: skip


#: Rounds of re-stretching a certified schedule over the steps it needs
#: (:func:`_certified_schedule`).
_EXACT_STRETCH_ROUNDS = 4


def _below(steps):
    """``max_steps`` for a certification that only matters if it needs fewer than
    ``steps``: one step fewer (``None``, no limit, when ``steps`` is ``inf``)."""
    return None if math.isinf(steps) else max(int(steps) - 1, 0)


def _piece_bounds_fixed(total: int, pieces: int):
    """``pieces + 1`` edges of near-equal pieces (some empty when total < pieces)."""
    return np.round(np.linspace(0, total, pieces + 1)).astype(np.int64)


# ------------------------------------------------------------------ driver
def tune(
    problem: NQMProblem,
    fam: Family,
    bs: np.ndarray,
    target: float,
    p: float,
    *,
    surrogate_bins: int = 128,
    grid=None,
    pieces: int = 10,
    stairs: int = 64,
    polish: int = 1,
    baseline=None,
    fixed_momentum=None,
    contained=None,
    device="cpu",
    decay_shape=DecayShape.ONE_MINUS_SQRT,
):
    """Tune ``fam`` at every batch size in ``bs``; see the module docstring.

    ``baseline`` holds SGD's results and ``contained`` (``momentum_ema`` only)
    those of ``momentum`` and ``ema``, one per batch size each: the families
    this one contains. Whatever is omitted is tuned here, and the result at each
    batch size is never worse than any of them. ``device`` is the torch device of
    the schedule families' L-BFGS (the constant-lr families run in numpy).
    """
    (out,) = tune_powers(
        problem,
        fam,
        bs,
        target,
        [p],
        surrogate_bins=surrogate_bins,
        grid=grid,
        pieces=pieces,
        stairs=stairs,
        polish=polish,
        baselines=None if baseline is None else [baseline],
        fixed_momentum=fixed_momentum,
        contained=None if contained is None else [contained],
        device=device,
        decay_shape=decay_shape,
    )
    return out


def tune_powers(
    problem: NQMProblem,
    fam: Family,
    bs: np.ndarray,
    target: float,
    powers: Sequence[float],
    *,
    surrogate_bins: int = 128,
    grid: Sequence[int] | None = None,
    pieces: int = 10,
    stairs: int = 64,
    polish: int = 1,
    baselines: Sequence[Sequence[TuneResult]] | None = None,
    fixed_momentum: float | None = None,
    contained: Sequence[Sequence[Sequence[TuneResult]]] | None = None,
    device: Any = "cpu",
    decay_shape: DecayShape | str = DecayShape.ONE_MINUS_SQRT,
) -> list[list[TuneResult]]:
    """:func:`tune` at every power of ``powers``: a list of result lists.

    ``baselines`` and ``contained`` hold one entry per power (each what
    :func:`tune` takes as ``baseline``/``contained``). The schedule families
    tune every (power, batch size) in one batched L-BFGS
    (:func:`tune_schedules`); the constant-lr families tune one power after the
    other, since different powers are different problems (different ĥ) and share
    no evaluations. Results equal those of :func:`tune` power by power.
    """
    if int(surrogate_bins) < 8:
        raise ValueError("surrogate_bins must be >= 8")
    if int(pieces) < 1 or int(stairs) < 1:
        raise ValueError("pieces and stairs must be positive integers")
    try:
        decay_shape = DecayShape(decay_shape)
    except ValueError:
        raise ValueError(
            f"decay_shape must be one of {[d.value for d in DecayShape]}, "
            f"got {decay_shape!r}"
        ) from None
    powers = [float(p) for p in powers]
    kw = dict(surrogate_bins=int(surrogate_bins))
    dev = torch_device(device) if fam in SCHEDULE_FAMILIES else None
    for name, given in (("baselines", baselines), ("contained", contained)):
        if given is not None and len(given) != len(powers):
            raise ValueError(f"{name} must hold one entry per power")
    # Every family but SGD contains SGD (directly or through the families it
    # contains): SGD's results are its ``baselines``, those of the other contained
    # families its ``contained``.
    inner_families = [g for g in fam.contained if g is not Family.SGD]
    if contained is not None and (not inner_families or fixed_momentum is not None):
        raise ValueError(
            "contained applies to families that contain others than sgd "
            f"(momentum_ema, without fixed_momentum), not {fam.value!r}"
        )
    beta = None if fixed_momentum is None else float(fixed_momentum)
    if beta is not None:
        if fam not in (Family.MOMENTUM, Family.MOMENTUM_EMA):
            raise ValueError(
                f"fixed_momentum applies to the momentum families, not {fam.value!r}"
            )
        if not 0.0 < beta < 1.0:
            raise ValueError(f"fixed_momentum must lie in (0, 1), got {beta!r}")
    if beta is not None or not fam.contained:
        # SGD contains no other family, and a fixed momentum does not contain
        # SGD: nothing to nest.
        return [
            _monotone(
                problem, bs, target,
                _tune_constant(
                    problem, fam, bs, target, p, grid=grid, polish=polish,
                    fixed_momentum=beta, **kw,
                ),
            )
            for p in powers
        ]  # fmt: skip
    if baselines is None:
        baselines = [
            _tune_constant(
                problem, Family.SGD, bs, target, p, grid=None, polish=polish, **kw
            )
            for p in powers
        ]
    for baseline in baselines:
        if len(baseline) != bs.size:
            raise ValueError("baseline must hold one result per batch size")
    if fam in SCHEDULE_FAMILIES:
        owns = tune_schedules(
            problem,
            fam,
            bs,
            target,
            powers,
            baselines,
            pieces=int(pieces),
            stairs=int(stairs),
            device=dev,
            decay_shape=decay_shape,
            **kw,
        )
    else:
        owns = [
            _tune_constant(problem, fam, bs, target, p, grid=grid, polish=polish, **kw)
            for p in powers
        ]
    out = []
    for j, (p, own) in enumerate(zip(powers, owns, strict=True)):
        nested = [baselines[j]]
        if inner_families:
            given = None if contained is None else contained[j]
            nested += _inner_results(
                problem, bs, target, p, inner_families, given, baselines[j],
                polish=polish, **kw,
            )  # fmt: skip
        out.append(_monotone(problem, bs, target, _nest(own, nested)))
    return out


def _inner_results(problem, bs, target, p, families, given, baseline, **kw):
    """The results of the contained ``families`` other than SGD at power ``p``:
    ``given`` (checked: one result per batch size), or tuned here from SGD's
    ``baseline``."""
    if given is None:
        given = [
            tune(problem, sub, bs, target, p, grid=None, baseline=baseline, **kw)
            for sub in families
        ]
    for results in given:
        if len(results) != bs.size:
            raise ValueError("contained results must hold one per batch size")
    return list(given)


def _nest(own, nested):
    """At each batch size, the best of ``own`` and of the contained families'
    results (reported as ``own``'s family)."""
    merged = []
    for i, o in enumerate(own):
        best = min((r[i] for r in nested), key=lambda r: r.steps)
        if best.steps < o.steps:
            o = TuneResult(
                best.steps,
                best.optimizer,
                o.family,
                o.batch_size,
                o.precond_power,
                o.target,
                o.evaluations,
            )
        merged.append(o)
    return merged


def _monotone(problem, bs, target, results):
    """Let each batch size try the optimizer tuned for the next smaller one.

    For a fixed optimizer the loss :math:`D(t) + N(t)/B` falls with ``B`` at every
    step, so that optimizer's steps at a larger batch are never more: the tuned
    curve becomes non-increasing in ``B``, and only improves.

    The try is certified (:func:`~nqm.search.steps_to_target` below the current
    steps) only when the optimizer's exact loss at the current batch size reaches
    the target at one probe step: the smaller of one step below the current
    steps and the steps the optimizer needs at its own batch size (where it
    reaches the target for certain, so a curve that the try would make
    non-increasing is always certified). A loss that exceeds the target there by
    more than the closed form's accuracy skips the try: it could only have
    succeeded through a loss that dips below the target before the probe and
    rises above it again.
    """
    order = np.argsort(bs)
    out = list(results)
    for prev, cur in zip(order[:-1], order[1:], strict=True):
        cand = out[prev].optimizer
        if cand is None or bs[cur] < bs[prev]:
            continue
        if out[cur].steps == 0:
            continue
        limit = _below(out[cur].steps)
        probe = min(limit if limit is not None else math.inf, out[prev].steps)
        if math.isfinite(probe) and probe > 0:
            at = expected_loss(problem, cand, bs[cur], int(probe))
            if at > target * (1.0 + CLOSED_FORM_RTOL):
                continue
        steps = steps_to_target(
            problem, cand, bs[cur], target, max_steps=limit, guess=limit or None
        )
        if steps < out[cur].steps:
            r = out[cur]
            out[cur] = TuneResult(
                steps,
                cand,
                r.family,
                r.batch_size,
                r.precond_power,
                target,
                r.evaluations,
            )
    return out
