r"""Compare a ranked eigenspectrum with the NQM's :math:`h_i = 1/i`.

This is the check of Zhang et al. 2019, appendix E.4.

We fit :math:`\lambda_r \approx C r^{-s}` by least squares on
:math:`(\log r, \log\lambda_r)` over a rank window. The NQM's assumption is
:math:`s = 1`. Ranked eigenvalues are not independent observations (neighbouring
residuals are strongly correlated), so both intervals below are optimistic about
the fitting noise; they quantify how well a straight line describes the window, not
sampling variability of the network. Fitting at log-spaced ranks
(``num_points``) keeps each decade of rank equally weighted.

References:
    Zhang et al. 2019, section 3.5 and appendix E.4 (Figure 12).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "CIMethod",
    "LineFit",
    "PowerLawFit",
    "RankOverlay",
    "fit_line",
    "fit_power_law",
    "rank_overlay",
]


class CIMethod(StrEnum):
    """Confidence interval of the fitted exponent."""

    ANALYTIC = "analytic"
    """OLS standard error with a Student-t quantile (n - 2 degrees of freedom)."""
    BOOTSTRAP = "bootstrap"
    """Percentile interval of the slope over resampled (rank, eigenvalue) pairs."""


@dataclass(frozen=True)
class PowerLawFit:
    """:math:`\\lambda_r \\approx` ``prefactor`` :math:`\\cdot r^{-}` ``exponent``.

    Attributes:
        exponent: s (1 for the NQM's 1/i law).
        prefactor: C.
        ci_low: Lower end of the exponent's interval.
        ci_high: Upper end.
        confidence: Nominal coverage of the interval.
        method: How the interval was computed.
        rank_min: First rank of the window (1-based).
        rank_max: Last rank of the window.
        num_points: Points in the regression.
        r_squared: Coefficient of determination in log-log space.
    """

    exponent: float
    prefactor: float
    ci_low: float
    ci_high: float
    confidence: float
    method: CIMethod
    rank_min: int
    rank_max: int
    num_points: int
    r_squared: float


@dataclass(frozen=True)
class LineFit:
    """Least-squares line ``y = intercept + slope * x`` with an interval on the slope.

    Attributes:
        slope: OLS slope.
        intercept: OLS intercept.
        ci_low: Lower end of the slope's interval.
        ci_high: Upper end.
        r_squared: Coefficient of determination.
    """

    slope: float
    intercept: float
    ci_low: float
    ci_high: float
    r_squared: float


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """OLS slopes along the last axis (rows are independent data sets)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * yc).sum(axis=-1) / (xc * xc).sum(axis=-1)


def fit_line(
    x: ArrayLike,
    y: ArrayLike,
    *,
    method: CIMethod | str = CIMethod.ANALYTIC,
    confidence: float = 0.95,
    num_bootstrap: int = 1000,
    rng: np.random.Generator | None = None,
) -> LineFit:
    r"""Ordinary least squares with a confidence interval on the slope.

    Analytic: :math:`\hat\beta \pm t_{n-2} \hat\sigma / \sqrt{\sum (x-\bar x)^2}`.
    Bootstrap: percentile interval over ``num_bootstrap`` resamples of the pairs.

    Args:
        x: (n,) abscissae, not all equal.
        y: (n,) ordinates.
        method: Interval method.
        confidence: Coverage in (0, 1).
        num_bootstrap: Resamples for the bootstrap.
        rng: Generator (required for the bootstrap).

    Returns:
        The fit.

    Raises:
        ValueError: For n < 3, constant x, bad ``confidence``, or a bootstrap
            without ``rng``.
    """
    method = CIMethod(method)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 3 or np.ptp(x) == 0:
        raise ValueError("x, y: need two equal-length 1-D arrays, n >= 3, x varying")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = x.size
    slope = float(_slopes(x, y))
    intercept = float(y.mean() - slope * x.mean())
    residual = y - intercept - slope * x
    rss = float(residual @ residual)
    tss = float(((y - y.mean()) ** 2).sum())
    r_squared = 1.0 - rss / tss if tss > 0 else 1.0
    if method is CIMethod.ANALYTIC:
        se = math.sqrt(rss / (n - 2) / float(((x - x.mean()) ** 2).sum()))
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 2)) * se
        low, high = slope - half, slope + half
    else:
        if rng is None:
            raise ValueError("rng: the bootstrap needs a numpy Generator")
        pick = rng.integers(0, n, (num_bootstrap, n))
        boot = _slopes(x[pick], y[pick])
        boot = boot[np.isfinite(boot)]
        tail = (1 - confidence) / 2
        low, high = (float(q) for q in np.quantile(boot, [tail, 1 - tail]))
    return LineFit(slope, intercept, low, high, r_squared)


def fit_power_law(
    eigenvalues: ArrayLike,
    *,
    rank_min: int = 1,
    rank_max: int | None = None,
    num_points: int | None = None,
    method: CIMethod | str = CIMethod.ANALYTIC,
    confidence: float = 0.95,
    num_bootstrap: int = 1000,
    rng: np.random.Generator | None = None,
) -> PowerLawFit:
    r"""Fit the power-law exponent of eigenvalue against rank.

    .. math:: \log\lambda_r = \log C - s \log r + \varepsilon_r,
       \quad r \in [r_{\min}, r_{\max}]

    Args:
        eigenvalues: Spectrum; sorted into descending order here (rank 1 =
            largest).
        rank_min: First rank of the window (1-based).
        rank_max: Last rank (default: the last positive eigenvalue).
        num_points: Fit at this many log-spaced distinct ranks in the window
            (default: every rank).
        method: Interval method (see :func:`fit_line`).
        confidence: Interval coverage in (0, 1).
        num_bootstrap: Bootstrap resamples.
        rng: Generator for the bootstrap (required for it).

    Returns:
        The fit.

    Raises:
        ValueError: For a window with fewer than 3 positive eigenvalues, bad
            ``confidence``, or a bootstrap without ``rng``.
    """
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())[::-1]
    positive = int(np.sum(values > 0))
    rank_max = positive if rank_max is None else min(rank_max, positive)
    if rank_min < 1 or rank_max - rank_min + 1 < 3:
        raise ValueError(
            f"rank window [{rank_min}, {rank_max}] needs >= 3 positive eigenvalues"
        )
    ranks = np.arange(rank_min, rank_max + 1)
    if num_points is not None:
        if num_points < 3:
            raise ValueError(f"num_points must be >= 3, got {num_points}")
        ranks = np.unique(np.round(np.geomspace(rank_min, rank_max, num_points)))
        ranks = ranks.astype(np.int64)
    line = fit_line(
        np.log(ranks.astype(np.float64)),
        np.log(values[ranks - 1]),
        method=method,
        confidence=confidence,
        num_bootstrap=num_bootstrap,
        rng=rng,
    )
    return PowerLawFit(
        exponent=-line.slope,
        prefactor=math.exp(line.intercept),
        ci_low=-line.ci_high,
        ci_high=-line.ci_low,
        confidence=confidence,
        method=CIMethod(method),
        rank_min=int(ranks[0]),
        rank_max=int(ranks[-1]),
        num_points=int(ranks.size),
        r_squared=line.r_squared,
    )


@dataclass(frozen=True)
class RankOverlay:
    """A spectrum and the NQM's 1/i law on common normalised axes (for E.4 plots).

    Attributes:
        rank: (d,) ranks 1..d.
        rank_fraction: (d,) ``rank / d``.
        normalized: (d,) :math:`\\lambda_r / \\lambda_1`.
        reference: (d,) :math:`1/r` (the NQM's :math:`h_r / h_1`).
        reference_fit: (d,) :math:`r^{-s}` for the fitted exponent s, or ``None``.
    """

    rank: np.ndarray
    rank_fraction: np.ndarray
    normalized: np.ndarray
    reference: np.ndarray
    reference_fit: np.ndarray | None


def rank_overlay(eigenvalues: ArrayLike, fit: PowerLawFit | None = None) -> RankOverlay:
    """Rank-normalised spectrum with the 1/i reference.

    Args:
        eigenvalues: Spectrum (any order; sorted descending here).
        fit: Optional fit whose curve :math:`(\\text{prefactor}/\\lambda_1) r^{-s}`
            is added.

    Returns:
        The overlay data.

    Raises:
        ValueError: If the largest eigenvalue is not positive.
    """
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())[::-1]
    if values.size == 0 or values[0] <= 0:
        raise ValueError("eigenvalues: need a positive largest eigenvalue")
    rank = np.arange(1, values.size + 1)
    fitted = None
    if fit is not None:
        fitted = fit.prefactor / values[0] * rank.astype(np.float64) ** -fit.exponent
    return RankOverlay(
        rank=rank,
        rank_fraction=rank / values.size,
        normalized=values / values[0],
        reference=1.0 / rank,
        reference_fit=fitted,
    )
