"""Networks whose K-FAC spectra and eigenbasis gradient statistics we measure.

Every model is built from the layer types that K-FAC and the per-example capture
(:mod:`kfac_spectra.layer_capture`) understand (``nn.Linear``,
``nn.Conv1d``/``nn.Conv2d``, ``nn.Embedding``), plus parameter-free operations and
``nn.LayerNorm``. No batch normalisation and no
in-place activations: examples stay independent, so the gradient of the summed
loss with respect to a layer output is the stack of per-example output gradients.

Each model has one ``width`` knob, a multiplier on the paper's sizes: ``width=1``
is the configuration of the NQM paper (Zhang et al. 2019, appendix F.2) and
``width=1/8`` or so runs in seconds on a CPU.

Initialisation never touches global random state: :func:`build_model` constructs
under :func:`torch.random.fork_rng` (so PyTorch's default initialisation leaves the
global generator as it found it) and then re-initialises every parameter from the
explicit ``generator`` with :func:`init_parameters_`.

References:
    Zhang et al. 2019, "Which Algorithmic Choices Matter at Which Batch Sizes?",
    appendix F.2 (Simple CNN, ResNet8, Transformer).
    Shallue et al. 2018, "Measuring the Effects of Data Parallelism", appendix B.
    He et al. 2016, "Deep Residual Learning", section 4.2 (CIFAR ResNets).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import StrEnum

import torch
from torch import nn
from torch.nn import functional as F

from kfac_spectra.data import DataSpec, InputKind
from kfac_spectra.language_models import LSTMLanguageModel, TransformerLanguageModel

__all__ = [
    "MLP",
    "DataSpec",
    "InputKind",
    "ModelName",
    "ResNet8",
    "SimpleCNN",
    "build_model",
    "init_parameters_",
    "scaled",
]


def scaled(base: int, width: float, multiple: int = 1) -> int:
    """Scale a layer size by ``width``, rounding to a positive multiple.

    Args:
        base: Size at ``width=1``.
        width: Positive multiplier.
        multiple: The result is a positive multiple of this (e.g. attention heads).

    Returns:
        ``multiple * max(1, round(base * width / multiple))``.

    Raises:
        ValueError: If ``width`` is not positive and finite.
    """
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"width must be positive and finite, got {width}")
    return multiple * max(1, round(base * width / multiple))


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs.

    .. math:: f(x) = W_L \\phi(\\cdots \\phi(W_1 x + b_1) \\cdots) + b_L,
       \\quad \\phi = \\mathrm{ReLU}

    Args:
        in_features: Flattened input size.
        hidden: Hidden layer widths (may be empty: a linear model).
        num_outputs: Output size.
        activation: Set to ``False`` for a deep *linear* network (used as an
            exact case for K-FAC).
    """

    def __init__(
        self,
        in_features: int,
        hidden: tuple[int, ...],
        num_outputs: int,
        activation: bool = True,
    ) -> None:
        super().__init__()
        sizes = (in_features, *hidden, num_outputs)
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map inputs (N, ...) to outputs (N, num_outputs)."""
        x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.activation and i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def _conv(dim: int) -> type[nn.Conv1d] | type[nn.Conv2d]:
    if dim not in (1, 2):
        raise ValueError(f"dim must be 1 or 2, got {dim}")
    return nn.Conv1d if dim == 1 else nn.Conv2d


def _max_pool(x: torch.Tensor, dim: int) -> torch.Tensor:
    return F.max_pool1d(x, 2, 2) if dim == 1 else F.max_pool2d(x, 2, 2)


class SimpleCNN(nn.Module):
    """Two 5x5 "same" conv layers with ReLU and 2x2 max-pooling, one hidden FC layer.

    Paper size (appendix F.2): 32 and 64 filters, 1024 hidden units, no dropout.

    Args:
        in_channels: Input channels C.
        spatial: Input spatial size, ``(L,)`` for 1-D or ``(H, W)`` for 2-D.
        num_outputs: Number of classes.
        channels: Filters of the two conv layers.
        hidden: Units of the fully connected hidden layer.
    """

    def __init__(
        self,
        in_channels: int,
        spatial: tuple[int, ...],
        num_outputs: int,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 1024,
    ) -> None:
        super().__init__()
        self.dim = len(spatial)
        conv = _conv(self.dim)
        self.conv1 = conv(in_channels, channels[0], 5, padding=2)
        self.conv2 = conv(channels[0], channels[1], 5, padding=2)
        pooled = [s // 4 for s in spatial]
        if min(pooled) < 1:
            raise ValueError(f"spatial size {spatial} is too small for two 2x2 pools")
        self.fc = nn.Linear(channels[1] * math.prod(pooled), hidden)
        self.out = nn.Linear(hidden, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, C, *spatial) to logits (N, num_outputs)."""
        x = _max_pool(F.relu(self.conv1(x)), self.dim)
        x = _max_pool(F.relu(self.conv2(x)), self.dim)
        return self.out(F.relu(self.fc(x.flatten(1))))


class _BasicBlock(nn.Module):
    """Two 3x3 convs with an identity shortcut (He et al. option A, no BN).

    When the block downsamples, the shortcut subsamples with stride 2 and pads the
    new channels with zeros, so it has no parameters and the network keeps exactly
    seven conv layers.
    """

    def __init__(self, dim: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        conv = _conv(dim)
        self.conv1 = conv(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = conv(cout, cout, 3, padding=1)
        self.stride = stride
        self.extra_channels = cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        shortcut = x
        if self.stride > 1:
            index = (..., *[slice(None, None, self.stride)] * (x.dim() - 2))
            shortcut = x[index]
        if self.extra_channels:
            pad = [0, 0] * (x.dim() - 2) + [0, self.extra_channels]
            shortcut = F.pad(shortcut, pad)
        return F.relu(out + shortcut)


class ResNet8(nn.Module):
    """ResNet8 without batch normalisation: 7 conv layers and 1 FC layer.

    A 3x3 stem conv, then three stages of one basic block each (16, 32, 64 filters
    at paper size, stride 2 at the start of stages 2 and 3), global average pooling
    and a linear classifier: the n=1 member of He et al.'s CIFAR family, as used by
    Shallue et al. (2018) and the NQM paper (appendix F.2). The shortcut is option A
    (parameter-free); this keeps the conv count at seven.

    Args:
        in_channels: Input channels C.
        dim: 1 for signals (N, C, L), 2 for images (N, C, H, W).
        num_outputs: Number of classes.
        base_channels: Filters in the first stage (16 at paper size).
    """

    def __init__(
        self, in_channels: int, dim: int, num_outputs: int, base_channels: int = 16
    ) -> None:
        super().__init__()
        conv = _conv(dim)
        widths = (base_channels, 2 * base_channels, 4 * base_channels)
        self.dim = dim
        self.stem = conv(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.Sequential(
            _BasicBlock(dim, widths[0], widths[0], 1),
            _BasicBlock(dim, widths[0], widths[1], 2),
            _BasicBlock(dim, widths[1], widths[2], 2),
        )
        self.fc = nn.Linear(widths[2], num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, C, *spatial) to logits (N, num_outputs)."""
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(x.flatten(2).mean(dim=2))


class ModelName(StrEnum):
    """Registry of model names (for the CLI)."""

    MLP = "mlp"
    SIMPLE_CNN = "simple_cnn"
    RESNET8 = "resnet8"
    TRANSFORMER = "transformer"
    LSTM = "lstm"


def _require(spec: DataSpec, kinds: tuple[InputKind, ...], name: ModelName) -> None:
    if spec.kind not in kinds:
        raise ValueError(
            f"spec: model {name.value} needs inputs of kind "
            f"{[k.value for k in kinds]}, got {spec.kind.value}"
        )


def _build_mlp(spec: DataSpec, width: float) -> nn.Module:
    _require(spec, (InputKind.VECTOR, InputKind.SIGNAL, InputKind.IMAGE), ModelName.MLP)
    hidden = scaled(1024, width)
    return MLP(math.prod(spec.input_shape), (hidden, hidden), spec.num_outputs)


def _build_simple_cnn(spec: DataSpec, width: float) -> nn.Module:
    _require(spec, (InputKind.SIGNAL, InputKind.IMAGE), ModelName.SIMPLE_CNN)
    channels = (scaled(32, width), scaled(64, width))
    return SimpleCNN(
        spec.input_shape[0],
        spec.input_shape[1:],
        spec.num_outputs,
        channels=channels,
        hidden=scaled(1024, width),
    )


def _build_resnet8(spec: DataSpec, width: float) -> nn.Module:
    _require(spec, (InputKind.SIGNAL, InputKind.IMAGE), ModelName.RESNET8)
    dim = len(spec.input_shape) - 1
    return ResNet8(spec.input_shape[0], dim, spec.num_outputs, scaled(16, width))


def _build_transformer(spec: DataSpec, width: float) -> nn.Module:
    _require(spec, (InputKind.TOKENS,), ModelName.TRANSFORMER)
    d_model = scaled(512, width, multiple=8)
    return TransformerLanguageModel(
        vocab_size=spec.num_outputs,
        d_model=d_model,
        num_heads=8,
        d_ff=4 * d_model,
        num_layers=2,
    )


def _build_lstm(spec: DataSpec, width: float) -> nn.Module:
    _require(spec, (InputKind.TOKENS,), ModelName.LSTM)
    hidden = scaled(650, width)
    return LSTMLanguageModel(
        vocab_size=spec.num_outputs, embed_dim=hidden, hidden=hidden, num_layers=2
    )


_BUILDERS: dict[ModelName, Callable[[DataSpec, float], nn.Module]] = {
    ModelName.MLP: _build_mlp,
    ModelName.SIMPLE_CNN: _build_simple_cnn,
    ModelName.RESNET8: _build_resnet8,
    ModelName.TRANSFORMER: _build_transformer,
    ModelName.LSTM: _build_lstm,
}


def init_parameters_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise every parameter of ``module`` in place from ``generator``.

    Linear and conv layers: weights and biases uniform on
    :math:`[-1/\\sqrt{\\text{fan\\_in}}, 1/\\sqrt{\\text{fan\\_in}}]` (PyTorch's
    default, but from an explicit generator). Embeddings: normal with standard
    deviation :math:`d^{-1/2}` for embedding dimension d (the Transformer multiplies
    by :math:`\\sqrt d`). LayerNorm: weight 1, bias 0. A tied Parameter is
    initialised once, by the module that registers it first.

    Args:
        module: The model.
        generator: Source of randomness, on the model's device.

    Returns:
        ``module``, for chaining.

    Raises:
        ValueError: If ``module`` has a parameter in a layer type this function
            does not know how to initialise.
    """
    done: set[int] = set()
    with torch.no_grad():
        for name, sub in module.named_modules():
            own = list(sub.named_parameters(recurse=False))
            if isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                fan_in = sub.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                for _, p in own:
                    if id(p) not in done:
                        p.uniform_(-bound, bound, generator=generator)
            elif isinstance(sub, nn.Embedding):
                std = sub.weight.shape[1] ** -0.5
                if id(sub.weight) not in done:
                    sub.weight.normal_(0.0, std, generator=generator)
            elif isinstance(sub, nn.LayerNorm):
                for pname, p in own:
                    p.fill_(1.0 if pname == "weight" else 0.0)
            elif own:
                raise ValueError(
                    f"module: do not know how to initialise {type(sub).__name__} "
                    f"at {name!r}"
                )
            done.update(id(p) for _, p in own)
    return module


def build_model(
    name: ModelName | str,
    spec: DataSpec,
    width: float = 1.0,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Build a registered model for a data set, deterministically initialised.

    Args:
        name: A :class:`ModelName` (or its string value).
        spec: Input kind, shape and output count of the data set.
        width: Size multiplier; 1.0 is the paper's size.
        generator: Seeded generator for the initialisation (on ``device``).
        dtype: Parameter dtype.
        device: Parameter device.

    Returns:
        The model, in training mode.

    Raises:
        ValueError: If ``name`` is unknown, ``width`` is not positive, or the model
            cannot take inputs of ``spec.kind``.
    """
    try:
        key = ModelName(name)
    except ValueError:
        raise ValueError(
            f"name: unknown model {name!r}; choose from {[m.value for m in ModelName]}"
        ) from None
    scaled(1, width)  # validates width
    with torch.random.fork_rng(devices=[]):
        model = _BUILDERS[key](spec, width)
    model = model.to(device=device, dtype=dtype)
    return init_parameters_(model, generator)
