"""Read the public archive of Shallue et al. (2018) into the sweep's trial records.

The archive (``batch_science_data.tar.bz2``, unpacked by the user; nothing is
downloaded here) holds one directory per *workload* (data set, model,
optimizer), one sub-directory per *study* (a batch size) and one per *trial*::

    <workload>/<study>/study.json                 batch_size, optimizer, model,
                                                  dataset, parameter_configs,
                                                  train_steps
    <workload>/<study>/<trial>/metadata.json      trial_id, status, steps,
                                                  parameters
    <workload>/<study>/<trial>/measurements.csv   a ``step`` column and one
                                                  column per metric, e.g.
                                                  ``train/cross_entropy_error``

Study and trial directories are named by integers. A trial's ``status`` is
``COMPLETE``, ``INCOMPLETE`` (left out unless asked for) or ``INFEASIBLE``
(diverged: kept as infeasible, like the sweep's own ``diverged`` trials). The
records carry the full measured curve of the chosen metric, so
:mod:`analysis.netscale.results` computes steps to result at any threshold at or
above the chosen target (archive curves are not cut at a target: any threshold
the curves reach works, set ``target`` to the lowest one needed).

References:
    Shallue et al. (2018), Measuring the effects of data parallelism on neural
    network training, section 3 and the data release described there.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from .trial import Status

__all__ = ["ArchiveStatus", "read_study", "read_workload"]


class ArchiveStatus:
    """The archive's trial statuses."""

    COMPLETE = "COMPLETE"
    INCOMPLETE = "INCOMPLETE"
    INFEASIBLE = "INFEASIBLE"


def _int_dirs(path: Path) -> list[Path]:
    dirs = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(dirs, key=lambda p: int(p.name))


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"archive: missing {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"archive: {path} is not JSON ({exc})") from None


def _curve(path: Path, metric: str) -> tuple[list[int], list[float | None]]:
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "step" not in reader.fieldnames:
                raise ValueError(f"archive: {path} has no 'step' column")
            if metric not in reader.fieldnames:
                raise ValueError(
                    f"archive: {path} has no column {metric!r}; it has "
                    f"{', '.join(c for c in reader.fieldnames if c != 'step')}"
                )
            rows = [(int(float(r["step"])), r[metric]) for r in reader]
    except FileNotFoundError:
        raise ValueError(f"archive: missing {path}") from None
    rows.sort(key=lambda r: r[0])
    values: list[float | None] = []
    for _, text in rows:
        v = float(text) if text not in ("", None) else math.nan
        values.append(v if math.isfinite(v) else None)
    return [s for s, _ in rows], values


def read_study(
    study_dir: str | os.PathLike,
    *,
    metric: str,
    target: float,
    include_incomplete: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read one study (one batch size) of the archive.

    Args:
        study_dir: directory with ``study.json`` and the trial directories.
        metric: the measurements column to record, e.g.
            ``"train/cross_entropy_error"``.
        target: the threshold of the records' ``steps``.
        include_incomplete: also read ``INCOMPLETE`` trials (as ``budget``).

    Returns:
        ``(study, records)``: the study's metadata (with its search space under
        ``parameter_configs``) and one record per trial in trial-id order, with
        the fields of :func:`analysis.netscale.trial.run_trial`'s records.

    Raises:
        ValueError: for a missing or malformed file, or a missing metric column.
    """
    root = Path(study_dir)
    study = _json(root / "study.json")
    for key in ("batch_size", "optimizer"):
        if key not in study:
            raise ValueError(f"archive: {root / 'study.json'} has no {key!r}")
    records = []
    for trial_dir in _int_dirs(root):
        meta = _json(trial_dir / "metadata.json")
        status = meta.get("status")
        if status == ArchiveStatus.INCOMPLETE and not include_incomplete:
            continue
        if status not in (
            ArchiveStatus.COMPLETE,
            ArchiveStatus.INCOMPLETE,
            ArchiveStatus.INFEASIBLE,
        ):
            raise ValueError(f"archive: {trial_dir} has unknown status {status!r}")
        steps, curve = _curve(trial_dir / "measurements.csv", metric)
        hit = next(
            (
                s
                for s, v in zip(steps, curve, strict=True)
                if v is not None and v <= target
            ),
            None,
        )
        if status == ArchiveStatus.INFEASIBLE:
            state = Status.DIVERGED
        else:
            state = Status.REACHED if hit is not None else Status.BUDGET
        records.append(
            {
                "optimizer": str(study["optimizer"]),
                "batch_size": int(study["batch_size"]),
                "trial": int(meta.get("trial_id", trial_dir.name)),
                "repeat": 0,
                "hparams": {k: v for k, v in meta.get("parameters", {}).items()},
                "status": state.value,
                "steps": hit if state is not Status.DIVERGED else None,
                "metric": metric,
                "target": float(target),
                "curve_steps": steps,
                "curve": curve,
                "archive_status": status,
            }
        )
    return study, records


def read_workload(
    workload_dir: str | os.PathLike,
    *,
    metric: str,
    target: float,
    include_incomplete: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read every study (batch size) of one archive workload.

    Args:
        workload_dir: ``<dataset>/<model>/<optimizer>`` of the unpacked archive.
        metric: the measurements column (see :func:`read_study`).
        target: the threshold of the records' ``steps``.
        include_incomplete: also read ``INCOMPLETE`` trials.

    Returns:
        ``(studies, records)``: each study's metadata in batch-size order, and
        all trial records.

    Raises:
        ValueError: if the directory holds no study, or a file is malformed.
    """
    root = Path(workload_dir)
    if not root.is_dir():
        raise ValueError(f"archive: {root} is not a directory")
    studies, records = [], []
    for study_dir in _int_dirs(root):
        study, recs = read_study(
            study_dir,
            metric=metric,
            target=target,
            include_incomplete=include_incomplete,
        )
        studies.append(study)
        records.extend(recs)
    if not studies:
        raise ValueError(f"archive: no study directories in {root}")
    studies.sort(key=lambda s: int(s["batch_size"]))
    return studies, records
