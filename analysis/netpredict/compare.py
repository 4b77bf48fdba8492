r"""Prediction against measurement: like with like, with the measurement's error.

**Tuned curves** (:func:`curve_comparison`). At each batch size the log-ratio
:math:`\log(S_{\text{pred}}/S_{\text{meas}})`; the curves divided by their own
:math:`S_{\min}`, which removes the absolute step scale (it depends on what the
NQM leaves out) and keeps the shape; and the ranking of optimizers at the
smallest and largest batch size (:func:`ranking`).

**One setting, K seeds** (:func:`setting_comparison`). At a measured best
trial's hyperparameters, with its K repeats:

* the crossing :math:`\hat t` of the K-seed mean curve against the prediction's
  expected-loss crossing. The mean at step t has standard error
  :math:`\sigma_t/\sqrt K` (:math:`\sigma_t` the seeds' spread), so every
  crossing in the window

  .. math::
      t_{\text{lo}} = \min\{t \in G: E[L_t] - z\sigma_t/\sqrt K \le L^*\},\quad
      t_{\text{hi}} = \min\{t \in G: E[L_t] + z\sigma_t/\sqrt K \le L^*\}

  is consistent with the prediction at :math:`z =` :data:`MEAN_Z` (losses in
  NQM units, the network's minus the floor);
* the single-run crossings against the predicted first-passage law, by a
  two-sample Kolmogorov-Smirnov test (no crossing within the budget counts as
  the budget plus one in both samples), consistent when its p-value exceeds
  :data:`KS_ALPHA`;
* across batch sizes, the critical batch size of the mean-curve crossings and of
  the median single-run crossings, with percentile intervals from resampling the
  seeds (:func:`seed_bootstrap`), against the fits to the predicted crossings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from analysis.netscale.results import mean_curve_steps, steps_at

from .claims import Interval
from .prediction import fit_b_crit

__all__ = [
    "MEAN_Z",
    "KS_ALPHA",
    "SEED_LEVEL",
    "curve_comparison",
    "ranking",
    "crossing_window",
    "setting_comparison",
    "seed_bootstrap",
]

#: Half-width of the mean curve's Monte-Carlo band, in standard errors.
MEAN_Z = 4.0
#: Two-sided level of the seed-bootstrap intervals of the like-with-like
#: critical batch sizes (a consistency check, as strict as :data:`MEAN_Z`).
SEED_LEVEL = 0.999
#: Single-run crossings whose KS p-value against the predicted first-passage
#: law falls below this are inconsistent with it.
KS_ALPHA = 1e-3


def curve_comparison(
    pred_b: Sequence[int],
    pred_s: Sequence[float],
    pred_s_min: float,
    meas_b: Sequence[int],
    meas_s: Sequence[float],
    meas_s_min: float,
) -> list[dict[str, Any]]:
    r"""Per common batch size: both step counts, :math:`\log(S_p/S_m)` and
    both curves over their own :math:`S_{\min}` (``nan`` where undefined)."""
    pred = dict(zip(pred_b, pred_s, strict=True))
    meas = dict(zip(meas_b, meas_s, strict=True))
    rows = []
    for b in sorted(set(pred) & set(meas)):
        sp, sm = pred[b], meas[b]
        ok = math.isfinite(sp) and math.isfinite(sm) and sp > 0 and sm > 0
        rows.append(
            {
                "batch_size": int(b),
                "predicted": sp,
                "measured": sm,
                "log_ratio": math.log(sp / sm) if ok else math.nan,
                "predicted_normalised": sp / pred_s_min,
                "measured_normalised": sm / meas_s_min,
            }
        )
    return rows


def ranking(steps: Mapping[str, Mapping[int, float]], batch_size: int) -> list[str]:
    """Optimizer labels by steps at ``batch_size``, fewest first (absent and
    never-reaching ones last, ties by name)."""

    def key(name: str) -> tuple[float, str]:
        return (steps[name].get(batch_size, math.inf), name)

    return sorted(steps, key=key)


def crossing_window(
    grid: Sequence[int],
    expected: Sequence[float],
    stderr: Sequence[float],
    target: float,
    z: float = MEAN_Z,
) -> tuple[float, float]:
    """``(t_lo, t_hi)`` of the module docstring (``inf`` where never)."""
    g = np.asarray(grid, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    se = np.asarray(stderr, dtype=np.float64)

    def first(mask: np.ndarray) -> float:
        return float(g[np.argmax(mask)]) if mask.any() else math.inf

    return first(e - z * se <= target), first(e + z * se <= target)


def _curves(repeats: Sequence[Mapping[str, Any]], n: int) -> np.ndarray:
    return np.array(
        [[math.inf if v is None else v for v in r["curve"][:n]] for r in repeats],
        dtype=np.float64,
    )


def setting_comparison(
    repeats: Sequence[Mapping[str, Any]],
    predicted: Mapping[str, Any],
    target: float,
    floor: float,
    budget: int,
    *,
    scale: float = 1.0,
) -> dict[str, Any]:
    """Mean-curve and single-run crossings of K repeats against a prediction.

    Args:
        repeats: the K repeat records of one best trial (same grid).
        predicted: :func:`.prediction.setting_prediction` at the same
            hyperparameters, batch size and NQM target.
        target: the network's target.
        floor: the loss floor.
        budget: the trials' step budget.
        scale: NQM loss per unit of network loss above the floor
            (:attr:`.mapping.TargetMap.scale`; 1 for the excess mapping).

    Returns:
        ``mean_crossing`` (measured), ``window`` (t_lo, t_hi), ``mean_agrees``,
        ``single_crossings``, ``single_median``, ``ks_pvalue``,
        ``single_agrees`` and the predicted crossing, median and slopes.
    """
    grid = list(predicted["grid_steps"])
    n = min(len(r["curve"]) for r in repeats)
    if [int(s) for s in repeats[0]["curve_steps"][:n]] != grid[:n]:
        raise ValueError("repeats: evaluated on another grid than the prediction")
    curves = _curves(repeats, n)
    k = curves.shape[0]
    with np.errstate(invalid="ignore"):
        sd = curves.std(axis=0, ddof=1) if k > 1 else np.full(n, np.inf)
    se = np.where(np.isfinite(sd), scale * sd / math.sqrt(k), np.inf)
    t_lo, t_hi = crossing_window(
        grid[:n],
        np.asarray(predicted["expected_curve"][:n]),
        se,
        scale * (target - floor),
    )
    t_hat = mean_curve_steps(repeats, target)
    single = np.array([steps_at(r, target) for r in repeats], dtype=np.float64)
    passage = np.asarray(predicted["first_passage"], dtype=np.float64)
    pvalue = float(
        stats.ks_2samp(
            np.where(np.isfinite(single), single, budget + 1),
            np.where(np.isfinite(passage), passage, budget + 1),
        ).pvalue
    )
    return {
        "seeds": int(k),
        "mean_crossing": float(t_hat),
        "predicted_crossing": predicted["expected_crossing_grid"],
        "window": [t_lo, t_hi],
        "mean_agrees": bool(t_lo <= t_hat <= t_hi),
        "slope": predicted["slope"],
        "log_slope": predicted["log_slope"],
        "single_crossings": [float(s) for s in single],
        "single_median": float(np.median(single)),
        "predicted_first_passage_median": predicted["first_passage_median"],
        "ks_pvalue": pvalue,
        "single_agrees": bool(pvalue > KS_ALPHA),
    }


def seed_bootstrap(
    batch_sizes: Sequence[int],
    repeats: Sequence[Sequence[Mapping[str, Any]]],
    target: float,
    *,
    n_boot: int,
    level: float,
    rng: np.random.Generator,
) -> dict[str, Interval]:
    r"""Critical batch sizes of the mean-curve and of the median single-run
    crossings, with percentile intervals from resampling each batch size's seeds.

    Args:
        batch_sizes: shape ``(n,)``.
        repeats: per batch size, its K repeat records.
        target: the network's target.
        n_boot: bootstrap replicates.
        level: two-sided level of the intervals.
        rng: the resampling generator.

    Returns:
        ``{"mean": Interval, "median": Interval}`` (``nan`` ends when fewer
        than three batch sizes give a crossing).
    """

    def fits(groups: Sequence[Sequence[Mapping[str, Any]]]) -> tuple[float, float]:
        mean = [mean_curve_steps(g, target) for g in groups]
        median = [float(np.median([steps_at(r, target) for r in g])) for g in groups]
        return (
            fit_b_crit(batch_sizes, mean)["b_crit"],
            fit_b_crit(batch_sizes, median)["b_crit"],
        )

    point = fits(repeats)
    draws = []
    for _ in range(int(n_boot)):
        resampled = [[g[i] for i in rng.integers(0, len(g), len(g))] for g in repeats]
        draws.append(fits(resampled))
    arr = np.array(draws, dtype=np.float64).reshape(-1, 2)
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    out = {}
    for j, name in enumerate(("mean", "median")):
        col = arr[:, j][np.isfinite(arr[:, j])]
        if col.size and math.isfinite(point[j]):
            out[name] = Interval(
                point[j], float(np.percentile(col, lo)), float(np.percentile(col, hi))
            )
        else:
            out[name] = Interval(point[j], math.nan, math.nan)
    return out
