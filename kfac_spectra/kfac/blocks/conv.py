r"""Curvature blocks for ``nn.Conv1d`` and ``nn.Conv2d`` (KFC).

The convolution is a linear layer applied to every input patch: with patches
``a_{n,t}`` (flattened channel-major like ``weight.reshape(out, -1)``) at output
location t and output gradients ``ĝ_{n,t}``, KFC (Grosse & Martens, 2016) assumes
spatial homogeneity and spatially uncorrelated derivatives and gets

.. math::
    F \approx \Big(\sum_{n,t} ĝ_{n,t} ĝ_{n,t}^\top\Big) \otimes
    \Big(\tfrac{1}{NT}\sum_{n,t} ā_{n,t} ā_{n,t}^\top\Big)

(the expand flavour; the scalar split between the two factors differs from Zhang et
al. 2019, appendix A, eqn 15, whose product is the same). K-FAC-reduce averages the patches and sums the
output gradients over locations per example.

The expand input factor is the Gram matrix of the patch rows or, where that is
cheaper (:func:`prefer_lagged`), the same matrix from the input's lagged channel
correlations (:mod:`~kfac_spectra.kfac.blocks.conv_gram`).

Only ``groups == 1`` and ``padding_mode == 'zeros'`` are supported; other
convolutions are left to the plain gradient.

References:
    Grosse & Martens (2016); Zhang et al. (2019), Appendix A eqn (15);
    Eschenhagen et al. (2023).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..enums import KFACApprox
from .base import gram, homogeneous_gram
from .conv_gram import correlation_flops, lagged_patch_gram, unfolded_gram_flops
from .linear import DenseBlock

__all__ = [
    "ConvBlock",
    "channels_last_order",
    "channels_last_patch_view",
    "conv_supported",
    "extract_patches",
    "patch_view",
    "prefer_lagged",
    "unfolded_patch_gram",
]

# The lagged correlations run as one small product per input position, a few
# times slower per flop than the patches' one large product on the CPU
# (``benchmarks/bench_conv_factor.py``): they are chosen where their flops,
# weighted by this, are fewer, and the patches' product is large enough for the
# correlations' fixed cost (a few dozen small operations, about half a
# millisecond) to matter less than the flops they save.
LAGGED_SLOWDOWN = 3.0
LAGGED_MIN_FLOPS = 1e8


def conv_supported(module: nn.Module) -> bool:
    """Whether a conv module is handled by :class:`ConvBlock`."""
    return (
        isinstance(module, (nn.Conv1d, nn.Conv2d))
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


def conv_padding(module: nn.Conv1d | nn.Conv2d) -> list[tuple[int, int]]:
    """(left, right) zero padding per spatial dim, resolving 'same' / 'valid'."""
    nd = len(module.kernel_size)
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return [(0, 0)] * nd
        pads = []
        for k, d in zip(module.kernel_size, module.dilation, strict=True):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        return pads
    return [(p, p) for p in module.padding]


def patch_view(x: Tensor, module: nn.Conv1d | nn.Conv2d) -> Tensor:
    """Input patches of a convolution as a strided view of the padded input.

    Built with ``Tensor.unfold`` (a view, no copy) rather than ``F.unfold``
    (im2col, a copy in the transposed layout that the factor then copies again).

    Args:
        x: Input, shape ``(N, C_in, *spatial)`` or without the batch dim.
        module: The convolution.

    Returns:
        Shape ``(N, *out_spatial, C_in, *kernel_size)``.
    """
    nd = len(module.kernel_size)
    x = _padded_batch(x, module)
    for i, (k, s, d) in enumerate(
        zip(module.kernel_size, module.stride, module.dilation, strict=True)
    ):
        x = x.unfold(2 + i, d * (k - 1) + 1, s)
    if any(d != 1 for d in module.dilation):
        x = x[(Ellipsis, *(slice(None, None, d) for d in module.dilation))]
    # (N, C, *out, *kernel) -> (N, *out, C, *kernel)
    return x.permute(0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))


def _padded_batch(x: Tensor, module: nn.Conv1d | nn.Conv2d) -> Tensor:
    """``x`` with a batch dimension and the convolution's zero padding applied."""
    if x.ndim == len(module.kernel_size) + 1:
        x = x[None]
    flat_pad = [p for lr in reversed(conv_padding(module)) for p in lr]
    return F.pad(x, flat_pad) if any(flat_pad) else x


def channels_last_patch_view(x: Tensor, module: nn.Conv1d | nn.Conv2d) -> Tensor:
    """Input patches with the channel last: ``(N, *out_spatial, *kernel, C_in)``.

    The input is first copied channels-last (once, its own size), so that in the
    strided view the channels of neighbouring kernel taps are contiguous: flattening
    the view into patch rows then copies runs of ``kernel_size[-1] · C_in`` floats
    instead of single taps (about 1.7x faster than flattening :func:`patch_view`
    for the benchmark CNN's second layer). The patch order is (taps, channel), not
    the weight's (channel, taps); see :func:`channels_last_order`.

    Args:
        x: Input, shape ``(N, C_in, *spatial)`` or without the batch dim.
        module: The convolution.

    Returns:
        A view of shape ``(N, *out_spatial, *kernel_size, C_in)``.
    """
    nd = len(module.kernel_size)
    x = _padded_batch(x, module)
    x = x.movedim(1, -1).contiguous()  # (N, *spatial, C)
    for i, (k, s, d) in enumerate(
        zip(module.kernel_size, module.stride, module.dilation, strict=True)
    ):
        x = x.unfold(1 + i, d * (k - 1) + 1, s)  # (N, *out, C, *window)
    if any(d != 1 for d in module.dilation):
        x = x[(Ellipsis, *(slice(None, None, d) for d in module.dilation))]
    return x.movedim(1 + nd, -1)


def channels_last_order(module: nn.Conv1d | nn.Conv2d) -> Tensor:
    """Where each patch entry of the weight's order sits in the channels-last order.

    Args:
        module: The convolution (C_in input channels, K kernel taps).

    Returns:
        ``perm`` (int64, length C_in·K) with ``perm[c·K + k] = k·C_in + c``: for a
        Gram matrix ``G`` of :func:`channels_last_patch_view` rows, ``G[perm][:,
        perm]`` is in the (channel, taps) order of ``weight.reshape(C_out, -1)``.
    """
    channels = module.weight.shape[1]
    taps = module.weight[0, 0].numel()
    return torch.arange(taps * channels).reshape(taps, channels).T.reshape(-1)


def unfolded_patch_gram(
    x: Tensor, module: nn.Conv1d | nn.Conv2d, bias: bool
) -> tuple[Tensor, int]:
    """``(Σ ā ā ᵀ, R)`` of the input patches as the Gram matrix of their rows:
    from the channels-last patches (:func:`channels_last_patch_view`), then
    reordered to the weight's order.

    Args:
        x: Input, shape ``(N, C_in, *spatial)`` or without the batch dim.
        module: The convolution.
        bias: Whether to append the homogeneous coordinate.

    Returns:
        ``A`` of shape ``(C_in K + bias,) * 2`` and the number of patches R.
    """
    view = channels_last_patch_view(x, module)
    rows = view.reshape(-1, module.weight[0].numel())
    perm = channels_last_order(module).to(rows.device)
    if bias:
        perm = torch.cat([perm, perm.new_tensor([perm.numel()])])
    a = homogeneous_gram(rows, bias)
    return a[perm][:, perm], rows.shape[0]


def prefer_lagged(x: Tensor, module: nn.Conv1d | nn.Conv2d) -> bool:
    """Whether :func:`~kfac_spectra.kfac.blocks.conv_gram.lagged_patch_gram`
    forms the expand input factor of ``x`` faster than the patches' Gram matrix:
    where its flops, weighted by ``LAGGED_SLOWDOWN``, are fewer, and the Gram
    matrix takes at least ``LAGGED_MIN_FLOPS``; on the CPU only (where the
    weights were measured).

    Args:
        x: Input, shape ``(N, C_in, *spatial)`` or without the batch dim.
        module: The convolution.

    Returns:
        The choice (the same for every input of one shape).
    """
    nd = len(module.kernel_size)
    batch = 1 if x.ndim == nd + 1 else x.shape[0]
    padded = [
        size + lo + hi
        for size, (lo, hi) in zip(x.shape[-nd:], conv_padding(module), strict=True)
    ]
    args = (batch, x.shape[-nd - 1], padded, module.kernel_size)
    unfolded = unfolded_gram_flops(*args, module.stride, module.dilation)
    if unfolded < LAGGED_MIN_FLOPS or x.device.type != "cpu":
        return False  # too small, or on a device where it is not measured
    return LAGGED_SLOWDOWN * correlation_flops(*args) < unfolded


def extract_patches(x: Tensor, module: nn.Conv1d | nn.Conv2d) -> Tensor:
    """Input patches of a convolution.

    Args:
        x: Input, shape ``(N, C_in, L)`` (Conv1d) or ``(N, C_in, H, W)`` (Conv2d),
            or without the batch dim.
        module: The convolution.

    Returns:
        Patches of shape ``(N, T, C_in * prod(kernel_size))`` where T is the number
        of output locations, ordered like ``weight.reshape(C_out, -1)``.
    """
    view = patch_view(x, module)
    return view.reshape(view.shape[0], -1, module.weight[0].numel())


class ConvBlock(DenseBlock):
    """K-FAC block of an ``nn.Conv1d`` / ``nn.Conv2d`` with ``groups == 1``."""

    def __init__(
        self, name: str, module: nn.Conv1d | nn.Conv2d, approx: KFACApprox
    ) -> None:
        if not conv_supported(module):
            raise ValueError(f"module {name!r}: groups != 1 or non-zero padding mode")
        super().__init__(name, module, approx)

    def batch_size(self, module: nn.Module, args: tuple[Any, ...]) -> int:
        """Dim 0 of a batched input ``(N, C_in, *spatial)``; 1 if unbatched."""
        x = args[0]
        return 1 if x.ndim == len(self.module.kernel_size) + 1 else int(x.shape[0])

    def input_features(self, x: Tensor) -> Tensor:
        """Patch rows (expand) or per-example mean patches (reduce)."""
        view = patch_view(x.to(self.stat_dtype), self.module)
        width = self.module.weight[0].numel()
        if self.approx == KFACApprox.REDUCE:
            nd = len(self.module.kernel_size)
            return view.mean(dim=tuple(range(1, 1 + nd))).reshape(-1, width)
        return view.reshape(-1, width)

    def input_gram(self, x: Tensor) -> tuple[Tensor, int]:
        """``(Σ ā ā ᵀ, R)``; expand: from the lagged channel correlations where
        they are cheaper (:func:`prefer_lagged`), else from channels-last
        patches, then reordered."""
        if self.approx == KFACApprox.REDUCE:
            return super().input_gram(x)
        m = self.module
        x = x.to(self.stat_dtype)
        if prefer_lagged(x, m):
            xp = _padded_batch(x, m)
            return lagged_patch_gram(
                xp, m.kernel_size, m.stride, m.dilation, self.has_bias
            )
        return unfolded_patch_gram(x, m, self.has_bias)

    def grad_gram(self, g: Tensor) -> Tensor:
        """``Σ ĝ ĝᵀ``; expand: ``M Mᵀ`` with ``M = ĝ`` as ``(C_out, N·T)``."""
        if self.approx == KFACApprox.REDUCE:
            return super().grad_gram(g)
        g = self._grad_locations(g)
        # (N, C, T) -> (C, N·T): copies runs of T, where the rows (N·T, C) of
        # grad_rows would copy single elements
        return gram(g.transpose(0, 1).reshape(g.shape[1], -1).T)

    def _grad_locations(self, g: Tensor) -> Tensor:
        """The output gradient as ``(N, out, T)`` (T locations), stat dtype."""
        nd = len(self.module.kernel_size)
        g = g.to(self.stat_dtype)
        if g.ndim == nd + 1:
            g = g[None]
        return g.reshape(g.shape[0], g.shape[1], -1)

    def grad_rows(self, g: Tensor) -> Tensor:
        """Per-location rows (expand) or per-example sums over locations (reduce)."""
        g = self._grad_locations(g)  # (N, out, T)
        if self.approx == KFACApprox.REDUCE:
            return g.sum(dim=2)
        return g.transpose(1, 2).reshape(-1, g.shape[1])
