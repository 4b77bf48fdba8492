"""The appendix's closed forms (Zhang et al. 2019, appendices B-E), as separate functions.

They are written from the paper's formulas, independently of the exact engine in
:mod:`nqm.dynamics`, and serve as oracles and fast paths:

* :func:`sgd_risk`: the per-dimension SGD risk (used in E.3); exact.
* :func:`momentum_bound`: Theorem 1, eqn (34); an upper bound whose transient
  term is exact.
* :func:`averaging_bound`: Theorem 2, eqn (49); an upper bound whose transient
  term is exact.
* steady-state risks of each (eqns (31), (47) and the SGD limit).

All take the preconditioning power ``precond_power`` (:math:`\\hat h = h^{1-p}`,
:math:`\\hat c = c\\, h^{-2p}`, loss weight :math:`h`).
"""

from __future__ import annotations

import numpy as np

from ._closed import _exp
from .arguments import validate_batch_size, validate_steps
from .dynamics import _modes
from .problem import NQMProblem

__all__ = [
    "sgd_risk",
    "momentum_bound",
    "averaging_bound",
    "sgd_steady_state",
    "momentum_steady_state",
    "averaging_steady_state",
    "steady_state_second_moment",
    "steady_state_risk",
]


def _parts(problem, precond_power):
    """Curvatures, and the loss weights of the initial state and of the noise
    (the latter scaled: :meth:`NQMProblem.noise_weight`)."""
    hh, _ = problem.preconditioned(precond_power)
    wd = 0.5 * problem.weight * problem.h * problem.init_sq
    wn = 0.5 * problem.weight * problem.noise_weight(precond_power)
    return hh, wd, wn


def _times(steps):
    t = validate_steps(steps)
    return t, np.atleast_1d(t).astype(np.float64)[:, None]


def _finish(t, values):
    out = values.reshape(t.shape)
    return float(out) if out.ndim == 0 else out


def sgd_risk(
    problem: NQMProblem, lr: float, batch_size, steps, precond_power: float = 0.0
):
    r"""Exact SGD risk (constant lr).

    .. math::
        E[L(\theta_t)] = \tfrac12 \sum_i h_i\Big[(1-\alpha\hat h_i)^{2t} E[\theta_i(0)^2]
        + \frac{\alpha^2 \hat c_i}{B}\,\frac{1-(1-\alpha\hat h_i)^{2t}}
        {1-(1-\alpha\hat h_i)^2}\Big].

    Args:
        problem: the NQM.
        lr: :math:`\alpha > 0`.
        batch_size: :math:`B \ge 1` (scalar).
        steps: integer :math:`t \ge 0`, scalar or array.
        precond_power: :math:`p`.

    Returns:
        float or array shaped like ``steps``.
    """
    b = float(validate_batch_size(batch_size, scalar=True))
    t, tt = _times(steps)
    hh, wd, wn = _parts(problem, precond_power)
    s = lr * hh
    with np.errstate(all="ignore"):
        # t = 0 is the initial loss exactly (avoids 0 * log 0 when alpha h = 1)
        lam2t = np.where(tt == 0, 1.0, _exp(tt * np.log((1.0 - s) ** 2)))
        # 1 - (1 - s)^{2t} via expm1 for accuracy at small s
        one_minus = np.where(tt == 0, 0.0, -np.expm1(tt * np.log1p(s * (s - 2.0))))
        var = np.where(s == 2.0, lr * lr * tt, lr * lr * one_minus / (s * (2.0 - s)))
        risk = lam2t @ wd + (var @ wn) / b
    return _finish(t, np.where(np.isnan(risk), np.inf, risk))


def _roots(trace, det):
    disc = np.asarray(trace * trace - 4.0 * det, dtype=np.complex128)
    sq = np.sqrt(disc)
    return 0.5 * (trace + sq), 0.5 * (trace - sq)


def momentum_bound(
    problem: NQMProblem,
    lr: float,
    momentum: float,
    batch_size,
    steps,
    precond_power: float = 0.0,
):
    r"""Theorem 1, eqn (34): an upper bound on the heavy-ball risk.

    .. math::
        A(\theta(t)) \le \left(\frac{r_1^{t+1} - r_2^{t+1} - \beta(r_1^t - r_2^t)}
        {r_1 - r_2}\right)^2 A(\theta(0)) + \frac{\alpha c (1+\beta)}
        {B h (2\beta + 2 - \alpha h)(1-\beta)},

    with :math:`r_{1,2}` the roots of :math:`z^2 - (1-\alpha h+\beta) z + \beta`;
    the risk bound is :math:`\tfrac12\sum_i h_i A(\theta_i(t))`. Undefined at
    critical damping (:math:`r_1 = r_2`).
    """
    b = float(validate_batch_size(batch_size, scalar=True))
    t, tt = _times(steps)
    hh, wd, wn = _parts(problem, precond_power)
    beta = float(momentum)
    r1, r2 = _roots(1.0 - lr * hh + beta, beta)
    with np.errstate(all="ignore"):
        trans = (
            (r1 ** (tt + 1) - r2 ** (tt + 1) - beta * (r1**tt - r2**tt)) / (r1 - r2)
        ).real
        ss = momentum_steady_state(hh, lr, beta) @ wn / b
        risk = trans**2 @ wd + ss
    return _finish(t, risk)


def averaging_bound(
    problem: NQMProblem,
    lr: float,
    ema: float,
    batch_size,
    steps,
    precond_power: float = 0.0,
):
    r"""Theorem 2, eqn (49): an upper bound on the risk of the averaged iterate.

    .. math::
        A(\tilde\theta(t)) \le \left(\frac{r_1^{t+1} - r_2^{t+1}
        - \gamma(1-\alpha h)(r_1^t - r_2^t)}{r_1 - r_2}\right)^2 A(\theta(0))
        + \frac{\alpha c (1-\gamma)(1 + (1-\alpha h)\gamma)}
        {B h (2-\alpha h)(1+\gamma)(1-(1-\alpha h)\gamma)},

    with :math:`r_1 = 1-\alpha h`, :math:`r_2 = \gamma`. Undefined at
    :math:`\gamma = 1-\alpha h`.
    """
    b = float(validate_batch_size(batch_size, scalar=True))
    t, tt = _times(steps)
    hh, wd, wn = _parts(problem, precond_power)
    g = float(ema)
    r1 = 1.0 - lr * hh
    r2 = g
    with np.errstate(all="ignore"):
        trans = (r1 ** (tt + 1) - r2 ** (tt + 1) - g * r1 * (r1**tt - r2**tt)) / (
            r1 - r2
        )
        ss = averaging_steady_state(hh, lr, g) @ wn / b
        risk = trans**2 @ wd + ss
    return _finish(t, risk)


def sgd_steady_state(hh, lr):
    """:math:`\\lim_t E[\\theta_t^2]` per unit noise variance: :math:`\\alpha/(h(2-\\alpha h))`."""
    hh = np.asarray(hh, dtype=np.float64)
    return lr / (hh * (2.0 - lr * hh))


def momentum_steady_state(hh, lr, momentum):
    """Eqn (31) per unit noise: :math:`\\alpha(1+\\beta)/(h(2\\beta+2-\\alpha h)(1-\\beta))`."""
    hh = np.asarray(hh, dtype=np.float64)
    b = float(momentum)
    return lr * (1.0 + b) / (hh * (2.0 * b + 2.0 - lr * hh) * (1.0 - b))


def averaging_steady_state(hh, lr, ema):
    """Eqn (49)'s noise term per unit noise (the stationary variance of the average)."""
    hh = np.asarray(hh, dtype=np.float64)
    g = float(ema)
    lam = 1.0 - lr * hh
    return (
        lr
        * (1.0 - g)
        * (1.0 + lam * g)
        / (hh * (2.0 - lr * hh) * (1.0 + g) * (1.0 - lam * g))
    )


def steady_state_second_moment(hh, lr, momentum=0.0, ema=0.0):
    r"""Stationary :math:`E[\theta_o^2]` per unit noise variance, any combination.

    Solves the discrete Lyapunov equation :math:`Z = A Z A^\top + n n^\top` of
    each mode (a :math:`k^2 \times k^2` linear system, :math:`k \le 3`).
    Requires a stable setting.
    """
    from ._system import Features, system_matrices

    hh = np.asarray(hh, dtype=np.float64)
    feats = Features(momentum > 0, ema > 0)
    if not feats.momentum and not feats.ema:
        return sgd_steady_state(hh, lr)
    im, _, n, _ = system_matrices(hh, lr, momentum, ema, feats)
    k = feats.size
    a = -im
    a[..., np.arange(k), np.arange(k)] += 1.0
    kron = np.einsum("...ij,...kl->...ikjl", a, a).reshape(hh.shape + (k * k, k * k))
    lhs = np.eye(k * k) - kron
    rhs = (n[..., :, None] * n[..., None, :]).reshape(hh.shape + (k * k, 1))
    z = np.linalg.solve(lhs, rhs)[..., 0].reshape(hh.shape + (k, k))
    o = feats.out
    return z[..., o, o]


def steady_state_risk(
    problem: NQMProblem, lr: float, batch_size, momentum=0.0, ema=0.0, precond_power=0.0
):
    """:math:`\\lim_t E[L(\\theta_t)]` for a constant lr (any combination)."""
    b = validate_batch_size(batch_size)
    hh, _, wn = _modes(problem, float(precond_power))
    g = steady_state_second_moment(hh, lr, momentum, ema)
    out = np.sum(wn * g) / b
    return float(out) if np.ndim(out) == 0 else out
