"""Second-order difference equations, their Z-transforms and geometric sums.

The second moments of a 2-state linear system are squares and products of the
components of ``M^k w`` (see :func:`analysis.symbolic.recursions.quadratic_lift`),
so each component ``y_k`` of ``M^k w`` obeys the scalar recurrence given by the
Cayley-Hamilton theorem,

.. math::

    y_{k+1} = \\operatorname{tr}(M)\\, y_k - \\det(M)\\, y_{k-1}.

It is solved with the unilateral Z-transform :math:`Y(Z) = \\sum_k y_k Z^{-k}`, whose
shift rule turns the recurrence into an algebraic equation, and inverted with
residues at the two roots ``r1, r2`` of :math:`Z^2 - \\operatorname{tr}(M) Z +
\\det(M)`. The infinite sums of the squared solutions are geometric series.

References:
    Zhang et al. (2019), appendix C eqns (25)-(31) and appendix D eqns (41)-(47).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from sympy.polys.polyfuncs import symmetrize

from analysis.symbolic.symbols import k, r1, r2, s_prod, s_sum, z

__all__ = [
    "Recurrence",
    "cayley_hamilton_recurrence",
    "geometric_sum",
    "inverse_z_transform",
    "is_zero",
    "satisfies_recurrence",
    "to_symmetric",
    "z_transform",
]


@dataclass(frozen=True)
class Recurrence:
    """``y_{k+1} = a1 y_k + a0 y_{k-1}`` with its first two values.

    Attributes:
        a1: Coefficient of ``y_k``.
        a0: Coefficient of ``y_{k-1}``.
        y0: ``y_0``.
        y1: ``y_1``.
    """

    a1: sp.Expr
    a0: sp.Expr
    y0: sp.Expr
    y1: sp.Expr

    def char_poly(self, var: sp.Symbol = z) -> sp.Expr:
        """The characteristic polynomial ``var**2 - a1 var - a0``."""
        return var**2 - self.a1 * var - self.a0


def is_zero(expr: sp.Expr) -> bool:
    """Exact test ``expr == 0`` for rational expressions with symbolic powers.

    Powers with symbolic exponents are split first (``r**(t+1) -> r * r**t``), so
    that closed forms in ``r**t`` reduce like polynomials.

    Args:
        expr: A sympy expression (or matrix).

    Returns:
        True if the expression simplifies to zero.
    """
    if isinstance(expr, sp.MatrixBase):
        return all(is_zero(e) for e in expr)
    e = sp.sympify(expr)
    if e == 0:
        return True
    # Cheap refutation first: evaluate at two fixed points (distinct values in
    # (0, 1) for every free symbol, small integers for integer symbols). A clearly
    # non-zero value proves non-identity; near-zero values go on to exact algebra.
    for offset in (0, 1):
        point = {}
        for i, sym in enumerate(sorted(e.free_symbols, key=str)):
            point[sym] = (
                3 + i + offset
                if sym.is_integer
                else sp.Rational(3 + 2 * i + offset, 97)
            )
        try:
            value = complex(sp.N(e.subs(point), 30))
        except (TypeError, ValueError, ZeroDivisionError):  # a pole at this point
            continue
        if abs(value) > 1e-12:
            return False
    e = sp.expand(sp.powsimp(sp.expand(e, power_exp=True), combine="base"))
    e = sp.expand(e, power_exp=True)
    if sp.cancel(sp.together(e)) == 0:
        return True
    return sp.simplify(e) == 0


def cayley_hamilton_recurrence(mat: sp.Matrix) -> tuple[sp.Expr, sp.Expr]:
    """Coefficients ``(a1, a0)`` with ``M**2 = a1 M + a0 I`` for a 2x2 ``M``.

    Every component of ``M**k w`` then satisfies ``y_{k+1} = a1 y_k + a0 y_{k-1}``.

    Args:
        mat: A 2x2 matrix.

    Returns:
        ``(trace(M), -det(M))``.

    Raises:
        ValueError: If ``mat`` is not 2x2 (or the identity check fails).
    """
    if mat.shape != (2, 2):
        raise ValueError(f"mat must be 2x2, got shape {mat.shape}")
    a1, a0 = sp.factor(mat.trace()), sp.factor(-mat.det())
    if not is_zero(mat * mat - a1 * mat - a0 * sp.eye(2)):
        raise ValueError("Cayley-Hamilton check failed")
    return a1, a0


def z_transform(rec: Recurrence) -> sp.Expr:
    """The Z-transform ``Y(Z) = sum_k y_k Z**(-k)`` of a second-order recurrence.

    The shift rule ``sum_k y_{k+2} Z**(-k) = Z**2 (Y - y0 - y1/Z)`` and
    ``sum_k y_{k+1} Z**(-k) = Z (Y - y0)`` turn the recurrence into a linear
    equation for ``Y``, which is solved.

    Args:
        rec: The recurrence with its initial values.

    Returns:
        ``Y(Z)`` as a rational function of ``Z``.
    """
    big_y = sp.Symbol("Y")
    lhs = z**2 * (big_y - rec.y0 - rec.y1 / z)
    rhs = rec.a1 * z * (big_y - rec.y0) + rec.a0 * big_y
    (sol,) = sp.solve(sp.Eq(lhs, rhs), big_y)
    return sp.factor(sp.cancel(sol), z)


def inverse_z_transform(
    transform: sp.Expr, roots: tuple[sp.Expr, sp.Expr] = (r1, r2)
) -> tuple[sp.Expr, tuple[sp.Expr, sp.Expr]]:
    """Invert ``Y(Z) = Z N(Z) / ((Z - r1)(Z - r2))`` by residues.

    ``y_k = sum_j Res_{Z = r_j} Y(Z) Z**(k-1) = sum_j A_j r_j**k`` with
    ``A_j = [(Z - r_j) Y(Z) / Z]_{Z = r_j}``; equivalently
    ``Y(Z) = sum_j A_j / (1 - r_j Z**(-1))``.

    Args:
        transform: ``Y(Z)`` whose denominator is ``(Z - r1)(Z - r2)`` once its
            coefficients are written through the roots, and whose numerator
            vanishes at ``Z = 0``.
        roots: The two (distinct) poles.

    Returns:
        ``(y_k, (A_1, A_2))`` with ``y_k`` in terms of the symbol
        :data:`analysis.symbolic.symbols.k`.

    Raises:
        ValueError: If the numerator does not vanish at 0 or the poles are wrong.
    """
    num, den = sp.fraction(sp.cancel(transform))
    if sp.simplify(num.subs(z, 0)) != 0:
        raise ValueError("numerator of transform must vanish at Z = 0")
    expected = sp.expand((z - roots[0]) * (z - roots[1]))
    ratio = sp.cancel(den / expected)
    if ratio.has(z):
        raise ValueError("denominator of transform is not (Z - r1)(Z - r2)")
    coefs = []
    for j, root in enumerate(roots):
        other = roots[1 - j]
        coefs.append(
            sp.factor(sp.cancel(num / (z * ratio * (z - other))).subs(z, root))
        )
    closed = sum(a * r**k for a, r in zip(coefs, roots, strict=True))
    return closed, (coefs[0], coefs[1])


def satisfies_recurrence(closed: sp.Expr, rec: Recurrence) -> bool:
    """Check a closed form ``y(k)`` against the recurrence and its initial values.

    Args:
        closed: An expression in :data:`analysis.symbolic.symbols.k`.
        rec: The recurrence.

    Returns:
        True if ``y(0) = y0``, ``y(1) = y1`` and the recurrence holds for symbolic
        ``k >= 1``.
    """
    step = closed.subs(k, k + 1) - rec.a1 * closed - rec.a0 * closed.subs(k, k - 1)
    return (
        is_zero(closed.subs(k, 0) - rec.y0)
        and is_zero(closed.subs(k, 1) - rec.y1)
        and is_zero(step)
    )


def geometric_sum(
    expr: sp.Expr, var: sp.Symbol = k, start: sp.Expr | int = 0
) -> tuple[sp.Expr, tuple[sp.Expr, ...]]:
    """``sum_{var >= start} expr`` for a sum of geometric terms ``a * b**var``.

    Args:
        expr: A sum of terms whose dependence on ``var`` is a product of powers
            with exponents linear in ``var``.
        var: The summation index.
        start: First index (may be symbolic, e.g. ``t + 1`` for a tail).

    Returns:
        ``(sum, ratios)``: the closed form and the ratios ``b`` whose moduli must be
        below 1 for convergence.

    Raises:
        ValueError: If a term is not geometric in ``var``.
    """
    start = sp.sympify(start)
    grouped: dict[sp.Expr, sp.Expr] = {}
    for term in sp.Add.make_args(sp.expand(expr, power_exp=True)):
        coeff, dep = term.as_independent(var, as_Add=False)
        ratio = sp.powsimp(dep.subs(var, 1))
        if dep.subs(var, 0) != 1 or not is_zero(dep.subs(var, 2) - ratio**2):
            raise ValueError(f"term {term} is not geometric in {var}")
        grouped[ratio] = grouped.get(ratio, sp.Integer(0)) + coeff
    total = sum(
        (
            sp.factor(coeff) * ratio**start / (1 - ratio)
            for ratio, coeff in grouped.items()
        ),
        sp.Integer(0),
    )
    return total, tuple(grouped)


def to_symmetric(expr: sp.Expr, roots: tuple[sp.Symbol, sp.Symbol] = (r1, r2)):
    """Rewrite a rational function symmetric in two roots via their sum and product.

    Args:
        expr: A rational expression in ``roots`` (and other symbols), symmetric
            under swapping the two roots.
        roots: The two root symbols.

    Returns:
        The expression in :data:`s_sum` ``= r1 + r2`` and :data:`s_prod` ``= r1 r2``.

    Raises:
        ValueError: If the expression is not symmetric.
    """
    num, den = sp.fraction(sp.cancel(sp.together(expr)))
    parts = []
    for poly in (num, den):
        sym, rem, defs = symmetrize(sp.expand(poly), *roots, formal=True)
        if rem != 0:
            raise ValueError("expression is not symmetric in the roots")
        names = {}
        for name, definition in defs:
            is_sum = sp.expand(definition - roots[0] - roots[1]) == 0
            names[name] = s_sum if is_sum else s_prod
        parts.append(sym.subs(names))
    return sp.factor(parts[0] / parts[1])
