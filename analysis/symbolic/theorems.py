"""Closed forms of Theorems 1 (momentum) and 2 (EMA of iterates), and the SGD risk.

For a 2-state optimizer with mean matrix ``M`` and noise gain ``u`` (from
:mod:`analysis.symbolic.recursions`), the second moments after ``t`` steps are

.. math::

    v(t) = T^t v(0) + \\sum_{k=1}^{t} T^{k-1} n, \\qquad
    T = \\operatorname{lift}(M),\\ n = \\tfrac{c}{B}\\operatorname{lift}(u),

so the loss component is the square of one component of ``M^t w(0)`` plus the
squares of the same component of ``M^{k-1} u``. Each such component solves the
second-order recurrence of
:func:`analysis.symbolic.ztransform.cayley_hamilton_recurrence`, which is solved by
Z-transform. Everything here is derived; the paper's printed
formulas are only compared against in :mod:`analysis.symbolic.audit`.

The loss component is ``theta`` for momentum and ``theta_avg`` for EMA.

References:
    Zhang et al. (2019), appendix C eqns (23)-(34), appendix D eqns (39)-(49),
    and the SGD risk of section 3 (eqn 6).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

from analysis.symbolic.recursions import (
    Method,
    as_method,
    second_moment_system,
    update_rule,
)
from analysis.symbolic.symbols import A0, B, alpha, beta, c, gamma, h, k, r1, r2, t
from analysis.symbolic.ztransform import (
    Recurrence,
    cayley_hamilton_recurrence,
    geometric_sum,
    inverse_z_transform,
    is_zero,
    s_prod,
    s_sum,
    to_symmetric,
    z_transform,
)

__all__ = [
    "ScalarSolution",
    "bound",
    "exact_second_moment",
    "initial_state",
    "iterate_second_moments",
    "loss_component",
    "noise_solution",
    "noise_sum",
    "noise_tail",
    "root_parametrization",
    "roots",
    "sgd_second_moment",
    "sgd_steady_state",
    "signed_noise_root",
    "transient_solution",
]


def _two_state(method: Method) -> Method:
    method = as_method(method)
    if method is Method.SGD:
        raise ValueError("method must be a two-state optimizer (momentum or ema)")
    return method


def loss_component(method: Method) -> int:
    """Index of the state whose second moment is the reported loss.

    Args:
        method: ``Method.MOMENTUM`` (loss of ``theta``) or ``Method.EMA`` (loss of
            the average ``theta_avg``).

    Returns:
        0 or 1.

    Raises:
        ValueError: For ``Method.SGD`` (one state only).
    """
    return 1 if _two_state(method) is Method.EMA else 0


def initial_state(method: Method) -> sp.Matrix:
    """``w(0) / theta(0)``: velocity starts at 0; the average starts at ``theta(0)``.

    Args:
        method: Momentum or EMA.

    Returns:
        Column vector of shape ``(2, 1)``.
    """
    return sp.Matrix([1, 0] if _two_state(method) is Method.MOMENTUM else [1, 1])


def roots(method: Method) -> tuple[sp.Expr, sp.Expr]:
    """The two roots of ``Z**2 - tr(M) Z + det(M)`` in the model parameters.

    Args:
        method: Momentum or EMA.

    Returns:
        ``(r1, r2)``; for momentum ``((tau + sqrt(tau**2 - 4 beta)) / 2, ...)`` with
        ``tau = 1 - alpha h + beta`` (complex for under-damped momentum), for EMA
        ``(1 - alpha h, gamma)``.
    """
    method = _two_state(method)
    a1, a0 = cayley_hamilton_recurrence(update_rule(method).transition)
    x = sp.Symbol("x")
    if method is Method.EMA:
        # The EMA matrix is triangular: its roots are rational in the parameters.
        found = sorted(
            sp.roots(sp.Poly(x**2 - a1 * x - a0, x)), key=lambda e: e.has(gamma)
        )
    else:
        disc = sp.sqrt(sp.expand(a1**2 + 4 * a0))
        found = [(a1 + disc) / 2, (a1 - disc) / 2]
    if len(found) != 2 or not all(is_zero(r**2 - a1 * r - a0) for r in found):
        raise ValueError("root computation failed")
    return found[0], found[1]


def root_parametrization(method: Method) -> dict[sp.Symbol, sp.Expr]:
    """Express the model parameters through the roots (for exact comparisons).

    From ``r1 + r2 = tr(M)`` and ``r1 r2 = det(M)``: momentum has
    ``beta = r1 r2``, ``alpha h = 1 + r1 r2 - r1 - r2``; EMA has ``gamma = r2``,
    ``alpha h = 1 - r1``. Substituting these turns every closed form into a
    rational function of ``r1, r2`` (and ``r1**t, r2**t``).

    Args:
        method: Momentum or EMA.

    Returns:
        A substitution dictionary for ``h`` and ``beta`` or ``gamma``.
    """
    if _two_state(method) is Method.MOMENTUM:
        sub = {beta: r1 * r2, h: (1 + r1 * r2 - r1 - r2) / alpha}
    else:
        sub = {gamma: r2, h: (1 - r1) / alpha}
    mat = update_rule(method).transition.subs(sub)
    if not (is_zero(mat.trace() - r1 - r2) and is_zero(mat.det() - r1 * r2)):
        raise ValueError("root parametrization is inconsistent")
    return sub


def signed_noise_root(method: Method) -> sp.Matrix:
    """``q_1``: the signed square root of the noise vector, ``n = lift(q_1)``.

    ``q_1 = -sqrt(c/B) u`` (the overall sign is free, since only products of
    components enter the moments; it is chosen so that the ``theta`` component
    is ``+sqrt(alpha**2 c / B)`` as in the paper).

    Args:
        method: Momentum or EMA.

    Returns:
        Column vector of shape ``(2, 1)``.
    """
    return -sp.sqrt(c / B) * update_rule(_two_state(method)).noise_gain


@dataclass(frozen=True)
class ScalarSolution:
    """A component ``y_k`` of ``M**k w`` solved by Z-transform.

    Attributes:
        recurrence: The recurrence in the model parameters.
        transform: ``Y(Z)`` with the denominator written through ``r1, r2``.
        closed: ``y_k`` as an expression in ``k``, ``r1``, ``r2``.
        coefficients: ``(A_1, A_2)`` with ``y_k = A_1 r1**k + A_2 r2**k``.
    """

    recurrence: Recurrence
    transform: sp.Expr
    closed: sp.Expr
    coefficients: tuple[sp.Expr, sp.Expr]


def _solve(method: Method, y0: sp.Expr, y1: sp.Expr) -> ScalarSolution:
    mat = update_rule(method).transition
    a1, a0 = cayley_hamilton_recurrence(mat)
    rec = Recurrence(a1, a0, y0, y1)
    transform = z_transform(Recurrence(r1 + r2, -r1 * r2, y0, y1))
    closed, coefs = inverse_z_transform(transform)
    return ScalarSolution(rec, transform, closed, coefs)


@functools.cache
def noise_solution(method: Method) -> ScalarSolution:
    """Signed root of the noise terms: ``sqrt(x_k) = [M**(k-1) q_1]_j``, ``x_0 = 0``.

    The paper appends ``x_0 = 0``; this is consistent with the recurrence because
    the loss component of ``M**(-1) q_1`` vanishes (checked here).

    Args:
        method: Momentum (``j = theta``) or EMA (``j = theta_avg``).

    Returns:
        The :class:`ScalarSolution` with ``y0 = 0`` and ``y1 = [q_1]_j``.

    Raises:
        ValueError: If the appended zero were inconsistent with the dynamics.
    """
    method = _two_state(method)
    j = loss_component(method)
    q1 = signed_noise_root(method)
    before = update_rule(method).transition.inv() * q1
    if not is_zero(before[j]):
        raise ValueError("x_0 = 0 is not the value the recurrence implies")
    return _solve(method, sp.Integer(0), q1[j])


@functools.cache
def transient_solution(method: Method) -> ScalarSolution:
    """Deterministic part: ``[M**t w(0)]_j / theta(0)`` by Z-transform.

    The initial values are ``y_0 = [w(0)]_j`` and ``y_1 = [M w(0)]_j``; the
    transient of the loss component is ``y_t**2 A(theta(0))``.

    Args:
        method: Momentum or EMA.

    Returns:
        The :class:`ScalarSolution` (its ``closed`` is in the index ``k``).
    """
    method = _two_state(method)
    j = loss_component(method)
    w0 = initial_state(method)
    w1 = update_rule(method).transition * w0
    return _solve(method, w0[j], sp.expand(w1[j]))


@functools.cache
def noise_sum(method: Method) -> tuple[sp.Expr, sp.Expr, tuple[sp.Expr, ...]]:
    """``sum_{k >= 0} x_k``, the steady-state second moment of the loss component.

    Args:
        method: Momentum or EMA.

    Returns:
        ``(in_roots, in_parameters, ratios)``: the sum as a function of ``r1, r2``
        (eqns 30/46), the same after eliminating the roots through
        ``r1 + r2 = tr(M)``, ``r1 r2 = det(M)`` (eqns 31/47), and the geometric
        ratios that must have modulus < 1.
    """
    sol = noise_solution(method)
    total, ratios = geometric_sum(sol.closed**2, k, sp.Integer(0))
    in_roots = sp.factor(sp.cancel(total))
    mat = update_rule(method).transition
    sym = to_symmetric(in_roots)
    in_params = sp.factor(sym.subs({s_sum: mat.trace(), s_prod: mat.det()}))
    return in_roots, in_params, ratios


@functools.cache
def noise_tail(method: Method) -> sp.Expr:
    """``sum_{k > t} x_k``: what the bounds of Theorems 1 and 2 add to the exact value.

    Args:
        method: Momentum or EMA.

    Returns:
        An expression in ``t``, ``r1``, ``r2`` (each ``x_k`` is a square of a real
        number, so the tail is non-negative).
    """
    sol = noise_solution(method)
    tail, _ = geometric_sum(sol.closed**2, k, t + 1)
    return tail


def bound(method: Method) -> sp.Expr:
    """Theorem 1/2 bound: ``y_t**2 A(theta(0)) + sum_{k >= 0} x_k``.

    Args:
        method: Momentum or EMA.

    Returns:
        An expression in ``t``, ``r1``, ``r2``, ``A_0`` and the model parameters.

    References:
        Zhang et al. (2019), eqns (34) and (49).
    """
    trans = transient_solution(method).closed.subs(k, t)
    return trans**2 * A0 + noise_sum(method)[0]


def exact_second_moment(method: Method) -> sp.Expr:
    """Exact ``A(x_j(t)) = y_t**2 A(theta(0)) + sum_{k=1}^{t} x_k``.

    Args:
        method: Momentum or EMA.

    Returns:
        The bound minus :func:`noise_tail`.
    """
    return bound(method) - noise_tail(method)


def iterate_second_moments(method: Method, steps: int) -> list[sp.Matrix]:
    """``v(0), ..., v(steps)`` by iterating ``v(t+1) = T v(t) + n`` exactly.

    Args:
        method: Momentum or EMA.
        steps: Number of steps (>= 0).

    Returns:
        ``steps + 1`` column vectors of shape ``(3, 1)`` in the model parameters.

    Raises:
        ValueError: If ``steps`` is negative.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    trans, noise, _ = second_moment_system(update_rule(_two_state(method)))
    w0 = initial_state(method)
    v = sp.Matrix([w0[0] ** 2, w0[1] ** 2, w0[0] * w0[1]]) * A0
    out = [v]
    for _ in range(steps):
        v = (trans * v + noise).applyfunc(sp.expand)
        out.append(v)
    return out


@functools.cache
def sgd_second_moment() -> sp.Expr:
    """``E[theta_t**2]`` for SGD, solving ``A' = (1 - alpha h)**2 A + alpha**2 c/B``.

    The first-order recurrence comes from :func:`second_moment_system` and is
    solved with ``sympy.rsolve``; the result equals
    ``(1-alpha h)**(2t) A_0 + alpha**2 c/B (1 - (1-alpha h)**(2t)) /
    (1 - (1-alpha h)**2)``.

    Returns:
        An expression in ``t``, ``A_0`` and the model parameters.

    References:
        Zhang et al. (2019), eqn (6).
    """
    trans, noise, _ = second_moment_system(update_rule(Method.SGD))
    seq = sp.Function("a")
    # Solved with a symbolic ratio, then substituted: keeps the power in the form
    # ((1 - alpha h)**2)**t = (1 - alpha h)**(2t) rather than (alpha h - 1)**(2t).
    ratio, const = sp.symbols("rho q")
    sol = sp.rsolve(seq(t + 1) - ratio * seq(t) - const, seq(t), {seq(0): A0})
    mean_factor = update_rule(Method.SGD).transition[0, 0]
    if not is_zero(mean_factor**2 - trans[0, 0]):
        raise ValueError("SGD second-moment factor is not the squared mean factor")
    return sol.subs({ratio: mean_factor**2, const: noise[0]})


@functools.cache
def sgd_steady_state() -> sp.Expr:
    """Fixed point ``A* = T A* + n`` of the SGD second moment.

    Returns:
        ``alpha c / (B h (2 - alpha h))`` (derived, not typed in).
    """
    trans, noise, _ = second_moment_system(update_rule(Method.SGD))
    fixed = sp.Symbol("A_star")
    (sol,) = sp.solve(sp.Eq(fixed, trans[0, 0] * fixed + noise[0]), fixed)
    return sp.factor(sol)
