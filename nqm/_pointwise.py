"""The exact risk of many (setting, step) points at once, each at its own step.

:func:`nqm.dynamics.risk_terms` evaluates settings ``S`` at steps ``T`` as an
outer product. Local searches that run side by side (one per batch size, see
:mod:`nqm._tuning`) each ask for one setting at their own step, so their points
pair setting :math:`i` with step :math:`t_i`:

.. math:: D_i = \\sum_m \\omega_{D,m} F_{t_i}(\\hat h_m; x_i), \\qquad
          N_i = \\sum_m \\omega_{N,m} G_{t_i}(\\hat h_m; x_i).

Every point is first evaluated by the Lagrange closed form of
:mod:`nqm._closed`, vectorised over points and modes with the step broadcast per
point (its formulas are elementwise in :math:`t`). A point is kept when the
closed form certifies it exactly as :func:`~nqm.dynamics.risk_terms` certifies a
single setting (rounding bounds of :math:`D` and :math:`N` within ``rtol`` of
them, both finite); any other point is recomputed alone by
:func:`~nqm.dynamics.risk_terms` (divided differences, then doubling), so every
value is the one-setting value. The sums over modes are taken row by row, in
the one-setting order, so a point's value does not depend on the points it is
evaluated with.
"""

from __future__ import annotations

import math

import numpy as np

from ._closed import (
    _complex_pair_terms,
    _fit,
    _momentum_roots,
    _real_case,
    _sgd_terms,
    squared_terms,
)
from ._system import Features
from .dynamics import _modes, risk_terms
from .problem import NQMProblem

#: Requests of at least this many points are checked for repeated points.
_DEDUPLICATE_POINTS = 64


def _closed_form_at(hh, alpha, beta, gamma, feats: Features, t):
    """Per-mode ``(F, G, err_F, err_G)`` of :func:`nqm._closed.closed_form_terms`
    with a step per point.

    Args:
        hh: curvatures ``(M,)``.
        alpha, beta, gamma: one point each, ``(n,)``.
        feats: the state layout shared by the points.
        t: steps ``(n,)``, each ``>= 1``.

    Returns:
        Four arrays ``(n, M)``.
    """
    s = alpha[:, None] * hh[None, :]
    shape = s.shape
    a_, b_ = alpha[:, None], beta[:, None]
    with np.errstate(all="ignore"):
        if not feats.momentum and not feats.ema:
            return _sgd_terms(s, a_, t[:, None])
        if feats.momentum:
            big, disc = (_fit(x, shape) for x in _momentum_roots(s, b_))
            cplx = disc < 0
        else:
            big = disc = None
            cplx = np.zeros(shape, dtype=bool)
        outs = [np.empty(shape) for _ in range(4)]
        for mask, complex_path in ((~cplx, False), (cplx, True)):
            if not np.any(mask):
                continue
            # a point's values, one per selected mode of its row (the row-major
            # order of the selection): repeated, not selected from a broadcast
            counts = np.count_nonzero(mask, axis=1)
            pt = [
                np.repeat(x, counts) if used else None
                for x, used in (
                    (alpha, True),
                    (beta, feats.momentum),
                    (gamma, feats.ema),
                )
            ]
            tm = np.repeat(t, counts)
            if complex_path:
                out = _complex_pair_terms(
                    s[mask], *pt, big[mask], disc[mask], ema=feats.ema, t=tm
                )
            else:
                extra = [big[mask], disc[mask]] if feats.momentum else []
                out = _real_case(s[mask], *pt, *extra, feats=feats, t=tm)
            for dst, src in zip(outs, out, strict=True):
                dst[mask] = src
        f, f_abs, G, g_abs = outs
        return squared_terms(f, f_abs, G, g_abs)


def pointwise_terms(
    problem: NQMProblem,
    lr: np.ndarray,
    momentum: np.ndarray,
    ema: np.ndarray,
    precond_power: float,
    steps: np.ndarray,
    *,
    rtol: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``(D_i, N_i)`` of :func:`~nqm.dynamics.risk_terms` at point ``i``'s own step.

    .. math:: E[L_i] = D_i + N_i / B .

    Args:
        problem: the NQM.
        lr, momentum, ema: one setting per point, each ``(n,)`` (validated as
            :func:`~nqm.dynamics.risk_terms` validates them).
        precond_power: :math:`p \\in [0, 1]`, shared by the points.
        steps: one non-negative integer step count per point, ``(n,)``.
        rtol: the relative accuracy certified for every ``D_i`` and ``N_i``.

    Returns:
        ``(D, N)``, each ``(n,)``: what ``risk_terms(problem, lr[i], momentum[i],
        ema[i], precond_power, steps[i], rtol=rtol)`` returns for each ``i``.

    Raises:
        ValueError: for arrays of different lengths, or what
            :func:`~nqm.dynamics.risk_terms` raises.
    """
    alpha, beta, gamma = (np.asarray(v, dtype=np.float64) for v in (lr, momentum, ema))
    t = np.asarray(steps)
    n = alpha.size
    if alpha.ndim != 1 or any(v.shape != (n,) for v in (beta, gamma, t)):
        raise ValueError("lr, momentum, ema and steps must be 1-d of one length")
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must lie in (0, 1), got {rtol!r}")
    # (min and max reductions: NaN fails every comparison)
    if n and not (alpha.min() > 0.0 and alpha.max() < math.inf):
        raise ValueError("lr must be finite and positive")
    if n and not (beta.min() >= 0.0 and beta.max() < 1.0):
        raise ValueError("momentum must lie in [0, 1)")
    if n and not (gamma.min() >= 0.0 and gamma.max() < 1.0):
        raise ValueError("ema must lie in [0, 1)")
    if not (np.issubdtype(t.dtype, np.integer) and (n == 0 or t.min() >= 0)):
        raise ValueError("steps must be non-negative integers")
    t = t.astype(np.int64)
    if n >= _DEDUPLICATE_POINTS:
        # points repeated bit for bit (golden-section searches of several
        # batch sizes at one step start from the same grid neighbours) are
        # evaluated once; a point's value does not depend on the others
        bits = np.stack([v.view(np.int64) for v in (alpha, beta, gamma)] + [t], 1)
        _, first, back = np.unique(bits, axis=0, return_index=True, return_inverse=True)
        if first.size < n:
            d, m = _point_terms(
                problem, alpha[first], beta[first], gamma[first], precond_power,
                t[first], rtol,
            )  # fmt: skip
            back = back.reshape(-1)
            return d[back], m[back]
    return _point_terms(problem, alpha, beta, gamma, precond_power, t, rtol)


def _point_terms(problem, alpha, beta, gamma, precond_power, t, rtol):
    """:func:`pointwise_terms` of validated arrays (``t`` int64), every point
    evaluated."""
    n = alpha.size
    hh, wd, wn = _modes(problem, float(precond_power))
    D = np.empty(n)
    N = np.empty(n)
    # the state layout of each point (momentum, averaging) as 2 m + a; -1 for
    # step 0, recomputed alone below
    group = 2 * (beta > 0) + (gamma > 0)
    group[t < 1] = -1
    redo = np.flatnonzero(group < 0).tolist()
    if n and group.min() == group.max() >= 0:  # the usual case: one layout
        blocks = [(int(group[0]), np.arange(n))]
    else:
        blocks = [(g, np.flatnonzero(group == g)) for g in range(4)]
    for g, idx in blocks:
        if idx.size == 0:
            continue
        F, G, eF, eG = _closed_form_at(
            hh, alpha[idx], beta[idx], gamma[idx], Features(g >= 2, g % 2 == 1), t[idx]
        )
        with np.errstate(all="ignore"):
            # the rounding bounds decide only whether a point is kept
            err_d, err_n = (eF @ wd).tolist(), (eG @ wn).tolist()
            for k, (i, f_row, g_row) in enumerate(zip(idx.tolist(), F, G, strict=True)):
                # one dot per row: the summation order of one setting alone
                d, m = f_row.dot(wd), g_row.dot(wn)
                if (
                    err_d[k] <= rtol * d
                    and err_n[k] <= rtol * m
                    and math.isfinite(d + m)
                ):
                    D[i], N[i] = d, m
                else:
                    redo.append(i)
    for i in redo:
        D[i], N[i] = risk_terms(
            problem, alpha[i], beta[i], gamma[i], precond_power, int(t[i]), rtol=rtol
        )
    return D, N
