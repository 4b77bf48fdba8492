"""Closed-form per-mode moments for a constant learning rate (the fast path).

For a constant lr the output component of the state is, from the rank-one initial
state :math:`x_0 = \\theta_0 u` and the noise direction :math:`n`,

.. math::
    E[\\theta_{o,t}^2] = E[\\theta_0^2]\\, f_t^2 + \\sigma^2 \\sum_{k<t} g_k^2, \\qquad
    f_t = e_o^\\top A^t u, \\quad g_k = e_o^\\top A^k n .

With distinct eigenvalues :math:`\\lambda_j` of :math:`A`, Sylvester's formula gives
:math:`f_t = \\sum_j w_j \\lambda_j^t`, :math:`g_k = \\sum_j v_j \\lambda_j^k` with

.. math:: w_j = \\frac{F(\\lambda_j)}{\\prod_{l\\ne j} (\\lambda_j - \\lambda_l)},\\quad
          v_j = \\frac{G(\\lambda_j)}{\\prod_{l\\ne j} (\\lambda_j - \\lambda_l)},

where :math:`F(z) = e_o^\\top \\operatorname{adj}(zI - A) u` and
:math:`G(z) = e_o^\\top \\operatorname{adj}(zI - A) n` (derived with sympy; see
``analysis.symbolic``). The noise sum is
:math:`\\sum_{j,l} v_j v_l \\varphi_t(\\lambda_j\\lambda_l)` with
:math:`\\varphi_t(\\mu) = (1 - \\mu^t)/(1 - \\mu)`.

Every eigenvalue carries :math:`q = 1 - \\lambda`, :math:`p = 1 + \\lambda` and
:math:`\\log\\lambda`, each computed from the parameters without cancellation;
:math:`1 - \\mu^t` is evaluated as :math:`-\\operatorname{expm1}(t \\log \\mu)`. The
only loss of accuracy is cancellation between the Lagrange terms when two
eigenvalues nearly coincide (critical damping, :math:`\\gamma \\approx \\lambda`).
It is measured a posteriori (the sum of absolute values of the terms) and
returned, so that the caller can send those modes to the doubling engine.
"""

from __future__ import annotations

import numpy as np

from ._system import Features

EPS = np.finfo(np.float64).eps


def _cexpm1(z):
    """Accurate :math:`e^z - 1` for complex ``z`` (numpy's loses relative accuracy)."""
    x, y = z.real, z.imag
    em1 = np.expm1(x)
    sh = np.sin(0.5 * y)
    ch = np.cos(0.5 * y)
    sin_y = 2.0 * sh * ch
    re = em1 * (1.0 - 2.0 * sh * sh) - 2.0 * sh * sh
    im = (em1 + 1.0) * sin_y
    return re + 1j * im


def _cexp(z):
    r = np.exp(z.real)
    return r * np.cos(z.imag) + 1j * (r * np.sin(z.imag))


def _wrap(phase):
    """Map phases to (-pi, pi]; exact integer multiples of 2 pi vanish."""
    return phase - 2.0 * np.pi * np.round(phase / (2.0 * np.pi))


class _Eig:
    """An eigenvalue with accurate companions: lam, q = 1-lam, p = 1+lam, log(lam)."""

    __slots__ = ("lam", "q", "p", "log")

    def __init__(self, lam, q, p, log):
        self.lam, self.q, self.p, self.log = lam, q, p, log


def _real_eig(lam, q, p):
    lam = np.asarray(lam, dtype=np.float64)
    pos = lam > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_abs = np.where(pos, np.log1p(-np.where(pos, q, 0.0)), np.log1p(-np.where(pos, 0.0, p)))
    return _Eig(lam + 0j, q + 0j, p + 0j, log_abs + 1j * np.where(pos, 0.0, np.pi))


def _momentum_pair(s, beta):
    """Roots of :math:`z^2 - (1 - s + \\beta) z + \\beta` with accurate companions."""
    big = 1.0 - beta + s  # q1 + q2
    rs = np.sqrt(s)
    disc = ((1.0 - rs) ** 2 - beta) * ((1.0 + rs) ** 2 - beta)
    real = disc >= 0
    sq = np.sqrt(np.abs(disc))
    # real branch: q_small * q_big = s
    q_big = 0.5 * (big + sq)
    q_small = s / q_big
    p_small = 2.0 - q_small
    p_big = (2.0 - s + 2.0 * beta) / p_small  # (1 + r1)(1 + r2) = 2 - s + 2 beta
    e1r = _real_eig(1.0 - q_small, q_small, p_small)
    e2r = _real_eig(1.0 - q_big, q_big, p_big)
    # complex branch: r = (tau +- i sq)/2, |r|^2 = beta
    tau = 1.0 - s + beta
    with np.errstate(divide="ignore"):
        half_log_beta = 0.5 * np.log(beta)
    arg = np.arctan2(sq, tau)
    lam_c = 0.5 * (tau + 1j * sq)
    q_c = 0.5 * (big - 1j * sq)
    p_c = 0.5 * ((3.0 - s + beta) + 1j * sq)
    log_c = half_log_beta + 1j * arg

    def pick(a, b):
        return np.where(real, a, b)

    e1 = _Eig(pick(e1r.lam, lam_c), pick(e1r.q, q_c), pick(e1r.p, p_c), pick(e1r.log, log_c))
    e2 = _Eig(
        pick(e2r.lam, np.conj(lam_c)),
        pick(e2r.q, np.conj(q_c)),
        pick(e2r.p, np.conj(p_c)),
        pick(e2r.log, np.conj(log_c)),
    )
    # r1 - r2 exactly: sqrt(D) (real) or i sqrt(-D) (complex)
    diff12 = np.where(real, sq + 0j, 1j * sq)
    return e1, e2, diff12


def closed_form_terms(hh, alpha, beta, gamma, feats: Features, t: int):
    """Per-mode :math:`F_t = f_t^2` and :math:`G_t = \\sum_{k<t} g_k^2` (unit noise).

    Args:
        hh, alpha, beta, gamma: broadcastable arrays (shape ``S``).
        feats: state layout.
        t: number of updates, ``t >= 1``.

    Returns:
        ``(F, G, err_F, err_G)``: arrays of shape ``S``; ``err_*`` are a-posteriori
        bounds on the absolute rounding error from cancellation between terms.
        Non-finite results (overflow of diverging modes) are returned as ``inf``.
    """
    hh, alpha, beta, gamma = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (hh, alpha, beta, gamma))
    )
    s = alpha * hh
    t = float(t)
    with np.errstate(all="ignore"):
        if not feats.momentum and not feats.ema:
            return _sgd_terms(s, alpha, t)
        if feats.momentum:
            e1, e2, d12 = _momentum_pair(s, beta)
        if feats.ema:
            g_eig = _real_eig(gamma, 1.0 - gamma, 1.0 + gamma)
        if feats.momentum and not feats.ema:
            eigs = [e1, e2]
            diffs = {(0, 1): d12}
            fz = [e.lam - beta for e in eigs]
            gz = [-alpha * e.lam for e in eigs]
            pair_one_minus = {(0, 1): (1.0 - beta) + 0j}
        elif feats.ema and not feats.momentum:
            ea = _real_eig(1.0 - s, s, 2.0 - s)
            eigs = [ea, g_eig]
            diffs = {(0, 1): ((1.0 - gamma) - s) + 0j}
            fz = [e.lam - gamma * (1.0 - s) for e in eigs]
            gz = [-alpha * (1.0 - gamma) * e.lam for e in eigs]
            pair_one_minus = {}
        else:
            eigs = [e1, e2, g_eig]
            diffs = {
                (0, 1): d12,
                (0, 2): (1.0 - gamma) - e1.q,
                (1, 2): (1.0 - gamma) - e2.q,
            }
            lin = beta + gamma * (1.0 - s)
            fz = [e.lam * e.lam - lin * e.lam + beta * gamma for e in eigs]
            gz = [-alpha * (1.0 - gamma) * e.lam * e.lam for e in eigs]
            pair_one_minus = {(0, 1): (1.0 - beta) + 0j}
        k = len(eigs)
        denom = []
        for j in range(k):
            d = 1.0 + 0j
            for m in range(k):
                if m != j:
                    d = d * (diffs[(j, m)] if j < m else -diffs[(m, j)])
            denom.append(d)
        w = [fz[j] / denom[j] for j in range(k)]
        v = [gz[j] / denom[j] for j in range(k)]
        powers = [_cexp(t * e.log) for e in eigs]
        f_terms = [w[j] * powers[j] for j in range(k)]
        f = sum(f_terms).real
        f_abs = sum(np.abs(x) for x in f_terms)
        F = f * f
        err_F = 4.0 * EPS * f_abs * (np.abs(f) + f_abs * EPS)
        G = 0.0
        g_abs = 0.0
        for j in range(k):
            for m in range(j, k):
                ej, em = eigs[j], eigs[m]
                if j == m:
                    one_minus_mu = ej.q * ej.p
                elif (j, m) in pair_one_minus:
                    one_minus_mu = pair_one_minus[(j, m)]
                else:
                    one_minus_mu = ej.q + ej.lam * em.q
                log_mu = ej.log + em.log
                log_mu = log_mu.real + 1j * _wrap(log_mu.imag)
                phi = -_cexpm1(t * log_mu) / one_minus_mu
                term = v[j] * v[m] * phi * (1.0 if j == m else 2.0)
                G = G + term
                g_abs = g_abs + np.abs(term)
        G = G.real
        err_G = 8.0 * EPS * g_abs
        F, G = _finite_or_inf(F), _finite_or_inf(G)
        err_F = np.where(np.isfinite(err_F), err_F, np.inf)
        err_G = np.where(np.isfinite(err_G), err_G, np.inf)
    return F, G, err_F, err_G


def _finite_or_inf(x):
    return np.where(np.isfinite(x), np.maximum(x, 0.0), np.inf)


def _sgd_terms(s, alpha, t):
    """SGD: :math:`F = (1-s)^{2t}`, :math:`G = \\alpha^2 (1 - (1-s)^{2t})/(s(2-s))`."""
    lam = 1.0 - s
    pos = lam > 0
    log_abs = np.where(pos, np.log1p(-np.where(pos, s, 0.0)), np.log1p(np.where(pos, 0.0, s - 2.0)))
    x = 2.0 * t * log_abs
    F = np.exp(x)
    G = alpha * alpha * (-np.expm1(x)) / (s * (2.0 - s))
    # s == 2 exactly: |lambda| = 1, G = alpha^2 t
    G = np.where(s == 2.0, alpha * alpha * t, G)
    zero = np.zeros_like(F)
    return _finite_or_inf(F), _finite_or_inf(G), zero, zero
