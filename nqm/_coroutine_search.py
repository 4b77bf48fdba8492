"""Nelder-Mead and Brent's bounded minimiser, written as generators.

The tuner runs many small local searches side by side in one thread, so that their
objective evaluations can be gathered into one vectorised call. Each search here is
therefore a *generator*: whenever it needs an objective value it delegates to the
caller's objective, itself a generator function ``f(x)`` that yields requests to
whoever drives the search and returns the objective value as a float. A search
finishes by returning its answer as the generator's return value.

Both searches visit exactly the points, in exactly the order, of the SciPy
routines documented as ``scipy.optimize.minimize(method="Nelder-Mead")``
(non-adaptive, no bounds) and ``scipy.optimize.minimize_scalar(method="bounded")``,
and return the same answer, bit for bit; the tests compare the two point by point.

Protocol, with the driver :func:`run` and the one-request objective :func:`ask`::

    def f(x):
        value = yield x          # ask the caller for the objective at x
        return value

    x_best = run(nelder_mead(f, simplex, 1e-3, 1e-7, 80), objective)

References:
    Nelder, J. A. & Mead, R. (1965). A simplex method for function minimization.
    Computer Journal 7(4), 308-313.

    Lagarias, J. C., Reeds, J. A., Wright, M. H. & Wright, P. E. (1998).
    Convergence properties of the Nelder-Mead simplex method in low dimensions.
    SIAM J. Optim. 9(1), §2.

    Brent, R. P. (1973). Algorithms for Minimization without Derivatives,
    ch. 5 (procedure *localmin*).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["ask", "bounded_minimum", "nelder_mead", "run"]

#: Lagarias et al. (1998, §2) coefficients: reflection ρ, expansion χ,
#: contraction γ, shrink σ.
REFLECT = 1.0
EXPAND = 2.0
CONTRACT = 0.5
SHRINK = 0.5

#: Brent's (1973, ch. 5) relative tolerance: the square root of a machine epsilon
#: of 2.2e-16, so that ``tol = EPS_SQRT·|x| + xatol/3``.
EPS_SQRT = math.sqrt(2.2e-16)
#: The golden-section fraction ``(3 − √5)/2`` of Brent (1973, ch. 5).
GOLDEN = 0.5 * (3.0 - math.sqrt(5.0))

T = TypeVar("T")
#: An objective in the generator protocol: ``value = yield from f(x)``.
Objective = Callable[[Any], Generator[Any, Any, float]]


class _BudgetSpent(Exception):
    """Raised inside a search when one more evaluation would pass its budget."""


class _Budget:
    """Counts evaluations and refuses the one past ``limit``."""

    def __init__(self, f: Objective, limit: int) -> None:
        self.f = f
        self.limit = limit
        self.used = 0

    def evaluate(self, x: Any) -> Generator[Any, Any, float]:
        if self.used >= self.limit:
            raise _BudgetSpent
        self.used += 1
        return float((yield from self.f(x)))


def ask(x: T) -> Generator[T, float, float]:
    """Objective that yields the point itself and returns the value sent back.

    Args:
        x: The point, passed on unchanged as the request.

    Returns:
        The value the driver sends in reply.
    """
    value = yield x
    return value


def run(search: Generator[Any, float, T], objective: Callable[[Any], float]) -> T:
    """Drive a search generator with a plain Python objective.

    Every request the search yields is taken to be a point (as :func:`ask`
    yields it) and is answered with ``objective(request)``.

    Args:
        search: A search generator not yet started, e.g.
            ``nelder_mead(ask, simplex, 1e-3, 1e-7, 80)``.
        objective: The objective of one point.

    Returns:
        The search's return value.
    """
    try:
        request = next(search)
        while True:
            request = search.send(objective(request))
    except StopIteration as stop:
        return stop.value


def _nonnegative(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return value


def _positive_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def _checked_simplex(initial_simplex: ArrayLike) -> NDArray[np.float64]:
    simplex = np.array(initial_simplex, dtype=np.float64)
    if (
        simplex.ndim != 2
        or simplex.shape[1] < 1
        or simplex.shape[0] != (simplex.shape[1] + 1)
    ):
        raise ValueError(
            f"initial_simplex must have shape (N+1, N) with N >= 1, got {simplex.shape}"
        )
    if not np.all(np.isfinite(simplex)):
        raise ValueError("initial_simplex must be finite")
    return simplex


def _sorted(
    simplex: NDArray[np.float64], values: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Vertices ordered by value, best first (NumPy's default argsort on ties)."""
    order = values.argsort()
    return simplex[order], values[order]


def _converged(
    simplex: NDArray[np.float64],
    values: NDArray[np.float64],
    xatol: float,
    fatol: float,
) -> bool:
    """Every vertex within ``xatol`` of the best (∞-norm) and every value within ``fatol``."""
    # array methods, not np.max: local searches call this thousands of times
    if not np.abs(simplex[1:] - simplex[0]).max() <= xatol:
        return False
    return bool(np.abs(values[0] - values[1:]).max() <= fatol)


def _simplex_step(
    evaluate: Callable[[NDArray[np.float64]], Generator[Any, Any, float]],
    simplex: NDArray[np.float64],
    values: NDArray[np.float64],
) -> Generator[Any, Any, None]:
    """One Nelder-Mead iteration on a sorted simplex, in place (Lagarias et al. §2).

    A shrink replaces each vertex before evaluating it, so a budget that runs out
    mid-shrink leaves that vertex moved with its old value.
    """
    n = simplex.shape[1]
    worst = simplex[-1]
    f_best, f_second_worst, f_worst = values[0], values[-2], values[-1]
    centroid = simplex[:-1].sum(axis=0) / n
    reflected = (1 + REFLECT) * centroid - REFLECT * worst
    f_reflected = yield from evaluate(reflected)
    if f_reflected < f_best:
        expanded = (1 + REFLECT * EXPAND) * centroid - REFLECT * EXPAND * worst
        f_expanded = yield from evaluate(expanded)
        if f_expanded < f_reflected:
            simplex[-1], values[-1] = expanded, f_expanded
        else:
            simplex[-1], values[-1] = reflected, f_reflected
        return
    if f_reflected < f_second_worst:
        simplex[-1], values[-1] = reflected, f_reflected
        return
    if f_reflected < f_worst:
        outside = (1 + CONTRACT * REFLECT) * centroid - CONTRACT * REFLECT * worst
        f_outside = yield from evaluate(outside)
        if f_outside <= f_reflected:
            simplex[-1], values[-1] = outside, f_outside
            return
    else:
        inside = (1 - CONTRACT) * centroid + CONTRACT * worst
        f_inside = yield from evaluate(inside)
        if f_inside < f_worst:
            simplex[-1], values[-1] = inside, f_inside
            return
    for j in range(1, n + 1):
        simplex[j] = simplex[0] + SHRINK * (simplex[j] - simplex[0])
        values[j] = yield from evaluate(simplex[j])


def nelder_mead(
    f: Objective,
    initial_simplex: ArrayLike,
    xatol: float,
    fatol: float,
    maxfev: int,
) -> Generator[Any, Any, NDArray[np.float64]]:
    r"""Minimise ``f`` by the Nelder-Mead simplex method (a generator).

    With the vertices sorted so that :math:`f_1 \le \dots \le f_{n+1}` and the
    centroid :math:`\bar x = \frac1n \sum_{i \le n} x_i`, one iteration tries

    .. math::

        x_r = (1+\rho)\bar x - \rho x_{n+1}, \quad
        x_e = (1+\rho\chi)\bar x - \rho\chi x_{n+1}, \\
        x_c = (1+\gamma\rho)\bar x - \gamma\rho x_{n+1}, \quad
        x_{cc} = (1-\gamma)\bar x + \gamma x_{n+1},

    with :math:`\rho = 1, \chi = 2, \gamma = \sigma = 1/2`: reflect and accept
    :math:`x_r` if :math:`f_1 \le f_r < f_n`; expand if :math:`f_r < f_1` (keep
    the better of :math:`x_e, x_r`); contract outside if
    :math:`f_n \le f_r < f_{n+1}` (accept if :math:`f_c \le f_r`), inside if
    :math:`f_r \ge f_{n+1}` (accept if :math:`f_{cc} < f_{n+1}`); otherwise shrink,
    :math:`x_i \leftarrow x_1 + \sigma(x_i - x_1)` for :math:`i \ge 2`. Ties keep
    NumPy's default ``argsort`` order. Before each iteration the search stops when

    .. math::

        \max_{i,k} |x_{i,k} - x_{1,k}| \le \text{xatol} \quad\text{and}\quad
        \max_i |f_i - f_1| \le \text{fatol},

    and it never evaluates more than ``maxfev`` points: an iteration that would
    pass the budget ends where it stands (a vertex not yet evaluated counts as
    :math:`+\infty`). The steps and their order are those of SciPy's non-adaptive
    ``minimize(method="Nelder-Mead")`` with the same ``initial_simplex``,
    ``xatol``, ``fatol`` and ``maxfev``.

    Args:
        f: Objective generator function: ``value = yield from f(x)`` with ``x``
            a fresh copy of shape ``(N,)``; it may yield any requests.
        initial_simplex: Starting vertices, shape ``(N+1, N)``, finite.
        xatol: Absolute tolerance on the vertices, ``>= 0``.
        fatol: Absolute tolerance on the values, ``>= 0``.
        maxfev: Most evaluations, ``>= 1``.

    Returns:
        The best vertex, shape ``(N,)`` (via ``StopIteration.value``).

    Raises:
        ValueError: On a simplex of the wrong shape or not finite, a negative or
            non-finite tolerance, or ``maxfev < 1`` (raised on the first ``next``).

    References:
        Nelder & Mead (1965); Lagarias, Reeds, Wright & Wright (1998), §2.
    """
    simplex = _checked_simplex(initial_simplex)
    xatol = _nonnegative("xatol", xatol)
    fatol = _nonnegative("fatol", fatol)
    budget = _Budget(f, _positive_count("maxfev", maxfev))

    def evaluate(x: NDArray[np.float64]) -> Generator[Any, Any, float]:
        return budget.evaluate(x.copy())

    values = np.full(simplex.shape[0], np.inf)
    try:
        for k in range(simplex.shape[0]):
            values[k] = yield from evaluate(simplex[k])
    except _BudgetSpent:
        pass
    simplex, values = _sorted(simplex, values)
    while budget.used < budget.limit and not _converged(simplex, values, xatol, fatol):
        try:
            yield from _simplex_step(evaluate, simplex, values)
        except _BudgetSpent:
            pass
        simplex, values = _sorted(simplex, values)
    return simplex[0].copy()


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def bounded_minimum(
    f: Objective,
    lo: float,
    hi: float,
    xatol: float,
    maxfun: int = 500,
) -> Generator[Any, Any, float]:
    r"""Minimise a function of one variable on ``[lo, hi]`` by Brent's method.

    Brent's (1973, ch. 5) *localmin*: keep the bracket :math:`[a, b]`, the best
    point :math:`x` and the two next best :math:`w, v`; start at
    :math:`x = a + g(b-a)` with :math:`g = (3-\sqrt5)/2`. With
    :math:`m = (a+b)/2` and :math:`\text{tol} = \sqrt{\epsilon}\,|x| +
    \text{xatol}/3`, stop when :math:`|x - m| \le 2\,\text{tol} - (b-a)/2`.
    Otherwise, if the step before last exceeded tol, fit the parabola through
    :math:`(x, w, v)`,

    .. math::

        p/q = -\frac{(x-v)^2 (f_x-f_w) - (x-w)^2 (f_x-f_v)}
                    {2\,[(x-v)(f_x-f_w) - (x-w)(f_x-f_v)]},

    and take it if it moves less than half the step before last and lands inside
    :math:`(a, b)` (nudged to :math:`\pm\text{tol}` towards :math:`m` within
    :math:`2\,\text{tol}` of an end); else take the golden step
    :math:`g \cdot (a - x \text{ or } b - x)` into the larger part. No step is
    shorter than tol. The budget is checked after each step, so the search stops
    once it has made ``maxfun`` evaluations but always makes at least two when
    the first stopping test fails. The
    points are those of SciPy's ``minimize_scalar(method="bounded")`` with
    ``options={"xatol": xatol, "maxiter": maxfun}``.

    Args:
        f: Objective generator function: ``value = yield from f(u)`` with ``u``
            a float.
        lo: Lower end, finite.
        hi: Upper end, finite, ``> lo``.
        xatol: Absolute tolerance on the minimiser, ``> 0``.
        maxfun: Evaluation budget, ``>= 1``.

    Returns:
        The minimiser found (via ``StopIteration.value``).

    Raises:
        ValueError: On non-finite bounds, ``lo >= hi``, ``xatol <= 0`` or not
            finite, or ``maxfun < 1`` (raised on the first ``next``).

    References:
        Brent (1973), ch. 5.
    """
    a, b = _finite("lo", lo), _finite("hi", hi)
    if not a < b:
        raise ValueError(f"lo must be < hi, got lo={a!r}, hi={b!r}")
    xatol = float(xatol)
    if not (math.isfinite(xatol) and xatol > 0.0):
        raise ValueError(f"xatol must be finite and > 0, got {xatol!r}")
    maxfun = _positive_count("maxfun", maxfun)

    x = w = v = a + GOLDEN * (b - a)
    fx = yield from f(x)
    fx = fw = fv = fx
    used = 1
    step = previous = 0.0
    while True:
        mid = 0.5 * (a + b)
        tol = EPS_SQRT * abs(x) + xatol / 3.0
        if abs(x - mid) <= 2.0 * tol - 0.5 * (b - a):
            break
        golden = True
        if abs(previous) > tol:
            golden = False
            r = (x - w) * (fx - fv)
            q = (x - v) * (fx - fw)
            p = (x - v) * q - (x - w) * r
            q = 2.0 * (q - r)
            if q > 0.0:
                p = -p
            q = abs(q)
            older, previous = previous, step
            if abs(p) < abs(0.5 * q * older) and q * (a - x) < p < q * (b - x):
                step = p / q
                trial = x + step
                if trial - a < 2.0 * tol or b - trial < 2.0 * tol:
                    step = tol * (np.sign(mid - x) + (mid - x == 0))
            else:
                golden = True
        if golden:
            previous = (a - x) if x >= mid else (b - x)
            step = GOLDEN * previous
        u = x + (np.sign(step) + (step == 0)) * np.maximum(abs(step), tol)
        fu = yield from f(u)
        used += 1
        if fu <= fx:
            if u >= x:
                a = x
            else:
                b = x
            v, fv, w, fw, x, fx = w, fw, x, fx, u, fu
        else:
            if u < x:
                a = u
            else:
                b = u
            if fu <= fw or w == x:
                v, fv, w, fw = w, fw, u, fu
            elif fu <= fv or v == x or v == w:
                v, fv = u, fu
        if used >= maxfun:
            break
    return float(x)
