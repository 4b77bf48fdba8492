r"""A workload: a model, a data set, a loss and a target metric.

Built in:

* data (``--data``): ``mnist1d`` (generated locally), ``digits`` (scikit-learn),
  and, from a directory the user names with ``--data-dir``, ``mnist`` and
  ``fashion_mnist`` (IDX files) and ``cifar10`` (python batches);
* models (``--model``): ``mlp``, ``simple_cnn`` and ``resnet8`` of
  :mod:`kfac_spectra.models`, scaled by ``width``.

User-supplied, without editing the library, as ``package.module:factory``:

* **data factory**: takes no arguments and returns a
  :class:`kfac_spectra.data.Dataset`. Class labels are int64 (N,); float targets
  (N, K) are allowed with ``--loss mse``. It is called once per worker process
  and must return the same data every time (seed it yourself).
* **model factory**: called as ``factory(spec)`` with the data set's
  :class:`kfac_spectra.data.DataSpec`, and returns an ``nn.Module`` whose output
  is (N, K). It must not depend on global random state. The harness builds it
  under :func:`torch.random.fork_rng` and then initialises every parameter with
  :func:`kfac_spectra.models.init_parameters_` from the trial's seeded generator
  (Linear, Conv1d/2d, Embedding, LayerNorm). A factory whose signature has a
  ``generator`` keyword is called as ``factory(spec, generator=g)`` instead and
  initialises its own parameters from ``g`` (for layer types
  ``init_parameters_`` does not know); the harness then leaves them alone.

Losses (mean over the examples): ``ce`` is
:math:`-\frac1N\sum_n \log \operatorname{softmax}(f(x_n))_{y_n}`; ``mse`` is
``F.mse_loss`` (mean over examples and outputs) against one-hot labels or the
float targets. Metrics, on a fixed evaluation set (the first ``eval_size``
examples of the split, all by default): ``train_loss`` (the NQM's quantity, the
default), ``test_loss`` and ``test_error`` (the fraction of wrong argmax
predictions).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import inspect
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kfac_spectra.data import Dataset, DataSpec, load_dataset
from kfac_spectra.models import ModelName, build_model, init_parameters_

__all__ = [
    "LossName",
    "MetricName",
    "BUILTIN_DATA",
    "BUILTIN_MODELS",
    "FILE_DATA",
    "WorkloadSpec",
    "load_factory",
    "load_data",
    "build_network",
    "loss_value",
    "Evaluator",
]


class LossName(enum.StrEnum):
    """Training losses."""

    CE = "ce"
    MSE = "mse"


class MetricName(enum.StrEnum):
    """The quantity a target is set on."""

    TRAIN_LOSS = "train_loss"
    TEST_LOSS = "test_loss"
    TEST_ERROR = "test_error"


#: Data sets that need no files.
BUILTIN_DATA: tuple[str, ...] = ("mnist1d", "digits")
#: Data sets read from ``data_dir``.
FILE_DATA: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10")
#: The built-in models of the sweep.
BUILTIN_MODELS: tuple[str, ...] = (
    ModelName.MLP.value,
    ModelName.SIMPLE_CNN.value,
    ModelName.RESNET8.value,
)


@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    """What a trial trains and what it measures (picklable, hashable).

    Attributes:
        model: a name of :data:`BUILTIN_MODELS` or ``package.module:factory``.
        data: a name of :data:`BUILTIN_DATA` / :data:`FILE_DATA` or
            ``package.module:factory``.
        loss: :class:`LossName`.
        metric: :class:`MetricName` of the target.
        target: the threshold; a trial reaches it when the metric is <= it.
        data_dir: directory of the file-based data sets.
        width: size multiplier of the built-in models.
        num_samples: MNIST-1D examples (train + test).
        eval_size: evaluate on the first this many examples of the split
            (``None``: all).
    """

    model: str = "mlp"
    data: str = "mnist1d"
    loss: LossName = LossName.CE
    metric: MetricName = MetricName.TRAIN_LOSS
    target: float = 0.3
    data_dir: str | None = None
    width: float = 0.125
    num_samples: int = 5000
    eval_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss", _enum(LossName, self.loss, "loss"))
        object.__setattr__(self, "metric", _enum(MetricName, self.metric, "metric"))
        if not (isinstance(self.target, (int, float)) and math.isfinite(self.target)):
            raise ValueError(f"target must be a finite number, got {self.target!r}")
        if self.target < 0:  # no loss or error rate ever reaches it
            raise ValueError(
                f"target must be >= 0 (a loss or error), got {self.target}"
            )
        if self.metric is MetricName.TEST_ERROR and not 0 <= self.target <= 1:
            raise ValueError(
                f"target of test_error must lie in [0, 1], got {self.target}"
            )
        if ":" not in self.model and self.model not in BUILTIN_MODELS:
            raise ValueError(
                f"unknown model {self.model!r}; choose from "
                f"{', '.join(BUILTIN_MODELS)} or give package.module:factory"
            )
        if ":" not in self.data:
            if self.data not in BUILTIN_DATA + FILE_DATA:
                raise ValueError(
                    f"unknown data {self.data!r}; choose from "
                    f"{', '.join(BUILTIN_DATA + FILE_DATA)} or give "
                    "package.module:factory"
                )
            if self.data in FILE_DATA and self.data_dir is None:
                raise ValueError(f"data {self.data!r} is read from disk: give data_dir")
        if not (self.width > 0 and math.isfinite(self.width)):
            raise ValueError(f"width must be positive, got {self.width!r}")
        if self.num_samples < 20:
            raise ValueError(f"num_samples must be >= 20, got {self.num_samples!r}")
        if self.eval_size is not None and self.eval_size < 1:
            raise ValueError(f"eval_size must be >= 1, got {self.eval_size!r}")


def _enum(cls, value, what: str):
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown {what} {value!r}; choose from {choices}") from None


def load_factory(text: str, what: str) -> Callable:
    """Import ``package.module:factory``.

    Raises:
        ValueError: naming ``what`` when the module or attribute cannot be found
            or is not callable.
    """
    module_name, _, attr = text.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{what} {text!r} must be package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"{what} {text!r}: cannot import {module_name!r} ({exc})"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(
            f"{what} {text!r}: {attr!r} is not a callable of {module_name}"
        )
    return fn


@functools.lru_cache(maxsize=4)
def load_data(spec: WorkloadSpec) -> Dataset:
    """The workload's data set (cached per process: trials in one worker share it).

    Raises:
        ValueError: for a factory that cannot be imported or returns no
            :class:`~kfac_spectra.data.Dataset`, or labels that do not fit the
            loss; :class:`kfac_spectra.data.DataFileError` for bad files.
    """
    if ":" in spec.data:
        data = load_factory(spec.data, "data")()
        if not isinstance(data, Dataset):
            raise ValueError(
                f"data factory {spec.data!r} returned {type(data).__name__}, "
                "not a kfac_spectra.data.Dataset"
            )
    elif spec.data == "mnist1d":
        data = load_dataset("mnist1d", num_samples=spec.num_samples, seed=0)
    elif spec.data in BUILTIN_DATA:
        data = load_dataset(spec.data)
    else:
        data = load_dataset(spec.data, spec.data_dir)
    if data.y_train.is_floating_point() and spec.loss is not LossName.MSE:
        raise ValueError("float targets need loss mse")
    if data.y_train.is_floating_point() and spec.metric is MetricName.TEST_ERROR:
        raise ValueError("metric test_error needs class labels")
    return data


def build_network(
    spec: WorkloadSpec, data_spec: DataSpec, generator: torch.Generator
) -> nn.Module:
    """Build and initialise the model from ``generator`` (see the module docstring).

    Returns:
        The model in training mode, float32, on the CPU.
    """
    if ":" not in spec.model:
        return build_model(spec.model, data_spec, spec.width, generator=generator)
    factory = load_factory(spec.model, "model")
    own_init = "generator" in inspect.signature(factory).parameters
    with torch.random.fork_rng(devices=[]):
        model = (
            factory(data_spec, generator=generator) if own_init else factory(data_spec)
        )
    if not isinstance(model, nn.Module):
        raise ValueError(f"model factory {spec.model!r} returned no nn.Module")
    return model if own_init else init_parameters_(model, generator)


def loss_value(
    loss: LossName, output: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """The mean training loss of a batch (see the module docstring)."""
    if loss is LossName.CE:
        return F.cross_entropy(output, target)
    if not target.is_floating_point():
        target = F.one_hot(target, output.shape[-1]).to(output.dtype)
    return F.mse_loss(output, target)


class Evaluator:
    """Evaluates the workload's metric on its fixed evaluation set.

    Args:
        spec: the workload.
        data: its data set.
        chunk: examples per forward pass (bounds memory; the value does not
            depend on it beyond float32 summation order, which is fixed).
    """

    def __init__(self, spec: WorkloadSpec, data: Dataset, chunk: int = 4096) -> None:
        self.spec = spec
        train = spec.metric is MetricName.TRAIN_LOSS
        x = data.x_train if train else data.x_test
        y = data.y_train if train else data.y_test
        n = x.shape[0] if spec.eval_size is None else min(spec.eval_size, x.shape[0])
        self.x, self.y = x[:n], y[:n]
        self.chunk = chunk

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> float:
        """The metric of ``model`` (a float; may be non-finite)."""
        total = 0.0
        n = self.x.shape[0]
        for start in range(0, n, self.chunk):
            xb = self.x[start : start + self.chunk]
            yb = self.y[start : start + self.chunk]
            out = model(xb)
            if self.spec.metric is MetricName.TEST_ERROR:
                total += float((out.argmax(dim=-1) != yb).sum())
            else:
                total += float(loss_value(self.spec.loss, out, yb)) * xb.shape[0]
        return total / n
