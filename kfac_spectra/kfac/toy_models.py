"""Small networks for the K-FAC benchmarks and examples (not the project model zoo).

The project's models live in :mod:`kfac_spectra.models`; these two exist so the
K-FAC benchmarks do not depend on code that is still changing.
"""

from __future__ import annotations

from torch import nn

__all__ = ["cnn1d", "mlp"]


def mlp(in_dim: int, hidden: int, out_dim: int, depth: int = 2) -> nn.Sequential:
    """``Flatten → [Linear → ReLU] × depth → Linear``.

    Args:
        in_dim: Flattened input size.
        hidden: Hidden width.
        out_dim: Number of outputs.
        depth: Number of hidden layers (≥ 1).

    Returns:
        The network.

    Raises:
        ValueError: If a size or ``depth`` is < 1.
    """
    for name, v in (("in_dim", in_dim), ("hidden", hidden), ("out_dim", out_dim)):
        if v < 1:
            raise ValueError(f"{name}={v} must be >= 1")
    if depth < 1:
        raise ValueError(f"depth={depth} must be >= 1")
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def cnn1d(length: int, channels: int, out_dim: int) -> nn.Sequential:
    """Two 1-D convolutions (5-wide, the second strided), then a linear head.

    Args:
        length: Input length L (inputs are ``(N, 1, L)``).
        channels: Convolution channels.
        out_dim: Number of outputs.

    Returns:
        The network.

    Raises:
        ValueError: If ``length < 2`` or a size is < 1.
    """
    if length < 2 or channels < 1 or out_dim < 1:
        raise ValueError(f"length={length}, channels={channels}, out_dim={out_dim}")
    out_len = (length + 2 * 2 - 5) // 2 + 1
    return nn.Sequential(
        nn.Conv1d(1, channels, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(channels, channels, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(channels * out_len, out_dim),
    )
