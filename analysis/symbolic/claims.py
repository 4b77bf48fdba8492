"""Two qualitative claims of the paper, made exact: critical damping and the
effective learning rate of momentum.

* After eqn (22): with ``beta = (1 - sqrt(alpha h))**2`` all eigenvalues of the
  second-moment transition matrix equal ``beta``, "giving the fastest convergence".
  Since the eigenvalues of ``T = lift(M)`` are ``r1**2, r2**2, r1 r2`` and
  ``r1 r2 = beta``, the spectral radius is at least ``beta``, with equality exactly
  when ``|r1| = |r2|``. Below the critical value the roots are real and the
  larger one decreases with ``beta``; above it they are complex with modulus
  ``sqrt(beta)``, increasing with ``beta``. So the critical value minimises the
  spectral radius.
* Appendix E.3 / section 3.2: for small ``alpha``, momentum behaves like SGD with
  the effective rate ``alpha / (1 - beta)``. Made precise as series in ``alpha``:
  the slow root of momentum is ``1 - alpha h / (1 - beta) + O(alpha**2)`` (the SGD
  factor at the effective rate is ``1 - alpha h / (1 - beta)`` exactly), the
  transient's weight on it tends to 1, and the steady-state risks agree to first
  order in ``alpha`` (they differ at ``O(alpha**2)``).

References:
    Zhang et al. (2019), appendix B after eqn (22), appendix E.3 and section 3.2.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

from analysis.symbolic.recursions import Method, second_moment_system, update_rule
from analysis.symbolic.symbols import alpha, beta, h, lam, r1, r2
from analysis.symbolic.theorems import (
    noise_sum,
    root_parametrization,
    roots,
    sgd_steady_state,
    transient_solution,
)
from analysis.symbolic.ztransform import cayley_hamilton_recurrence, is_zero

__all__ = [
    "CriticalDamping",
    "EffectiveRate",
    "critical_damping",
    "effective_rate_series",
    "momentum_char_poly",
]


@functools.cache
def momentum_char_poly() -> sp.Expr:
    """``det(T - lambda I)`` of the momentum second-moment system, factored.

    Returns:
        A polynomial in ``lambda`` (cubic, leading coefficient ``-1``).

    References:
        Zhang et al. (2019), eqn (22).
    """
    trans, _, _ = second_moment_system(update_rule(Method.MOMENTUM))
    return sp.factor((trans - lam * sp.eye(3)).det())


@dataclass(frozen=True)
class CriticalDamping:
    """The critical momentum and the facts established about it.

    Attributes:
        candidates: Solutions in ``beta`` of ``disc = tr(M)**2 - 4 det(M) = 0``.
        beta_star: The candidate below 1 for ``0 < alpha h < 1``.
        eigenvalues_are_lifted: ``det(T - lambda I) = -(lambda - r1**2)
            (lambda - r2**2)(lambda - r1 r2)`` (checked through the roots).
        all_equal_beta: ``det(T - lambda I) = -(lambda - beta*)**3`` at ``beta*``.
        derivative_gap: ``(tau - 2)**2 - disc`` with ``tau = tr(M)``; positive
            means the larger real root decreases in ``beta`` below ``beta*``.
    """

    candidates: tuple[sp.Expr, ...]
    beta_star: sp.Expr
    eigenvalues_are_lifted: bool
    all_equal_beta: bool
    derivative_gap: sp.Expr


@functools.cache
def critical_damping() -> CriticalDamping:
    """Derive the critical momentum ``beta* = (1 - sqrt(alpha h))**2``.

    Returns:
        A :class:`CriticalDamping` record.

    References:
        Zhang et al. (2019), the sentence after eqn (22).
    """
    mat = update_rule(Method.MOMENTUM).transition
    a1, a0 = cayley_hamilton_recurrence(mat)
    disc = sp.expand(a1**2 + 4 * a0)
    candidates = tuple(sp.solve(disc, beta))
    # For 0 < alpha h < 1 exactly one candidate lies in (0, 1): test at alpha h = 1/4.
    probe = {alpha: sp.Rational(1, 4), h: 1}
    below_one = [b for b in candidates if 0 < b.subs(probe) < 1]
    if len(below_one) != 1:
        raise ValueError("expected exactly one critical momentum below 1")
    beta_star = below_one[0]
    poly = momentum_char_poly()
    lifted = -(lam - r1**2) * (lam - r2**2) * (lam - r1 * r2)
    eigen_ok = is_zero(poly.subs(root_parametrization(Method.MOMENTUM)) - lifted)
    equal_ok = is_zero(sp.expand(poly.subs(beta, beta_star) + (lam - beta_star) ** 3))
    gap = sp.factor(sp.expand((a1 - 2) ** 2 - disc))
    return CriticalDamping(candidates, beta_star, eigen_ok, equal_ok, gap)


@dataclass(frozen=True)
class EffectiveRate:
    """Series in ``alpha`` comparing momentum with SGD at ``alpha / (1 - beta)``.

    Attributes:
        slow_root: Series of the momentum root that tends to 1.
        sgd_factor: ``1 - alpha h / (1 - beta)``, SGD's contraction factor at the
            effective rate.
        transient_weight: Series of the weight of ``slow_root**t`` in the transient
            amplitude (tends to 1).
        fast_root_limit: The other root at ``alpha = 0`` (``beta``).
        steady_ratio: Series of steady-state risk of momentum over that of SGD at
            the effective rate.
        order: Truncation order (terms up to ``alpha**(order-1)`` kept).
    """

    slow_root: sp.Expr
    sgd_factor: sp.Expr
    transient_weight: sp.Expr
    fast_root_limit: sp.Expr
    steady_ratio: sp.Expr
    order: int

    def first_order_agrees(self) -> bool:
        """True if the slow root, weight and steady state match SGD to O(alpha)."""
        root_gap = sp.expand(self.slow_root - self.sgd_factor)
        return (
            root_gap.coeff(alpha, 0) == 0
            and sp.simplify(root_gap.coeff(alpha, 1)) == 0
            and sp.simplify(self.transient_weight.coeff(alpha, 0) - 1) == 0
            and sp.simplify(self.steady_ratio.coeff(alpha, 0) - 1) == 0
        )


@functools.cache
def effective_rate_series(order: int = 3) -> EffectiveRate:
    """Expand momentum's slow root, transient weight and steady state in ``alpha``.

    Args:
        order: Number of series terms (``>= 2``).

    Returns:
        An :class:`EffectiveRate` record.

    Raises:
        ValueError: If ``order < 2``.

    References:
        Zhang et al. (2019), appendix E.3 and section 3.2.
    """
    if order < 2:
        raise ValueError(f"order must be >= 2, got {order}")
    # 0 < beta < 1 matters for sqrt((1 - beta)**2) = 1 - beta; encode it through a
    # positive d = 1 - beta while expanding.
    d = sp.Symbol("d", positive=True)
    back = {d: 1 - beta}

    def series(expr: sp.Expr) -> sp.Expr:
        ser = sp.series(expr.subs(beta, 1 - d), alpha, 0, order).removeO()
        return sp.collect(sp.expand(ser), alpha, sp.factor).subs(back)

    slow, fast = roots(Method.MOMENTUM)
    weight = transient_solution(Method.MOMENTUM).coefficients[0]
    weight = weight.subs({r1: slow, r2: fast})
    steady_momentum = noise_sum(Method.MOMENTUM)[1]
    alpha_eff = alpha / (1 - beta)
    steady_sgd = sgd_steady_state().subs(alpha, alpha_eff)
    return EffectiveRate(
        slow_root=series(slow),
        sgd_factor=1 - alpha_eff * h,
        transient_weight=series(weight),
        fast_root_limit=sp.simplify(fast.subs(beta, 1 - d).subs(alpha, 0)).subs(back),
        steady_ratio=series(sp.cancel(steady_momentum / steady_sgd)),
        order=order,
    )
