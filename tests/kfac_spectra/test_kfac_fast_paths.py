"""The optimizer's fast paths against their reference formulas (float64).

* one K-FAC step (factored damping, weight decay, KL clip, momentum, an unsupported
  layer) equals ``θ ← θ − α(βm + ν (S + γ_S)^{-1} G (A + γ_A)^{-1})`` computed from
  the factors with dense solves, on factor, inverse and plain steps alike;
* ``split_update`` is the adjoint of ``to_matrix`` for every block type (the step
  takes ``vᵀg`` on the block matrices);
* the guards of a step that updates neither factors nor inverses still tell a
  non-finite gradient from a non-finite direction and leave everything untouched;
* the workspace (flat gradient, direction and momentum buffers) forms each block's
  ``to_matrix`` and ``split_update`` exactly, and its steps equal the general
  path's, also across steps it leaves to the general path and a checkpoint;
* :func:`~kfac_spectra.kfac.finite.all_finite` (extremes checked on the host)
  equals ``isfinite(t).all()`` over every tensor;
* :func:`~kfac_spectra.kfac.blocks.base.gram` (strips of the block upper triangle)
  and the channels-last convolution statistics equal the plain products.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from kfac_helpers import seeded
from torch import Tensor, nn

from kfac_spectra import KFAC
from kfac_spectra.kfac.blocks import build_blocks
from kfac_spectra.kfac.blocks.base import gram, homogeneous_gram
from kfac_spectra.kfac.blocks.conv import ConvBlock
from kfac_spectra.kfac.enums import KFACApprox, RNNApprox
from kfac_spectra.kfac.finite import all_finite
from kfac_spectra.kfac.inverse import EigenInverse
from kfac_spectra.kfac.workspace import Workspace

pytestmark = pytest.mark.filterwarnings("ignore:K-FAC. no curvature block")

DT = torch.float64
STEP_RTOL = 1e-12  # fast step vs the dense reference, float64
GRAM_RTOL = 1e-12


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


class ConvNet(nn.Module):
    """Conv1d → Linear → Linear (no bias) → LayerNorm (no K-FAC block)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.fc = nn.Linear(15, 4)
        self.out = nn.Linear(4, 3, bias=False)
        self.norm = nn.LayerNorm(3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.conv(x)).flatten(1)
        return self.norm(self.out(torch.tanh(self.fc(h))))


def _seeded(model: nn.Module, seed: int) -> nn.Module:
    model = model.double()
    gen = seeded(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT) * 0.7)
    return model


def _reference_direction(
    factors: dict[str, tuple[Tensor, Tensor]],
    grads: dict[str, Tensor],
    gamma: float,
) -> dict[str, Tensor]:
    """``(S + γ_S)^{-1} [∇W | ∇b] (A + γ_A)^{-1}`` per layer, π from the traces."""
    out = dict(grads)
    for layer, (a, s) in factors.items():
        w = grads[f"{layer}.weight"]
        mat = w.reshape(w.shape[0], -1)
        bias = f"{layer}.bias" in grads
        if bias:
            mat = torch.cat([mat, grads[f"{layer}.bias"][:, None]], dim=1)
        ev_a = torch.linalg.eigvalsh(a).clamp_min(0)
        ev_s = torch.linalg.eigvalsh(s).clamp_min(0)
        pi = math.sqrt((float(ev_a.mean())) / float(ev_s.mean()))
        pi = min(max(pi, 1e-4), 1e4)
        g_s, g_a = math.sqrt(gamma) / pi, math.sqrt(gamma) * pi
        eye = torch.eye
        x = torch.linalg.solve(s + g_s * eye(s.shape[0], dtype=DT), mat)
        x = torch.linalg.solve(a + g_a * eye(a.shape[0], dtype=DT), x.T).T
        n_w = w[0].numel()
        out[f"{layer}.weight"] = x[:, :n_w].reshape(w.shape)
        if bias:
            out[f"{layer}.bias"] = x[:, n_w]
    return out


def test_step_equals_the_dense_reference_on_every_kind_of_step(solve_path) -> None:
    """Six steps with factors every 2 and inverses every 3 steps: steps 1 and 5 update
    neither (the fused check), the others one or both; each step's update is the
    reference formula on the factors of the last inverse step, to 1e-12."""
    model = _seeded(ConvNet(), 0)
    x = torch.randn(8, 2, 5, generator=seeded(1), dtype=DT)
    y = torch.randint(0, 3, (8,), generator=seeded(2))
    lr, beta, wd, lam, kappa = 0.5, 0.9, 1e-2, 0.1, 1e-3
    opt = KFAC(
        model,
        "ce",
        lr=lr,
        momentum=beta,
        damping=lam,
        weight_decay=wd,
        fisher_type="type2",
        factor_interval=2,
        inverse_interval=3,
        kl_clip=kappa,
    )
    names = dict(model.named_parameters())
    momentum = {n: torch.zeros_like(p) for n, p in names.items()}
    factors: dict[str, tuple[Tensor, Tensor]] = {}
    clipped = 0
    for step in range(6):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        before = {n: p.detach().clone() for n, p in names.items()}
        grads = {n: p.grad + wd * p.detach() for n, p in names.items()}
        opt.step()
        if step % 3 == 0:  # this step's inverse used the factors as of now
            factors = {k.split(".")[0]: v for k, v in opt.factors().items()}
        v = _reference_direction(factors, grads, lam + wd)
        vg = sum(float((v[n] * grads[n]).sum()) for n in names)
        nu = min(1.0, math.sqrt(kappa / (lr * lr * vg)))
        clipped += nu < 1
        for n, p in names.items():
            momentum[n] = beta * momentum[n] + nu * v[n]
            assert _rel(p.detach(), before[n] - lr * momentum[n]) < STEP_RTOL, (
                step,
                n,
            )
    assert clipped >= 1 and opt.steps == 6


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.head = nn.Linear(4, 7)
        self.head.weight = self.emb.weight

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.emb(idx))


@pytest.mark.parametrize(
    "model",
    [
        nn.Linear(5, 3),
        nn.Linear(5, 3, bias=False),
        nn.Conv2d(2, 3, (3, 2)),
        nn.Embedding(6, 4),
        _Tied(),
        nn.RNN(3, 4, batch_first=True),
        nn.LSTM(3, 2),
        nn.LSTM(3, 2, bias=False),
    ],
    ids=lambda m: type(m).__name__,
)
def test_split_update_is_the_adjoint_of_to_matrix(model: nn.Module) -> None:
    """``Σ_p ⟨split(X)_p, t_p⟩ = ⟨X, to_matrix(t)⟩`` (over the parameters that
    ``split_update`` returns), so ``vᵀg`` may be taken on the block matrices."""
    model = model.double()
    blocks = build_blocks(model, KFACApprox.EXPAND, RNNApprox.INDEPENDENT).blocks
    assert blocks
    gen = seeded(3)
    for block in blocks.values():
        ps = block.params()
        t = [torch.randn(p.shape, generator=gen, dtype=DT) for p in ps]
        mat = block.to_matrix(t)
        x = torch.randn(mat.shape, generator=gen, dtype=DT)
        ups = block.split_update(x)
        assert all(u.shape == p.shape for p, u in zip(ps, ups, strict=False))
        lhs = sum(
            float((u.reshape(p.shape) * ti).sum())
            for p, u, ti in zip(ps, ups, t, strict=False)
        )
        rhs = float((x * mat).sum())
        assert math.isclose(lhs, rhs, rel_tol=1e-12), type(block).__name__


@pytest.fixture(params=["workspace", "general"])
def solve_path(request, monkeypatch) -> str:
    """Run a test on the workspace path (the default) and on the general one."""
    if request.param == "general":
        monkeypatch.setattr(KFAC, "_workspace_for", lambda self, grads: None)
    return request.param


def _plain_step_optimizer() -> tuple[nn.Module, KFAC, Tensor, Tensor]:
    """A model whose next step updates neither factors nor inverses."""
    model = _seeded(ConvNet(), 4)
    x = torch.randn(8, 2, 5, generator=seeded(5), dtype=DT)
    y = torch.randint(0, 3, (8,), generator=seeded(6))
    opt = KFAC(model, "ce", lr=0.1, factor_interval=4, inverse_interval=4)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return model, opt, x, y


def _snapshot(model: nn.Module, opt: KFAC) -> list[Tensor]:
    bufs = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    return [p.detach().clone() for p in model.parameters()] + [b.clone() for b in bufs]


def test_plain_step_with_a_nonfinite_gradient_is_skipped_and_named(
    solve_path,
) -> None:
    model, opt, _, _ = _plain_step_optimizer()
    before = _snapshot(model, opt)
    model.fc.bias.grad[1] = float("inf")
    with pytest.warns(UserWarning, match="non-finite gradient"):
        opt.step()
    assert opt.counters["skipped_steps"] == 1 and opt.steps == 1
    for a, b in zip(_snapshot(model, opt), before, strict=True):
        assert torch.equal(a, b)


def test_plain_step_with_a_nonfinite_direction_is_skipped_and_named(
    solve_path, monkeypatch
) -> None:
    model, opt, _, _ = _plain_step_optimizer()
    before = _snapshot(model, opt)
    real = EigenInverse._factored_inverses

    def overflow(self: EigenInverse, damping) -> tuple[Tensor, Tensor]:
        inv_s, inv_a = real(self, damping)  # both paths solve with these
        return (inv_s * math.inf if inv_s.shape[0] == 4 else inv_s), inv_a

    monkeypatch.setattr(EigenInverse, "_factored_inverses", overflow)
    with pytest.warns(UserWarning, match="non-finite preconditioned gradient"):
        opt.step()
    assert opt.counters["skipped_steps"] == 1 and opt.steps == 1
    for a, b in zip(_snapshot(model, opt), before, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "shape", [(10, 30), (700, 160), (2000, 200), (50, 400), (300, 257)]
)
def test_gram_equals_the_plain_product_and_is_symmetric(shape) -> None:
    """Tall (64-wide strips), wide (128-wide) and small (one product) cases."""
    rows = torch.randn(shape, generator=seeded(7), dtype=DT)
    assert _rel(gram(rows), rows.T @ rows) < GRAM_RTOL
    assert _rel(gram(rows.T.contiguous().T), rows.T @ rows) < GRAM_RTOL
    h = homogeneous_gram(rows, True)
    ones = torch.cat([rows, torch.ones(shape[0], 1, dtype=DT)], dim=1)
    assert _rel(h, ones.T @ ones) < GRAM_RTOL


@pytest.mark.parametrize(
    ("conv", "shape"),
    [
        (nn.Conv1d(3, 4, 5, stride=2, padding=2), (6, 3, 17)),
        (nn.Conv1d(2, 3, 3, dilation=2), (2, 7)),  # unbatched
        (
            nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
            (4, 3, 9, 8),
        ),
        (nn.Conv2d(2, 3, 3, padding="same", bias=False), (2, 2, 6, 6)),
        (nn.Conv2d(40, 8, 2), (3, 40, 5, 5)),  # 160-wide patches: gram in strips
    ],
    ids=["1d-strided", "1d-unbatched", "2d-dilated", "2d-same-nobias", "2d-wide"],
)
def test_conv_statistics_from_channels_last_patches(conv, shape) -> None:
    """A from the channels-last patches (reordered) and S from ``(C_out, N·T)``
    equal the Gram matrices of :meth:`input_features` / :meth:`grad_rows`."""
    conv = conv.double()
    block = ConvBlock("c", conv, KFACApprox.EXPAND)
    x = torch.randn(shape, generator=seeded(8), dtype=DT)
    a, rows = block.input_gram(x)
    feats = block.input_features(x)
    assert rows == feats.shape[0]
    ones = torch.ones(rows, 1, dtype=DT)
    ref = torch.cat([feats, ones], 1) if block.has_bias else feats
    assert _rel(a, ref.T @ ref) < GRAM_RTOL
    g = torch.randn(conv(x).shape, generator=seeded(9), dtype=DT)
    grad_rows = block.grad_rows(g)
    assert _rel(block.grad_gram(g), grad_rows.T @ grad_rows) < GRAM_RTOL


def test_plain_step_with_an_overflowing_dot_product_is_taken_unclipped(
    solve_path,
) -> None:
    """Finite gradient and direction whose ``vᵀg`` overflows: the step is taken
    with ν = 1 (the clip needs a finite ``vᵀg``), as the separate checks would."""
    model, opt, _, _ = _plain_step_optimizer()
    for p in model.parameters():
        p.grad.fill_(1e160)
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
    assert opt.counters["skipped_steps"] == 0 and opt.steps == 2
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.isfinite(p).all() and not torch.equal(p, b)


class EmbNet(nn.Module):
    """Embedding (diagonal A) → Linear → LayerNorm (no K-FAC block)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.fc = nn.Linear(8, 3)
        self.norm = nn.LayerNorm(3)

    def forward(self, idx: Tensor) -> Tensor:
        return self.norm(self.fc(torch.tanh(self.emb(idx)).flatten(1)))


@pytest.mark.parametrize(
    "model",
    [nn.Linear(5, 3), nn.Linear(5, 3, bias=False), nn.Conv2d(2, 3, (3, 2))]
    + [nn.Embedding(6, 4)],
    ids=lambda m: type(m).__name__,
)
def test_workspace_views_are_to_matrix_and_split_update(model: nn.Module) -> None:
    """Gradients copied into the workspace form ``to_matrix`` exactly; the
    direction's parameter views are ``split_update`` of its matrix."""
    model = model.double()
    (block,) = build_blocks(
        model, KFACApprox.EXPAND, RNNApprox.INDEPENDENT
    ).blocks.values()
    ps = tuple(block.params())
    ws = Workspace([("m", block, ps)], ps)
    gen = seeded(7)
    grads = [torch.randn(p.shape, generator=gen, dtype=DT) for p in ps]
    ws.load(grads)
    _, g_mat, _, x_mat = ws.blocks[0]
    assert torch.equal(g_mat, block.to_matrix(grads))
    x_mat.copy_(torch.randn(x_mat.shape, generator=gen, dtype=DT))
    for p, u in zip(ps, block.split_update(x_mat.clone()), strict=True):
        assert torch.equal(ws.per_param[p], u)
    assert ws.grad.data_ptr() % 64 == 0 and g_mat.data_ptr() % 64 == 0


def _emb_batch() -> tuple[Tensor, Tensor]:
    return torch.randint(0, 6, (16, 2), generator=seeded(8)), torch.randint(
        0, 3, (16,), generator=seeded(9)
    )


@pytest.mark.parametrize("net", [ConvNet, EmbNet], ids=lambda c: c.__name__)
def test_workspace_steps_equal_the_general_path(net) -> None:
    """Nine steps (factors every 2, inverses every 3, weight decay, KL clip) of the
    workspace path and of the general path agree to 1e-12 in float64; step 4 has a
    parameter without gradient (the workspace optimizer takes the general path
    there, on the momentum views), and after step 6 the workspace optimizer is
    resumed from a checkpoint into a fresh optimizer."""
    if net is ConvNet:
        x = torch.randn(8, 2, 5, generator=seeded(1), dtype=DT)
        y = torch.randint(0, 3, (8,), generator=seeded(2))
    else:
        x, y = _emb_batch()
    kw = {
        "lr": 0.5,
        "damping": 0.1,
        "weight_decay": 1e-2,
        "fisher_type": "type2",
        "factor_interval": 2,
        "inverse_interval": 3,
    }
    models = [_seeded(net(), 3), _seeded(net(), 3)]
    opts = [KFAC(m, "ce", **kw) for m in models]
    opts[1]._workspace_for = lambda grads: None
    for step in range(9):
        for model, opt in zip(models, opts, strict=True):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if step == 4:
                next(iter(model.parameters())).grad = None
            opt.step()
        if step == 6:
            opts[0].remove_hooks()
            fresh = KFAC(models[0], "ce", **kw)
            fresh.load_state_dict(opts[0].state_dict())
            opts[0] = fresh
        for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
            assert _rel(a.detach(), b.detach()) < STEP_RTOL, step
    ws = opts[0]._workspace
    assert ws is not None and opts[1]._workspace is None
    assert all(
        opts[0].state[p]["momentum_buffer"] is v
        for p, v in zip(ws.params, ws.momentum_views, strict=True)
    )


@pytest.mark.parametrize(
    "bad", [None, math.nan, math.inf, -math.inf, 1e300], ids=lambda b: repr(b)
)
def test_all_finite_equals_isfinite_of_every_tensor(bad) -> None:
    """Mixed dtypes (bfloat16, float32, float64; 1e300, finite, only in the
    float64 one, whose extremes the check keeps in float64), an empty tensor, the
    bad value placed in each tensor."""
    gen = seeded(10)
    base = [
        torch.randn(3, 4, generator=gen).to(torch.bfloat16),
        torch.randn(5, generator=gen),
        torch.empty(0),
        torch.randn(2, 2, generator=gen, dtype=DT),
    ]
    for where in (0, 1, 3):
        ts = [t.clone() for t in base]
        if bad == 1e300 and ts[where].dtype != DT:
            continue  # not representable: float32 refuses it
        if bad is not None:
            ts[where].view(-1)[1] = bad
        expected = all(bool(torch.isfinite(t).all()) for t in ts)
        assert all_finite(ts) is expected, where
        assert all_finite(iter(ts)) is expected
    assert all_finite([]) is True
