"""Audit of the solution steps of Theorems 1 and 2: eqns (23)-(31) and (39)-(47).

Readings used (recorded in every affected note):

* The components ``x_k, y_k, z_k`` are those of ``T**(k-1) n`` (eqns 24/40), and
  their signed square roots are the components of ``M**(k-1) q_1`` with
  ``n = lift(q_1)``; signs are free (only products enter), the paper's sign makes
  ``sqrt x_1 = sqrt(alpha**2 c / B)``.
* Eqns (25) and (41) print the recursion of a *rescaled* second component,
  ``sqrt(y~) = d sqrt(y)``. The factor ``d`` is computed from the printed matrix
  (``S = D M D**-1`` with ``D = diag(1, d)``), which is what makes those two
  equations errata. The later equations of appendix D use that rescaled
  ``y~ = d**2 y`` throughout (their initial value ``sqrt(alpha**2 c / B)`` and the
  factor ``(1 - gamma)**2`` between (47) and (49) fix it), so they are checked in
  the paper's own variable ``y~``; otherwise one slip would cascade.

References:
    Zhang et al. (2019), appendices C and D.
"""

from __future__ import annotations

import functools

import sympy as sp

from analysis.symbolic.audit import (
    AuditEntry,
    Status,
    entry_from_comparison,
)
from analysis.symbolic.recursions import Method, second_moment_system, update_rule
from analysis.symbolic.stated import stated_equations
from analysis.symbolic.symbols import k, r1, r2, t
from analysis.symbolic.theorems import (
    loss_component,
    noise_solution,
    noise_sum,
    roots,
    signed_noise_root,
)
from analysis.symbolic.ztransform import (
    Recurrence,
    is_zero,
    satisfies_recurrence,
    z_transform,
)

__all__ = [
    "describe_rescaling",
    "loss_scale",
    "printed_scale",
    "reading_note",
]

_SECTION = {Method.MOMENTUM: ("23", "24", "25"), Method.EMA: ("39", "40", "41")}
_MATRIX_PART = "[sqrt x, sqrt y](k+1) = S [sqrt x, sqrt y](k), S"


@functools.cache
def printed_scale(method: Method) -> sp.Expr | None:
    """``d`` with ``S = diag(1, d) M diag(1, d)**-1`` for the printed (25)/(41).

    Args:
        method: Momentum (eqn 25) or EMA (eqn 41).

    Returns:
        1 if the printed matrix is the derived one, the unique ``d`` of a diagonal
        rescaling otherwise, or None if no such rescaling exists.
    """
    printed = stated_equations()[_SECTION[method][2]].part(_MATRIX_PART)
    mat = update_rule(method).transition
    if is_zero(printed - mat):
        return sp.Integer(1)
    d = sp.Symbol("d")
    diag = sp.diag(1, d)
    sols = sp.solve(list(diag * mat - printed * diag), d, dict=True)
    if len(sols) != 1 or sols[0][d] == 0:
        return None
    return sp.factor(sols[0][d])


def loss_scale(method: Method) -> sp.Expr:
    """Scale of the paper's loss-component root (1 for momentum: x is unscaled)."""
    if loss_component(method) == 0:
        return sp.Integer(1)
    return printed_scale(method) or sp.Integer(1)


def describe_rescaling(scale: sp.Expr) -> str:
    """``y~ = ...`` for ``sqrt(y~) = scale sqrt(y)``, e.g. ``y~ = y/(gamma - 1)**2``."""
    num, den = sp.fraction(sp.factor(scale**2))
    if den == 1:
        return f"y~ = {sp.sstr(num)}*y"
    return f"y~ = {'' if num == 1 else sp.sstr(num) + '*'}y/{sp.sstr(den)}"


def reading_note(method: Method) -> str:
    scale = loss_scale(method)
    if scale == 1:
        return ""
    return (
        f" Checked in the paper's rescaled variable {describe_rescaling(scale)} "
        "introduced by eqn (41); the y of eqn (40) is the A(theta_avg) component."
    )


def check_sum_form(method: Method) -> AuditEntry:
    number = _SECTION[method][0]
    stated = stated_equations()[number]
    trans, noise, _ = second_moment_system(update_rule(method))
    v0 = sp.Matrix(sp.symbols("v0_1:4"))
    lower, upper = stated.part("sum lower"), stated.part("sum upper")
    power = stated.part("power of T")

    def form(t_val: int, top: sp.Expr) -> sp.Matrix:
        total = trans**t_val * v0
        for kk in range(int(lower), int(top.subs(t, t_val)) + 1):
            total += trans ** int(power.subs(k, kk)) * noise
        return total

    iterate, printed_ok, corrected_ok = v0, True, True
    for t_val in range(3):
        printed_ok &= is_zero(form(t_val, upper) - iterate)
        corrected_ok &= is_zero(form(t_val, t) - iterate)
        iterate = trans * iterate + noise
    if not corrected_ok:
        raise ValueError("the derived solution of v(t+1) = T v(t) + n failed")
    j = loss_component(method)
    q1 = signed_noise_root(method)
    mat = update_rule(method).transition
    squares = all(
        is_zero((trans**kk * noise)[j] - ((mat**kk * q1)[j]) ** 2) for kk in range(3)
    )
    cross_first = sp.factor(noise[2])
    cross_note = (
        f" It is not a vector inequality: the first cross term z_1 = "
        f"{sp.sstr(cross_first)} is negative."
        if cross_first.could_extract_minus_sign()
        else ""
    )
    relation_ok = stated.part("relation") == "<=" and squares
    loss_name = "A(theta)" if j == 0 else "A(theta_avg)"
    checked = (
        "Solved v(t+1) = T v(t) + n and compared with iterating it at t = 0, 1, 2. "
        f"The '<=' holds for the loss component ({loss_name}), whose terms are "
        "squares of real numbers." + cross_note
    )
    if printed_ok and relation_ok:
        status, note = Status.VERIFIED, checked
    else:
        status = Status.ERRATUM
        extra = (form(0, upper) - v0).applyfunc(sp.factor)
        note = (
            f"{checked} With the printed upper limit {sp.sstr(upper)} the equality "
            f"fails: at t = 0 it gives v(0) + {sp.sstr(list(extra))} instead of "
            "v(0); the upper limit must be t."
        )
    return AuditEntry(
        number,
        status,
        stated.render(),
        "v(t) = T**t v(0) + Sum_{k=1}^{t} T**(k-1) n <= T**t v(0) + "
        "Sum_{k=1}^{oo} T**(k-1) n (loss component)",
        note,
        stated.interpretation,
    )


def check_definition(method: Method) -> AuditEntry:
    number = _SECTION[method][1]
    stated = stated_equations()[number]
    trans, noise, _ = second_moment_system(update_rule(method))
    q1 = signed_noise_root(method)
    lifted = sp.Matrix([q1[0] ** 2, q1[1] ** 2, q1[0] * q1[1]])
    sol = noise_solution(method)  # raises if the appended zero were inconsistent
    ok = is_zero(lifted - noise) and sol.recurrence.y0 == 0
    name = "x_0" if loss_component(method) == 0 else "y_0"
    return AuditEntry(
        number,
        Status.VERIFIED if ok else Status.ERRATUM,
        stated.render(),
        f"[x_k, y_k, z_k] = T**(k-1) n = lift(M**(k-1) q_1), q_1 = {sp.sstr(q1.T)}",
        "A definition (re-indexing). Checked that n is the quadratic lift of the "
        f"signed root q_1 and that the appended {name} = 0 is the value the "
        "second-order recurrence itself gives one step before k = 1, so the "
        "recurrence may start at k = 0.",
        stated.interpretation,
    )


def check_root_system(method: Method) -> AuditEntry:
    number = _SECTION[method][2]
    stated = stated_equations()[number]
    mat = update_rule(method).transition
    scale = printed_scale(method)
    entry = entry_from_comparison(
        stated,
        {_MATRIX_PART: mat},
        "The signed roots [sqrt x_k, sqrt y_k] are the components of M**(k-1) q_1, "
        "so they evolve by the mean matrix M of the update.",
    )
    if entry.status is Status.ERRATUM and scale is not None:
        affected = (
            "x_k is unaffected, so eqn (26) on stands"
            if loss_component(method) == 0
            else "the later equations use this rescaled y~ consistently"
        )
        entry = AuditEntry(
            entry.equation,
            entry.status,
            entry.stated,
            entry.derived,
            f"{entry.note} The printed matrix is diag(1, d) M diag(1, d)**-1 with "
            f"d = {sp.sstr(scale)}: it is the recursion of sqrt(y~) = d sqrt(y), "
            f"i.e. of {describe_rescaling(scale)}, not of the y defined in eqn "
            f"({_SECTION[method][1]}); {affected}.",
            entry.interpretation,
        )
    return entry


def check_recurrence(number: str, method: Method, names: tuple[str, ...]):
    stated = stated_equations()[number]
    rec = noise_solution(method).recurrence
    d = loss_scale(method)
    derived = dict(zip(names, (rec.a1, rec.a0, rec.y0 * d, rec.y1 * d), strict=True))
    return entry_from_comparison(
        stated,
        derived,
        "Cayley-Hamilton for M: y_{k+1} = tr(M) y_k - det(M) y_{k-1}; initial values "
        "from q_1 and the appended zero." + reading_note(method),
    )


def check_z_domain(number: str, method: Method, name: str) -> AuditEntry:
    stated = stated_equations()[number]
    sol = noise_solution(method)
    rec, d = sol.recurrence, loss_scale(method)
    in_params = z_transform(Recurrence(rec.a1, rec.a0, rec.y0 * d, rec.y1 * d))
    derived = {
        f"{name}(Z)": in_params,
        f"{name}(Z) partial": sp.factor(sol.transform * d),
        "roots of": rec.char_poly(),
    }
    return entry_from_comparison(
        stated,
        derived,
        "Z-transform by the shift rule; partial fractions through the roots."
        + reading_note(method),
        explain={
            f"{name}(Z)": "the constant term of the denominator must be det(M), "
            "as in the root polynomial printed right after the equation"
        },
    )


def check_closed(number: str, method: Method, name: str, squared: bool):
    stated = stated_equations()[number]
    sol = noise_solution(method)
    rec = sol.recurrence
    if not satisfies_recurrence(
        sol.closed, Recurrence(r1 + r2, -r1 * r2, rec.y0, rec.y1)
    ):
        raise ValueError("the inverse Z-transform does not solve the recurrence")
    root_k = sol.closed * loss_scale(method)
    value = sp.expand(root_k**2) if squared else root_k
    return entry_from_comparison(
        stated,
        {name: value},
        "Inverse Z-transform by residues at r1, r2 (checked against the recurrence "
        "and its initial values)." + reading_note(method),
    )


def check_sum_roots(number: str, method: Method, name: str) -> AuditEntry:
    stated = stated_equations()[number]
    total = noise_sum(method)[0] * loss_scale(method) ** 2
    return entry_from_comparison(
        stated,
        {name: total, f"{name}, combined": total},
        "Geometric series of r1**(2k), r2**(2k), (r1 r2)**k, convergent for "
        "|r1|, |r2| < 1." + reading_note(method),
    )


def check_sum_params_momentum() -> AuditEntry:
    stated = stated_equations()["31"]
    mat = update_rule(Method.MOMENTUM).transition
    return entry_from_comparison(
        stated,
        {
            "sum x_k": noise_sum(Method.MOMENTUM)[1],
            "r1 r2": mat.det(),
            "r1 + r2": mat.trace(),
        },
        "The sum of (30) is symmetric in r1, r2; rewritten through r1 + r2 = tr(M) "
        "and r1 r2 = det(M). It is the exact steady state of A(theta).",
    )


def check_sum_params_ema() -> AuditEntry:
    stated = stated_equations()["47"]
    r_a, r_b = roots(Method.EMA)
    scale2 = loss_scale(Method.EMA) ** 2
    return entry_from_comparison(
        stated,
        {"r1": r_a, "r2": r_b, "sum y_k": noise_sum(Method.EMA)[1] * scale2},
        "Roots of the triangular EMA mean matrix; sum of (46) through them."
        + reading_note(Method.EMA),
    )
