"""Audit of the appendix: every printed equation (17)-(49) against the derivation.

Each check compares the encoded printed form (:mod:`analysis.symbolic.stated`)
with what :mod:`analysis.symbolic.recursions`, :mod:`~analysis.symbolic.theorems`
and :mod:`~analysis.symbolic.claims` derive from the update rules, and returns
an :class:`AuditEntry` whose status is computed, never asserted:

* ``verified``: the printed form (with its stated initial conditions) equals the
  derivation;
* ``erratum``: it does not; ``derived`` holds the corrected expression and the
  note says what differs;
* ``ambiguous``: the printed form is missing (eqns 21 and 38 are images).

This module holds the entry type, the driver and the checks of the moment
recursions (17-22, 35-38); :mod:`analysis.symbolic.audit_solutions` and
:mod:`analysis.symbolic.audit_bounds` check the solutions (23-34, 39-49).

References:
    Zhang et al. (2019), appendices B, C and D.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import sympy as sp

from analysis.symbolic.claims import critical_damping, momentum_char_poly
from analysis.symbolic.recursions import (
    Method,
    covariance_recursion,
    mean_recursion,
    moment_symbols,
    second_moment_recursion,
    second_moment_system,
    update_rule,
)
from analysis.symbolic.stated import StatedEquation, stated_equations
from analysis.symbolic.symbols import alpha, h, r1, r2
from analysis.symbolic.ztransform import is_zero

__all__ = ["AuditEntry", "Status", "audit_appendix", "compare_parts"]


class Status(StrEnum):
    """Verdict on one printed equation."""

    VERIFIED = "verified"
    ERRATUM = "erratum"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class AuditEntry:
    """The verdict on one equation.

    Attributes:
        equation: Equation number (``"18"``) or claim label.
        status: The computed verdict.
        stated: The encoded printed form (a sympy string).
        derived: The derived form; for an erratum, the corrected expression.
        note: What was checked and, for an erratum, what differs.
        interpretation: How the garbled extraction was read.
    """

    equation: str
    status: Status
    stated: str
    derived: str
    note: str
    interpretation: str

    def to_json(self) -> dict[str, str]:
        """A JSON-serialisable dictionary of the entry."""
        return {
            "equation": self.equation,
            "status": self.status.value,
            "stated": self.stated,
            "derived": self.derived,
            "note": self.note,
            "interpretation": self.interpretation,
        }


def render_parts(parts: dict[str, sp.Basic | str]) -> str:
    """``name: expr; ...`` with sympy's string printer."""
    return "; ".join(f"{key}: {sp.sstr(value)}" for key, value in parts.items())


def compare_parts(
    stated: StatedEquation,
    derived: dict[str, sp.Basic],
    subs: dict[sp.Symbol, sp.Expr] | None = None,
) -> list[tuple[str, sp.Expr]]:
    """Names and residuals ``printed - derived`` of the parts that differ.

    Args:
        stated: The printed equation.
        derived: Derived value for each part to compare (by part name).
        subs: Substitution applied to both sides first (e.g. parameters through
            the roots).

    Returns:
        A list of ``(part name, simplified residual)``; empty when all agree.
    """
    subs = subs or {}
    bad = []
    for name, value in derived.items():
        raw = sp.sympify(stated.part(name)) - value
        diff = raw.subs(subs) if subs else raw
        if not is_zero(diff):
            # Show the residual in the model parameters when it has no roots.
            shown = raw if not raw.has(r1, r2) else diff
            bad.append((name, sp.factor(sp.simplify(shown))))
    return bad


def entry_from_comparison(
    stated: StatedEquation,
    derived: dict[str, sp.Basic],
    checked: str,
    *,
    subs: dict[sp.Symbol, sp.Expr] | None = None,
    explain: dict[str, str] | None = None,
) -> AuditEntry:
    """Build an entry: verified if every compared part agrees, else an erratum.

    Args:
        stated: The printed equation.
        derived: Derived value per part name (the corrected form on mismatch).
        checked: Sentence saying what the derivation is.
        subs: Optional substitution applied before comparing.
        explain: Extra sentence per part name, used only if that part differs.

    Returns:
        The :class:`AuditEntry`.
    """
    bad = compare_parts(stated, derived, subs)
    explain = explain or {}
    if not bad:
        status, note = Status.VERIFIED, checked
    else:
        status = Status.ERRATUM
        diffs = "; ".join(
            f"{name}: printed - derived = {sp.sstr(res)}"
            + (f" ({explain[name]})" if name in explain else "")
            for name, res in bad
        )
        note = f"{checked} Differs in {diffs}."
    return AuditEntry(
        stated.number,
        status,
        stated.render(),
        render_parts(derived),
        note,
        stated.interpretation,
    )


def coefficient_diffs(
    stated: StatedEquation, derived: dict[str, sp.Expr], symbols: tuple[sp.Symbol, ...]
) -> dict[str, str]:
    """Per part, which moment coefficients differ (printed vs derived).

    Args:
        stated: The printed equation.
        derived: Derived right-hand side per part name.
        symbols: The moment symbols whose coefficients are compared.

    Returns:
        Part name -> sentence listing ``coefficient of S: printed a, derived b``
        (only parts with a difference).
    """
    out = {}
    for name, value in derived.items():
        printed = sp.expand(sp.sympify(stated.part(name)))
        value = sp.expand(value)
        diffs = [
            f"coefficient of {sym}: printed {sp.sstr(sp.factor(printed.coeff(sym)))}, "
            f"derived {sp.sstr(sp.factor(value.coeff(sym)))}"
            for sym in symbols
            if not is_zero(printed.coeff(sym) - value.coeff(sym))
        ]
        if diffs:
            out[name] = "; ".join(diffs)
    return out


def _moment_symbols_of(method: Method) -> tuple[sp.Symbol, ...]:
    mo = moment_symbols(update_rule(method).state)
    return (*mo.mean, *set(mo.cov), *set(mo.second))


def _symmetric_entries(mat: sp.Matrix, names: tuple[str, ...]) -> dict[str, sp.Expr]:
    n = mat.shape[0]
    vals = [mat[i, i] for i in range(n)] + [
        mat[i, j] for i in range(n) for j in range(i + 1, n)
    ]
    return dict(zip(names, vals, strict=True))


def _check_means(number: str, method: Method) -> AuditEntry:
    stated = stated_equations()[number]
    names = tuple(name for name, _ in stated.parts)
    derived = dict(zip(names, mean_recursion(update_rule(method)), strict=True))
    return entry_from_comparison(
        stated,
        derived,
        "Means of the update rule with E[eps] = 0.",
        explain=coefficient_diffs(stated, derived, _moment_symbols_of(method)),
    )


def _check_variances(number: str, method: Method) -> AuditEntry:
    stated = stated_equations()[number]
    cov = covariance_recursion(update_rule(method))
    names = tuple(name for name, _ in stated.parts)
    derived = dict(zip(names, (cov[0, 0], cov[1, 1]), strict=True))
    return entry_from_comparison(
        stated,
        derived,
        "Variances of the update rule with V[eps] = c/B, eps independent of the state.",
        explain=coefficient_diffs(stated, derived, _moment_symbols_of(method)),
    )


def _check_covariance(number: str, method: Method) -> AuditEntry:
    stated = stated_equations()[number]
    cov = covariance_recursion(update_rule(method))
    derived = {"Cov(t+1)": cov[0, 1]}
    return entry_from_comparison(
        stated,
        derived,
        "Covariance of the two updated states (means cancel exactly).",
        explain=coefficient_diffs(stated, derived, _moment_symbols_of(method)),
    )


def _check_second_moments(number: str, method: Method) -> AuditEntry:
    stated = stated_equations()[number]
    names = tuple(name for name, _ in stated.parts)
    derived = _symmetric_entries(second_moment_recursion(update_rule(method)), names)
    return entry_from_comparison(
        stated,
        derived,
        "Raw second moments A = E[.]^2 + V[.] and C = E E + Cov of the update.",
        explain=coefficient_diffs(stated, derived, _moment_symbols_of(method)),
    )


def _check_absent_system(number: str, method: Method) -> AuditEntry:
    stated = stated_equations()[number]
    trans, noise, v = second_moment_system(update_rule(method))
    derived = {"v": sp.Matrix(v), "T": trans, "n": noise}
    return AuditEntry(
        number,
        Status.AMBIGUOUS,
        stated.render(),
        "v(t+1) = T v(t) + n; " + render_parts(derived),
        "The printed form is absent (an image in the source); the matrix form of "
        "the preceding system is derived instead and cannot be compared.",
        stated.interpretation,
    )


def _check_char_poly() -> AuditEntry:
    stated = stated_equations()["22"]
    if not critical_damping().eigenvalues_are_lifted:
        raise ValueError("eigenvalues of T are not the lifted roots")
    return entry_from_comparison(
        stated,
        {"det(T - lambda I)": momentum_char_poly()},
        "det(T - lambda I) of the derived transition matrix of (20); its roots are "
        "r1^2, r2^2 and r1 r2 = beta (T is the quadratic lift of the mean matrix).",
    )


def _check_critical_damping() -> AuditEntry:
    stated = stated_equations()["22"]
    crit = critical_damping()
    gap_positive = bool(crit.derivative_gap.subs({alpha: 1, h: 1}).is_positive) and (
        crit.derivative_gap.free_symbols <= {alpha, h}
    )
    beta_ok = is_zero(sp.expand(stated.part("critical beta") - crit.beta_star))
    ok = (
        beta_ok and crit.all_equal_beta and crit.eigenvalues_are_lifted and gap_positive
    )
    note = (
        "beta* solves tr(M)^2 = 4 det(M) (double root of the mean recursion); at "
        "beta* det(T - lambda I) = -(lambda - beta*)^3. Fastest: the spectral radius "
        "is max(|r1|^2, |r2|^2) >= r1 r2 = beta, equal to beta for beta >= beta*, "
        f"and below beta* the larger real root decreases in beta since "
        f"(tr(M) - 2)^2 - disc = {sp.sstr(crit.derivative_gap)} > 0; so beta* "
        "minimises it."
    )
    return AuditEntry(
        "22 (critical momentum)",
        Status.VERIFIED if ok else Status.ERRATUM,
        f"beta = {sp.sstr(stated.part('critical beta'))} makes all eigenvalues "
        "equal beta and converges fastest",
        f"beta* = {sp.sstr(crit.beta_star)} (other root of the discriminant: "
        f"{sp.sstr([b for b in crit.candidates if b != crit.beta_star])}, > 1)",
        note,
        stated.interpretation,
    )


def _checks() -> list[Callable[[], AuditEntry | list[AuditEntry]]]:
    # Imported here: the solution checks import this module's helpers.
    from analysis.symbolic import audit_bounds as sol

    mom, ema = Method.MOMENTUM, Method.EMA
    return [
        lambda: _check_means("17", mom),
        lambda: _check_variances("18", mom),
        lambda: _check_covariance("19", mom),
        lambda: _check_second_moments("20", mom),
        lambda: _check_absent_system("21", mom),
        _check_char_poly,
        _check_critical_damping,
        *sol.momentum_solution_checks(),
        lambda: _check_means("35", ema),
        lambda: _check_variances("36", ema),
        lambda: _check_covariance("37", ema),
        lambda: _check_absent_system("38", ema),
        *sol.ema_solution_checks(),
        sol.check_effective_rate,
    ]


@functools.cache
def audit_appendix() -> tuple[AuditEntry, ...]:
    """Check every equation (17)-(49) and the two claims; cached.

    Returns:
        The entries in equation order (claims next to their equations; the E.3
        effective-rate claim last).
    """
    out: list[AuditEntry] = []
    for check in _checks():
        res = check()
        out.extend(res if isinstance(res, list) else [res])
    return tuple(out)
