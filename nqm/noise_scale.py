r"""Critical batch size, scaling regimes, the information-theoretic lower bound,
and gradient noise scales.

* :func:`fit_critical_batch`: McCandlish et al. (2018),
  :math:`S(B) = S_{\min}(1 + B_{\text{crit}}/B)`, fitted in log space.
* :func:`scaling_regimes`: perfect scaling (log-log slope near -1), diminishing
  returns, and the regime where more batch buys nothing.
* :func:`steps_lower_bound`: no algorithm that sees ``B`` examples per step can
  beat the Bayes-optimal estimate of the optimum from all examples seen.
* :func:`noise_scales`: :math:`B_{\text{simple}} = \operatorname{tr}\Sigma / |G|^2`
  and :math:`B_{\text{noise}} = \operatorname{tr}(H\Sigma)/(G^\top H G)` along a
  trajectory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from .arguments import validate_batch_size
from .dynamics import second_moments
from .optimizer import Optimizer
from .problem import NQMProblem

__all__ = [
    "CriticalBatchFit",
    "fit_critical_batch",
    "ScalingRegimes",
    "scaling_regimes",
    "bayes_loss",
    "steps_lower_bound",
    "NoiseScales",
    "noise_scales",
]


def _curve(batch_sizes, steps):
    b = np.asarray(batch_sizes, dtype=np.float64).ravel()
    s = np.asarray(steps, dtype=np.float64).ravel()
    if b.shape != s.shape:
        raise ValueError(
            f"batch_sizes and steps differ in length ({b.size} vs {s.size})"
        )
    if np.any(~np.isfinite(b)) or np.any(b < 1):
        raise ValueError("batch_sizes must be finite and >= 1")
    keep = np.isfinite(s)
    if np.any(s[keep] <= 0):
        raise ValueError(
            "steps must be positive (or inf where the target is never reached)"
        )
    b, s = b[keep], s[keep]
    order = np.argsort(b)
    return b[order], s[order]


@dataclass(frozen=True)
class CriticalBatchFit:
    r"""A fit of :math:`S(B) = S_{\min}(1 + B_{\text{crit}}/B)`.

    Attributes:
        s_min: steps at infinite batch size.
        b_crit: critical batch size (where the fitted log-log slope is -1/2; the
            fitted curve needs twice :math:`S_{\min}` there).
        r2: coefficient of determination of :math:`\log S`.
        log_rmse: root-mean-square residual of :math:`\log S` (0.01 is 1%).
        departure_batch: the first batch size at which the *measured* local
            log-log slope rises above ``-(1 - tol)``: where perfect scaling ends.
        n_points: number of finite points used.
        b_crit_in_range: whether ``b_crit`` lies inside the measured batch sizes;
            if not, the curve shows no bend and ``s_min``, ``b_crit`` are
            extrapolations (e.g. a curve still on the -1 slope at the largest B).
    """

    s_min: float
    b_crit: float
    r2: float
    log_rmse: float
    departure_batch: float
    n_points: int
    b_crit_in_range: bool

    def predict(self, batch_size):
        """Fitted steps at ``batch_size``."""
        b = np.asarray(batch_size, dtype=np.float64)
        return self.s_min * (1.0 + self.b_crit / b)


def fit_critical_batch(batch_sizes, steps, tol: float = 0.2) -> CriticalBatchFit:
    r"""Fit :math:`S(B) = S_{\min}(1 + B_{\text{crit}}/B)` by least squares on
    :math:`\log S` (relative errors: a curve spans many decades).

    Args:
        batch_sizes: shape ``(n,)``.
        steps: shape ``(n,)``; ``inf`` entries (never reached) are ignored.
        tol: slope tolerance for ``departure_batch``.

    Raises:
        ValueError: fewer than 3 finite points, or bad values.

    References:
        McCandlish et al. (2018), An empirical model of large-batch training, eqn 2.11.
    """
    b, s = _curve(batch_sizes, steps)
    if b.size < 3:
        raise ValueError(f"need at least 3 finite points to fit, got {b.size}")
    log_s = np.log(s)
    # Linear start: S = a + c / B, weighted for relative error.
    design = np.stack([np.ones_like(b), 1.0 / b], axis=1) / s[:, None]
    (a0, c0), *_ = np.linalg.lstsq(design, np.ones_like(b), rcond=None)
    a0 = a0 if a0 > 0 else s.min()
    c0 = c0 if c0 > 0 else max(s.max() - a0, 1e-12) * b.min()
    x0 = np.log([a0, max(c0 / a0, 1e-12)])

    def resid(x):
        return np.log(np.exp(x[0]) * (1.0 + np.exp(x[1]) / b)) - log_s

    sol = optimize.least_squares(resid, x0, method="lm", xtol=1e-14, ftol=1e-14)
    s_min, b_crit = (float(v) for v in np.exp(sol.x))
    r = resid(sol.x)
    ss_tot = float(np.sum((log_s - log_s.mean()) ** 2))
    r2 = 1.0 - float(np.sum(r * r)) / ss_tot if ss_tot > 0 else 1.0
    regimes = scaling_regimes(b, s, tol=tol)
    depart = (
        regimes.batch_sizes[np.argmax(regimes.slopes > -(1.0 - tol))]
        if np.any(regimes.slopes > -(1.0 - tol))
        else math.inf
    )
    return CriticalBatchFit(
        s_min=s_min,
        b_crit=b_crit,
        r2=r2,
        log_rmse=float(np.sqrt(np.mean(r * r))),
        departure_batch=float(depart),
        n_points=int(b.size),
        b_crit_in_range=bool(b[0] <= b_crit <= b[-1]),
    )


@dataclass(frozen=True)
class ScalingRegimes:
    """Local log-log slopes between consecutive batch sizes and their regimes.

    Attributes:
        batch_sizes: left end of each segment, shape ``(n-1,)``.
        slopes: :math:`d\\log S / d\\log B` on each segment.
        regimes: ``"perfect"`` (slope <= -(1 - tol)), ``"maximal"`` (slope >=
            -tol: more batch buys next to nothing) or ``"diminishing"``.
    """

    batch_sizes: np.ndarray
    slopes: np.ndarray
    regimes: tuple[str, ...]


def scaling_regimes(batch_sizes, steps, tol: float = 0.2) -> ScalingRegimes:
    """Classify each segment of a steps-vs-batch-size curve.

    Raises:
        ValueError: fewer than 2 finite points or ``tol`` outside (0, 0.5).
    """
    if not 0.0 < tol < 0.5:
        raise ValueError(f"tol must lie in (0, 0.5), got {tol!r}")
    b, s = _curve(batch_sizes, steps)
    if b.size < 2:
        raise ValueError("need at least 2 finite points")
    slopes = np.diff(np.log(s)) / np.diff(np.log(b))
    labels = tuple(
        "perfect" if k <= -(1.0 - tol) else "maximal" if k >= -tol else "diminishing"
        for k in slopes
    )
    return ScalingRegimes(batch_sizes=b[:-1], slopes=slopes, regimes=labels)


def bayes_loss(problem: NQMProblem, n_examples) -> np.ndarray:
    r"""Smallest expected loss any estimator can reach from ``n`` examples.

    The optimum is unknown to the learner: relative to the start it is
    :math:`\theta^\ast \sim N(0, \operatorname{diag}(\text{init\_sq}))`. Each
    per-example gradient, wherever it is taken, reveals
    :math:`h_i\theta_i^\ast + \varepsilon_i` with :math:`\operatorname{Var}\varepsilon_i
    = c_i`, independently. After ``n`` examples the posterior variance of
    :math:`\theta_i^\ast` is :math:`(1/\text{init}_i + n h_i^2/c_i)^{-1}`, and the
    posterior mean is the Bayes-optimal point, so

    .. math:: L_{\min}(n) = \tfrac12 \sum_i \frac{w_i h_i}{1/\text{init}_i + n h_i^2/c_i}.

    Any optimizer's iterate after ``t`` steps of batch ``B`` is an estimator built
    from :math:`n = Bt` examples, hence :math:`E[L(\theta_t)] \ge L_{\min}(Bt)`.
    """
    n = np.asarray(n_examples, dtype=np.float64)[..., None]
    h, c, init, w = problem.h, problem.c, problem.init_sq, problem.weight
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(init > 0, 1.0 / init, np.inf) + np.where(
            c > 0, n * h * h / c, np.where(n > 0, np.inf, 0.0)
        )
        post = np.where(np.isinf(prec), 0.0, 1.0 / prec)
    return 0.5 * (post * (w * h)).sum(-1)


def steps_lower_bound(problem: NQMProblem, target: float, batch_size):
    """Fewest steps any algorithm can need at batch size ``B``: the smallest
    integer :math:`t \\ge 0` with :math:`L_{\\min}(B t) \\le` target (see
    :func:`bayes_loss`).

    Args:
        problem: the NQM.
        target: loss to reach (> 0).
        batch_size: scalar or array.

    Returns:
        int for scalar ``batch_size``, else an integer array.
    """
    tg = float(target)
    if not math.isfinite(tg) or tg <= 0:
        raise ValueError(f"target must be a finite positive loss, got {target!r}")
    bs = validate_batch_size(batch_size)
    if float(bayes_loss(problem, 0.0)) <= tg:
        out = np.zeros(bs.shape, dtype=np.int64)
        return int(out) if out.ndim == 0 else out
    lo, hi = 0.0, 1.0
    while float(bayes_loss(problem, hi)) > tg:
        lo, hi = hi, hi * 2.0
        if hi > 1e300:
            raise ValueError("target below what infinitely many examples can reach")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float(bayes_loss(problem, mid)) > tg:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    n_star = hi
    t = np.maximum(1, np.ceil(n_star / bs - 1e-9)).astype(np.int64)
    # exact integer correction
    t = np.where(bayes_loss(problem, bs * t) <= tg, t, t + 1)
    t = np.where((t > 1) & (bayes_loss(problem, bs * (t - 1)) <= tg), t - 1, t)
    return int(t) if t.ndim == 0 else t


@dataclass(frozen=True)
class NoiseScales:
    """Gradient noise scales along a trajectory (units: examples).

    Attributes:
        steps: shape ``(T,)``.
        b_simple: :math:`\\operatorname{tr}\\Sigma / E|G|^2`.
        b_noise: :math:`\\operatorname{tr}(H\\Sigma) / E[G^\\top H G]`.
    """

    steps: np.ndarray
    b_simple: np.ndarray
    b_noise: np.ndarray


def noise_scales(
    problem: NQMProblem, optimizer: Optimizer, batch_size, steps
) -> NoiseScales:
    r"""Gradient noise scales of McCandlish et al. (2018) along a trajectory.

    The true gradient at the iterate is :math:`G = H\theta_t`; the per-example
    covariance is :math:`\Sigma = C`. The NQM's iterate is random, so the ratios
    use its exact expectations:

    .. math:: B_{\text{simple}} = \frac{\sum_i w_i c_i}{\sum_i w_i h_i^2 E[\theta_i^2]},
              \qquad
              B_{\text{noise}} = \frac{\sum_i w_i h_i c_i}{\sum_i w_i h_i^3 E[\theta_i^2]}.

    Gradients are taken at the optimizer's iterate :math:`\theta` (whose dynamics do
    not depend on the averaging), not at the reported average.
    """
    b = float(validate_batch_size(batch_size, scalar=True))
    t = np.atleast_1d(np.asarray(steps, dtype=np.int64))
    plain = Optimizer(
        optimizer.lr, momentum=optimizer.momentum, precond_power=optimizer.precond_power
    )
    m2 = np.atleast_2d(second_moments(problem, plain, b, t))
    h, c, w = problem.h, problem.c, problem.weight
    with np.errstate(divide="ignore", invalid="ignore"):
        b_simple = np.sum(w * c) / (m2 @ (w * h * h))
        b_noise = np.sum(w * h * c) / (m2 @ (w * h**3))
    return NoiseScales(steps=t, b_simple=b_simple, b_noise=b_noise)
