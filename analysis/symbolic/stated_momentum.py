"""Appendices B and C (momentum): the printed eqns (17)-(34), encoded.

See :mod:`analysis.symbolic.stated` for the reading conventions.
"""

from __future__ import annotations

import sympy as sp

from analysis.symbolic.recursions import THETA, VELOCITY, moment_symbols
from analysis.symbolic.stated import (
    MINUS,
    SQRT,
    StatedEquation,
    sqrt_ac_b,
    two_root_ratio,
)
from analysis.symbolic.symbols import (
    A0,
    B,
    alpha,
    beta,
    c,
    h,
    k,
    lam,
    r1,
    r2,
    t,
    z,
)

__all__ = ["momentum_equations"]


def momentum_equations() -> list[StatedEquation]:
    mo = moment_symbols((THETA, VELOCITY))
    e_th, e_m = mo.mean
    v_th, v_m, cov = mo.cov[0, 0], mo.cov[1, 1], mo.cov[0, 1]
    a_th, a_m, cc = mo.second[0, 0], mo.second[1, 1], mo.second[0, 1]
    greek = "'�' next to alpha, E[m], V[m], A(m), Cov or C read as beta"
    sq = sqrt_ac_b()
    out = [
        StatedEquation(
            "17",
            (
                ("E[theta](t+1)", (1 - alpha * h) * e_th - alpha * beta * e_m),
                ("E[m](t+1)", beta * e_m + h * e_th),
            ),
            f"{MINUS}; {greek}",
        ),
        StatedEquation(
            "18",
            (
                (
                    "V[theta](t+1)",
                    (1 - alpha * h) ** 2 * v_th
                    + (alpha * beta) ** 2 * e_m
                    - 2 * (1 - alpha * h) * alpha * beta * cov
                    + alpha**2 * c / B,
                ),
                ("V[m](t+1)", beta**2 * v_m + h**2 * v_th + 2 * beta * h * cov + c / B),
            ),
            f"{MINUS}; {greek}; the printed 'E [m(t)]' is kept as printed",
        ),
        StatedEquation(
            "19",
            (
                (
                    "Cov(t+1)",
                    (1 - alpha * h) * h * v_th
                    - alpha * beta**2 * v_m
                    + (1 - 2 * alpha * h) * beta * cov
                    - alpha * c / B,
                ),
            ),
            f"{MINUS}; {greek}; '↵�2' read as alpha*beta**2",
        ),
        StatedEquation(
            "20",
            (
                (
                    "A(theta)(t+1)",
                    (1 - alpha * h) ** 2 * a_th
                    + (alpha * beta) ** 2 * a_m
                    - 2 * (1 - alpha * h) * alpha * beta * cc
                    + alpha**2 * c / B,
                ),
                ("A(m)(t+1)", beta**2 * a_m + h**2 * a_th + 2 * beta * h * cc + c / B),
                (
                    "C(t+1)",
                    (1 - alpha * h) * h * a_th
                    - alpha * beta**2 * a_m
                    + (1 - 2 * alpha * h) * beta * cc
                    - alpha * c / B,
                ),
            ),
            f"{MINUS}; {greek}",
        ),
        StatedEquation("21", (), "only the number survives", absent=True),
        StatedEquation(
            "22",
            (
                (
                    "det(T - lambda I)",
                    -(lam - beta)
                    * (
                        lam**2
                        - (beta**2 - 2 * alpha * h * beta + (1 - alpha * h) ** 2) * lam
                        + beta**2
                    ),
                ),
                ("critical beta", (1 - sp.sqrt(alpha * h)) ** 2),
                ("eigenvalue at critical beta", beta),
            ),
            "'�' read as lambda (eigenvalue variable), beta (momentum) or minus by "
            "position; the leading '�' as a minus sign; 'p↵h' as sqrt(alpha h)",
        ),
        StatedEquation(
            "23",
            (
                ("sum lower", sp.Integer(1)),
                ("sum upper", t + 1),
                ("power of T", k - 1),
                ("relation", "<="),
                ("bound sum", "k = 1 .. oo of T**(k-1) n"),
            ),
            "lost relation glyph read as '<='; index p renamed k",
        ),
        StatedEquation(
            "24",
            (
                ("x_k, y_k, z_k for k >= 1", "T**(k-1) n"),
                ("x_0, y_0, z_0", sp.Integer(0)),
            ),
            "',' read as 'defined as'; index p renamed k",
        ),
        StatedEquation(
            "25",
            (
                (
                    "[sqrt x, sqrt y](k+1) = S [sqrt x, sqrt y](k), S",
                    sp.Matrix([[1 - alpha * h, beta], [-alpha * h, beta]]),
                ),
            ),
            f"{SQRT}; {MINUS}; '+ �' read as + beta",
        ),
        StatedEquation(
            "26",
            (
                ("coef of sqrt x_k", 1 - alpha * h + beta),
                ("coef of sqrt x_(k-1)", -beta),
                ("sqrt x_0", sp.Integer(0)),
                ("sqrt x_1", sq),
            ),
            f"{SQRT}; {MINUS}; '+ �' read as + beta",
        ),
        StatedEquation(
            "27",
            (
                ("X(Z)", sq * z / (z**2 - (1 - alpha * h + beta) * z + beta)),
                (
                    "X(Z) partial",
                    sq / (r1 - r2) * (1 / (1 - r1 / z) - 1 / (1 - r2 / z)),
                ),
                ("roots of", z**2 - (1 - alpha * h + beta) * z + beta),
            ),
            f"{MINUS}; 'Z�1' read as Z**(-1); trailing '+ �' read as + beta",
        ),
        StatedEquation(
            "28",
            (("sqrt x_k", sq * (r1**k - r2**k) / (r1 - r2)),),
            SQRT + "; 'rp1' = r1**p",
        ),
        StatedEquation(
            "29",
            (
                (
                    "x_k",
                    alpha**2
                    * c
                    / B
                    * (r1 ** (2 * k) + r2 ** (2 * k) - 2 * (r1 * r2) ** k)
                    / (r1 - r2) ** 2,
                ),
            ),
            "'r2p1' read as r1**(2p); " + MINUS,
        ),
        StatedEquation(
            "30",
            (
                (
                    "sum x_k",
                    alpha**2
                    * c
                    / B
                    / (r1 - r2) ** 2
                    * (1 / (1 - r1**2) + 1 / (1 - r2**2) - 2 / (1 - r1 * r2)),
                ),
                (
                    "sum x_k, combined",
                    alpha**2
                    * c
                    / B
                    * (1 + r1 * r2)
                    / ((1 - r1**2) * (1 - r2**2) * (1 - r1 * r2)),
                ),
            ),
            "'r21' read as r1**2; " + MINUS,
        ),
        StatedEquation(
            "31",
            (
                (
                    "sum x_k",
                    alpha
                    * c
                    * (1 + beta)
                    / (B * h * (2 * beta + 2 - alpha * h) * (1 - beta)),
                ),
                ("r1 r2", beta),
                ("r1 + r2", 1 - alpha * h + beta),
            ),
            f"{MINUS}; '(2� + 2� ↵h)' read as (2 beta + 2 - alpha h)",
        ),
        StatedEquation(
            "32",
            (
                ("coef of sqrt x'_k", 1 - alpha * h + beta),
                ("coef of sqrt x'_(k-1)", -beta),
                ("sqrt x'_0", sp.sqrt(A0)),
                ("sqrt x'_1", sp.sqrt(A0)),
            ),
            f"{SQRT}; 'x0' with a prime-like mark read as x'; {MINUS}",
        ),
        StatedEquation(
            "33",
            (("x'_t", two_root_ratio(beta) ** 2 * A0),),
            f"'rt+1 1' read as r1**(t+1); {MINUS}; '�(rt1' read as beta*(r1**t",
        ),
        StatedEquation(
            "34",
            (
                ("relation", "<="),
                (
                    "A(theta(t)) bound",
                    two_root_ratio(beta) ** 2 * A0
                    + alpha
                    * c
                    * (1 + beta)
                    / (B * h * (2 * beta + 2 - alpha * h) * (1 - beta)),
                ),
            ),
            "lost relation glyph read as '<='; as for (31) and (33)",
        ),
    ]
    return out
