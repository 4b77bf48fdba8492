"""Independent oracles for the NQM tests.

Nothing here imports :mod:`nqm`. Every oracle is built from the update rule alone,

.. math::
    g = h\\theta + \\varepsilon,\\quad m' = \\beta m + h^{-p} g,\\quad
    \\theta' = \\theta - \\alpha m',\\quad
    \\tilde\\theta' = \\gamma\\tilde\\theta + (1-\\gamma)\\theta',

with :math:`\\operatorname{Var}\\varepsilon = c/B`, :math:`m_0 = 0`,
:math:`\\tilde\\theta_0 = \\theta_0`. The full three-component state
:math:`x = (\\theta, m, \\tilde\\theta)` is always carried (whatever the optimizer),
and the one-step matrix and noise vector are *read off* the update rule by applying
it to unit vectors, so no transition matrix is copied from the implementation.
The reported component is :math:`\\tilde\\theta` when :math:`\\gamma > 0`, else
:math:`\\theta`.
"""

from __future__ import annotations

import mpmath
import numpy as np

STATE = 3
U0 = (1.0, 0.0, 1.0)  # x_0 / theta_0: m_0 = 0, average starts at theta_0


def update(theta, m, avg, eps, lr, h, p, beta, gamma):
    """One step of the optimizer, literally (works on floats, arrays and mpf)."""
    g = h * theta + eps
    m_new = beta * m + h ** (-p) * g
    theta_new = theta - lr * m_new
    avg_new = gamma * avg + (1 - gamma) * theta_new
    return theta_new, m_new, avg_new


def out_index(gamma) -> int:
    return 2 if gamma > 0 else 0


# --------------------------------------------------------------- float64 path
def transition(lr, h, p, beta, gamma):
    """(A, n) per mode, shapes (d, 3, 3) and (d, 3), by probing the update."""
    h = np.asarray(h, dtype=np.float64)
    zero = np.zeros_like(h)
    one = np.ones_like(h)
    cols = []
    for j in range(STATE):
        x = [one if i == j else zero for i in range(STATE)]
        cols.append(np.stack(update(*x, zero, lr, h, p, beta, gamma), axis=-1))
    a = np.stack(cols, axis=-1)
    n = np.stack(update(zero, zero, zero, one, lr, h, p, beta, gamma), axis=-1)
    return a, n


def brute_force_loss(h, c, init_sq, weight, lr_of_step, beta, gamma, p, batch, steps):
    """Expected loss by step-by-step propagation of E[x x^T] (float64).

    Args:
        h, c, init_sq, weight: per-mode arrays, shape (d,).
        lr_of_step: callable step -> lr (update ``step`` maps x_step to x_step+1).
        beta, gamma, p: scalars.
        batch: batch size, or a callable step -> batch size (update ``step``'s
            noise then has variance ``c / batch(step)``).
        steps: sorted iterable of step counts to report.

    Returns:
        array of losses, one per requested step.
    """
    h = np.asarray(h, dtype=np.float64)
    c = np.broadcast_to(np.asarray(c, dtype=np.float64), h.shape)
    init_sq = np.broadcast_to(np.asarray(init_sq, dtype=np.float64), h.shape)
    weight = np.broadcast_to(np.asarray(weight, dtype=np.float64), h.shape)
    u = np.array(U0)
    z = init_sq[:, None, None] * np.outer(u, u)[None]
    o = out_index(gamma)
    want = sorted(set(int(s) for s in steps))
    res = {}
    for t in range(want[-1] + 1):
        if t in res or t in want:
            res[t] = 0.5 * np.sum(weight * h * z[:, o, o])
        if t == want[-1]:
            break
        a, n = transition(lr_of_step(t), h, p, beta, gamma)
        b = batch(t) if callable(batch) else batch
        q = (c / b)[:, None, None] * n[:, :, None] * n[:, None, :]
        z = a @ z @ np.swapaxes(a, -1, -2) + q
    return np.array([res[int(s)] for s in steps])


# ------------------------------------------------------------------ mpmath path
def _mp_transition(lr, h, p, beta, gamma):
    z, one = mpmath.mpf(0), mpmath.mpf(1)
    cols = []
    for j in range(STATE):
        x = [one if i == j else z for i in range(STATE)]
        cols.append(update(*x, z, lr, h, p, beta, gamma))
    a = [[cols[j][i] for j in range(STATE)] for i in range(STATE)]
    n = list(update(z, z, z, one, lr, h, p, beta, gamma))
    return a, n


def _mm(a, b):
    return [
        [sum(a[i][k] * b[k][j] for k in range(STATE)) for j in range(STATE)]
        for i in range(STATE)
    ]


def _mt(a):
    return [[a[j][i] for j in range(STATE)] for i in range(STATE)]


def _madd(a, b):
    return [[a[i][j] + b[i][j] for j in range(STATE)] for i in range(STATE)]


def mp_mode_terms(lr, h, p, beta, gamma, steps):
    """Per-mode (F_t, G_t) in high precision for a constant lr.

    ``F_t = (A^t u)_o^2`` (unit initial second moment) and
    ``G_t = sum_{j<t} (A^j n)_o^2`` (unit noise variance), by binary powering of
    the pair ``(A^k, N_k)`` with ``N_{a+b} = A^b N_a A^{bT} + N_b``. All inputs are
    converted exactly from their float64 values. Works at the current mp.dps.
    """
    lr, h, p, beta, gamma = (mpmath.mpf(float(v)) for v in (lr, h, p, beta, gamma))
    a, n = _mp_transition(lr, h, p, beta, gamma)
    q = [[n[i] * n[j] for j in range(STATE)] for i in range(STATE)]
    o = out_index(gamma)
    out = []
    for t in steps:
        pa, pn = _mp_power(a, q, int(t))
        mean = sum(pa[o][k] * mpmath.mpf(U0[k]) for k in range(STATE))
        out.append((mean * mean, pn[o][o]))
    return out


def _mp_power(a, q, t: int):
    """``(A^t, N_t)`` with ``N_t = sum_{j<t} A^j Q A^jT``, by binary powering of
    the pair, ``N_{a+b} = A^b N_a A^{bT} + N_b``."""
    pa = [[mpmath.mpf(int(i == j)) for j in range(STATE)] for i in range(STATE)]
    pn = [[mpmath.mpf(0)] * STATE for _ in range(STATE)]
    ba, bn = a, q  # A^(2^j), N_(2^j)
    while t:
        if t & 1:
            pn = _madd(_mm(_mm(ba, pn), _mt(ba)), bn)
            pa = _mm(ba, pa)
        t >>= 1
        if t:
            bn = _madd(_mm(_mm(ba, bn), _mt(ba)), bn)
            ba = _mm(ba, ba)
    return pa, pn


def mp_loss(h, c, init_sq, weight, lr, beta, gamma, p, batch, steps, dps=50):
    """Expected total loss at each step, in mpmath (returned as mpf)."""
    with mpmath.workdps(dps):
        h = np.atleast_1d(np.asarray(h, dtype=np.float64))
        c = np.broadcast_to(np.asarray(c, dtype=np.float64), h.shape)
        init_sq = np.broadcast_to(np.asarray(init_sq, dtype=np.float64), h.shape)
        weight = np.broadcast_to(np.asarray(weight, dtype=np.float64), h.shape)
        total = [mpmath.mpf(0)] * len(steps)
        bb = mpmath.mpf(float(batch))
        for i in range(h.size):
            terms = mp_mode_terms(lr, h[i], p, beta, gamma, steps)
            hi = mpmath.mpf(float(h[i]))
            wi = mpmath.mpf(float(weight[i]))
            for j, (f, g) in enumerate(terms):
                total[j] += (
                    wi
                    * hi
                    / 2
                    * (
                        mpmath.mpf(float(init_sq[i])) * f
                        + mpmath.mpf(float(c[i])) / bb * g
                    )
                )
        return total


def mp_loss_scheduled(h, c, init_sq, weight, lrs, beta, gamma, p, batch, dps=30):
    """Loss after ``len(lrs)`` steps, one lr per step, in mpmath."""
    pieces = [(lr, 1) for lr in lrs]
    return mp_loss_pieces(h, c, init_sq, weight, pieces, beta, gamma, p, batch, dps=dps)


def transition_matrix_numpy(lr, h, p, beta, gamma):
    """The 3x3 one-step matrix of one mode (for spectral-radius checks)."""
    a, _ = transition(lr, np.array([h]), p, beta, gamma)
    return a[0]


def mp_loss_pieces(h, c, init_sq, weight, pieces, beta, gamma, p, batch, dps=50):
    """Loss after constant-lr pieces ``[(lr, n_steps), ...]`` applied in order.

    Each piece is raised to its power by the same binary powering as
    :func:`mp_mode_terms`, and the pieces are chained on the full 3x3 second
    moment, so horizons of 10^12 steps cost O(log t) per piece.
    """
    with mpmath.workdps(dps):
        total = mpmath.mpf(0)
        o = out_index(gamma)
        for i in range(len(h)):
            hi = mpmath.mpf(float(h[i]))
            args = (
                mpmath.mpf(float(p)),
                mpmath.mpf(float(beta)),
                mpmath.mpf(float(gamma)),
            )
            z = [
                [mpmath.mpf(float(init_sq[i])) * U0[r] * U0[s] for s in range(STATE)]
                for r in range(STATE)
            ]
            var = mpmath.mpf(float(c[i])) / mpmath.mpf(float(batch))
            for lr, length in pieces:
                a, n = _mp_transition(mpmath.mpf(float(lr)), hi, *args)
                q = [[var * n[r] * n[s] for s in range(STATE)] for r in range(STATE)]
                pa, pn = _mp_power(a, q, int(length))
                z = _madd(_mm(_mm(pa, z), _mt(pa)), pn)
            total += mpmath.mpf(float(weight[i])) * hi / 2 * z[o][o]
        return total


# ------------------------------------------- mpmath: eigen-expansion per mode
#: Below this gap between two eigenvalues of the one-step matrix, the expansion
#: would lose more than about log10(1/gap^2) = 24 of its digits: the mode is
#: computed by binary powering (:func:`mp_mode_terms`) instead.
_MIN_GAP = mpmath.mpf(10) ** -12


def _mp_eigenvalues(a):
    """Eigenvalues of the one-step matrix ``a`` of one mode: the state
    ``(theta, m)`` does not depend on the average (checked), so they are the two
    roots of the ``(theta, m)`` block and the average's own coefficient."""
    if a[0][2] != 0 or a[1][2] != 0:
        raise ValueError("the (theta, m) block must not depend on the average")
    tr = a[0][0] + a[1][1]
    det = a[0][0] * a[1][1] - a[0][1] * a[1][0]
    root = mpmath.sqrt(mpmath.mpc(tr * tr - 4 * det))
    lam = [(tr + root) / 2, (tr - root) / 2, mpmath.mpc(a[2][2])]
    return [mpmath.mpf(x.real) if x.imag == 0 else x for x in lam]


def _mp_expansion(lam, seq):
    """Coefficients ``b`` with ``seq[j] = sum_k b_k lam_k^j`` for j = 0, 1, 2
    (distinct ``lam``): the Lagrange form of the 3 x 3 Vandermonde solve."""
    out = []
    for k in range(3):
        u, v = (lam[j] for j in range(3) if j != k)
        out.append(
            (seq[2] - (u + v) * seq[1] + u * v * seq[0]) / ((lam[k] - u) * (lam[k] - v))
        )
    return out


def mp_mode_terms_expanded(lr, h, p, beta, gamma, steps):
    """Per-mode ``(F_t, G_t)`` in high precision, as :func:`mp_mode_terms`, from
    the eigen-expansion of the one-step matrix read off the update rule.

    The reported component of ``A^j u`` and of ``A^j n`` are sums
    ``sum_k b_k lam_k^j`` and ``sum_k a_k lam_k^j`` over the eigenvalues; their
    coefficients come from the first three terms, which are computed by applying
    the matrix. Then ``F_t = (sum_k b_k lam_k^t)^2`` and
    ``G_t = sum_{k,l} a_k a_l (1 - (lam_k lam_l)^t) / (1 - lam_k lam_l)``. A mode
    whose eigenvalues lie closer than ``_MIN_GAP`` is computed by
    :func:`mp_mode_terms`. Works at the current mp.dps, O(1) in t.
    """
    lr_m, h_m, p_m, b_m, g_m = (mpmath.mpf(float(v)) for v in (lr, h, p, beta, gamma))
    a, n = _mp_transition(lr_m, h_m, p_m, b_m, g_m)
    lam = _mp_eigenvalues(a)
    if min(abs(lam[i] - lam[j]) for i, j in ((0, 1), (0, 2), (1, 2))) < _MIN_GAP:
        return mp_mode_terms(lr, h, p, beta, gamma, steps)
    o = out_index(gamma)

    def first_three(v):
        seq = []
        for _ in range(3):
            seq.append(v[o])
            v = [sum(a[i][k] * v[k] for k in range(STATE)) for i in range(STATE)]
        return seq

    b = _mp_expansion(lam, first_three([mpmath.mpf(x) for x in U0]))
    c = _mp_expansion(lam, first_three(n))
    out = []
    for t in steps:
        pw = [x ** int(t) for x in lam]
        f = sum(b[k] * pw[k] for k in range(3))
        g = 0
        for k in range(3):
            for m in range(3):
                prod = lam[k] * lam[m]
                if prod == 1:
                    g += c[k] * c[m] * int(t)
                else:
                    g += c[k] * c[m] * (1 - pw[k] * pw[m]) / (1 - prod)
        out.append((mpmath.re(f) ** 2, mpmath.re(g)))
    return out


# ------------------------------------ mpmath: mean and covariance, step by step
def mp_second_moments_stepwise(
    h, c, init_sq, lr_of_step, beta, gamma, p, batch, steps, dps=50
):
    """Per-mode :math:`E[\\theta_{o,i}(t)^2]` by propagating, one update at a
    time, the mean and the covariance of the state
    :math:`x' = A_t x + n_t \\varepsilon_t` (:math:`\\operatorname{Var}\\varepsilon
    = c/B`), from :math:`x_0 = \\sqrt{\\text{init\\_sq}}\\, u` (a deterministic
    start has the same second moment as a random one with that variance):

    .. math:: \\mu' = A_t \\mu, \\qquad \\Sigma' = A_t \\Sigma A_t^\\top +
              \\tfrac{c}{B} n_t n_t^\\top, \\qquad
              E[x_o^2] = \\mu_o^2 + \\Sigma_{oo}.

    ``A_t`` and ``n_t`` are read off the update rule at step ``t``'s lr.

    Returns:
        Array of mpf, shape ``(len(steps), len(h))``.
    """
    steps = [int(s) for s in steps]
    o = out_index(gamma)
    out = np.empty((len(steps), len(h)), dtype=object)
    with mpmath.workdps(dps):
        args = tuple(mpmath.mpf(float(v)) for v in (p, beta, gamma))
        for i in range(len(h)):
            hi = mpmath.mpf(float(h[i]))
            var = mpmath.mpf(float(c[i])) / mpmath.mpf(float(batch))
            mean = [mpmath.sqrt(mpmath.mpf(float(init_sq[i]))) * u for u in U0]
            cov = [[mpmath.mpf(0)] * STATE for _ in range(STATE)]
            cache = {}
            for t in range(max(steps) + 1):
                for j, s in enumerate(steps):
                    if s == t:
                        out[j, i] = mean[o] ** 2 + cov[o][o]
                lr = float(lr_of_step(t))
                if lr not in cache:
                    cache[lr] = _mp_transition(mpmath.mpf(lr), hi, *args)
                a, n = cache[lr]
                mean = [
                    sum(a[r][k] * mean[k] for k in range(STATE)) for r in range(STATE)
                ]
                cov = _madd(
                    _mm(_mm(a, cov), _mt(a)),
                    [[var * n[r] * n[k] for k in range(STATE)] for r in range(STATE)],
                )
    return out


def mp_problem_loss(problem, lr, beta, gamma, p, batch, steps, dps=50):
    """:func:`mp_loss` of a problem object (anything with ``h``, ``c``,
    ``init_sq`` and ``weight``)."""
    return mp_loss(
        problem.h, problem.c, problem.init_sq, problem.weight,
        lr, beta, gamma, p, batch, steps, dps=dps,
    )  # fmt: skip


def brute_force_problem_loss(problem, lr_of_step, beta, gamma, p, batch, steps):
    """:func:`brute_force_loss` of a problem object."""
    return brute_force_loss(
        problem.h, problem.c, problem.init_sq, problem.weight,
        lr_of_step, beta, gamma, p, batch, steps,
    )  # fmt: skip
