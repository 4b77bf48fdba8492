"""Appendix D (EMA of iterates): the printed eqns (35)-(49), encoded.

See :mod:`analysis.symbolic.stated` for the reading conventions.
"""

from __future__ import annotations

import sympy as sp

from analysis.symbolic.recursions import THETA, THETA_AVG, moment_symbols
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
    c,
    gamma,
    h,
    k,
    r1,
    r2,
    t,
    z,
)

__all__ = ["ema_equations"]


def ema_equations() -> list[StatedEquation]:
    mo = moment_symbols((THETA, THETA_AVG))
    e_th, e_av = mo.mean
    v_th, v_av, cov = mo.cov[0, 0], mo.cov[1, 1], mo.cov[0, 1]
    greek = "'�' in appendix D read as gamma (the averaging decay) unless a minus"
    sq = sqrt_ac_b()
    ema_sum = (
        alpha
        * c
        * (1 + (1 - alpha * h) * gamma)
        / (B * h * (2 - alpha * h) * (1 - gamma**2) * (1 - (1 - alpha * h) * gamma))
    )
    ratio = two_root_ratio(gamma * (1 - alpha * h))
    out = [
        StatedEquation(
            "35",
            (
                ("E[theta](t+1)", (1 - alpha * h) * e_th),
                (
                    "E[theta_avg](t+1)",
                    gamma * e_av + (1 - gamma) * (1 - alpha * h) * e_th,
                ),
            ),
            f"{MINUS}; {greek}; '✓̃' read as theta_avg",
        ),
        StatedEquation(
            "36",
            (
                ("V[theta](t+1)", (1 - alpha * h) ** 2 * v_th + alpha**2 * c / B),
                (
                    "V[theta_avg](t+1)",
                    gamma**2 * v_av
                    + (1 - gamma) ** 2 * (1 - alpha * h) ** 2 * v_th
                    + 2 * gamma * (1 - gamma) * (1 - alpha * h) * cov
                    + (1 - gamma) ** 2 * alpha**2 * c / B,
                ),
            ),
            f"{MINUS}; {greek}",
        ),
        StatedEquation(
            "37",
            (
                (
                    "Cov(t+1)",
                    (1 - gamma) * (1 - alpha * h) ** 2 * v_th
                    + (1 - alpha * gamma) * cov
                    + (1 - gamma) * alpha**2 * c / B,
                ),
            ),
            f"{MINUS}; {greek}; '(1� ↵�)' read as (1 - alpha gamma)",
        ),
        StatedEquation("38", (), "only the number survives", absent=True),
        StatedEquation(
            "39",
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
            "40",
            (
                ("x_k, y_k, z_k for k >= 1", "T**(k-1) n"),
                ("x_0, y_0, z_0", sp.Integer(0)),
            ),
            "',' read as 'defined as'; index p renamed k",
        ),
        StatedEquation(
            "41",
            (
                (
                    "[sqrt x, sqrt y](k+1) = S [sqrt x, sqrt y](k), S",
                    sp.Matrix([[1 - alpha * h, 0], [1 - alpha * h, gamma]]),
                ),
            ),
            f"{SQRT}; {MINUS}; '+ �' read as + gamma",
        ),
        StatedEquation(
            "42",
            (
                ("coef of sqrt y_k", 1 - alpha * h + gamma),
                ("coef of sqrt y_(k-1)", -(1 - alpha * h) * gamma),
                ("sqrt y_0", sp.Integer(0)),
                ("sqrt y_1", sq),
            ),
            f"{SQRT}; {MINUS}; '+ �' read as + gamma",
        ),
        StatedEquation(
            "43",
            (
                ("Y(Z)", sq * z / (z**2 - (1 - alpha * h + gamma) * z + gamma)),
                (
                    "Y(Z) partial",
                    sq / (r1 - r2) * (1 / (1 - r1 / z) - 1 / (1 - r2 / z)),
                ),
                (
                    "roots of",
                    z**2 - (1 - alpha * h + gamma) * z + (1 - alpha * h) * gamma,
                ),
            ),
            f"{MINUS}; '�' read as gamma; the constant term of the Z-domain "
            "denominator is a lone '�' (gamma), while the sentence after the "
            "equation gives the root polynomial with (1 - alpha h) gamma",
        ),
        StatedEquation(
            "44",
            (("sqrt y_k", sq * (r1**k - r2**k) / (r1 - r2)),),
            SQRT + "; 'rp1' = r1**p",
        ),
        StatedEquation(
            "45",
            (
                (
                    "y_k",
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
            "46",
            (
                (
                    "sum y_k",
                    alpha**2
                    * c
                    / B
                    / (r1 - r2) ** 2
                    * (1 / (1 - r1**2) + 1 / (1 - r2**2) - 2 / (1 - r1 * r2)),
                ),
                (
                    "sum y_k, combined",
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
            "47",
            (("r1", 1 - alpha * h), ("r2", gamma), ("sum y_k", ema_sum)),
            f"{MINUS}; {greek}; '(1� �2)' read as (1 - gamma**2)",
        ),
        StatedEquation(
            "48",
            (
                ("sqrt y_0", sp.sqrt(A0) / (1 - gamma)),
                ("sqrt y_1", sp.sqrt(A0) / (1 - gamma)),
                ("y_t", ratio**2 * A0 / (1 - gamma) ** 2),
            ),
            f"{SQRT}; {MINUS}; {greek}; the fraction '1 / 1��' read as 1/(1-gamma)",
        ),
        StatedEquation(
            "49",
            (
                ("relation", "<="),
                (
                    "A(theta_avg(t)) bound",
                    ratio**2 * A0
                    + alpha
                    * c
                    * (1 - gamma)
                    * (1 + (1 - alpha * h) * gamma)
                    / (
                        B
                        * h
                        * (2 - alpha * h)
                        * (1 + gamma)
                        * (1 - (1 - alpha * h) * gamma)
                    ),
                ),
            ),
            f"lost relation glyph read as '<=' (the text says 'upper bound'); {greek}",
        ),
    ]
    return out
