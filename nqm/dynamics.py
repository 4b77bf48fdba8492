"""Exact expected risk of the noisy quadratic model.

Every mode is the linear stochastic system of :mod:`nqm._system`. Because the
initial second moment has rank one and the noise is independent of the state,

.. math::
    E[L(\\theta_t)] = D(t) + \\frac{N(t)}{B}, \\qquad
    D(t) = \\tfrac12 \\sum_i w_i h_i\\, E[\\theta_i(0)^2]\\, F_t(\\hat h_i),\\quad
    N(t) = \\tfrac12 \\sum_i w_i h_i\\, \\hat c_i\\, G_t(\\hat h_i),

where :math:`F_t` is the squared mean response to a unit initial state and
:math:`G_t` the variance response to unit noise. Neither depends on the batch
size, so a sweep over batch sizes costs two dot products per setting.

Paths:

* constant lr: closed form (:mod:`nqm._closed`), :math:`O(d)` per evaluation
  independent of :math:`t`; modes whose Lagrange form would lose digits to
  near-coinciding eigenvalues are recomputed in extended precision
  (:func:`nqm._closed.extended_terms`), and those that this cannot certify
  from divided differences (:mod:`nqm._confluent`), also :math:`O(1)` each
  and exact at coincidence;
  only modes that even these cannot certify (overflowing, diverging modes),
  and flagged modes below :data:`CONFLUENT_MIN_STEPS` steps, are recomputed
  by exact doubling (:mod:`nqm._doubling`), :math:`O(\\log t)` each
  (counted by :func:`doubled_modes`);
* piecewise-constant lr (any :class:`~nqm.optimizer.Schedule` whose pieces are
  long): doubling per piece, :math:`O(d \\sum_k \\log L_k)`;
* lr changing at every step (linear decay before its horizon, arbitrary
  callables): one exact update per step, :math:`O(d)` per step.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ._closed import (
    EXTENDED_EPS,
    _sgd_terms,
    closed_form_terms,
    extended_terms,
    squared_terms,
    weighted_totals,
)
from ._confluent import confluent_terms
from ._doubling import MomentMap
from ._system import Features, system_matrices
from .arguments import validate_batch_size, validate_steps
from .batch_schedule import BatchSchedule, joint_pieces
from .optimizer import Constant, Optimizer, PiecewiseConstant
from .problem import NQMProblem

__all__ = [
    "expected_loss",
    "risk_terms",
    "doubled_modes",
    "is_stable",
    "max_stable_lr",
    "steady_state_loss",
    "validate_batch_size",
    "second_moments",
    "validate_steps",
    "split_batch",
]

EPS = np.finfo(np.float64).eps

#: Relative accuracy the closed form must certify for D(t) and N(t); modes that
#: cannot are recomputed by divided differences, and those that even these
#: cannot certify by doubling.
CLOSED_FORM_RTOL = 1e-11
#: Below this many steps a flagged mode that extended precision cannot certify
#: goes to doubling: its at most log2(64) = 6 levels cost less than the
#: divided-difference tables.
CONFLUENT_MIN_STEPS = 64


# --------------------------------------------------------------------- inputs
def split_batch(batch_size) -> tuple[object, BatchSchedule | None]:
    """``(batch_size, None)`` for a number (or a one-piece schedule, as its
    value), ``(1.0, schedule)`` for a batch schedule with several pieces: its
    :math:`1/B_s` then enters the noise term per update."""
    if isinstance(batch_size, BatchSchedule):
        if not batch_size.boundaries:
            return float(batch_size.values[0]), None
        return 1.0, batch_size
    return batch_size, None


@functools.lru_cache(maxsize=64)
def _modes(problem: NQMProblem, precond_power: float):
    """Unique preconditioned curvatures and the loss weights of each.

    Returns ``(hh, omega_d, omega_n)`` with :math:`\\omega_D = \\tfrac12 \\sum w h
    \\,\\text{init}` and :math:`\\omega_N = \\tfrac12 \\sum w h \\hat c` over the modes
    sharing :math:`\\hat h` (merging is exact, see :meth:`NQMProblem.compressed`).
    """
    hh, _ = problem.preconditioned(precond_power)
    wd = 0.5 * problem.weight * problem.h * problem.init_sq
    wn = 0.5 * problem.weight * problem.noise_weight(precond_power)
    uniq, inv = np.unique(hh, return_inverse=True)
    if uniq.size < hh.size:
        wd = np.bincount(inv, weights=wd)
        wn = np.bincount(inv, weights=wn)
        hh = uniq
    for a in (hh, wd, wn):
        a.setflags(write=False)
    return hh, wd, wn


def _feature_groups(beta, gamma):
    """Split hyperparameter settings by which state components they need.

    Returns ``{Features: mask}``; the mask is ``None`` when every setting needs
    the same components (nothing to select: one setting, as in local searches,
    or a uniform grid).
    """
    if beta.size == 1:
        return {Features(bool(beta.flat[0] > 0), bool(gamma.flat[0] > 0)): None}
    groups = {}
    for mom in (False, True):
        for ema in (False, True):
            mask = ((beta > 0) == mom) & ((gamma > 0) == ema)
            if np.any(mask):
                groups[Features(mom, ema)] = mask
    return dict.fromkeys(groups) if len(groups) == 1 else groups


# ---------------------------------------------------------- constant-lr path
#: Elements (steps x modes) per batch of the vectorised doubling fallback.
_DOUBLING_CHUNK = 1 << 15


def _doubling_terms(hh, alpha, beta, gamma, feats: Features, steps):
    """F_t and G_t by exact doubling for flat arrays of settings, every step.

    Returns arrays of shape ``(T,) + hh.shape``; the steps are evaluated in
    chunks, vectorised over steps and settings.
    """
    im, ip, n, u = system_matrices(hh, alpha, beta, gamma, feats)
    q = n[..., :, None] * n[..., None, :]
    mm = MomentMap(im, ip, q)
    o = feats.out
    steps = np.asarray(steps, dtype=np.int64).reshape(-1)
    F = np.empty((steps.size,) + hh.shape)
    G = np.empty_like(F)
    chunk = max(1, _DOUBLING_CHUNK // max(1, hh.size))
    with np.errstate(all="ignore"):
        for lo in range(0, steps.size, chunk):
            e, nt = mm.powers(steps[lo : lo + chunk])
            mean = u - np.einsum("...ij,...j->...i", e, u)
            F[lo : lo + chunk] = mean[..., o] ** 2
            G[lo : lo + chunk] = nt[..., o, o]
    bad = ~np.isfinite(F) | ~np.isfinite(G)
    F[bad] = np.inf
    G[bad] = np.inf
    return F, G


def _needs_doubling(err, total, rtol=CLOSED_FORM_RTOL, fill=1.0):
    """Modes whose closed-form error must be removed to certify ``total``.

    ``err`` (shape ``S + (M,)``) bounds each mode's absolute error in its weighted
    contribution to ``total`` (shape ``S``). Nothing is flagged while the summed
    bound is within ``CLOSED_FORM_RTOL`` of the total (the common case, one
    reduction). Otherwise the largest errors are flagged until the rest fits
    within ``fill`` times that budget (``fill <= 1``: a margin that the
    re-evaluated modes' own, smaller, errors can use, so that one flagging
    pass suffices), plus every mode whose closed form is undefined or
    overflowed (``err = inf``): doubling returns its value, finite or not (an
    eigenvalue exactly -1 has a finite, polynomially growing loss that the
    closed form cannot express).
    """
    if err.ndim == 1:
        return _needs_doubling_row(err, float(total), rtol, fill)
    budget = rtol * np.abs(np.where(np.isfinite(total), total, 0.0))
    finite = np.where(np.isfinite(err), err, 0.0)
    flagged = ~np.isfinite(err)
    over = finite.sum(axis=-1) > budget
    goal = fill * budget
    if np.any(over):
        # A mode whose error alone exceeds the goal is flagged in any solution;
        # usually flagging those leaves a remainder that fits (no sort needed).
        alone = finite > goal[..., None]
        flagged |= alone & over[..., None]
        over &= np.where(alone, 0.0, finite).sum(axis=-1) > goal
    if np.any(over):
        rows = finite[over]
        order = _largest_first(rows, goal[over])
        sorted_err = np.take_along_axis(rows, order, axis=-1)
        # the whole row's sum (order may hold only its largest entries)
        whole = sorted_err if order.shape == rows.shape else rows
        remaining = whole.sum(axis=-1, keepdims=True) - np.cumsum(sorted_err, axis=-1)
        # flag position k if the rest after removing positions <= k-1 is too big
        prev_remaining = remaining + sorted_err
        take_sorted = prev_remaining > goal[over][..., None]
        take = np.zeros(rows.shape, dtype=bool)
        np.put_along_axis(take, order, take_sorted, axis=-1)
        flagged[over] |= take
    return flagged


def _needs_doubling_row(err, total, rtol, fill):
    """:func:`_needs_doubling` for one setting (``err`` of shape ``(M,)``): the
    same flags from a few passes over the row. Only errors above
    ``goal / M`` can be needed (those at or below it sum to at most the goal),
    so only those are ordered."""
    budget = rtol * abs(total) if math.isfinite(total) else 0.0
    whole = err.sum()
    if math.isfinite(whole):  # every entry finite (they are >= 0 or NaN)
        finite, flagged = err, np.zeros(err.shape, dtype=bool)
    else:
        fin = np.isfinite(err)
        finite, flagged = np.where(fin, err, 0.0), ~fin
        whole = finite.sum()
    if not whole > budget:
        return flagged
    goal = fill * budget
    idx = np.flatnonzero(finite > goal / err.size)
    order = idx[np.argsort(finite[idx])[::-1]]
    sorted_err = finite[order]
    if whole - sorted_err.sum() > goal:  # rounding: order every entry
        order = np.argsort(finite)[::-1]
        sorted_err = finite[order]
    # flag position k if the rest after removing positions <= k-1 is too big
    prev_remaining = whole - np.cumsum(sorted_err) + sorted_err
    flagged[order[prev_remaining > goal]] = True
    return flagged


#: Largest errors ordered first by :func:`_largest_first` before it falls
#: back to a full sort.
_TOP_ERRORS = 64


def _largest_first(rows, budget):
    """Per row, the indices of the largest entries in decreasing order, as
    many as flagging needs: the ``_TOP_ERRORS`` largest (a partition and a
    short sort) when removing them brings the row's sum within ``budget``,
    otherwise all (a full sort). (One setting's single row goes through
    :func:`_needs_doubling_row`.)"""
    m = rows.shape[-1]
    if m > 2 * _TOP_ERRORS:
        top = np.argpartition(rows, m - _TOP_ERRORS, axis=-1)[..., m - _TOP_ERRORS :]
        vals = np.take_along_axis(rows, top, axis=-1)
        top = np.take_along_axis(top, np.argsort(vals, axis=-1)[..., ::-1], axis=-1)
        rest = rows.sum(axis=-1) - np.take_along_axis(rows, top, axis=-1).sum(axis=-1)
        if np.all(rest <= budget):
            return top
    return np.argsort(rows, axis=-1)[..., ::-1]


def _constant_terms(
    hh, wd, wn, alpha, beta, gamma, feats, steps, rtol=CLOSED_FORM_RTOL
):
    """D and N for constant-lr settings (shape S) at each step: (S + (T,)) each,
    and the number of (setting, mode, step) entries computed by doubling."""
    if alpha.size == 1 and len(steps) > 1:
        D, N, doubled = _single_setting_terms(
            hh,
            wd,
            wn,
            alpha.reshape(()),
            beta.reshape(()),
            gamma.reshape(()),
            feats,
            steps,
            rtol,
        )
        return D.reshape(alpha.shape + (-1,)), N.reshape(alpha.shape + (-1,)), doubled
    shape = alpha.shape
    T = len(steps)
    D = np.empty(shape + (T,))
    N = np.empty(shape + (T,))
    a = alpha[..., None]
    b = beta[..., None]
    g = gamma[..., None]
    doubled = 0
    for i, t in enumerate(steps):
        if t == 0:
            D[..., i] = wd.sum()
            N[..., i] = 0.0
            continue

        def entries(pos, shape=a.shape[:-1] + hh.shape, t=int(t)):
            # the flagged (setting, mode) entries pos at this step
            ab, bb, gb = (np.broadcast_to(x, shape)[pos] for x in (a, b, g))
            hb = np.broadcast_to(hh, shape)[pos]
            return hb, ab, bb, gb, np.full(hb.shape, t)

        def redo(bad, t=int(t)):
            hb, ab, bb, gb, _ = entries(np.nonzero(bad))
            Fd, Gd = _doubling_terms(hb, ab, bb, gb, feats, [t])
            return Fd[0], Gd[0]

        terms = closed_form_terms(hh, a, b, g, feats, int(t))
        D[..., i], N[..., i], nd = _certified(
            *terms, wd, wn, rtol, feats, entries, redo
        )
        doubled += nd
    return D, N, doubled


def _certified(F, G, eF, eG, wd, wn, rtol, feats, entries, redo, totals=None):
    """D and N from closed-form terms (shape ``P + (M,)``), certified to ``rtol``.

    Entries whose Lagrange form cannot be certified are recomputed from the
    same formulas in extended precision (:func:`nqm._closed.extended_terms`,
    which certifies moderate near-coincidences at a fraction of the cost),
    then by divided differences (:func:`nqm._confluent.confluent_terms`, exact
    where eigenvalues nearly coincide) when ``t >= CONFLUENT_MIN_STEPS``;
    those that still cannot be certified (and the shorter ones) are replaced by
    ``redo(bad)``, which returns their exact values by doubling
    (``F[bad]``, ``G[bad]`` order, ``bad`` a mask). ``entries(pos)`` returns
    the ``(hh, alpha, beta, gamma, t)`` of the entries ``pos`` (an index tuple,
    as from ``np.nonzero``, in its order). Only flagged entries are replaced:
    where the closed form is certified it is the more accurate (doubling
    accumulates rounding over its log t levels). ``totals``: the sums
    ``F @ wd, G @ wn, eF @ wd, eG @ wn`` where the caller has them.

    Returns:
        ``(D, N, n_doubled)``.
    """
    totals = list(_totals(F, G, eF, eG, wd, wn) if totals is None else totals)
    # The first pass flags enough for the rest to fit in half the budget, which
    # leaves the other half to the re-evaluated entries (whose bounds are far
    # smaller): then :func:`_fits_after_update` usually holds after one round
    # and the second full pass is skipped. Later passes flag only what the budget
    # itself requires (they decide what goes to doubling).
    bad = _flag(F, G, eF, eG, wd, wn, rtol, fill=_FIRST_FILL, totals=totals)
    pos = np.nonzero(bad)
    if not pos[0].size:
        return totals[0], totals[1], 0
    F, G, eF, eG = _writable(F, G, eF, eG)
    if feats.momentum or feats.ema:
        # Replacing a flagged value changes the total the budget is relative to,
        # so flag again until only re-evaluated entries remain. Each entry is
        # tried in extended precision first, then by divided differences. The
        # flagged entries are few: they are handled as index tuples (a pass
        # over the whole mask costs more than the entries themselves).
        stage = np.zeros(bad.shape, dtype=np.int8)  # 1: extended, 2: confluent
        arrays, weights = (F, G, eF, eG), (wd, wn, wd, wn)
        while True:
            st = stage[pos]
            ext = _select(pos, st == 0)
            conf = _select(pos, st == 1)
            if ext[0].size:
                # entries whose bound, shrunk by the extended format's unit
                # roundoff, would still exceed the whole budget alone go to
                # divided differences in the same round
                hopeless = _beyond_extended(eF, eG, wd, wn, totals, rtol, ext)
                if np.any(hopeless):
                    conf = _union(conf, _select(ext, hopeless), bad.shape)
                    ext = _select(ext, ~hopeless)
            if not (ext[0].size or conf[0].size):
                break
            idx = _union(ext, conf, bad.shape)
            before = [x[idx] for x in arrays]
            if ext[0].size:
                hb, ab, bb, gb, tb = entries(ext)
                F[ext], G[ext], eF[ext], eG[ext] = extended_terms(
                    ab * hb, ab, bb, gb, feats, tb
                )
                stage[ext] = 1
            if conf[0].size:
                hb, ab, bb, gb, tb = entries(conf)
                keep = tb >= CONFLUENT_MIN_STEPS  # shorter: doubling is cheaper
                if np.any(keep):
                    sub = _select(conf, keep)
                    F[sub], G[sub], eF[sub], eG[sub] = confluent_terms(
                        ab[keep] * hb[keep],
                        ab[keep],
                        bb[keep],
                        gb[keep],
                        feats,
                        tb[keep],
                    )
                stage[conf] = 2
            if _fits_after_update(arrays, weights, totals, idx, before, rtol):
                pos = (np.zeros(0, dtype=np.intp),) * bad.ndim
                break
            pos = np.nonzero(_flag(F, G, eF, eG, wd, wn, rtol))
    n_doubled = int(pos[0].size)
    if n_doubled:
        bad = np.zeros(bad.shape, dtype=bool)
        bad[pos] = True
        F[bad], G[bad] = redo(bad)
    with np.errstate(all="ignore"):
        return F @ wd, G @ wn, n_doubled


def _select(pos, keep):
    """The entries of the index tuple ``pos`` where ``keep`` (a mask over them)."""
    return tuple(x[keep] for x in pos)


def _union(a, b, shape):
    """The entries of two disjoint index tuples, in ``np.nonzero`` (C) order."""
    if not b[0].size:
        return a
    if not a[0].size:
        return b
    flat = np.sort(
        np.concatenate([np.ravel_multi_index(a, shape), np.ravel_multi_index(b, shape)])
    )
    return np.unravel_index(flat, shape)


def _totals(F, G, eF, eG, wd, wn):
    """The four weighted sums ``D, N`` and their bounds ``err_D, err_N``."""
    with np.errstate(all="ignore"):
        return F @ wd, G @ wn, eF @ wd, eG @ wn


#: Fraction of the budget the first flagging pass of :func:`_certified` leaves
#: to the entries it does not flag.
_FIRST_FILL = 0.5

#: Factor by which :func:`nqm._closed.extended_terms` is assumed to shrink a
#: double-precision bound when deciding to skip it (twice the ratio of the
#: unit roundoffs: a decision only, the value is certified either way).
_EXTENDED_GAIN = 2.0 * EXTENDED_EPS / np.finfo(np.float64).eps


def _beyond_extended(eF, eG, wd, wn, totals, rtol, pos):
    """Which of the entries ``pos`` (an index tuple) have weighted bounds that
    would exceed the budgets of D or N alone even after the extended
    re-evaluation: a mask over them."""
    cols, rows = pos[-1], pos[:-1]
    d, nn = (np.asarray(x)[rows] for x in totals[:2])
    with np.errstate(all="ignore"):
        return (eF[pos] * wd[cols] * _EXTENDED_GAIN > rtol * d) | (
            eG[pos] * wn[cols] * _EXTENDED_GAIN > rtol * nn
        )


def _writable(*arrays):
    """The arrays themselves where each owns its writable data (fresh results),
    else copies, so that entries can be replaced in place."""
    out, seen = [], set()
    for x in arrays:
        x = np.asarray(x)
        if not (x.flags.owndata and x.flags.writeable) or id(x) in seen:
            x = np.array(x)
        seen.add(id(x))
        out.append(x)
    return out


def _fits_after_update(arrays, weights, totals, idx, before, rtol):
    """Whether, after the entries ``idx`` of ``(F, G, eF, eG)`` changed from
    ``before``, both summed bounds are within :data:`_UPDATE_FILL` of their
    budgets.

    One setting at one step (1-D arrays) only: the totals ``totals`` are updated
    by the few changed entries instead of recomputed (and updated in place).
    The rounding of that update (the old entries may have been large, so
    their removal may cancel) is bounded and charged against the bounds and
    totals; then :func:`_flag` would flag nothing, so this only saves its
    full pass.
    """
    if arrays[0].ndim != 1:
        return False
    cols = idx[0]
    slack = []
    with np.errstate(all="ignore"):
        for k, (x, w, old) in enumerate(zip(arrays, weights, before, strict=True)):
            if cols.size == 1:
                # one entry (the usual case): the same roundings in Python floats
                c = int(cols[0])
                new, wk, old = float(x[c]), float(w[c]), float(old[0])
                scale = abs(totals[k]) + abs(old) * wk + abs(new) * wk
                totals[k] = totals[k] + (new - old) * wk
            else:
                new, wk = x[cols], w[cols]
                scale = abs(totals[k]) + np.abs(old) @ wk + np.abs(new) @ wk
                totals[k] = totals[k] + (new - old) @ wk
            slack.append(4.0 * EPS * (cols.size + 2) * scale)
        d, nn, ed, en = totals
        return bool(
            np.isfinite(d + nn + ed + en + sum(slack))
            and ed + slack[2] <= _UPDATE_FILL * rtol * (d - slack[0])
            and en + slack[3] <= _UPDATE_FILL * rtol * (nn - slack[1])
        )


#: Fraction of the budgets within which :func:`_fits_after_update` accepts
#: the updated bounds (the rest of the budget is margin, not needed).
_UPDATE_FILL = 0.9


def _flag(F, G, eF, eG, wd, wn, rtol, fill=1.0, totals=None):
    """Entries whose rounding bounds keep D or N from being certified to rtol
    (when they do, enough to bring the rest within ``fill`` times the budget:
    see :func:`_needs_doubling`); ``totals``: the four sums, if known."""
    with np.errstate(all="ignore"):
        d, nn, ed, en = _totals(F, G, eF, eG, wd, wn) if totals is None else totals
        # Common case first: every total finite and both summed bounds within
        # budget (four dot products); then nothing is flagged. (An undefined mode
        # makes a total and its bound inf, and inf <= rtol * inf holds: finiteness
        # must be tested on its own.)
        fine_d = ed <= rtol * d
        fine_n = en <= rtol * nn
        if np.isfinite(d).all() and np.isfinite(nn).all():
            # Where one of the two sums is certified in every row, every one of
            # its weighted bounds is finite and its row fits: it flags nothing.
            fine_d, fine_n = bool(np.all(fine_d)), bool(np.all(fine_n))
            if fine_d and fine_n:
                return np.zeros(F.shape, dtype=bool)
            if fine_d:
                return _needs_doubling(eG * wn, nn, rtol, fill)
            if fine_n:
                return _needs_doubling(eF * wd, d, rtol, fill)
        # The budget is relative to the total of the modes the closed form does
        # express (every term is >= 0, so this under-estimates the final total:
        # conservative), so that one undefined mode (F = inf) does not make the
        # budget 0 and flag every mode.
        if not (np.isfinite(d).all() and np.isfinite(nn).all()):
            ok = np.isfinite(eF) & np.isfinite(eG) & np.isfinite(F) & np.isfinite(G)
            d = np.where(ok, F, 0.0) @ wd
            nn = np.where(ok, G, 0.0) @ wn
        return _needs_doubling(eF * wd, d, rtol, fill) | _needs_doubling(
            eG * wn, nn, rtol, fill
        )


def _single_setting_terms(
    hh, wd, wn, alpha, beta, gamma, feats, steps, rtol=CLOSED_FORM_RTOL
):
    """D and N, shape (T,) each, of one setting at many steps, vectorised over both,
    and the number of entries computed by doubling.

    Modes the closed form cannot certify at some step are recomputed by divided
    differences, then by doubling, vectorised over the steps (see
    :func:`_certified`).
    """
    steps = np.asarray(steps, dtype=np.int64)
    D = np.full(steps.shape, wd.sum())
    N = np.zeros(steps.shape)
    live = steps > 0
    if not np.any(live):
        return D, N, 0
    ts = steps[live]

    def entries(pos):
        rows, cols = pos
        n = rows.size
        return (
            hh[cols],
            np.full(n, alpha),
            np.full(n, beta),
            np.full(n, gamma),
            ts[rows],
        )

    def redo(bad):  # flagged modes at every step at once, then the flagged entries
        cols = np.any(bad, axis=0)
        Fd, Gd = _doubling_terms(hh[cols], alpha, beta, gamma, feats, ts)
        return Fd[bad[:, cols]], Gd[bad[:, cols]]

    terms = closed_form_terms(hh, alpha, beta, gamma, feats, ts)
    d, nn, doubled = _certified(*terms, wd, wn, rtol, feats, entries, redo)
    D[live] = d
    N[live] = nn
    return D, N, doubled


def _one_setting_terms(hh, wd, wn, alpha, beta, gamma, t: int, rtol):
    """D and N (0-d arrays) of one setting at one step ``t >= 1``, and the
    number of modes computed by doubling: :func:`_constant_terms` without its
    loops over settings and steps (the same values)."""
    feats = Features(bool(beta > 0), bool(gamma > 0))
    if feats.momentum or feats.ema:
        # the totals from the Lagrange sums first: the per-mode bounds are
        # formed only where the summed ones do not certify
        sums = closed_form_terms(hh, alpha, beta, gamma, feats, t, sums=True)
        totals = weighted_totals(*sums, wd, wn)
        if totals is not None:
            d, n, ed, en = totals
            if ed <= rtol * d and en <= rtol * n:
                return np.asarray(d), np.asarray(n), 0
        F, G, eF, eG = squared_terms(*sums)
    else:
        totals = None
        F, G, eF, eG = closed_form_terms(hh, alpha, beta, gamma, feats, t)
    # finite totals from the sums are those of the terms (weighted_totals)
    d, n, ed, en = _totals(F, G, eF, eG, wd, wn) if totals is None else totals
    if ed <= rtol * d and en <= rtol * n and math.isfinite(d + n):
        return np.asarray(d), np.asarray(n), 0

    def entries(pos):
        m = pos[0].size
        return (
            hh[pos],
            np.full(m, float(alpha)),
            np.full(m, float(beta)),
            np.full(m, float(gamma)),
            np.full(m, t),
        )

    def redo(bad):
        hb, ab, bb, gb, _ = entries(np.nonzero(bad))
        Fd, Gd = _doubling_terms(hb, ab, bb, gb, feats, [t])
        return Fd[0], Gd[0]

    d, n, doubled = _certified(
        F, G, eF, eG, wd, wn, rtol, feats, entries, redo, (d, n, ed, en)
    )
    return np.asarray(d), np.asarray(n), doubled


# ---------------------------------------------------------- scheduled path
#: Elements (pieces x modes) per batch of closed-form pieces under a schedule.
_PIECE_CHUNK = 1 << 16
#: Most updates a schedule that may change at every step is propagated over
#: (each is its own piece): about 30 s for plain SGD and 5 min for momentum at
#: d = 100 on a 2-core machine (benchmarks/bench_nqm_stepwise.py).
MAX_STEPWISE_PIECES = 10**7


#: Most values (pieces x modes) plain SGD keeps under such a schedule: it caches
#: the state at every piece start (F and V, 2 GiB each at this limit).
MAX_PIECE_STATES = 2**28


def _check_stepwise_extent(
    optimizer: Optimizer, n_updates: int, modes: int | None = None
) -> None:
    """Refuse a horizon over which the lr may change at too many steps.

    A :class:`~nqm.Constant` or :class:`~nqm.PiecewiseConstant` lr has few
    pieces whatever the horizon. Any other schedule is evaluated at every step
    until its constant tail (``schedule.constant_after()``), each step its own
    piece.

    Args:
        optimizer: its schedule decides.
        n_updates: the updates the call needs.
        modes: where each piece's state is kept (plain SGD), the modes per state.

    Raises:
        ValueError: when more than :data:`MAX_STEPWISE_PIECES` updates would be
            propagated one by one, or (``modes``) more than
            :data:`MAX_PIECE_STATES` values kept.
    """
    sched = optimizer.schedule
    if isinstance(sched, Constant | PiecewiseConstant):
        return
    after = sched.constant_after()
    extent = n_updates if after is None else min(n_updates, after + 1)
    if extent > MAX_STEPWISE_PIECES:
        limit = f"at most {MAX_STEPWISE_PIECES} are accepted (minutes of work)"
    elif modes is not None and extent * modes > MAX_PIECE_STATES:
        limit = (
            f"their states for {modes} modes would be {extent * modes} values, "
            f"at most {MAX_PIECE_STATES} are kept"
        )
    else:
        return
    raise ValueError(
        f"steps: the lr schedule may change at each of the {extent} updates "
        f"before step {n_updates}, each propagated on its own; {limit}: ask for "
        "fewer steps, give the schedule a constant tail (FromCallable(fn, "
        "constant_after=...)) or use a PiecewiseConstant schedule"
    )


def _scheduled_modes(
    hh, optimizer: Optimizer, steps, batch: BatchSchedule | None = None
):
    """Per-mode F_t and G_t (shape (T, M)) under a non-constant schedule.

    With a batch schedule, G_t carries each update's noise variance :math:`1/B_s`
    (so the risk is :math:`D + N`); without one, unit variance (:math:`D + N/B`).
    """
    feats = Features(optimizer.momentum > 0, optimizer.ema > 0)
    if not feats.momentum and not feats.ema:
        return PieceStates(hh, optimizer, batch).at(np.asarray(steps, dtype=np.int64))
    beta, gamma = optimizer.momentum, optimizer.ema
    t_max = int(max(steps))
    _check_stepwise_extent(optimizer, t_max)
    starts, lrs, inv_b = joint_pieces(optimizer.schedule, batch, t_max)
    ends = np.append(starts[1:], np.iinfo(np.int64).max)
    k = feats.size
    o = feats.out
    _, _, _, u = system_matrices(hh, 1.0, beta, gamma, feats)
    mean = np.broadcast_to(u, hh.shape + (k,)).copy()
    zn = np.zeros(hh.shape + (k, k))
    F = np.empty((len(steps),) + hh.shape)
    G = np.empty_like(F)
    now = 0
    piece = 0
    pieces = _PieceMatrices(hh, lrs, inv_b, beta, gamma, feats)
    with np.errstate(all="ignore"):
        for j in np.argsort(steps):
            target = int(steps[j])
            while now < target:
                while ends[piece] <= now:
                    piece += 1
                length = int(min(ends[piece], target) - now)
                im, ip, q = pieces[piece]
                if length == 1:
                    e, nt = im, q
                else:
                    e, nt = MomentMap(im, ip, q).power(length)
                mean = mean - np.einsum("...ij,...j->...i", e, mean)
                zn = _sandwich(e, zn) + nt
                now += length
            F[j] = mean[..., o] ** 2
            G[j] = zn[..., o, o]
    F = np.where(np.isfinite(F), F, np.inf)
    G = np.where(np.isfinite(G), G, np.inf)
    return F, G


class _PieceMatrices:
    """Each piece's :math:`I - A`, :math:`I + A` and noise covariance, built a
    chunk of pieces at a time (vectorised over pieces and modes): a schedule
    that changes at every step needs them for every update."""

    def __init__(self, hh, lrs, inv_b, beta, gamma, feats: Features):
        self.args = hh, lrs, inv_b, beta, gamma, feats
        self.chunk = max(1, _PIECE_CHUNK // max(1, hh.size))
        self.lo = self.hi = 0

    def __getitem__(self, piece: int):
        if not self.lo <= piece < self.hi:
            hh, lrs, inv_b, beta, gamma, feats = self.args
            self.lo, self.hi = piece, min(piece + self.chunk, lrs.size)
            cut = slice(self.lo, self.hi)
            self.im, self.ip, n, _ = system_matrices(
                hh, lrs[cut, None], beta, gamma, feats
            )
            self.q = inv_b[cut, None, None, None] * n[..., :, None] * n[..., None, :]
        i = piece - self.lo
        return self.im[i], self.ip[i], self.q[i]


def _scheduled_terms(
    hh, wd, wn, optimizer: Optimizer, steps, batch: BatchSchedule | None = None
):
    """D and N for a non-constant schedule (a single setting), each of shape (T,)."""
    F, G = _scheduled_modes(hh, optimizer, steps, batch)
    with np.errstate(invalid="ignore"):
        return F @ wd, G @ wn


def _affine_scan(f, g):
    """Prefix compositions of the maps :math:`x \\mapsto f_i x + g_i` along axis 0.

    Returns ``(F, G)`` with :math:`x_{i+1} = F_i x_0 + G_i` for the recurrence
    :math:`x_{i+1} = f_i x_i + g_i`, by :math:`\\lceil \\log_2 n \rceil` vectorised
    doubling passes (Hillis & Steele 1986). With :math:`f, g \\ge 0` (SGD's
    moment maps) every sum has nonnegative terms, so each pass adds at most one
    rounding to the relative error.
    """
    f = f.copy()
    g = g.copy()
    span = 1
    while span < f.shape[0]:
        # right-hand sides are evaluated before assignment: the old prefixes
        g[span:] = f[span:] * g[:-span] + g[span:]
        f[span:] = f[span:] * f[:-span]
        span *= 2
    return f, g


class PieceStates:
    """Per-mode SGD moments (F, V) under a schedule, cached at piece starts.

    A query at step ``t`` costs one closed-form piece from the cached state at the
    start of the piece containing ``t``. Pieces are those of the lr schedule and,
    when given, the batch schedule together; ``V`` then carries each update's
    noise variance :math:`1/B_s`.
    """

    def __init__(self, hh, optimizer: Optimizer, batch: BatchSchedule | None = None):
        self.hh = hh
        self.opt = optimizer
        self.sched = optimizer.schedule
        self.batch = batch
        self.starts = np.zeros(1, dtype=np.int64)
        self.lrs = np.array([float(self.sched(0))])
        self.inv_b = np.array([1.0 if batch is None else 1.0 / batch(0)])
        # state at each piece start, one row per piece
        self.F = np.ones((1, hh.size))
        self.V = np.zeros((1, hh.size))
        self.known = 0  # pieces are known for steps < self.known (grows by doubling)

    def _extend(self, t: int):
        if t < self.known:
            return
        _check_stepwise_extent(self.opt, t, self.hh.size)
        # grow by doubling (amortised), but never past the accepted extent
        cap = min(MAX_STEPWISE_PIECES, MAX_PIECE_STATES // max(1, self.hh.size))
        horizon = min(max(2 * self.known, t + 1, 64), max(t + 1, cap))
        starts, lrs, inv_b = joint_pieces(self.sched, self.batch, horizon)
        self.starts, self.lrs, self.inv_b = starts, lrs, inv_b
        self.known = horizon
        done = self.F.shape[0]
        if done == starts.size:
            return
        F = np.empty((starts.size, self.hh.size))
        V = np.empty_like(F)
        F[:done], V[:done] = self.F, self.V
        # A chunk of pieces at a time, vectorised over pieces and modes (the cost
        # of a schedule that changes at every step): each piece maps the state
        # (F, V) -> (f F, f V + g), and the chunk's prefix compositions follow
        # from a scan of those maps.
        chunk = max(1, _PIECE_CHUNK // max(1, self.hh.size))
        with np.errstate(all="ignore"):
            for lo in range(done - 1, starts.size - 1, chunk):
                k = np.arange(lo, min(lo + chunk, starts.size - 1))
                length = (starts[k + 1] - starts[k]).astype(np.float64)[:, None]
                a = lrs[k, None]
                fl, gl, _, _ = _sgd_terms(a * self.hh, a, length)
                fa, ga = _affine_scan(fl, inv_b[k, None] * gl)
                F[k + 1] = fa * F[lo]
                V[k + 1] = fa * V[lo] + ga
        self.F, self.V = F, V

    def at(self, steps):
        """Per-mode ``(F, V)`` at each step, shape ``(T, M)`` each; the steps that
        fall in one piece are evaluated together."""
        steps = np.asarray(steps, dtype=np.int64).reshape(-1)
        self._extend(int(steps.max()))
        F = np.empty((steps.size, self.hh.size))
        V = np.empty_like(F)
        piece = np.searchsorted(self.starts, steps, side="right") - 1
        piece = np.minimum(piece, self.F.shape[0] - 1)  # beyond: the tail piece
        with np.errstate(all="ignore"):
            for k in np.unique(piece):
                sel = piece == k
                length = (steps[sel] - self.starts[k]).astype(np.float64)[:, None]
                fl, gl, _, _ = _sgd_terms(self.lrs[k] * self.hh, self.lrs[k], length)
                F[sel] = self.F[k] * fl
                V[sel] = self.V[k] * fl + self.inv_b[k] * gl
        F = np.where(np.isnan(F), np.inf, F)
        V = np.where(np.isnan(V), np.inf, V)
        return F, V

    def _range(self, a: int, b: int) -> slice:
        self._extend(b)
        k0 = int(np.searchsorted(self.starts, a, side="right") - 1)
        k1 = int(np.searchsorted(self.starts, max(b - 1, a), side="right") - 1)
        return slice(k0, k1 + 1)

    def min_lr(self, a: int, b: int) -> float:
        """Smallest lr used by updates a..b-1."""
        return float(self.lrs[self._range(a, b)].min())

    def min_inv_b(self, a: int, b: int) -> float:
        """Smallest noise variance factor :math:`1/B` used by updates a..b-1."""
        return float(self.inv_b[self._range(a, b)].min())


def _sandwich(e, z):
    from ._doubling import _sandwich as sw

    return sw(e, z)


# ------------------------------------------------------------------ public
def risk_terms(
    problem: NQMProblem,
    lr,
    momentum=0.0,
    ema=0.0,
    precond_power: float = 0.0,
    steps=0,
    *,
    rtol: float = CLOSED_FORM_RTOL,
    batch_size: BatchSchedule | None = None,
):
    """Batch-size-free parts of the exact risk, vectorised over settings.

    .. math:: E[L(\\theta_t)] = D(t) + N(t)/B .

    Under a batch schedule :math:`B_s` the noise of update :math:`s` has
    variance :math:`\\hat c/B_s`, so the noise term cannot be factored out:
    ``batch_size=schedule`` returns :math:`N(t) = \\tfrac12\\sum_i w_i h_i \\hat c_i
    G_t^{(B)}(\\hat h_i)` with each update's :math:`1/B_s` inside, and
    :math:`E[L] = D + N`.

    Args:
        problem: the NQM.
        lr, momentum, ema: constant learning rates :math:`\\alpha > 0`,
            :math:`\\beta, \\gamma \\in [0, 1)`, broadcastable to a common shape ``S``.
        precond_power: :math:`p \\in [0, 1]` (a scalar; loop over powers).
        steps: integer step counts, shape ``(T,)`` or scalar.
        rtol: relative accuracy certified for ``D`` and ``N`` (default
            :data:`CLOSED_FORM_RTOL`): modes whose closed-form rounding bound
            would exceed it are recomputed by divided differences, and those
            that even these cannot certify by exact doubling (see
            :func:`doubled_modes`). A looser value is for approximate uses (the
            tuner's binned surrogate), never for reported results.
        batch_size: optionally a :class:`~nqm.BatchSchedule` (see above); the
            settings are then propagated piece by piece, one after the other.

    Returns:
        ``(D, N)``, each of shape ``S + (T,)`` (``S`` alone for scalar ``steps``).

    Raises:
        ValueError: for out-of-range hyperparameters or steps.
    """
    if batch_size is not None:
        return _batch_scheduled_terms(
            problem, lr, momentum, ema, precond_power, steps, batch_size
        )
    D, N, _ = _risk_terms(problem, lr, momentum, ema, precond_power, steps, rtol)
    return D, N


def _batch_scheduled_terms(problem, lr, momentum, ema, precond_power, steps, batch):
    """:func:`risk_terms` under a batch schedule: each setting piece by piece."""
    if not isinstance(batch, BatchSchedule):
        raise ValueError(f"batch_size must be an nqm.BatchSchedule, got {batch!r}")
    alpha, beta, gamma = _settings(lr, momentum, ema)
    t = validate_steps(steps)
    scalar_t = t.ndim == 0
    t = np.atleast_1d(t)
    hh, wd, wn = _modes(problem, float(precond_power))
    D = np.empty(alpha.shape + t.shape)
    N = np.empty_like(D)
    for i in np.ndindex(alpha.shape):
        opt = Optimizer(alpha[i], beta[i], gamma[i], float(precond_power))
        D[i], N[i] = _scheduled_terms(hh, wd, wn, opt, t, batch)
    return (D[..., 0], N[..., 0]) if scalar_t else (D, N)


def doubled_modes(
    problem: NQMProblem,
    lr,
    *,
    steps=0,
    momentum=0.0,
    ema=0.0,
    precond_power: float = 0.0,
    rtol: float = CLOSED_FORM_RTOL,
) -> int:
    """How many (setting, mode, step) entries :func:`risk_terms` computes by
    doubling: those that neither the Lagrange closed form (in double, then
    extended precision) nor its divided-difference form can certify to
    ``rtol`` (below :data:`CONFLUENT_MIN_STEPS` steps, those the Lagrange form
    cannot).

    Arguments as for :func:`risk_terms`, all but ``problem`` and ``lr`` by
    keyword (distinct curvatures count once, as
    :func:`risk_terms` merges them). Every other entry costs :math:`O(1)`
    whatever the step; a doubled one :math:`O(\\log t)`.
    """
    return _risk_terms(problem, lr, momentum, ema, precond_power, steps, rtol)[2]


def _settings(lr, momentum, ema):
    """Validated (alpha, beta, gamma) arrays of one broadcast shape."""
    if np.ndim(lr) == 0 and np.ndim(momentum) == 0 and np.ndim(ema) == 0:
        # one setting (local searches): scalar checks
        a, b, g = float(lr), float(momentum), float(ema)
        if not (math.isfinite(a) and a > 0):
            raise ValueError("lr must be finite and positive")
        if not 0.0 <= b < 1.0:
            raise ValueError("momentum must lie in [0, 1)")
        if not 0.0 <= g < 1.0:
            raise ValueError("ema must lie in [0, 1)")
        return np.array(a), np.array(b), np.array(g)
    alpha, beta, gamma = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (lr, momentum, ema))
    )
    if np.any(~np.isfinite(alpha)) or np.any(alpha <= 0):
        raise ValueError("lr must be finite and positive")
    if np.any(~((beta >= 0) & (beta < 1))):
        raise ValueError("momentum must lie in [0, 1)")
    if np.any(~((gamma >= 0) & (gamma < 1))):
        raise ValueError("ema must lie in [0, 1)")
    return alpha, beta, gamma


def _risk_terms(problem, lr, momentum, ema, precond_power, steps, rtol):
    alpha, beta, gamma = _settings(lr, momentum, ema)
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must lie in (0, 1), got {rtol!r}")
    t = validate_steps(steps)
    scalar_t = t.ndim == 0
    hh, wd, wn = _modes(problem, float(precond_power))
    if scalar_t and alpha.ndim == 0 and t > 0:
        # one setting at one step (one evaluation, the tuner's local searches):
        # the closed form and its certification directly
        return _one_setting_terms(hh, wd, wn, alpha, beta, gamma, int(t), rtol)
    t = np.atleast_1d(t)
    D = np.empty(alpha.shape + t.shape)
    N = np.empty_like(D)
    doubled = 0
    for feats, mask in _feature_groups(beta, gamma).items():
        sel = (
            (v.reshape(-1) for v in (alpha, beta, gamma))
            if mask is None
            else (v[mask] for v in (alpha, beta, gamma))
        )
        d, n, nd = _constant_terms(hh, wd, wn, *sel, feats, t, rtol)
        doubled += nd
        if mask is None:
            D, N = d.reshape(D.shape), n.reshape(N.shape)
        else:
            D[mask] = d
            N[mask] = n
    if scalar_t:
        return D[..., 0], N[..., 0], doubled
    return D, N, doubled


def expected_loss(problem: NQMProblem, optimizer: Optimizer, batch_size, steps):
    """Exact :math:`E[L(\\theta_t)]` for any optimizer, schedule and batch size.

    Args:
        problem: the NQM.
        optimizer: the optimizer configuration (any lr schedule).
        batch_size: :math:`B \\ge 1`, scalar or array (shape ``Bs``), or a
            :class:`~nqm.BatchSchedule` (shape ``Bs = ()``): update :math:`s`'s
            noise then has variance :math:`c/B_s`, and the lr and batch pieces
            are propagated together in closed form.
        steps: integer :math:`t \\ge 0`, scalar or array (shape ``Ts``).

    Returns:
        A float for scalar arguments; otherwise an array of shape ``Bs + Ts``.
        Diverging settings give large finite values while representable, then
        ``inf`` (never NaN).

    Raises:
        ValueError: for ``batch_size < 1`` or negative / non-integer ``steps``.
    """
    if not isinstance(optimizer, Optimizer):
        raise ValueError(
            f"optimizer must be an nqm.Optimizer, got {type(optimizer).__name__}"
        )
    batch_size, batch = split_batch(batch_size)
    if (type(batch_size) is float and 1.0 <= batch_size < math.inf) or (
        type(batch_size) is int and 1 <= batch_size <= 2**53
    ):
        b = np.asarray(float(batch_size))  # one plain valid number, as it is
    else:
        b = validate_batch_size(batch_size)
    t = validate_steps(steps)
    flat = np.atleast_1d(t).ravel()
    if batch is not None:
        hh, wd, wn = _modes(problem, optimizer.precond_power)
        D, N = _scheduled_terms(hh, wd, wn, optimizer, flat, batch)
    elif isinstance(optimizer.schedule, Constant):
        D, N, _ = _risk_terms(
            problem,
            optimizer.schedule.lr,
            optimizer.momentum,
            optimizer.ema,
            optimizer.precond_power,
            int(t) if t.ndim == 0 else flat,
            CLOSED_FORM_RTOL,
        )
    else:
        hh, wd, wn = _modes(problem, optimizer.precond_power)
        D, N = _scheduled_terms(hh, wd, wn, optimizer, flat)
    D = D.reshape(t.shape)
    N = N.reshape(t.shape)
    if b.ndim == 0 and t.ndim == 0:
        # one loss (local searches, benchmarks): Python floats round as the
        # arrays below do
        out = float(D) + float(N) / float(b)
        return math.inf if math.isnan(out) else out
    with np.errstate(invalid="ignore", over="ignore"):
        out = D[(None,) * b.ndim] + N[(None,) * b.ndim] / b.reshape(
            b.shape + (1,) * t.ndim
        )
    out = np.where(np.isnan(out), np.inf, out)
    return float(out) if out.ndim == 0 else out


def _mode_terms(hh, lr, beta, gamma, feats, step):
    """Per-mode F_t, G_t, each certified to CLOSED_FORM_RTOL relative to itself:
    Lagrange form, then divided differences, then doubling."""
    f, g, ef, eg = closed_form_terms(hh, lr, beta, gamma, feats, step)

    def bad_of(f, g, ef, eg):
        with np.errstate(invalid="ignore"):
            return ~(ef <= CLOSED_FORM_RTOL * f) | ~(
                eg <= CLOSED_FORM_RTOL * np.maximum(g, 1e-300)
            )

    bad = bad_of(f, g, ef, eg)
    if not np.any(bad):
        return f, g
    f, g, ef, eg = (np.array(x) for x in (f, g, ef, eg))
    n = int(bad.sum())
    a, b, c = np.full(n, lr), np.full(n, beta), np.full(n, gamma)
    if feats.momentum or feats.ema:
        f[bad], g[bad], ef[bad], eg[bad] = extended_terms(
            a * hh[bad], a, b, c, feats, np.full(n, step)
        )
        bad = bad_of(f, g, ef, eg)
        n = int(bad.sum())
        a, b, c = np.full(n, lr), np.full(n, beta), np.full(n, gamma)
    if n and (feats.momentum or feats.ema) and step >= CONFLUENT_MIN_STEPS:
        f[bad], g[bad], ef[bad], eg[bad] = confluent_terms(
            a * hh[bad], a, b, c, feats, np.full(n, step)
        )
        bad = bad_of(f, g, ef, eg)
        n = int(bad.sum())
        a, b, c = np.full(n, lr), np.full(n, beta), np.full(n, gamma)
    if n:
        fd, gd = _doubling_terms(hh[bad], a, b, c, feats, [step])
        f[bad], g[bad] = fd[0], gd[0]
    return f, g


def second_moments(problem: NQMProblem, optimizer: Optimizer, batch_size, steps):
    r"""Exact per-mode :math:`E[\theta_{o,i}(t)^2]` of the reported iterate.

    Args:
        problem: the NQM (``n`` modes).
        optimizer: any optimizer and schedule.
        batch_size: :math:`B \ge 1` (scalar), or a :class:`~nqm.BatchSchedule`.
        steps: integer step counts, shape ``(T,)`` or scalar.

    Returns:
        Array of shape ``(T, n)`` (``(n,)`` for scalar ``steps``).
    """
    batch_size, batch = split_batch(batch_size)
    b = float(validate_batch_size(batch_size, scalar=True))
    t = validate_steps(steps)
    flat = np.atleast_1d(t).ravel()
    hh, cc = problem.preconditioned(optimizer.precond_power)
    feats = Features(optimizer.momentum > 0, optimizer.ema > 0)
    if batch is None and isinstance(optimizer.schedule, Constant):
        lr = optimizer.schedule.lr
        F = np.empty((flat.size, hh.size))
        G = np.empty_like(F)
        for i, step in enumerate(flat):
            if step == 0:
                F[i], G[i] = 1.0, 0.0
                continue
            F[i], G[i] = _mode_terms(
                hh, lr, optimizer.momentum, optimizer.ema, feats, int(step)
            )
    else:
        F, G = _scheduled_modes(hh, optimizer, flat, batch)
    with np.errstate(invalid="ignore", over="ignore"):
        out = problem.init_sq * F + cc / b * G
    out = np.where(np.isnan(out), np.inf, out)
    return out[0] if t.ndim == 0 else out.reshape(t.shape + (hh.size,))


def max_stable_lr(
    problem: NQMProblem, momentum: float = 0.0, precond_power: float = 0.0
):
    """Largest constant lr for which every mode converges: :math:`2(1+\\beta)/\\max \\hat h`.

    Heavy-ball on one mode is stable iff :math:`0 < \\alpha \\hat h < 2(1+\\beta)`;
    averaging (:math:`\\gamma < 1`) does not change stability.
    """
    hh, _, _ = _modes(problem, float(precond_power))
    return 2.0 * (1.0 + float(momentum)) / float(hh.max())


def is_stable(problem: NQMProblem, optimizer: Optimizer) -> bool:
    """Whether the optimizer's eventual (constant) lr converges on every mode.

    Raises:
        ValueError: for a callable schedule with no known constant tail.
    """
    sched = optimizer.schedule
    after = sched.constant_after()
    if after is None:
        raise ValueError(
            "is_stable needs a schedule with a known constant tail; pass "
            "FromCallable(fn, constant_after=...)"
        )
    lr = float(sched(after))
    return lr < max_stable_lr(problem, optimizer.momentum, optimizer.precond_power)


def steady_state_loss(
    problem: NQMProblem, optimizer: Optimizer, batch_size
) -> float | np.ndarray:
    r"""Limit of the exact risk under the optimizer's eventual constant lr.

    .. math::
        \lim_{t\to\infty} E[L(\theta_t)] = \frac{1}{B} \sum_i
        \tfrac12 w_i h_i \hat c_i\, G_\infty(\hat h_i),

    where :math:`G_\infty` is the stationary variance of the reported iterate per
    unit noise variance, the solution of each mode's discrete Lyapunov equation
    :math:`Z = A Z A^\top + n n^\top`
    (:func:`nqm.closed_form.steady_state_second_moment`), at the lr the schedule
    holds from ``schedule.constant_after()`` on. For a stable lr the mean response
    decays to zero, so the initial state does not enter.

    Args:
        problem: the NQM.
        optimizer: any optimizer whose schedule has a known constant tail.
        batch_size: :math:`B \ge 1`, scalar or array (shape ``Bs``), or a
            :class:`~nqm.BatchSchedule` (its final batch size holds forever).

    Returns:
        A float for a scalar batch size, else an array of shape ``Bs``; ``inf``
        (in every entry) when the eventual lr is unstable (:func:`is_stable`).

    Raises:
        ValueError: for a batch size below one, or a schedule with no known
            constant tail.
    """
    stable = is_stable(problem, optimizer)  # raises without a known constant tail
    lr = float(optimizer.schedule(optimizer.schedule.constant_after()))
    hh, _, wn = _modes(problem, optimizer.precond_power)
    from .closed_form import steady_state_second_moment

    if isinstance(batch_size, BatchSchedule):  # its final batch size holds forever
        batch_size = batch_size.values[-1]
    b = validate_batch_size(batch_size)
    if stable:
        g = steady_state_second_moment(hh, lr, optimizer.momentum, optimizer.ema)
        out = np.sum(wn * g) / b
    else:
        out = np.full(b.shape, np.inf)
    return float(out) if b.ndim == 0 else out
