"""Language models built from K-FAC-visible layers (Linear, Embedding, LayerNorm).

Both models map token ids (N, T) to next-token logits (N, T, V). Attention and the
LSTM recurrence are written out with ``nn.Linear`` layers (not ``nn.MultiheadAttention``
or ``nn.LSTM``, whose fused weights no forward hook can see), so every weight is a
linear map applied at several positions: weight sharing over sequence positions and,
for the LSTM, over time steps.

References:
    Vaswani et al. 2017, "Attention Is All You Need" (post-LN block, sinusoidal
    positions, tied embedding and pre-softmax weights, section 3.4).
    Zhang et al. 2019, appendix A.1 (K-FAC with the tied embedding) and F.2
    ("Transformer Shallow": the base model with two layers).
    Martens, Ba and Johnson 2018, "Kronecker-factored curvature approximations for
    recurrent neural networks" (an LSTM's weights are shared across time steps).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["LSTMLanguageModel", "TransformerLanguageModel", "sinusoidal_positions"]


def sinusoidal_positions(
    length: int, dim: int, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Sinusoidal position encodings.

    .. math:: P_{t, 2i} = \\sin(t / 10000^{2i/d}),\\quad
       P_{t, 2i+1} = \\cos(t / 10000^{2i/d})

    Args:
        length: Sequence length T.
        dim: Model dimension d.
        dtype: Output dtype.
        device: Output device.

    Returns:
        (T, d) tensor.

    References:
        Vaswani et al. 2017, section 3.5.
    """
    position = torch.arange(length, dtype=torch.float64, device=device)[:, None]
    freq = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float64, device=device)
        * (-math.log(10000.0) / dim)
    )
    table = torch.zeros(length, dim, dtype=torch.float64, device=device)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table.to(dtype)


class _CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(
                f"d_model={d_model} must be divisible by num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.output = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h = self.num_heads

        def heads(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(n, t, h, d // h).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
        mixed = torch.softmax(scores, dim=-1) @ v
        return self.output(mixed.transpose(1, 2).reshape(n, t, d))


class _TransformerBlock(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_ff: int) -> None:
        super().__init__()
        self.attention = _CausalSelfAttention(d_model, num_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.ff2(F.relu(self.ff1(x))))


class TransformerLanguageModel(nn.Module):
    """Decoder-only post-LN Transformer with tied embedding and pre-softmax weights.

    .. math::
        x_0 = \\sqrt{d}\\, E[\\text{tokens}] + P, \\quad
        x_{l} = \\mathrm{Block}_l(x_{l-1}), \\quad
        \\text{logits} = x_L E^\\top

    ``decoder.weight`` *is* ``embedding.weight`` (one Parameter, shape (V, d)).
    Paper size ("Transformer Shallow"): d=512, 8 heads, d_ff=2048, 2 layers.

    Args:
        vocab_size: V.
        d_model: d.
        num_heads: Attention heads (divides d).
        d_ff: Feed-forward width.
        num_layers: Number of blocks.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 512,
        num_heads: int = 8,
        d_ff: int = 2048,
        num_layers: int = 2,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            _TransformerBlock(d_model, num_heads, d_ff) for _ in range(num_layers)
        )
        self.decoder = nn.Linear(d_model, vocab_size, bias=False)
        self.decoder.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map token ids (N, T) to logits (N, T, V)."""
        x = self.embedding(tokens) * math.sqrt(self.d_model)
        x = x + sinusoidal_positions(
            tokens.shape[1], self.d_model, dtype=x.dtype, device=x.device
        )
        for block in self.blocks:
            x = block(x)
        return self.decoder(x)


class _LSTMLayer(nn.Module):
    """One LSTM layer whose four gates come from one Linear on ``[x_t, h_{t-1}]``.

    .. math::
        (i, f, g, o) = W [x_t; h_{t-1}] + b,\\quad
        c_t = \\sigma(f) c_{t-1} + \\sigma(i) \\tanh(g),\\quad
        h_t = \\sigma(o) \\tanh(c_t)
    """

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Linear(in_features + hidden, 4 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        h = x.new_zeros(n, self.hidden)
        c = x.new_zeros(n, self.hidden)
        outputs = []
        for step in range(t):
            i, f, g, o = self.gates(torch.cat([x[:, step], h], dim=1)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, dim=1)


class LSTMLanguageModel(nn.Module):
    """Embedding, stacked LSTM layers and a linear softmax layer.

    Args:
        vocab_size: V.
        embed_dim: Embedding dimension.
        hidden: LSTM state size.
        num_layers: Stacked LSTM layers.
        tie_weights: Share the embedding and pre-softmax weights (needs
            ``embed_dim == hidden``); the decoder then has no bias.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 650,
        hidden: int = 650,
        num_layers: int = 2,
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        if tie_weights and embed_dim != hidden:
            raise ValueError(
                f"tie_weights needs embed_dim == hidden, got {embed_dim}, {hidden}"
            )
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        sizes = [embed_dim] + [hidden] * num_layers
        self.layers = nn.ModuleList(
            _LSTMLayer(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.decoder = nn.Linear(hidden, vocab_size, bias=not tie_weights)
        if tie_weights:
            self.decoder.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map token ids (N, T) to logits (N, T, V)."""
        x = self.embedding(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.decoder(x)
