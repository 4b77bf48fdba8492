"""Tables of the NQM's frontier questions for ``nqm-scaling``: the critical batch
size as a function of the target, the examples-vs-steps trade-off, and the steps
a batch-size ramp saves.

Each function returns tidy rows (one dict per point) that the study writes as a
table and :mod:`analysis.plots` draws; the numbers come from
:mod:`nqm.critical_batch` and :mod:`nqm.batch_ramp`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

import nqm
from nqm.batch_ramp import ramp_savings
from nqm.critical_batch import critical_batch_vs_target, steps_examples_tradeoff

__all__ = ["critical_batch_rows", "tradeoff_rows", "ramp_rows", "adam_proxy_rows"]


def critical_batch_rows(
    problem: nqm.NQMProblem,
    families: Sequence[str],
    targets: Sequence[float],
    batch_sizes: Sequence[int],
    **options: Any,
) -> list[dict[str, Any]]:
    """:math:`B_{\\text{crit}}(L)` per family at p = 0 (McCandlish et al. 2018,
    eq. 2.11 fitted to the tuned steps at each target).

    Returns:
        Rows ``{"family", "target", "b_crit", "s_min", "e_min", "r2",
        "b_crit_in_range"}`` (``nan`` where fewer than three batch sizes reach
        the target).
    """
    rows = []
    for fam in families:
        for pt in critical_batch_vs_target(
            problem, fam, sorted(targets, reverse=True), batch_sizes, **options
        ):
            fit = pt.fit
            rows.append(
                {
                    "family": str(fam),
                    "target": pt.target,
                    "b_crit": pt.b_crit,
                    "s_min": math.nan if fit is None else fit.s_min,
                    "e_min": math.nan if fit is None else fit.s_min * fit.b_crit,
                    "r2": math.nan if fit is None else fit.r2,
                    "b_crit_in_range": False if fit is None else fit.b_crit_in_range,
                }
            )
    return rows


def tradeoff_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each tuned curve (family, power, target) on the axes of McCandlish et al.
    (2018, fig. 1): :math:`S/S_{\\min} - 1` against :math:`E/E_{\\min} - 1`.

    Returns:
        Rows ``{"family", "precond_power", "target", "batch_size", "steps",
        "examples", "excess_steps", "excess_examples", "hyperbola",
        "hyperbola_log_rmse"}``; ``hyperbola`` is the excess steps the model
        predicts at that excess of examples. Curves with fewer than three
        finite points are left out.
    """
    curves: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in records:
        key = (r["family"], r["precond_power"], r["target"])
        curves.setdefault(key, []).append(r)
    rows = []
    for (fam, p, t), recs in sorted(curves.items(), key=lambda kv: str(kv[0])):
        b = np.array([float(r["batch_size"]) for r in recs])
        s = np.array([float(r["steps"]) for r in recs])
        if np.sum(np.isfinite(s) & (s > 0)) < 3:
            continue
        keep = np.isfinite(s) & (s > 0)
        tr = steps_examples_tradeoff(b[keep], s[keep])
        with np.errstate(divide="ignore"):
            pred = 1.0 / tr.excess_examples
        for i in range(tr.batch_sizes.size):
            rows.append(
                {
                    "family": fam,
                    "precond_power": p,
                    "target": t,
                    "batch_size": float(tr.batch_sizes[i]),
                    "steps": float(tr.steps[i]),
                    "examples": float(tr.examples[i]),
                    "excess_steps": float(tr.excess_steps[i]),
                    "excess_examples": float(tr.excess_examples[i]),
                    "hyperbola": float(pred[i]),
                    "hyperbola_log_rmse": tr.hyperbola_log_rmse,
                }
            )
    return rows


def ramp_rows(
    problem: nqm.NQMProblem,
    target: float,
    budget_multiples: Sequence[float],
    batch_sizes: Sequence[int],
    **options: Any,
) -> list[dict[str, Any]]:
    """Steps a tuned batch-size ramp saves over the best constant batch size at
    equal examples, for budgets that are multiples of the constant batch's
    :math:`E_{\\min}` (its fewest examples over ``batch_sizes``).

    Returns:
        Rows ``{"target", "budget_multiple", "examples_budget",
        "constant_steps", "constant_examples", "constant_batch", "ramp_steps",
        "ramp_examples", "ramp_start_batch", "ramp_end_batch", "ramp_steps_ramping",
        "ramp_lr", "saving"}``.
    """
    bs = np.asarray(batch_sizes, dtype=np.int64)
    tuned = nqm.best_steps(problem, "sgd", bs.astype(np.float64), target)
    examples = [b * r.steps for b, r in zip(bs, tuned, strict=True)]
    e_min = min((e for e in examples if math.isfinite(e)), default=math.inf)
    if not math.isfinite(e_min):
        return []
    budgets = [m * e_min for m in budget_multiples]
    rows = []
    for m, row in zip(budget_multiples, ramp_savings(problem, target, budgets, bs,
                                                     **options), strict=True):  # fmt: skip
        c, r = row.constant, row.ramp
        rows.append(
            {
                "target": float(target),
                "budget_multiple": float(m),
                "examples_budget": row.examples,
                "constant_steps": c.steps,
                "constant_examples": c.examples,
                "constant_batch": c.batch.values[0] if c.batch else math.nan,
                "ramp_steps": r.steps,
                "ramp_examples": r.examples,
                "ramp_start_batch": r.batch.values[0] if r.batch else math.nan,
                "ramp_end_batch": r.batch.values[-1] if r.batch else math.nan,
                "ramp_steps_ramping": r.batch.constant_after() if r.batch else 0,
                "ramp_lr": r.optimizer.schedule.lr if r.optimizer else math.nan,
                "saving": row.saving,
            }
        )
    return rows


def adam_proxy_rows(
    problem: nqm.NQMProblem,
    target: float,
    batch_sizes: Sequence[float],
    powers: Sequence[float] = (0.25, 0.5, 0.75),
    max_steps: int | None = None,
    **adam_options: Any,
) -> list[dict[str, Any]]:
    """Adam's tuned steps (Monte Carlo, :func:`nqm.adam.tune_adam`) beside those
    of the preconditioning proxies Zhang et al. (2019, section 3) used in its
    place: tuned heavy ball with :math:`P = H^p` (exact).

    Args:
        problem, target, batch_sizes: the question.
        powers: the proxies' powers (p = 0, plain heavy ball, is always added).
        max_steps: Adam's simulation horizon (default twice heavy ball's steps
            at the smallest batch size).
        **adam_options: passed to :func:`nqm.adam.tune_adam`.

    Returns:
        Rows ``{"optimizer", "precond_power", "batch_size", "steps", "ci_low",
        "ci_high", "lr", "beta1"}`` (``optimizer`` is ``"adam"`` or
        ``"momentum"``; the interval only for Adam).
    """
    from nqm.adam import tune_adam

    bs = np.asarray(batch_sizes, dtype=np.float64)
    rows = []
    for p in sorted({0.0, *map(float, powers)}):
        for r in nqm.best_steps(problem, "momentum", bs, target, precond_power=p):
            rows.append(
                {"optimizer": "momentum", "precond_power": p,
                 "batch_size": r.batch_size, "steps": r.steps, "ci_low": math.nan,
                 "ci_high": math.nan, "lr": r.optimizer.schedule.lr,
                 "beta1": r.optimizer.momentum}
            )  # fmt: skip
    if max_steps is None:
        first = [r["steps"] for r in rows if r["precond_power"] == 0.0]
        max_steps = int(2 * max(s for s in first if math.isfinite(s)))
    for r in tune_adam(problem, bs, target, max_steps, **adam_options):
        est = r.estimate
        rows.append(
            {"optimizer": "adam", "precond_power": math.nan,
             "batch_size": r.batch_size,
             "steps": math.inf if est is None else est.steps,
             "ci_low": math.nan if est is None else est.ci_low,
             "ci_high": math.nan if est is None else est.ci_high,
             "lr": math.nan if r.adam is None else r.adam.lr,
             "beta1": math.nan if r.adam is None else r.adam.beta1}
        )  # fmt: skip
    return rows
