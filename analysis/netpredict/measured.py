r"""The measured side: a ``net-scaling`` sweep read back, checked and tabulated.

A sweep directory holds ``sweep.json`` (what its trials compute: the workload,
the optimizers, the averaging flag and schedule, the step budget and evaluation
spacing) and ``trials.jsonl`` (every trial's curve). Everything here is
computed from those curves with :mod:`analysis.netscale.results`:

* per optimizer and batch size, the fewest steps over the tuning trials;
* per optimizer and threshold, the critical batch size with its m-out-of-n
  bootstrap interval (:func:`~analysis.netscale.results.critical_batch_table`);
* per optimizer and batch size, the repeats of the best trial
  (``--seeds K``): the runs that the like-with-like comparison of
  :mod:`.compare` uses.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from analysis.netscale import results
from analysis.netscale.records import read_log

from .claims import Interval
from .mapping import PredictedOptimizer, measured_label

__all__ = [
    "WORKLOAD_FIELDS",
    "MeasuredSweep",
    "read_sweep",
    "check_workload",
    "measured_tables",
]

#: The fields of ``sweep.json`` that name the workload (the target may differ:
#: a prediction may ask for any threshold the trials' curves reach).
WORKLOAD_FIELDS: tuple[str, ...] = (
    "model",
    "data",
    "data_dir",
    "loss",
    "metric",
    "width",
    "num_samples",
    "eval_size",
)


@dataclasses.dataclass(frozen=True)
class MeasuredSweep:
    """A sweep read back.

    Attributes:
        path: its directory.
        identity: the contents of ``sweep.json``.
        records: the trial records.
    """

    path: Path
    identity: Mapping[str, Any]
    records: Sequence[Mapping[str, Any]]

    @property
    def eval_every(self) -> int:
        """Steps between evaluations of the trials' metric."""
        return int(self.identity["eval_every"])

    @property
    def max_steps(self) -> int:
        """The trials' step budget."""
        return int(self.identity["max_steps"])

    @property
    def target(self) -> float:
        """The threshold the tuning trials stopped at."""
        return float(self.identity["target"])

    def labels(self) -> dict[str, PredictedOptimizer]:
        """Measured optimizer name -> counterpart label (mapped ones only)."""
        out = {}
        for name in sorted({str(r["optimizer"]) for r in self.records}):
            label = measured_label(
                name, bool(self.identity.get("ema", False)),
                self.identity.get("schedule", "constant"),
            )  # fmt: skip
            if label is not None:
                out[name] = label
        return out


def read_sweep(path: str | Path) -> MeasuredSweep:
    """Read ``sweep.json`` and ``trials.jsonl`` of a ``net-scaling`` output.

    Raises:
        ValueError: when either file is missing or holds no trials, or the
            sweep was read from the archive (no workload to check).
    """
    path = Path(path)
    ident_path = path / "sweep.json"
    if not ident_path.is_file():
        raise ValueError(f"sweep: {path} has no sweep.json (not a net-scaling output)")
    identity = json.loads(ident_path.read_text(encoding="utf-8"))
    if "archive" in identity:
        raise ValueError(f"sweep: {path} was read from an archive, not trained here")
    records, _ = read_log(path / "trials.jsonl")
    if not records:
        raise ValueError(f"sweep: {path} holds no finished trials")
    return MeasuredSweep(path, identity, records)


def check_workload(
    sweep: MeasuredSweep, workload: Mapping[str, Any], target: float
) -> None:
    """Refuse a sweep of another workload, or a target its trials never reached.

    Args:
        sweep: the sweep read back.
        workload: the prediction's workload fields (:data:`WORKLOAD_FIELDS`).
        target: the prediction's target on the network's metric.

    Raises:
        ValueError: one line naming the differing fields and both values.
    """
    diff = [
        f"{k}: {sweep.identity.get(k)!r} there, {workload.get(k)!r} here"
        for k in WORKLOAD_FIELDS
        if sweep.identity.get(k) != workload.get(k)
    ]
    if diff:
        raise ValueError(
            f"sweep: {sweep.path} measured another workload ({'; '.join(diff)})"
        )
    if target < sweep.target:
        raise ValueError(
            f"target {target:g} lies below the sweep's target {sweep.target:g}: "
            f"its tuning trials stopped there (sweep {sweep.path})"
        )


def _by_optimizer(records: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for r in records:
        out[str(r["optimizer"])].append(r)
    return out


def measured_tables(
    sweep: MeasuredSweep,
    thresholds: Sequence[float],
    *,
    n_boot: int,
    level: float,
    seed: int,
) -> dict[PredictedOptimizer, dict[str, Any]]:
    """Per mapped optimizer: steps, critical batch sizes and repeats.

    Args:
        sweep: the sweep.
        thresholds: the target first, then further thresholds (each >= the
            sweep's target).
        n_boot: bootstrap replicates.
        level: confidence level of the intervals.
        seed: bootstrap seed.

    Returns:
        label -> ``name`` (the sweep's optimizer), ``batch_sizes``, ``steps``
        (at the target), ``hparams`` (best trial per batch size),
        ``b_crit`` (an :class:`~.claims.Interval` at the target),
        ``s_min``, ``b_crit_by_threshold`` ({threshold: Interval}) and
        ``repeats`` ({batch size: repeat records}).
    """
    out = {}
    groups = _by_optimizer(sweep.records)
    for name, label in sweep.labels().items():
        recs = groups[name]
        rows = results.steps_table(recs, thresholds[0])
        crit = results.critical_batch_table(
            recs, n_boot=n_boot, level=level, seed=seed, thresholds=thresholds
        )
        by_tau = {
            float(r["threshold"]): Interval(
                r["b_crit"], r["b_crit_low"], r["b_crit_high"]
            )
            for r in crit
        }
        repeats: dict[int, list] = defaultdict(list)
        for r in recs:
            if int(r.get("repeat", 0)) > 0:
                repeats[int(r["batch_size"])].append(r)
        hparams = {}
        for row in rows:
            hparams[int(row["batch_size"])] = {
                k[3:]: v for k, v in row.items() if k.startswith("hp_")
            }
        out[label] = {
            "name": name,
            "batch_sizes": [int(r["batch_size"]) for r in rows],
            "steps": [float(r["steps"]) for r in rows],
            "hparams": hparams,
            "b_crit": by_tau[float(thresholds[0])],
            "s_min": float(crit[0]["s_min"]) if crit else math.nan,
            "b_crit_by_threshold": by_tau,
            "repeats": dict(repeats),
        }
    return out
