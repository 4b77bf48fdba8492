r"""Exact SGD risk after piecewise-constant learning rates, with its gradient.

The schedule tuner (:mod:`nqm._tuning`) minimises this risk over the learning
rates of every piece, for many rows (preconditioning powers x batch sizes) at
once, with a batched L-BFGS. Each row is an SGD run on the modes
:math:`(h_m, w^D_m, w^N_m)`, piece :math:`k` taking :math:`L_k` steps at the
learning rate :math:`\alpha_k`.

Per mode, piece :math:`k` multiplies the mean response by :math:`e^{x_k}`,
:math:`x_k = 2 L_k \log|1 - s_k|`, :math:`s_k = \alpha_k h`, and adds the noise
response :math:`g_k = c_k q_k`, :math:`c_k = \alpha_k^2 / (s_k (2 - s_k))`,
:math:`q_k = 1 - e^{x_k}`. Unrolled over the pieces,

.. math::
    L = \sum_m w^D_m e^{r_0} + \frac{w^N_m}{B} \sum_k g_k e^{a_k},
    \qquad r_k = \sum_{j \ge k} x_j, \quad a_k = r_{k+1},

so all pieces are evaluated at once from suffix sums (no subtraction, hence no
cancellation). The gradient in :math:`\alpha_k` needs one more pass, the prefix
sums :math:`P_k = \sum_{j < k} g_j e^{a_j}` (the noise added before piece
:math:`k`, which piece :math:`k` then contracts):

.. math::
    \frac{\partial L}{\partial \alpha_k} = \sum_m
    \frac{\partial x_k}{\partial \alpha_k}
    \Bigl(w^D_m e^{r_0} + \frac{w^N_m}{B}\bigl(P_k - c_k e^{r_k}\bigr)\Bigr)
    + \frac{w^N_m}{B} e^{a_k} q_k \frac{\partial c_k}{\partial \alpha_k},

with :math:`\partial x_k / \partial \alpha_k = -2 L_k h / (1 - s_k)` and
:math:`\partial c_k / \partial \alpha_k = 2 \alpha_k s_k / (s_k (2 - s_k))^2`.
:class:`PiecewiseRisk` computes it in its backward pass: a handful of fused
tensor operations over (rows, pieces, modes) instead of the reverse-mode graph
of every operation of the forward pass, which costs about three times as much.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["PiecewiseRisk", "piecewise_risk"]

#: ``|1 - s|`` is taken at no less than this inside the logarithm (``s = 1``
#: contracts a mode to zero in one step: its log is -inf, its x is -inf when the
#: piece is not empty).
_LOG_FLOOR = 1e-300
#: ``s`` is taken at no more than this inside ``log1p(-s)``: the double below 1.
_S_MAX = 1.0 - 1e-16
#: Below this, ``s (2 - s)`` may be floored (:data:`_DEN_FLOOR`).
_S_MIN_PLAIN = 1e-280
#: ``s (2 - s)`` is taken at no less than this in magnitude (``s`` at 0 or 2).
_DEN_FLOOR = 1e-300


class _Saved(NamedTuple):
    """What the forward pass keeps for the gradient: ``plain`` (no clamp or
    floor acted), the curvatures ``h`` broadcast to (R, K, M), and per (row,
    piece, mode) ``-s``, ``2 - s``, ``-s (2 - s)`` (floored), ``alpha^2``,
    :math:`e^{a_k}` and the noise terms :math:`g_k e^{a_k}`; per (row, mode)
    :math:`e^{r_0}`."""

    plain: bool
    h: Tensor
    ms: Tensor
    two_minus: Tensor
    neg_den: Tensor
    a2: Tensor
    e_after: Tensor
    terms: Tensor
    v_d: Tensor


def _forward(
    hh: Tensor, wd: Tensor, wn: Tensor, lrs: Tensor, lengths: Tensor, bs: Tensor
) -> tuple[Tensor, _Saved]:
    """The risk of every row and the intermediates its gradient reuses."""
    per_row = hh.ndim == 2
    h = hh[:, None, :] if per_row else hh[None, None, :]
    # -s = alpha (-h) exactly; every expression below in -s is bitwise the
    # textbook one in s (negation and 2 - s = 2 + (-s) are exact)
    ms = lrs[:, :, None] * -h
    lo, hi = torch.aminmax(ms)
    below_one = bool(lo > -1.0)
    if below_one:  # every s < 1 (the usual case): one logarithm
        la = torch.log1p(ms)
    else:  # the steps with s >= 1 take log(s - 1); each entry as in the formula
        over = ms <= -1.0
        la = torch.log1p(torch.clamp(ms, min=-_S_MAX))
        la[over] = torch.log(torch.clamp(-ms[over] - 1.0, min=_LOG_FLOOR))
    # ``plain``: no clamp or floor acts anywhere, so the gradient needs no masks.
    # _S_MAX is the double below 1, so the log1p clamp acts on no s < 1; the
    # log floor acts at s = 1 only, and s (2 - s) is floored only at s = 2 or
    # below _S_MIN_PLAIN.
    plain = bool(hi <= -_S_MIN_PLAIN) and (
        below_one or not bool(((ms == -1.0) | (ms == -2.0)).any())
    )
    x = la.mul_(2.0 * lengths[:, :, None])  # in place: la is not needed again
    two_minus = 2.0 + ms
    neg_den = ms * two_minus  # -s (2 - s)
    if not plain:
        floored = neg_den.abs() < _DEN_FLOOR
        neg_den = torch.where(floored, torch.full_like(neg_den, -_DEN_FLOOR), neg_den)
    a2 = lrs[:, :, None] ** 2
    g = torch.expm1(x).mul_(a2).div_(neg_den)
    # rev[k] = sum_{j >= k} x_j, after[k] = rev[k + 1]: reverse cumulative sums,
    # shifted by one piece (no subtraction, so no cancellation)
    rev = torch.flip(torch.flip(x, [1]).cumsum_(dim=1), [1])
    e_after = torch.cat([rev[:, 1:], torch.zeros_like(rev[:, :1])], dim=1).exp_()
    v_d = torch.exp(rev[:, 0, :])
    terms = g.mul_(e_after)
    v_n = terms.sum(dim=1)
    risk = (v_d * wd).sum(dim=1) + (v_n * wn).sum(dim=1) / bs
    return risk, _Saved(plain, h, ms, two_minus, neg_den, a2, e_after, terms, v_d)


def _gradient(
    saved: _Saved, wd: Tensor, wn: Tensor, lrs: Tensor, lengths: Tensor,
    bs: Tensor,
) -> Tensor:  # fmt: skip
    r"""The gradient of every row's risk in its learning rates, shape (R, K).

    With :math:`u = h / (1 - s)` (so :math:`\partial x / \partial \alpha =
    -2 L u`), :math:`C_k = P_k + g_k e^{a_k}` (inclusive prefix sums) and
    :math:`c_k e^{r_k} = c_k e^{a_k} - g_k e^{a_k}`, the module's formula is

    .. math::
        \frac{\partial L}{\partial \alpha_k} = -2 L_k \sum_m u \Bigl(w^D_m
        e^{r_0} + \frac{w^N_m}{B} (C_k - c_k e^{a_k})\Bigr) + \frac{2}{\alpha_k}
        \sum_m \frac{w^N_m}{B} \frac{g_k e^{a_k}}{2 - s},

    the length and the learning rate of a piece factored out of its sums over
    modes. Where the forward pass clamped ``s`` or floored ``s (2 - s)``, the
    corresponding factor is zero, as in reverse mode.
    """
    plain, h, ms, two_minus, neg_den, a2, e_after, terms, v_d = saved
    per_row = wd.ndim == 2
    wd_r = wd if per_row else wd[None, :]
    wn_b = (wn if per_row else wn[None, :]) / bs[:, None]  # (R, M)
    u = h / (1.0 + ms)
    inner = torch.cumsum(terms, dim=1).add_((a2 / neg_den).mul_(e_after))
    direct = terms / two_minus
    if not plain:
        # the forward clamps act at s = 1 only (_S_MAX is the double below 1)
        u = torch.where(ms == -1.0, 0.0, u)
        direct = torch.where(neg_den == -_DEN_FLOOR, 0.0, direct)
    through_x = torch.einsum("rkm,rm->rk", u, wd_r * v_d) + torch.einsum(
        "rkm,rm->rk", inner.mul_(u), wn_b
    )
    return -2.0 * lengths * through_x + 2.0 / lrs * torch.einsum(
        "rkm,rm->rk", direct, wn_b
    )


class PiecewiseRisk(torch.autograd.Function):
    """:func:`piecewise_risk` as an autograd function, differentiable in ``lrs``
    with the closed-form gradient of the module docstring (the modes, lengths
    and batch sizes get no gradient)."""

    @staticmethod
    def forward(ctx: Any, hh: Tensor, wd: Tensor, wn: Tensor, lrs: Tensor,
                lengths: Tensor, bs: Tensor) -> Tensor:  # fmt: skip
        risk, saved = _forward(hh, wd, wn, lrs, lengths, bs)
        ctx.saved = (saved, wd, wn, lrs, lengths, bs)
        return risk

    @staticmethod
    def backward(ctx: Any, grad_risk: Tensor) -> tuple[Tensor | None, ...]:
        saved, wd, wn, lrs, lengths, bs = ctx.saved
        grad = _gradient(saved, wd, wn, lrs, lengths, bs)
        return None, None, None, grad_risk[:, None] * grad, None, None


def piecewise_risk(hh: Tensor, wd: Tensor, wn: Tensor, lrs: Tensor, lengths: Tensor,
                   bs: Tensor) -> Tensor:  # fmt: skip
    """Exact SGD risk of every row after its piecewise-constant learning rates.

    Args:
        hh, wd, wn: curvatures and the weights of the mean and noise responses,
            ``(M,)`` shared by every row or ``(R, M)`` per row.
        lrs: learning rates ``(R, K)``.
        lengths: steps per piece ``(R, K)`` (float, integer values, 0 allowed).
        bs: batch sizes ``(R,)``.

    Returns:
        The risk ``(R,)``; differentiable in ``lrs`` (:class:`PiecewiseRisk`).
        Each row's value depends on its own inputs only.
    """
    if lrs.requires_grad:
        return PiecewiseRisk.apply(hh, wd, wn, lrs, lengths, bs)
    return _forward(hh, wd, wn, lrs, lengths, bs)[0]
