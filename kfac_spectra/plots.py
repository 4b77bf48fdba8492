"""Figures of the E.1, E.2 and E.4 analogues. Each function takes data and
returns a :class:`matplotlib.figure.Figure`; none computes a statistic.

Figures are built on :class:`~matplotlib.figure.Figure` directly (no pyplot), so
importing or calling these functions touches no global backend state.

References:
    Zhang et al. 2019, appendix E.1 (Figure 9), E.2 (Figures 10-11), E.4
    (Figure 12).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from kfac_spectra.gradient_stats import VarianceCurvatureComparison
from kfac_spectra.powerlaw import PowerLawFit, RankOverlay
from kfac_spectra.spectra import Histogram

__all__ = [
    "plot_power_law",
    "plot_spectra_evolution",
    "plot_training_curves",
    "plot_variance_vs_curvature",
]


def plot_spectra_evolution(
    steps: Sequence[int], histograms: Sequence[Histogram]
) -> Figure:
    """E.1: K-FAC eigenvalue histograms (log bins) at several training steps.

    Args:
        steps: (K,) training steps.
        histograms: (K,) histograms on log-spaced bins, one per step.

    Returns:
        The figure.

    Raises:
        ValueError: If the two sequences differ in length or are empty.
    """
    if len(steps) != len(histograms) or not steps:
        raise ValueError("histograms: need one histogram per step, at least one")
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for step, hist in zip(steps, histograms, strict=True):
        centers = np.sqrt(hist.edges[:-1] * hist.edges[1:])
        ax.step(centers, hist.counts, where="mid", label=f"step {step}")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("K-FAC eigenvalue")
    ax.set_ylabel("count per log bin")
    ax.set_title("K-FAC eigenspectrum during training")
    ax.legend(fontsize="small")
    return fig


def plot_variance_vs_curvature(
    comparisons: Mapping[str, VarianceCurvatureComparison],
) -> Figure:
    """E.2: per-direction gradient variance c against curvature h, log-log.

    One panel per block and one for all directions (``"overall"``), each with the
    line c = h, the 2x band, and the fitted slope, correlation and fraction
    within the band in its title.

    Args:
        comparisons: Name -> comparison (from
            :func:`kfac_spectra.gradient_stats.compare_variance_curvature`).

    Returns:
        The figure.

    Raises:
        ValueError: If ``comparisons`` is empty.
    """
    if not comparisons:
        raise ValueError("comparisons: need at least one")
    names = list(comparisons)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names, strict=False):
        comp = comparisons[name]
        ax.loglog(comp.curvature, comp.variance, ".", ms=1.5, alpha=0.4)
        if comp.curvature.size:
            lo = float(min(comp.curvature.min(), comp.variance.min()))
            hi = float(max(comp.curvature.max(), comp.variance.max()))
            grid = np.geomspace(lo, hi, 2)
            ax.loglog(grid, grid, "k-", lw=0.8)
            ax.fill_between(
                grid, grid / comp.factor, grid * comp.factor, color="k", alpha=0.1
            )
        ax.set_title(
            f"{name}\nslope {comp.log_slope:.2f}, r {comp.log_correlation:.2f}, "
            f"{comp.fraction_within:.0%} within {comp.factor:g}x",
            fontsize="small",
        )
        ax.set_xlabel("curvature h")
        ax.set_ylabel("gradient variance c")
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    return fig


def plot_power_law(overlay: RankOverlay, fit: PowerLawFit) -> Figure:
    """E.4: the rank-normalised K-FAC spectrum against the NQM's 1/i law.

    Args:
        overlay: From :func:`kfac_spectra.powerlaw.rank_overlay` (with ``fit``).
        fit: The fitted power law (exponent and interval go in the legend).

    Returns:
        The figure.
    """
    fig = Figure(figsize=(5.6, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.loglog(overlay.rank, overlay.normalized, "-", lw=1.5, label="K-FAC spectrum")
    ax.loglog(overlay.rank, overlay.reference, "k--", lw=1, label="1/i (NQM)")
    if overlay.reference_fit is not None:
        ax.loglog(
            overlay.rank,
            overlay.reference_fit,
            ":",
            lw=1.5,
            label=(
                f"fit i^-s, s = {fit.exponent:.2f} "
                f"[{fit.ci_low:.2f}, {fit.ci_high:.2f}]"
            ),
        )
    ax.axvspan(fit.rank_min, fit.rank_max, color="k", alpha=0.05)
    ax.set_xlabel("rank i")
    ax.set_ylabel("eigenvalue / largest")
    ax.set_title("K-FAC eigenvalues vs the 1/i law")
    ax.legend(fontsize="small")
    return fig


def plot_training_curves(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float], Sequence[float]]],
) -> Figure:
    """Training error against wall time and against iterations, one curve per
    method (the layout of Martens & Grosse 2015, Figure 4, with its per-iteration
    companion).

    Args:
        curves: ``{method: (iterations, seconds, errors)}``, equal lengths.

    Returns:
        A figure with two log-scale panels.
    """
    fig = Figure(figsize=(10, 4), layout="constrained")
    by_time, by_iter = fig.subplots(1, 2)
    for name, (iterations, seconds, errors) in curves.items():
        by_time.plot(seconds, errors, label=name)
        by_iter.plot(iterations, errors, label=name)
    by_time.set_xlabel("wall time (s)")
    by_iter.set_xlabel("iteration")
    for ax in (by_time, by_iter):
        ax.set_yscale("log")
        ax.set_ylabel("training error")
        ax.grid(True, which="both", alpha=0.3)
    by_iter.legend()
    return fig
