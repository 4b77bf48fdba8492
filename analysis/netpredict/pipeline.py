r"""Predict, then check: the whole computation from NQM problems and measured
sweeps to the report's document (no I/O).

:func:`predict_and_check` runs, in order:

1. the target mapping :math:`L^* = L_{\text{target}} - L_{\text{floor}}` at the
   target and each further threshold (:func:`.mapping.nqm_target`);
2. the tuned NQM study of every optimizer's counterpart, on the first
   checkpoint's problem at every threshold and on the others at the target
   (:func:`.prediction.tuned_prediction`);
3. when sweeps are given, the measured tables (:mod:`.measured`), the
   comparison of the tuned curves, and the like-with-like comparison at the
   measured best settings with their seed repeats (:mod:`.compare`);
4. the rankings at the smallest and largest batch size and the four claims,
   judged on the prediction and on the measurement (:mod:`.claims`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

import nqm
from analysis.journal import ResultJournal

from .claims import Interval, judge_claims
from .compare import (
    SEED_LEVEL,
    curve_comparison,
    ranking,
    seed_bootstrap,
    setting_comparison,
)
from .mapping import COUNTERPARTS, PredictedOptimizer, TargetMap, nqm_optimizer
from .measured import MeasuredSweep, measured_tables
from .prediction import fit_b_crit, setting_prediction, tuned_prediction

__all__ = ["PredictionInputs", "predict_and_check"]


@dataclasses.dataclass(frozen=True)
class PredictionInputs:
    """Everything a prediction and its check need.

    Attributes:
        problems: checkpoint step (or a name, for a given problem) -> NQM
            problem; the first is the primary one.
        labels: the optimizers to predict.
        batch_sizes: batch sizes of the prediction.
        target: the network's target on its metric.
        thresholds: further network thresholds (> target) for claim 4.
        floor: the loss floor.
        floor_source: where the floor came from (``reference run`` or ``user``).
        target_maps: per problem, its :class:`~.mapping.TargetMap` (default:
            the excess mapping of ``floor`` for every problem).
        sweeps: measured sweeps of the same workload (may be empty).
        replicas: first-passage replicas per setting.
        n_boot: bootstrap replicates of the measured intervals.
        level: their confidence level.
        seed: seed of the bootstrap and the replicas.
        workers: NQM curves tuned in parallel.
        journal: where tuned curves are kept as they finish, so that a rerun
            after a kill resumes (``None``: nowhere).
    """

    problems: Mapping[int | str, nqm.NQMProblem]
    labels: tuple[PredictedOptimizer, ...]
    batch_sizes: tuple[int, ...]
    target: float
    thresholds: tuple[float, ...]
    floor: float
    floor_source: str
    target_maps: Mapping[int | str, TargetMap] | None = None
    sweeps: Sequence[MeasuredSweep] = ()
    replicas: int = 500
    n_boot: int = 200
    level: float = 0.9
    seed: int = 0
    workers: int = 1
    journal: ResultJournal | None = None


def _map(inp: PredictionInputs, key: int | str) -> TargetMap:
    if inp.target_maps is None:
        return TargetMap(inp.floor)
    return inp.target_maps[key]


def _measured(
    inp: PredictionInputs, taus: Sequence[float]
) -> dict[PredictedOptimizer, tuple[MeasuredSweep, dict[str, Any]]]:
    out: dict[PredictedOptimizer, tuple[MeasuredSweep, dict[str, Any]]] = {}
    for sweep in inp.sweeps:
        tables = measured_tables(
            sweep, taus, n_boot=inp.n_boot, level=inp.level, seed=inp.seed
        )
        for label, table in tables.items():
            if label in out:
                raise ValueError(
                    f"sweep: {label.value} is measured by both {out[label][0].path} "
                    f"and {sweep.path}"
                )
            out[label] = (sweep, table)
    return out


def _settings(
    inp: PredictionInputs,
    problem: nqm.NQMProblem,
    label: PredictedOptimizer,
    sweep: MeasuredSweep,
    table: Mapping[str, Any],
    index: int,
) -> dict[str, Any] | None:
    """The like-with-like comparison at the measured best settings (None when
    the sweep has no repeats or the optimizer has no exact NQM setting)."""
    points, groups, pred_mean, pred_median = [], [], [], []
    tmap = _map(inp, next(iter(inp.problems)))
    target0 = tmap(inp.target)
    for j, (b, repeats) in enumerate(sorted(table["repeats"].items())):
        opt = nqm_optimizer(label, repeats[0]["hparams"])
        if opt is None:
            return None
        gen = torch.Generator().manual_seed(
            int(
                np.random.SeedSequence(inp.seed, spawn_key=(index, j)).generate_state(
                    1
                )[0]
            )
        )
        pred = setting_prediction(
            problem, opt, b, target0, eval_every=sweep.eval_every,
            max_steps=sweep.max_steps, replicas=inp.replicas, generator=gen,
        )  # fmt: skip
        point = setting_comparison(
            repeats, pred, inp.target, inp.floor, sweep.max_steps, scale=tmap.scale
        )
        points.append({"batch_size": int(b), "hparams": repeats[0]["hparams"], **point})
        groups.append(repeats)
        pred_mean.append(pred["expected_crossing_grid"])
        pred_median.append(pred["first_passage_median"])
    if not points:
        return None
    bs = [p["batch_size"] for p in points]
    rng = np.random.default_rng(np.random.SeedSequence(inp.seed, spawn_key=(index,)))
    boot = seed_bootstrap(
        bs, groups, inp.target, n_boot=inp.n_boot, level=SEED_LEVEL, rng=rng
    )
    b_crit = {}
    for name, pred_steps in (("mean", pred_mean), ("median", pred_median)):
        predicted = fit_b_crit(bs, pred_steps)["b_crit"]
        iv = boot[name]
        b_crit[name] = {
            "predicted": predicted,
            "measured": iv.as_dict(),
            "agrees": bool(iv.low <= predicted <= iv.high),
        }
    return {"points": points, "b_crit": b_crit}


def _tuned_rows(inp: PredictionInputs, taus: Sequence[float]) -> dict[int, list]:
    out = {}
    for i, (step, problem) in enumerate(inp.problems.items()):
        nqm_taus = [_map(inp, step)(t) for t in taus]
        out[step] = tuned_prediction(
            problem, inp.labels, inp.batch_sizes, nqm_taus if i == 0 else nqm_taus[:1],
            workers=inp.workers, journal=inp.journal,
        )  # fmt: skip
    return out


def _predicted_entry(
    inp: PredictionInputs,
    label: PredictedOptimizer,
    rows: Sequence[Mapping[str, Any]],
    taus: Sequence[float],
) -> tuple[dict[str, Any], Mapping[str, Any], dict[float, Interval]]:
    """One optimizer's predicted part: (entry, its main tuned row, its B_crit
    per network threshold)."""
    cp = COUNTERPARTS[label]
    tmap = _map(inp, next(iter(inp.problems)))
    target0 = tmap(inp.target)
    mine = [r for r in rows if r["optimizer"] == label.value]
    main = next(
        r for r in mine
        if r["precond_power"] == cp.power and math.isclose(r["target"], target0)
    )  # fmt: skip
    sens = {
        f"{r['precond_power']:g}": {"steps": r["steps"], "b_crit": r["b_crit"]}
        for r in mine
        if r["precond_power"] != cp.power and math.isclose(r["target"], target0)
    }
    by_tau = {
        tau: Interval.point(r["b_crit"])
        for tau in taus
        for r in mine
        if r["precond_power"] == cp.power and math.isclose(r["target"], tmap(tau))
    }
    keys = ("batch_sizes", "steps", "lr", "momentum", "ema", "b_crit", "s_min", "r2",
            "b_crit_in_range")  # fmt: skip
    entry: dict[str, Any] = {
        "family": cp.family.value,
        "precond_power": cp.power,
        "predicted": {
            **{k: main[k] for k in keys},
            "precond_power": cp.power,
            "sensitivity": sens,
            "b_crit_by_threshold": {f"{t:g}": iv.value for t, iv in by_tau.items()},
        },
        "measured": None,
        "comparison": [],
        "settings": None,
    }
    return entry, main, by_tau


def _measured_entry(
    sweep: MeasuredSweep, table: Mapping[str, Any], main: Mapping[str, Any]
) -> dict[str, Any]:
    """One optimizer's measured part and its comparison with the prediction."""
    return {
        "measured": {
            "sweep": str(sweep.path),
            "name": table["name"],
            "batch_sizes": table["batch_sizes"],
            "steps": table["steps"],
            "b_crit": table["b_crit"].value,
            "b_crit_low": table["b_crit"].low,
            "b_crit_high": table["b_crit"].high,
            "s_min": table["s_min"],
            "b_crit_by_threshold": {
                f"{t:g}": iv.as_dict() for t, iv in table["b_crit_by_threshold"].items()
            },
        },
        "comparison": curve_comparison(
            main["batch_sizes"],
            main["steps"],
            main["s_min"],
            table["batch_sizes"],
            table["steps"],
            table["s_min"],
        ),  # fmt: skip
    }


def predict_and_check(inp: PredictionInputs) -> dict[str, Any]:
    """Run the prediction and, with sweeps, its check.

    Returns:
        The document written as ``prediction.json``: ``target`` (network
        target, floor and its source, NQM target), ``optimizers`` (per label:
        ``predicted``, ``measured``, ``comparison``, ``settings``),
        ``rankings``, ``claims`` (``predicted`` and ``measured``) and
        ``checkpoints`` (per checkpoint and label: B_crit and S_min).

    Raises:
        ValueError: for a target at or below the floor, or two sweeps that
            measure the same optimizer.
    """
    taus = [inp.target, *sorted(set(inp.thresholds) - {inp.target})]
    for key in inp.problems:
        for t in taus:
            _map(inp, key)(t)
    primary = next(iter(inp.problems))
    target0 = _map(inp, primary)(inp.target)
    rows = _tuned_rows(inp, taus)
    measured = _measured(inp, taus)
    optimizers: dict[str, Any] = {}
    pred: dict[str, tuple] = {}
    meas: dict[str, tuple] = {}
    for index, label in enumerate(inp.labels):
        entry, main, by_tau = _predicted_entry(inp, label, rows[primary], taus)
        steps = dict(zip(main["batch_sizes"], main["steps"], strict=True))
        pred[label.value] = (steps, Interval.point(main["b_crit"]), by_tau)
        if label in measured:
            sweep, table = measured[label]
            entry.update(_measured_entry(sweep, table, main))
            entry["settings"] = _settings(
                inp, inp.problems[primary], label, sweep, table, index
            )
            steps = dict(zip(table["batch_sizes"], table["steps"], strict=True))
            meas[label.value] = (steps, table["b_crit"], table["b_crit_by_threshold"])
        optimizers[label.value] = entry
    small, large = min(inp.batch_sizes), max(inp.batch_sizes)
    rankings: dict[str, dict[str, Any]] = {
        "small": {"batch_size": small},
        "large": {"batch_size": large},
    }
    claims = {}
    for kind, parts in (("predicted", pred), ("measured", meas)):
        if not parts:
            continue
        steps = {k: v[0] for k, v in parts.items()}
        rankings["small"][kind] = ranking(steps, small)
        rankings["large"][kind] = ranking(steps, large)
        claims[kind] = judge_claims(
            {k: v[1] for k, v in parts.items()},
            steps,
            {k: v[2] for k, v in parts.items()},
        )
    checkpoints = {
        str(step): {
            "nqm_target": _map(inp, step)(inp.target),
            **{
                r["optimizer"]: {"b_crit": r["b_crit"], "s_min": r["s_min"]}
                for r in step_rows
                if r["precond_power"]
                == COUNTERPARTS[PredictedOptimizer(r["optimizer"])].power
                and math.isclose(r["target"], _map(inp, step)(inp.target))
            },
        }
        for step, step_rows in rows.items()
    }
    return {
        "target": {
            "network_target": inp.target,
            "floor": inp.floor,
            "floor_source": inp.floor_source,
            "mapping": _map(inp, primary).mapping.value,
            "scale": _map(inp, primary).scale,
            "nqm_target": target0,
            "thresholds": taus,
        },
        "primary_checkpoint": primary,
        "batch_sizes": list(inp.batch_sizes),
        "optimizers": optimizers,
        "rankings": rankings,
        "claims": claims,
        "checkpoints": checkpoints,
    }
