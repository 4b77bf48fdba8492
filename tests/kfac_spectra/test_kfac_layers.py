"""Embedding, tied embedding/pre-softmax weight, and recurrent (RNN/LSTM) blocks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kfac_helpers import GGN_RTOL, output_hessian, randomise, rel_err, seeded
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from kfac_spectra import KFAC, compute_factors
from kfac_spectra.kfac.blocks.embedding import combine_tied_factors
from kfac_spectra.kfac.blocks.rnn import unrolled_forward
from kfac_spectra.kfac.inverse import ChainInverse, Damping, EigenInverse, robust_eigh

DT = torch.float64


class EmbedLinear(nn.Module):
    def __init__(self, vocab: int, dim: int, out: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.lin = nn.Linear(dim, out)

    def forward(self, idx: Tensor) -> Tensor:
        return self.lin(self.emb(idx))


class TiedLM(nn.Module):
    def __init__(self, vocab: int, dim: int, head_bias: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=head_bias)
        self.head.weight = self.emb.weight

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(torch.tanh(self.mix(self.emb(idx))))


def test_embedding_expand_exact_for_linear_per_token_model() -> None:
    """Embedding → linear head per token, MSE: the GGN block of the stored (V, D)
    weight is A ⊗ S with A = diag(token frequencies) (deep linear, expand)."""
    model = randomise(EmbedLinear(5, 3, 2).double(), 1)
    idx = torch.randint(0, 5, (4, 3), generator=seeded(2))
    a, s = compute_factors(model, idx, None, "mse", "type2")["emb"]
    assert a.ndim == 1 and s.shape == (3, 3)
    params = dict(model.named_parameters())

    def f(w: Tensor) -> Tensor:
        return functional_call(model, {**params, "emb.weight": w}, (idx,)).reshape(-1)

    jac = jacrev(f)(params["emb.weight"]).reshape(-1, 15)  # row-major (V, D)
    ggn = jac.T @ output_hessian(model(idx), "mse", "mean") @ jac
    assert rel_err(torch.kron(torch.diag(a), s), ggn) < GGN_RTOL


def test_tied_combination_reduces_to_single_use_and_keeps_trace() -> None:
    gen = seeded(3)
    v, d = 6, 3
    a_e = torch.rand(v, generator=gen, dtype=DT)
    m = torch.randn(d, d, generator=gen, dtype=DT)
    s_e = m @ m.T
    s_h = torch.rand(v, generator=gen, dtype=DT) * 1e-3
    m = torch.randn(d, d, generator=gen, dtype=DT)
    a_h = m @ m.T
    for pair in ((a_e, s_e, None, None), (None, None, s_h, a_h)):
        x, y = combine_tied_factors(*pair)
        p, q = (pair[0], pair[1]) if pair[0] is not None else (pair[2], pair[3])
        assert (
            rel_err(torch.kron(torch.diag(x), y), torch.kron(torch.diag(p), q)) < 1e-13
        )
    x, y = combine_tied_factors(a_e, s_e, s_h, a_h)
    want = a_e.sum() * torch.trace(s_e) + s_h.sum() * torch.trace(a_h)
    assert abs(float(x.sum() * torch.trace(y) / want) - 1) < 1e-13
    # balanced: both uses contribute on each side despite their scale mismatch
    x_e, _ = combine_tied_factors(a_e, s_e, None, None)
    assert (x - x_e).abs().max() > 1e-3 * x_e.abs().max()


def test_tied_block_key_and_training() -> None:
    model = randomise(TiedLM(7, 4).double(), 4)
    idx = torch.randint(0, 7, (8, 5), generator=seeded(5))
    tgt = torch.randint(0, 7, (8, 5), generator=seeded(6))
    factors = compute_factors(model, idx, tgt, "ce", "mc")
    assert set(factors) == {"emb", "mix"}
    a, s = factors["emb"]
    assert a.shape == (7,) and s.shape == (4, 4)
    # lr and damping tuned for the unclipped step
    opt = KFAC(model, "ce", lr=0.2, damping=1e-2, inverse_interval=2, kl_clip=None)

    def loss() -> Tensor:
        return F.cross_entropy(model(idx).reshape(-1, 7), tgt.reshape(-1))

    with torch.no_grad():
        first = loss().item()
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        assert loss().item() < 0.8 * first
    es, us, ea, ua = opt.eigenbases()["emb"]
    assert ua is None and ea.shape == (7,)


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unrolled_forward_matches_fused(cls, batch_first: bool) -> None:
    rnn = randomise(cls(3, 4, batch_first=batch_first).double(), 7)
    x = torch.randn(2, 5, 3, generator=seeded(8), dtype=DT)
    fused = rnn(x)
    mine, zs, _ = unrolled_forward(rnn, x, None)
    assert len(zs) == (5 if batch_first else 2)
    assert rel_err(mine[0], fused[0]) < 1e-13
    h_f = fused[1] if cls is nn.RNN else fused[1][0]
    h_m = mine[1] if cls is nn.RNN else mine[1][0]
    assert rel_err(h_m, h_f) < 1e-13


class LastStep(nn.Module):
    def __init__(self, cls: type, h0: Tensor) -> None:
        super().__init__()
        self.rnn = cls(3, 4)
        self.head = nn.Linear(4, 2)
        self.register_buffer("h0", h0)

    def forward(self, x: Tensor) -> Tensor:
        state = self.h0 if isinstance(self.rnn, nn.RNN) else (self.h0, self.h0)
        out, _ = self.rnn(x, state)
        return self.head(out[-1])


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM])
def test_rnn_block_exact_for_one_step_one_example(cls) -> None:
    """T = 1, N = 1: one row, so S ⊗ A is the exact GGN block of [W_ih | W_hh | b]
    (the oracle differentiates w.r.t. b_ih, which enters exactly like b)."""
    h0 = torch.randn(1, 1, 4, generator=seeded(9), dtype=DT)
    model = randomise(LastStep(cls, h0).double(), 10)
    x = torch.randn(1, 1, 3, generator=seeded(11), dtype=DT)
    a, s = compute_factors(model, x, None, "ce", "type2")["rnn"]
    params = dict(model.named_parameters())
    keys = ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0"]

    def f(*ts: Tensor) -> Tensor:
        return functional_call(
            model, {**params, **dict(zip(keys, ts, strict=True))}, (x,)
        ).reshape(-1)

    jacs = jacrev(f, argnums=(0, 1, 2))(*[params[k] for k in keys])
    jac = torch.cat([jacs[0], jacs[1], jacs[2][..., None]], dim=2).reshape(2, -1)
    ggn = jac.T @ output_hessian(model(x), "ce", "mean") @ jac
    assert rel_err(torch.kron(s, a), ggn) < GGN_RTOL


def _spd(n: int, gen: torch.Generator) -> Tensor:
    m = torch.randn(n, n, generator=gen, dtype=DT)
    return m @ m.T / n + 0.5 * torch.eye(n, dtype=DT)


def test_chain_inverse_matches_dense_ar1_model() -> None:
    """Dense oracle: V₀ = S⊗A, V₁ = sym(S₁)⊗sym(A₁), V_d = V₁V₀^{-1}V_{d−1},
    F = (1/T) Σ_{|d|<T} (T−|d|) V_d (V_{−d} = V_dᵀ); compare F^{-1}vec(G)."""
    gen = seeded(12)
    a, s = _spd(3, gen), _spd(2, gen)
    a1 = 0.3 * a + 0.05 * torch.randn(3, 3, generator=gen, dtype=DT)
    s1 = -0.2 * s + 0.05 * torch.randn(2, 2, generator=gen, dtype=DT)
    steps = 4
    stats = {"A": a, "S": s, "A1": a1, "S1": s1, "T": torch.tensor(float(steps))}
    gamma = 1e-3
    inv = ChainInverse.build(stats, Damping(True, gamma))
    es, ea = torch.linalg.eigvalsh(s), torch.linalg.eigvalsh(a)
    pi = torch.sqrt(ea.mean() / es.mean())
    sd = s + (gamma**0.5 / pi) * torch.eye(2, dtype=DT)
    ad = a + (gamma**0.5 * pi) * torch.eye(3, dtype=DT)
    v0 = torch.kron(sd, ad)
    v1 = torch.kron(0.5 * (s1 + s1.T), 0.5 * (a1 + a1.T))
    transition = v1 @ torch.linalg.inv(v0)
    dense = steps * v0
    vd = v0
    for d in range(1, steps):
        vd = transition @ vd
        dense = dense + (steps - d) * (vd + vd.T)
    dense = dense / steps
    g = torch.randn(2, 3, generator=gen, dtype=DT)
    want = torch.linalg.solve(dense, g.reshape(-1)).reshape(2, 3)
    assert rel_err(inv.apply(g, Damping(True, gamma)), want) < 1e-10


def test_chain_without_lag_correlation_is_independent() -> None:
    gen = seeded(13)
    a, s = _spd(3, gen), _spd(2, gen)
    stats = {"A": a, "S": s, "A1": 0 * a, "S1": 0 * s, "T": torch.tensor(6.0)}
    damping = Damping(True, 1e-2)
    chain = ChainInverse.build(stats, damping)
    (es, us), (ea, ua) = robust_eigh(s), robust_eigh(a)
    indep = EigenInverse(es, us, ea, ua)
    g = torch.randn(2, 3, generator=gen, dtype=DT)
    assert rel_err(chain.apply(g, damping), indep.apply(g, damping)) < 1e-12


class SeqClassifier(nn.Module):
    def __init__(self, cls: type) -> None:
        super().__init__()
        self.rnn = cls(3, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("approx", ["independent", "chain"])
def test_lstm_trains_with_kfac(approx: str) -> None:
    model = randomise(SeqClassifier(nn.LSTM).double(), 14, scale=0.3)
    x = torch.randn(32, 6, 3, generator=seeded(15), dtype=DT)
    y = (x[:, :, 0].sum(1) > 0).long()
    opt = KFAC(model, "ce", lr=0.3, damping=1e-2, rnn_approx=approx, inverse_interval=2)
    with torch.no_grad():
        first = F.cross_entropy(model(x), y).item()
    for _ in range(15):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        assert F.cross_entropy(model(x), y).item() < 0.7 * first
    a, s = opt.factors()["rnn"]
    assert a.shape == (3 + 8 + 1, 3 + 8 + 1) and s.shape == (32, 32)
    assert opt.unsupported == []
