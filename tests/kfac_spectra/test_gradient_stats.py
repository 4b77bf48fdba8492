"""Tests for kfac_spectra.gradient_stats, layer_capture and eigenbasis.

Oracles (float64):

* per-example gradients from ``torch.func.vmap(grad(...))``, projected onto the
  explicit vectors ``torch.kron(u_i, w_j)`` -- for linear, conv (1-D and 2-D, with
  strides), tied-embedding Transformer and LSTM layers;
* the GGN quadratic form v^T F v from a Jacobian-vector product and the output
  Hessian, and v^T (F v) from a GGN-vector product (jvp then vjp);
* the output Hessian of the loss from ``torch.autograd.functional.hessian``;
* H = C in a well-specified linear regression at its true parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap
from torch.nn import functional as F

from kfac_spectra.eigenbasis import KroneckerBasis, basis_from_factors, kronecker_bases
from kfac_spectra.gradient_stats import (
    FisherType,
    GradientStats,
    LayerGradientStats,
    LossType,
    compare_variance_curvature,
    curvature_probes,
    eigenbasis_gradient_stats,
)
from kfac_spectra.language_models import LSTMLanguageModel, TransformerLanguageModel
from kfac_spectra.layer_capture import Block, find_blocks
from kfac_spectra.models import MLP, ResNet8, SimpleCNN, init_parameters_

STAT_RTOL = 1e-9
STAT_ATOL = 1e-12
GGN_RTOL = 1e-8


def random_bases(
    blocks: dict[str, Block], gen: torch.Generator
) -> dict[str, KroneckerBasis]:
    """Generic orthonormal bases (distinct eigenvalues) of the right sizes."""

    def psd(n: int) -> torch.Tensor:
        m = torch.randn(n, n, generator=gen, dtype=torch.float64)
        return m @ m.T + 0.1 * torch.eye(n, dtype=torch.float64)

    return {
        name: basis_from_factors(psd(b.shape[0]), psd(b.shape[1]))
        for name, b in blocks.items()
    }


Case = tuple[nn.Module, torch.Tensor, torch.Tensor, LossType]


def make_case(name: str) -> Case:
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    n = 5
    if name == "mlp_ce":
        model, x = MLP(5, (4,), 3), torch.randn(n, 5, generator=gen)
        y = torch.randint(0, 3, (n,), generator=gen)
    elif name == "mlp_mse":
        model, x = MLP(5, (4,), 3), torch.randn(n, 5, generator=gen)
        y = torch.randn(n, 3, generator=gen)
    elif name == "cnn1d":
        model = SimpleCNN(1, (8,), 3, channels=(2, 3), hidden=4)
        x, y = (
            torch.randn(n, 1, 8, generator=gen),
            torch.randint(0, 3, (n,), generator=gen),
        )
    elif name == "cnn2d":
        model = SimpleCNN(2, (4, 4), 3, channels=(2, 2), hidden=3)
        x = torch.randn(n, 2, 4, 4, generator=gen)
        y = torch.randint(0, 3, (n,), generator=gen)
    elif name == "resnet8_1d":
        model = ResNet8(1, 1, 3, base_channels=2)
        x, y = (
            torch.randn(n, 1, 8, generator=gen),
            torch.randint(0, 3, (n,), generator=gen),
        )
    elif name == "transformer_tied":
        model = TransformerLanguageModel(
            7, d_model=8, num_heads=2, d_ff=6, num_layers=1
        )
        x = torch.randint(0, 7, (n, 4), generator=gen)
        y = torch.randint(0, 7, (n, 4), generator=gen)
    elif name == "lstm":
        model = LSTMLanguageModel(6, embed_dim=3, hidden=4, num_layers=1)
        x = torch.randint(0, 6, (n, 3), generator=gen)
        y = torch.randint(0, 6, (n, 3), generator=gen)
    elif name == "lstm_tied":
        model = LSTMLanguageModel(
            6, embed_dim=4, hidden=4, num_layers=1, tie_weights=True
        )
        x = torch.randint(0, 6, (n, 3), generator=gen)
        y = torch.randint(0, 6, (n, 3), generator=gen)
    else:
        raise AssertionError(name)
    model = model.double()
    init_parameters_(model, gen)
    if x.is_floating_point():
        x = x.double()
    if y.is_floating_point():
        y = y.double()
    return model, x, y, LossType.MSE if name == "mlp_mse" else LossType.CE


ALL_CASES = [
    "mlp_ce",
    "mlp_mse",
    "cnn1d",
    "cnn2d",
    "resnet8_1d",
    "transformer_tied",
    "lstm",
    "lstm_tied",
]


def example_loss(out: torch.Tensor, y: torch.Tensor, loss: LossType) -> torch.Tensor:
    """Per-example loss, summed over output positions (unit-scale terms)."""
    if loss is LossType.MSE:
        return ((out - y) ** 2).sum()
    return F.cross_entropy(
        out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="sum"
    )


def per_example_block_gradients(
    model: nn.Module,
    x: torch.Tensor,
    per_example: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """(N, r, c) block gradient matrices of fn(f(x_n), per_example_n) by vmap(grad)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def single(p: dict, xn: torch.Tensor, en: torch.Tensor) -> torch.Tensor:
        return fn(functional_call(model, p, (xn[None],))[0], en)

    grads = vmap(grad(single), in_dims=(None, 0, 0))(params, x, per_example)
    names = {id(p): k for k, p in model.named_parameters()}
    out = {}
    for key, block in find_blocks(model).items():
        gw = grads[names[id(block.weight)]]
        gb = None if block.bias is None else grads[names[id(block.bias)]]
        out[key] = block.gradient_matrix(gw, gb)
    return out


def project(matrices: torch.Tensor, basis: KroneckerBasis) -> torch.Tensor:
    """(N, r*c) coordinates on the explicit vectors kron(u_i, w_j)."""
    explicit = torch.kron(basis.row_vectors, basis.col_vectors)
    return matrices.reshape(matrices.shape[0], -1) @ explicit


@pytest.mark.parametrize("case", ALL_CASES)
def test_projected_statistics_equal_brute_force(case: str) -> None:
    model, x, y, loss = make_case(case)
    gen = torch.Generator().manual_seed(7)
    blocks = find_blocks(model)
    bases = random_bases(blocks, gen)
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    stats = eigenbasis_gradient_stats(
        model, batches, bases, loss=loss, fisher_type=FisherType.EMPIRICAL
    )
    brute = per_example_block_gradients(
        model, x, y, lambda out, yn: example_loss(out, yn, loss)
    )
    assert set(stats.layers) == set(blocks)
    for key, basis in bases.items():
        z = project(brute[key], basis)
        shape = basis.shape
        got = stats.layers[key]
        tol = {"rtol": STAT_RTOL, "atol": STAT_ATOL}
        np.testing.assert_allclose(got.mean, z.mean(0).reshape(shape), **tol)
        np.testing.assert_allclose(
            got.second_moment, (z**2).mean(0).reshape(shape), **tol
        )
        np.testing.assert_allclose(got.variance, z.var(0).reshape(shape), **tol)
        # the empirical Fisher's curvature is the second moment
        np.testing.assert_allclose(got.curvature, got.second_moment, **tol)
        assert got.num_examples == len(x)


def test_capture_keys_and_weight_sharing() -> None:
    model, *_ = make_case("transformer_tied")
    blocks = find_blocks(model)
    assert "decoder" not in blocks and blocks["embedding"].modules == [
        model.embedding,
        model.decoder,
    ]
    assert blocks["embedding"].shape == (7, 8)
    lstm, x, _, _ = make_case("lstm")
    lstm_blocks = find_blocks(lstm)
    assert lstm_blocks["layers.0.gates"].shape == (16, 3 + 4 + 1)
    from kfac_spectra.layer_capture import PerExampleCapture

    capture = PerExampleCapture(lstm, lstm_blocks)
    with capture.recording():
        lstm(x)
    assert len(lstm_blocks["layers.0.gates"].uses) == x.shape[1]  # one per step


def direction_tangents(
    model: nn.Module, block: Block, direction: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Parameter tangent equal to ``direction`` (r, c) on the block, 0 elsewhere."""
    names = {id(p): k for k, p in model.named_parameters()}
    tangents = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    w_cols = block.shape[1] - (block.bias is not None)
    tangents[names[id(block.weight)]] = direction[:, :w_cols].reshape(
        block.weight.shape
    )
    if block.bias is not None:
        tangents[names[id(block.bias)]] = direction[:, -1].clone()
    return tangents


def output_hessian_times(
    out: torch.Tensor, u: torch.Tensor, loss: LossType
) -> torch.Tensor:
    """H_l u per output position: 2u (MSE) or p*u - p (p.u) (CE)."""
    if loss is LossType.MSE:
        return 2.0 * u
    p = torch.softmax(out, dim=-1)
    return p * u - p * (p * u).sum(-1, keepdim=True)


@pytest.mark.parametrize("case", ALL_CASES)
def test_type2_curvature_equals_ggn_vector_products(case: str) -> None:
    model, x, y, loss = make_case(case)
    gen = torch.Generator().manual_seed(3)
    blocks = find_blocks(model)
    bases = random_bases(blocks, gen)
    stats = eigenbasis_gradient_stats(model, [(x, y)], bases, loss=loss)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p: dict) -> torch.Tensor:
        return functional_call(model, p, (x,))

    out = f(params)
    _, pullback = vjp(f, params)
    for key, basis in bases.items():
        r, c = basis.shape
        picks = {(0, 0), (r - 1, c - 1)}
        picks |= {
            (int(i), int(j))
            for i, j in zip(
                torch.randint(0, r, (4,), generator=gen),
                torch.randint(0, c, (4,), generator=gen),
                strict=True,
            )
        }
        for i, j in sorted(picks):
            tangent = direction_tangents(model, blocks[key], basis.direction(i, j))
            _, jv = jvp(f, (params,), (tangent,))
            hjv = output_hessian_times(out, jv, loss)
            quadratic = (jv * hjv).sum().item() / len(x)
            (fv,) = pullback(hjv)
            product = sum((tangent[k] * fv[k]).sum() for k in fv).item() / len(x)
            expected = stats.layers[key].curvature[i, j]
            assert expected == pytest.approx(quadratic, rel=GGN_RTOL, abs=1e-13)
            assert expected == pytest.approx(product, rel=GGN_RTOL, abs=1e-13)


@pytest.mark.parametrize("case", ["mlp_ce", "mlp_mse", "transformer_tied"])
def test_mc_curvature_equals_brute_force_on_the_same_samples(case: str) -> None:
    model, x, y, loss = make_case(case)
    blocks = find_blocks(model)
    bases = random_bases(blocks, torch.Generator().manual_seed(5))
    stats = eigenbasis_gradient_stats(
        model,
        [(x, y)],
        bases,
        loss=loss,
        fisher_type="mc",
        mc_samples=3,
        generator=torch.Generator().manual_seed(9),
    )
    with torch.no_grad():
        out = model(x)
    probes = list(
        curvature_probes(
            out, y, loss, "mc", mc_samples=3, generator=torch.Generator().manual_seed(9)
        )
    )
    assert len(probes) == 3
    total = {key: 0.0 for key in bases}
    for q in probes:
        brute = per_example_block_gradients(model, x, q, lambda o, qn: (o * qn).sum())
        for key, basis in bases.items():
            total[key] = total[key] + (project(brute[key], basis) ** 2).mean(0)
    for key, basis in bases.items():
        np.testing.assert_allclose(
            stats.layers[key].curvature,
            total[key].reshape(basis.shape),
            rtol=STAT_RTOL,
            atol=STAT_ATOL,
        )


@pytest.mark.parametrize("loss", [LossType.CE, LossType.MSE])
def test_type2_probes_square_to_the_output_hessian(loss: LossType) -> None:
    gen = torch.Generator().manual_seed(2)
    out = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    y = (
        torch.randint(0, 4, (3, 2), generator=gen)
        if loss is LossType.CE
        else torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    )
    probes = torch.stack(list(curvature_probes(out, y, loss, "type2")))
    assert probes.shape[0] == 2 * 4  # one per (position, class)
    for n in range(3):
        hess = torch.autograd.functional.hessian(
            lambda f, n=n: example_loss(f, y[n], loss), out[n]
        ).reshape(8, 8)
        q = probes[:, n].reshape(len(probes), 8)
        torch.testing.assert_close(q.T @ q, hess, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss", [LossType.CE, LossType.MSE])
def test_mc_probes_are_unbiased(loss: LossType) -> None:
    """The mean of q q^T over sampled targets is the output Hessian (5 sigma)."""
    gen = torch.Generator().manual_seed(4)
    out = torch.randn(1, 3, generator=gen, dtype=torch.float64)
    y = torch.zeros(1, dtype=torch.long) if loss is LossType.CE else out.clone()
    samples = 20_000
    q = torch.stack(
        list(curvature_probes(out, y, loss, "mc", mc_samples=samples, generator=gen))
    )
    outer = torch.einsum("si,sj->sij", q[:, 0], q[:, 0]) * samples
    mean, se = outer.mean(0), outer.std(0) / samples**0.5
    hess = torch.autograd.functional.hessian(
        lambda f: example_loss(f, y[0], loss), out[0]
    )
    assert torch.all((mean - hess).abs() <= 5 * se + 1e-12)


def test_chunking_does_not_change_results() -> None:
    model, x, y, loss = make_case("cnn2d")
    bases = random_bases(find_blocks(model), torch.Generator().manual_seed(1))
    a = eigenbasis_gradient_stats(model, [(x, y)], bases, loss=loss)
    b = eigenbasis_gradient_stats(
        model, [(x, y)], bases, loss=loss, max_chunk_elements=1
    )
    for key in bases:
        np.testing.assert_allclose(
            a.layers[key].curvature, b.layers[key].curvature, rtol=1e-12
        )
        np.testing.assert_allclose(
            a.layers[key].variance, b.layers[key].variance, rtol=1e-12
        )


def test_h_equals_c_for_well_specified_regression() -> None:
    """At the true parameters of y = W x + b + noise (variance 1/2 per output),
    g_n = -2 xi_n [x_n; 1]^T, so Var(v^T g) -> 2 w^T A w = v^T F v for every
    direction v = u (x) w: the NQM's H = C holds up to sampling error (N = 4000;
    the relative standard error of each variance is about 6% / sqrt(2))."""
    gen = torch.Generator().manual_seed(0)
    model = MLP(3, (), 2).double()
    init_parameters_(model, gen)
    x = torch.randn(4000, 3, generator=gen, dtype=torch.float64) * torch.tensor(
        [0.5, 1.0, 2.0], dtype=torch.float64
    )
    with torch.no_grad():
        y = (
            model(x)
            + torch.randn(4000, 2, generator=gen, dtype=torch.float64) * 0.5**0.5
        )
    blocks = find_blocks(model)
    a = torch.cat([x, torch.ones(4000, 1, dtype=torch.float64)], 1)
    factors = {"layers.0": (a.T @ a / 4000, 2.0 * torch.eye(2, dtype=torch.float64))}
    bases = kronecker_bases(factors, blocks)
    stats = eigenbasis_gradient_stats(
        model,
        [(x[i : i + 1000], y[i : i + 1000]) for i in range(0, 4000, 1000)],
        bases,
        loss="mse",
    )
    layer = stats.layers["layers.0"]
    # type-2 curvature of a linear model is exactly the K-FAC eigenvalue
    np.testing.assert_allclose(layer.curvature, layer.kfac_eigenvalues, rtol=1e-10)
    ratio = layer.variance / layer.curvature
    assert np.all(np.abs(ratio - 1.0) < 0.2)
    comparison = compare_variance_curvature(stats)["overall"]
    assert comparison.fraction_within == 1.0
    assert abs(comparison.log_slope - 1.0) < 0.1


def synthetic_stats(h: np.ndarray, c: np.ndarray) -> GradientStats:
    layer = LayerGradientStats("l", h * 0, c + h * 0, c, h, h, 10)
    return GradientStats({"l": layer}, LossType.CE, FisherType.TYPE2, 10)


def test_compare_variance_curvature_known_relations() -> None:
    rng = np.random.default_rng(0)
    h = np.exp(rng.uniform(-5, 5, 200))
    triple = compare_variance_curvature(synthetic_stats(h, 3.0 * h))
    for key in ("l", "overall"):
        comp = triple[key]
        assert comp.log_slope == pytest.approx(1.0, abs=1e-12)
        assert comp.log_intercept == pytest.approx(np.log(3.0), abs=1e-12)
        assert comp.log_correlation == pytest.approx(1.0, abs=1e-12)
        assert comp.fraction_within == 0.0 and comp.num_excluded == 0
    jitter = np.exp(rng.uniform(-np.log(1.9), np.log(1.9), 200))
    near = compare_variance_curvature(synthetic_stats(h, h * jitter))["l"]
    assert near.fraction_within == 1.0
    half = np.where(np.arange(200) < 50, 2.5, 1.0)
    quarter = compare_variance_curvature(synthetic_stats(h, h * half))["l"]
    assert quarter.fraction_within == pytest.approx(0.75)
    zeros = h.copy()
    zeros[:7] = 0.0
    dropped = compare_variance_curvature(synthetic_stats(zeros, h))["l"]
    assert dropped.num_excluded == 7 and dropped.curvature.size == 193
    with pytest.raises(ValueError, match="factor"):
        compare_variance_curvature(synthetic_stats(h, h), factor=1.0)


def test_kronecker_bases_orientation() -> None:
    model, *_ = make_case("transformer_tied")
    blocks = find_blocks(model)
    gen = torch.Generator().manual_seed(0)
    s_ff = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a_ff = torch.randn(9, 9, generator=gen, dtype=torch.float64)
    s_ff, a_ff = s_ff @ s_ff.T, a_ff @ a_ff.T
    a_emb = torch.rand(7, generator=gen, dtype=torch.float64)  # diagonal, V side
    s_emb = torch.eye(8, dtype=torch.float64) * 2.0
    bases = kronecker_bases(
        {"blocks.0.ff1": (a_ff, s_ff), "embedding": (a_emb, s_emb)}, blocks
    )
    ff = bases["blocks.0.ff1"]
    rebuilt = torch.kron(
        ff.row_vectors @ torch.diag(ff.row_values) @ ff.row_vectors.T,
        ff.col_vectors @ torch.diag(ff.col_values) @ ff.col_vectors.T,
    )
    torch.testing.assert_close(rebuilt, torch.kron(s_ff, a_ff))
    emb = bases["embedding"]
    assert emb.shape == (7, 8)
    torch.testing.assert_close(
        emb.row_values, torch.sort(a_emb, descending=True).values
    )
    with pytest.raises(ValueError, match="not a block"):
        kronecker_bases({"decoder": (a_ff, s_ff)}, blocks)
    with pytest.raises(ValueError, match="factor sizes"):
        kronecker_bases({"blocks.0.ff1": (s_ff, a_ff)}, blocks)


@pytest.mark.parametrize(
    "positions, channels_first", [(1, False), (3, False), (3, True)]
)
def test_accumulator_equals_brute_force_with_a_dominant_mean(
    positions: int, channels_first: bool
) -> None:
    """The sums about a shift, over several batches, against per-example matrices
    summed in float64 by NumPy. The mean is 1e4 times the spread, so
    E[Z^2] - E[Z]^2 loses eight digits (relative error 6e-8 here). The chunked
    path (several positions) centres every Z_n and keeps the variance to 1e-10;
    the one-position path forms sum Z^2 by one GEMM and then subtracts
    K (2 sum Z - n K), which leaves eps (mean / spread)^2 = 2e-8 of it. With
    ``channels_first`` the projected inputs are, as for a convolution, the
    transposed view of an (N, c, P) tensor."""
    from kfac_spectra.gradient_stats import _Accumulator

    gen = torch.Generator().manual_seed(5)
    n, r, c = 23, 4, 3
    rho = 100.0 + 1e-2 * torch.randn(n, positions, r, generator=gen).double()
    kappa = 100.0 + 1e-2 * torch.randn(n, positions, c, generator=gen).double()
    if channels_first:
        kappa = kappa.transpose(1, 2).contiguous().transpose(1, 2)
    probe = torch.randn(n, positions, r, generator=gen).double()
    acc = _Accumulator((r, c), torch.float64, torch.device("cpu"))
    for rows in (slice(0, 9), slice(9, 10), slice(10, n)):
        if positions == 1:
            acc.add_one_position(rho[rows], kappa[rows])
        else:
            acc.add_chunks(rho[rows], kappa[rows], chunk=2)
        acc.add_curvature(probe[rows], kappa[rows], chunk=2)
    mean, second, variance, curvature = (t.numpy() for t in acc.statistics(n))
    z = np.einsum("npr,npc->nrc", rho.numpy(), kappa.numpy())
    zp = np.einsum("npr,npc->nrc", probe.numpy(), kappa.numpy())
    np.testing.assert_allclose(mean, z.mean(0), rtol=1e-14)
    np.testing.assert_allclose(second, (z**2).mean(0), rtol=1e-14)
    variance_rtol = 1e-7 if positions == 1 else 1e-10
    np.testing.assert_allclose(variance, z.var(0, ddof=1), rtol=variance_rtol)
    np.testing.assert_allclose(curvature, (zp**2).mean(0), rtol=1e-13)


def test_input_validation() -> None:
    model, x, y, loss = make_case("mlp_ce")
    blocks = find_blocks(model)
    bases = random_bases(blocks, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="not a block"):
        eigenbasis_gradient_stats(
            model, [(x, y)], {"nope": bases["layers.0"]}, loss=loss
        )
    with pytest.raises(ValueError, match="shape"):
        eigenbasis_gradient_stats(
            model, [(x, y)], {"layers.0": bases["layers.1"]}, loss=loss
        )
    with pytest.raises(ValueError, match="at least 2"):
        eigenbasis_gradient_stats(model, [(x[:1], y[:1])], bases, loss=loss)
    with pytest.raises(ValueError):
        eigenbasis_gradient_stats(model, [(x, y)], bases, loss="hinge")
    tied_bias = nn.ModuleDict({"e": nn.Embedding(4, 3), "d": nn.Linear(3, 4)})
    tied_bias["d"].weight = tied_bias["e"].weight
    with pytest.raises(ValueError, match="no bias"):
        find_blocks(tied_bias)
    half_bias = nn.ModuleDict({"a": nn.Linear(3, 3), "b": nn.Linear(3, 3, bias=False)})
    half_bias["b"].weight = half_bias["a"].weight
    with pytest.raises(ValueError, match="not its bias"):
        find_blocks(half_bias)
    shared = nn.ModuleDict({"a": nn.Linear(3, 3), "b": nn.Linear(3, 3)})
    shared["b"].weight, shared["b"].bias = shared["a"].weight, shared["a"].bias
    assert list(find_blocks(shared)) == ["a"]


@pytest.mark.filterwarnings("ignore:K-FAC. no curvature block:UserWarning")
@pytest.mark.parametrize("case", ["mlp_mse", "cnn1d", "transformer_tied", "lstm"])
def test_bases_from_compute_factors(case: str) -> None:
    """The K-FAC code's factors fit our blocks (keys, sizes, orientation).

    With ``reduction="sum"`` S (x) A approximates the summed-loss GGN, i.e. N times
    our per-example F. For the output layer of an MSE model it is exact, so the
    measured curvature along each eigen-direction is the K-FAC eigenvalue / N.
    """
    from kfac_spectra import compute_factors

    model, x, y, loss = make_case(case)
    factors = compute_factors(model, x, y, loss, "type2", reduction="sum")
    blocks = find_blocks(model)
    bases = kronecker_bases(factors, blocks)
    assert set(bases) == set(blocks)
    stats = eigenbasis_gradient_stats(model, [(x, y)], bases, loss=loss)
    if case == "mlp_mse":
        last = stats.layers["layers.1"]
        np.testing.assert_allclose(
            last.curvature, last.kfac_eigenvalues / len(x), rtol=1e-9, atol=1e-13
        )
        hidden = stats.layers["layers.0"]
        assert not np.allclose(hidden.curvature, hidden.kfac_eigenvalues / len(x))


@pytest.mark.filterwarnings("ignore:K-FAC. no curvature block:UserWarning")
@pytest.mark.parametrize("case", ["mlp_ce", "transformer_tied"])
def test_bases_from_kfac_optimizer_eigenbases(case: str) -> None:
    from kfac_spectra import KFAC
    from kfac_spectra.eigenbasis import bases_from_eigendecompositions
    from kfac_spectra.spectra import factor_spectra_from_eigenvalues, kfac_eigenvalues

    model, x, y, loss = make_case(case)
    opt = KFAC(model, loss, fisher_type="type2", inverse_interval=1, lr=0.0)
    out = model(x)
    F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)).backward()
    opt.step()
    eigs = opt.eigenbases()
    opt.remove_hooks()
    blocks = find_blocks(model)
    bases = bases_from_eigendecompositions(eigs, blocks)
    assert set(bases) == set(blocks)
    for key, basis in bases.items():
        assert torch.all(basis.row_values[:-1] >= basis.row_values[1:])
        eye_r = torch.eye(basis.shape[0], dtype=torch.float64)
        torch.testing.assert_close(basis.row_vectors.T @ basis.row_vectors, eye_r)
        spectrum = kfac_eigenvalues(factor_spectra_from_eigenvalues({key: eigs[key]}))
        # factor spectra clip round-off negatives to 0; the basis keeps them
        np.testing.assert_allclose(
            np.sort(basis.kronecker_eigenvalues().numpy().ravel())[::-1],
            spectrum,
            rtol=1e-12,
            atol=1e-12 * spectrum[0],
        )
    stats = eigenbasis_gradient_stats(model, [(x, y)], bases, loss=loss)
    assert all(np.all(s.curvature >= 0) for s in stats.layers.values())


def test_save_and_load_bases_and_stats(tmp_path) -> None:
    from kfac_spectra.eigenbasis import bases_from_state, bases_to_state

    model, x, y, loss = make_case("cnn1d")
    blocks = find_blocks(model)
    bases = random_bases(blocks, torch.Generator().manual_seed(2))
    torch.save(bases_to_state(bases), tmp_path / "bases.pt")
    loaded = bases_from_state(torch.load(tmp_path / "bases.pt", weights_only=True))
    stats = eigenbasis_gradient_stats(model, [(x, y)], bases, loss=loss)
    again = eigenbasis_gradient_stats(model, [(x, y)], loaded, loss=loss)
    np.savez(tmp_path / "stats.npz", **again.to_arrays())
    with np.load(tmp_path / "stats.npz") as archive:
        restored = GradientStats.from_arrays(dict(archive))
    assert restored.loss == loss and restored.fisher_type == FisherType.TYPE2
    assert restored.num_examples == len(x) and set(restored.layers) == set(blocks)
    for key in blocks:
        for field in ("mean", "variance", "curvature", "kfac_eigenvalues"):
            np.testing.assert_array_equal(
                getattr(restored.layers[key], field), getattr(stats.layers[key], field)
            )
    with pytest.raises(ValueError, match="lacks"):
        bases_from_state({"conv1": {"row_values": torch.ones(2)}})
    with pytest.raises(ValueError, match="metadata"):
        GradientStats.from_arrays({"conv1/mean": np.zeros(2)})
