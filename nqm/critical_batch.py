r"""The critical batch size as a function of the target, and the examples-vs-steps
trade-off of McCandlish et al. (2018).

Reaching a lower loss is reaching it later in training, so the critical batch
size as a function of the target, :math:`B_{\text{crit}}(L)`, is how it moves
during training (Zhang et al. 2019, appendix E.5, at a few targets; here at a
dense range). At each target the tuned steps :math:`S(B)` of a family are fitted
by McCandlish et al. (2018, eq. 2.11),

.. math:: S(B) = S_{\min}\left(1 + \frac{B_{\text{crit}}}{B}\right), \qquad
          E(B) = B\,S(B) = E_{\min}\left(1 + \frac{B}{B_{\text{crit}}}\right),

with :math:`E_{\min} = S_{\min} B_{\text{crit}}`, which is the hyperbola

.. math:: \left(\frac{S}{S_{\min}} - 1\right)\left(\frac{E}{E_{\min}} - 1\right) = 1 .

:func:`steps_examples_tradeoff` places measured points on those axes; how far
they fall from the hyperbola measures how well the model describes a family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .noise_scale import CriticalBatchFit, _curve, fit_critical_batch
from .problem import NQMProblem
from .search import Family, best_steps

__all__ = [
    "CriticalBatchPoint",
    "critical_batch_vs_target",
    "TradeOff",
    "steps_examples_tradeoff",
    "hyperbola",
]


@dataclass(frozen=True)
class CriticalBatchPoint:
    """A family's tuned steps at one target, and their critical-batch fit.

    Attributes:
        target: the loss.
        batch_sizes: shape ``(n,)``.
        steps: tuned steps at each batch size (``inf``: never reached).
        fit: the fit of McCandlish et al. (2018), or ``None`` when fewer than
            three batch sizes reach the target.
    """

    target: float
    batch_sizes: np.ndarray
    steps: np.ndarray
    fit: CriticalBatchFit | None

    @property
    def b_crit(self) -> float:
        """:math:`B_{\\text{crit}}` (``nan`` without a fit)."""
        return float("nan") if self.fit is None else self.fit.b_crit


def critical_batch_vs_target(
    problem: NQMProblem,
    family: Family | str,
    targets: Sequence[float],
    batch_sizes: Sequence[float],
    precond_power: float = 0.0,
    **options,
) -> list[CriticalBatchPoint]:
    """:math:`B_{\\text{crit}}(L)`: tune ``family`` at every batch size for each
    target and fit McCandlish et al. (2018, eq. 2.11).

    Args:
        problem: the NQM.
        family: a :class:`~nqm.Family`.
        targets: losses, shape ``(K,)`` (each ``> 0``).
        batch_sizes: shape ``(n,)``, ``n >= 3``; a range wide enough to show
            both regimes (:attr:`CriticalBatchFit.b_crit_in_range` says whether
            it did).
        precond_power: :math:`p`.
        **options: passed to :func:`nqm.best_steps`.

    Returns:
        One :class:`CriticalBatchPoint` per target, in the given order.

    Raises:
        ValueError: for fewer than three batch sizes, or what
            :func:`nqm.best_steps` rejects.
    """
    bs = np.asarray(batch_sizes, dtype=np.float64).ravel()
    if bs.size < 3:
        raise ValueError(f"batch_sizes needs at least 3 values, got {bs.size}")
    tg = np.asarray(targets, dtype=np.float64).ravel()
    if tg.size == 0:
        raise ValueError("targets must not be empty")
    out = []
    for target in tg:
        results = best_steps(problem, family, bs, float(target), precond_power,
                             **options)  # fmt: skip
        steps = np.array([r.steps for r in results], dtype=np.float64)
        fit = fit_critical_batch(bs, steps) if np.isfinite(steps).sum() >= 3 else None
        out.append(CriticalBatchPoint(float(target), bs.copy(), steps, fit))
    return out


@dataclass(frozen=True)
class TradeOff:
    """Measured points on the axes of McCandlish et al. (2018, fig. 1).

    Attributes:
        batch_sizes, steps, examples: the finite points, shape ``(n,)``, by
            increasing batch size (``examples = batch_sizes * steps``).
        s_min, e_min, b_crit: the fit (:math:`E_{\\min} = S_{\\min}
            B_{\\text{crit}}`).
        excess_steps: :math:`S/S_{\\min} - 1`.
        excess_examples: :math:`E/E_{\\min} - 1`.
        hyperbola_log_rmse: root-mean-square of :math:`\\log` of the product
            of the two excesses over the points where both are positive (0 on
            the hyperbola; 0.1 is about 10% off).
    """

    batch_sizes: np.ndarray
    steps: np.ndarray
    examples: np.ndarray
    s_min: float
    e_min: float
    b_crit: float
    excess_steps: np.ndarray
    excess_examples: np.ndarray
    hyperbola_log_rmse: float


def steps_examples_tradeoff(batch_sizes, steps) -> TradeOff:
    """Steps and examples of a measured curve, relative to their minima.

    Args:
        batch_sizes: shape ``(n,)``.
        steps: shape ``(n,)``; ``inf`` entries are dropped.

    Raises:
        ValueError: fewer than three finite points, or bad values.

    References:
        McCandlish et al. (2018), An empirical model of large-batch training,
        eqs. 2.7-2.11 and fig. 1.
    """
    b, s = _curve(batch_sizes, steps)
    fit = fit_critical_batch(b, s)
    e_min = fit.s_min * fit.b_crit
    x = b * s / e_min - 1.0
    y = s / fit.s_min - 1.0
    both = (x > 0) & (y > 0)
    rmse = (
        float(np.sqrt(np.mean(np.log(x[both] * y[both]) ** 2)))
        if np.any(both)
        else float("nan")
    )
    return TradeOff(b, s, b * s, fit.s_min, e_min, fit.b_crit, y, x, rmse)


def hyperbola(excess_examples):
    """The excess steps the model predicts: :math:`S/S_{\\min} - 1 = 1/(E/E_{\\min}
    - 1)`."""
    x = np.asarray(excess_examples, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 1.0 / x
