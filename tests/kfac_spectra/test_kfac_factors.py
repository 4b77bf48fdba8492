"""compute_factors: exactness against the dense GGN, reduction scaling, empirical
Fisher, MC convergence, and the conv / weight-sharing variants."""

from __future__ import annotations

import math

import pytest
import torch
from kfac_helpers import (
    GGN_RTOL,
    ggn_block,
    layer_matrix_jacobian,
    randomise,
    rel_err,
    seeded,
)
from torch import Tensor, nn

from kfac_spectra.kfac import FisherType, LossType, compute_factors

DT = torch.float64


class PerPosition(nn.Module):
    """Applies a stack of layers to (N, T, d) and optionally averages over T."""

    def __init__(self, layers: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = layers
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        z = self.layers(x)
        if self.head is None:
            return z
        return self.head(z.mean(dim=1))


class ChannelsLast(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.movedim(1, -1)


class GlobalMean(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).mean(dim=2)


def _assert_exact(model, x, loss, reduction, approx="expand", names=None) -> None:
    factors = compute_factors(
        model, x, None, loss, "type2", reduction=reduction, kfac_approx=approx
    )
    names = names or list(factors)
    assert names
    for name in names:
        a, s = factors[name]
        exact = ggn_block(model, name, x, loss, reduction)
        assert rel_err(torch.kron(s, a), exact) < GGN_RTOL, name


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_type2_exact_for_deep_linear_mse(reduction: str) -> None:
    """Deep linear + MSE: the output-to-layer map B_l is the same for every example
    and H is constant, so G_l = 2c B_lᵀB_l ⊗ Σ ā āᵀ = S ⊗ A for any N."""
    model = randomise(
        nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3), nn.Linear(3, 2)), 1
    ).double()
    x = torch.randn(7, 4, generator=seeded(2), dtype=DT)
    _assert_exact(model, x, "mse", reduction, names=["0", "1", "2"])


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_type2_exact_for_one_example_nonlinear(loss: str) -> None:
    """One example, no weight sharing: G_l = Jᵀ H J is a single Kronecker product."""
    model = randomise(
        nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)), 3
    ).double()
    x = torch.randn(1, 4, generator=seeded(4), dtype=DT)
    _assert_exact(model, x, loss, "mean", names=["0", "2"])


def test_type2_not_exact_for_nonlinear_batch() -> None:
    """Sanity: with several examples and a nonlinearity K-FAC is an approximation."""
    model = randomise(
        nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)), 3
    ).double()
    x = torch.randn(6, 4, generator=seeded(4), dtype=DT)
    a, s = compute_factors(model, x, None, "ce", "type2")["0"]
    assert rel_err(torch.kron(s, a), ggn_block(model, "0", x, "ce", "mean")) > 1e-3


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_expand_exact_in_expand_setting(reduction: str) -> None:
    """Deep linear net applied per sequence position, loss over positions."""
    model = randomise(
        PerPosition(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))), 5
    ).double()
    x = torch.randn(3, 5, 3, generator=seeded(6), dtype=DT)
    _assert_exact(model, x, "mse", reduction, "expand", ["layers.0", "layers.1"])


def test_reduce_exact_in_reduce_setting() -> None:
    """Deep linear layers per position, sequence averaged before the last layer."""
    model = PerPosition(
        nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4)), nn.Linear(4, 2)
    )
    model = randomise(model, 7).double()
    x = torch.randn(3, 5, 3, generator=seeded(8), dtype=DT)
    _assert_exact(model, x, "mse", "sum", "reduce", ["layers.0", "layers.1", "head"])


def test_expand_not_exact_in_reduce_setting() -> None:
    """The flavours are not interchangeable (Eschenhagen et al. 2023, §3)."""
    model = PerPosition(nn.Sequential(nn.Linear(3, 4)), nn.Linear(4, 2))
    model = randomise(model, 7).double()
    x = torch.randn(3, 5, 3, generator=seeded(8), dtype=DT)
    a, s = compute_factors(model, x, None, "mse", "type2", kfac_approx="expand")[
        "layers.0"
    ]
    exact = ggn_block(model, "layers.0", x, "mse", "mean")
    assert rel_err(torch.kron(s, a), exact) > 1e-3


@pytest.mark.parametrize("conv", ["1d", "2d"])
def test_conv_expand_exact_for_per_location_loss(conv: str) -> None:
    """KFC is exact for linear convs whose output locations are separate loss terms
    (a 3-wide conv then a 1x1 conv: no mixing of locations after the first)."""
    if conv == "1d":
        layers = [nn.Conv1d(2, 3, 3, padding=1), nn.Conv1d(3, 2, 1)]
        x = torch.randn(3, 2, 6, generator=seeded(9), dtype=DT)
    else:
        layers = [nn.Conv2d(2, 3, 3, padding="same"), nn.Conv2d(3, 2, 1)]
        x = torch.randn(2, 2, 4, 5, generator=seeded(9), dtype=DT)
    model = randomise(nn.Sequential(*layers, ChannelsLast()), 10).double()
    _assert_exact(model, x, "mse", "mean", "expand", ["0", "1"])


def test_conv_reduce_exact_with_global_pooling() -> None:
    """Linear conv, global mean pooling, linear head: reduce is exact."""
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1), GlobalMean(), nn.Linear(3, 2)
    )
    model = randomise(model, 11).double()
    x = torch.randn(3, 2, 5, 5, generator=seeded(12), dtype=DT)
    _assert_exact(model, x, "mse", "mean", "reduce", ["0", "2"])


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_reduction_scaling(loss: str) -> None:
    """A is a mean over rows either way; S(mean) = c · S(sum) with c = 1/M (CE) or
    1/numel (MSE), so S ⊗ A is the curvature of the loss as reduced."""
    model = randomise(
        nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)), 13
    ).double()
    x = torch.randn(6, 2, 4, generator=seeded(14), dtype=DT)
    f_mean = compute_factors(model, x, None, loss, "type2", reduction="mean")
    f_sum = compute_factors(model, x, None, loss, "type2", reduction="sum")
    c = 1 / 12 if loss == "ce" else 1 / 36
    for name in ("0", "2"):
        assert rel_err(f_mean[name][0], f_sum[name][0]) < 1e-14
        assert rel_err(f_mean[name][1], c * f_sum[name][1]) < 1e-13


def test_empirical_fisher_single_example_is_gradient_outer_product() -> None:
    """One example: S ⊗ A = vec(∇W̄) vec(∇W̄)ᵀ for the loss as reduced (sum)."""
    model = randomise(
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)), 15
    ).double()
    x = torch.randn(1, 3, generator=seeded(16), dtype=DT)
    y = torch.tensor([2])
    factors = compute_factors(model, x, y, "ce", "empirical", reduction="sum")
    loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for name, (gw, gb) in {"0": grads[:2], "2": grads[2:]}.items():
        vec = torch.cat([gw, gb[:, None]], dim=1).reshape(-1)
        a, s = factors[name]
        assert rel_err(torch.kron(s, a), torch.outer(vec, vec)) < GGN_RTOL


def test_empirical_mse_mean_matches_per_example_gradients() -> None:
    """Empirical Fisher of a linear layer = (1/c) Σ_n per-example grads of L."""
    model = randomise(nn.Linear(3, 2), 17).double()
    x = torch.randn(5, 3, generator=seeded(18), dtype=DT)
    y = torch.randn(5, 2, generator=seeded(19), dtype=DT)
    a, s = compute_factors(model, x, y, "mse", "empirical")[""]
    # For one linear layer the per-row factorisation is exact only row-wise, so
    # compare the factor S with per-example output gradients directly.
    c = 1 / 10
    g = 2 * c * (model(x) - y)  # dL/df_n
    assert rel_err(s, (g.T @ g) / c) < 1e-13
    xb = torch.cat([x, torch.ones(5, 1, dtype=DT)], 1)
    assert rel_err(a, xb.T @ xb / 5) < 1e-14


def test_mc_converges_to_type2() -> None:
    """MC S → type-2 S. The CE label distribution is finite, so the per-sample
    variance V = E||X − EX||²_F is enumerated exactly; the K-sample mean has
    E||err||² = V/K and Chebyshev gives P(||err|| > sqrt(V/(Kδ))) ≤ δ = 1e-3."""
    model = randomise(
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)), 20
    ).double()
    x = torch.randn(3, 3, generator=seeded(21), dtype=DT)
    exact = compute_factors(model, x, None, "ce", "type2")
    # enumerate: per example n and class y, the single-sample S contribution
    var: dict[str, float] = {"0": 0.0, "2": 0.0}
    probs = torch.softmax(model(x), -1).detach()
    for n in range(3):
        xs = x[n : n + 1]
        outs = {k: [] for k in var}
        for cls in range(3):
            f = compute_factors(model, xs, torch.tensor([cls]), "ce", "empirical")
            for k in var:  # scale: mean over 3 examples → per-example S / 3
                outs[k].append(f[k][1] / 3)
        for k in var:
            mean = sum(probs[n, c] * outs[k][c] for c in range(3))
            second = sum(probs[n, c] * outs[k][c].pow(2).sum() for c in range(3))
            var[k] += float(second - mean.pow(2).sum())
    delta = 1e-3
    errs = {}
    for samples in (16, 4096):
        mc = compute_factors(
            model, x, None, "ce", "mc", mc_samples=samples, generator=seeded(22)
        )
        for k in var:
            err = float((mc[k][1] - exact[k][1]).norm())
            assert err <= math.sqrt(var[k] / (samples * delta)), (k, samples)
            errs[(k, samples)] = err
            assert rel_err(mc[k][0], exact[k][0]) < 1e-14  # A is not sampled
    for k in var:
        assert errs[(k, 4096)] < errs[(k, 16)]


def test_enum_and_string_options_are_equivalent() -> None:
    model = randomise(nn.Linear(3, 2), 23).double()
    x = torch.randn(4, 3, generator=seeded(24), dtype=DT)
    f1 = compute_factors(model, x, None, "ce", "type2")
    f2 = compute_factors(model, x, None, LossType.CE, FisherType.TYPE2)
    assert torch.equal(f1[""][1], f2[""][1])


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"loss": "hinge"}, "loss"),
        ({"fisher_type": "exact"}, "fisher_type"),
        ({"reduction": "none"}, "reduction"),
        ({"kfac_approx": "both"}, "kfac_approx"),
        ({"mc_samples": 0}, "mc_samples"),
    ],
)
def test_invalid_options_raise(kwargs: dict, param: str) -> None:
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3, generator=seeded(25))
    base = {"loss": "ce", "fisher_type": "mc"}
    base.update(kwargs)
    with pytest.raises(ValueError, match=param):
        compute_factors(model, x, None, **base)


def test_unsupported_layers_warn_once_listing_them() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    x = torch.randn(4, 3, generator=seeded(26))
    with pytest.warns(UserWarning, match=r"modules with trainable parameters.*: 1$"):
        out = compute_factors(model, x, None, "ce", "type2")
    assert set(out) == {"0", "2"}


def test_jacobian_helper_layout() -> None:
    """Oracle layout check: J · vec([W|b]) reproduces the linear output."""
    model = randomise(nn.Linear(3, 2), 27).double()
    x = torch.randn(4, 3, generator=seeded(28), dtype=DT)
    j = layer_matrix_jacobian(model, "", x)
    theta = torch.cat([model.weight, model.bias[:, None]], 1).reshape(-1)
    assert rel_err(j @ theta, model(x).reshape(-1)) < 1e-14
