r"""The reference run: train the workload's network once with checkpoints, then
estimate the NQM at the checkpoints and measure the loss floor.

The run is :func:`kfac_spectra.train.train` (the ``kfac_spectra run`` command:
resumable, checkpoints collected by :mod:`kfac_spectra.checkpoints`) on the
workload's built-in model and data set with the cross-entropy loss; at each
named checkpoint :func:`kfac_spectra.bridge.measure_nqm` builds the NQM (h and c
along the Kronecker eigen-directions, :math:`E[\theta_v(0)^2]` from the distance
to the final parameters; Zhang et al. 2019, appendix E.2). The floor
:math:`L_{\text{floor}}` is the workload's own metric (the sweep's evaluation
set, :class:`analysis.netscale.workload.Evaluator`) at the run's final
parameters: the point the estimate takes for the optimum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from analysis.netscale.workload import (
    BUILTIN_DATA,
    BUILTIN_MODELS,
    FILE_DATA,
    Evaluator,
    LossName,
    MetricName,
    WorkloadSpec,
    build_network,
    load_data,
)
from kfac_spectra.bridge import NQMEstimate, measure_nqm
from kfac_spectra.checkpoints import read_manifest
from kfac_spectra.train import TrainConfig, resolve_config, train

from .mapping import TargetMap, TargetMapping

__all__ = [
    "RESUME_FILE",
    "reference_config",
    "check_checkpoints",
    "run_reference",
    "estimate_checkpoints",
    "final_metric",
    "relative_target_maps",
]

#: The resume state of a run directory (holds the final parameters at the end).
RESUME_FILE = "resume.pt"


def reference_config(
    workload: WorkloadSpec,
    checkpoints: Sequence[int],
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """The :class:`~kfac_spectra.train.TrainConfig` of a workload's reference run.

    The model, data set, width and size come from the workload; the rest from
    ``TrainConfig``'s defaults, then ``config_file``, then ``overrides`` (e.g.
    ``steps``).

    Raises:
        ValueError: for a workload the reference run cannot train (a
            user-supplied factory, the ``mse`` loss, the ``test_error``
            metric) or checkpoints beyond the run's steps.
    """
    if workload.model not in BUILTIN_MODELS or workload.data not in (
        *BUILTIN_DATA,
        *FILE_DATA,
    ):
        raise ValueError(
            "model/data: the reference run trains the built-in models and data "
            "sets only; for a package.module:factory workload give --problem "
            "(an NQM .npz) and --floor"
        )
    if workload.loss is not LossName.CE:
        raise ValueError("loss: the reference run trains with ce; give --problem")
    if workload.metric is MetricName.TEST_ERROR:
        raise ValueError("metric: the NQM predicts a loss, not test_error")
    fields: dict[str, Any] = {
        "model": workload.model,
        "data": workload.data,
        "data_path": workload.data_dir,
        "width": workload.width,
        "checkpoints": ",".join(str(int(s)) for s in checkpoints),
    }
    if workload.data == "mnist1d":
        fields["data_size"] = workload.num_samples
    fields.update(overrides or {})
    return resolve_config(config_file, fields)


def check_checkpoints(run_dir: str | Path, checkpoints: Sequence[int]) -> None:
    """Refuse checkpoints that an existing run did not collect.

    Raises:
        ValueError: one line naming the missing steps and the collected ones.
    """
    collected = sorted(int(c["step"]) for c in read_manifest(run_dir)["checkpoints"])
    missing = sorted(set(int(s) for s in checkpoints) - set(collected))
    if missing:
        raise ValueError(
            f"checkpoints: step(s) {missing} not collected in {run_dir} "
            f"(collected: {collected})"
        )
    if not (Path(run_dir) / RESUME_FILE).is_file():
        raise ValueError(f"run: {run_dir} has no {RESUME_FILE} (not a finished run)")


def run_reference(config: TrainConfig, run_dir: str | Path) -> Path:
    """Train (or resume) the reference run; returns its directory."""
    return train(config, run_dir).run_dir


def estimate_checkpoints(
    run_dir: str | Path, checkpoints: Sequence[int]
) -> dict[int, NQMEstimate]:
    """:func:`kfac_spectra.bridge.measure_nqm` at each checkpoint."""
    return {int(s): measure_nqm(run_dir, int(s)) for s in checkpoints}


def final_metric(run_dir: str | Path, workload: WorkloadSpec) -> float:
    """The workload's metric at the run's final parameters.

    Raises:
        ValueError: when the run is unfinished or its model does not fit the
            workload's, or the metric is not finite.
    """
    manifest = read_manifest(run_dir)
    if not manifest.get("complete", False):
        raise ValueError(f"run: {run_dir} did not finish")
    cfg = manifest["config"]
    if cfg["model"] != workload.model or float(cfg["width"]) != workload.width:
        raise ValueError(
            f"run: {run_dir} trained {cfg['model']} width {cfg['width']}, the "
            f"workload is {workload.model} width {workload.width}"
        )
    state = torch.load(Path(run_dir) / RESUME_FILE, weights_only=False)
    data = load_data(workload)
    model = build_network(workload, data.spec, torch.Generator().manual_seed(0))
    model.load_state_dict(state["model"])
    model.eval()
    value = Evaluator(workload, data)(model)
    if not math.isfinite(value):
        raise ValueError(f"run: the final {workload.metric.value} is {value}")
    return float(value)


def relative_target_maps(
    run_dir: str | Path,
    estimates: Mapping[int, NQMEstimate],
    floor: float,
    metric: str,
) -> dict[int, TargetMap]:
    """Per checkpoint, the relative target mapping: it starts from the
    network's loss recorded at the checkpoint (the test loss for the
    ``test_loss`` metric, else the measurement batch's training loss) and from
    the estimated NQM's initial loss."""
    key = "test_loss" if metric == "test_loss" else "measure_loss"
    start = {
        int(c["step"]): float(c[key]) for c in read_manifest(run_dir)["checkpoints"]
    }
    return {
        int(s): TargetMap(floor, TargetMapping.RELATIVE, start[int(s)],
                          e.problem.initial_loss())
        for s, e in estimates.items()
    }  # fmt: skip
