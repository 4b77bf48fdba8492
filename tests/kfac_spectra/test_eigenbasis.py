"""Tests for the float64 eigendecompositions of kfac_spectra.eigenbasis.

Oracles (float64): matrices built as :math:`Q \\Lambda Q^\\top` with a known
spectrum (so the eigenvalues are known exactly up to the rounding of forming the
matrix), the residual :math:`\\lVert A V - V\\Lambda\\rVert` and orthogonality
:math:`\\lVert V^\\top V - I\\rVert` that a backward-stable float64 solver must
reach, and ``torch.linalg.eigh`` (PyTorch's LAPACK, the solver used before).
The spectra are the hard cases of K-FAC factors: a power law :math:`1/i^s`
spanning 1 to 1e-12 (most eigenvalues clustered near zero relative to the
largest) and repeated eigenvalues.
"""

from __future__ import annotations

import math

import pytest
import torch

from kfac_spectra.eigenbasis import basis_from_factors, kronecker_bases
from kfac_spectra.layer_capture import find_blocks

EPS = torch.finfo(torch.float64).eps
#: Eigenvalue error allowed, relative to the largest eigenvalue.
VALUE_TOL = 1e-12
#: Residual and orthogonality allowed, in units of n * eps (times the largest
#: eigenvalue for the residual); a float32 solver misses them by 1e8.
BACKWARD_TOL = 20.0


def _spectrum(kind: str, n: int) -> torch.Tensor:
    if kind == "power_law":
        exponent = 12.0 / math.log10(n)  # 1 / i^s from 1 down to 1e-12
        return torch.arange(1, n + 1, dtype=torch.float64) ** -exponent
    if kind == "repeated":
        values = torch.zeros(n, dtype=torch.float64)
        q = n // 4
        values[:q], values[q : 2 * q], values[2 * q : 3 * q] = 1.0, 0.5, 1e-6
        return values  # a quarter exactly zero
    raise AssertionError(kind)


def _matrix(values: torch.Tensor, seed: int) -> torch.Tensor:
    n = values.shape[0]
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    a = (q * values) @ q.T
    return 0.5 * (a + a.T)


@pytest.mark.parametrize("kind", ["power_law", "repeated"])
@pytest.mark.parametrize("n", [7, 64, 300])
def test_float64_accuracy_on_hard_spectra(kind: str, n: int) -> None:
    exact = _spectrum(kind, n)
    a = _matrix(exact, seed=n)
    basis = basis_from_factors(a, a[:3, :3])
    values, vectors = basis.row_values, basis.row_vectors
    assert values.dtype == vectors.dtype == torch.float64
    assert torch.all(values[:-1] >= values[1:])  # descending
    scale = exact.max()
    expected = torch.sort(exact, descending=True).values
    assert (values - expected).abs().max() <= VALUE_TOL * scale
    residual = torch.linalg.matrix_norm(a @ vectors - vectors * values)
    assert residual <= BACKWARD_TOL * n * EPS * scale
    eye = torch.eye(n, dtype=torch.float64)
    assert torch.linalg.matrix_norm(vectors.T @ vectors - eye) <= BACKWARD_TOL * n * EPS


def test_agrees_with_torch_eigh() -> None:
    """Same eigenvalues as PyTorch's solver; with well-separated eigenvalues the
    same eigenvectors up to sign."""
    n = 200
    a = _matrix(torch.linspace(1.0, 2.0, n, dtype=torch.float64), seed=1)
    basis = basis_from_factors(a, a)
    ref_values, ref_vectors = torch.linalg.eigh(a)
    torch.testing.assert_close(
        basis.row_values, ref_values.flip(0), rtol=0, atol=VALUE_TOL
    )
    overlap = (basis.row_vectors.T @ ref_vectors.flip(1)).abs()
    torch.testing.assert_close(
        overlap, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-10
    )


def test_float32_factor_is_decomposed_exactly_in_float64() -> None:
    """A float32 factor is widened (exactly) and decomposed in float64."""
    a64 = _matrix(_spectrum("power_law", 50), seed=3)
    a32 = a64.float()
    got = basis_from_factors(a32, a32)
    ref = basis_from_factors(a32.double(), a32.double())
    assert got.row_values.dtype == torch.float64
    torch.testing.assert_close(got.row_values, ref.row_values, rtol=0, atol=0)
    torch.testing.assert_close(got.row_vectors, ref.row_vectors, rtol=0, atol=0)


def test_asymmetric_rounding_is_symmetrised() -> None:
    """The decomposition is of (F + F^T) / 2."""
    a = _matrix(_spectrum("power_law", 40), seed=4)
    skew = torch.triu(torch.full_like(a, 1e-9), diagonal=1)
    got = basis_from_factors(a + skew, a)
    ref = basis_from_factors(a + 0.5 * (skew + skew.T), a)
    torch.testing.assert_close(got.row_values, ref.row_values, rtol=0, atol=1e-15)


def test_diagonal_factor() -> None:
    diag = torch.tensor([0.5, 3.0, 0.0, 1.0], dtype=torch.float32)
    basis = basis_from_factors(diag, torch.eye(2))
    assert basis.row_values.tolist() == [3.0, 1.0, 0.5, 0.0]
    assert basis.row_values.dtype == torch.float64
    # the columns are the coordinate vectors in the same order
    torch.testing.assert_close(
        basis.row_vectors.T @ torch.diag(diag.double()) @ basis.row_vectors,
        torch.diag(basis.row_values),
    )


def test_kronecker_bases_decompose_each_factor() -> None:
    """kronecker_bases reads (A, S) and stores S as the row factor of a Linear."""
    model = torch.nn.Linear(4, 3)
    s = _matrix(_spectrum("power_law", 3), seed=5)
    a = _matrix(_spectrum("repeated", 5), seed=6)
    basis = kronecker_bases({"": (a, s)}, find_blocks(model))[""]
    for factor, values, vectors in (
        (s, basis.row_values, basis.row_vectors),
        (a, basis.col_values, basis.col_vectors),
    ):
        torch.testing.assert_close(
            factor @ vectors, vectors * values, atol=1e-14, rtol=0
        )


@pytest.mark.parametrize(
    ("factor", "match"),
    [
        (torch.ones(2, 3), "square"),
        (torch.ones(2, 2, 2), "square"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "finite"),
        (torch.tensor([[float("inf"), 0.0], [0.0, 1.0]]), "finite"),
    ],
)
def test_bad_factors(factor: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        basis_from_factors(factor, torch.eye(2))
