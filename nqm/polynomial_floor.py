r"""The least deterministic loss a polynomial method can reach in ``t`` steps.

Every optimizer of this package whose updates are linear in the gradient (SGD,
heavy-ball momentum, iterate averaging, preconditioning :math:`P = H^p`, with
any lr or batch-size schedule) moves the mean of each mode by a polynomial of
its preconditioned curvature: :math:`E[\theta_i(t)] = p_t(\hat h_i)\,
\theta_i(0)` with :math:`\deg p_t \le t` and :math:`p_t(0) = 1` (each update
multiplies the state by a matrix whose entries are at most linear in
:math:`\hat h`, and a mode with :math:`\hat h = 0` does not move; the
velocity starts at 0 and the average at :math:`\theta_0`). The deterministic
part of the risk is therefore bounded below by

.. math::

    D(t) = \sum_i \omega_i\, p_t(\hat h_i)^2 \;\ge\; \lambda_t
         = \min_{\deg p \le t,\ p(0) = 1} \sum_i \omega_i\, p(\hat h_i)^2,
    \qquad \omega_i = \tfrac12 w_i h_i E[\theta_i(0)^2],

whatever the hyperparameters. With :math:`\varphi_0, \varphi_1, \dots` the
orthonormal polynomials of the measure :math:`\mu = \sum_i \omega_i
\delta_{\hat h_i}`, write :math:`p = \sum_{j \le t} c_j \varphi_j`: then
:math:`\int p^2 d\mu = \sum_j c_j^2` and :math:`p(0) = \sum_j c_j
\varphi_j(0) = 1`, so by Cauchy-Schwarz

.. math:: \lambda_t = 1 \Big/ \sum_{j \le t} \varphi_j(0)^2 ,

the Christoffel function of :math:`\mu` at 0. It falls to 0 once :math:`t`
reaches the number of distinct curvatures (a polynomial can vanish on all of
them). The :math:`\varphi_j` follow from their three-term recurrence, whose
coefficients are those of the Lanczos process (Lanczos, 1950) on
:math:`\operatorname{diag}(\hat h)` started from :math:`\sqrt{\omega}`, run here
with full reorthogonalisation; :math:`\varphi_j(0)` is the recurrence's
growing solution outside the support, computed forward.

:func:`nqm.search.best_steps` uses the floor to skip the steps of its first
grid at which no setting can come near the target.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .arguments import validate_steps
from .dynamics import _modes
from .problem import NQMProblem

__all__ = ["polynomial_floor"]

#: The Lanczos process stops (the measure is exhausted: the floor is 0 from
#: there on) once the next off-diagonal coefficient falls below this fraction
#: of the largest curvature. Stopping early only lowers the floor.
_EXHAUSTED = 1e-10
#: phi_j(0) beyond this makes the floor less than the smallest double.
_HUGE = 1e154


def polynomial_floor(
    problem: NQMProblem, steps, precond_power: float = 0.0
) -> float | np.ndarray:
    """:math:`\\lambda_t`, the least :math:`D(t)` of any optimizer linear in the
    gradient (see the module docstring), at each step count of ``steps``.

    Args:
        problem: the NQM.
        steps: non-negative integer step counts (a scalar or an array).
        precond_power: :math:`p \\in [0, 1]` of the preconditioner
            :math:`P = H^p`.

    Returns:
        A float for a scalar ``steps``, else an array of their shape;
        ``λ_0`` is :math:`D(0)`. The cost is
        :math:`O(T^2 M)` for the largest step :math:`T` (at most the number of
        distinct curvatures :math:`M`, beyond which the floor is 0).

    Raises:
        ValueError: for steps that are not non-negative integers, or a power
            outside [0, 1].
    """
    t = validate_steps(steps)
    p = float(precond_power)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"precond_power must lie in [0, 1], got {precond_power!r}")
    hh, wd, _ = _modes(problem, p)
    floors = christoffel_at_zero(hh, wd)
    last = int(t.max())
    table = np.array([next(floors) for _ in range(min(last, hh.size) + 1)])
    out = np.where(t < table.size, table[np.minimum(t, table.size - 1)], 0.0)
    return out if t.ndim else float(out)


def christoffel_at_zero(nodes: np.ndarray, weights: np.ndarray) -> Iterator[float]:
    """:math:`\\lambda_0, \\lambda_1, \\dots`: the least :math:`\\sum_i
    \\omega_i p(x_i)^2` over polynomials of degree at most :math:`t` with
    :math:`p(0) = 1`, for :math:`t = 0, 1, \\dots` (an endless iterator; 0
    once the measure is exhausted).

    Args:
        nodes: the points :math:`x_i \\ge 0`, ``(M,)``.
        weights: their weights :math:`\\omega_i \\ge 0`, ``(M,)``.
    """
    x = np.asarray(nodes, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    mass = float(w.sum())
    if not mass > 0.0:
        while True:
            yield 0.0
    scale = float(np.abs(x).max())
    q = np.sqrt(w / mass)  # the Lanczos vector of phi_0 = 1 / sqrt(mass)
    basis = [q]
    q_prev = np.zeros_like(q)
    b_prev = 0.0
    phi_prev, phi = 0.0, 1.0 / np.sqrt(mass)
    total = phi * phi
    yield 1.0 / total
    for _ in range(x.size):
        xq = x * q
        a = float(q @ xq)
        v = xq - a * q - b_prev * q_prev
        done = np.array(basis)
        for _ in range(2):  # full reorthogonalisation, twice
            v -= done.T @ (done @ v)
        b = float(np.linalg.norm(v))
        if not b > _EXHAUSTED * scale:
            break
        phi_prev, phi = phi, (-a * phi - b_prev * phi_prev) / b
        total += phi * phi if abs(phi) < _HUGE else np.inf
        if not total < np.inf:
            break  # the floor is below the smallest double
        yield 1.0 / total
        q_prev, q, b_prev = q, v / b, b
        basis.append(q)
    while True:
        yield 0.0
