r"""Per-example capture of layer inputs and output gradients, for exact statistics.

K-FAC itself only needs sums over examples; the gradient statistics of E.2 need,
for every example n, the pieces of its gradient. For every supported weight W
(stored shape ``(r, ...)``, flattened to ``(r, c)`` with the bias as an extra last
column), the per-example gradient is a sum over *uses* u (module calls) and
*positions* p (sequence elements, spatial locations, time steps):

.. math::
    G_n = \sum_{u}\sum_{p} \rho_{n,u,p}\, \kappa_{n,u,p}^\top \in \mathbb{R}^{r\times c}

* ``nn.Linear`` (any leading dims): :math:`\rho` = output gradient :math:`\delta`
  (out), :math:`\kappa` = input :math:`[a; 1]` (in + 1 with a bias);
* ``nn.Conv1d``/``nn.Conv2d`` (groups = 1): :math:`\rho` = output gradient at a
  location (C_out), :math:`\kappa` = the unfolded input patch :math:`[a_p; 1]`
  (C_in·k + 1), in the order of ``weight.reshape(C_out, -1)``;
* ``nn.Embedding`` (stored (V, D)): :math:`\rho` = one-hot token (V, kept as an
  index), :math:`\kappa` = output gradient (D).

A weight shared by several modules (the tied embedding / pre-softmax matrix, an
LSTM cell called at each step) is one *block* whose uses are all its calls. Blocks
are keyed by the qualified name of an embedding that owns the weight, else of the
first module (in ``named_modules`` order) that does; this is the key the K-FAC code
uses for tied weights.

References:
    Grosse and Martens 2016 (conv layers as sums over locations); Eschenhagen et
    al. 2023 (linear weight-sharing layers); Zhang et al. 2019, appendix A.1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kfac_spectra.kfac.blocks.conv import conv_padding

__all__ = [
    "Block",
    "PerExampleCapture",
    "Side",
    "Use",
    "as_contiguous",
    "find_blocks",
    "unfold_conv_input",
]


class Side(StrEnum):
    """Which side of the (r, c) weight matrix a captured input lies on."""

    ROW = "row"
    COL = "col"


@dataclass
class Use:
    """One call of a module that uses a block's weight.

    The call's input is kept as it was (detached, no copy); the per-position
    rows (conv patches) are formed only on request.

    Attributes:
        module: The module called.
        raw: Its detached input: (N, *, in) for Linear, (N, C_in, *spatial) for
            Conv, token ids (N, *) for Embedding.
        output: The call's output, still in the autograd graph.
        input_side: :attr:`Side.COL` for Linear/Conv, :attr:`Side.ROW` for
            Embedding (the one-hot token is the row vector).
        channels_first: Whether ``output`` is (N, C, *spatial) (convolutions)
            rather than (N, *, features).
        bias_column: Whether the block has a bias, i.e. a constant 1 follows
            the features as the last input coordinate.
    """

    module: nn.Module
    raw: Tensor
    output: Tensor
    input_side: Side
    channels_first: bool = False
    bias_column: bool = False

    @property
    def features(self) -> Tensor:
        """Processed inputs without the bias column.

        (N, P, c') float for Linear/Conv (conv patches via
        :func:`unfold_conv_input`, a new tensor), or (N, P) int64 token ids for
        Embedding.
        """
        n = self.raw.shape[0]
        if self.input_side is Side.ROW:
            return self.raw.reshape(n, -1)
        if self.channels_first:
            return unfold_conv_input(self.module, self.raw)
        return self.raw.reshape(n, -1, self.raw.shape[-1])

    @property
    def num_positions(self) -> int:
        """P, the positions per example."""
        if self.channels_first:
            return math.prod(self.output.shape[2:])
        return self.output[..., 0].numel() // self.output.shape[0]

    @property
    def inputs(self) -> Tensor:
        """(N, P, c) inputs with the bias column, or the (N, P) token ids."""
        features = self.features
        if not self.bias_column:
            return features
        ones = features.new_ones(*features.shape[:2], 1)
        return torch.cat([features, ones], dim=2)

    def projected_inputs(self, vectors: Tensor) -> Tensor:
        """Inputs times ``vectors``, :math:`[a_{n,p}; 1]^\\top V`, in V's dtype.

        The (N, P, c) inputs with their column of ones are never formed: for a
        convolution the product is itself a convolution of the raw input with
        the filters :math:`V_{:, j}` (bias :math:`V_{c, j}`), for a Linear
        layer one GEMM on the input cast in one copy, V's last row added.

        Args:
            vectors: (c, k) matrix, c the block's column count.

        Returns:
            (N, P, k) in ``vectors.dtype`` (for convolutions a transposed view).

        Raises:
            ValueError: For token-id inputs or a ``vectors`` of the wrong height.
        """
        if self.input_side is not Side.COL:
            raise ValueError("vectors: token-id inputs are indices, not vectors")
        weight = self.module.weight
        width = math.prod(weight.shape[1:]) if self.channels_first else weight.shape[1]
        if vectors.shape[0] != width + self.bias_column:
            raise ValueError(
                f"vectors: need {width + self.bias_column} rows, got {vectors.shape[0]}"
            )
        bias = vectors[width] if self.bias_column else None
        if self.channels_first:
            filters = vectors[:width].T.reshape(-1, *weight.shape[1:])
            conv = F.conv1d if isinstance(self.module, nn.Conv1d) else F.conv2d
            out = conv(
                self.raw.to(vectors.dtype),
                filters.contiguous(),
                bias,
                stride=self.module.stride,
                padding=self.module.padding,
                dilation=self.module.dilation,
            )
            return out.reshape(out.shape[0], out.shape[1], -1).transpose(1, 2)
        rows = as_contiguous(self.features, vectors.dtype)
        if bias is None:
            return rows @ vectors
        return torch.matmul(rows, vectors[:width]).add_(bias)

    def output_gradient_rows(
        self, grad: Tensor | None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Reshape the gradient of :attr:`output` to (N, P, features).

        Args:
            grad: Gradient shaped like :attr:`output`, or ``None`` for zero.
            dtype: If given, return a contiguous tensor of this dtype (one copy);
                otherwise a view where possible.

        Returns:
            (N, P, features).
        """
        if grad is None:
            grad = torch.zeros_like(self.output)
        n = grad.shape[0]
        if self.channels_first:
            rows = grad.reshape(n, grad.shape[1], -1).transpose(1, 2)
        else:
            rows = grad.reshape(n, -1, grad.shape[-1])
        return rows if dtype is None else as_contiguous(rows, dtype)


def as_contiguous(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """A contiguous copy of ``tensor`` in ``dtype`` (no copy if it already is)."""
    if tensor.dtype == dtype and tensor.is_contiguous():
        return tensor
    out = torch.empty(tensor.shape, dtype=dtype, device=tensor.device)
    return out.copy_(tensor)


@dataclass
class Block:
    """A weight (with its bias) and the modules that use it.

    Attributes:
        name: Key (see module docstring).
        weight: The weight Parameter.
        bias: The bias Parameter, or ``None``.
        modules: The modules that use the weight.
        uses: Calls captured in the current forward pass.
    """

    name: str
    weight: nn.Parameter
    bias: nn.Parameter | None
    modules: list[nn.Module]
    uses: list[Use] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        """(r, c): rows and columns of ``[W.reshape(r, -1) | b]``."""
        rows = self.weight.shape[0]
        cols = math.prod(self.weight.shape[1:]) + (self.bias is not None)
        return rows, cols

    def gradient_matrix(self, weight_grad: Tensor, bias_grad: Tensor | None) -> Tensor:
        """Arrange parameter gradients as the (…, r, c) block matrix."""
        lead = weight_grad.shape[: weight_grad.dim() - self.weight.dim()]
        mat = weight_grad.reshape(*lead, self.weight.shape[0], -1)
        if self.bias is not None:
            if bias_grad is None:
                bias_grad = mat.new_zeros(*lead, self.weight.shape[0])
            mat = torch.cat([mat, bias_grad.unsqueeze(-1)], dim=-1)
        return mat


_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)


def find_blocks(model: nn.Module) -> dict[str, Block]:
    """Group the supported modules of ``model`` by the weight they use.

    Args:
        model: The network.

    Returns:
        Blocks by key, in ``named_modules`` order.

    Raises:
        ValueError: For modules sharing a weight but not its bias, a tied
            Embedding/Linear pair whose Linear has a bias, grouped convolutions,
            non-zero padding modes, or embeddings with ``max_norm``.
    """
    by_weight: dict[int, Block] = {}
    for name, module in model.named_modules():
        if not isinstance(module, _SUPPORTED):
            continue
        _validate(name, module)
        weight = module.weight
        bias = getattr(module, "bias", None)
        block = by_weight.get(id(weight))
        if block is None:
            by_weight[id(weight)] = Block(name, weight, bias, [module])
            continue
        block.modules.append(module)
        if isinstance(module, nn.Embedding):
            block.name = name
        if any(isinstance(m, nn.Embedding) for m in block.modules):
            if bias is not None or block.bias is not None:
                raise ValueError(
                    f"model: a Linear tied to an Embedding ({block.name!r}) must have "
                    "no bias"
                )
        elif bias is not block.bias:
            raise ValueError(f"model: {name!r} shares a weight but not its bias")
    return {b.name: b for b in by_weight.values()}


def _validate(name: str, module: nn.Module) -> None:
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1 or module.padding_mode != "zeros":
            raise ValueError(
                f"model: conv {name!r} needs groups=1 and padding_mode='zeros'"
            )
    if isinstance(module, nn.Embedding) and module.max_norm is not None:
        raise ValueError(f"model: embedding {name!r} with max_norm is not supported")


def unfold_conv_input(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """Input patches of a convolution, one row per output location.

    Row p of example n is the patch :math:`a_{n,p}` such that the output at p is
    ``weight.reshape(C_out, -1) @ a_{n,p} + bias``.

    Args:
        module: The convolution (groups = 1, zero padding).
        x: Its input (N, C_in, L) or (N, C_in, H, W).

    Returns:
        (N, P, C_in * prod(kernel_size)) with P the number of output locations.
    """
    pads = conv_padding(module)
    flat_pad = [p for pair in reversed(pads) for p in pair]
    x = F.pad(x, flat_pad)
    kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation, stride = (1, *kernel), (1, *dilation), (1, *stride)
    patches = F.unfold(x, kernel, dilation=dilation, stride=stride)
    return patches.transpose(1, 2)


def _use(module: nn.Module, x: Tensor, out: Tensor) -> Use:
    if isinstance(module, nn.Embedding):
        return Use(module, x.detach(), out, Side.ROW)
    is_conv = isinstance(module, (nn.Conv1d, nn.Conv2d))
    bias = getattr(module, "bias", None) is not None
    return Use(module, x.detach(), out, Side.COL, is_conv, bias)


class PerExampleCapture:
    """Forward hooks that keep every use of every block for one forward pass.

    Use as a context manager around the forward pass; afterwards
    :meth:`output_gradients` back-propagates any output-space vector to all uses.
    Examples must not interact (no batch norm): then the gradient of
    :math:`\\sum_n \\langle v_n, f_n\\rangle` at a layer output is, row by row, the
    per-example output gradient.

    Args:
        model: The network.
        blocks: Blocks to capture (default: :func:`find_blocks`).
    """

    def __init__(self, model: nn.Module, blocks: dict[str, Block] | None = None):
        self.model = model
        self.blocks = find_blocks(model) if blocks is None else blocks

    @contextmanager
    def recording(self) -> Iterator[PerExampleCapture]:
        """Record uses of all blocks during the enclosed forward pass."""
        handles = []
        for block in self.blocks.values():
            block.uses = []
            for module in block.modules:

                def hook(mod: nn.Module, args: tuple, out: Tensor, b=block) -> None:
                    if not torch.is_grad_enabled():
                        return
                    b.uses.append(_use(mod, args[0], out))

                handles.append(module.register_forward_hook(hook))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def clear(self) -> None:
        """Drop the captured uses (and their graphs)."""
        for block in self.blocks.values():
            block.uses = []

    def output_gradients(
        self, output: Tensor, grad_output: Tensor
    ) -> dict[str, list[Tensor]]:
        """Back-propagate ``grad_output`` to every captured use.

        Args:
            output: The model output (in the graph).
            grad_output: A tensor shaped like ``output``.

        Returns:
            Per block, per use, the output gradients as (N, P, features).
        """
        flat = [(b, u) for b in self.blocks.values() for u in b.uses]
        result: dict[str, list[Tensor]] = {name: [] for name in self.blocks}
        if not flat:
            return result
        grads = torch.autograd.grad(
            output,
            [u.output for _, u in flat],
            grad_outputs=grad_output,
            retain_graph=True,
            allow_unused=True,
        )
        for (block, use), g in zip(flat, grads, strict=True):
            result[block.name].append(use.output_gradient_rows(g))
        return result
