r"""The deep-autoencoder benchmark of Martens & Grosse (2015), §7 (their Figure 4).

Network (Hinton & Salakhutdinov 2006): an encoder of logistic layers down to a
linear code layer, the mirror-image decoder, logistic output units and the
cross-entropy reconstruction loss

.. math::
    L(θ) = -\frac{1}{N D} \sum_{n,d} x_{nd} \log \hat x_{nd}
           + (1 - x_{nd}) \log (1 - \hat x_{nd}), \qquad \hat x = σ(f(x; θ)).

* MNIST (a local IDX directory, ``train-images-idx3-ubyte[.gz]``): encoder
  784-1000-500-250-30;
* the embedded default, scikit-learn's 8 × 8 digits (1,797 images, 64 pixels in
  [0, 1]): encoder 64-80-40-20-6, the same depth and the same ratios of width to
  input as far as a 64-pixel input allows, small enough for a 2-core CPU.

Initialisation: the sparse initialisation of Martens (2010) that the paper uses —
each unit has ``min(15, fan_in)`` non-zero incoming weights drawn from N(0, 1),
biases 0.

Methods compared, each from the same initial parameters:

* ``sgd_nesterov``: SGD with Nesterov momentum and Sutskever et al.'s (2013)
  increasing schedule ``μ_t = min(1 − 2^{−1 − log₂(⌊t/250⌋ + 1)}, μ_max)``, a fixed
  learning rate and mini-batch size;
* ``kfac_blockdiag`` and ``kfac_tridiag``: K-FAC with the block-diagonal and the
  block-tridiagonal inverse (Martens & Grosse 2015, §4.2–4.3), both with the
  paper's momentum — the step ``δ = αΔ + μδ₀`` whose (α, μ) minimise the exact
  quadratic model (§7; Zhang et al. 2019, appendix F.4 describe the same
  update) — Levenberg–Marquardt adaptation of λ (§6.5), and the exponentially
  increasing mini-batch schedule ``m_k = min(m_1 exp((k − 1)/b), N)``, b chosen so
  that ``m_k`` reaches N at iteration ``kfac_full_batch_at`` (the paper's
  appendix M / §13 of the arXiv version: m_1 = 1000, N reached at k = 500).

The training error, evaluated on the whole training set, is the paper's
reconstruction error: the squared error per image, ``(1/N) Σ_n ||σ(f(x_n)) −
x_n||²``. Wall time counts the optimisation steps only (not the evaluations).
The paper's iterate averaging (ξ = 0.99) is not used: over the few hundred
iterations of the embedded problem it would lag the iterates.

References:
    Martens & Grosse (2015), §7 and Figure 4; Hinton & Salakhutdinov (2006);
    Sutskever, Martens, Dahl & Hinton (2013), §2 (momentum schedule); Martens
    (2010), §5 (sparse initialisation).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nqm.config import config_to_toml
from nqm.io import save_figure, write_csv, write_text_atomic

from .data_files import DataFileError, find_file, read_idx
from .kfac import KFAC, LossType, StepRule, Structure

__all__ = [
    "CURVE_COLUMNS",
    "AutoencoderConfig",
    "AutoencoderMethod",
    "Curve",
    "DIGITS_ENCODER",
    "MNIST_ENCODER",
    "build_autoencoder",
    "exponential_batch_size",
    "curve_rows",
    "load_images",
    "make_optimizer",
    "reach_summary",
    "reconstruction_error",
    "run_comparison",
    "sparse_init_",
    "sutskever_momentum",
    "train_method",
]

logger = logging.getLogger(__name__)

MNIST_ENCODER = (784, 1000, 500, 250, 30)
"""Hinton & Salakhutdinov's MNIST encoder widths (input first)."""
DIGITS_ENCODER = (64, 80, 40, 20, 6)
"""The embedded default's encoder widths (scikit-learn digits, 64 pixels)."""
SPARSE_FAN_IN = 15
"""Non-zero incoming weights per unit of the sparse initialisation."""
MNIST_TRAIN_IMAGES = "train-images-idx3-ubyte"


class AutoencoderMethod(StrEnum):
    """The optimisers of the comparison."""

    SGD_NESTEROV = "sgd_nesterov"
    KFAC_BLOCKDIAG = "kfac_blockdiag"
    KFAC_TRIDIAG = "kfac_tridiag"


@dataclass(frozen=True)
class AutoencoderConfig:
    """Everything a comparison run depends on (defaults: the embedded problem).

    Attributes:
        mnist_dir: Directory with MNIST's ``train-images-idx3-ubyte[.gz]``; ``None``
            uses scikit-learn's digits.
        train_size: Use the first this many training images (``None``: all).
        iterations: Iterations of each K-FAC method.
        sgd_iterations: Iterations of SGD (its steps are much cheaper; the
            default gives it about the K-FAC runs' wall time on the embedded
            problem).
        methods: Which methods run, in order.
        seed: Seeds the initial parameters and the mini-batch draws.
        eval_interval: K-FAC iterations between training-error evaluations
            (SGD's: scaled by ``sgd_iterations / iterations``).
        target_error: Training error the report measures the iterations and time
            to; ``None``: the highest final error among the methods, which every
            method reaches.
        sgd_lr: SGD's learning rate (on the per-element mean loss).
        sgd_batch_size: SGD's fixed mini-batch size.
        sgd_max_momentum: ``μ_max`` of Sutskever et al.'s schedule.
        kfac_initial_batch: ``m_1`` of the K-FAC mini-batch schedule.
        kfac_full_batch_at: Iteration at which the schedule reaches the whole
            training set.
        kfac_damping: Initial λ.
        kfac_factor_decay: ρ of the factor moving averages.
        kfac_inverse_interval: Iterations between inverse updates (the paper's T₃).
        kfac_lm_interval: Iterations between λ adaptations (T₁).
        dtype: ``"float32"`` or ``"float64"``.
    """

    mnist_dir: str | None = None
    train_size: int | None = None
    iterations: int = 400
    sgd_iterations: int = 5000
    methods: tuple[str, ...] = tuple(m.value for m in AutoencoderMethod)
    seed: int = 0
    eval_interval: int = 5
    target_error: float | None = None
    sgd_lr: float = 10.0
    sgd_batch_size: int = 200
    sgd_max_momentum: float = 0.99
    kfac_initial_batch: int = 200
    kfac_full_batch_at: int = 150
    kfac_damping: float = 1e-2
    kfac_factor_decay: float = 0.95
    kfac_inverse_interval: int = 5
    kfac_lm_interval: int = 5
    dtype: str = "float32"

    def __post_init__(self) -> None:
        methods = tuple(str(m) for m in self.methods)
        for m in methods:
            if m not in AutoencoderMethod._value2member_map_:
                allowed = ", ".join(x.value for x in AutoencoderMethod)
                raise ValueError(f"methods: unknown method {m!r}; expected {allowed}")
        if not methods or len(set(methods)) != len(methods):
            raise ValueError(f"methods={methods!r} must be non-empty and distinct")
        object.__setattr__(self, "methods", methods)
        positive = {
            "iterations": self.iterations,
            "sgd_iterations": self.sgd_iterations,
            "eval_interval": self.eval_interval,
            "sgd_batch_size": self.sgd_batch_size,
            "kfac_initial_batch": self.kfac_initial_batch,
            "kfac_full_batch_at": self.kfac_full_batch_at,
            "kfac_inverse_interval": self.kfac_inverse_interval,
            "kfac_lm_interval": self.kfac_lm_interval,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        if self.train_size is not None and self.train_size < 2:
            raise ValueError(f"train_size={self.train_size!r} must be >= 2 or None")
        for name in ("sgd_lr", "kfac_damping"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name}={value!r} must be finite and > 0")
        if not 0 <= self.sgd_max_momentum < 1:
            raise ValueError(f"sgd_max_momentum={self.sgd_max_momentum!r}: [0, 1)")
        if not 0 <= self.kfac_factor_decay < 1:
            raise ValueError(f"kfac_factor_decay={self.kfac_factor_decay!r}: [0, 1)")
        if self.target_error is not None and not self.target_error > 0:
            raise ValueError(f"target_error={self.target_error!r} must be > 0")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype={self.dtype!r}: expected 'float32' or 'float64'")


@dataclass(frozen=True)
class Curve:
    """One method's training curve.

    Attributes:
        method: The method.
        iterations: Iteration counts at the evaluations (0 = initial parameters).
        seconds: Cumulative optimisation wall time at the evaluations.
        errors: Training reconstruction error at the evaluations (``nan`` after a
            divergence).
        batch_sizes: Mini-batch size of the iteration just taken (0 at 0).
        step_seconds: Wall time of every iteration, in order.
    """

    method: str
    iterations: tuple[int, ...]
    seconds: tuple[float, ...]
    errors: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    step_seconds: tuple[float, ...]

    def first_reaching(self, target: float) -> tuple[int, float] | None:
        """``(iteration, seconds)`` of the first evaluation with error ≤ target."""
        for it, sec, err in zip(
            self.iterations, self.seconds, self.errors, strict=True
        ):
            if err <= target:
                return it, sec
        return None


# ------------------------------------------------------------------ data/model
def load_images(mnist_dir: str | Path | None, train_size: int | None = None) -> Tensor:
    """Training images as rows in [0, 1], float64.

    Args:
        mnist_dir: Directory holding MNIST's training-image IDX file; ``None``:
            scikit-learn's digits (pixel values 0–16, divided by 16).
        train_size: Keep the first this many images (``None``: all).

    Returns:
        Shape ``(N, D)``.

    Raises:
        DataFileError: If the MNIST file is missing or malformed.
        ValueError: If fewer than ``train_size`` images exist.
    """
    if mnist_dir is None:
        from sklearn.datasets import load_digits

        images = torch.from_numpy(load_digits().data.astype(np.float64) / 16.0)
    else:
        path = find_file(
            mnist_dir,
            (MNIST_TRAIN_IMAGES, MNIST_TRAIN_IMAGES + ".gz"),
            f"the MNIST file {MNIST_TRAIN_IMAGES}[.gz]",
        )
        raw = read_idx(path)
        if raw.ndim != 3 or raw.dtype != np.uint8:
            raise DataFileError(
                f"{str(path)!r}: expected uint8 images (N, H, W), got {raw.dtype} "
                f"{raw.shape}"
            )
        images = torch.from_numpy(raw.reshape(len(raw), -1).astype(np.float64) / 255)
    if train_size is not None:
        if train_size > len(images):
            raise ValueError(
                f"train_size={train_size} exceeds the {len(images)} training images"
            )
        images = images[:train_size]
    return images


def sparse_init_(layer: nn.Linear, generator: torch.Generator) -> None:
    """Martens's (2010) sparse initialisation, in place: ``min(15, fan_in)``
    non-zero N(0, 1) incoming weights per unit, zero bias."""
    out_f, in_f = layer.weight.shape
    k = min(SPARSE_FAN_IN, in_f)
    weight = torch.zeros(out_f, in_f, dtype=torch.float64)
    for row in range(out_f):
        cols = torch.randperm(in_f, generator=generator)[:k]
        weight[row, cols] = torch.randn(k, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.zero_()


def build_autoencoder(
    encoder: Sequence[int], seed: int, dtype: torch.dtype = torch.float32
) -> nn.Sequential:
    """The symmetric autoencoder: logistic hidden layers, a linear code layer.

    Args:
        encoder: Widths from the input to the code, e.g. ``(784, 1000, 500,
            250, 30)``; the decoder mirrors them.
        seed: Seeds the sparse initialisation.
        dtype: Parameter dtype.

    Returns:
        An ``nn.Sequential`` of ``Linear`` layers with ``Sigmoid`` between them
        (none after the code layer and none at the output: the model returns
        logits for ``binary_cross_entropy_with_logits``).

    Raises:
        ValueError: If fewer than two widths are given or one is < 1.
    """
    widths = [int(w) for w in encoder]
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"encoder={tuple(encoder)!r}: need >= 2 widths, each >= 1")
    sizes = widths + widths[-2::-1]
    code = len(widths) - 1  # index of the layer that outputs the code
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        lin = nn.Linear(a, b)
        sparse_init_(lin, gen)
        layers.append(lin)
        if i + 1 != code and i + 1 < len(sizes) - 1:
            layers.append(nn.Sigmoid())
    return nn.Sequential(*layers).to(dtype)


def reconstruction_error(model: nn.Module, images: Tensor, chunk: int = 4096) -> float:
    """``(1/N) Σ_n ||σ(f(x_n)) − x_n||²``, the paper's training error."""
    total = 0.0
    with torch.no_grad():
        for lo in range(0, len(images), chunk):
            x = images[lo : lo + chunk]
            total += float(((torch.sigmoid(model(x)) - x) ** 2).sum())
    return total / len(images)


# ------------------------------------------------------------------ schedules
def sutskever_momentum(step: int, max_momentum: float) -> float:
    r"""``μ_t = min(1 − 2^{−1 − log₂(⌊t/250⌋ + 1)}, μ_max)`` (Sutskever et al. 2013)."""
    return min(1.0 - 2.0 ** (-1.0 - math.log2(step // 250 + 1)), max_momentum)


def exponential_batch_size(
    iteration: int, initial: int, full: int, full_at: int
) -> int:
    r"""``m_k = min(m_1 exp((k − 1)/b), N)`` with ``m_{full_at} = N``.

    Args:
        iteration: k ≥ 1.
        initial: m_1.
        full: N, the training-set size.
        full_at: The iteration at which the schedule reaches N.

    Returns:
        The mini-batch size, an int in ``[min(m_1, N), N]``.
    """
    if initial >= full or full_at <= 1:
        return full
    b = (full_at - 1) / math.log(full / initial)
    return min(full, int(round(initial * math.exp((iteration - 1) / b))))


# ------------------------------------------------------------------ training
def _loss(model: nn.Module, x: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(model(x), x)


def make_optimizer(
    method: AutoencoderMethod, model: nn.Module, config: AutoencoderConfig
) -> torch.optim.Optimizer:
    """The optimiser of one method of the comparison, with the configuration's
    settings (Nesterov SGD, or K-FAC with the quadratic-model step rule and
    adaptive damping, block-diagonal or block-tridiagonal)."""
    if method == AutoencoderMethod.SGD_NESTEROV:
        return torch.optim.SGD(
            model.parameters(), lr=config.sgd_lr, momentum=0.5, nesterov=True
        )
    structure = (
        Structure.BLOCK_TRIDIAGONAL
        if method == AutoencoderMethod.KFAC_TRIDIAG
        else Structure.BLOCK_DIAGONAL
    )
    return KFAC(
        model,
        loss=LossType.BCE,
        step_rule=StepRule.QMODEL,
        damping=config.kfac_damping,
        adapt_damping=True,
        lm_interval=config.kfac_lm_interval,
        factor_decay=config.kfac_factor_decay,
        inverse_interval=config.kfac_inverse_interval,
        max_damping=1e6,
        seed=config.seed,
        structure=structure,
    )


def train_method(
    method: AutoencoderMethod | str,
    images: Tensor,
    encoder: Sequence[int],
    config: AutoencoderConfig,
    progress: Callable[[str, int, float], None] | None = None,
) -> Curve:
    """Train one method from the seeded initial parameters.

    Args:
        method: Which optimiser.
        images: Training images ``(N, D)``, values in [0, 1].
        encoder: Encoder widths (``encoder[0] == D``).
        config: The run's configuration.
        progress: Called as ``progress(method, iteration, error)`` after each
            evaluation.

    Returns:
        The curve; a divergence (non-finite loss) ends it with ``nan`` error.
    """
    method = AutoencoderMethod(method)
    dtype = getattr(torch, config.dtype)
    data = images.to(dtype)
    model = build_autoencoder(encoder, config.seed, dtype)
    opt = make_optimizer(method, model, config)
    gen = torch.Generator().manual_seed(config.seed + 1)
    n = len(data)
    sgd = method == AutoencoderMethod.SGD_NESTEROV
    total = config.sgd_iterations if sgd else config.iterations
    every = config.eval_interval
    if sgd:
        every = max(1, every * config.sgd_iterations // config.iterations)
    its, secs, errs = [0], [0.0], [reconstruction_error(model, data)]
    sizes: list[int] = [0]
    steps: list[float] = []
    elapsed = 0.0
    for k in range(1, total + 1):
        if sgd:
            m = min(config.sgd_batch_size, n)
        else:
            m = exponential_batch_size(
                k, config.kfac_initial_batch, n, config.kfac_full_batch_at
            )
        batch = data if m >= n else data[torch.randperm(n, generator=gen)[:m]]
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = _loss(model, batch)
        loss.backward()
        if sgd:
            opt.param_groups[0]["momentum"] = sutskever_momentum(
                k - 1, config.sgd_max_momentum
            )
            opt.step()
        else:
            opt.step(lambda b=batch: _loss(model, b), loss=loss.detach())
        took = time.perf_counter() - start
        elapsed += took
        steps.append(took)
        finite = math.isfinite(float(loss.detach()))
        if not finite or k % every == 0 or k == total:
            err = reconstruction_error(model, data) if finite else float("nan")
            its.append(k)
            secs.append(elapsed)
            errs.append(err if math.isfinite(err) else float("nan"))
            sizes.append(m)
            if progress is not None:
                progress(method.value, k, errs[-1])
            if not math.isfinite(errs[-1]):
                break
    if isinstance(opt, KFAC):
        opt.remove_hooks()
    return Curve(
        method.value, tuple(its), tuple(secs), tuple(errs), tuple(sizes), tuple(steps)
    )


# ------------------------------------------------------------------ outputs
CURVE_COLUMNS = ("method", "iteration", "seconds", "batch_size", "train_error")


def curve_rows(curves: Sequence[Curve]) -> list[tuple[str, int, float, int, float]]:
    """The curves as rows of :data:`CURVE_COLUMNS`."""
    return [
        (c.method, it, sec, m, err)
        for c in curves
        for it, sec, m, err in zip(
            c.iterations, c.seconds, c.batch_sizes, c.errors, strict=True
        )
    ]


def _curve_to_json(curve: Curve) -> str:
    return json.dumps(dataclasses.asdict(curve))


def _curve_from_json(text: str) -> Curve:
    raw = json.loads(text)
    return Curve(**{k: v if isinstance(v, str) else tuple(v) for k, v in raw.items()})


def run_comparison(
    config: AutoencoderConfig,
    out_dir: str | Path,
    progress: Callable[[str, int, float], None] | None = None,
) -> list[Curve]:
    """Run every method, writing each curve as it finishes; resume after a kill.

    ``out_dir`` receives ``config.toml``, one ``curve_<method>.json`` per
    finished method (skipped on a rerun with the same configuration),
    ``autoencoder_curves.csv`` and the figure ``autoencoder.png`` / ``.pdf``
    (training error against wall time and against iterations).

    Args:
        config: The configuration.
        out_dir: Output directory (created).
        progress: See :func:`train_method`.

    Returns:
        The curves, in ``config.methods`` order.

    Raises:
        ValueError: If ``out_dir`` holds results of another configuration.
        DataFileError: If the MNIST directory or file is missing or malformed.
    """
    out = Path(out_dir)
    images = load_images(config.mnist_dir, config.train_size)
    encoder = MNIST_ENCODER if config.mnist_dir is not None else DIGITS_ENCODER
    if images.shape[1] != encoder[0]:
        raise ValueError(
            f"mnist_dir: images have {images.shape[1]} pixels, the autoencoder "
            f"expects {encoder[0]}"
        )
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.toml"
    text = config_to_toml(config)
    if cfg_path.exists() and cfg_path.read_text() != text:
        raise ValueError(
            f"out_dir: {str(out)!r} holds results of another configuration "
            "(config.toml differs); choose another directory"
        )
    write_text_atomic(cfg_path, text)
    curves = []
    for name in config.methods:
        path = out / f"curve_{name}.json"
        if path.exists():
            curves.append(_curve_from_json(path.read_text()))
            logger.info("%s: resumed from %s", name, path)
            continue
        with warnings.catch_warnings():
            # the per-step skip warnings of a diverging K-FAC run would flood the log
            warnings.simplefilter("ignore", UserWarning)
            curve = train_method(name, images, encoder, config, progress)
        write_text_atomic(path, _curve_to_json(curve))
        curves.append(curve)
    write_csv(out / "autoencoder_curves.csv", curve_rows(curves), CURVE_COLUMNS)
    from .plots import plot_training_curves  # matplotlib only when plotting

    fig = plot_training_curves(
        {c.method: (c.iterations, c.seconds, c.errors) for c in curves}
    )
    save_figure(fig, out / "autoencoder", dpi=120)
    return curves


def reach_summary(
    curves: Sequence[Curve], target: float | None
) -> tuple[float, list[tuple[str, tuple[int, float] | None]]]:
    """The target error and each method's first ``(iteration, seconds)`` at it.

    Args:
        curves: The methods' curves.
        target: The target; ``None``: the highest final error among the curves
            that did not diverge (every such method reaches it).

    Returns:
        ``(target, [(method, (iteration, seconds) or None), ...])``.

    Raises:
        ValueError: If ``target`` is None and every curve diverged.
    """
    if target is None:
        finals = [c.errors[-1] for c in curves if math.isfinite(c.errors[-1])]
        if not finals:
            raise ValueError("target_error: every method diverged; none to derive")
        target = max(finals)
    return target, [(c.method, c.first_reaching(target)) for c in curves]
