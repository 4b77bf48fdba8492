"""KFAC(stats_batch_size=m): factor statistics from m examples of the batch.

Oracles: ``compute_factors`` on exactly the chosen rows (deterministic Fisher types,
and MC with the optimizer's generator state replayed), the full-batch statistics
(m ≥ N, and the exact average over all C(N, m) subsets), a Chebyshev bound for the
optimizer's sampled average, and an uninterrupted run for resume.
"""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from kfac_helpers import randomise, rel_err, seeded
from torch import Tensor, nn

from kfac_spectra import KFAC, compute_factors
from kfac_spectra.kfac.blocks import TiedEmbeddingBlock

DT = torch.float64
EXACT_RTOL = 1e-12  # same rows, same probes: only summation order differs
CHEBYSHEV_DELTA = 1e-3


class SeqLM(nn.Module):
    """Embedding → LSTM → linear head, outputs ``(N, T, V)``.

    ``batch_first=False`` runs the LSTM on ``(T, N, D)`` (its batch dim is 1);
    ``tied`` shares the embedding with the head (one tied block).
    """

    def __init__(self, vocab: int, dim: int, batch_first: bool, tied: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.emb = nn.Embedding(vocab, dim)
        self.rnn = nn.LSTM(dim, dim, batch_first=batch_first)
        self.head = nn.Linear(dim, vocab)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, idx: Tensor) -> Tensor:
        e = self.emb(idx)
        if self.batch_first:
            h, _ = self.rnn(e)
        else:
            h, _ = self.rnn(e.transpose(0, 1))
            h = h.transpose(0, 1)
        return self.head(h)


def _case(name: str, n: int) -> tuple[nn.Module, Tensor, Tensor, str]:
    """(model, inputs, targets, loss) for each block type."""
    gen = seeded(1)
    if name == "mlp_ce":
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        x = torch.randn(n, 4, generator=gen, dtype=DT)
        return (
            randomise(model.double(), 2),
            x,
            torch.randint(0, 3, (n,), generator=gen),
            "ce",
        )
    if name == "mlp_mse":
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        x = torch.randn(n, 4, generator=gen, dtype=DT)
        return (
            randomise(model.double(), 3),
            x,
            torch.randn(n, 3, generator=gen, dtype=DT),
            "mse",
        )
    if name == "cnn":
        model = nn.Sequential(
            nn.Conv1d(2, 3, 3, padding=1),
            nn.Tanh(),
            nn.Conv1d(3, 3, 3, stride=2),
            nn.Flatten(),
            nn.Linear(9, 4),
        )
        x = torch.randn(n, 2, 8, generator=gen, dtype=DT)
        return (
            randomise(model.double(), 4),
            x,
            torch.randint(0, 4, (n,), generator=gen),
            "ce",
        )
    tied = name == "lstm_tied_time_major"
    model = SeqLM(4, 3, batch_first=not tied, tied=tied)
    idx = torch.randint(0, 4, (n, 3), generator=gen)
    return (
        randomise(model.double(), 5),
        idx,
        torch.randint(0, 4, (n, 3), generator=gen),
        "ce",
    )


CASES = ["mlp_ce", "mlp_mse", "cnn", "lstm_batch_first", "lstm_tied_time_major"]


def _loss(out: Tensor, y: Tensor, loss: str, reduction: str) -> Tensor:
    if loss == "mse":
        return F.mse_loss(out, y, reduction=reduction)
    return F.cross_entropy(
        out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction=reduction
    )


def _one_step(model, opt, x, y, loss, reduction="mean") -> None:
    opt.zero_grad()
    _loss(model(x), y, loss, reduction).backward()
    opt.step()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("fisher", ["type2", "empirical", "mc"])
@pytest.mark.parametrize("case", CASES)
def test_subset_factors_equal_compute_factors_on_those_rows(
    case: str, fisher: str, reduction: str
) -> None:
    """A, S of one step = compute_factors(x[rows]); S × N/m for the summed loss
    (its estimate of the batch's sum). MC: the same generator state, replayed."""
    n, m = 10, 4
    model, x, y, loss = _case(case, n)
    opt = KFAC(
        model,
        loss,
        lr=0.0,
        factor_decay=0.0,
        fisher_type=fisher,
        reduction=reduction,
        stats_batch_size=m,
    )
    replay = torch.Generator()
    replay.set_state(opt._generator.get_state())
    _one_step(model, opt, x, y, loss, reduction)
    opt.remove_hooks()  # compute_factors hooks the same model
    rows = opt.last_stats_rows
    assert rows is not None and rows.shape == (m,)
    assert torch.equal(rows, torch.unique(rows)) and 0 <= rows.min() <= rows.max() < n
    want = compute_factors(
        model, x[rows], y[rows], loss, fisher, reduction=reduction, generator=replay
    )
    s_scale = n / m if reduction == "sum" else 1.0
    got = opt.factors()
    assert set(got) == set(want)
    for key, (a, s) in got.items():
        a_want, s_want = want[key]
        if isinstance(opt.blocks[key], TiedEmbeddingBlock):
            # the tied pair is rebalanced after combining its two uses, which
            # splits a scale of S between both factors: compare the blocks
            a, a_want = torch.diag(a), torch.diag(a_want)
            got_block = torch.kron(s, a)
            assert rel_err(got_block, torch.kron(s_scale * s_want, a_want)) < (
                EXACT_RTOL
            )
            continue
        assert rel_err(a, a_want) < EXACT_RTOL, key
        assert rel_err(s, s_scale * s_want) < EXACT_RTOL, key


@pytest.mark.parametrize("fisher", ["mc", "empirical"])
def test_subset_of_the_whole_batch_is_the_full_batch_bit_for_bit(fisher: str) -> None:
    """m ≥ N: no subset, no draw — identical to stats_batch_size=None, MC stream
    included, over several factor and inverse updates."""
    n = 8
    runs = {}
    for size in (None, n, n + 5):
        model, x, y, loss = _case("cnn", n)
        opt = KFAC(
            model,
            loss,
            lr=0.1,
            inverse_interval=2,
            fisher_type=fisher,
            stats_batch_size=size,
        )
        for _ in range(4):
            _one_step(model, opt, x, y, loss)
        assert opt.last_stats_rows is None
        runs[size] = (opt.factors(), [p.detach().clone() for p in model.parameters()])
    ref_factors, ref_params = runs[None]
    for size in (n, n + 5):
        factors, params = runs[size]
        for key, (a, s) in factors.items():
            assert torch.equal(a, ref_factors[key][0]) and torch.equal(
                s, ref_factors[key][1]
            )
        assert all(torch.equal(p, q) for p, q in zip(params, ref_params, strict=True))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_subset_statistics_are_unbiased(reduction: str) -> None:
    """Exact: the average of the subset factors over all C(N, m) subsets equals the
    full-batch factors (A, and S with the mean's own scale or the sum's N/m).
    Sampled: the optimizer's K independent draws average to them within the
    Chebyshev bound sqrt(V/(Kδ)), V the exact per-draw variance from the
    enumeration (a uniform sampler is needed for this)."""
    n, m, draws = 6, 2, 200
    model, x, y, loss = _case("mlp_ce", n)
    full = compute_factors(model, x, None, loss, "type2", reduction=reduction)
    s_scale = n / m if reduction == "sum" else 1.0
    subsets = [list(c) for c in itertools.combinations(range(n), m)]
    per = [
        compute_factors(model, x[c], None, loss, "type2", reduction=reduction)
        for c in subsets
    ]
    for key, (a_full, s_full) in full.items():
        a_mean = sum(f[key][0] for f in per) / len(per)
        s_mean = sum(s_scale * f[key][1] for f in per) / len(per)
        assert rel_err(a_mean, a_full) < EXACT_RTOL
        assert rel_err(s_mean, s_full) < EXACT_RTOL
    opt = KFAC(
        model,
        loss,
        lr=0.0,
        factor_decay=0.0,
        fisher_type="type2",
        reduction=reduction,
        stats_batch_size=m,
        seed=3,
    )
    sums = {k: [torch.zeros_like(a), torch.zeros_like(s)] for k, (a, s) in full.items()}
    seen = set()
    for _ in range(draws):
        _one_step(model, opt, x, y, loss, reduction)
        seen.add(tuple(opt.last_stats_rows.tolist()))
        for key, (a, s) in opt.factors().items():
            sums[key][0] += a / draws
            sums[key][1] += s / draws
    assert len(seen) == len(subsets)  # P(some subset never drawn) < 15·(14/15)^200
    for key, (a_full, s_full) in full.items():
        for i, exact in enumerate((a_full, s_full)):
            scale = s_scale if i == 1 else 1.0
            var = sum(float((scale * f[key][i] - exact).pow(2).sum()) for f in per)
            var /= len(per)
            err = float((sums[key][i] - exact).norm())
            assert err <= math.sqrt(var / (draws * CHEBYSHEV_DELTA)), (key, i)


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "64"])
def test_invalid_stats_batch_size_raises(value) -> None:
    model, _, _, loss = _case("mlp_ce", 4)
    with pytest.raises(ValueError, match="stats_batch_size"):
        KFAC(model, loss, stats_batch_size=value)


class TimeMajorOutput(nn.Module):
    """A batch-first MLP whose output is returned as (T, N, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x).transpose(0, 1)


class FlattensPositions(nn.Module):
    """Feeds (N·T, d) to its second layer: examples no longer along dim 0."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return self.b(h.reshape(-1, 3)).reshape(*x.shape[:2], 2)


@pytest.mark.parametrize("module", [TimeMajorOutput, FlattensPositions])
def test_layout_without_a_common_batch_dim_raises(module) -> None:
    x = torch.randn(6, 5, 3, generator=seeded(6), dtype=DT)
    full = module().double()
    KFAC(full, "mse")
    full(x)  # the full-batch statistics need no batch dimension
    model = module().double()
    KFAC(model, "mse", stats_batch_size=2)
    with pytest.raises(ValueError, match="stats_batch_size"):
        model(x)


def test_subset_cg_step_equals_eigh_step() -> None:
    """CG-FAC on the stored subset rows solves with the same factors as eigh."""
    n = 16
    params = {}
    for method in ("eigh", "cg"):
        model, x, y, loss = _case("mlp_mse", n)
        opt = KFAC(
            model,
            loss,
            lr=1.0,
            momentum=0.0,
            damping=1e-2,
            fisher_type="type2",
            inverse_method=method,
            stats_batch_size=5,
            cg_max_iter=1000,
            cg_rtol=1e-14,
            kl_clip=None,
        )
        _one_step(model, opt, x, y, loss)
        params[method] = torch.cat([p.reshape(-1) for p in model.parameters()])
    assert (params["cg"] - params["eigh"]).abs().max() < 1e-8


def _resume_run(case: str) -> None:
    n = 12
    model, x, y, loss = _case(case, n)
    kw = dict(lr=0.1, factor_interval=1, inverse_interval=3, stats_batch_size=5, seed=9)
    opt = KFAC(model, loss, **kw)
    for _ in range(3):
        _one_step(model, opt, x, y, loss)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    rows_after = []
    for _ in range(4):
        _one_step(model, opt, x, y, loss)
        rows_after.append(opt.last_stats_rows.clone())
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    fresh, *_ = _case(case, n)
    fresh.load_state_dict(ckpt["model"])
    fresh_opt = KFAC(fresh, loss, **kw)
    fresh_opt.load_state_dict(ckpt["opt"])
    for k in range(4):
        _one_step(fresh, fresh_opt, x, y, loss)
        assert torch.equal(fresh_opt.last_stats_rows, rows_after[k])
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("case", ["cnn", "lstm_batch_first"])
def test_resume_with_subsets_is_bit_for_bit(case: str) -> None:
    _resume_run(case)
