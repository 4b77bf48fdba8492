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
