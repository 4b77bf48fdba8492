"""The one visible block of defaults of ``python -m analysis net-scaling``.

Precedence, lowest first: the defaults of :class:`NetScalingConfig`, the
``--quick`` preset (:data:`QUICK_OVERRIDES`), a TOML file (``--config``), then
explicit command-line options, merged by :func:`nqm.config.resolve_config`.

A TOML file uses the field names, for example::

    model = "simple_cnn"
    optimizers = ["sgd", "adam"]
    batch_sizes = "2^4..2^10"
    target = 0.4
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nqm.config
from analysis.config import parse_batch_sizes
from analysis.executor import ExecutorKind, executor_options

from .optimizers import OptimizerName, Schedule
from .plan import SweepSpec
from .workload import LossName, MetricName, WorkloadSpec

__all__ = ["NetScalingConfig", "QUICK_OVERRIDES", "resolve_net_config"]


def _batch_sizes(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        return parse_batch_sizes(value)
    if isinstance(value, (list, tuple)):
        return tuple(parse_batch_sizes(str(v))[0] for v in value)
    return parse_batch_sizes(str(value))


def _optimizers(value: Any) -> tuple[OptimizerName, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        try:
            out.append(OptimizerName(str(item).strip()))
        except ValueError:
            choices = ",".join(m.value for m in OptimizerName)
            raise ValueError(
                f"optimizers: unknown optimizer {item!r}; choose from {choices}"
            ) from None
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class NetScalingConfig:
    """Every knob of a measured sweep (defaults: the ~15 min CPU study).

    Attributes:
        model: built-in model name or ``package.module:factory``
            (:mod:`analysis.netscale.workload`).
        data: built-in data set or ``package.module:factory``.
        data_dir: directory of the file-based data sets (mnist, cifar10, ...).
        loss: ``ce`` or ``mse``.
        metric: ``train_loss``, ``test_loss`` or ``test_error``.
        target: the threshold the metric must reach.
        width: size multiplier of the built-in models.
        num_samples: MNIST-1D examples (train + test).
        eval_size: evaluate on the first this many examples (unset: all).
        optimizers: optimizers to tune.
        ema: evaluate the iterates' exponential moving average (γ tuned).
        schedule: ``constant`` or ``linear_decay``.
        batch_sizes: batch sizes (``"2^4..2^10"`` or a list).
        trials: tuning trials per (optimizer, batch size).
        max_steps: step budget per trial.
        eval_every: steps between evaluations of the metric.
        seed: the sweep seed.
        seeds: repeats of each best trial with independent seeds (0: none).
        thresholds: further thresholds (>= target) for the loss-threshold
            figure; unset: 1.5, 2 and 3 times the target.
        n_boot: bootstrap replicates of the critical batch size.
        level: confidence level of its interval.
        workers: trials in flight (0: one per CPU; 1: in this process).
        executor: ``local`` or ``ray``.
        ray_address: the Ray cluster to join (``executor = "ray"``).
        out: directory of ``trials.jsonl``, the tables and the manifest.
        figures: directory of the figures and their points.
    """

    model: str = "mlp"
    data: str = "mnist1d"
    data_dir: str | None = None
    loss: LossName = LossName.CE
    metric: MetricName = MetricName.TRAIN_LOSS
    target: float = 0.5
    width: float = 0.125
    num_samples: int = 5000
    eval_size: int | None = 1000
    optimizers: tuple[OptimizerName, ...] = dataclasses.field(
        default=(
            OptimizerName.SGD,
            OptimizerName.MOMENTUM,
            OptimizerName.ADAM,
            OptimizerName.KFAC,
        ),
        metadata={nqm.config.PARSE: _optimizers},
    )
    ema: bool = False
    schedule: Schedule = Schedule.CONSTANT
    batch_sizes: tuple[int, ...] = dataclasses.field(
        default=tuple(2**k for k in range(4, 11)),
        metadata={nqm.config.PARSE: _batch_sizes},
    )
    trials: int = 8
    max_steps: int = 3000
    eval_every: int = 25
    seed: int = 0
    seeds: int = 0
    thresholds: tuple[float, ...] = ()
    n_boot: int = 200
    level: float = 0.9
    workers: int = 0
    executor: ExecutorKind = ExecutorKind.LOCAL
    ray_address: str | None = None
    out: str = "results/net-scaling"
    figures: str = "figures/net-scaling"

    def __post_init__(self) -> None:
        _validate(self)

    def workload(self) -> WorkloadSpec:
        """The :class:`~analysis.netscale.workload.WorkloadSpec` of this sweep."""
        return nqm.config.from_fields(WorkloadSpec, self)

    def sweep(self) -> SweepSpec:
        """The :class:`~analysis.netscale.plan.SweepSpec` of this sweep."""
        return nqm.config.from_fields(
            SweepSpec,
            self,
            workload=self.workload(),
            batch_sizes=tuple(sorted(set(self.batch_sizes))),
        )

    def figure_thresholds(self) -> tuple[float, ...]:
        """The thresholds of the loss-threshold figure (the target first)."""
        extra = self.thresholds or tuple(
            t
            for t in (1.5 * self.target, 2 * self.target, 3 * self.target)
            if self.metric is not MetricName.TEST_ERROR or t <= 1
        )
        return (self.target, *sorted(set(extra) - {self.target}))

    def to_toml(self) -> str:
        """The configuration as TOML that ``--config`` reads back."""
        return nqm.config.config_to_toml(
            self, "resolved net-scaling configuration (python -m analysis net-scaling)"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as their values)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = (
                [getattr(x, "value", x) for x in v]
                if isinstance(v, tuple)
                else getattr(v, "value", v)
            )
        return out


#: ``--quick``: about a minute on 2 cores (2 optimizers, 4 batch sizes, 3 trials).
QUICK_OVERRIDES: Mapping[str, Any] = {
    "optimizers": (OptimizerName.SGD, OptimizerName.ADAM),
    "batch_sizes": (32, 64, 128, 256),
    "trials": 3,
    "max_steps": 600,
    "target": 0.9,
    "n_boot": 50,
}


def _positive_int(cfg: NetScalingConfig, name: str, minimum: int = 1) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")


def _validate(cfg: NetScalingConfig) -> None:
    cfg.workload()  # model, data, loss, metric, target, width
    if not cfg.optimizers:
        raise ValueError("optimizers must not be empty")
    object.__setattr__(cfg, "optimizers", _optimizers(cfg.optimizers))
    object.__setattr__(cfg, "schedule", Schedule(cfg.schedule))
    if not cfg.batch_sizes:
        raise ValueError("batch_sizes must not be empty")
    for b in cfg.batch_sizes:
        if isinstance(b, bool) or int(b) != b or b < 1:
            raise ValueError(f"batch size must be an integer >= 1, got {b!r}")
    _positive_int(cfg, "trials")
    _positive_int(cfg, "max_steps")
    _positive_int(cfg, "eval_every")
    _positive_int(cfg, "seeds", 0)
    _positive_int(cfg, "seed", 0)
    _positive_int(cfg, "n_boot", 0)
    if not 0 < cfg.level < 1:
        raise ValueError(f"level must lie in (0, 1), got {cfg.level!r}")
    for t in cfg.thresholds:
        if not (math.isfinite(t) and t >= cfg.target):
            raise ValueError(
                f"thresholds must be >= the target {cfg.target} (the trials stop "
                f"there), got {t!r}"
            )
    kind = executor_options(cfg.executor, cfg.workers, cfg.ray_address)
    object.__setattr__(cfg, "executor", kind)


def resolve_net_config(
    *,
    quick: bool = False,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NetScalingConfig:
    """Merge defaults < quick preset < config file < explicit overrides.

    Raises:
        ValueError: naming the offending key or value.
    """
    base = NetScalingConfig()
    if quick:
        base = dataclasses.replace(base, **QUICK_OVERRIDES)
    return nqm.config.resolve_config(
        NetScalingConfig, config_file, overrides, base=base
    )
