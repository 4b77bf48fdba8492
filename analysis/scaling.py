r"""Batch-size scaling studies on the noisy quadratic model.

A study asks, for every optimizer family, preconditioning power :math:`p`, target
loss :math:`L^*` and batch size :math:`B`:

.. math:: S^*(B) = \min_{\text{hyperparameters}} \min\{t \ge 0 : E[L(\theta_t)]
    \le L^*\},

i.e. the number of steps a *tuned* optimizer needs (Zhang et al. 2019, section
3.7, Figures 5-6 and appendix E.5-E.7). The tuning itself is :func:`nqm.search.
best_steps`; this module plans and runs the grid of studies
(:func:`plan_study`, :mod:`analysis.executor`), flattens the tuned optimizers
into tidy records, fits the critical batch size of every curve
(:func:`nqm.noise_scale.fit_critical_batch`), adds the information-theoretic lower
bound (:func:`nqm.noise_scale.steps_lower_bound`) and prepares the tables each
figure plots.

Tables are tidy: one row per observation, one column per variable; ``steps`` is
``math.inf`` when the target is never reached (``inf`` in CSV, ``null`` in JSON).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import nqm
from nqm.io import write_json, write_table
from nqm.noise_scale import fit_critical_batch, steps_lower_bound
from nqm.run_folder import RunFolder
from nqm.search import Family, best_steps

from .config import ScalingConfig
from .executor import ExecutorKind, Task, require_executor, run_plan
from .journal import ResultJournal
from .lr_range import optimal_lr_ranges

__all__ = [
    "ScheduleKind",
    "UpdateRule",
    "RECORD_COLUMNS",
    "FIT_COLUMNS",
    "StudyResult",
    "build_problem",
    "tune_record",
    "Curve",
    "StudyPlan",
    "plan_study",
    "run_study",
    "critical_batch_fits",
    "fit_curve",
    "MIN_FIT_POINTS",
    "lower_bound_curve",
    "schedule_shapes",
    "momentum_transient",
    "run_reference_study",
    "optimal_lr_range_table",
    "figure_tables",
    "write_study",
]

logger = logging.getLogger(__name__)


class ScheduleKind(enum.StrEnum):
    """How the tuned learning rate varies with the step."""

    CONSTANT = "constant"
    PIECEWISE_CONSTANT = "piecewise_constant"
    LINEAR_DECAY = "linear_decay"
    OTHER = "other"


class UpdateRule(enum.StrEnum):
    """The two update rules compared in appendix E.3."""

    MOMENTUM = "momentum"
    SGD_EFFECTIVE_LR = "sgd_effective_lr"


#: Columns of the study's record table, in order.
RECORD_COLUMNS: tuple[str, ...] = (
    "family",
    "precond_power",
    "batch_size",
    "target",
    "steps",
    "schedule",
    "lr",
    "effective_lr",
    "momentum",
    "ema",
    "lr0",
    "final_lr",
    "decay",
    "horizon",
    "boundaries",
    "values",
    "evaluations",
    "seconds",
    "error",
)

#: Columns of the critical-batch fit table.
FIT_COLUMNS: tuple[str, ...] = (
    "family",
    "precond_power",
    "target",
    "n_points",
    "s_min",
    "b_crit",
    "r2",
    "log_rmse",
    "departure_batch",
    "b_crit_in_range",
)


@dataclass(frozen=True)
class StudyResult:
    """Everything a scaling study produced.

    Attributes:
        records: tidy rows, one per (family, power, target, batch size); columns
            :data:`RECORD_COLUMNS`.
        fits: one row per (family, power, target) curve; :data:`FIT_COLUMNS`.
        lower_bound: rows ``(target, batch_size, steps)`` of the lower bound.
        extras: further tables keyed by name (schedule shapes, E.3 transient).
        timings: wall seconds per phase.
    """

    records: list[dict[str, Any]]
    fits: list[dict[str, Any]]
    lower_bound: list[dict[str, Any]]
    extras: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------ problem
def build_problem(cfg: ScalingConfig) -> nqm.NQMProblem:
    r"""The NQM a configuration describes.

    Either the spectrum file ``cfg.problem`` (``.npz`` with ``h``, ``c``) or the
    power law :math:`h_i = i^{-a}`, :math:`c_i = i^{-b}`, i = 1..dim.

    Raises:
        ValueError: if the spectrum file is missing, a directory or unreadable.
    """
    if cfg.problem is not None:
        # one line naming the file: missing, a directory, not an archive, ...
        return nqm.NQMProblem.load(cfg.problem)
    return nqm.NQMProblem.power_law(
        dim=cfg.dim, h_power=cfg.h_power, c_power=cfg.c_power, init_sq=cfg.init_sq
    )


# ------------------------------------------------------------------ records
def _finite_int(steps: Any) -> float | int:
    s = float(steps)
    return int(s) if math.isfinite(s) else math.inf


def tune_record(result: Any, seconds: float = float("nan")) -> dict[str, Any]:
    """Flatten one :class:`nqm.search.TuneResult` into a tidy record.

    Constant learning rates fill ``lr`` and ``effective_lr`` =
    :math:`\\alpha/(1-\\beta)`; a :class:`nqm.PiecewiseConstant` fills ``lr0``
    (first value), ``final_lr``, ``boundaries`` and ``values``; a
    :class:`nqm.LinearDecay` fills ``lr0``, ``decay``, ``horizon`` and
    ``final_lr`` = :math:`\\delta\\alpha_0`. Empty cells are ``None``.
    """
    opt = getattr(result, "optimizer", None)
    rec: dict[str, Any] = dict.fromkeys(RECORD_COLUMNS)
    rec.update(
        family=Family(result.family).value,
        precond_power=float(result.precond_power),
        batch_size=int(result.batch_size),
        target=float(result.target),
        steps=_finite_int(result.steps),
        evaluations=int(result.evaluations),
        seconds=float(seconds),
    )
    if opt is None:
        return rec
    rec.update(momentum=float(opt.momentum), ema=float(opt.ema))
    sched = opt.schedule
    if isinstance(sched, nqm.Constant):
        rec.update(
            schedule=ScheduleKind.CONSTANT.value,
            lr=sched.lr,
            effective_lr=opt.effective_lr,
            lr0=sched.lr,
            final_lr=sched.lr,
        )
    elif isinstance(sched, nqm.PiecewiseConstant):
        rec.update(
            schedule=ScheduleKind.PIECEWISE_CONSTANT.value,
            lr0=sched.values[0],
            final_lr=sched.values[-1],
            boundaries=list(sched.boundaries),
            values=list(sched.values),
        )
    elif isinstance(sched, nqm.LinearDecay):
        rec.update(
            schedule=ScheduleKind.LINEAR_DECAY.value,
            lr0=sched.lr0,
            final_lr=sched.lr0 * sched.decay,
            decay=sched.decay,
            horizon=sched.horizon,
        )
    else:
        rec.update(schedule=ScheduleKind.OTHER.value)
    return rec


def _progress(total: int, desc: str, enabled: bool | None) -> Any:
    # tqdm only on an interactive terminal unless asked explicitly.
    disable = not sys.stderr.isatty() if enabled is None else not enabled
    return tqdm(total=total, desc=desc, unit="curve", disable=disable, leave=False)


def _curve_label(fam: Family, powers: Sequence[float], t: float) -> str:
    """``"pwc p=0,0.5 L*=0.01"``: a unit of work, for progress and logs."""
    return f"{fam.value} p={','.join(f'{p:g}' for p in powers)} L*={t:g}"


@dataclass(frozen=True)
class Curve:
    """A unit of work of a study: one family's tuning at one target, over every
    batch size, at one or more preconditioning powers.

    The schedule families tune all powers of a target as one unit (one batched
    L-BFGS over every power and batch size, see :func:`nqm.search.best_steps`);
    every other unit holds one power.

    Attributes:
        family: the optimizer family.
        powers: preconditioning powers, shape ``(n_p,)``.
        target: the target loss.
    """

    family: Family
    powers: tuple[float, ...]
    target: float

    @property
    def label(self) -> str:
        """``"pwc p=0,0.5 L*=0.01"``, for progress lines and logs."""
        return _curve_label(self.family, self.powers, self.target)


@dataclass(frozen=True)
class StudyPlan:
    """Which curves a study tunes, in what order, with which baselines.

    Attributes:
        tasks: one :class:`analysis.executor.Task` per :class:`Curve` (its key),
            in submission order; ``needs`` holds the curves whose tuned results
            it receives: SGD's at its powers and target (its ``baseline``) and,
            for a family containing other studied families (``momentum_ema``),
            theirs (its ``contained``), after :attr:`nqm.families.Family.contained`.
        reported: the (family, power, target) curves the study reports, in
            record order; the plan may tune further SGD curves as baselines.
    """

    tasks: tuple[Task, ...]
    reported: tuple[tuple[Family, float, float], ...]


def _contains_sgd(fam: Family) -> bool:
    """Whether SGD is a feasible point of ``fam`` (containment is transitive)."""
    return any(g is Family.SGD or _contains_sgd(g) for g in fam.contained)


def plan_study(
    problem: nqm.NQMProblem,
    families: Iterable[str | Family],
    powers: Iterable[float],
    batch_sizes: Sequence[int],
    targets: Iterable[float],
    *,
    keep_going: bool = False,
    search: Callable[..., Any] = best_steps,
    **options: Any,
) -> StudyPlan:
    r"""The plan of a study: its curves as tasks, ordered, with their baselines.

    With the default search, SGD is tuned once per (power, target) and given to
    every family that contains it as its ``baseline``, and ``momentum_ema`` is
    given the tuned ``momentum`` and ``ema`` curves (when the study has both) as
    its ``contained`` results, so those curves come first. Then the most
    expensive curves go first (:data:`_COST_RANK`). A repeated family, power or
    target is tuned once.

    Args:
        problem: the NQM.
        families: :class:`nqm.search.Family` members or their values.
        powers: preconditioning powers :math:`p \in [0, 1]`.
        batch_sizes: batch sizes :math:`B \ge 1`, shape ``(n_B,)``.
        targets: target losses :math:`L^* > 0`.
        keep_going: see :func:`run_study`.
        search: the tuner (default :func:`nqm.search.best_steps`); another
            tuner gets no shared baselines.
        **options: passed to ``search``.

    Returns:
        The :class:`StudyPlan`. Each task returns, per power of its curve, the
        records and the tuner's results (``None`` after a ``keep_going`` retry).

    Raises:
        ValueError: for an unknown family, a target <= 0 or a batch size < 1.
    """
    fams = list(dict.fromkeys(Family(f) for f in families))
    pw = list(dict.fromkeys(float(p) for p in powers))  # a repeat is tuned once
    tg = list(dict.fromkeys(float(t) for t in targets))
    bs = [int(b) for b in batch_sizes]
    for t in tg:
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"target must be positive, got {t!r}")
    for b in bs:
        if b < 1:
            raise ValueError(f"batch size must be >= 1, got {b!r}")
    jobs = [(f, p, t) for f in fams for p in pw for t in tg]
    share = (
        search is best_steps
        and "baseline" not in options
        and options.get("fixed_momentum") is None
    )
    curves = _plan_curves(jobs, pw, share)
    unit_of = {(c.family, p, c.target): c for c in curves for p in c.powers}

    def needs(c: Curve) -> tuple[Curve, ...]:
        if not share or c.family is Family.SGD:
            return ()
        keys = []
        if _contains_sgd(c.family):
            keys += [unit_of[(Family.SGD, p, c.target)] for p in c.powers]
        nested = [g for g in c.family.contained if g is not Family.SGD]
        if nested and all(g in fams for g in nested):
            keys += [unit_of[(g, p, c.target)] for g in nested for p in c.powers]
        return tuple(dict.fromkeys(keys))

    tasks = tuple(
        Task(c, _tune_unit, (search, problem, c, bs, options, keep_going),
             needs=needs(c))
        for c in curves
    )  # fmt: skip
    return StudyPlan(tasks, tuple(jobs))


def _plan_curves(
    jobs: Sequence[tuple[Family, float, float]], pw: Sequence[float], share: bool
) -> list[Curve]:
    """The units of work of a study, in submission order."""
    grouped = share and len(pw) > 1
    curves: list[Curve] = []
    for f, p, t in jobs:
        if not (grouped and f in _SCHEDULE_FAMILIES):
            curves.append(Curve(f, (p,), t))
        elif p == pw[0]:
            curves.append(Curve(f, tuple(pw), t))
    if share:  # SGD baselines the study does not report
        have = set(curves)
        for p, t in sorted({(p, t) for f, p, t in jobs if f is not Family.SGD}):
            if Curve(Family.SGD, (p,), t) not in have:
                curves.append(Curve(Family.SGD, (p,), t))
        first = [c for c in curves if c.family is Family.SGD]
    else:
        first = []
    rest = [c for c in curves if c not in set(first)]
    rest.sort(key=lambda c: _COST_RANK.get(c.family, 0))  # long curves first
    return first + rest


def _tune_unit(
    search: Callable[..., Any],
    problem: nqm.NQMProblem,
    curve: Curve,
    bs: list[int],
    options: Mapping[str, Any],
    keep_going: bool,
    inputs: Mapping[Curve, Any] | None = None,
) -> list[tuple[list[dict[str, Any]], list[Any] | None]]:
    """The task of one curve: tune it, given the results of the curves it needs."""
    opts = _nested_options(curve, options, inputs or {})
    return _tune_curves(
        search, problem, curve.family, curve.powers, bs, curve.target, opts, keep_going
    )


def _nested_options(
    curve: Curve, options: Mapping[str, Any], inputs: Mapping[Curve, Any]
) -> dict[str, Any]:
    """``options`` plus ``baseline`` (SGD's results) and ``contained`` (those of
    the other contained families) from the results of the needed curves; none
    when a baseline is missing (a retried curve keeps no results)."""

    def results(fam: Family, p: float) -> Any:
        for key, out in inputs.items():
            if key.family is fam and p in key.powers:
                return out[key.powers.index(p)][1]
        return None

    bases = [results(Family.SGD, p) for p in curve.powers]
    if any(b is None for b in bases):
        return dict(options)
    many = len(curve.powers) > 1
    out = {**options, "baseline": bases if many else bases[0]}
    nested = [g for g in curve.family.contained if g is not Family.SGD]
    if nested and all(any(k.family is g for k in inputs) for g in nested):
        inner = [[results(g, p) for g in nested] for p in curve.powers]
        if all(r is not None for per_power in inner for r in per_power):
            out["contained"] = inner if many else inner[0]
    return out


def run_study(
    problem: nqm.NQMProblem,
    families: Iterable[str | Family],
    powers: Iterable[float],
    batch_sizes: Sequence[int],
    targets: Iterable[float],
    *,
    progress: bool | None = None,
    workers: int = 1,
    executor: str | ExecutorKind = ExecutorKind.LOCAL,
    ray_address: str | None = None,
    keep_going: bool = False,
    keep_freed_memory: bool = False,
    search: Callable[..., Any] = best_steps,
    journal: ResultJournal | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    r"""Tune every family at every power, target and batch size.

    Runs the :func:`plan_study` plan with :func:`analysis.executor.run_plan`:
    one call of ``search`` per (family, power, target), vectorised over the
    batch sizes, so that work shared between batch sizes is done once; with the
    default search, ``pwc`` and ``linear_decay`` make one call per target for
    all powers (one batched L-BFGS over every power and batch size).

    Args:
        problem: the NQM.
        families: :class:`nqm.search.Family` members or their values.
        powers: preconditioning powers :math:`p \in [0, 1]`. A repeated
            family, power or target is tuned once.
        batch_sizes: batch sizes :math:`B \ge 1`, shape ``(n_B,)``.
        targets: target losses :math:`L^* > 0`.
        progress: show a tqdm bar; ``None``: only when stderr is a terminal.
            Without a bar, each finished curve is logged (``INFO``).
        workers: curves tuned in parallel (local: 1 in this process, 0 one
            process per CPU; Ray: 0 the cluster's CPUs). Results do not depend
            on it.
        executor: ``"local"`` processes or ``"ray"`` tasks
            (:class:`analysis.executor.ExecutorKind`); results do not depend on
            it.
        ray_address: the Ray cluster to join (``None``: a local Ray).
        keep_going: if the tuner raises on a curve, retry it per batch size and
            record the batch sizes that still fail (``steps = nan``, message in
            ``error``) instead of aborting the study.
        keep_freed_memory: apply :func:`nqm.runtime.keep_freed_memory` in the
            local worker processes (the caller decides for its own process).
        search: the tuner (default :func:`nqm.search.best_steps`). With the
            default, SGD is tuned once per (power, target) first and passed to
            the other families as their ``baseline``.
        **options: passed to ``search``.

    Returns:
        Tidy records (:data:`RECORD_COLUMNS`), ordered by family, power, target,
        batch size. ``seconds`` is the tuning time of the call that produced a
        record divided evenly among that call's powers and batch sizes.

    Raises:
        ValueError: for an unknown family, a target <= 0, a batch size < 1, a
            negative ``workers`` or an unknown executor.
    """
    plan = plan_study(
        problem, families, powers, batch_sizes, targets,
        keep_going=keep_going, search=search, **options,
    )  # fmt: skip
    kind = require_executor(executor)
    n_workers = (
        _n_workers(workers, len(plan.reported))
        if kind is ExecutorKind.LOCAL
        else _n_workers(workers, math.inf)
    )
    reported = set(plan.reported)
    done: dict[tuple[Family, float, float], list[dict[str, Any]]] = {}
    start = time.perf_counter()
    with _progress(len(plan.reported), "nqm-scaling", progress) as bar:

        def on_result(task: Task, out: list[tuple[list[dict[str, Any]], Any]]):
            curve: Curve = task.key
            keys = [(curve.family, p, curve.target) for p in curve.powers]
            done.update({k: recs for k, (recs, _) in zip(keys, out, strict=True)})
            bar.update(sum(k in reported for k in keys))
            if bar.disable:  # no bar (e.g. output to a log): one line per curve
                logger.info(
                    "nqm-scaling: %d/%d curves, %s%s (%.0f s)",
                    sum(k in done for k in reported), len(reported), curve.label,
                    "" if any(k in reported for k in keys) else " (baseline)",
                    time.perf_counter() - start,
                )  # fmt: skip

        run_plan(
            plan.tasks,
            executor=kind,
            workers=n_workers,
            ray_address=ray_address,
            on_result=on_result,
            initializer=nqm.runtime.keep_freed_memory if keep_freed_memory else None,
            journal=journal,
        )
    return [rec for job in plan.reported for rec in done[job]]


#: Families tuned for all powers of a target in one call (batched L-BFGS).
_SCHEDULE_FAMILIES = (Family.PWC, Family.LINEAR_DECAY, Family.WSD, Family.COSINE)

#: Submission order of curves: the most expensive first (a curve that needs
#: others waits for them in any case), so that no worker is left alone with a
#: long curve at the end. Measured on the reference problem (d = 10^4, 21 batch
#: sizes, one process), as fractions of ``wsd``'s time for all five powers in one
#: task: ``cosine`` about 0.55, ``linear_decay`` 0.2, ``pwc`` under 0.12; per
#: power ``momentum_ema`` about 0.2, ``momentum`` 0.03-0.09, ``ema`` 0.05.
#: ``linear_decay`` goes before ``momentum_ema``, which waits for ``momentum``
#: and ``ema``.
_COST_RANK = {
    Family.WSD: 0,
    Family.COSINE: 1,
    Family.MOMENTUM: 2,
    Family.EMA: 3,
    Family.LINEAR_DECAY: 4,
    Family.MOMENTUM_EMA: 5,
    Family.PWC: 6,
    Family.SGD: 7,
}


def _n_workers(workers: int, n_jobs: float) -> int:
    if isinstance(workers, bool) or int(workers) != workers or workers < 0:
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
    if workers == 0 and n_jobs == math.inf:
        return 0  # Ray: the cluster's CPUs
    n = (os.cpu_count() or 1) if workers == 0 else int(workers)
    return int(max(1, min(n, n_jobs)))


def _tune_curves(
    search: Callable[..., Any],
    problem: nqm.NQMProblem,
    fam: Family,
    powers: Sequence[float],
    bs: list[int],
    t: float,
    options: Mapping[str, Any],
    keep_going: bool = False,
) -> list[tuple[list[dict[str, Any]], list[Any] | None]]:
    """Tune the (family, power, target) curves of one unit over all batch sizes.

    Several powers go to ``search`` as one call (``precond_power`` a list, and
    ``options["baseline"]`` one entry per power). Returns per power the records
    and the tuner's results (``None`` after a retry). ``seconds`` in the records
    is the call's time divided evenly among its powers and batch sizes.

    With ``keep_going``, a unit whose tuner raises is retried one power at a
    time, then one batch size at a time (without a shared baseline), and batch
    sizes that still fail become records with ``steps = nan`` and the exception
    in ``error``.
    """
    start = time.perf_counter()
    many = len(powers) > 1
    try:
        p_arg = list(powers) if many else powers[0]
        results = search(problem, fam, bs, t, precond_power=p_arg, **options)
    except Exception as exc:
        if not keep_going:
            raise
        logger.warning("%s failed (%s); retrying", _curve_label(fam, powers, t), exc)
        if many:
            bases = options.get("baseline")
            return [
                _tune_curves(
                    search, problem, fam, [p], bs, t,
                    {**options, "baseline": None if bases is None else bases[j]},
                    keep_going,
                )[0]
                for j, p in enumerate(powers)
            ]  # fmt: skip
        single = {
            k: v for k, v in options.items() if k not in ("baseline", "contained")
        }
        return [([_tune_point(search, problem, fam, powers[0], b, t, single)
                  for b in bs], None)]  # fmt: skip
    elapsed = time.perf_counter() - start
    per_power = results if many else [results]
    logger.debug("%s: %.2fs", _curve_label(fam, powers, t), elapsed)
    share = elapsed / (len(powers) * len(bs))
    return [([tune_record(r, share) for r in res], res) for res in per_power]


def _tune_point(
    search: Callable[..., Any],
    problem: nqm.NQMProblem,
    fam: Family,
    p: float,
    b: int,
    t: float,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        result = search(problem, fam, b, t, precond_power=p, **options)
    except Exception as exc:  # recorded, not hidden: the row carries the error
        rec: dict[str, Any] = dict.fromkeys(RECORD_COLUMNS)
        rec.update(
            family=fam.value,
            precond_power=float(p),
            batch_size=int(b),
            target=float(t),
            steps=math.nan,
            seconds=time.perf_counter() - start,
            error=f"{type(exc).__name__}: {exc}",
        )
        logger.warning("%s p=%g B=%d target=%g failed: %s", fam.value, p, b, t, exc)
        return rec
    return tune_record(result, time.perf_counter() - start)


# ---------------------------------------------------------------- analyses
def _fit_as_dict(fit: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(fit):
        return dataclasses.asdict(fit)
    if hasattr(fit, "_asdict"):
        return dict(fit._asdict())
    return dict(vars(fit))


def _curves(records: Iterable[Mapping[str, Any]]) -> dict[tuple, list[Mapping]]:
    curves: dict[tuple, list[Mapping]] = {}
    for r in records:
        curves.setdefault((r["family"], r["precond_power"], r["target"]), []).append(r)
    return curves


#: Fewest finite points a critical-batch fit is attempted on.
MIN_FIT_POINTS = 3


def critical_batch_fits(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    r"""Fit :math:`S(B)` of every (family, power, target) curve.

    Uses :func:`nqm.noise_scale.fit_critical_batch` (McCandlish et al. 2018,
    :math:`S(B) = S_{\min}(1 + B_{\text{crit}}/B)`, least squares on
    :math:`\log S`) on the batch sizes whose steps are finite and positive.
    Curves with fewer than :data:`MIN_FIT_POINTS` such points get a row of empty
    cells (and ``n_points``).

    Returns:
        Rows with :data:`FIT_COLUMNS`.
    """
    rows = []
    for (fam, p, t), recs in _curves(records).items():
        n, fit = fit_curve([r["batch_size"] for r in recs], [r["steps"] for r in recs])
        row: dict[str, Any] = dict.fromkeys(FIT_COLUMNS)
        row.update(family=fam, precond_power=p, target=t, n_points=n)
        if fit is not None:
            row.update({k: _scalar(fit.get(k)) for k in FIT_COLUMNS[4:]})
        rows.append(row)
    return rows


def fit_curve(
    batch_sizes: Sequence[float], steps: Sequence[float]
) -> tuple[int, dict[str, Any] | None]:
    r"""The :math:`S(B)` fit of one curve on its finite, positive step counts.

    The fit is in log steps, so only finite, positive counts enter it, in
    increasing batch size.

    Returns:
        The number of such points, and the fields of
        :func:`nqm.noise_scale.fit_critical_batch`'s result (``None`` with
        fewer than :data:`MIN_FIT_POINTS` points).
    """
    pts = sorted(
        (float(b), float(s))
        for b, s in zip(batch_sizes, steps, strict=True)
        if 0 < s < math.inf
    )
    if len(pts) < MIN_FIT_POINTS:
        return len(pts), None
    b, s = zip(*pts, strict=True)
    return len(pts), _fit_as_dict(fit_critical_batch(np.asarray(b), np.asarray(s)))


def _scalar(v: Any) -> Any:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def lower_bound_curve(
    problem: nqm.NQMProblem, targets: Iterable[float], batch_sizes: Sequence[int]
) -> list[dict[str, Any]]:
    r"""The information-theoretic lower bound on steps at each (target, B).

    The Bayes-optimal estimate from :math:`n = Bt` noisy per-example gradients has
    :math:`L_{\min}(n) = \tfrac12\sum_i h_i / (1/E\theta_i(0)^2 + n h_i^2/c_i)`; the
    bound is the smallest :math:`t \ge 1` with :math:`L_{\min}(Bt) \le L^*`
    (:func:`nqm.noise_scale.steps_lower_bound`).

    Returns:
        Rows ``{"target", "batch_size", "steps"}``.
    """
    return [
        {
            "target": float(t),
            "batch_size": int(b),
            "steps": _finite_int(steps_lower_bound(problem, float(t), int(b))),
        }
        for t in targets
        for b in batch_sizes
    ]


def _spread(values: Sequence[int], k: int) -> list[int]:
    """``k`` entries of a sorted sequence, evenly spaced by index (ends kept)."""
    if len(values) <= k:
        return list(values)
    idx = np.unique(np.round(np.linspace(0, len(values) - 1, k)).astype(int))
    return [values[i] for i in idx]


#: Points per curve of the schedule-shape table.
SHAPE_POINTS = 201


def schedule_shapes(
    records: Iterable[Mapping[str, Any]], n_batch_sizes: int = 4
) -> list[dict[str, Any]]:
    r"""Learning rate against normalised step :math:`t/S^*` of tuned schedules.

    For each scheduled family (pwc, linear decay), power and target, takes
    ``n_batch_sizes`` batch sizes spread over those with a finite step count and
    evaluates the tuned schedule at :data:`SHAPE_POINTS` steps in :math:`[0, S^*)`.

    Returns:
        Rows ``{"family", "precond_power", "target", "batch_size", "steps",
        "step", "normalised_step", "lr", "relative_lr"}`` (``relative_lr`` is the
        lr over its value at step 0).
    """
    rows = []
    for (fam, p, t), recs in _curves(records).items():
        if fam not in _SCHEDULED_FAMILIES:
            continue
        # Each record carries its own schedule: a tuner may fall back to a
        # constant lr (every schedule family contains SGD) at some batch sizes.
        finite = sorted(
            (
                r
                for r in recs
                if math.isfinite(r["steps"])
                and r["steps"] > 0
                and r.get("schedule") in _SHAPE_KINDS
            ),
            key=lambda r: r["batch_size"],
        )
        for r in _spread(finite, n_batch_sizes):
            sched = _schedule_of(r)
            s = int(r["steps"])
            steps = np.unique(
                np.round(np.linspace(0, s - 1, min(SHAPE_POINTS, s))).astype(np.int64)
            )
            lrs = np.atleast_1d(sched(steps))
            lr0 = float(sched(0))
            rows.extend(
                {
                    "family": fam,
                    "precond_power": p,
                    "target": t,
                    "batch_size": r["batch_size"],
                    "steps": s,
                    "step": int(k),
                    "normalised_step": float(k) / s,
                    "lr": float(v),
                    "relative_lr": float(v) / lr0,
                }
                for k, v in zip(steps, lrs, strict=True)
            )
    return rows


_SCHEDULED_FAMILIES = tuple(f.value for f in _SCHEDULE_FAMILIES)
_SHAPE_KINDS = (
    ScheduleKind.CONSTANT.value,
    ScheduleKind.PIECEWISE_CONSTANT.value,
    ScheduleKind.LINEAR_DECAY.value,
)


def _schedule_of(rec: Mapping[str, Any]) -> nqm.Schedule:
    kind = ScheduleKind(rec["schedule"])
    if kind == ScheduleKind.PIECEWISE_CONSTANT:
        return nqm.PiecewiseConstant(tuple(rec["boundaries"]), tuple(rec["values"]))
    if kind == ScheduleKind.LINEAR_DECAY:
        return nqm.LinearDecay(rec["lr0"], rec["decay"], rec["horizon"])
    return nqm.Constant(rec["lr"])


#: Points per curve of the E.3 transient comparison.
TRANSIENT_POINTS = 200
#: The E.3 curves run until the SGD transient has decayed by exp(-TRANSIENT_SPAN).
TRANSIENT_SPAN = 8.0


def momentum_transient(
    alpha_h: float = 0.0005, one_minus_beta: Sequence[float] = (0.5, 0.1, 0.03, 0.01)
) -> list[dict[str, Any]]:
    r"""Appendix E.3: the transient term of eqn (6) for momentum vs SGD at
    :math:`\alpha/(1-\beta)`.

    On one mode with :math:`h = 1`, :math:`c = 0` and :math:`E\theta(0)^2 = 1`
    the expected risk *is* the first (transient) term of eqn (6). For each value
    of :math:`1-\beta` it is computed exactly (:func:`nqm.expected_loss`) for
    heavy-ball momentum with lr :math:`\alpha` and for plain SGD with lr
    :math:`\alpha/(1-\beta)`, normalised by its value at :math:`t = 0`. The step
    range covers :math:`\mathrm{TRANSIENT\_SPAN}/(2r)` steps with :math:`r =
    \min(\alpha h/(1-\beta), 1-\sqrt\beta)`, by which both the SGD transient
    :math:`(1-\alpha h/(1-\beta))^{2t}` and momentum's envelope
    :math:`\beta^{t}` have decayed by :math:`e^{-\mathrm{TRANSIENT\_SPAN}}` or more.

    Args:
        alpha_h: :math:`\alpha h` (the paper uses 0.0005).
        one_minus_beta: values of :math:`1-\beta \in (0, 1]`.

    Returns:
        Rows ``{"one_minus_beta", "update", "step", "normalised_risk"}``
        (``update`` is a :class:`UpdateRule` value).

    References:
        Zhang et al. (2019), appendix E.3, Figure 11 and eqn (6).
    """
    if not 0 < alpha_h < 1:
        raise ValueError(f"alpha_h must lie in (0, 1), got {alpha_h!r}")
    one_mode = nqm.NQMProblem(h=np.array([1.0]), c=np.array([0.0]), init_sq=1.0)
    start = one_mode.initial_loss()
    rows = []
    for omb in one_minus_beta:
        if not 0 < omb <= 1:
            raise ValueError(f"one_minus_beta values must lie in (0, 1], got {omb!r}")
        eff = alpha_h / omb
        # Cover the slower of the SGD decay and momentum's envelope sqrt(beta)^t.
        rate = min(eff, 1.0 - math.sqrt(1.0 - omb)) if omb < 1 else eff
        t_max = max(int(math.ceil(TRANSIENT_SPAN / (2.0 * rate))), TRANSIENT_POINTS)
        steps = np.unique(
            np.round(np.linspace(0, t_max, TRANSIENT_POINTS)).astype(np.int64)
        )
        for rule, opt in (
            (UpdateRule.MOMENTUM, nqm.Optimizer(alpha_h, momentum=1.0 - omb)),
            (UpdateRule.SGD_EFFECTIVE_LR, nqm.Optimizer(eff)),
        ):
            risk = np.atleast_1d(nqm.expected_loss(one_mode, opt, 1, steps)) / start
            rows.extend(
                {
                    "one_minus_beta": float(omb),
                    "update": rule.value,
                    "step": int(k),
                    "normalised_risk": float(v),
                }
                for k, v in zip(steps, risk, strict=True)
            )
    return rows


# ------------------------------------------------------------- whole study
def run_reference_study(
    cfg: ScalingConfig,
    *,
    progress: bool | None = None,
    checkpoint: Callable[[list[dict[str, Any]]], Any] | None = None,
    keep_freed_memory: bool = False,
    journal: ResultJournal | None = None,
    **options: Any,
) -> StudyResult:
    """Run everything the figures of ``nqm-scaling`` need.

    The main grid (families x powers x targets x batch sizes), the loss-threshold
    family (SGD, p = 0, ``cfg.threshold_targets``; E.5), the critical-batch fits,
    the lower bound at every target, the schedule shapes, the E.3 transient and
    the range of optimal lrs behind the ``optimal_lr`` figure
    (:func:`optimal_lr_range_table`).

    Args:
        cfg: the resolved configuration.
        progress: tqdm bar (``None``: only on a terminal).
        checkpoint: called with the records as soon as the tuning is done
            (before the analyses), e.g. to save them.
        keep_freed_memory: passed to :func:`run_study` (worker processes).
        journal: keeps every tuned curve as it finishes, so that a rerun after
            a kill resumes (:class:`analysis.journal.ResultJournal`).
        **options: passed to :func:`nqm.search.best_steps`.

    Returns:
        The :class:`StudyResult`.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    problem = build_problem(cfg)
    batch_sizes = sorted(set(cfg.batch_sizes))

    if cfg.device != "cpu":
        options = {**options, "device": cfg.device}

    def study(families, powers, targets, **extra: Any) -> list[dict[str, Any]]:
        return run_study(
            problem,
            families,
            powers,
            batch_sizes,
            targets,
            progress=progress,
            workers=cfg.workers,
            executor=cfg.executor,
            ray_address=cfg.ray_address,
            keep_going=cfg.keep_going,
            keep_freed_memory=keep_freed_memory,
            journal=journal,
            **options,
            **extra,
        )

    records = study(cfg.families, cfg.powers, cfg.targets)
    timings["main_study"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    have = {(r["family"], r["precond_power"], r["target"]) for r in records}
    extra_targets = [
        t
        for t in cfg.threshold_targets
        if (Family.SGD.value, 0.0, float(t)) not in have
    ]
    if extra_targets:
        records += study([Family.SGD], [0.0], extra_targets)
    timings["threshold_study"] = time.perf_counter() - t1

    t_fixed = time.perf_counter()
    fixed: list[dict[str, Any]] = []
    if cfg.fixed_momentum > 0 and Family.MOMENTUM.value in cfg.families:
        fixed = study(
            [Family.MOMENTUM],
            cfg.powers,
            cfg.targets,
            fixed_momentum=cfg.fixed_momentum,
        )
    timings["fixed_momentum_study"] = time.perf_counter() - t_fixed

    if checkpoint is not None:
        checkpoint(records)
    t2 = time.perf_counter()
    fits = critical_batch_fits(records)
    all_targets = sorted({r["target"] for r in records})
    bound = lower_bound_curve(problem, all_targets, batch_sizes)
    timings["fits_and_bound"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    extras = {
        "fixed_momentum": fixed,
        "schedule_shapes": schedule_shapes(records, cfg.shape_batch_sizes),
        "momentum_transient": momentum_transient(
            cfg.transient_alpha_h, cfg.transient_one_minus_beta
        ),
    }
    timings["extras"] = time.perf_counter() - t3
    t4 = time.perf_counter()
    partial = StudyResult(records, fits, bound, extras)
    extras[LR_RANGE_TABLE] = optimal_lr_range_table(problem, partial, cfg)
    timings["lr_ranges"] = time.perf_counter() - t4
    t5 = time.perf_counter()
    extras.update(_frontier_tables(problem, records, cfg, batch_sizes, options))
    timings["frontier"] = time.perf_counter() - t5
    timings["study_total"] = time.perf_counter() - t0
    return StudyResult(records, fits, bound, extras, timings)


def _frontier_tables(
    problem: nqm.NQMProblem,
    records: Sequence[Mapping[str, Any]],
    cfg: ScalingConfig,
    batch_sizes: Sequence[int],
    options: Mapping[str, Any],
) -> dict[str, list[dict[str, Any]]]:
    """B_crit(L), the examples-vs-steps trade-off of the main curves, and the
    batch-ramp savings (:mod:`analysis.frontier`)."""
    from .frontier import critical_batch_rows, ramp_rows, tradeoff_rows

    out: dict[str, list[dict[str, Any]]] = {
        "steps_examples_tradeoff": tradeoff_rows(_main_records(records, cfg))
    }
    if cfg.bcrit_targets:
        out["critical_batch_vs_target"] = critical_batch_rows(
            problem, cfg.bcrit_families, cfg.bcrit_targets, batch_sizes, **options
        )
    if cfg.ramp_budgets:
        out["batch_ramp"] = ramp_rows(
            problem, cfg.targets[0], cfg.ramp_budgets, batch_sizes,
            pieces=cfg.ramp_pieces,
        )  # fmt: skip
    return out


def _select(rows: Iterable[Mapping[str, Any]], **equal: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in rows if all(r[k] == v for k, v in equal.items())]


def _main_records(
    records: Iterable[Mapping[str, Any]], cfg: ScalingConfig
) -> list[Mapping[str, Any]]:
    """The records of the main grid: its targets, families and powers."""
    return [
        r
        for r in records
        if r["target"] in set(cfg.targets)
        and r["family"] in cfg.families
        and r["precond_power"] in cfg.powers
    ]


def _optimal_lr_rows(result: StudyResult, cfg: ScalingConfig) -> list[dict[str, Any]]:
    """The tuned SGD and momentum records of the ``optimal_lr`` figure, flagged
    ``momentum_tuned`` (false for the fixed-momentum panel)."""
    main_targets = set(cfg.targets)
    return [
        dict(r, momentum_tuned=r["family"] == Family.MOMENTUM.value)
        for r in _main_records(result.records, cfg)
        if r["family"] in (Family.SGD.value, Family.MOMENTUM.value)
        and math.isfinite(r["steps"])
    ] + [
        dict(r, momentum_tuned=False)
        for r in result.extras.get("fixed_momentum", [])
        if r["target"] in main_targets and math.isfinite(r["steps"])
    ]


#: The extra table of optimal-lr ranges (:mod:`analysis.lr_range`).
LR_RANGE_TABLE = "optimal_lr_range"
_RANGE_COLUMNS = (
    "lr_min",
    "lr_max",
    "momentum_min",
    "momentum_max",
    "effective_lr_min",
    "effective_lr_max",
    "degenerate",
)
#: Records per task when the lr ranges are computed in parallel.
_RANGE_CHUNK = 8


def _range_key(r: Mapping[str, Any]) -> tuple:
    return (
        r["family"],
        bool(r["momentum_tuned"]),
        r["precond_power"],
        r["target"],
        r["batch_size"],
    )


def optimal_lr_range_table(
    problem: nqm.NQMProblem,
    result: StudyResult,
    cfg: ScalingConfig,
) -> list[dict[str, Any]]:
    """The range of optimal lrs of every point of the ``optimal_lr`` figure.

    Runs :func:`analysis.lr_range.optimal_lr_ranges` over the figure's records in
    chunks through :func:`analysis.executor.run_plan` (``cfg.workers``,
    ``cfg.executor``); the rows carry ``momentum_tuned`` to tell the panels
    apart.

    Returns:
        Rows of :func:`analysis.lr_range.optimal_lr_ranges` plus
        ``momentum_tuned``, in the figure's record order.
    """
    rows = _optimal_lr_rows(result, cfg)
    chunks = [rows[i : i + _RANGE_CHUNK] for i in range(0, len(rows), _RANGE_CHUNK)]
    tasks = [Task(i, optimal_lr_ranges, (problem, c)) for i, c in enumerate(chunks)]
    local = cfg.executor is ExecutorKind.LOCAL
    workers = _n_workers(cfg.workers, len(tasks)) if local else cfg.workers
    out = run_plan(
        tasks, executor=cfg.executor, workers=workers, ray_address=cfg.ray_address
    )
    return [
        dict(rng, momentum_tuned=r["momentum_tuned"])
        for i, chunk in enumerate(chunks)
        for r, rng in zip(chunk, out[i], strict=True)
    ]


def figure_tables(
    result: StudyResult, cfg: ScalingConfig
) -> dict[str, list[dict[str, Any]]]:
    """The tidy table of points behind each figure, keyed by figure name.

    Names are those of :data:`analysis.plots.FIGURES`. Selection only: every
    number comes from ``result``.
    """
    main_targets = set(cfg.targets)
    main = _main_records(result.records, cfg)
    bound = [dict(r, family="lower_bound") for r in result.lower_bound]
    main_bound = [r for r in bound if r["target"] in main_targets]
    threshold_targets = set(cfg.threshold_targets)
    threshold = [
        r
        for r in _select(result.records, family=Family.SGD.value, precond_power=0.0)
        if r["target"] in threshold_targets
    ]
    ranges = {_range_key(r): r for r in result.extras.get(LR_RANGE_TABLE, [])}
    lr_rows = [
        dict(r, **{k: ranges.get(_range_key(r), {}).get(k) for k in _RANGE_COLUMNS})
        for r in _optimal_lr_rows(result, cfg)
    ]
    pwc = [
        r for r in main if r["family"] == Family.PWC.value and math.isfinite(r["steps"])
    ]
    return {
        "steps_vs_batch_by_family": main + main_bound,
        "steps_vs_batch_by_power": main + main_bound,
        "loss_threshold": threshold
        + [r for r in bound if r["target"] in threshold_targets],
        "optimal_lr": lr_rows,
        "pwc_final_lr": pwc,
        "schedule_shapes": [
            r
            for r in result.extras.get("schedule_shapes", [])
            if r["target"] in main_targets
        ],
        "momentum_transient": list(result.extras.get("momentum_transient", [])),
        **{
            name: list(result.extras.get(name, []))
            for name in (
                "critical_batch_vs_target",
                "steps_examples_tradeoff",
                "batch_ramp",
            )
        },
    }


def write_study(result: StudyResult, directory: str | Path | RunFolder) -> list[Path]:
    """Write the study's tables (CSV + JSON each), atomically.

    Files: ``records``, ``critical_batch``, ``lower_bound``, one per extra
    table, and ``timings.json``.

    Args:
        result: the study.
        directory: a folder, or the :class:`~nqm.run_folder.RunFolder` of the
            run (which records each file's checksum for its manifest).

    Returns:
        The paths written.
    """
    if isinstance(directory, RunFolder):
        table, write_obj = directory.write_table, directory.write_json
    else:
        folder = Path(directory)

        def table(stem, rows, columns=None):
            return write_table(folder, stem, rows, columns)

        def write_obj(name, obj):
            return write_json(folder / name, obj)

    paths: list[Path] = []
    paths += table("records", result.records, RECORD_COLUMNS)
    paths += table("critical_batch", result.fits, FIT_COLUMNS)
    paths += table("lower_bound", result.lower_bound)
    for name, rows in result.extras.items():
        paths += table(name, rows)
    paths.append(write_obj("timings.json", result.timings))
    return paths
