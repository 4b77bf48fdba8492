"""The KFAC optimizer: CG-FAC vs eigh, invariances (Corollaries 2 and 3), the
quadratic-model step, LM damping, KL clipping, robustness and checkpointing."""

from __future__ import annotations

import copy
import doctest
import io
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from kfac_helpers import (
    GGN_RTOL,
    ggn_block,
    layer_matrix_jacobian,
    output_hessian,
    randomise,
    rel_err,
    seeded,
)
from torch import Tensor, nn

import kfac_spectra.kfac.factors as factors_module
import kfac_spectra.kfac.optimizer as optimizer_module
from kfac_spectra import KFAC, compute_factors
from kfac_spectra.kfac.blocks.linear import LinearBlock
from kfac_spectra.kfac.inverse import Damping, EigenInverse, cg_fac_solve, robust_eigh

DT = torch.float64
CG_ATOL = 1e-8
INVARIANCE_RTOL = 1e-7
DEFAULTS_STEPS = 20
DEFAULTS_LOSS_FRACTION = 0.25
MAX_DAMPING_STEPS = 8
STEP_RTOL = 1e-12  # the same float64 operations up to their order


def _mlp(seed: int, sizes=(4, 6, 3), act=nn.Tanh) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return randomise(nn.Sequential(*layers).double(), seed, scale=0.6)


def _train(model, opt, x, y, loss="mse", steps=1, closure=False):
    lossf = F.mse_loss if loss == "mse" else F.cross_entropy
    for _ in range(steps):
        opt.zero_grad()
        value = lossf(model(x), y)
        value.backward()
        if closure:
            opt.step(lambda: lossf(model(x), y))
        else:
            opt.step()
    with torch.no_grad():  # a grad-enabled forward would be captured for the next step
        return lossf(model(x), y).item()


@pytest.mark.parametrize("module", [optimizer_module, factors_module])
def test_docstring_example_runs(module) -> None:
    result = doctest.testmod(module, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


def test_cg_fac_solver_matches_eigh() -> None:
    gen = seeded(1)
    rows_x = torch.cat(
        [torch.randn(30, 5, generator=gen, dtype=DT), torch.ones(30, 1, dtype=DT)], 1
    )
    rows_g = torch.randn(40, 4, generator=gen, dtype=DT) * 0.3
    g = torch.randn(4, 6, generator=gen, dtype=DT)
    a, s = rows_x.T @ rows_x / 30, rows_g.T @ rows_g
    ea, es = robust_eigh(a), robust_eigh(s)
    eig = EigenInverse(es[0], es[1], ea[0], ea[1])
    for factored in (True, False):
        damping = Damping(factored, 1e-2)
        want = eig.apply(g, damping)
        got, iters = cg_fac_solve(g, rows_x, rows_g, damping, max_iter=500, rtol=1e-14)
        assert (got - want).abs().max() < CG_ATOL
        # warm start from the solution converges immediately
        _, iters_warm = cg_fac_solve(g, rows_x, rows_g, damping, x0=got, rtol=1e-10)
        assert iters_warm < iters


@pytest.mark.parametrize("damping_type", ["tikhonov", "factored"])
def test_cg_optimizer_step_equals_eigh_step(damping_type: str) -> None:
    x = torch.randn(32, 4, generator=seeded(2), dtype=DT)
    y = torch.randn(32, 3, generator=seeded(3), dtype=DT)
    params = {}
    for method in ("eigh", "cg"):
        model = _mlp(4)
        opt = KFAC(
            model,
            "mse",
            lr=1.0,
            momentum=0.0,
            damping=1e-2,
            fisher_type="type2",
            inverse_method=method,
            damping_type=damping_type,
            cg_max_iter=1000,
            cg_rtol=1e-14,
        )
        _train(model, opt, x, y)
        params[method] = torch.cat([p.reshape(-1) for p in model.parameters()])
    assert (params["cg"] - params["eigh"]).abs().max() < CG_ATOL


def _affine_pair(seed: int):
    """A net and its input-reparameterised twin x† = Ω x + t, W₁† = W̄₁ Ω̄^{-1}."""
    model = _mlp(seed)
    gen = seeded(seed + 100)
    omega = torch.randn(4, 4, generator=gen, dtype=DT) + 2 * torch.eye(4, dtype=DT)
    shift = torch.randn(4, generator=gen, dtype=DT)
    omega_bar = torch.eye(5, dtype=DT)
    omega_bar[:4, :4], omega_bar[:4, 4] = omega, shift
    twin = copy.deepcopy(model)
    w_bar = torch.cat([model[0].weight, model[0].bias[:, None]], 1)
    w_dag = w_bar @ torch.linalg.inv(omega_bar)
    with torch.no_grad():
        twin[0].weight.copy_(w_dag[:, :4])
        twin[0].bias.copy_(w_dag[:, 4])
    return model, twin, lambda x: x @ omega.T + shift


def test_affine_input_invariance_corollary_2() -> None:
    """Undamped K-FAC follows the same path in function space for x and Ωx + t."""
    x = torch.randn(40, 4, generator=seeded(5), dtype=DT)
    y = torch.randn(40, 3, generator=seeded(6), dtype=DT)
    model, twin, transform = _affine_pair(7)
    kw = dict(
        lr=0.5,
        momentum=0.0,
        damping=1e-12,
        min_damping=1e-12,
        fisher_type="type2",
        damping_type="tikhonov",
        inverse_interval=1,
        factor_decay=0.0,
    )
    opt, opt_twin = KFAC(model, "mse", **kw), KFAC(twin, "mse", **kw)
    xt = transform(x)
    assert rel_err(twin(xt), model(x)) < 1e-12
    for _ in range(3):
        _train(model, opt, x, y)
        _train(twin, opt_twin, xt, y)
        assert rel_err(twin(xt), model(x)) < INVARIANCE_RTOL
    # and plain gradient descent is not invariant (the test can fail)
    sgd_model, sgd_twin, _ = _affine_pair(7)
    for m, inp in ((sgd_model, x), (sgd_twin, xt)):
        o = torch.optim.SGD(m.parameters(), lr=0.05)
        _train(m, o, inp, y)
    assert rel_err(sgd_twin(xt), sgd_model(x)) > 1e-3


class WhitenedLinear(nn.Module):
    """s = S^{-1/2} W† (Ω ā) with Ω = A^{-1/2} acting on the homogeneous input."""

    def __init__(self, w_bar: Tensor, a: Tensor, s: Tensor) -> None:
        super().__init__()
        ea, ua = torch.linalg.eigh(a)
        es, us = torch.linalg.eigh(s)
        self.register_buffer("a_isqrt", ua @ torch.diag(ea.rsqrt()) @ ua.T)
        self.register_buffer("s_isqrt", us @ torch.diag(es.rsqrt()) @ us.T)
        a_sqrt = ua @ torch.diag(ea.sqrt()) @ ua.T
        s_sqrt = us @ torch.diag(es.sqrt()) @ us.T
        self.inner = nn.Linear(w_bar.shape[1], w_bar.shape[0], bias=False).double()
        with torch.no_grad():
            self.inner.weight.copy_(s_sqrt @ w_bar @ a_sqrt)

    def forward(self, x: Tensor) -> Tensor:
        xb = torch.cat([x, torch.ones_like(x[..., :1])], -1)
        return self.inner(xb @ self.a_isqrt.T) @ self.s_isqrt.T

    def w_bar(self) -> Tensor:
        return self.s_isqrt @ self.inner.weight @ self.a_isqrt


def test_kfac_is_gradient_descent_on_whitened_network_corollary_3() -> None:
    x = torch.randn(40, 4, generator=seeded(8), dtype=DT)
    y = torch.randn(40, 3, generator=seeded(9), dtype=DT)
    model = _mlp(10)
    factors = compute_factors(model, x, y, "mse", "type2")
    whitened = nn.Sequential(
        WhitenedLinear(
            torch.cat([model[0].weight, model[0].bias[:, None]], 1), *factors["0"]
        ),
        nn.Tanh(),
        WhitenedLinear(
            torch.cat([model[2].weight, model[2].bias[:, None]], 1), *factors["2"]
        ),
    )
    assert rel_err(whitened(x), model(x)) < 1e-12
    # the whitened network's own K-FAC factors are identities
    for name, (a, s) in compute_factors(whitened, x, y, "mse", "type2").items():
        assert rel_err(a, torch.eye(a.shape[0], dtype=DT)) < 1e-10, name
        assert rel_err(s, torch.eye(s.shape[0], dtype=DT)) < 1e-10, name
    lr = 0.3
    _train(whitened, torch.optim.SGD(whitened.parameters(), lr=lr), x, y)
    opt = KFAC(
        model,
        "mse",
        lr=lr,
        momentum=0.0,
        damping=1e-13,
        min_damping=1e-13,
        fisher_type="type2",
        damping_type="tikhonov",
        kl_clip=None,  # the exact natural-gradient step, unclipped
    )
    _train(model, opt, x, y)
    for i, layer in ((0, whitened[0]), (2, whitened[2])):
        w_bar = torch.cat([model[i].weight, model[i].bias[:, None]], 1)
        assert rel_err(w_bar, layer.w_bar()) < INVARIANCE_RTOL


def test_qmodel_coefficients_match_dense_quadratic_model() -> None:
    """(α, μ) minimise ½δᵀ(G + λI)δ + gᵀδ with the exact dense GGN G."""
    x = torch.randn(20, 4, generator=seeded(11), dtype=DT)
    y = torch.randint(0, 3, (20,), generator=seeded(12))
    model = _mlp(13)
    opt = KFAC(model, "ce", damping=1e-2, step_rule="qmodel", fisher_type="type2")
    _train(model, opt, x, y, loss="ce", steps=2)
    # reproduce the third step's coefficients densely
    names = ["0", "2"]
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    prev = [opt.state[p]["qmodel_prev"].clone() for p in model.parameters()]
    opt.step()
    step = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]
    # the realised step is α Δ + μ δ₀; recover Δ from it and check optimality:
    # the gradient of the model w.r.t. (α, μ) vanishes at the optimum
    with torch.no_grad():
        for p, b in zip(model.parameters(), before, strict=True):
            p.copy_(b)

    def mat(tensors, i):
        return torch.cat([tensors[2 * i], tensors[2 * i + 1][:, None]], 1).reshape(-1)

    gamma = opt.damping
    # dense GGN over all parameters (both layers jointly)
    jac = torch.cat([layer_matrix_jacobian(model, n, x) for n in names], 1)
    hess = output_hessian(model(x), "ce", "mean")
    ggn = jac.T @ hess @ jac
    vec = lambda ts: torch.cat([mat(ts, i) for i in range(2)])  # noqa: E731
    g, d, d0 = vec(grads), vec(step), vec(prev)
    curv = ggn + gamma * torch.eye(ggn.shape[0], dtype=DT)
    # optimality: ∂M/∂c along each spanning direction vanishes at δ = αΔ + μδ₀
    for direction in (d, d0):
        slope = (direction @ (curv @ d) + g @ direction).detach()
        assert abs(float(slope)) < 1e-8 * float(g.norm() * direction.norm())
    assert opt.last_mu != 0.0


def test_lm_damping_shrinks_when_model_is_exact() -> None:
    """Linear regression with MSE: the quadratic model is exact up to the damping
    term ½λ||δ||² > 0 (so ρ is slightly above 1), and λ ← ωλ."""
    x = torch.randn(30, 4, generator=seeded(14), dtype=DT)
    y = torch.randn(30, 2, generator=seeded(15), dtype=DT)
    model = nn.Linear(4, 2).double()
    opt = KFAC(
        model,
        "mse",
        lr=0.5,
        damping=1e-6,
        adapt_damping=True,
        lm_interval=1,
        fisher_type="type2",
    )
    _train(model, opt, x, y, closure=True)
    assert 1.0 <= opt.last_rho < 1.0 + 1e-4
    assert math.isclose(opt.damping, 1e-6 * 0.95)


def test_lm_damping_grows_when_step_is_bad() -> None:
    """A huge learning rate overshoots: ρ < 1/4 and λ ← λ/ω."""
    x = torch.randn(30, 4, generator=seeded(14), dtype=DT)
    y = torch.randn(30, 2, generator=seeded(15), dtype=DT)
    model = nn.Linear(4, 2).double()
    opt = KFAC(
        model,
        "mse",
        lr=5.0,
        momentum=0.0,
        damping=1e-3,
        adapt_damping=True,
        lm_interval=1,
        fisher_type="type2",
        kl_clip=None,  # the clip would rescue the overshooting step
    )
    _train(model, opt, x, y, closure=True)
    assert opt.last_rho < 0.25
    assert math.isclose(opt.damping, 1e-3 / 0.95)


def test_damping_never_exceeds_max_damping() -> None:
    """A closure whose loss always rises makes every reduction ratio negative, so
    each LM update divides λ by ω = (19/20)^T₁ (Martens & Grosse 2015, §6.5):
    λ_k = min(λ₀ ω^{-k}, max_damping), reached after 4 steps here and held."""
    x = torch.randn(20, 4, generator=seeded(60), dtype=DT)
    y = torch.randn(20, 3, generator=seeded(61), dtype=DT)
    model = _mlp(62)
    damping, max_damping, omega = 1e-2, 1.2e-2, 19.0 / 20.0
    opt = KFAC(
        model,
        "mse",
        lr=0.05,
        damping=damping,
        max_damping=max_damping,
        adapt_damping=True,
        lm_interval=1,
    )
    calls = [0]

    def rising() -> float:
        calls[0] += 1
        return float(calls[0])  # the loss after each update exceeds the one before

    for k in range(1, MAX_DAMPING_STEPS + 1):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step(rising)
        assert opt.last_rho < 0.0
        assert opt.damping <= max_damping
        assert math.isclose(opt.damping, min(damping * omega**-k, max_damping))
    assert calls[0] == 2 * MAX_DAMPING_STEPS  # before and after every update
    assert opt.damping == max_damping


def test_skipped_module_gets_the_plain_gradient_step() -> None:
    """``skip_modules=["2"]``: the last layer steps along −α g (momentum 0, no clip,
    no weight decay: the first step of heavy-ball SGD), while the first layer's
    K-FAC step is the one it takes when no module is skipped (its block's
    statistics do not depend on the other block)."""
    x = torch.randn(20, 4, generator=seeded(63), dtype=DT)
    y = torch.randn(20, 3, generator=seeded(64), dtype=DT)
    lr = 0.3
    kw = dict(lr=lr, momentum=0.0, kl_clip=None, damping=1e-2, fisher_type="type2")
    skipped, full = _mlp(65), _mlp(65)
    start = dict(skipped.named_parameters())
    grads = dict(
        zip(
            start,
            torch.autograd.grad(F.mse_loss(skipped(x), y), list(start.values())),
            strict=True,
        )
    )
    start = {k: v.detach().clone() for k, v in start.items()}
    opt = KFAC(skipped, "mse", skip_modules=["2"], **kw)
    assert set(opt.blocks) == {"0"} and opt.unsupported == []
    _train(skipped, opt, x, y)
    _train(full, KFAC(full, "mse", **kw), x, y)
    after, after_full = dict(skipped.named_parameters()), dict(full.named_parameters())
    for name in ("2.weight", "2.bias"):
        plain = start[name] - lr * grads[name]
        assert rel_err(after[name], plain) < STEP_RTOL, name
        assert rel_err(after_full[name], plain) > 1e-3, name  # K-FAC differs
    for name in ("0.weight", "0.bias"):
        assert rel_err(after[name], after_full[name]) < STEP_RTOL, name


def test_kl_clipping_bounds_the_step() -> None:
    x = torch.randn(30, 4, generator=seeded(16), dtype=DT)
    y = torch.randn(30, 3, generator=seeded(17), dtype=DT)
    model = _mlp(18)
    before = [p.detach().clone() for p in model.parameters()]
    kappa, lr = 1e-6, 1.0
    opt = KFAC(model, "mse", lr=lr, momentum=0.0, kl_clip=kappa, fisher_type="type2")
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    steps = [b - p.detach() for p, b in zip(model.parameters(), before, strict=True)]
    # step = lr ν v  ⇒  lr² ν² vᵀg · (1/ν²)… check lr · (stepᵀ g) = κ exactly
    vg_scaled = sum(float((s * g).sum()) for s, g in zip(steps, grads, strict=True))
    # stepᵀg = lr ν vᵀg and ν² lr² vᵀg = κ  ⇒  (stepᵀg)² = κ · lr² · ... use ν<1:
    assert vg_scaled > 0
    # recompute v with a second, unclipped optimizer
    model2 = _mlp(18)
    opt2 = KFAC(model2, "mse", lr=lr, momentum=0.0, fisher_type="type2", kl_clip=None)
    opt2.zero_grad()
    F.mse_loss(model2(x), y).backward()
    opt2.step()
    v = [b - p.detach() for p, b in zip(model2.parameters(), before, strict=True)]
    vg = sum(float((s * g).sum()) for s, g in zip(v, grads, strict=True)) / lr
    nu = math.sqrt(kappa / (lr * lr * vg))
    assert nu < 1
    for s, vv in zip(steps, v, strict=True):
        assert rel_err(s, nu * vv) < 1e-10


def _teacher_problem(seed: int) -> tuple[Tensor, Tensor]:
    """256 Gaussian inputs labelled by a noisy random linear teacher (5 classes)."""
    gen = seeded(seed)
    x = torch.randn(256, 20, generator=gen)
    w = 2.0 * torch.randn(20, 5, generator=gen)
    noise = 0.5 * torch.randn(256, 5, generator=gen)
    return x, (x @ w + noise).argmax(dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_optimizer_trains_where_the_unclipped_step_diverges(seed: int) -> None:
    """The defaults (λ = 1e-3, α = 0.1, β = 0.9, KL clip κ = 1e-3) decrease the loss
    of a small MLP on a seeded problem on which the same settings without the clip
    blow the loss up: the oracle is the unclipped run."""
    x, y = _teacher_problem(40 + seed)

    def train(**kw: Any) -> tuple[float, float]:
        model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
        gen = seeded(seed)
        with torch.no_grad():  # PyTorch's default init, U(±1/sqrt(fan_in)), seeded
            for layer in (model[0], model[2]):
                bound = layer.in_features**-0.5
                for p in (layer.weight, layer.bias):
                    p.copy_((2 * torch.rand(p.shape, generator=gen) - 1) * bound)
        opt = KFAC(model, "ce", **kw)
        first = F.cross_entropy(model(x), y).item()
        for _ in range(DEFAULTS_STEPS):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        with torch.no_grad():
            return first, float(F.cross_entropy(model(x), y))

    first, unclipped = train(kl_clip=None)
    assert not unclipped < first  # diverged (or NaN): the problem discriminates
    first_default, trained = train()
    assert first_default == first
    assert trained < DEFAULTS_LOSS_FRACTION * first


@pytest.mark.parametrize("keep_inputs", [False, True])
def test_layer_hooks_exist_only_on_factor_steps(keep_inputs: bool) -> None:
    """Non-factor steps run the plain model: no per-layer forward hooks, and no
    root hooks either unless the inputs are kept (``adapt_damping``)."""
    x = torch.randn(12, 4, generator=seeded(50), dtype=DT)
    y = torch.randn(12, 3, generator=seeded(51), dtype=DT)
    model = _mlp(52)
    opt = KFAC(model, "mse", lr=0.01, factor_interval=3, adapt_damping=keep_inputs)
    for step in range(7):
        hooked = [len(model[i]._forward_hooks) for i in (0, 2)]
        assert hooked == ([1, 1] if step % 3 == 0 else [0, 0]), step
        root = [len(model._forward_pre_hooks), len(model._forward_hooks)]
        assert root == ([1, 1] if step % 3 == 0 or keep_inputs else [0, 0]), step
        _train(model, opt, x, y)
    opt.remove_hooks()
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert all(not m._forward_hooks for m in model)


def test_root_layer_is_captured_before_the_root_hook() -> None:
    """A bare layer as the model: its record exists when the root hook runs."""
    x = torch.randn(20, 4, generator=seeded(53), dtype=DT)
    y = torch.randn(20, 3, generator=seeded(54), dtype=DT)
    model = nn.Linear(4, 3).double()
    opt = KFAC(model, "mse", lr=0.0, fisher_type="type2", factor_decay=0.0)
    _train(model, opt, x, y)
    (a, s), (a_ref, s_ref) = opt.factors()[""], compute_factors(model, x, y)[""]
    assert rel_err(a, a_ref) < 1e-12 and rel_err(s, s_ref) < 1e-12


def test_eigh_failure_nan_then_retry_succeeds(monkeypatch) -> None:
    """A float32 eigh that returns NaN is retried once in float64, per factor."""
    real = torch.linalg.eigh
    calls: list[torch.dtype] = []

    def flaky(m):
        calls.append(m.dtype)
        e, u = real(m)
        return (e * float("nan"), u) if m.dtype == torch.float32 else (e, u)

    monkeypatch.setattr(torch.linalg, "eigh", flaky)
    model = _mlp(19).float()
    x = torch.randn(16, 4, generator=seeded(20))
    y = torch.randn(16, 3, generator=seeded(21))
    opt = KFAC(model, "mse", lr=0.1)
    _train(model, opt, x, y, steps=2)
    # one inverse update in two steps (inverse_interval 10): A and S of the two
    # linear layers, each a failed float32 call and its float64 retry
    assert calls == [torch.float32, torch.float64] * 4
    assert opt.counters["inverse_failures"] == 0
    assert set(opt.eigenbases()) == {"0", "2"}
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_eigh_failure_always_is_survived(monkeypatch) -> None:
    def broken(m):
        raise torch.linalg.LinAlgError("injected cusolver failure")

    monkeypatch.setattr(torch.linalg, "eigh", broken)
    model = _mlp(22)
    x = torch.randn(16, 4, generator=seeded(23), dtype=DT)
    y = torch.randn(16, 3, generator=seeded(24), dtype=DT)
    opt = KFAC(model, "mse", lr=0.05)
    with pytest.warns(UserWarning, match="inverse update failed"):
        loss = _train(model, opt, x, y, steps=3)
    assert opt.counters["inverse_failures"] >= 2
    assert math.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_gradient_and_loss_skip_the_step() -> None:
    model = _mlp(25)
    x = torch.randn(16, 4, generator=seeded(26), dtype=DT)
    y = torch.randn(16, 3, generator=seeded(27), dtype=DT)
    opt = KFAC(model, "mse")
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    model[0].weight.grad[0, 0] = float("nan")
    with pytest.warns(UserWarning, match="non-finite gradient"):
        opt.step()
    opt.zero_grad()
    value = F.mse_loss(model(x), y)
    value.backward()
    with pytest.warns(UserWarning, match="non-finite loss"):
        opt.step(loss=float("inf"))
    assert opt.counters["skipped_steps"] == 2 and opt.steps == 0
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)


def test_nonfinite_factor_batch_is_skipped(monkeypatch) -> None:
    real = LinearBlock.input_features

    def poisoned(self, x):
        rows = real(self, x)
        return rows * float("nan") if self.name == "0" else rows

    monkeypatch.setattr(LinearBlock, "input_features", poisoned)
    model = _mlp(28)
    x = torch.randn(16, 4, generator=seeded(29), dtype=DT)
    y = torch.randn(16, 3, generator=seeded(30), dtype=DT)
    opt = KFAC(model, "mse", lr=0.05)
    with pytest.warns(UserWarning, match="non-finite factor"):
        _train(model, opt, x, y, steps=2)
    assert opt.counters["nonfinite_factors"] == 2
    assert "0" not in opt.factors() and "2" in opt.factors()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"damping": 0.0}, "damping"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"factor_decay": 1.0}, "factor_decay"),
        ({"factor_interval": 0}, "factor_interval"),
        ({"inverse_interval": 0}, "inverse_interval"),
        ({"kl_clip": 0.0}, "kl_clip"),
        ({"mc_samples": 0}, "mc_samples"),
        ({"fisher_type": "exact"}, "fisher_type"),
        ({"inverse_method": "svd"}, "inverse_method"),
        ({"step_rule": "adam"}, "step_rule"),
        ({"inverse_method": "cholesky", "damping_type": "tikhonov"}, "damping_type"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        KFAC(_mlp(31), "mse", **kwargs)


def _checkpoint_run(method: str, step_rule: str) -> None:
    x = torch.randn(24, 4, generator=seeded(32), dtype=DT)
    y = torch.randint(0, 3, (24,), generator=seeded(33))
    kw = dict(
        lr=0.2,
        factor_interval=2,
        inverse_interval=3,
        inverse_method=method,
        step_rule=step_rule,
        weight_decay=1e-3,
        seed=7,
    )
    model = _mlp(34)
    opt = KFAC(model, "ce", **kw)
    _train(model, opt, x, y, loss="ce", steps=4)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _train(model, opt, x, y, loss="ce", steps=5)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    fresh = _mlp(99)
    fresh.load_state_dict(ckpt["model"])
    fresh_opt = KFAC(fresh, "ce", **kw)
    fresh_opt.load_state_dict(ckpt["opt"])
    _train(fresh, fresh_opt, x, y, loss="ce", steps=5)
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
    assert fresh_opt.steps == opt.steps == 9


@pytest.mark.parametrize(
    ("method", "rule"), [("eigh", "fixed"), ("cholesky", "fixed"), ("cg", "qmodel")]
)
def test_state_dict_round_trip_is_bit_for_bit(method: str, rule: str) -> None:
    _checkpoint_run(method, rule)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trains_in_float32_and_float64(dtype: torch.dtype) -> None:
    model = _mlp(35, sizes=(4, 16, 3)).to(dtype)
    x = torch.randn(64, 4, generator=seeded(36)).to(dtype)
    y = torch.randint(0, 3, (64,), generator=seeded(37))
    opt = KFAC(model, "ce", lr=0.3, damping=1e-2)
    first = F.cross_entropy(model(x), y).item()
    last = _train(model, opt, x, y, loss="ce", steps=15)
    assert last < 0.6 * first
    a, s = opt.factors()["0"]
    assert a.dtype == s.dtype == dtype


def test_bfloat16_autocast_trains_with_float32_statistics() -> None:
    model = _mlp(38, sizes=(4, 16, 3)).float()
    x = torch.randn(64, 4, generator=seeded(39))
    y = torch.randint(0, 3, (64,), generator=seeded(40))
    opt = KFAC(model, "ce", lr=0.3, damping=1e-2)
    first = F.cross_entropy(model(x), y).item()
    for _ in range(15):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        # the batch sums themselves, not only their moving averages, in float32
        for b in opt._blocks.blocks.values():
            assert b._a_sum.dtype == b._s_sum.dtype == torch.float32
        opt.step()
    assert F.cross_entropy(model(x), y).item() < 0.6 * first
    for a, s in opt.factors().values():
        assert a.dtype == s.dtype == torch.float32


def test_empirical_fisher_in_optimizer_matches_compute_factors() -> None:
    """The tensor-hook path (user's backward) gives compute_factors' factors."""
    model = _mlp(41)
    x = torch.randn(12, 4, generator=seeded(42), dtype=DT)
    y = torch.randint(0, 3, (12,), generator=seeded(43))
    want = compute_factors(model, x, y, "ce", "empirical")
    opt = KFAC(model, "ce", fisher_type="empirical", factor_decay=0.0, lr=0.0)
    _train(model, opt, x, y, loss="ce")
    for key, (a, s) in opt.factors().items():
        assert rel_err(a, want[key][0]) < 1e-13
        assert rel_err(s, want[key][1]) < 1e-13


def test_eigenbases_reconstruct_the_factors() -> None:
    model = _mlp(44)
    x = torch.randn(12, 4, generator=seeded(45), dtype=DT)
    y = torch.randn(12, 3, generator=seeded(46), dtype=DT)
    opt = KFAC(model, "mse", fisher_type="type2", lr=0.0)
    _train(model, opt, x, y)
    bases, factors = opt.eigenbases(), opt.factors()
    for key, (es, us, ea, ua) in bases.items():
        a, s = factors[key]
        assert rel_err(us @ torch.diag(es) @ us.T, s) < 1e-12
        assert rel_err(ua @ torch.diag(ea) @ ua.T, a) < 1e-12
    # the output layer under MSE has B = I for every example: exact, which also
    # pins down the (S ⊗ A, row-major) layout of the factors returned
    a, s = factors["2"]
    assert rel_err(torch.kron(s, a), ggn_block(model, "2", x, "mse", "mean")) < GGN_RTOL


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_matches_cpu_and_survives_eigh_failure(monkeypatch) -> None:
    x = torch.randn(64, 4, generator=seeded(47))
    y = torch.randint(0, 3, (64,), generator=seeded(48))
    results = {}
    for device in ("cpu", "cuda"):
        model = _mlp(49, sizes=(4, 16, 3)).to(device)
        opt = KFAC(model, "ce", lr=0.2, fisher_type="type2", damping=1e-2)
        results[device] = _train(
            model, opt, x.to(device).double(), y.to(device), "ce", 10
        )
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert abs(results["cpu"] - results["cuda"]) < 1e-8
    real = torch.linalg.eigh

    def cuda_fails(m):
        if m.is_cuda:
            raise torch.linalg.LinAlgError("injected cusolver failure")
        return real(m)

    monkeypatch.setattr(torch.linalg, "eigh", cuda_fails)
    model = _mlp(50, sizes=(4, 16, 3)).float().cuda()
    opt = KFAC(model, "ce", lr=0.2, damping=1e-2)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x.cuda())
    F.cross_entropy(out.float(), y.cuda()).backward()
    opt.step()
    assert opt.counters["inverse_failures"] == 0  # float64 CPU retry
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_diverged_forward_is_survived_with_mc_sampling() -> None:
    """A NaN model output must not crash MC sampling inside the forward hook."""
    model = _mlp(51)
    x = torch.randn(8, 4, generator=seeded(52), dtype=DT)
    y = torch.randint(0, 3, (8,), generator=seeded(53))
    opt = KFAC(model, "ce", lr=0.1)
    x_bad = x.clone()
    x_bad[0, 0] = float("nan")
    opt.zero_grad()
    F.cross_entropy(model(x_bad), y).backward()
    with pytest.warns(UserWarning, match="non-finite gradient"):
        opt.step()
    assert opt.counters["nonfinite_factors"] == 1 and opt.counters["skipped_steps"] == 1
    _train(model, opt, x, y, loss="ce", steps=2)
    assert opt.steps == 2 and all(torch.isfinite(p).all() for p in model.parameters())
