"""The convolution input factor from lagged channel correlations against the
Gram matrix of explicitly gathered patches (float64, brute force), for Conv1d
and Conv2d with padding, stride and dilation, and the block's choice of it."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from kfac_helpers import seeded
from torch import Tensor, nn

from kfac_spectra.kfac.blocks.conv import (
    LAGGED_MIN_FLOPS,
    LAGGED_SLOWDOWN,
    ConvBlock,
    prefer_lagged,
    unfolded_patch_gram,
)
from kfac_spectra.kfac.blocks.conv_gram import (
    correlation_flops,
    lagged_patch_gram,
    unfolded_gram_flops,
)
from kfac_spectra.kfac.enums import KFACApprox

DT = torch.float64
GRAM_RTOL = 1e-13  # float64 sums of at most a few thousand products


def _padded(x: Tensor, conv: nn.Conv1d | nn.Conv2d) -> Tensor:
    """``x`` zero-padded on both sides of each spatial dim (odd kernels for
    'same')."""
    pad = conv.padding
    if isinstance(pad, str):
        pad = tuple(
            d * (k - 1) // 2
            for k, d in zip(conv.kernel_size, conv.dilation, strict=True)
        )
    return F.pad(x, [p for p in reversed(pad) for _ in range(2)])


def _brute_patches(x: Tensor, conv: nn.Conv1d | nn.Conv2d) -> Tensor:
    """Every patch ``[x_pad[n, c, s t + d k]]_{c,k}`` (weight order), gathered
    one location at a time."""
    nd = len(conv.kernel_size)
    xp = _padded(x, conv)
    sizes = xp.shape[2:]
    outs = [
        (size - d * (k - 1) - 1) // s + 1
        for size, k, s, d in zip(
            sizes, conv.kernel_size, conv.stride, conv.dilation, strict=True
        )
    ]
    rows = []
    for n in range(x.shape[0]):
        for t in itertools.product(*map(range, outs)):
            patch = []
            for c in range(x.shape[1]):
                for k in itertools.product(*map(range, conv.kernel_size)):
                    pos = tuple(
                        conv.stride[i] * t[i] + conv.dilation[i] * k[i]
                        for i in range(nd)
                    )
                    patch.append(xp[(n, c, *pos)])
            rows.append(torch.stack(patch))
    return torch.stack(rows)


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


CONVS = [
    (nn.Conv1d(3, 4, 5, stride=2, padding=2), (6, 3, 17)),
    (nn.Conv1d(2, 3, 3, dilation=2, bias=False), (3, 2, 9)),
    (nn.Conv1d(2, 2, 4, stride=3, padding=1, dilation=2), (2, 2, 15)),
    (
        nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        (3, 3, 7, 8),
    ),
    (nn.Conv2d(2, 3, 3, padding="same", bias=False), (2, 2, 5, 6)),
    (
        nn.Conv2d(2, 2, (2, 4), stride=(1, 3), padding=(2, 1), dilation=(3, 1)),
        (2, 2, 8, 10),
    ),
]
IDS = ["1d-strided", "1d-dilated-nobias", "1d-all", "2d-dilated", "2d-same", "2d-all"]


@pytest.mark.parametrize(("conv", "shape"), CONVS, ids=IDS)
def test_lagged_gram_equals_the_gathered_patch_gram(conv, shape) -> None:
    conv = conv.double()
    x = torch.randn(shape, generator=seeded(11), dtype=DT)
    patches = _brute_patches(x, conv)
    if conv.bias is not None:
        patches = torch.cat([patches, torch.ones(len(patches), 1, dtype=DT)], 1)
    xp = _padded(x, conv)
    a, rows = lagged_patch_gram(
        xp, conv.kernel_size, conv.stride, conv.dilation, conv.bias is not None
    )
    assert rows == len(patches)
    assert _rel(a, patches.T @ patches) < GRAM_RTOL
    assert torch.equal(a, a.T)
    # the block's factor, whichever way it forms it, is the same matrix
    block = ConvBlock("c", conv, KFACApprox.EXPAND)
    got, got_rows = block.input_gram(x)
    assert got_rows == rows and _rel(got, patches.T @ patches) < GRAM_RTOL


def test_flop_counts_and_bad_shapes() -> None:
    # a stride-1 5-tap 1-D kernel: 5 lags against 25 tap pairs per location
    assert unfolded_gram_flops(4, 3, (20,), (5,), (1,), (1,)) == 2 * 4 * 16 * 15**2
    assert correlation_flops(4, 3, (20,), (5,)) == 2 * 4 * 20 * 9 * 5
    # 3x3: the 13 lags of a half plane
    assert correlation_flops(1, 1, (4, 4), (3, 3)) == 2 * 16 * 13
    with pytest.raises(ValueError, match="spatial dims"):
        lagged_patch_gram(torch.zeros(2, 3, 8), (3, 3), (1, 1), (1, 1), True)
    with pytest.raises(ValueError, match="does not fit"):
        lagged_patch_gram(torch.zeros(2, 3, 4), (5,), (1,), (1,), True)


def test_the_block_prefers_the_correlations_where_they_save_flops() -> None:
    assert 4.0 > LAGGED_SLOWDOWN > 2.3  # the cases below straddle it
    # stride 1, 3x3 over 16x16 (18x18 padded), 16 channels, 64 examples: 0.68
    # against 0.14 GFLOP, 4.9x fewer
    conv2d = nn.Conv2d(16, 16, 3, padding=1)
    assert prefer_lagged(torch.zeros(64, 16, 16, 16), conv2d)
    # stride 2, 5 taps in 1-D: 25·20 against 5·44 per channel pair and
    # example, 2.3x fewer
    assert not prefer_lagged(torch.zeros(2048, 32, 40), nn.Conv1d(32, 32, 5, 2, 2))
    # 5x fewer, but a product too small for the correlations' fixed cost
    conv1d = nn.Conv1d(1, 32, 5, padding=2)
    assert LAGGED_MIN_FLOPS > 2 * 128 * 40 * 25
    assert not prefer_lagged(torch.zeros(128, 1, 40), conv1d)
    # where it prefers them, the block's factor is the patches' Gram matrix
    conv2d = conv2d.double()
    x = torch.randn(64, 16, 16, 16, generator=seeded(12), dtype=DT)
    got, rows = ConvBlock("c", conv2d, KFACApprox.EXPAND).input_gram(x)
    want, want_rows = unfolded_patch_gram(x, conv2d, True)
    assert rows == want_rows == 64 * 256
    assert _rel(got, want) < GRAM_RTOL
