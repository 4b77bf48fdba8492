"""The appendix's equations (17)-(49) encoded as printed.

The source is a PDF text extraction in which Greek letters and operators were
garbled. Each equation is transcribed with the least interpretation needed to
read it, and each interpretation is recorded. Conventions of the extraction:

* ``↵`` is alpha, ``✓`` is theta, ``✓̃`` is the averaged theta, ``p`` before a
  variable is a square-root sign, ``⌦`` is the Kronecker product.
* ``�`` (U+FFFD) stands for several glyphs: the minus sign, beta (appendices B
  and C), gamma (appendix D) and lambda (eqn 22). Which one is decided by the
  position (after ``(1`` it is a minus sign; next to ``E[m]`` it is the momentum).
* Relation glyphs of eqns (23), (34), (39) and (49) are lost (a blank); they are
  read as ``<=`` because the text calls eqn (49) "the following upper bound" and
  the sums run from a finite to an infinite limit.
* The summation index is ``k`` here (the paper's ``p``).

Nothing here is derived; :mod:`analysis.symbolic.audit` compares these forms with
the derivations.

References:
    Zhang et al. (2019), appendices B, C and D, eqns (17)-(49).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

from analysis.symbolic.recursions import THETA, THETA_AVG, VELOCITY, moment_symbols
from analysis.symbolic.symbols import (
    A0,
    B,
    alpha,
    beta,
    c,
    gamma,
    h,
    k,
    lam,
    r1,
    r2,
    t,
    z,
)

__all__ = ["StatedEquation", "stated_equations"]


@dataclass(frozen=True)
class StatedEquation:
    """One numbered equation as printed.

    Attributes:
        number: The equation number, e.g. ``"18"``.
        parts: Named pieces of the equation (left-hand side name -> right-hand
            side, initial conditions, relation, ...).
        interpretation: What had to be interpreted to read the extraction.
        absent: True if the extraction has only the number (an image).
    """

    number: str
    parts: tuple[tuple[str, sp.Basic | str], ...]
    interpretation: str
    absent: bool = False

    def part(self, name: str) -> sp.Basic | str:
        """The piece called ``name``.

        Raises:
            ValueError: If there is no such piece.
        """
        for key, value in self.parts:
            if key == name:
                return value
        raise ValueError(f"equation {self.number} has no part {name!r}")

    def render(self) -> str:
        """A one-line human-readable form of the encoded parts."""
        if self.absent:
            return "absent from the extracted text (typeset as an image)"
        return "; ".join(f"{key}: {sp.sstr(value)}" for key, value in self.parts)


_MINUS = "'�' after '(1' and between terms read as a minus sign"
_SQRT = "'p' before x_p/y_p read as a square root"


def _sqrt_ac_b() -> sp.Expr:
    return sp.sqrt(alpha**2 * c / B)


def _two_root_ratio(num_shift: sp.Expr) -> sp.Expr:
    """``(r1**(t+1) - r2**(t+1) - s (r1**t - r2**t)) / (r1 - r2)`` as printed."""
    return (r1 ** (t + 1) - r2 ** (t + 1) - num_shift * (r1**t - r2**t)) / (r1 - r2)


def _momentum_equations() -> list[StatedEquation]:
    mo = moment_symbols((THETA, VELOCITY))
    e_th, e_m = mo.mean
    v_th, v_m, cov = mo.cov[0, 0], mo.cov[1, 1], mo.cov[0, 1]
    a_th, a_m, cc = mo.second[0, 0], mo.second[1, 1], mo.second[0, 1]
    greek = "'�' next to alpha, E[m], V[m], A(m), Cov or C read as beta"
    sq = _sqrt_ac_b()
    out = [
        StatedEquation(
            "17",
            (
                ("E[theta](t+1)", (1 - alpha * h) * e_th - alpha * beta * e_m),
                ("E[m](t+1)", beta * e_m + h * e_th),
            ),
            f"{_MINUS}; {greek}",
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
            f"{_MINUS}; {greek}; the printed 'E [m(t)]' is kept as printed",
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
            f"{_MINUS}; {greek}; '↵�2' read as alpha*beta**2",
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
            f"{_MINUS}; {greek}",
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
            f"{_SQRT}; {_MINUS}; '+ �' read as + beta",
        ),
        StatedEquation(
            "26",
            (
                ("coef of sqrt x_k", 1 - alpha * h + beta),
                ("coef of sqrt x_(k-1)", -beta),
                ("sqrt x_0", sp.Integer(0)),
                ("sqrt x_1", sq),
            ),
            f"{_SQRT}; {_MINUS}; '+ �' read as + beta",
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
            f"{_MINUS}; 'Z�1' read as Z**(-1); trailing '+ �' read as + beta",
        ),
        StatedEquation(
            "28",
            (("sqrt x_k", sq * (r1**k - r2**k) / (r1 - r2)),),
            _SQRT + "; 'rp1' = r1**p",
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
            "'r2p1' read as r1**(2p); " + _MINUS,
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
            "'r21' read as r1**2; " + _MINUS,
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
            f"{_MINUS}; '(2� + 2� ↵h)' read as (2 beta + 2 - alpha h)",
        ),
        StatedEquation(
            "32",
            (
                ("coef of sqrt x'_k", 1 - alpha * h + beta),
                ("coef of sqrt x'_(k-1)", -beta),
                ("sqrt x'_0", sp.sqrt(A0)),
                ("sqrt x'_1", sp.sqrt(A0)),
            ),
            f"{_SQRT}; 'x0' with a prime-like mark read as x'; {_MINUS}",
        ),
        StatedEquation(
            "33",
            (("x'_t", _two_root_ratio(beta) ** 2 * A0),),
            f"'rt+1 1' read as r1**(t+1); {_MINUS}; '�(rt1' read as beta*(r1**t",
        ),
        StatedEquation(
            "34",
            (
                ("relation", "<="),
                (
                    "A(theta(t)) bound",
                    _two_root_ratio(beta) ** 2 * A0
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


def _ema_equations() -> list[StatedEquation]:
    mo = moment_symbols((THETA, THETA_AVG))
    e_th, e_av = mo.mean
    v_th, v_av, cov = mo.cov[0, 0], mo.cov[1, 1], mo.cov[0, 1]
    greek = "'�' in appendix D read as gamma (the averaging decay) unless a minus"
    sq = _sqrt_ac_b()
    ema_sum = (
        alpha
        * c
        * (1 + (1 - alpha * h) * gamma)
        / (B * h * (2 - alpha * h) * (1 - gamma**2) * (1 - (1 - alpha * h) * gamma))
    )
    ratio = _two_root_ratio(gamma * (1 - alpha * h))
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
            f"{_MINUS}; {greek}; '✓̃' read as theta_avg",
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
            f"{_MINUS}; {greek}",
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
            f"{_MINUS}; {greek}; '(1� ↵�)' read as (1 - alpha gamma)",
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
            f"{_SQRT}; {_MINUS}; '+ �' read as + gamma",
        ),
        StatedEquation(
            "42",
            (
                ("coef of sqrt y_k", 1 - alpha * h + gamma),
                ("coef of sqrt y_(k-1)", -(1 - alpha * h) * gamma),
                ("sqrt y_0", sp.Integer(0)),
                ("sqrt y_1", sq),
            ),
            f"{_SQRT}; {_MINUS}; '+ �' read as + gamma",
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
            f"{_MINUS}; '�' read as gamma; the constant term of the Z-domain "
            "denominator is a lone '�' (gamma), while the sentence after the "
            "equation gives the root polynomial with (1 - alpha h) gamma",
        ),
        StatedEquation(
            "44",
            (("sqrt y_k", sq * (r1**k - r2**k) / (r1 - r2)),),
            _SQRT + "; 'rp1' = r1**p",
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
            "'r2p1' read as r1**(2p); " + _MINUS,
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
            "'r21' read as r1**2; " + _MINUS,
        ),
        StatedEquation(
            "47",
            (("r1", 1 - alpha * h), ("r2", gamma), ("sum y_k", ema_sum)),
            f"{_MINUS}; {greek}; '(1� �2)' read as (1 - gamma**2)",
        ),
        StatedEquation(
            "48",
            (
                ("sqrt y_0", sp.sqrt(A0) / (1 - gamma)),
                ("sqrt y_1", sp.sqrt(A0) / (1 - gamma)),
                ("y_t", ratio**2 * A0 / (1 - gamma) ** 2),
            ),
            f"{_SQRT}; {_MINUS}; {greek}; the fraction '1 / 1��' read as 1/(1-gamma)",
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


@functools.cache
def stated_equations() -> dict[str, StatedEquation]:
    """All encoded equations (17)-(49), keyed by number.

    Returns:
        A dictionary from ``"17"`` ... ``"49"`` to :class:`StatedEquation`.
    """
    eqs = _momentum_equations() + _ema_equations()
    return {e.number: e for e in eqs}
