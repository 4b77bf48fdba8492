r"""Tuned batch-size ramps: batch-size warm-up on the NQM.

A ramp (:meth:`nqm.BatchSchedule.ramp`) grows the batch from :math:`B_0` to
:math:`B_1` over the first :math:`R` of :math:`T` updates, in :math:`K` pieces,
then keeps :math:`B_1`; SGD runs at a constant lr :math:`\alpha`. Two questions,
each answered for the ramp and for the best constant batch size:

* fewest steps to the target with at most :math:`E` examples
  (:func:`tune_ramp_steps`);
* fewest examples to the target within :math:`T` steps
  (:func:`tune_ramp_examples`).

Method. For a run of :math:`T` updates and :math:`E` examples, a larger batch
anywhere lowers the risk :math:`D + \sum_s N_s/B_s` at every later step, so the
best ramp spends the whole budget: given the shape (ramp fraction
:math:`r = R/T`, ratio :math:`\rho = B_0/B_1`), :math:`B_1` follows from
:math:`\sum_s B_s = E`. The risk after :math:`T` updates is then minimised over
:math:`(\alpha, r, \rho)` with the batch sizes relaxed to real numbers, on a
binned surrogate of the problem (:meth:`NQMProblem.binned`), in closed form per
piece; a bisection on :math:`T` (or on :math:`E`) finds the smallest feasible
run. The result is rounded to integer batch sizes (down, so the budget holds)
and certified by the exact engine (:func:`nqm.examples_to_target`). The ramp
contains the constant batch (:math:`\rho = 1`) and starts from it.

The constant baseline is exact and independent of the relaxation: the tuned SGD
steps :math:`S(B)` (:func:`nqm.best_steps`) over every batch size that fits the
budget.

What a ramp does on the NQM. At a fixed lr the noise floor of SGD is
:math:`\propto \alpha/B`, so growing :math:`B` anneals the noise as decaying
:math:`\alpha` does (Smith et al. 2018): against the best constant batch at a
*constant* lr the ramp saves many steps, against a constant batch with a tuned
lr schedule (``best_constant(..., family="pwc")``) little or nothing.

References:
    Merrill et al. (2025), batch-size warm-up for OLMo (43% fewer steps);
    McCandlish et al. (2018), §5 (adaptive batch sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize

from .batch_schedule import BatchSchedule, RampShape, ramp_pieces_and_shape
from .dynamics import _modes
from .optimizer import Optimizer, PiecewiseConstant
from .problem import NQMProblem
from .search import MAX_STEPS, best_steps, examples_to_target

__all__ = [
    "RampResult",
    "RampSaving",
    "tune_ramp_steps",
    "tune_ramp_examples",
    "best_constant",
    "ramp_savings",
]

#: lr bounds as fractions of the stability limit 2/max h (exclusive of the edge)
_FRAC_MIN, _FRAC_MAX = 1e-9, 1.0 - 1e-9
#: bisection stops at this relative width of the step or example bracket
_REL_TOL = 2e-3


@dataclass(frozen=True)
class RampResult:
    """A tuned SGD run with a batch-size schedule.

    Attributes:
        steps: exact steps to the target (``inf`` if not reached).
        examples: exact examples used up to then.
        optimizer: SGD at its constant lr (``None`` if none found).
        batch: the batch-size schedule (a constant one for the baseline).
        target: the loss.
    """

    steps: int | float
    examples: int | float
    optimizer: Optimizer | None
    batch: BatchSchedule | None
    target: float


# ---------------------------------------------------------------- relaxation
def _relative_sizes(rho, pieces, shape):
    """Batch size of each ramp piece relative to B_1."""
    k = np.arange(pieces) / pieces
    if shape is RampShape.GEOMETRIC:
        rel = rho ** (1.0 - k)
    else:
        rel = rho + (1.0 - rho) * k
    return rel


#: Pieces of the constant-batch stretch after the ramp when the lr decays.
_TAIL_PIECES = 16


def _relaxed_pieces(r, rho, delta, total, examples, pieces, shape, decay):
    r"""Per-piece batch sizes (real), lengths and lr fractions of a relaxed run.

    The ramp's ``pieces`` pieces cover the first ``r * total`` updates, then
    :math:`B_1` holds (one piece, or :data:`_TAIL_PIECES` when the lr decays);
    :math:`B_1` spends exactly ``examples``. The lr of a piece starting at
    fraction :math:`x` of the run is :math:`\alpha(1 - (1-\delta)x)`.
    """
    rel = _relative_sizes(rho, pieces, shape)
    ramp_len = r * total
    tail = _TAIL_PIECES if decay else 1
    b1 = examples / (ramp_len / pieces * rel.sum() + (total - ramp_len))
    bs = np.concatenate([rel * b1, np.full(tail, b1)])
    lengths = np.concatenate(
        [np.full(pieces, ramp_len / pieces), np.full(tail, (total - ramp_len) / tail)]
    )
    starts = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    return bs, lengths, 1.0 - (1.0 - delta) * starts / total


def _ramp_loss(hh, wd, wn, alpha, bs, lengths, lr_frac):
    r"""Risk of SGD after pieces of real length, batch size and lr
    :math:`\alpha` times ``lr_frac`` (closed form per piece); ``inf`` when a
    batch size falls below one."""
    if bs.min() < 1.0:
        return math.inf
    a = alpha * lr_frac[:, None]
    s = a * hh[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):  # s = 1: solved at once
        log_f = 2.0 * lengths[:, None] * np.log(np.abs(1.0 - s))
    log_f[lengths == 0.0] = 0.0  # an empty piece changes nothing
    g = a * a * -np.expm1(log_f) / (s * (2.0 - s))
    after = np.cumsum(log_f[::-1], axis=0)[::-1]
    after = np.vstack([after[1:], np.zeros((1, hh.size))])
    v = (g / bs[:, None] * np.exp(after)).sum(axis=0)
    return float(np.exp(after[0] + log_f[0]) @ wd + v @ wn)


class _Relaxed:
    """The relaxed ramp problem on a surrogate; coordinates ``x = (u, a, c, d)``:
    lr fraction ``sigmoid(u)`` of 2/max h, ramp fraction ``sigmoid(a)``,
    ``rho = sigmoid(c)``, final lr fraction ``delta = sigmoid(d)`` (1 without
    decay)."""

    def __init__(self, problem, pieces, shape, bins, decay=False):
        surr = problem.binned(bins) if problem.n_modes > 2 * bins else problem
        self.hh, self.wd, self.wn = _modes(surr, 0.0)
        # the stability limit of the problem itself (a bin's representative
        # curvature lies below its largest)
        self.a_max = 2.0 / float(_modes(problem, 0.0)[0].max())
        self.pieces, self.shape, self.decay = pieces, shape, decay

    def params(self, x, ramp=True):
        sig = 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, dtype=np.float64), -40, 40)))
        frac = np.clip(sig[0], _FRAC_MIN, _FRAC_MAX)
        r, rho = (sig[1], sig[2]) if ramp else (0.0, 1.0)
        delta = sig[3] if self.decay else 1.0
        return self.a_max * frac, r, rho, delta

    def loss(self, x, total, examples, ramp=True):
        alpha, r, rho, delta = self.params(x, ramp)
        pieces = _relaxed_pieces(r, rho, delta, total, examples, self.pieces,
                                 self.shape, self.decay)  # fmt: skip
        return _ramp_loss(self.hh, self.wd, self.wn, alpha, *pieces)

    def solve(self, total, examples, prev, ramp=True):
        """:meth:`minimise` from ``prev`` and the best points of a coarse grid."""
        starts = _starts(self, prev, total, examples, ramp)
        return self.minimise(total, examples, starts, ramp)

    def minimise(self, total, examples, starts, ramp=True):
        """Best ``(log loss, x)`` over local searches from ``starts`` in the free
        coordinates (``u``; ``a, c`` for a ramp; ``d`` when the lr decays)."""
        free = np.array([True, ramp, ramp, self.decay])

        def f(x):
            v = self.loss(x, total, examples, ramp)
            return math.log(v) if 0 < v < math.inf else 1e300

        best = None
        for x0 in starts:
            x0 = np.asarray(x0, dtype=np.float64)

            def g(y, x0=x0):
                x = x0.copy()
                x[free] = y
                return f(x)

            if free.sum() > 1:
                res = optimize.minimize(g, x0[free], method="Nelder-Mead", options={
                    "xatol": 1e-4, "fatol": 1e-9, "maxfev": 300})  # fmt: skip
            else:
                res = optimize.minimize_scalar(
                    lambda u, g=g: g(np.array([u])), bounds=(-25.0, 25.0),
                    method="bounded", options={"xatol": 1e-6},
                )  # fmt: skip
            x = x0.copy()
            x[free] = res.x
            if best is None or float(res.fun) < best[0]:
                best = (float(res.fun), x)
        return best


#: Coarse grid of (u, a, c, d) scanned at every probe to seed the local
#: searches: the loss surface in (r, rho) has several basins, and the best ramp
#: often sits in a corner (a long ramp from a small batch) no local search from
#: the constant batch reaches.
_GRID_U = np.linspace(-4.0, 5.0, 8)
_GRID_A = np.array([-2.0, 1.0, 2.5, 4.0])
_GRID_C = np.array([-7.0, -4.5, -2.0, 0.0])
_GRID_D = np.array([-3.0, 0.0, 2.5, 8.0])
_GRID_KEEP = 3


def _starts(relaxed, prev, total, examples, ramp):
    """Local-search starts: the previous probe's optimum and the best points of
    a coarse grid over the free coordinates."""
    a_grid = _GRID_A if ramp else np.array([prev[1]])
    c_grid = _GRID_C if ramp else np.array([prev[2]])
    d_grid = _GRID_D if relaxed.decay else np.array([prev[3]])
    grid = np.stack(np.meshgrid(_GRID_U, a_grid, c_grid, d_grid, indexing="ij"), -1)
    grid = grid.reshape(-1, 4)
    vals = np.array([relaxed.loss(x, total, examples, ramp) for x in grid])
    order = np.argsort(vals)[:_GRID_KEEP]
    return [np.asarray(prev, dtype=np.float64)] + [grid[i] for i in order]


def _discretise(relaxed, x, total, examples, ramp):
    """Integer batch sizes (rounded down from the relaxed ones) and the lr (a
    staircase on the relaxed pieces' starts when it decays)."""
    alpha, r, rho, delta = relaxed.params(x, ramp)
    rel = _relative_sizes(rho, relaxed.pieces, relaxed.shape)
    ramp_len = int(round(r * total))
    b1 = examples / (ramp_len / relaxed.pieces * rel.sum() + (total - ramp_len))
    b1_int = max(1, int(math.floor(b1)))
    b0_int = max(1, int(math.floor(rho * b1)))
    if ramp_len == 0 or b0_int == b1_int:
        sched = BatchSchedule.constant(b1_int)
    else:
        sched = BatchSchedule.ramp(b0_int, b1_int, ramp_len, relaxed.pieces,
                                   relaxed.shape)  # fmt: skip
    if not relaxed.decay or delta >= 1.0:
        return Optimizer(float(alpha)), sched
    k, tail = relaxed.pieces, _TAIL_PIECES
    starts = np.concatenate([
        np.round(np.arange(k) * ramp_len / k),
        ramp_len + np.round(np.arange(tail) * (total - ramp_len) / tail),
    ]).astype(np.int64)  # fmt: skip
    lrs = alpha * (1.0 - (1.0 - delta) * starts / total)
    last = np.append(starts[1:] != starts[:-1], True)  # of equal starts, the last
    starts, lrs = starts[last], lrs[last]
    lr = PiecewiseConstant(tuple(int(t) for t in starts[1:]),
                           tuple(float(v) for v in lrs))  # fmt: skip
    return Optimizer(lr), sched


# ------------------------------------------------------------------ baseline
def best_constant(
    problem: NQMProblem,
    target: float,
    batch_sizes,
    *,
    examples: float | None = None,
    steps: int | None = None,
    family: str = "sgd",
    tuned=None,
    **options,
) -> RampResult:
    """The best constant batch size: fewest steps with at most ``examples``, or
    fewest examples within ``steps`` (exactly one of them).

    Args:
        problem, target: the question.
        batch_sizes: the constant batch sizes to consider (integers).
        examples, steps: the budget.
        family: the optimizer family tuned at each batch size (``sgd``: constant
            lr, as the ramp; a schedule family such as ``pwc`` asks whether an
            lr schedule at a constant batch does what the ramp does).
        tuned: the family's tuned results at ``batch_sizes`` if already
            computed (:func:`nqm.best_steps`); tuned here otherwise.
        **options: passed to :func:`nqm.best_steps`.
    """
    if (examples is None) == (steps is None):
        raise ValueError("give exactly one of examples and steps")
    bs = np.asarray(batch_sizes, dtype=np.int64).ravel()
    if bs.size == 0 or bs.min() < 1:
        raise ValueError("batch_sizes must be integers >= 1")
    if tuned is None:
        tuned = best_steps(problem, family, bs.astype(np.float64), target, **options)
    elif len(tuned) != bs.size:
        raise ValueError("tuned must hold one result per batch size")
    results = tuned
    best = RampResult(math.inf, math.inf, None, None, float(target))
    for b, res in zip(bs, results, strict=True):
        s = res.steps
        if not math.isfinite(s):
            continue
        e = int(b) * int(s)
        ok = e <= examples if examples is not None else s <= steps
        better = (s, e) < (best.steps, best.examples) if examples is not None else (
            (e, s) < (best.examples, best.steps))  # fmt: skip
        if ok and better:
            best = RampResult(int(s), e, res.optimizer,
                              BatchSchedule.constant(int(b)), float(target))  # fmt: skip
    return best


# ------------------------------------------------------------------- tuning
def tune_ramp_steps(
    problem: NQMProblem,
    target: float,
    examples: float,
    *,
    ramp: bool = True,
    pieces: int = 16,
    shape: RampShape | str = RampShape.GEOMETRIC,
    surrogate_bins: int = 128,
    start: RampResult | None = None,
    lr_decay: bool = False,
) -> RampResult:
    """Fewest steps to ``target`` with at most ``examples`` examples, over SGD's
    lr and the ramp (start batch, end batch, ramp length).

    Args:
        problem: the NQM.
        target: the loss (``> 0``).
        examples: the budget :math:`E`.
        ramp: ``False`` tunes a constant batch size by the same relaxation (the
            exact baseline is :func:`best_constant`).
        pieces: :math:`K`, pieces of the ramp.
        shape: :class:`~nqm.RampShape`.
        surrogate_bins: bins of the surrogate the relaxed search runs on.
        start: a feasible run to start from (e.g. :func:`best_constant`'s):
            its steps bound the search and its lr seeds it.
        lr_decay: the lr also decays linearly over the run to a tuned final
            fraction (a staircase on the ramp's pieces and 16 more after it),
            so that the ramp is compared with what an lr schedule does alone.

    Returns:
        A :class:`RampResult` whose steps and examples are exact (examples
        ``<= examples``); never worse than ``start``.
    """
    tg, budget, relaxed, shape = _check(problem, target, examples, pieces, shape,
                                        surrogate_bins, lr_decay)  # fmt: skip
    goal = math.log(tg)
    x = _seed_x(relaxed, start)
    hi = int(start.steps) if start is not None and math.isfinite(start.steps) else None
    if hi is None:  # grow until feasible
        hi = 1
        while relaxed.solve(hi, budget, x, ramp)[0] > goal:
            hi *= 2
            if hi > min(budget, MAX_STEPS):
                return start or RampResult(math.inf, math.inf, None, None, tg)
    best_x = relaxed.solve(hi, budget, x, ramp)[1]
    hi, best_x = _bisect(0, hi, best_x, goal, integer=True,
                         solve=lambda n, y: relaxed.solve(n, budget, y, ramp))  # fmt: skip
    return _certify(problem, relaxed, best_x, hi, budget, tg, ramp, start,
                    by_steps=True)  # fmt: skip


def tune_ramp_examples(
    problem: NQMProblem, target: float, steps: int, **options: Any
) -> RampResult:
    """Fewest examples to ``target`` within ``steps`` updates, over SGD's lr and
    the ramp; as :func:`tune_ramp_steps` (same keyword ``options``) with the
    roles of the budgets swapped (a bisection on the examples of a run of
    ``steps`` updates)."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    total = int(steps)
    unknown = set(options) - _RAMP_OPTIONS
    if unknown:
        raise TypeError(f"tune_ramp_examples got unknown options {sorted(unknown)}")
    ramp = bool(options.get("ramp", True))
    start = options.get("start")
    tg, _, relaxed, shape = _check(
        problem, target, 1.0, options.get("pieces", 16),
        options.get("shape", RampShape.GEOMETRIC),
        options.get("surrogate_bins", 128), options.get("lr_decay", False),
    )  # fmt: skip
    goal = math.log(tg)
    x = _seed_x(relaxed, start)
    given = start is not None and math.isfinite(start.examples)
    hi = float(start.examples) if given else float(total)
    while relaxed.solve(total, hi, x, ramp)[0] > goal:
        hi *= 2.0
        if hi > 1e18:
            return start or RampResult(math.inf, math.inf, None, None, tg)
    lo = float(total)  # every update draws at least one example
    best_x = relaxed.solve(total, hi, x, ramp)[1]
    if relaxed.solve(total, lo, x, ramp)[0] <= goal:
        hi = lo
    hi, best_x = _bisect(lo, hi, best_x, goal, integer=False,
                         solve=lambda e, y: relaxed.solve(total, e, y, ramp))  # fmt: skip
    return _certify(problem, relaxed, best_x, total, hi, tg, ramp, start,
                    by_steps=False, max_steps=total)  # fmt: skip


_RAMP_OPTIONS = frozenset(
    {"ramp", "pieces", "shape", "surrogate_bins", "start", "lr_decay"}
)


def _bisect(lo, hi, x, goal, *, integer, solve):
    """The smallest budget in ``(lo, hi]`` (to ``_REL_TOL``) whose relaxed
    optimum ``solve(budget, x)`` reaches ``goal``; ``hi`` is known to."""
    while hi - lo > (max(1, int(_REL_TOL * hi)) if integer else _REL_TOL * hi):
        mid = (lo + hi) // 2 if integer else 0.5 * (lo + hi)
        val, xm = solve(mid, x)
        if val <= goal:
            hi, x = mid, xm
        else:
            lo = mid
    return hi, x


def _check(problem, target, examples, pieces, shape, bins, decay=False):
    tg = float(target)
    if not (math.isfinite(tg) and tg > 0):
        raise ValueError(f"target must be a finite positive loss, got {target!r}")
    budget = float(examples)
    if not (math.isfinite(budget) and budget >= 1):
        raise ValueError(f"examples must be a finite number >= 1, got {examples!r}")
    pieces, shape = ramp_pieces_and_shape(pieces, shape)
    if int(bins) < 8:
        raise ValueError(f"surrogate_bins must be >= 8, got {bins!r}")
    relaxed = _Relaxed(problem, int(pieces), shape, int(bins), bool(decay))
    return tg, budget, relaxed, shape


def _seed_x(relaxed, start):
    frac = 0.5
    if start is not None and start.optimizer is not None:
        lr0 = float(start.optimizer.schedule(0))
        frac = min(max(lr0 / relaxed.a_max, 1e-6), 1 - 1e-6)
    # a constant batch (rho = 1) at a constant lr (delta = 1): the start
    return np.array([math.log(frac) - math.log1p(-frac), 0.0, 40.0, 40.0])


#: Certification retries: the surrogate and the rounding can leave the exact
#: run just short of the relaxed one; each retry relaxes the binding budget
#: (steps, or examples) by this fraction more.
_RETRY_STEP = 0.01
_RETRIES = 8


def _certify(problem, relaxed, x, total, budget, tg, ramp, start, *, by_steps,
             max_steps=None):  # fmt: skip
    """Exact steps and examples of the discretised run, kept only if it meets
    the budget and beats ``start``. When the exact run misses the budget, the
    relaxed problem is solved again with a little more room on the free side
    (more steps for an example budget, more examples for a step budget)."""
    key = (lambda r: (r.steps, r.examples)) if by_steps else (
        lambda r: (r.examples, r.steps))  # fmt: skip
    best = start or RampResult(math.inf, math.inf, None, None, tg)
    goal = math.log(tg)
    for k in range(_RETRIES):
        t_k = int(math.ceil(total * (1.0 + _RETRY_STEP * k))) if by_steps else total
        e_k = budget if by_steps else budget * (1.0 + _RETRY_STEP * k)
        if k:
            val, x_k = relaxed.solve(t_k, e_k, x, ramp)
            if val > goal:
                continue
            x = x_k
        opt, sched = _discretise(relaxed, x, t_k, e_k, ramp)
        limit = max_steps if max_steps is not None else max(4 * t_k, 64)
        steps, ex = examples_to_target(problem, opt, sched, tg, max_steps=limit)
        if by_steps and not ex <= budget:
            continue
        if not by_steps and not math.isfinite(steps):
            continue
        cand = RampResult(steps, ex, opt, sched, tg)
        return cand if key(cand) < key(best) else best
    return best


@dataclass(frozen=True)
class RampSaving:
    """Ramp against the best constant batch size at one example budget.

    Attributes:
        examples: the budget.
        constant: the best constant batch size (SGD at a constant lr).
        ramp: the tuned ramp (SGD at a constant lr).
        saving: :math:`1 - S_{\text{ramp}} / S_{\text{constant}}`, the fraction
            of steps the ramp saves.
    """

    examples: float
    constant: RampResult
    ramp: RampResult
    saving: float


def ramp_savings(
    problem: NQMProblem,
    target: float,
    examples,
    batch_sizes,
    **options,
) -> list[RampSaving]:
    """Steps a tuned ramp saves over the best constant batch size at equal
    examples, for each budget in ``examples``.

    The constant baseline is the better of :func:`best_constant` over
    ``batch_sizes`` (exact tuned SGD) and the relaxation with :math:`\rho = 1`
    (any integer batch size); the ramp starts from it, so the saving is never
    negative.

    Args:
        problem, target: the question.
        examples: budgets, shape ``(n,)``.
        batch_sizes: constant batch sizes for the exact baseline.
        **options: ``pieces``, ``shape``, ``surrogate_bins``, ``lr_decay``
            (see :func:`tune_ramp_steps`); with ``lr_decay`` both the constant
            batch and the ramp get a tuned linear lr decay.
    """
    out = []
    bs = np.asarray(batch_sizes, dtype=np.int64).ravel()
    tuned = best_steps(problem, "sgd", bs.astype(np.float64), target)
    for budget in np.atleast_1d(np.asarray(examples, dtype=np.float64)):
        const = best_constant(problem, target, bs, examples=float(budget),
                              tuned=tuned)  # fmt: skip
        const = tune_ramp_steps(problem, target, float(budget), ramp=False,
                                start=const, **options)  # fmt: skip
        ramp = tune_ramp_steps(problem, target, float(budget), start=const, **options)
        saving = (
            1.0 - ramp.steps / const.steps if math.isfinite(const.steps) else math.nan
        )
        out.append(RampSaving(float(budget), const, ramp, float(saving)))
    return out
