"""The derived closed forms as vectorised numpy functions (via ``sympy.lambdify``).

The momentum and EMA closed forms are written in the roots ``r1, r2`` of
``z**2 - tr(M) z + det(M)``; here the roots are computed numerically in complex
arithmetic (under-damped momentum has complex-conjugate roots) and the real part
of the result is returned. The closed forms divide by ``r1 - r2`` and are
undefined at critical damping (momentum) or at ``gamma = 1 - alpha h`` (EMA).

Preconditioning enters through
:func:`analysis.symbolic.preconditioning.transformed_problem`: curvature
``h**(1-p)``, noise ``c h**(-2p)``, loss weight ``h``.

References:
    Zhang et al. (2019), eqns (31), (33), (34), (47)-(49) and eqn (6).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import StrEnum

import numpy as np
import sympy as sp

from analysis.symbolic.recursions import Method, as_method, update_rule
from analysis.symbolic.symbols import A0, B, alpha, beta, c, gamma, h, k, r1, r2, t
from analysis.symbolic.theorems import (
    bound,
    exact_second_moment,
    noise_sum,
    sgd_second_moment,
    sgd_steady_state,
    transient_solution,
)
from analysis.symbolic.ztransform import cayley_hamilton_recurrence

__all__ = ["Quantity", "risk", "second_moment"]


class Quantity(StrEnum):
    """Which closed form to evaluate."""

    EXACT = "exact"
    BOUND = "bound"
    TRANSIENT = "transient"
    STEADY_STATE = "steady_state"


def _coef(method: Method) -> sp.Symbol:
    return gamma if method is Method.EMA else beta


@functools.cache
def _expression(method: Method, quantity: Quantity) -> sp.Expr:
    if method is Method.SGD:
        full = sgd_second_moment()
        # SGD has no bound in the paper; its "bound" is transient + steady state,
        # the analogue of Theorems 1 and 2.
        table = {
            Quantity.EXACT: full,
            Quantity.BOUND: full.subs(c, 0) + sgd_steady_state(),
            Quantity.TRANSIENT: full.subs(c, 0),
            Quantity.STEADY_STATE: sgd_steady_state(),
        }
        return table[quantity]
    if quantity is Quantity.EXACT:
        return exact_second_moment(method)
    if quantity is Quantity.BOUND:
        return bound(method)
    if quantity is Quantity.TRANSIENT:
        return transient_solution(method).closed.subs(k, t) ** 2 * A0
    return noise_sum(method)[1]


@functools.cache
def _compiled(method: Method, quantity: Quantity) -> Callable[..., np.ndarray]:
    expr = _expression(method, quantity)
    args = (r1, r2, alpha, _coef(method), h, c, B, A0, t)
    return sp.lambdify(args, expr, modules="numpy")


@functools.cache
def _root_functions(method: Method) -> Callable[..., np.ndarray]:
    a1, a0 = cayley_hamilton_recurrence(update_rule(method).transition)
    return sp.lambdify((alpha, _coef(method), h), (a1, a0), modules="numpy")


def second_moment(
    method: Method | str,
    quantity: Quantity | str,
    lr: float | np.ndarray,
    coef: float | np.ndarray,
    curvature: float | np.ndarray,
    noise: float | np.ndarray,
    batch_size: float | np.ndarray,
    init_sq: float | np.ndarray,
    steps: int | np.ndarray,
) -> np.ndarray:
    """Evaluate a derived closed form of the loss component's second moment.

    Args:
        method: ``sgd``, ``momentum`` (loss of theta) or ``ema`` (loss of the
            average).
        quantity: ``exact``, ``bound``, ``transient`` or ``steady_state``.
        lr: ``alpha``; all array arguments broadcast together.
        coef: ``beta`` for momentum, ``gamma`` for EMA (ignored for SGD).
        curvature: ``h`` (already preconditioned, if any).
        noise: ``c`` (already preconditioned, if any).
        batch_size: ``B``.
        init_sq: ``A(theta(0)) = E[theta(0)**2]``.
        steps: ``t`` (non-negative integers).

    Returns:
        The broadcast array of second moments (float64).

    Raises:
        ValueError: For an unknown method or quantity, or negative steps.
    """
    method = as_method(method)
    try:
        quantity = Quantity(quantity)
    except ValueError as exc:
        raise ValueError(
            f"quantity must be one of {[q.value for q in Quantity]}, got {quantity!r}"
        ) from exc
    steps_arr = np.asarray(steps)
    if np.any(steps_arr < 0):
        raise ValueError(f"steps must be non-negative, got {steps!r}")
    lr_c = np.asarray(lr, dtype=np.float64)
    coef_c = np.asarray(coef, dtype=np.float64)
    h_c = np.asarray(curvature, dtype=np.float64)
    if method is Method.SGD:
        roots = (np.zeros(()), np.zeros(()))
    else:
        a1, a0 = _root_functions(method)(lr_c, coef_c, h_c)
        disc = np.sqrt(np.asarray(a1 * a1 + 4.0 * a0, dtype=np.complex128))
        roots = ((a1 + disc) / 2.0, (a1 - disc) / 2.0)
    with np.errstate(all="ignore"):
        val = _compiled(method, quantity)(
            *roots,
            lr_c.astype(np.complex128),
            coef_c,
            h_c,
            np.asarray(noise, dtype=np.float64),
            np.asarray(batch_size, dtype=np.float64),
            np.asarray(init_sq, dtype=np.float64),
            steps_arr,
        )
    return np.real(np.asarray(val, dtype=np.complex128))


def risk(
    method: Method | str,
    quantity: Quantity | str,
    lr: float | np.ndarray,
    coef: float | np.ndarray,
    h_value: float | np.ndarray,
    c_value: float | np.ndarray,
    batch_size: float | np.ndarray,
    init_sq: float | np.ndarray,
    steps: int | np.ndarray,
    precond_power: float = 0.0,
) -> np.ndarray:
    """Per-dimension risk ``h/2 * A`` with preconditioning ``P = h**p``.

    The dynamics are those of curvature ``h**(1-p)`` and noise ``c h**(-2p)``; the
    loss weight stays ``h`` (:mod:`analysis.symbolic.preconditioning`).

    Args:
        method: As in :func:`second_moment`.
        quantity: As in :func:`second_moment`.
        lr: ``alpha``.
        coef: ``beta`` or ``gamma``.
        h_value: Curvature ``h`` of the problem (unpreconditioned).
        c_value: Noise ``c`` of the problem (unpreconditioned).
        batch_size: ``B``.
        init_sq: ``E[theta(0)**2]``.
        steps: ``t``.
        precond_power: ``p``.

    Returns:
        The broadcast array of per-dimension risks.
    """
    hv = np.asarray(h_value, dtype=np.float64)
    return (
        0.5
        * hv
        * second_moment(
            method,
            quantity,
            lr,
            coef,
            hv ** (1.0 - precond_power),
            np.asarray(c_value, dtype=np.float64) * hv ** (-2.0 * precond_power),
            batch_size,
            init_sq,
            steps,
        )
    )
