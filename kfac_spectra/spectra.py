r"""K-FAC Fisher eigenspectra: per-layer factor eigenvalues and their products.

A K-FAC block :math:`S \otimes A` has the eigenvalues :math:`\lambda_{S,i}\lambda_{A,j}`
(all products), and the K-FAC Fisher is block diagonal, so its spectrum is the
union of these products over layers (Zhang et al. 2019, appendix E.1). A layer with
m x n factors has mn eigenvalues, so we avoid forming them when only

* the top k are wanted: with both factor spectra sorted in descending order and
  non-negative, a product :math:`\lambda_{S,i}\lambda_{A,j}` is dominated by all
  :math:`(i', j') \le (i, j)`, so the top k lie among the pairs with
  :math:`(i+1)(j+1) \le k` -- at most :math:`k H_k \approx k \ln k` candidates per
  layer, from which a partial sort picks the k largest (exact, ties included);
* a histogram on log-spaced bins is wanted: the number of products at or above an
  edge e is :math:`\sum_i \#\{j : \lambda_{A,j} \ge e / \lambda_{S,i}\}`, one
  ``searchsorted`` per (edge, eigenvalue of the smaller factor), i.e.
  :math:`O(B \min(m,n) \log\max(m,n))` per layer for B bins.

Eigenvalues are computed in float64. Factors are positive semi-definite; negative
eigenvalues within round-off (``PSD_TOL`` times the largest magnitude) are set to
zero, larger ones are an error.

References:
    Zhang et al. 2019, appendix E.1 (Figure 9) and E.4 (Figure 12);
    Martens and Grosse 2015, section 3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

__all__ = [
    "PSD_TOL",
    "FactorSpectrum",
    "Histogram",
    "SpectrumEvolution",
    "eigenvalue_histogram",
    "factor_eigenvalues",
    "factor_spectra",
    "factor_spectra_from_eigenvalues",
    "histogram_evolution",
    "kfac_eigenvalues",
    "log_bins",
    "spectrum_evolution",
    "top_k_eigenvalues",
]

PSD_TOL = 1e-6
"""Negative eigenvalues down to ``-PSD_TOL * max|eigenvalue|`` are round-off."""


def _clean(values: ArrayLike, what: str) -> np.ndarray:
    """Validate PSD eigenvalues, clip round-off negatives, sort descending."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"{what}: eigenvalues must be finite and non-empty")
    scale = np.abs(values).max()
    if values.min() < -PSD_TOL * scale:
        raise ValueError(
            f"{what}: factor is not positive semi-definite (eigenvalue "
            f"{values.min():.3g} vs largest magnitude {scale:.3g})"
        )
    return np.sort(np.clip(values, 0.0, None))[::-1]


def factor_eigenvalues(
    factor: torch.Tensor | np.ndarray, name: str = "factor"
) -> np.ndarray:
    """Eigenvalues of one Kronecker factor, float64, descending, clipped at 0.

    Args:
        factor: (m, m) symmetric PSD matrix, or (m,) holding a diagonal factor.
        name: Used in error messages.

    Returns:
        (m,) eigenvalues.

    Raises:
        ValueError: If the factor is not square/1-D, not finite, or clearly not PSD.
    """
    if isinstance(factor, torch.Tensor):
        factor = factor.detach().to("cpu", torch.float64).numpy()
    factor = np.asarray(factor, dtype=np.float64)
    if factor.ndim == 1:
        return _clean(factor, name)
    if factor.ndim != 2 or factor.shape[0] != factor.shape[1]:
        raise ValueError(f"{name}: expected a square matrix, got {factor.shape}")
    return _clean(np.linalg.eigvalsh(0.5 * (factor + factor.T)), name)


@dataclass(frozen=True)
class FactorSpectrum:
    """Eigenvalues of the two Kronecker factors of one layer (descending, >= 0).

    The layer's K-FAC eigenvalues are all products ``first[i] * second[j]``; which
    factor is "first" does not matter for the spectrum.

    Attributes:
        first: (m,) eigenvalues of one factor (e.g. S).
        second: (n,) eigenvalues of the other (e.g. A).
    """

    first: np.ndarray
    second: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "first", _clean(self.first, "first"))
        object.__setattr__(self, "second", _clean(self.second, "second"))

    @property
    def size(self) -> int:
        """Number of K-FAC eigenvalues, m * n."""
        return self.first.size * self.second.size


def factor_spectra(
    factors: Mapping[str, tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]],
) -> dict[str, FactorSpectrum]:
    """Eigenvalues of every layer's factors.

    Args:
        factors: ``name -> (A, S)`` as returned by ``kfac_spectra.compute_factors``
            (each a square PSD matrix or a 1-D diagonal).

    Returns:
        ``name -> FactorSpectrum(first=eig(S), second=eig(A))``.
    """
    return {
        name: FactorSpectrum(
            factor_eigenvalues(s, f"{name}.S"), factor_eigenvalues(a, f"{name}.A")
        )
        for name, (a, s) in factors.items()
    }


def factor_spectra_from_eigenvalues(
    eigendecompositions: Mapping[str, tuple],
) -> dict[str, FactorSpectrum]:
    """Factor spectra from ``KFAC.eigenbases()``-style tuples.

    Args:
        eigendecompositions: ``name -> (eigvals_S, U_S, eigvals_A, U_A)`` (vectors
            are ignored; eigenvalues in any order, or a diagonal for A).

    Returns:
        ``name -> FactorSpectrum(first=eigvals_S, second=eigvals_A)``.
    """
    out = {}
    for name, (eval_s, _, eval_a, _) in eigendecompositions.items():
        values = [
            v.detach().to("cpu", torch.float64).numpy()
            if isinstance(v, torch.Tensor)
            else v
            for v in (eval_s, eval_a)
        ]
        out[name] = FactorSpectrum(*values)
    return out


def _as_list(spectra: Mapping[str, FactorSpectrum] | Sequence[FactorSpectrum]) -> list:
    values = list(spectra.values()) if isinstance(spectra, Mapping) else list(spectra)
    if not values:
        raise ValueError("spectra: need at least one layer")
    return values


def kfac_eigenvalues(
    spectra: Mapping[str, FactorSpectrum] | Sequence[FactorSpectrum],
    *,
    max_size: int = 50_000_000,
) -> np.ndarray:
    """All K-FAC eigenvalues, merged across layers, sorted descending.

    Args:
        spectra: Per-layer factor spectra.
        max_size: Refuse to materialise more values than this.

    Returns:
        (sum of m*n,) float64 eigenvalues.

    Raises:
        ValueError: If the spectrum has more than ``max_size`` values (use
            :func:`top_k_eigenvalues` or :func:`eigenvalue_histogram`).
    """
    layers = _as_list(spectra)
    total = sum(s.size for s in layers)
    if total > max_size:
        raise ValueError(
            f"max_size: the spectrum has {total} values (> {max_size}); ask for the "
            "top k or a histogram instead"
        )
    return np.sort(
        np.concatenate([np.outer(s.first, s.second).ravel() for s in layers])
    )[::-1]


def _top_candidates(first: np.ndarray, second: np.ndarray, k: int) -> np.ndarray:
    """Products of the pairs (i, j) with (i+1)(j+1) <= k (both sorted descending)."""
    rows = min(first.size, k)
    per_row = np.minimum(second.size, k // np.arange(1, rows + 1))
    per_row = per_row[per_row > 0]
    starts = np.cumsum(per_row) - per_row
    cols = np.arange(per_row.sum()) - np.repeat(starts, per_row)
    return np.repeat(first[: per_row.size], per_row) * second[cols]


def top_k_eigenvalues(
    spectra: Mapping[str, FactorSpectrum] | Sequence[FactorSpectrum], k: int
) -> np.ndarray:
    """The k largest K-FAC eigenvalues over all layers, descending (exact).

    Args:
        spectra: Per-layer factor spectra.
        k: How many (fewer are returned if the spectrum is smaller).

    Returns:
        (min(k, total),) float64 eigenvalues.

    Raises:
        ValueError: If ``k`` < 1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    candidates = np.concatenate(
        [_top_candidates(s.first, s.second, k) for s in _as_list(spectra)]
    )
    if candidates.size > k:
        candidates = np.partition(candidates, candidates.size - k)[-k:]
    return np.sort(candidates)[::-1]


def log_bins(low: float, high: float, num_bins: int) -> np.ndarray:
    """``num_bins + 1`` log-spaced edges from ``low`` to ``high``.

    Raises:
        ValueError: Unless 0 < low < high and num_bins >= 1.
    """
    if not (0 < low < high) or num_bins < 1:
        raise ValueError(
            f"need 0 < low < high and num_bins >= 1, got {low}, {high}, {num_bins}"
        )
    return np.geomspace(low, high, num_bins + 1)


@dataclass(frozen=True)
class Histogram:
    """Counts of K-FAC eigenvalues in half-open bins ``[edges[b], edges[b+1])``.

    Attributes:
        edges: (B+1,) increasing positive edges.
        counts: (B,) int64 counts.
        below: Eigenvalues below ``edges[0]`` (including zeros).
        above: Eigenvalues at or above ``edges[-1]``.
    """

    edges: np.ndarray
    counts: np.ndarray
    below: int
    above: int

    @property
    def total(self) -> int:
        """All eigenvalues counted."""
        return int(self.counts.sum()) + self.below + self.above


def _count_at_least(
    first: np.ndarray, second: np.ndarray, edges: np.ndarray
) -> np.ndarray:
    """For each edge e, the number of pairs with ``first[i] * second[j] >= e``."""
    outer, inner = (first, second) if first.size <= second.size else (second, first)
    outer = outer[outer > 0]
    inner_ascending = inner[::-1]
    thresholds = edges[None, :] / outer[:, None]
    below = np.searchsorted(inner_ascending, thresholds.ravel(), side="left")
    return (inner.size - below).reshape(thresholds.shape).sum(axis=0)


def eigenvalue_histogram(
    spectra: Mapping[str, FactorSpectrum] | Sequence[FactorSpectrum],
    edges: ArrayLike,
) -> Histogram:
    """Histogram of all K-FAC eigenvalues without forming them.

    Args:
        spectra: Per-layer factor spectra.
        edges: (B+1,) strictly increasing positive bin edges (see :func:`log_bins`).

    Returns:
        The histogram.

    Raises:
        ValueError: If ``edges`` are not strictly increasing and positive.
    """
    edges = np.asarray(edges, dtype=np.float64)
    if (
        edges.ndim != 1
        or edges.size < 2
        or edges[0] <= 0
        or np.any(np.diff(edges) <= 0)
    ):
        raise ValueError("edges: need >= 2 strictly increasing positive values")
    layers = _as_list(spectra)
    at_least = sum(_count_at_least(s.first, s.second, edges) for s in layers)
    total = sum(s.size for s in layers)
    counts = (at_least[:-1] - at_least[1:]).astype(np.int64)
    return Histogram(edges, counts, int(total - at_least[0]), int(at_least[-1]))


@dataclass(frozen=True)
class SpectrumEvolution:
    """Top eigenvalues at a sequence of training steps.

    Attributes:
        steps: (T,) iteration numbers.
        eigenvalues: (T, k) top-k eigenvalues per step, descending.
    """

    steps: np.ndarray
    eigenvalues: np.ndarray

    def log_change(self, reference: int = -1) -> np.ndarray:
        """RMS over ranks of :math:`\\log\\lambda_r(t) - \\log\\lambda_r(t_{ref})`.

        Ranks where either eigenvalue is zero are left out.

        Args:
            reference: Row index of the reference step (default: the last).

        Returns:
            (T,) distances; 0 at the reference.
        """
        ref = self.eigenvalues[reference]
        out = np.empty(len(self.steps))
        for t, row in enumerate(self.eigenvalues):
            keep = (row > 0) & (ref > 0)
            diff = np.log(row[keep]) - np.log(ref[keep])
            out[t] = np.sqrt(np.mean(diff**2)) if keep.any() else np.nan
        return out


def spectrum_evolution(
    steps: Sequence[int],
    snapshots: Sequence[Mapping[str, FactorSpectrum]],
    k: int,
) -> SpectrumEvolution:
    """Top-k spectrum at every snapshot of the factors.

    Args:
        steps: Iteration of each snapshot.
        snapshots: Per-layer factor spectra at each step.
        k: Eigenvalues kept per step (limited by the smallest spectrum).

    Returns:
        The evolution.

    Raises:
        ValueError: If lengths differ or there are no snapshots.
    """
    if len(steps) != len(snapshots) or not snapshots:
        raise ValueError("steps and snapshots must be non-empty and of equal length")
    k = min(k, *(sum(s.size for s in _as_list(snap)) for snap in snapshots))
    rows = [top_k_eigenvalues(snap, k) for snap in snapshots]
    return SpectrumEvolution(np.asarray(steps), np.stack(rows))


def histogram_evolution(
    snapshots: Sequence[Mapping[str, FactorSpectrum]], edges: ArrayLike
) -> np.ndarray:
    """(T, B) histogram counts of the spectrum at every snapshot, same edges."""
    return np.stack([eigenvalue_histogram(s, edges).counts for s in snapshots])
