r"""What the NQM predicts for a network: tuned steps per batch size, and the
crossings of one optimizer setting.

**Tuned.** For each optimizer's counterpart (:mod:`.mapping`) the NQM study of
:func:`analysis.scaling.run_study` tunes the family at every batch size and NQM
target, giving :math:`S^*(B) = \min_{\text{hparams}}\min\{t : E[L_t] \le L^*\}`
and the critical batch size of its fit
:math:`S(B) = S_{\min}(1 + B_{\text{crit}}/B)` (McCandlish et al. 2018, eq. 2.11).

**One setting, two quantities** (:func:`setting_prediction`). A measured run's
steps to result is the first evaluated step at which *its own* loss is at or
below the target: a first-passage time. The NQM's steps to target is the
crossing of the *expected* loss. At a measured trial's hyperparameters both are
predicted on the run's evaluation grid :math:`G` (every ``eval_every`` steps and
at the budget):

* the expected-loss crossing :math:`\min\{t \in G : E[L_t] \le L^*\}`, to hold
  against the crossing of the seed-averaged curve;
* the first-passage law, sampled by :func:`nqm.first_passage_steps`, to hold
  against the single-run crossings;
* the local slope :math:`dE[L]/dt` at the crossing: where it is nearly flat
  (a target near the noise floor) a small error in the loss moves the crossing
  far, and first passage comes much earlier than the mean crossing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

import nqm
from analysis.journal import ResultJournal
from analysis.scaling import MIN_FIT_POINTS, fit_curve, run_study

from .mapping import PredictedOptimizer, study_curves

__all__ = [
    "MIN_FIT_POINTS",
    "on_grid",
    "tuned_prediction",
    "fit_b_crit",
    "setting_prediction",
]


def on_grid(step: float, every: int, budget: int) -> float:
    """The first evaluated step at or after ``step``: a multiple of ``every``,
    or the budget; ``inf`` beyond the budget."""
    if not math.isfinite(step) or step > budget:
        return math.inf
    return float(min(math.ceil(step / every) * every, budget))


def fit_b_crit(batch_sizes: Sequence[float], steps: Sequence[float]) -> dict[str, Any]:
    """The critical-batch fit of a steps-vs-B curve (``nan`` with < 3 finite,
    positive points).

    Returns:
        ``b_crit, s_min, r2, n_points, b_crit_in_range``.
    """
    n, fit = fit_curve(batch_sizes, steps)
    if fit is None:
        return dict(b_crit=math.nan, s_min=math.nan, r2=math.nan, n_points=n,
                    b_crit_in_range=False)  # fmt: skip
    keys = ("b_crit", "s_min", "r2", "b_crit_in_range")
    return {**{k: fit[k] for k in keys}, "n_points": n}


def tuned_prediction(
    problem: nqm.NQMProblem,
    labels: Iterable[PredictedOptimizer],
    batch_sizes: Sequence[int],
    targets: Sequence[float],
    *,
    workers: int = 1,
    progress: bool | None = None,
    journal: ResultJournal | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    r"""Tune every optimizer's counterpart at every batch size and NQM target.

    Curves that share a family set are tuned in one
    :func:`analysis.scaling.run_study` call (so SGD's baseline is tuned once per
    power).

    Args:
        problem: the NQM.
        labels: the optimizers to predict.
        batch_sizes: shape ``(n_B,)``.
        targets: NQM targets :math:`L^* > 0`.
        workers: curves tuned in parallel (see :func:`~analysis.scaling.run_study`).
        progress: progress bar (``None``: only on a terminal).
        journal: keeps each tuned curve as it finishes, so that a rerun after
            a kill resumes (:class:`analysis.journal.ResultJournal`).
        **options: passed to :func:`nqm.search.best_steps`.

    Returns:
        One row per (label, power, target): ``optimizer, family, precond_power,
        target, batch_sizes, steps`` (lists) and the tuned ``lr``,
        ``momentum``, ``ema`` per batch size, with the fit of :func:`fit_b_crit`.
    """
    curves = study_curves(labels)
    by_power: dict[float, list] = defaultdict(list)
    for fam, p in curves.values():
        if fam not in by_power[p]:
            by_power[p].append(fam)
    groups: dict[tuple, list[float]] = defaultdict(list)
    for p, fams in by_power.items():
        groups[tuple(fams)].append(p)
    records: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for fams, powers in groups.items():
        for rec in run_study(
            problem, fams, powers, batch_sizes, targets,
            workers=workers, progress=progress, journal=journal, **options,
        ):  # fmt: skip
            key = (rec["family"], float(rec["precond_power"]), float(rec["target"]))
            records[key].append(rec)
    rows = []
    for (label, p), (fam, _) in curves.items():
        for t in targets:
            recs = sorted(
                records[(fam.value, p, float(t))], key=lambda r: r["batch_size"]
            )
            b = [int(r["batch_size"]) for r in recs]
            s = [float(r["steps"]) for r in recs]
            rows.append(
                {
                    "optimizer": label.value,
                    "family": fam.value,
                    "precond_power": p,
                    "target": float(t),
                    "batch_sizes": b,
                    "steps": s,
                    "lr": [r["lr"] if r["lr"] is not None else r["lr0"] for r in recs],
                    "momentum": [r["momentum"] for r in recs],
                    "ema": [r["ema"] for r in recs],
                    **fit_b_crit(b, s),
                }
            )
    return rows


def setting_prediction(
    problem: nqm.NQMProblem,
    optimizer: nqm.Optimizer,
    batch_size: int,
    target: float,
    *,
    eval_every: int,
    max_steps: int,
    replicas: int,
    generator: torch.Generator,
) -> dict[str, Any]:
    r"""The expected-loss crossing, the first-passage law and the slope of one
    setting, on a run's evaluation grid.

    Args:
        problem: the NQM.
        optimizer: the setting (e.g. :func:`.mapping.nqm_optimizer` of a
            measured trial).
        batch_size: :math:`B`.
        target: the NQM target :math:`L^*`.
        eval_every: the run's evaluation spacing.
        max_steps: the run's budget T.
        replicas: first-passage replicas.
        generator: seeded generator of the replicas.

    Returns:
        ``expected_crossing`` (exact, any step), ``expected_crossing_grid``
        (on G), ``slope`` :math:`E[L_t] - E[L_{t-1}]` at the exact crossing and
        ``log_slope`` :math:`d\log E[L]/dt` there (``nan`` at step 0 or
        never), ``grid_steps`` and ``expected_curve`` (E[L] on G),
        ``first_passage`` (the replicas' grid crossings, ``inf``: not within T)
        and its ``first_passage_median``.
    """
    t_star = nqm.steps_to_target(problem, optimizer, batch_size, target)
    grid = sorted({*range(0, max_steps + 1, eval_every), max_steps})
    curve = np.asarray(nqm.expected_loss(problem, optimizer, batch_size, grid))
    slope = log_slope = math.nan
    if math.isfinite(t_star) and t_star >= 1:
        pair = np.asarray(
            nqm.expected_loss(problem, optimizer, batch_size, [t_star - 1, t_star])
        )
        slope = float(pair[1] - pair[0])
        log_slope = float(math.log(pair[1]) - math.log(pair[0]))
    passage = nqm.first_passage_steps(
        problem, optimizer, batch_size, target, max_steps, replicas, generator,
        every=eval_every,
    )  # fmt: skip
    return {
        "expected_crossing": float(t_star),
        "expected_crossing_grid": on_grid(float(t_star), eval_every, max_steps),
        "slope": slope,
        "log_slope": log_slope,
        "grid_steps": [int(g) for g in grid],
        "expected_curve": [float(v) for v in curve],
        "first_passage": passage,
        "first_passage_median": float(np.median(passage)),
    }
