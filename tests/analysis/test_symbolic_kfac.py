"""Kronecker identities used by K-FAC, in exact arithmetic, plus a float64 check."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from analysis.symbolic.kfac_identities import (
    commutation_matrix,
    kron,
    kron_eigenvalues_are_products,
    kron_inverse_holds,
    paper_eqn14_matches_row_major,
    tied_weight_swaps_factors,
    vec_col,
    vec_identity_holds,
    vec_row,
)

#: float64 agreement of a Kronecker solve and its factored form.
FLOAT_RTOL = 1e-10


def _sym(name: str, n: int) -> sp.Matrix:
    return sp.Matrix(n, n, lambda i, j: sp.Symbol(f"{name}{min(i, j)}{max(i, j)}"))


def _spd_int(rng: np.random.Generator, n: int) -> sp.Matrix:
    """A random symmetric positive-definite integer matrix (exact arithmetic)."""
    root = sp.Matrix(rng.integers(-3, 4, size=(n, n)).tolist())
    return root * root.T + sp.eye(n)


def test_kron_inverse_symbolic():
    assert kron_inverse_holds(_sym("a", 2), _sym("s", 2))


def test_kron_inverse_random_exact():
    rng = np.random.default_rng(0)
    assert kron_inverse_holds(_spd_int(rng, 3), _spd_int(rng, 2))


def test_vec_identity_symbolic_with_bias_column():
    # out = 2, in = 2 inputs + 1 bias column
    s, a = _sym("s", 2), _sym("a", 3)
    g = sp.Matrix(2, 3, sp.symbols("g0:6"))
    assert vec_identity_holds(s, a, g)


def test_vec_identity_random_exact_and_float64():
    rng = np.random.default_rng(1)
    s, a = _spd_int(rng, 3), _spd_int(rng, 4)
    g = sp.Matrix(rng.integers(-5, 6, size=(3, 4)).tolist())
    assert vec_identity_holds(s, a, g)
    assert paper_eqn14_matches_row_major(s, a, g)
    # the numpy convention: W.reshape(-1) is row-major
    sf, af, gf = (np.array(m, dtype=float) for m in (s, a, g))
    lhs = np.linalg.solve(np.kron(sf, af), gf.reshape(-1))
    rhs = (np.linalg.solve(sf, gf) @ np.linalg.inv(af)).reshape(-1)
    np.testing.assert_allclose(lhs, rhs, rtol=FLOAT_RTOL)
    np.testing.assert_array_equal(
        np.array(vec_row(g), dtype=float)[:, 0], gf.reshape(-1)
    )


def test_wrong_factor_order_fails():
    """The checks discriminate: A (x) S does not act on vec_row(G) like S (x) A."""
    rng = np.random.default_rng(2)
    s, a = _spd_int(rng, 2), _spd_int(rng, 3)
    g = sp.Matrix(rng.integers(-5, 6, size=(2, 3)).tolist())
    assert vec_identity_holds(s, a, g)
    wrong_order = kron(a, s) * vec_row(g) - vec_row(s * g * a)
    assert not wrong_order.is_zero_matrix
    wrong_layout = kron(s, a) * vec_col(g) - vec_col(s * g * a)
    assert not wrong_layout.is_zero_matrix


def test_kron_eigenvalues_are_pairwise_products():
    a = sp.Matrix([[2, 1], [1, 2]])  # eigenvalues 1, 3
    s = sp.Matrix([[4, 0, 0], [0, 1, 1], [0, 1, 1]])  # eigenvalues 0, 2, 4
    assert kron_eigenvalues_are_products(a, s)
    rng = np.random.default_rng(3)
    af, sf = np.array(_spd_int(rng, 3), float), np.array(_spd_int(rng, 4), float)
    got = np.sort(np.linalg.eigvalsh(np.kron(af, sf)))
    want = np.sort(np.outer(np.linalg.eigvalsh(af), np.linalg.eigvalsh(sf)).ravel())
    np.testing.assert_allclose(got, want, rtol=FLOAT_RTOL)


def test_tied_weight_swaps_factor_order():
    a_vec = sp.Matrix(sp.symbols("a0:3"))
    g_vec = sp.Matrix(sp.symbols("g0:2"))
    assert tied_weight_swaps_factors(a_vec, g_vec)


def test_commutation_matrix_transposes():
    x = sp.Matrix(2, 3, sp.symbols("x0:6"))
    assert commutation_matrix(2, 3) * vec_row(x) == vec_row(x.T)
    with pytest.raises(ValueError, match="rows"):
        commutation_matrix(0, 2)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="square"):
        kron_inverse_holds(sp.zeros(2, 3), sp.eye(2))
    with pytest.raises(ValueError, match="g must have shape"):
        vec_identity_holds(sp.eye(2), sp.eye(3), sp.zeros(3, 2))
    with pytest.raises(ValueError, match="symmetric"):
        paper_eqn14_matches_row_major(sp.Matrix([[1, 2], [0, 1]]), sp.eye(2), sp.eye(2))
    with pytest.raises(ValueError, match="column"):
        tied_weight_swaps_factors(sp.eye(2), sp.Matrix([1, 2]))
