r"""The expand input factor of a convolution from lagged channel correlations.

KFC's input statistic (Grosse & Martens, 2016, Sec. 3; the expand flavour of
Eschenhagen et al., 2023, Sec. 3) is the Gram matrix of the input patches,
``Σ_{n,t} a_{n,t} a_{n,t}ᵀ`` over examples n and output locations t. Formed
from the unfolded patches it costs ``2 N T (C K)²`` flops for C input channels
and K kernel taps. Each entry is a product of two input values a fixed lag
apart, so the same matrix follows from the channel cross-correlations of the
(zero-padded) input at the lags the kernel spans. With ``x`` the padded input,
stride s, dilation d, taps κ, κ' and ``δ = κ' − κ``:

.. math::
    A_{(c,κ),(c',κ')} = \sum_t Q_δ[c, c', s t + d κ], \qquad
    Q_δ[c, c', p] = \sum_n x_{n,c,p}\, x_{n,c',p + d δ},

exactly (the same products, summed in another order). Only the lags of one
half (``δ`` lexicographically ≥ 0) are formed; the other half are their
transposes (A is symmetric). That is ``D = K`` lags in 1-D and
``k_w + (k_h − 1)(2 k_w − 1)`` for a ``k_h × k_w`` kernel (13 for 3 × 3). The
correlations cost ``2 N P C² D`` flops for P padded input positions, against
``2 N T C² K²`` for the unfolded patches: about ``K`` times fewer for a
stride-1 1-D convolution (``K² T / (D P)``: about 6 for 3 × 3 in 2-D); a
stride s divides the gain by s in its dim (T ≈ P/s). The sums over locations cost
``C² K² T`` (N times less than either), done as products with 0/1 matrices.
The correlations run as one small product per position, slower per flop than
one large product; ``kfac_spectra.kfac.blocks.conv.prefer_lagged`` chooses.

References:
    Grosse & Martens (2016), "A Kronecker-factored approximate Fisher matrix for
    convolution layers", Sec. 3; Eschenhagen et al. (2023), "Kronecker-factored
    approximate curvature for modern neural network architectures", Sec. 3.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["correlation_flops", "lagged_patch_gram", "unfolded_gram_flops"]


def _half_lags(kernel: Sequence[int]) -> list[tuple[int, ...]]:
    """Tap offsets ``δ`` with ``|δ_i| < K_i``, lexicographically ≥ 0 (the first
    non-zero component positive)."""
    ranges = [range(-(k - 1), k) for k in kernel]
    return [d for d in itertools.product(*ranges) if d >= (0,) * len(kernel)]


def _locations(
    size: int, taps: range, out: int, offset: int, stride: int, dilation: int
) -> Tensor:
    """``(len(taps), size)`` 0/1 matrix: row κ marks the positions
    ``offset + stride·t + dilation·κ`` of the ``out`` locations t."""
    pick = torch.zeros(len(taps), size)
    t = torch.arange(out)
    for row, kappa in enumerate(taps):
        pick[row, offset + stride * t + dilation * kappa] = 1.0
    return pick


def _out_size(size: int, k: int, s: int, d: int) -> int:
    return (size - d * (k - 1) - 1) // s + 1


def unfolded_gram_flops(
    batch: int,
    channels: int,
    padded: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> int:
    """Flops of the patch Gram matrix as one product, ``2 N T (C K)²``.

    Args:
        batch: N.
        channels: C, input channels.
        padded: The padded input's spatial sizes.
        kernel: Kernel size per spatial dim.
        stride: Stride per spatial dim.
        dilation: Dilation per spatial dim.

    Returns:
        The flop count.
    """
    locations = math.prod(
        _out_size(p, k, s, d)
        for p, k, s, d in zip(padded, kernel, stride, dilation, strict=True)
    )
    return 2 * batch * locations * (channels * math.prod(kernel)) ** 2


def correlation_flops(
    batch: int, channels: int, padded: Sequence[int], kernel: Sequence[int]
) -> int:
    """Flops of :func:`lagged_patch_gram`'s correlations, ``2 N P C² D``.

    Args:
        batch: N.
        channels: C, input channels.
        padded: The padded input's spatial sizes (P is their product).
        kernel: Kernel size per spatial dim (D: the half-plane's lags).

    Returns:
        The flop count (the sums over locations, N times less, left out).
    """
    lags = len(_half_lags(kernel))
    return 2 * batch * math.prod(padded) * channels**2 * lags


def lagged_patch_gram(
    x: Tensor,
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    bias: bool,
) -> tuple[Tensor, int]:
    r"""``Σ_{n,t} ā_{n,t} ā_{n,t}ᵀ`` of a convolution's input patches, from the
    lagged channel correlations (module docstring).

    Args:
        x: The zero-padded input, shape ``(N, C, *P)`` with 1 or 2 spatial dims.
        kernel: Kernel size per spatial dim.
        stride: Stride per spatial dim.
        dilation: Dilation per spatial dim.
        bias: Whether to append the homogeneous coordinate ``ā = [a, 1]``.

    Returns:
        ``(A, R)``: A of shape ``(C K + bias, C K + bias)`` in the order of
        ``weight.reshape(C_out, -1)`` (channel, then taps row-major), and the
        number of patches ``R = N T``.

    Raises:
        ValueError: If the spatial dims do not match ``kernel`` or the kernel
            does not fit the padded input.
    """
    nd = len(kernel)
    if x.ndim != nd + 2 or not len(stride) == len(dilation) == nd:
        raise ValueError(
            f"x of shape {tuple(x.shape)} needs (N, C) and {nd} spatial dims"
        )
    n, c, *padded = x.shape
    out = [
        _out_size(p, k, s, d)
        for p, k, s, d in zip(padded, kernel, stride, dilation, strict=True)
    ]
    if any(t < 1 for t in out):
        raise ValueError(f"kernel {tuple(kernel)} does not fit the input {padded}")
    lags = _half_lags(kernel)
    # Positions laid out flat, (position, N, C), the spatial dims after the
    # first widened by the largest lag on both sides and the first on its far
    # side: a lag δ is then one shift of the flat index, and every lag's
    # partners are a contiguous slice (no copy per lag).
    reach = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
    left = [0] + reach[1:]
    pads: list[int] = []
    for i in reversed(range(nd)):
        pads += [left[i], reach[i]]
    wide = F.pad(x, pads)
    widths = list(wide.shape[2:])
    strides = [math.prod(widths[i + 1 :]) for i in range(nd)]
    shifts = [
        sum(dilation[i] * delta[i] * strides[i] for i in range(nd)) for delta in lags
    ]
    flat = wide.permute(*range(2, 2 + nd), 0, 1).reshape(-1, n, c)
    flat = torch.cat([flat, flat.new_zeros(max(shifts), n, c)])
    span = padded[0] * strides[0]  # the first operand: rows 0..P_0 - 1
    first = flat[:span].transpose(1, 2)  # (M, C, N)
    grid = [padded[0], *widths[1:]]
    taps = math.prod(kernel)
    blocks = x.new_zeros(taps, taps, c, c)
    flat_tap = torch.arange(taps, device=x.device).view(*kernel)
    for delta, shift in zip(lags, shifts, strict=True):
        # Q_δ[p] = X_pᵀ X_{p+δ}: one batched product over positions
        qd = torch.bmm(first, flat[shift : shift + span]).view(*grid, c, c)
        valid = []
        for i in range(nd):
            start, stop = max(0, -delta[i]), kernel[i] - max(0, delta[i])
            kappa = range(start, stop)
            # sum over this dim's locations, (..., P_i, ...) -> (..., V_i, ...),
            # as one product with the 0/1 matrix of each tap's locations
            pick = _locations(grid[i], kappa, out[i], left[i], stride[i], dilation[i])
            qd = torch.tensordot(pick.to(qd), qd, dims=([1], [i])).movedim(0, i)
            valid.append(torch.arange(start, stop, device=x.device))
        first_taps = flat_tap[torch.meshgrid(*valid, indexing="ij")].reshape(-1)
        second_taps = flat_tap[
            torch.meshgrid(*[v + delta[i] for i, v in enumerate(valid)], indexing="ij")
        ].reshape(-1)
        sums = qd.reshape(-1, c, c)
        blocks[first_taps, second_taps] = sums
        if any(delta):
            blocks[second_taps, first_taps] = sums.transpose(1, 2)
    a = blocks.permute(2, 0, 3, 1).reshape(c * taps, c * taps)
    rows = n * math.prod(out)
    if not bias:
        return a, rows
    # Σ_{n,t} a_{n,t}: the channel sums at each tap's locations
    col = x.sum(dim=0)  # (C, *P)
    for i in range(nd):
        pick = _locations(
            padded[i], range(kernel[i]), out[i], 0, stride[i], dilation[i]
        )
        col = torch.tensordot(pick.to(col), col, dims=([1], [i + 1]))
        col = col.movedim(0, i + 1)
    col = col.reshape(-1)  # (C, *kernel) flattened: the weight's order
    full = x.new_empty(c * taps + 1, c * taps + 1)
    full[:-1, :-1] = a
    full[:-1, -1] = col
    full[-1, :-1] = col
    full[-1, -1] = rows
    return full, rows
