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

from analysis.symbolic.symbols import B, alpha, c, r1, r2, t

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


MINUS = "'�' after '(1' and between terms read as a minus sign"
SQRT = "'p' before x_p/y_p read as a square root"


def sqrt_ac_b() -> sp.Expr:
    return sp.sqrt(alpha**2 * c / B)


def two_root_ratio(num_shift: sp.Expr) -> sp.Expr:
    """``(r1**(t+1) - r2**(t+1) - s (r1**t - r2**t)) / (r1 - r2)`` as printed."""
    return (r1 ** (t + 1) - r2 ** (t + 1) - num_shift * (r1**t - r2**t)) / (r1 - r2)


@functools.cache
def stated_equations() -> dict[str, StatedEquation]:
    """All encoded equations (17)-(49), keyed by number.

    Returns:
        A dictionary from ``"17"`` ... ``"49"`` to :class:`StatedEquation`.
    """
    # Imported here: both modules build on the helpers above.
    from analysis.symbolic.stated_ema import ema_equations
    from analysis.symbolic.stated_momentum import momentum_equations

    eqs = momentum_equations() + ema_equations()
    return {e.number: e for e in eqs}
