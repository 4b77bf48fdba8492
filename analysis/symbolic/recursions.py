"""Moment recursions of the noisy quadratic model, derived from the update rules.

Each dimension of the NQM is a small linear stochastic system

.. math::

    x(t+1) = M x(t) + u\\,\\varepsilon(t), \\qquad
    \\mathbb{E}[\\varepsilon] = 0, \\quad \\mathbb{V}[\\varepsilon] = c / B,

with ``epsilon(t)`` independent of ``x(t)``. The update rules are written here as
plain sympy expressions in the state and the noise (gradient ``g = h theta + eps``,
preconditioned direction ``h**(-p) g``):

* SGD: ``theta' = theta - alpha h**(-p) g``.
* Heavy-ball momentum (the paper's form): ``m' = beta m + h**(-p) g`` and then
  ``theta' = theta - alpha m'``.
* EMA of the iterates: the SGD step, then ``theta_avg' = gamma theta_avg +
  (1 - gamma) theta'`` with the freshly updated ``theta'``.

The means, covariances and raw second moments of ``x(t+1)`` are obtained by
expanding products of these expressions and applying only linearity of the
expectation, ``E[eps] = 0``, ``E[eps**2] = c / B`` and independence of ``eps`` from
the current state. Nothing of the paper's formulas is typed in here.

References:
    Zhang et al. (2019), "Which Algorithmic Choices Matter at Which Batch Sizes?",
    appendix B eqns (17)-(21) and appendix D eqns (35)-(38).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum

import sympy as sp

from analysis.symbolic.symbols import B, alpha, beta, c, eps, gamma, h

__all__ = [
    "LinearUpdate",
    "Method",
    "MomentSymbols",
    "as_method",
    "covariance_recursion",
    "mean_recursion",
    "moment_symbols",
    "quadratic_lift",
    "second_moment_recursion",
    "second_moment_system",
    "update_rule",
]


class Method(StrEnum):
    """Optimizers whose per-dimension dynamics are derived."""

    SGD = "sgd"
    MOMENTUM = "momentum"
    EMA = "ema"


#: State variables; ``theta_avg`` is the EMA of the iterates (the paper's tilde theta).
THETA = sp.Symbol("theta")
VELOCITY = sp.Symbol("m")
THETA_AVG = sp.Symbol("theta_avg")


@dataclass(frozen=True)
class LinearUpdate:
    """One step ``x' = M x + u eps`` of a per-dimension NQM optimizer.

    Attributes:
        method: Which optimizer the rule belongs to.
        state: State symbols, e.g. ``(theta, m)``.
        new_state: The updated state as expressions in ``state`` and ``eps``.
        noise_var: Variance of ``eps`` (``c / B`` unless transformed).
    """

    method: Method
    state: tuple[sp.Symbol, ...]
    new_state: tuple[sp.Expr, ...]
    noise_var: sp.Expr

    @property
    def transition(self) -> sp.Matrix:
        """``M``: the Jacobian of ``new_state`` with respect to ``state``."""
        return sp.Matrix(self.new_state).jacobian(sp.Matrix(self.state))

    @property
    def noise_gain(self) -> sp.Matrix:
        """``u``: the coefficients of ``eps`` in ``new_state`` (column vector)."""
        return sp.Matrix(self.new_state).jacobian(sp.Matrix([eps]))


def update_rule(
    method: Method,
    precond_power: sp.Expr | int = 0,
    *,
    curvature: sp.Expr = h,
    noise: sp.Expr = c,
) -> LinearUpdate:
    """The one-step update of one NQM dimension, as sympy expressions.

    .. math::

        g = h\\theta + \\varepsilon, \\qquad d = h^{-p} g; \\qquad
        \\text{SGD: } \\theta' = \\theta - \\alpha d; \\quad
        \\text{momentum: } m' = \\beta m + d,\\ \\theta' = \\theta - \\alpha m'; \\quad
        \\text{EMA: } \\theta' = \\theta - \\alpha d,\\
        \\tilde\\theta' = \\gamma\\tilde\\theta + (1-\\gamma)\\theta'.

    Args:
        method: The optimizer.
        precond_power: ``p`` of the preconditioner ``P = h**p`` (a number or symbol).
        curvature: The curvature ``h`` (a symbol or expression).
        noise: The per-example noise variance ``c``; the step noise has variance
            ``noise / B``.

    Returns:
        The :class:`LinearUpdate`.

    Raises:
        ValueError: If ``method`` is not a :class:`Method`.

    References:
        Zhang et al. (2019), appendix B (momentum) and D (EMA); section 3.5
        (preconditioning).
    """
    method = as_method(method)
    precond_power = sp.sympify(precond_power)
    direction = curvature ** (-precond_power) * (curvature * THETA + eps)
    noise_var = noise / B
    if method is Method.SGD:
        return LinearUpdate(method, (THETA,), (THETA - alpha * direction,), noise_var)
    if method is Method.MOMENTUM:
        new_m = beta * VELOCITY + direction
        new_theta = THETA - alpha * new_m
        return LinearUpdate(
            method, (THETA, VELOCITY), (sp.expand(new_theta), new_m), noise_var
        )
    new_theta = THETA - alpha * direction
    new_avg = gamma * THETA_AVG + (1 - gamma) * new_theta
    return LinearUpdate(
        method, (THETA, THETA_AVG), (new_theta, sp.expand(new_avg)), noise_var
    )


def as_method(method: Method | str) -> Method:
    """Validate and convert ``method`` to :class:`Method`.

    Raises:
        ValueError: If ``method`` names no optimizer.
    """
    try:
        return Method(method)
    except ValueError as exc:
        raise ValueError(
            f"method must be one of {[m.value for m in Method]}, got {method!r}"
        ) from exc


@dataclass(frozen=True)
class MomentSymbols:
    """Symbols for the moments of a state at step ``t``.

    Attributes:
        mean: ``E[x_i]`` per state variable.
        cov: Symmetric matrix with ``V[x_i]`` on the diagonal and
            ``Cov(x_i, x_j)`` off it.
        second: Symmetric matrix with ``A(x_i) = E[x_i]**2 + V[x_i]`` on the
            diagonal and ``C(x_i, x_j) = E[x_i]E[x_j] + Cov(x_i, x_j)`` off it
            (raw second moments, the paper's ``A`` and ``C``).
    """

    mean: tuple[sp.Symbol, ...]
    cov: sp.Matrix
    second: sp.Matrix

    def stacked_second(self) -> tuple[sp.Symbol, ...]:
        """The paper's vector ``v``: the diagonal of ``second``, then the upper part."""
        return _stack_symmetric(self.second)


@functools.cache
def moment_symbols(state: tuple[sp.Symbol, ...]) -> MomentSymbols:
    """Named symbols ``E[.]``, ``V[.]``, ``Cov(.,.)``, ``A(.)``, ``C(.,.)``.

    Args:
        state: The state symbols (length ``n``).

    Returns:
        The :class:`MomentSymbols` (matrices of shape ``(n, n)``).
    """
    n = len(state)
    names = [str(s) for s in state]
    mean = tuple(sp.Symbol(f"E[{name}]") for name in names)
    cov = sp.zeros(n, n)
    second = sp.zeros(n, n)
    for i in range(n):
        cov[i, i] = sp.Symbol(f"V[{names[i]}]")
        second[i, i] = sp.Symbol(f"A({names[i]})")
        for j in range(i + 1, n):
            cov[i, j] = cov[j, i] = sp.Symbol(f"Cov({names[i]},{names[j]})")
            second[i, j] = second[j, i] = sp.Symbol(f"C({names[i]},{names[j]})")
    return MomentSymbols(mean, cov, second)


def _expect(expr: sp.Expr, upd: LinearUpdate, mean: tuple, second: sp.Matrix):
    """``E[expr]`` for a polynomial of degree <= 2 in the state and ``eps``.

    ``eps`` is independent of the state with mean 0 and variance ``noise_var``, so
    a monomial linear in ``eps`` has expectation 0 and ``eps**2`` contributes
    ``noise_var``; state monomials map to the given first and second moments.
    """
    gens = (*upd.state, eps)
    poly = sp.Poly(sp.expand(expr), *gens)
    total = sp.Integer(0)
    for monom, coeff in poly.terms():
        *powers, eps_power = monom
        idx = [i for i, e in enumerate(powers) for _ in range(e)]
        if eps_power == 1:
            continue
        if eps_power == 2 and not idx:
            total += coeff * upd.noise_var
        elif eps_power == 0 and not idx:
            total += coeff
        elif eps_power == 0 and len(idx) == 1:
            total += coeff * mean[idx[0]]
        elif eps_power == 0 and len(idx) == 2:
            total += coeff * second[idx[0], idx[1]]
        else:  # degree > 2: never produced by linear updates
            raise ValueError(f"expr has a monomial of degree > 2: {monom}")
    return total


@functools.cache
def mean_recursion(upd: LinearUpdate) -> tuple[sp.Expr, ...]:
    """``E[x_i(t+1)]`` in terms of the means ``E[x_j(t)]``.

    Args:
        upd: The update rule.

    Returns:
        One expression per state variable.

    References:
        Zhang et al. (2019), eqns (17) and (35).
    """
    sym = moment_symbols(upd.state)
    return tuple(
        sp.expand(_expect(e, upd, sym.mean, sym.second)) for e in upd.new_state
    )


@functools.cache
def second_moment_recursion(upd: LinearUpdate) -> sp.Matrix:
    """Raw second moments ``E[x_i(t+1) x_j(t+1)]`` in terms of ``A`` and ``C``.

    Args:
        upd: The update rule.

    Returns:
        A symmetric matrix of shape ``(n, n)``.

    References:
        Zhang et al. (2019), eqn (20) (momentum); appendix D, the missing eqn (38)
        (EMA).
    """
    sym = moment_symbols(upd.state)
    n = len(upd.state)
    out = sp.zeros(n, n)
    for i in range(n):
        for j in range(i, n):
            prod = upd.new_state[i] * upd.new_state[j]
            out[i, j] = out[j, i] = sp.expand(_expect(prod, upd, sym.mean, sym.second))
    return out


@functools.cache
def covariance_recursion(upd: LinearUpdate) -> sp.Matrix:
    """Covariances ``Cov(x_i(t+1), x_j(t+1))`` in terms of those at step ``t``.

    Computed as ``E[x_i' x_j'] - E[x_i'] E[x_j']`` with
    ``E[x_a x_b] = Cov(x_a, x_b) + E[x_a] E[x_b]``; the means cancel, which is
    checked.

    Args:
        upd: The update rule.

    Returns:
        A symmetric matrix of shape ``(n, n)`` in the ``V``/``Cov`` symbols.

    Raises:
        ValueError: If the means did not cancel (cannot happen for a linear update
            with additive noise; kept as an internal consistency check).

    References:
        Zhang et al. (2019), eqns (18), (19), (36), (37).
    """
    sym = moment_symbols(upd.state)
    n = len(upd.state)
    raw = sp.zeros(n, n)
    for a in range(n):
        for b in range(n):
            raw[a, b] = sym.cov[a, b] + sym.mean[a] * sym.mean[b]
    means = mean_recursion(upd)
    out = sp.zeros(n, n)
    for i in range(n):
        for j in range(i, n):
            prod = upd.new_state[i] * upd.new_state[j]
            val = sp.expand(_expect(prod, upd, sym.mean, raw) - means[i] * means[j])
            if val.free_symbols & set(sym.mean):
                raise ValueError("covariance recursion depends on the means")
            out[i, j] = out[j, i] = val
    return out


def _stack_symmetric(mat: sp.Matrix) -> tuple[sp.Expr, ...]:
    n = mat.shape[0]
    diag = [mat[i, i] for i in range(n)]
    off = [mat[i, j] for i in range(n) for j in range(i + 1, n)]
    return tuple(diag + off)


@functools.cache
def second_moment_system(
    upd: LinearUpdate,
) -> tuple[sp.Matrix, sp.Matrix, tuple[sp.Symbol, ...]]:
    """The linear system ``v(t+1) = T v(t) + n`` of the raw second moments.

    ``v`` stacks ``A(x_1), ..., A(x_n)`` and then ``C(x_i, x_j)`` for ``i < j``;
    for momentum ``v = (A(theta), A(m), C)``, for EMA
    ``v = (A(theta), A(theta_avg), C)``.

    Args:
        upd: The update rule.

    Returns:
        ``(T, n, v)``: the transition matrix of shape ``(d, d)``, the constant noise
        vector of shape ``(d, 1)`` and the symbols of ``v``, where
        ``d = n(n+1)/2``.

    References:
        Zhang et al. (2019), eqn (21) and the missing eqn (38).
    """
    v = moment_symbols(upd.state).stacked_second()
    rhs = sp.Matrix(_stack_symmetric(second_moment_recursion(upd)))
    trans = rhs.jacobian(sp.Matrix(v))
    noise = rhs.subs(dict.fromkeys(v, 0))
    return trans.applyfunc(sp.factor), noise.applyfunc(sp.factor), v


def quadratic_lift(mat: sp.Matrix) -> sp.Matrix:
    """The action of ``w -> M w`` on the quadratic monomials of ``w``.

    For ``w' = M w`` the products ``w_i' w_j'`` are linear in the products
    ``w_a w_b``; this returns that linear map in the basis of
    :meth:`MomentSymbols.stacked_second` (squares first, then cross terms).
    ``T = quadratic_lift(M)`` is the transition matrix of the second moments, and
    its eigenvalues are the pairwise products of the eigenvalues of ``M``.

    Args:
        mat: A square matrix ``M`` of shape ``(n, n)``.

    Returns:
        The lifted matrix of shape ``(d, d)``, ``d = n(n+1)/2``.

    Raises:
        ValueError: If ``mat`` is not square.
    """
    if mat.shape[0] != mat.shape[1]:
        raise ValueError(f"mat must be square, got shape {mat.shape}")
    n = mat.shape[0]
    w = sp.symbols(f"w0:{n}")
    basis = _stack_symmetric(sp.Matrix(n, n, lambda i, j: w[i] * w[j]))
    new_w = mat * sp.Matrix(w)
    images = _stack_symmetric(sp.Matrix(n, n, lambda i, j: new_w[i] * new_w[j]))
    out = sp.zeros(len(basis), len(basis))
    for row, img in enumerate(images):
        poly = sp.Poly(sp.expand(img), *w)
        for col, mono in enumerate(basis):
            out[row, col] = poly.coeff_monomial(mono)
    return out
