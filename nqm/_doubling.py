"""Exact propagation of second moments by doubling of the affine moment map.

One update maps the second moment :math:`Z = E[x x^\\top]` to
:math:`T(Z) = A Z A^\\top + Q` with :math:`Q = \\sigma^2 n n^\\top`. Powers of the
map are kept as pairs :math:`(E_k, N_k)` with

.. math:: T^k(Z) = (I - E_k) Z (I - E_k)^\\top + N_k, \\qquad E_k = I - A^k,

and combined by

.. math:: E_{a+b} = E_a + E_b - E_a E_b, \\qquad
          N_{a+b} = N_a + (I - E_a) N_b (I - E_a)^\\top .

Storing :math:`E_k` rather than :math:`A^k` keeps the relative accuracy of
eigenvalues near one (:math:`1 - (1 - \\epsilon)^k` never loses the digits of
:math:`\\epsilon`), and :math:`E_2 = (I - A)(I + A)` keeps it for eigenvalues near
minus one. Noise terms are sums of positive semi-definite matrices. Cost:
:math:`O(k^3 \\log t)` per mode. This is the engine's robust path (and the
reference for the closed forms); overflow of a diverging mode gives ``inf``.
"""

from __future__ import annotations

import numpy as np


def _mm(a, b):
    return np.matmul(a, b)


def _sandwich(e, n):
    """(I - E) N (I - E)^T for stacked matrices."""
    p = -e
    idx = np.arange(e.shape[-1])
    p[..., idx, idx] += 1.0
    return _mm(_mm(p, n), np.swapaxes(p, -1, -2))


def _compose(ea, na, eb, nb):
    e = ea + eb - _mm(ea, eb)
    return e, na + _sandwich(ea, nb)


class MomentMap:
    """Powers of the affine second-moment map of a batch of linear systems.

    Args:
        i_minus_a: :math:`I - A`, shape ``S + (k, k)``.
        i_plus_a: :math:`I + A`, same shape.
        q: noise covariance per update :math:`Q`, shape ``S + (k, k)``.
    """

    def __init__(self, i_minus_a, i_plus_a, q) -> None:
        self._base = [(i_minus_a, q)]  # powers 2**j of the map, j = 0, 1, ...
        self._i_plus_a = i_plus_a

    def _power_of_two(self, j: int):
        while len(self._base) <= j:
            if len(self._base) == 1:
                e1, q = self._base[0]
                # E_2 = I - A^2 = (I - A)(I + A): accurate near eigenvalue -1.
                e2 = _mm(e1, self._i_plus_a)
                n2 = q + _sandwich(e1, q)
                self._base.append((e2, n2))
            else:
                e, n = self._base[-1]
                self._base.append(_compose(e, n, e, n))
        return self._base[j]

    def power(self, steps: int):
        """``(E_t, N_t)`` for ``t = steps`` updates (``steps >= 0``)."""
        e0, q0 = self._base[0]
        e = np.zeros_like(e0)
        n = np.zeros_like(q0)
        j = 0
        t = int(steps)
        while t:
            if t & 1:
                eb, nb = self._power_of_two(j)
                e, n = _compose(e, n, eb, nb)
            t >>= 1
            j += 1
        return e, n

    def powers(self, steps):
        """``(E_t, N_t)`` for every ``t`` in ``steps`` (shape ``(T,)``) at once.

        Returns arrays of shape ``(T,) + S + (k, k)``, equal to :meth:`power`
        for each step (the same compositions in the same order).
        """
        rem = np.asarray(steps, dtype=np.int64).reshape(-1).copy()
        if np.any(rem < 0):
            raise ValueError("steps must be non-negative")
        e0, q0 = self._base[0]
        e = np.zeros((rem.size,) + e0.shape)
        n = np.zeros((rem.size,) + q0.shape)
        j = 0
        while np.any(rem):
            idx = np.nonzero(rem & 1)[0]
            if idx.size:
                eb, nb = self._power_of_two(j)
                e[idx], n[idx] = _compose(e[idx], n[idx], eb, nb)
            rem >>= 1
            j += 1
        return e, n

    def apply(self, z, steps: int):
        """:math:`T^{t}(Z)` for a stacked second moment ``z`` (shape ``S + (k, k)``)."""
        e, n = self.power(steps)
        return _sandwich(e, z) + n


def step_loop(z, i_minus_a_seq, q_seq):
    """Apply a sequence of different one-step maps (time-varying lr) in order.

    Args:
        z: initial second moment ``S + (k, k)``.
        i_minus_a_seq: iterable of :math:`I - A_s`.
        q_seq: iterable of :math:`Q_s`.
    """
    for e, q in zip(i_minus_a_seq, q_seq, strict=True):
        z = _sandwich(e, z) + q
    return z
