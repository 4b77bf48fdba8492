"""Tests for kfac_spectra.spectra and kfac_spectra.powerlaw.

Oracles: brute-force ``np.kron``/``np.outer`` spectra on small cases, the exact
GGN diagonal blocks of a deep linear network (where K-FAC with type-2 factors is
exact), exact power laws, and the coverage of the analytic interval under the OLS
model's own assumptions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kfac_helpers import ggn_block

from kfac_spectra.models import MLP, init_parameters_
from kfac_spectra.powerlaw import CIMethod, fit_line, fit_power_law, rank_overlay
from kfac_spectra.spectra import (
    FactorSpectrum,
    eigenvalue_histogram,
    factor_eigenvalues,
    factor_spectra,
    histogram_evolution,
    kfac_eigenvalues,
    log_bins,
    spectrum_evolution,
    top_k_eigenvalues,
)

EXACT_RTOL = 1e-10
GGN_RTOL = 1e-9


def random_psd(rng: np.random.Generator, n: int, rank: int | None = None) -> np.ndarray:
    m = rng.standard_normal((n, rank or n)) * rng.uniform(0.1, 3.0, rank or n)
    return m @ m.T


def random_layers(seed: int, ties: bool = False) -> dict[str, FactorSpectrum]:
    rng = np.random.default_rng(seed)
    layers = {}
    for name, (m, n) in {"a": (4, 7), "b": (9, 3), "c": (1, 5), "d": (6, 6)}.items():
        first = rng.lognormal(0.0, 2.0, m)
        second = rng.lognormal(0.0, 2.0, n)
        if ties:  # repeated values and exact zeros
            first = np.round(first, 0)
            second = np.round(second, 0)
        layers[name] = FactorSpectrum(first, second)
    return layers


def brute_force_spectrum(layers: dict[str, FactorSpectrum]) -> np.ndarray:
    values = [np.kron(s.first, s.second) for s in layers.values()]
    return np.sort(np.concatenate(values))[::-1]


def test_factor_eigenvalues_matrix_and_diagonal() -> None:
    rng = np.random.default_rng(0)
    a = random_psd(rng, 6)
    np.testing.assert_allclose(
        factor_eigenvalues(torch.from_numpy(a)),
        np.sort(np.linalg.eigvalsh(a))[::-1],
        rtol=EXACT_RTOL,
    )
    np.testing.assert_array_equal(
        factor_eigenvalues(np.array([1.0, 3.0, 2.0])), [3, 2, 1]
    )
    low_rank = random_psd(rng, 5, rank=2)
    values = factor_eigenvalues(low_rank)
    assert values.min() == 0.0 and values.size == 5  # round-off negatives clipped
    with pytest.raises(ValueError, match="positive semi-definite"):
        factor_eigenvalues(-a)
    with pytest.raises(ValueError, match="square"):
        factor_eigenvalues(np.ones((2, 3)))


def test_factor_spectra_orders_s_first() -> None:
    rng = np.random.default_rng(1)
    a, s = random_psd(rng, 3), random_psd(rng, 2)
    spectrum = factor_spectra({"fc": (torch.from_numpy(a), torch.from_numpy(s))})["fc"]
    np.testing.assert_allclose(spectrum.first, np.linalg.eigvalsh(s)[::-1], rtol=1e-12)
    full = kfac_eigenvalues({"fc": spectrum})
    np.testing.assert_allclose(
        full, np.sort(np.linalg.eigvalsh(np.kron(s, a)))[::-1], rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 2, 5, 17, 40, 139, 500])
def test_top_k_equals_brute_force(ties: bool, k: int) -> None:
    layers = random_layers(3, ties=ties)
    expected = brute_force_spectrum(layers)[:k]
    np.testing.assert_array_equal(top_k_eigenvalues(layers, k), expected)


def test_full_spectrum_merges_layers() -> None:
    layers = random_layers(4)
    np.testing.assert_array_equal(
        kfac_eigenvalues(layers), brute_force_spectrum(layers)
    )
    with pytest.raises(ValueError, match="max_size"):
        kfac_eigenvalues(layers, max_size=10)


def test_histogram_equals_brute_force_counts() -> None:
    layers = random_layers(5, ties=False)
    layers["zeros"] = FactorSpectrum(np.array([2.0, 0.0]), np.array([1.0, 3.0]))
    values = brute_force_spectrum(layers)
    edges = log_bins(1e-2, 1e3, 23)
    hist = eigenvalue_histogram(layers, edges)
    expected = [
        np.sum((values >= lo) & (values < hi))
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    ]
    np.testing.assert_array_equal(hist.counts, expected)
    assert hist.below == np.sum(values < edges[0])
    assert hist.above == np.sum(values >= edges[-1])
    assert hist.total == values.size
    evolution = histogram_evolution([layers, random_layers(6)], edges)
    np.testing.assert_array_equal(evolution[0], hist.counts)
    with pytest.raises(ValueError, match="edges"):
        eigenvalue_histogram(layers, [1.0, 0.5])


def test_spectrum_evolution() -> None:
    base = random_layers(7)
    scaled = {
        name: FactorSpectrum(s.first * np.e, s.second) for name, s in base.items()
    }
    evolution = spectrum_evolution([0, 200], [scaled, base], k=30)
    np.testing.assert_array_equal(evolution.eigenvalues[1], top_k_eigenvalues(base, 30))
    np.testing.assert_allclose(
        evolution.eigenvalues[0], np.e * evolution.eigenvalues[1]
    )
    # every eigenvalue moved by a factor e: RMS log change 1, and 0 at the reference
    np.testing.assert_allclose(evolution.log_change(), [1.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="equal length"):
        spectrum_evolution([0], [base, base], k=3)


def reference_factors(
    model: torch.nn.Module, x: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Type-2 K-FAC factors of the summed MSE per example, from plain autograd.

    Forward hooks written here keep each linear layer's input ``a`` and output
    ``z``. The output Hessian of the squared error is ``2 I``, so its square-root
    columns are ``sqrt(2) e_k``: ``d_k = sqrt(2) dz/d(out_k)`` per example (the
    examples do not mix, so the gradient of the batch sum is the per-example one).
    ``A = E[ā āᵀ]`` with ``ā = [a; 1]`` and ``S = E[Σ_k d_k d_kᵀ]``.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [
        module.register_forward_hook(
            lambda mod, args, out, name=name: seen.__setitem__(name, (args[0], out))
        )
        for name, module in layers.items()
    ]
    try:
        out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    n = x.shape[0]
    factors = {}
    for name, (a, z) in seen.items():
        a_bar = torch.cat([a, torch.ones(n, 1, dtype=a.dtype)], dim=1).detach()
        s = torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64)
        for k in range(out.shape[1]):
            (dz,) = torch.autograd.grad(out[:, k].sum(), z, retain_graph=True)
            d = math.sqrt(2.0) * dz
            s += d.T @ d
        factors[name] = (a_bar.T @ a_bar / n, s / n)
    return factors


@pytest.mark.parametrize("activation", [False, True])
def test_deep_linear_network_kfac_spectrum_is_exact_ggn_spectrum(
    activation: bool,
) -> None:
    """For f = W3 W2 W1 x (+ biases) and MSE, each GGN diagonal block is S (x) A.

    The Jacobian of the output with respect to layer l's pre-activation,
    M_l = W_L ... W_{l+1}, does not depend on the example, so
    E[(M^T 2 M) (x) a a^T] = (2 M^T M) (x) E[a a^T] exactly. With a ReLU this
    fails for the hidden layers but still holds for the output layer (M = I).
    """
    gen = torch.Generator().manual_seed(1)
    model = MLP(4, (5, 3), 2, activation=activation).double()
    init_parameters_(model, gen)
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    factors = reference_factors(model, x)
    assert sorted(factors) == ["layers.0", "layers.1", "layers.2"]
    for name, (a, s) in factors.items():
        # the GGN of the per-example mean of the summed squared error
        ggn = ggn_block(model, name, x, "mse", "sum").detach() / len(x)
        exact_case = not activation or name == "layers.2"
        matches = torch.allclose(torch.kron(s, a), ggn, rtol=GGN_RTOL, atol=1e-12)
        assert matches == exact_case, name
        if exact_case:
            spectrum = kfac_eigenvalues(factor_spectra({name: (a, s)}))
            exact = np.sort(np.linalg.eigvalsh(ggn.numpy()))[::-1]
            np.testing.assert_allclose(spectrum, exact, rtol=1e-8, atol=1e-12)


def test_power_law_exact() -> None:
    ranks = np.arange(1, 2001)
    values = 3.5 * ranks**-1.3
    rng = np.random.default_rng(0)
    fit = fit_power_law(rng.permutation(values), rank_min=5, rank_max=1500)
    assert abs(fit.exponent - 1.3) < 1e-12 and abs(fit.prefactor - 3.5) < 1e-10
    assert fit.ci_high - fit.ci_low < 1e-9 and fit.r_squared > 1 - 1e-12
    sub = fit_power_law(values, num_points=40, method="bootstrap", rng=rng)
    assert abs(sub.exponent - 1.3) < 1e-12 and sub.num_points <= 40
    assert sub.ci_low <= 1.3 <= sub.ci_high


@pytest.mark.parametrize(
    ("method", "band"), [("analytic", (0.92, 0.98)), ("bootstrap", (0.85, 0.98))]
)
def test_line_interval_coverage(method: str, band: tuple[float, float]) -> None:
    """Under the OLS model (iid Gaussian noise) the 95% interval covers ~95%.

    With 400 trials the standard error of the coverage is 1.1%, so the analytic
    band is about +-2.7 sigma. The percentile bootstrap under-covers a little at
    n = 30, hence its lower band.
    """
    rng = np.random.default_rng(11)
    x = np.log(np.arange(1, 31, dtype=np.float64))
    trials = 400
    hits = 0
    for _ in range(trials):
        y = np.log(2.0) - 1.0 * x + 0.3 * rng.standard_normal(x.size)
        fit = fit_line(x, y, method=method, num_bootstrap=400, rng=rng)
        hits += fit.ci_low <= -1.0 <= fit.ci_high
    assert band[0] <= hits / trials <= band[1]


def test_power_law_errors() -> None:
    with pytest.raises(ValueError, match="rank window"):
        fit_power_law([3.0, 2.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="rng"):
        fit_power_law([3.0, 2.0, 1.0, 0.5], method=CIMethod.BOOTSTRAP)
    with pytest.raises(ValueError, match="confidence"):
        fit_power_law([3.0, 2.0, 1.0], confidence=1.5)


def test_rank_overlay_of_the_nqm_law_is_the_reference() -> None:
    d = 50
    values = 7.0 / np.arange(1, d + 1)
    fit = fit_power_law(values)
    overlay = rank_overlay(values[::-1], fit)
    np.testing.assert_allclose(overlay.normalized, overlay.reference, rtol=1e-14)
    np.testing.assert_allclose(overlay.reference_fit, overlay.reference, rtol=1e-10)
    assert overlay.rank_fraction[-1] == 1.0 and overlay.rank[0] == 1
