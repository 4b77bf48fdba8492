"""Preconditioning by ``P = H**p`` is plain optimisation of a transformed NQM.

Per dimension the preconditioned step uses ``h**(-p) (h theta + eps)``, so

.. math::

    h^{-p}(h\\theta + \\varepsilon) = \\tilde h\\,\\theta + \\tilde\\varepsilon,
    \\qquad \\tilde h = h^{1-p},\\quad
    \\mathbb{V}[\\tilde\\varepsilon] = h^{-2p} c / B,

i.e. the iterates follow the unpreconditioned dynamics of a problem with curvature
``h**(1-p)`` and noise ``c h**(-2p)``. The loss is still ``h theta**2 / 2``: the
preconditioner changes the path, not the objective, so the risk keeps the weight
``h``. This module derives the equivalence from the update rules for SGD,
momentum and EMA.

References:
    Zhang et al. (2019), section 3.5 (preconditioning with ``H**p``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

from analysis.symbolic.recursions import (
    Method,
    as_method,
    covariance_recursion,
    mean_recursion,
    second_moment_system,
    update_rule,
)
from analysis.symbolic.symbols import c, h, p
from analysis.symbolic.theorems import sgd_second_moment, sgd_steady_state
from analysis.symbolic.ztransform import is_zero

__all__ = [
    "PreconditionedEquivalence",
    "preconditioned_equivalence",
    "preconditioned_sgd_risk",
    "transformed_problem",
]


def transformed_problem() -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    """The unpreconditioned problem that a preconditioned run is equivalent to.

    Returns:
        ``(curvature, noise, loss_weight) = (h**(1-p), c h**(-2p), h)``.
    """
    return h ** (1 - p), c * h ** (-2 * p), h


@dataclass(frozen=True)
class PreconditionedEquivalence:
    """Outcome of comparing the preconditioned and transformed recursions.

    Attributes:
        method: The optimizer.
        means_equal: Mean recursions coincide.
        covariances_equal: Covariance recursions coincide.
        second_moments_equal: ``T`` and ``n`` of the second-moment system coincide.
        curvature_alone_fails: Keeping the noise ``c`` (transforming only ``h``)
            does not reproduce the dynamics, so the noise transform is needed.
    """

    method: Method
    means_equal: bool
    covariances_equal: bool
    second_moments_equal: bool
    curvature_alone_fails: bool

    @property
    def holds(self) -> bool:
        """All recursions coincide and the noise transform is necessary."""
        return (
            self.means_equal
            and self.covariances_equal
            and self.second_moments_equal
            and self.curvature_alone_fails
        )


@functools.cache
def preconditioned_equivalence(method: Method) -> PreconditionedEquivalence:
    """Derive that ``(h, c, p)`` has the dynamics of ``(h**(1-p), c h**(-2p), 0)``.

    Args:
        method: SGD, momentum or EMA.

    Returns:
        A :class:`PreconditionedEquivalence` record.

    References:
        Zhang et al. (2019), section 3.5.
    """
    method = as_method(method)
    curv, noise, _ = transformed_problem()
    pre = update_rule(method, p)
    plain = update_rule(method, 0, curvature=curv, noise=noise)
    wrong = update_rule(method, 0, curvature=curv, noise=c)
    means = all(
        is_zero(a - b)
        for a, b in zip(mean_recursion(pre), mean_recursion(plain), strict=True)
    )
    covs = is_zero(covariance_recursion(pre) - covariance_recursion(plain))
    t_pre, n_pre, _ = second_moment_system(pre)
    t_plain, n_plain, _ = second_moment_system(plain)
    t_wrong, n_wrong, _ = second_moment_system(wrong)
    second = is_zero(t_pre - t_plain) and is_zero(n_pre - n_plain)
    alone_fails = not (is_zero(t_pre - t_wrong) and is_zero(n_pre - n_wrong))
    return PreconditionedEquivalence(method, means, covs, second, alone_fails)


def preconditioned_sgd_risk() -> tuple[sp.Expr, sp.Expr]:
    """Expected risk of preconditioned SGD for one dimension.

    ``E[L_t] = h/2 * A_t(h**(1-p), c h**(-2p))`` where ``A_t`` is the SGD second
    moment of :func:`analysis.symbolic.theorems.sgd_second_moment`.

    Returns:
        ``(risk_t, steady_state_risk)``; the steady state simplifies to
        ``alpha c h**(-p) / (2 B (2 - alpha h**(1-p)))``.
    """
    curv, noise, weight = transformed_problem()
    sub = {h: curv, c: noise}
    risk_t = weight / 2 * sgd_second_moment().subs(sub, simultaneous=True)
    steady = weight / 2 * sgd_steady_state().subs(sub, simultaneous=True)
    return risk_t, sp.simplify(sp.powsimp(steady, force=True))
