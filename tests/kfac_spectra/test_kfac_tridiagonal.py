"""Block-tridiagonal K-FAC against dense oracles built from Martens & Grosse (2015).

The oracle computes the Kronecker-factored Fisher ``F̃`` of a small MLP densely,
block by block (``F̃_ij = S_ij ⊗ A_ij`` from the test's own forward pass and
autograd Jacobians), then ``F̂ = (Ξᵀ Λ Ξ)^{-1}`` with dense ``Ψ`` and ``Σ`` from the
paper's §4.3 formulas; no Kronecker identity and no code under test is used.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from kfac_spectra.kfac import KFAC
from kfac_spectra.kfac.config import KFACConfig
from kfac_spectra.kfac.enums import Structure
from kfac_spectra.kfac.inverse import Damping, EigenInverse
from kfac_spectra.kfac.tridiagonal import (
    TridiagonalInverse,
    linear_chains,
)

EXACT_RTOL = 1e-9  # float64 identities
WIDTHS = (5, 7, 6, 4, 3)  # a 4-layer MLP
BATCH = 64


def _mlp(seed: int, widths=WIDTHS, act=nn.Tanh) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        lin = nn.Linear(a, b).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen, dtype=torch.float64))
            lin.weight.mul_(1.5 / math.sqrt(a))
            lin.bias.copy_(0.3 * torch.randn(b, generator=gen, dtype=torch.float64))
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _data(seed: int, widths=WIDTHS) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(BATCH, widths[0], generator=gen, dtype=torch.float64)
    y = torch.randn(BATCH, widths[-1], generator=gen, dtype=torch.float64)
    return x, y


def _oracle_factors(model: nn.Sequential, x: torch.Tensor):
    """``A_ij``, ``S_ij`` for all layer pairs: type-2 statistics of MSE (mean)."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    inputs, pre = [], []
    h = x
    for m in model:
        if isinstance(m, nn.Linear):
            inputs.append(torch.cat([h, torch.ones(h.shape[0], 1).to(h)], dim=1))
            h = h @ m.weight.T + m.bias
            pre.append(h)
        else:
            h = m(h)
    out = h
    c = 1.0 / out.numel()
    grads = []  # per output coordinate k: rows of each layer, sqrt(2c) ∂f_k/∂s_i
    for k in range(out.shape[1]):
        g = torch.autograd.grad(out[:, k].sum(), pre, retain_graph=True)
        grads.append([math.sqrt(2.0 * c) * gi for gi in g])
    n = len(linears)
    inputs = [t.detach() for t in inputs]
    grads = [[t.detach() for t in gk] for gk in grads]
    a = [[inputs[i].T @ inputs[j] / x.shape[0] for j in range(n)] for i in range(n)]
    s = [[sum(gk[i].T @ gk[j] for gk in grads) for j in range(n)] for i in range(n)]
    return a, s


def _damped_diagonal(a, s, gamma: float):
    """Diagonal factors with the factored (π) damping of Martens & Grosse §6.3."""
    out_a, out_s = [], []
    for i in range(len(a)):
        ai, si = a[i][i], s[i][i]
        pi = math.sqrt(
            (torch.trace(ai) / ai.shape[0]) / (torch.trace(si) / si.shape[0])
        )
        root = math.sqrt(gamma)
        out_a.append(ai + root * pi * torch.eye(ai.shape[0]).to(ai))
        out_s.append(si + root / pi * torch.eye(si.shape[0]).to(si))
    return out_a, out_s


def _dense_f_tilde(a, s, diag_a, diag_s):
    """``F̃`` with blocks ``S_ij ⊗ A_ij`` (row-major vec), diagonal ones given."""
    n = len(a)
    rows = []
    for i in range(n):
        row = []
        for j in range(n):
            if i == j:
                row.append(torch.kron(diag_s[i], diag_a[i]))
            else:
                row.append(torch.kron(s[i][j], a[i][j]))
        rows.append(row)
    return rows


def _dense_f_hat_inverse(blocks):
    """``Ξᵀ Λ Ξ`` from dense ``Ψ_{i,i+1} = F̃_{i,i+1} F̃_{i+1,i+1}^{-1}`` and
    ``Σ_{i|i+1} = F̃_ii − Ψ F̃_{i+1,i+1} Ψᵀ`` (Martens & Grosse 2015, §4.3)."""
    n = len(blocks)
    sizes = [blocks[i][i].shape[0] for i in range(n)]
    offs = [0]
    for d in sizes:
        offs.append(offs[-1] + d)
    total = offs[-1]
    xi = torch.eye(total, dtype=torch.float64)
    lam = torch.zeros(total, total, dtype=torch.float64)
    for i in range(n):
        sl = slice(offs[i], offs[i + 1])
        if i + 1 < n:
            nxt = slice(offs[i + 1], offs[i + 2])
            psi = blocks[i][i + 1] @ torch.linalg.inv(blocks[i + 1][i + 1])
            sigma = blocks[i][i] - psi @ blocks[i + 1][i + 1] @ psi.T
            xi[sl, nxt] = -psi
        else:
            sigma = blocks[i][i]
        lam[sl, sl] = torch.linalg.inv(sigma)
    return xi.T @ lam @ xi, offs


def _grad_mats(model: nn.Sequential, x, y) -> list[torch.Tensor]:
    model.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    return [
        torch.cat([m.weight.grad, m.bias.grad[:, None]], dim=1)
        for m in model
        if isinstance(m, nn.Linear)
    ]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("gamma", [0.0, 1e-2])
def test_update_equals_dense_f_hat_inverse(gamma: float) -> None:
    model = _mlp(0)
    x, y = _data(0)
    a, s = _oracle_factors(model, x)
    diag_a, diag_s = _damped_diagonal(a, s, gamma)
    blocks = _dense_f_tilde(a, s, diag_a, diag_s)
    f_hat_inv, offs = _dense_f_hat_inverse(blocks)
    grads = _grad_mats(model, x, y)
    expected = f_hat_inv @ torch.cat([g.reshape(-1) for g in grads])
    n = len(grads)
    inv = TridiagonalInverse.build(
        [(a[i][i], s[i][i]) for i in range(n)],
        [(a[i][i + 1], s[i][i + 1]) for i in range(n - 1)],
        Damping(True, gamma),
    )
    assert inv is not None
    got = torch.cat([u.reshape(-1) for u in inv.apply(grads)])
    assert _rel(got, expected) < EXACT_RTOL


def test_f_hat_tridiagonal_blocks_match_f_tilde() -> None:
    """``F̂ = (Ξᵀ Λ Ξ)^{-1}`` agrees with ``F̃`` on the diagonal and first
    off-diagonal blocks, and differs from it beyond (it is not ``F̃`` itself)."""
    model = _mlp(1)
    x, _ = _data(1)
    a, s = _oracle_factors(model, x)
    blocks = _dense_f_tilde(
        a, s, [a[i][i] for i in range(4)], [s[i][i] for i in range(4)]
    )
    f_hat_inv, offs = _dense_f_hat_inverse(blocks)
    f_hat = torch.linalg.inv(f_hat_inv)
    n = len(blocks)
    for i in range(n):
        for j in range(n):
            blk = f_hat[offs[i] : offs[i + 1], offs[j] : offs[j + 1]]
            if abs(i - j) <= 1:
                assert _rel(blk, blocks[i][j]) < EXACT_RTOL, (i, j)
            else:
                assert _rel(blk, blocks[i][j]) > 1e-3, (i, j)


def test_zero_cross_factors_give_block_diagonal_kfac() -> None:
    model = _mlp(2)
    x, y = _data(2)
    a, s = _oracle_factors(model, x)
    grads = _grad_mats(model, x, y)
    n = len(grads)
    damping = Damping(True, 3e-2)
    cross = [
        (torch.zeros_like(a[i][i + 1]), torch.zeros_like(s[i][i + 1]))
        for i in range(n - 1)
    ]
    inv = TridiagonalInverse.build(
        [(a[i][i], s[i][i]) for i in range(n)], cross, damping
    )
    assert inv is not None
    diag_a, diag_s = _damped_diagonal(a, s, damping.gamma)
    for i, u in enumerate(inv.apply(grads)):
        dense = torch.linalg.solve(diag_s[i], grads[i]) @ torch.linalg.inv(diag_a[i])
        assert _rel(u, dense) < EXACT_RTOL
        ea, ua = torch.linalg.eigh(a[i][i])
        es, us = torch.linalg.eigh(s[i][i])
        blockdiag = EigenInverse(es, us, ea, ua).apply(grads[i], damping)
        assert _rel(u, blockdiag) < EXACT_RTOL


def test_linear_chains_detection() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(3, 4),
                nn.Sigmoid(),
                nn.Linear(4, 4),
                nn.LayerNorm(4),
                nn.Linear(4, 2),
                nn.ReLU(),
                nn.Sequential(nn.Identity(), nn.Linear(2, 2)),
            )
            self.head = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.net(x))

    model = Odd()
    blocks = {n: object() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert linear_chains(model, blocks) == []  # not LinearBlocks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = KFAC(model, loss="mse")
    chains = linear_chains(model, opt.blocks)
    assert chains == [("net.0", "net.2"), ("net.4", "net.6.1")]


class _WithUnused(nn.Module):
    """The MLP plus a parameter the forward never uses (no gradient): the
    optimizer then takes its general path instead of the flat workspace."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net
        self.unused = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("workspace", [True, False])
def test_optimizer_step_is_dense_damped_f_hat_inverse(workspace: bool) -> None:
    """One KFAC step (lr 1, no momentum, no clipping) moves the parameters by
    ``−F̂^{-1} g`` for the damped ``F̂`` built densely from the batch statistics."""
    gamma = 1e-3
    net = _mlp(3)
    x, y = _data(3)
    a, s = _oracle_factors(net, x)
    diag_a, diag_s = _damped_diagonal(a, s, gamma)
    f_hat_inv, _ = _dense_f_hat_inverse(_dense_f_tilde(a, s, diag_a, diag_s))
    grads = _grad_mats(net, x, y)
    expected = -(f_hat_inv @ torch.cat([g.reshape(-1) for g in grads]))
    model = net if workspace else _WithUnused(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the root's unused parameter has no block
        opt = KFAC(
            model,
            loss="mse",
            fisher_type="type2",
            lr=1.0,
            momentum=0.0,
            damping=gamma,
            kl_clip=None,
            structure="block_tridiagonal",
        )
    linears = [m for m in net if isinstance(m, nn.Linear)]
    before = [
        torch.cat([m.weight, m.bias[:, None]], 1).detach().clone() for m in linears
    ]
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    after = [torch.cat([m.weight, m.bias[:, None]], 1).detach() for m in linears]
    got = torch.cat([(b - a_).reshape(-1) for a_, b in zip(before, after, strict=True)])
    assert _rel(got, expected) < EXACT_RTOL
    assert (opt._workspace is not None) == workspace


def test_layers_outside_a_chain_fall_back_with_a_warning() -> None:
    model = nn.Sequential(
        nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(16, 5), nn.Tanh(), nn.Linear(5, 3)
    ).double()
    with pytest.warns(UserWarning, match=r"outside a chain of linear layers: 0$"):
        opt = KFAC(model, loss="ce", structure="block_tridiagonal")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 10, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=gen)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert list(opt._chain_factors) == [("2", "4")]
    assert "0" in opt._inverses and "2" not in opt._inverses


@pytest.mark.parametrize(
    "kwargs", [{"damping_type": "tikhonov"}, {"inverse_method": "cg"}]
)
def test_tridiagonal_rejects_unsupported_options(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="block_tridiagonal"):
        KFAC(_mlp(0), loss="mse", structure="block_tridiagonal", **kwargs)
    with pytest.raises(ValueError, match="structure="):
        KFAC(_mlp(0), loss="mse", structure="tridiagonal")
    cfg = KFACConfig(loss="mse", structure="block_tridiagonal")
    assert cfg.structure is Structure.BLOCK_TRIDIAGONAL
    with pytest.raises(ValueError, match="block_tridiagonal"):
        KFACConfig(structure="block_tridiagonal", **kwargs)


def test_tridiagonal_checkpoint_resumes_bit_for_bit() -> None:
    x, y = _data(4)

    def run(opt: KFAC, model: nn.Module, steps: int) -> None:
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()

    kw = {"loss": "mse", "inverse_interval": 3, "structure": "block_tridiagonal"}
    model = _mlp(4)
    opt = KFAC(model, **kw)
    run(opt, model, 4)
    # λ changes after the inverse update of step 3: the chain keeps the damping
    # it was built with until the next update, also across the checkpoint
    opt.damping *= 3.0
    run(opt, model, 1)
    state = copy.deepcopy(opt.state_dict())
    params = [p.detach().clone() for p in model.parameters()]
    run(opt, model, 3)
    resumed = _mlp(4)
    with torch.no_grad():
        for p, q in zip(resumed.parameters(), params, strict=True):
            p.copy_(q)
    opt2 = KFAC(resumed, **kw)
    opt2.load_state_dict(state)
    run(opt2, resumed, 3)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
