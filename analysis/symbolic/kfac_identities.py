"""Kronecker-product identities that K-FAC (and ``kfac_spectra``) relies on.

Project convention: a weight ``W`` of shape ``(out, in)`` (bias appended as the
last input column) is flattened row-major, ``vec_row(W) = W.reshape(-1)``, and its
curvature block is ``S (x) A`` with ``S`` ``(out x out)`` from output gradients and
``A`` ``(in x in)`` from inputs. The identities, for any conformable matrices:

* mixed product: ``(A (x) S)(C (x) D) = (AC) (x) (SD)``, hence
  ``(A (x) S)**-1 = A**-1 (x) S**-1``;
* row-major vec: ``vec_row(X Y Z) = (X (x) Z**T) vec_row(Y)``, hence
  ``(S (x) A)**-1 vec_row(G) = vec_row(S**-1 G A**-T)`` (``= S**-1 G A**-1`` for the
  symmetric factors); this is Zhang et al. 2019, appendix A, eqn (14), written
  for the transposed, row-major layout (the paper's ``W`` is ``(in, out)`` and
  vec is column-major);
* the eigenvalues of ``A (x) S`` are all products ``a_i s_j``;
* a weight used transposed (``s = W**T a``, as a tied embedding) has the gradient
  ``a g**T`` whose row-major vec is ``a (x) g``, so its block is ``A (x) S``: the
  factor order swaps (Zhang et al. 2019, appendix A.1, eqn (16)); ``A (x) S = K (S (x) A) K**T`` with the
  commutation matrix ``K``.

All checks run in exact sympy arithmetic (symbolic entries or rationals).

References:
    Zhang et al. (2019), appendix A eqns (13)-(16); Martens & Grosse (2015), K-FAC.
"""

from __future__ import annotations

import sympy as sp

__all__ = [
    "commutation_matrix",
    "kron",
    "kron_eigenvalues_are_products",
    "kron_inverse_holds",
    "paper_eqn14_matches_row_major",
    "tied_weight_swaps_factors",
    "vec_col",
    "vec_identity_holds",
    "vec_row",
]


def kron(a: sp.Matrix, b: sp.Matrix) -> sp.Matrix:
    """Kronecker product ``a (x) b`` (block ``(i, j)`` is ``a[i, j] * b``)."""
    return sp.kronecker_product(a, b)


def vec_row(x: sp.Matrix) -> sp.Matrix:
    """Row-major vectorisation (``numpy``'s ``x.reshape(-1)``) as a column."""
    return sp.Matrix([x[i, j] for i in range(x.rows) for j in range(x.cols)])


def vec_col(x: sp.Matrix) -> sp.Matrix:
    """Column-major vectorisation (stacked columns) as a column."""
    return sp.Matrix([x[i, j] for j in range(x.cols) for i in range(x.rows)])


def commutation_matrix(rows: int, cols: int) -> sp.Matrix:
    """``K`` with ``K vec_row(X) = vec_row(X**T)`` for ``X`` of shape ``(rows, cols)``.

    Args:
        rows: Rows of ``X`` (>= 1).
        cols: Columns of ``X`` (>= 1).

    Returns:
        A permutation matrix of shape ``(rows*cols, rows*cols)``.

    Raises:
        ValueError: If a size is below 1.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be >= 1, got {rows}, {cols}")
    k = sp.zeros(rows * cols, rows * cols)
    for i in range(rows):
        for j in range(cols):
            k[j * rows + i, i * cols + j] = 1
    return k


def _square(name: str, m: sp.Matrix) -> None:
    if m.rows != m.cols:
        raise ValueError(f"{name} must be square, got shape {m.shape}")


def kron_inverse_holds(a: sp.Matrix, s: sp.Matrix) -> bool:
    """``(A (x) S)(A**-1 (x) S**-1) = I``, i.e. ``(A (x) S)**-1 = A**-1 (x) S**-1``.

    Args:
        a: Invertible square matrix.
        s: Invertible square matrix.

    Returns:
        True if the product simplifies to the identity.

    Raises:
        ValueError: If a matrix is not square.
    """
    _square("a", a)
    _square("s", s)
    prod = kron(a, s) * kron(a.inv(), s.inv())
    return (prod - sp.eye(prod.rows)).applyfunc(sp.simplify).is_zero_matrix


def vec_identity_holds(s: sp.Matrix, a: sp.Matrix, g: sp.Matrix) -> bool:
    """The row-major vec identities for the ``S (x) A`` block of ``G`` (out, in).

    Checks ``(S (x) A) vec_row(G) = vec_row(S G A**T)`` and
    ``(S (x) A)**-1 vec_row(G) = vec_row(S**-1 G A**-T)``.

    Args:
        s: ``(out, out)`` invertible.
        a: ``(in, in)`` invertible.
        g: ``(out, in)`` gradient.

    Returns:
        True if both identities hold exactly.

    Raises:
        ValueError: On mismatched shapes.
    """
    _square("s", s)
    _square("a", a)
    if g.shape != (s.rows, a.rows):
        raise ValueError(f"g must have shape {(s.rows, a.rows)}, got {g.shape}")
    block = kron(s, a)
    forward = block * vec_row(g) - vec_row(s * g * a.T)
    inverse = block.inv() * vec_row(g) - vec_row(s.inv() * g * a.inv().T)
    return all(m.applyfunc(sp.simplify).is_zero_matrix for m in (forward, inverse))


def paper_eqn14_matches_row_major(s: sp.Matrix, a: sp.Matrix, g: sp.Matrix) -> bool:
    """Zhang et al. 2019, appendix A, eqn (14) in the paper's layout equals the
    project's layout.

    The paper stores ``W_p = W**T`` (in, out) with gradient ``G_p = G**T`` and
    column-major vec; eqn (14) reads ``(S**-1 (x) A**-1) vec_col(G_p) =
    vec_col(A**-1 G_p S**-1)``. Since ``vec_col(G_p) = vec_row(G)``, the same
    block acts on the project's ``vec_row(G)`` and gives ``vec_row(S**-1 G
    A**-1)`` for symmetric factors.

    Args:
        s: ``(out, out)`` symmetric invertible.
        a: ``(in, in)`` symmetric invertible.
        g: ``(out, in)``.

    Returns:
        True if the layouts agree and both sides of eqn (14) match.

    Raises:
        ValueError: If a factor is not symmetric.
    """
    for name, m in (("s", s), ("a", a)):
        if not (m - m.T).is_zero_matrix:
            raise ValueError(f"{name} must be symmetric")
    g_p = g.T
    same_layout = (vec_col(g_p) - vec_row(g)).is_zero_matrix
    lhs = kron(s.inv(), a.inv()) * vec_col(g_p)
    paper_rhs = vec_col(a.inv() * g_p * s.inv())
    ours = vec_row(s.inv() * g * a.inv())
    return same_layout and all(
        (x - y).applyfunc(sp.simplify).is_zero_matrix
        for x, y in ((lhs, paper_rhs), (lhs, ours))
    )


def kron_eigenvalues_are_products(a: sp.Matrix, s: sp.Matrix) -> bool:
    """The eigenvalues of ``A (x) S`` (with multiplicity) are all ``a_i s_j``.

    Compared as characteristic polynomials: ``charpoly(A (x) S)(x) =
    prod_{i,j} (x - a_i s_j)``, with the products taken over the eigenvalues of
    ``A`` and ``S`` computed exactly.

    Args:
        a: Square matrix with exactly computable eigenvalues.
        s: Square matrix with exactly computable eigenvalues.

    Returns:
        True if the polynomials agree.
    """
    _square("a", a)
    _square("s", s)
    x = sp.Symbol("x")
    eig_a = [v for v, m in a.eigenvals().items() for _ in range(m)]
    eig_s = [v for v, m in s.eigenvals().items() for _ in range(m)]
    expected = sp.prod([x - ea * es for ea in eig_a for es in eig_s])
    got = kron(a, s).charpoly(x).as_expr()
    return sp.expand(expected - got) == 0


def tied_weight_swaps_factors(a_vec: sp.Matrix, g_vec: sp.Matrix) -> bool:
    """A weight used transposed has block ``A (x) S`` instead of ``S (x) A``.

    For ``s = W**T a`` with ``W`` stored as ``(in, out)``, the gradient is
    ``a g**T`` and ``vec_row(a g**T) = a (x) g``, so the per-example block is
    ``(a a**T) (x) (g g**T)``. It is the commutation-permuted normal block:
    ``A (x) S = K (S (x) A) K**T``.

    Args:
        a_vec: Input column vector ``a`` (in, 1).
        g_vec: Output-gradient column vector ``g`` (out, 1).

    Returns:
        True if all three identities hold exactly.

    Raises:
        ValueError: If an argument is not a column vector.
    """
    for name, v in (("a_vec", a_vec), ("g_vec", g_vec)):
        if v.cols != 1:
            raise ValueError(f"{name} must be a column vector, got shape {v.shape}")
    grad = a_vec * g_vec.T
    vec_ok = (vec_row(grad) - kron(a_vec, g_vec)).is_zero_matrix
    a_fac, s_fac = a_vec * a_vec.T, g_vec * g_vec.T
    block = vec_row(grad) * vec_row(grad).T
    block_ok = (block - kron(a_fac, s_fac)).applyfunc(sp.expand).is_zero_matrix
    k = commutation_matrix(g_vec.rows, a_vec.rows)
    swap_ok = (
        (k * kron(s_fac, a_fac) * k.T - kron(a_fac, s_fac))
        .applyfunc(sp.expand)
        .is_zero_matrix
    )
    return vec_ok and block_ok and swap_ok
