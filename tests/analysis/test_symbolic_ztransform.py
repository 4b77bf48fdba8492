"""Second-order recurrences, Z-transforms, residues and geometric sums."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from analysis.symbolic.symbols import k, r1, r2, s_prod, s_sum, t, z
from analysis.symbolic.ztransform import (
    Recurrence,
    cayley_hamilton_recurrence,
    geometric_sum,
    inverse_z_transform,
    is_zero,
    satisfies_recurrence,
    to_symmetric,
    z_transform,
)

#: Float64 agreement between a closed form and direct iteration.
ITER_RTOL = 1e-10


def test_cayley_hamilton_generic_matrix():
    mat = sp.Matrix(2, 2, sp.symbols("m0:4"))
    a1, a0 = cayley_hamilton_recurrence(mat)
    assert is_zero(a1 - mat.trace())
    assert is_zero(a0 + mat.det())


def test_cayley_hamilton_rejects_non_2x2():
    with pytest.raises(ValueError, match="2x2"):
        cayley_hamilton_recurrence(sp.eye(3))


def test_z_transform_and_inverse_solve_a_generic_recurrence():
    y0, y1 = sp.symbols("y0 y1")
    rec = Recurrence(r1 + r2, -r1 * r2, y0, y1)
    transform = z_transform(rec)
    # Shift rule check: Z**2 (Y - y0 - y1/Z) - a1 Z (Y - y0) - a0 Y = 0.
    residual = z**2 * (transform - y0 - y1 / z) - rec.a1 * z * (transform - y0)
    assert is_zero(residual - rec.a0 * transform)
    closed, coefs = inverse_z_transform(transform)
    assert satisfies_recurrence(closed, rec)
    # Numeric check against direct iteration with real and complex roots.
    for roots in ((0.7, -0.4), (0.5 + 0.3j, 0.5 - 0.3j)):
        vals = {r1: roots[0], r2: roots[1], y0: 1.3, y1: -0.2}
        seq = [1.3, -0.2]
        a1, a0 = complex(rec.a1.subs(vals)), complex(rec.a0.subs(vals))
        for _ in range(10):
            seq.append(a1 * seq[-1] + a0 * seq[-2])
        f = sp.lambdify(k, closed.subs(vals), "numpy")
        np.testing.assert_allclose(
            [complex(f(kk)) for kk in range(12)], seq, rtol=ITER_RTOL
        )
    assert len(coefs) == 2


def test_inverse_z_transform_rejects_wrong_denominator():
    with pytest.raises(ValueError, match="denominator"):
        inverse_z_transform(z / ((z - r1) * (z - 3 * r2)))
    with pytest.raises(ValueError, match="numerator"):
        inverse_z_transform(1 / ((z - r1) * (z - r2)))


def test_satisfies_recurrence_detects_wrong_closed_form():
    rec = Recurrence(r1 + r2, -r1 * r2, sp.Integer(0), sp.Integer(1))
    right = (r1**k - r2**k) / (r1 - r2)
    wrong = (r1 ** (k + 1) - r2 ** (k + 1)) / (r1 - r2)
    assert satisfies_recurrence(right, rec)
    assert not satisfies_recurrence(wrong, rec)


def test_geometric_sum_matches_partial_sums():
    a, b = sp.Rational(1, 3), sp.Rational(-1, 2)
    expr = 2 * a ** (2 * k) - 5 * (a * b) ** k + b**k
    total, ratios = geometric_sum(expr)
    partial = sum(expr.subs(k, kk) for kk in range(200))
    assert abs(float(total - partial)) < 1e-14
    assert set(ratios) == {a**2, a * b, b}
    tail, _ = geometric_sum(expr, k, t + 1)
    partial_tail = sum(expr.subs(k, kk) for kk in range(4, 200))
    assert abs(float(tail.subs(t, 3) - partial_tail)) < 1e-14


def test_geometric_sum_rejects_non_geometric_terms():
    with pytest.raises(ValueError, match="geometric"):
        geometric_sum(k * r1**k)


def test_to_symmetric_rewrites_through_sum_and_product():
    expr = (1 + r1 * r2) / ((1 - r1**2) * (1 - r2**2) * (1 - r1 * r2))
    sym = to_symmetric(expr)
    expected = (1 + s_prod) / ((1 - s_sum**2 + 2 * s_prod + s_prod**2) * (1 - s_prod))
    assert is_zero(sym - expected)
    with pytest.raises(ValueError, match="symmetric"):
        to_symmetric(r1 - 2 * r2)


def test_is_zero_is_exact():
    x = sp.Symbol("x", positive=True)
    assert is_zero((x + 1) ** 2 - x**2 - 2 * x - 1)
    assert not is_zero((x + 1) ** 2 - x**2 - 2 * x)
    assert is_zero(r1 ** (t + 2) - r1**2 * r1**t)
    assert not is_zero(r1 ** (t + 2) - r1 * r1**t)
