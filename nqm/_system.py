"""Per-mode linear stochastic systems: every optimizer is an instance of one engine.

For each mode the state is a subset of :math:`x = (\\theta, m, \\tilde\\theta)` (the
velocity only with momentum, the average only with averaging) and one update is

.. math:: x_{t+1} = A x_t + n\\, \\varepsilon_t, \\qquad
          E[\\varepsilon_t] = 0,\\ \\operatorname{Var}[\\varepsilon_t] = \\hat c / B,

with :math:`s = \\alpha \\hat h` and, in full,

.. math::
    A = \\begin{pmatrix} 1-s & -\\alpha\\beta & 0 \\\\ \\hat h & \\beta & 0 \\\\
        (1-\\gamma)(1-s) & -(1-\\gamma)\\alpha\\beta & \\gamma \\end{pmatrix},\\qquad
    n = \\begin{pmatrix} -\\alpha \\\\ 1 \\\\ -(1-\\gamma)\\alpha \\end{pmatrix},\\qquad
    x_0 = \\theta_0 \\begin{pmatrix} 1 \\\\ 0 \\\\ 1 \\end{pmatrix}.

The matrices :math:`I - A` and :math:`I + A` are built directly from the
parameters, never by subtracting from the identity, so that eigenvalues near
:math:`+1` (tiny :math:`\\alpha h`) and near :math:`-1` (:math:`\\alpha h \\to 2`)
keep full relative accuracy in the doubling engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Features:
    """Which state components a system carries."""

    momentum: bool
    ema: bool

    @property
    def size(self) -> int:
        return 1 + int(self.momentum) + int(self.ema)

    @property
    def out(self) -> int:
        """Index of the component whose loss is reported."""
        return self.size - 1 if self.ema else 0


def system_matrices(hh, alpha, beta, gamma, feats: Features):
    """Build :math:`I - A`, :math:`I + A`, the noise vector and the initial vector.

    Args:
        hh: preconditioned curvature :math:`\\hat h`, any shape ``S``.
        alpha, beta, gamma: broadcastable to ``S``.
        feats: the state layout.

    Returns:
        ``(I_minus_A, I_plus_A, n, u)`` with shapes ``S + (k, k)``, ``S + (k, k)``,
        ``S + (k,)`` and ``(k,)``.
    """
    hh, alpha, beta, gamma = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (hh, alpha, beta, gamma))
    )
    shape = hh.shape
    k = feats.size
    s = alpha * hh
    one_minus_s = 1.0 - s
    zero = np.zeros(shape)
    one = np.ones(shape)
    im = np.zeros(shape + (k, k))
    ip = np.zeros(shape + (k, k))
    n = np.zeros(shape + (k,))
    u = np.zeros(k)
    # theta row
    im[..., 0, 0] = s
    ip[..., 0, 0] = 2.0 - s
    n[..., 0] = -alpha
    u[0] = 1.0
    col = 1
    if feats.momentum:
        ab = alpha * beta
        im[..., 0, col] = ab
        ip[..., 0, col] = -ab
        im[..., col, 0] = -hh
        ip[..., col, 0] = hh
        im[..., col, col] = 1.0 - beta
        ip[..., col, col] = 1.0 + beta
        n[..., col] = one
        m_col = col
        col += 1
    if feats.ema:
        g1 = 1.0 - gamma
        e = col
        im[..., e, 0] = -g1 * one_minus_s
        ip[..., e, 0] = g1 * one_minus_s
        if feats.momentum:
            im[..., e, m_col] = g1 * alpha * beta
            ip[..., e, m_col] = -g1 * alpha * beta
        im[..., e, e] = g1
        ip[..., e, e] = 1.0 + gamma
        n[..., e] = -g1 * alpha
        u[e] = 1.0
    del zero
    return im, ip, n, u
