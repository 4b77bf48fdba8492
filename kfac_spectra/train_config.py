"""The configuration of a training run: every default in one frozen dataclass.

:class:`TrainConfig` holds the defaults and validates a run's values;
:func:`resolve_config` layers a TOML file and then a mapping (the CLI's flags) on
top of them through :func:`nqm.config.resolve_config`, the resolver every command
of the project shares; :func:`nqm.config.config_to_toml` writes the resolved
configuration beside the results, in a form that reads back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kfac_spectra.data import DatasetName
from kfac_spectra.kfac import FisherType
from kfac_spectra.models import ModelName
from nqm import config as config_layer

__all__ = ["FactorSource", "OptimizerName", "TrainConfig", "resolve_config"]

#: The TOML table of a run's fields (a file may also set them at the top level).
TOML_TABLE = "train"


class OptimizerName(StrEnum):
    """Training optimizer."""

    KFAC = "kfac"
    SGD = "sgd"
    ADAM = "adam"


class FactorSource(StrEnum):
    """Where the Kronecker factors saved at a checkpoint come from."""

    OPTIMIZER = "optimizer"
    """K-FAC's own moving-average factors (the basis it preconditions in); falls
    back to ``MEASURE`` where there are none (step 0, SGD, Adam)."""
    MEASURE = "measure"
    """:func:`~kfac_spectra.compute_factors` on the fixed measurement batch."""


@dataclass(frozen=True)
class TrainConfig:
    """Every default of a run. Override from TOML or the command line.

    Attributes:
        model: A :class:`kfac_spectra.models.ModelName`.
        data: A :class:`kfac_spectra.data.DatasetName`.
        data_path: Directory or file for data sets read from disk.
        data_size: Examples to generate (MNIST-1D) or sequences (synthetic text);
            ``None`` keeps the loader's default.
        data_seed: Seed of the data generation/split.
        width: Model width multiplier.
        optimizer: :class:`OptimizerName`.
        steps: Training steps.
        batch_size: Training batch size B.
        lr: Learning rate α.
        momentum: Heavy-ball β (SGD, K-FAC) or Adam's β₁.
        weight_decay: L2 coefficient.
        damping: K-FAC damping λ (0.03 with ``kl_clip=1e-3`` is stable on
            MNIST-1D; 1e-3 without clipping diverged at lr 0.01).
        kl_clip: K-FAC KL clip κ (``None`` disables).
        factor_interval: K-FAC steps between factor updates.
        inverse_interval: K-FAC steps between inverse updates.
        checkpoints: Steps at which to collect (the final step is always added).
        factor_source: :class:`FactorSource` of the saved factors and basis.
        measure_examples: Size of the fixed measurement batch.
        measure_fisher: :class:`~kfac_spectra.kfac.FisherType` of the measured
            factors and curvature (``"mc"``: one sampled target, cheap and
            unbiased; ``"type2"``: exact GGN, ~C times dearer for C classes).
        mc_samples: Sampled targets per example for ``"mc"``.
        seed: Seed of initialisation, data order and K-FAC sampling.
        device: ``"cpu"`` or ``"cuda"``.
    """

    model: str = ModelName.RESNET8.value
    data: str = DatasetName.MNIST1D.value
    data_path: str | None = None
    data_size: int | None = None
    data_seed: int = 0
    width: float = 1.0
    optimizer: str = OptimizerName.KFAC.value
    steps: int = 300
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    damping: float = 0.03
    kl_clip: float | None = 1e-3
    factor_interval: int = 1
    inverse_interval: int = 10
    checkpoints: tuple[int, ...] = (0, 50, 150)
    factor_source: str = FactorSource.OPTIMIZER.value
    measure_examples: int = 256
    measure_fisher: str = FisherType.MC.value
    mc_samples: int = 1
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name, enum in (
            ("model", ModelName),
            ("data", DatasetName),
            ("optimizer", OptimizerName),
            ("measure_fisher", FisherType),
            ("factor_source", FactorSource),
        ):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value).value)
            except ValueError:
                raise ValueError(
                    f"{name}: unknown value {value!r}; choose from "
                    f"{[m.value for m in enum]}"
                ) from None
        positive = ("steps", "batch_size", "factor_interval", "inverse_interval")
        for name in (*positive, "mc_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.measure_examples < 2:
            raise ValueError(
                f"measure_examples must be >= 2, got {self.measure_examples}"
            )
        for name in ("lr", "width", "damping"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.kl_clip is not None and not self.kl_clip > 0:
            raise ValueError(f"kl_clip must be None or > 0, got {self.kl_clip}")
        if self.data_size is not None and self.data_size < 1:
            raise ValueError(f"data_size must be >= 1, got {self.data_size}")
        marks = tuple(sorted({int(s) for s in self.checkpoints}))
        if marks and (marks[0] < 0 or marks[-1] > self.steps):
            raise ValueError(
                f"checkpoints must lie in [0, steps={self.steps}], got {marks}"
            )
        object.__setattr__(self, "checkpoints", marks)
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(
                f"device: expected 'cpu' or 'cuda[:k]', got {self.device!r}"
            )

    @property
    def collect_steps(self) -> tuple[int, ...]:
        """The checkpoints plus the final step, ascending."""
        return tuple(sorted({*self.checkpoints, self.steps}))


def resolve_config(
    toml_path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Defaults, then the TOML file, then ``overrides`` (later wins).

    Args:
        toml_path: A TOML file of ``field = value`` pairs (top level, or a
            ``[train]`` table).
        overrides: Field name -> value (strings are parsed, e.g. ``"0,50,200"``;
            ``None`` sets an optional field to ``None`` and is an error for
            the others).
        base: Starting point (default: :class:`TrainConfig`'s defaults).

    Returns:
        The resolved configuration.

    Raises:
        ValueError: For an unreadable file, an unknown field or a bad value.
    """
    # an explicit None is a value here (kl_clip=None disables clipping), whereas
    # the shared resolver reads None as "option not given": pass it as its text
    given = {k: "none" if v is None else v for k, v in (overrides or {}).items()}
    return config_layer.resolve_config(
        TrainConfig, toml_path, given, base=base, table=TOML_TABLE
    )
