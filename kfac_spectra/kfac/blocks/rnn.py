r"""Curvature block for single-layer ``nn.RNN`` / ``nn.LSTM`` (shared over time).

At time t the layer computes the pre-activations
``z_t = W_ih x_t + W_hh h_{t-1} + b_ih + b_hh`` (4 gates for the LSTM). This is one
linear layer with weight ``W̄ = [W_ih | W_hh | b]`` (b = b_ih + b_hh) applied to
``ā_t = [x_t; h_{t-1}; 1]`` at every step, so the per-step gradient contribution is
``w_t = vec(ĝ_t ā_tᵀ)`` with ``ĝ_t = ∂L/∂z_t``. The fused kernels hide ``z_t``, so on
capture steps the layer's output is recomputed by an unrolled, mathematically
identical Python loop whose ``z_t`` are visible to autograd.

Factors (R = N·T rows): ``A = mean_{n,t} ā ā ᵀ``, ``S = Σ_{n,t} ĝ ĝᵀ``. For the
chain approximation also the lag-one cross-moments
``A₁ = mean_{n,t<T} ā_{t+1} ā_tᵀ`` and ``S₁ = T/(T−1) Σ_{n,t<T} ĝ_{t+1} ĝ_tᵀ``
(scaled to S's row count), and the sequence length T.

* ``independent`` (Martens et al. 2018, Option 1): ``F ≈ S ⊗ A``.
* ``chain``: ``w_t`` is modelled as a stationary chain-structured linear Gaussian
  process with ``V₀ = E[w_t w_tᵀ] ∝ S ⊗ A`` and ``V₁ = E[w_{t+1} w_tᵀ] ∝ S₁ ⊗ A₁``;
  summing all cross-moments gives
  ``F = (S⊗A)^{1/2} ζ_T(Ψ) (S⊗A)^{1/2} / T`` with the whitened, symmetrised
  transition ``Ψ = Ψ_S ⊗ Ψ_A`` and ``ζ_T(x) = Σ_{|d|<T} (T−|d|) x^{|d|}``, inverted in
  closed form (see :mod:`kfac_spectra.kfac.inverse`).

The gradient of ``b`` equals that of ``b_ih`` and of ``b_hh``; a bias update Δb is
split equally between them so that the effective bias moves by Δb.

Supported: one layer, unidirectional, no projection, ``nn.RNN`` (tanh/relu) and
``nn.LSTM``; other recurrent modules are left to the plain gradient.

References:
    Martens, Ba & Johnson (2018), K-FAC for RNNs, Options 1 and 2.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..enums import KFACApprox, RNNApprox
from .base import CurvatureBlock, Record, select_rows

__all__ = ["RNNBlock", "rnn_supported", "unrolled_forward"]


def rnn_supported(module: nn.Module) -> bool:
    """Whether ``module`` is a recurrent layer this block handles."""
    if type(module) not in (nn.RNN, nn.LSTM):
        return False
    return (
        module.num_layers == 1
        and not module.bidirectional
        and getattr(module, "proj_size", 0) == 0
    )


def unrolled_forward(
    module: nn.RNN | nn.LSTM, x: Tensor, hx: Any
) -> tuple[Any, list[Tensor], list[Tensor]]:
    """Re-run a single-layer RNN/LSTM as a Python loop.

    Args:
        module: The recurrent layer.
        x: Input ``(T, N, I)``, ``(N, T, I)`` if ``batch_first``, or ``(T, I)``.
        hx: Initial state as accepted by the module (or ``None``).

    Returns:
        ``(output, zs, hs)``: the module's output structure, the pre-activations
        ``z_t`` (each ``(N, G·H)``) and the previous hidden states ``h_{t-1}``.
    """
    unbatched = x.ndim == 2
    if unbatched:
        x = x[:, None]
    elif module.batch_first:
        x = x.transpose(0, 1)
    steps, n, _ = x.shape
    hidden = module.hidden_size
    is_lstm = isinstance(module, nn.LSTM)
    if hx is None:
        h = x.new_zeros(n, hidden)
        c = x.new_zeros(n, hidden) if is_lstm else None
    else:
        h0, c0 = hx if is_lstm else (hx, None)
        h = h0.reshape(n, hidden)
        c = c0.reshape(n, hidden) if is_lstm else None
    w_ih, w_hh = module.weight_ih_l0, module.weight_hh_l0
    bias = module.bias_ih_l0 + module.bias_hh_l0 if module.bias else None
    pre_x = x @ w_ih.T
    if bias is not None:
        pre_x = pre_x + bias
    zs, hs, outs = [], [], []
    for t in range(steps):
        hs.append(h)
        z = pre_x[t] + h @ w_hh.T
        zs.append(z)
        if is_lstm:
            i, f, g, o = z.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        elif module.nonlinearity == "tanh":
            h = torch.tanh(z)
        else:
            h = torch.relu(z)
        outs.append(h)
    out = torch.stack(outs)
    h_n = h[None]
    if unbatched:
        out, h_n = out[:, 0], h_n[:, 0]
        c_n = c[None][:, 0] if is_lstm else None
    else:
        if module.batch_first:
            out = out.transpose(0, 1)
        c_n = c[None] if is_lstm else None
    return (out, (h_n, c_n) if is_lstm else h_n), zs, hs


class RNNBlock(CurvatureBlock):
    """K-FAC block of a single-layer ``nn.RNN`` / ``nn.LSTM``.

    Args:
        name: Qualified module name.
        module: The layer.
        approx: Unused (time is always handled by ``rnn_approx``).
        rnn_approx: Independent time steps or the chain-structured model.
    """

    supports_cg = True

    def __init__(
        self,
        name: str,
        module: nn.RNN | nn.LSTM,
        approx: KFACApprox,
        rnn_approx: RNNApprox = RNNApprox.INDEPENDENT,
    ) -> None:
        self.rnn_approx = rnn_approx
        super().__init__(name, module, approx)

    @property
    def chain(self) -> bool:
        """Whether the chain-structured approximation is used."""
        return self.rnn_approx == RNNApprox.CHAIN

    def reset_batch(self) -> None:
        """Also forget the lagged sums."""
        super().reset_batch()
        self._a1: Tensor | None = None
        self._s1: Tensor | None = None
        self._pairs = 0
        self._steps: list[int] = []

    def params(self) -> list[nn.Parameter]:
        """``W_ih, W_hh`` then ``b_ih, b_hh`` if present."""
        m = self.module
        ps = [m.weight_ih_l0, m.weight_hh_l0]
        if m.bias:
            ps += [m.bias_ih_l0, m.bias_hh_l0]
        return ps

    def to_matrix(self, tensors: list[Tensor]) -> Tensor:
        """``[W_ih | W_hh | (b_ih + b_hh)/2]``, shape ``(G·H, I + H (+1))``."""
        parts = [tensors[0], tensors[1]]
        if self.module.bias:
            parts.append(((tensors[2] + tensors[3]) / 2)[:, None])
        return torch.cat(parts, dim=1)

    def split_update(self, mat: Tensor) -> list[Tensor]:
        """Split into ``W_ih, W_hh`` and two halves of the bias update."""
        m = self.module
        n_in = m.input_size
        ups = [mat[:, :n_in], mat[:, n_in : n_in + m.hidden_size]]
        if m.bias:
            half = mat[:, -1] / 2
            ups += [half, half.clone()]
        return ups

    def batch_size(self, module: nn.Module, args: tuple[Any, ...]) -> int:
        """Batch dim of the input: 0 if ``batch_first`` else 1 (1 if unbatched)."""
        x = args[0]
        if not isinstance(x, Tensor) or x.ndim == 2:
            return 1
        return int(x.shape[0] if self.module.batch_first else x.shape[1])

    def forward_record(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        output: Any,
        call: int,
        rows: Tensor | None = None,
    ) -> tuple[Record | None, Any]:
        """Recompute the layer unrolled and record its inputs and pre-activations.

        The unrolled forward runs on the whole batch (it replaces the layer's
        output); only the statistics are restricted to ``rows``.
        """
        x = args[0]
        if not isinstance(x, Tensor):  # PackedSequence: leave the fused output
            return None, None
        hx = args[1] if len(args) > 1 else None
        new_out, zs, hs = unrolled_forward(self.module, x, hx)
        if not zs[0].requires_grad:
            return None, None
        xs = x if x.ndim == 2 else (x.transpose(0, 1) if self.module.batch_first else x)
        if x.ndim == 2:
            xs = xs[:, None]
        a = torch.cat([xs.detach(), torch.stack([h.detach() for h in hs])], dim=-1)
        a = select_rows(a, rows, dim=1).to(self.stat_dtype)  # (T, N, I + H)
        if self.module.bias:
            a = torch.cat([a, a.new_ones(*a.shape[:2], 1)], dim=-1)
        steps = a.shape[0]
        flat = a.reshape(-1, a.shape[-1])
        self._add_a(flat.T @ flat, flat.shape[0])
        self._steps.append(steps)
        if self.keep_rows:
            self.rows_x.append(flat)
        if self.chain and steps > 1:
            lag = torch.einsum("tni,tnj->ij", a[1:], a[:-1])
            self._a1 = lag if self._a1 is None else self._a1 + lag
            self._pairs += (steps - 1) * a.shape[1]
        return Record(self, steps, zs, call=call, rows=rows), new_out

    def accumulate(self, record: Record, grad_scale: float = 1.0) -> None:
        """Add per-step ``ĝ ĝᵀ`` (and the lag-one products for the chain)."""
        steps = record.data
        for grads in record.grads:
            if any(g is None for g in grads):
                continue
            g = torch.stack(
                [
                    select_rows(gt.detach(), record.rows).to(self.stat_dtype)
                    for gt in grads
                ]
            )
            g = g * grad_scale  # (T, N, G·H)
            rows = g.reshape(-1, g.shape[-1])
            self._add_s(rows.T @ rows, record.call)
            if self.keep_rows:
                self.rows_g.append(rows)
            if self.chain and steps > 1:
                lag = torch.einsum("tni,tnj->ij", g[1:], g[:-1]) * (steps / (steps - 1))
                self._s1 = lag if self._s1 is None else self._s1 + lag

    def batch_factors(self) -> dict[str, Tensor] | None:
        """``A, S`` and, for the chain, ``A1, S1, T`` (mean sequence length)."""
        calls = max(len(self._calls), 1)
        a1, s1, pairs, steps = self._a1, self._s1, self._pairs, self._steps
        out = super().batch_factors()
        if out is None or not self.chain:
            return out
        if a1 is None or s1 is None or pairs == 0:
            out["A1"] = torch.zeros_like(out["A"])
            out["S1"] = torch.zeros_like(out["S"])
        else:
            out["A1"] = a1 / pairs
            out["S1"] = s1 / calls
        out["T"] = torch.tensor(float(sum(steps)) / len(steps), dtype=out["A"].dtype)
        return out
