r"""Tables from the trial records: steps to result, thresholds, critical batch sizes.

Everything here is computed from the recorded curves, never by retraining.

* **Steps to result** of a trial at a threshold :math:`\tau` is the first evaluated
  step whose metric is :math:`\le \tau` (:math:`\infty` when none is). For
  :math:`\tau` at or above the sweep's target this is exactly what a trial
  stopped at :math:`\tau` would have reported, since the curve up to the first
  crossing is recorded; thresholds below the target are refused (the trials
  stopped at the target).
* **Steps to result at a batch size** is the fewest steps over its tuning trials
  (Shallue et al. 2018, section 3.2), with that trial's hyperparameters; ties go
  to the lower trial index.
* **Repeats** (``--seeds K``): the K runs of the best trial with independent
  seeds give two quantities. The per-seed first crossings are first-passage
  times (Shallue's steps to result, one per seed); the crossing of the K-seed
  *mean* curve estimates the first :math:`t` with :math:`E[L_t] \le \tau`, the
  NQM's ``steps_to_target``. Near a flat noise floor the two differ widely.
* **Critical batch size**: the fit :math:`S(B) = S_{\min}(1 + B_{\text{crit}}/B)`
  of :func:`nqm.noise_scale.fit_critical_batch` to the steps at each batch size,
  with a percentile bootstrap interval: the trials within each batch size are
  resampled with replacement, the minimum and the fit redone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from nqm.noise_scale import fit_critical_batch

from .trial import Status

__all__ = [
    "steps_at",
    "best_record",
    "steps_table",
    "threshold_table",
    "mean_curve_steps",
    "critical_batch_table",
    "bootstrap_critical_batch",
    "STEPS_COLUMNS",
    "CRITICAL_COLUMNS",
]

#: The fixed leading columns of ``steps.csv`` (the best hyperparameters follow).
STEPS_COLUMNS: tuple[str, ...] = (
    "optimizer",
    "batch_size",
    "steps",
    "trials",
    "feasible",
    "reached",
    "best_trial",
    "seeds",
    "mean_curve_steps",
    "median_seed_steps",
)

#: Columns of ``critical_batch.csv``.
CRITICAL_COLUMNS: tuple[str, ...] = (
    "optimizer",
    "threshold",
    "b_crit",
    "b_crit_low",
    "b_crit_high",
    "s_min",
    "s_min_low",
    "s_min_high",
    "level",
    "n_boot",
    "n_boot_ok",
    "r2",
    "n_points",
    "b_crit_in_range",
)


def _check_threshold(record: Mapping[str, Any], threshold: float) -> None:
    if record.get("repeat", 0) == 0 and threshold < float(record["target"]):
        raise ValueError(
            f"threshold {threshold!r} lies below the sweep's target "
            f"{record['target']!r}: the trials stopped there"
        )


def steps_at(record: Mapping[str, Any], threshold: float | None = None) -> float:
    """The first evaluated step with metric ``<= threshold`` (``inf`` if none).

    Args:
        record: a trial record (``curve_steps``, ``curve``, ``target``).
        threshold: default: the record's own target.

    Raises:
        ValueError: for a threshold below the target of a tuning trial.
    """
    tau = float(record["target"]) if threshold is None else float(threshold)
    _check_threshold(record, tau)
    for step, value in zip(record["curve_steps"], record["curve"], strict=True):
        if value is None:  # non-finite: the run diverged here
            break
        if value <= tau:
            return float(step)
    return math.inf


def _group(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], list]:
    groups: dict[tuple[str, int], list] = defaultdict(list)
    for r in records:
        groups[(str(r["optimizer"]), int(r["batch_size"]))].append(r)
    return groups


def best_record(
    records: Sequence[Mapping[str, Any]], threshold: float | None = None
) -> Mapping[str, Any] | None:
    """The tuning trial (``repeat == 0``) with the fewest steps to ``threshold``.

    Ties go to the lower trial index; ``None`` when no trial reaches it.
    """
    best, best_key = None, (math.inf, math.inf)
    for r in records:
        if r.get("repeat", 0) != 0:
            continue
        key = (steps_at(r, threshold), int(r["trial"]))
        if key[0] < math.inf and key < best_key:
            best, best_key = r, key
    return best


def mean_curve_steps(
    repeats: Sequence[Mapping[str, Any]], threshold: float | None = None
) -> float:
    r"""First evaluated step at which the mean curve of the repeats is ``<= threshold``.

    .. math:: \hat t = \min\{t : \tfrac1K\textstyle\sum_k L_k(t) \le \tau\}

    over the steps every repeat evaluated; a diverged repeat makes the mean
    infinite from its divergence on.
    """
    if not repeats:
        return math.nan
    tau = float(repeats[0]["target"]) if threshold is None else float(threshold)
    steps = repeats[0]["curve_steps"]
    for r in repeats[1:]:
        if r["curve_steps"][: len(steps)] != steps[: len(r["curve_steps"])]:
            raise ValueError("repeats evaluated at different steps")
    n = min(len(r["curve_steps"]) for r in repeats)
    values = np.array(
        [[math.inf if v is None else v for v in r["curve"][:n]] for r in repeats],
        dtype=np.float64,
    )
    mean = values.mean(axis=0)
    hit = np.nonzero(mean <= tau)[0]
    return float(steps[hit[0]]) if hit.size else math.inf


def steps_table(
    records: Iterable[Mapping[str, Any]], threshold: float | None = None
) -> list[dict[str, Any]]:
    """Per (optimizer, batch size): steps to result and the best hyperparameters.

    Returns:
        One row per group, sorted by optimizer then batch size, with the columns
        :data:`STEPS_COLUMNS` then ``hp_<name>`` for each hyperparameter of the
        best trial. ``steps`` is ``inf`` when no trial reached the threshold;
        ``feasible`` counts trials that did not diverge; the repeat columns are
        empty without repeats.
    """
    rows = []
    for (opt, b), group in sorted(_group(records).items()):
        tuning = [r for r in group if r.get("repeat", 0) == 0]
        repeats = [r for r in group if r.get("repeat", 0) > 0]
        best = best_record(tuning, threshold)
        row: dict[str, Any] = {
            "optimizer": opt,
            "batch_size": b,
            "steps": math.inf if best is None else steps_at(best, threshold),
            "trials": len(tuning),
            "feasible": sum(r["status"] != Status.DIVERGED for r in tuning),
            "reached": sum(steps_at(r, threshold) < math.inf for r in tuning),
            "best_trial": None if best is None else int(best["trial"]),
            "seeds": len(repeats),
            "mean_curve_steps": None,
            "median_seed_steps": None,
        }
        if repeats:
            row["mean_curve_steps"] = mean_curve_steps(repeats, threshold)
            row["median_seed_steps"] = float(
                np.median([steps_at(r, threshold) for r in repeats])
            )
        if best is not None:
            row.update({f"hp_{k}": v for k, v in best["hparams"].items()})
        rows.append(row)
    return rows


def threshold_table(
    records: Sequence[Mapping[str, Any]], thresholds: Sequence[float]
) -> list[dict[str, Any]]:
    """Steps to result at each threshold (the measured loss-threshold study).

    Returns:
        Rows ``optimizer, batch_size, threshold, steps`` (and the best trial).
    """
    rows = []
    for tau in thresholds:
        for row in steps_table(records, tau):
            rows.append(
                {
                    "optimizer": row["optimizer"],
                    "batch_size": row["batch_size"],
                    "threshold": float(tau),
                    "steps": row["steps"],
                    "best_trial": row["best_trial"],
                }
            )
    return rows


def _steps_matrix(
    tuning: Mapping[int, Sequence[Mapping[str, Any]]], threshold: float | None
) -> tuple[np.ndarray, list[np.ndarray]]:
    sizes = np.array(sorted(tuning), dtype=np.float64)
    steps = [
        np.array([steps_at(r, threshold) for r in tuning[int(b)]], dtype=np.float64)
        for b in sizes
    ]
    return sizes, steps


def _resample_size(m: int, fraction: float) -> int:
    return max(1, math.ceil(fraction * m))


def bootstrap_critical_batch(
    batch_sizes: np.ndarray,
    trial_steps: Sequence[np.ndarray],
    *,
    n_boot: int,
    level: float,
    rng: np.random.Generator,
    resample_fraction: float = 0.5,
) -> dict[str, float]:
    r"""Fit :math:`S(B) = S_{\min}(1+B_{\text{crit}}/B)` with a percentile bootstrap.

    Args:
        batch_sizes: shape ``(n,)``.
        trial_steps: for each batch size, the steps of its trials, shape
            ``(m_b,)`` (``inf`` for trials that did not reach the target; 0, a
            target met at initialisation, is treated like ``inf``).
        n_boot: bootstrap replicates.
        level: two-sided confidence level in (0, 1).
        rng: the resampling generator.
        resample_fraction: each replicate draws
            :math:`k = \lceil f m_b \rceil` of the :math:`m_b` trials (with
            replacement) at every batch size.

    The replicates are an m-out-of-n bootstrap: the ordinary bootstrap of a
    minimum is inconsistent (a resample's minimum equals the sample's with
    probability :math:`1-(1-1/m)^m \approx 0.63`, so its spread is too narrow),
    and drawing fewer than m restores the spread. On synthetic trial sets from a
    known S(B) (``tests/analysis/test_netscale_results.py``) the nominal 90%
    interval covered the true :math:`B_{\text{crit}}` 77% of the time with
    :math:`f = 1` and 95% with :math:`f = 1/2`.

    Returns:
        ``b_crit, s_min`` (the fit to the per-batch minima, ``nan`` when fewer
        than 3 are finite), their ``_low``/``_high`` percentile limits,
        ``n_boot_ok`` (replicates with a fit), ``r2``, ``n_points``,
        ``b_crit_in_range``.

    References:
        McCandlish et al. (2018), eqn 2.11; Efron & Tibshirani (1993), ch. 13;
        Bickel, Götze & van Zwet (1997), Resampling fewer than n observations.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if not 0 < resample_fraction <= 1:
        raise ValueError(
            f"resample_fraction must lie in (0, 1], got {resample_fraction!r}"
        )
    # A threshold met at step 0 carries no scaling information: such batch
    # sizes are left out of the fit like those that never reach it.
    trial_steps = [np.where(s > 0, s, math.inf) for s in trial_steps]
    best = np.array([s.min() if s.size else math.inf for s in trial_steps])
    out = dict.fromkeys(
        ("b_crit", "b_crit_low", "b_crit_high", "s_min", "s_min_low", "s_min_high"),
        math.nan,
    )
    out.update(n_boot_ok=0, r2=math.nan, n_points=int(np.isfinite(best).sum()))
    out["b_crit_in_range"] = False
    if np.isfinite(best).sum() < 3:
        return out
    fit = fit_critical_batch(batch_sizes, best)
    out.update(
        b_crit=fit.b_crit,
        s_min=fit.s_min,
        r2=fit.r2,
        n_points=fit.n_points,
        b_crit_in_range=fit.b_crit_in_range,
    )
    fits = []
    for _ in range(int(n_boot)):
        mins = np.array(
            [
                s[rng.integers(0, s.size, s.size)].min() if s.size else math.inf
                for s in trial_steps
            ]
        )
        if np.isfinite(mins).sum() < 3:
            continue
        f = fit_critical_batch(batch_sizes, mins)
        fits.append((f.b_crit, f.s_min))
    if fits:
        arr = np.array(fits)
        lo, hi = 50 * (1 - level), 50 * (1 + level)
        out.update(
            b_crit_low=float(np.percentile(arr[:, 0], lo)),
            b_crit_high=float(np.percentile(arr[:, 0], hi)),
            s_min_low=float(np.percentile(arr[:, 1], lo)),
            s_min_high=float(np.percentile(arr[:, 1], hi)),
            n_boot_ok=len(fits),
        )
    return out


def critical_batch_table(
    records: Iterable[Mapping[str, Any]],
    *,
    n_boot: int = 200,
    level: float = 0.9,
    seed: int = 0,
    thresholds: Sequence[float | None] = (None,),
) -> list[dict[str, Any]]:
    """Per optimizer (and threshold): the critical batch size with its interval.

    Args:
        records: trial records (repeats are ignored).
        n_boot: bootstrap replicates.
        level: confidence level of the percentile interval.
        seed: seed of the resampling (each optimizer and threshold gets its own
            stream from it).
        thresholds: ``None`` is the sweep's target.

    Returns:
        Rows with the columns :data:`CRITICAL_COLUMNS`.
    """
    by_opt: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    target = None
    for r in records:
        if r.get("repeat", 0) == 0:
            by_opt[str(r["optimizer"])][int(r["batch_size"])].append(r)
            target = float(r["target"])
    rows = []
    for i, opt in enumerate(sorted(by_opt)):
        for j, tau in enumerate(thresholds):
            sizes, steps = _steps_matrix(by_opt[opt], tau)
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i, j)))
            fit = bootstrap_critical_batch(
                sizes, steps, n_boot=n_boot, level=level, rng=rng
            )
            rows.append(
                {
                    "optimizer": opt,
                    "threshold": target if tau is None else float(tau),
                    "level": level,
                    "n_boot": int(n_boot),
                    **fit,
                }
            )
    return rows
