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
:math:`G(z) = e_o^\\top \\operatorname{adj}(zI - A) n` (derived with sympy):

=============  =====================================  ===========================
state          :math:`F(z)`                           :math:`G(z)`
=============  =====================================  ===========================
SGD            1                                      :math:`-\\alpha`
momentum       :math:`z - \\beta`                      :math:`-\\alpha z`
EMA            :math:`z - \\gamma(1-s)`                :math:`-\\alpha(1-\\gamma) z`
both           :math:`z^2 - (\\beta+\\gamma(1-s))z + \\beta\\gamma`  :math:`-\\alpha(1-\\gamma) z^2`
=============  =====================================  ===========================

The noise sum is :math:`\\sum_{j,l} v_j v_l \\varphi_t(\\lambda_j\\lambda_l)` with
:math:`\\varphi_t(\\mu) = (1 - \\mu^t)/(1 - \\mu)`.

Accuracy. Every eigenvalue carries :math:`q = 1 - \\lambda`, :math:`p = 1 + \\lambda`
and :math:`\\log|\\lambda|`, computed from the parameters without cancellation, and
:math:`\\lambda^t - 1` is evaluated with ``expm1``, so eigenvalues within
:math:`10^{-12}` of :math:`\\pm 1` and :math:`t = 10^{12}` keep full relative
accuracy. The one loss of accuracy is cancellation between Lagrange terms when
two eigenvalues nearly coincide (critical damping, :math:`\\gamma \\approx \\lambda`).
It is measured a posteriori (the sum of the terms' absolute values) and returned,
so the caller can recompute those modes by doubling.

Speed. Modes with real eigenvalues use real arithmetic only; underdamped modes
(complex momentum roots) compute one root of each conjugate pair.
"""

from __future__ import annotations

import numpy as np

from ._system import Features

EPS = np.finfo(np.float64).eps


# ------------------------------------------------------------------ helpers
def _cexpm1(x, y):
    """Accurate :math:`e^{x+iy} - 1` from real parts (numpy's complex one is not)."""
    em1 = np.expm1(x)
    sh = np.sin(0.5 * y)
    ch = np.cos(0.5 * y)
    two_sh2 = 2.0 * sh * sh
    return (em1 * (1.0 - two_sh2) - two_sh2) + 1j * ((em1 + 1.0) * (2.0 * sh * ch))


def _log_abs(lam, q, p):
    """:math:`\\log|\\lambda|` from whichever of q = 1-lam, p = 1+lam is accurate."""
    pos = lam > 0
    if pos.all():
        return np.log1p(-q), pos
    return np.log1p(-np.where(pos, q, p)), pos


def _power_minus_one(log_abs, pos, t):
    """:math:`\\lambda^t - 1` for real lambda (integer t), accurately."""
    if t % 2 == 0 or pos.all():
        return np.expm1(t * log_abs)
    odd_negative = ~pos
    return np.where(odd_negative, -np.exp(t * log_abs) - 1.0, np.expm1(t * log_abs))


class _Real:
    """A real eigenvalue with accurate companions."""

    def __init__(self, lam, q, p, t):
        self.lam, self.q, self.p = lam, q, p
        self.log_abs, self.pos = _log_abs(lam, q, p)
        self.e = _power_minus_one(self.log_abs, self.pos, t)  # lam^t - 1
        # lam^t itself, directly: forming it as e + 1 would lose its relative
        # accuracy once the transient has decayed far below one.
        self.pow = np.exp(t * self.log_abs)
        if not self.pos.all():
            self.pow = np.where(self.pos | (t % 2 == 0), self.pow, -self.pow)

    def one_minus_square_t(self, t):
        """:math:`1 - \\lambda^{2t}`."""
        return -np.expm1(2.0 * t * self.log_abs)


def _momentum_roots(s, beta):
    """Discriminant and accurate pieces of the roots of z^2 - (1-s+beta) z + beta."""
    big = 1.0 - beta + s  # q1 + q2
    rs = np.sqrt(s)
    disc = ((1.0 - rs) ** 2 - beta) * ((1.0 + rs) ** 2 - beta)
    return big, disc


# -------------------------------------------------------------- real path
def _real_terms(eigs, diffs, fz, gz, special_pairs, t):
    """Lagrange sums with all-real eigenvalues.

    ``diffs[(j, l)]`` is :math:`\\lambda_j - \\lambda_l` for ``j < l``;
    ``special_pairs[(j, l)]`` overrides ``(1 - mu, 1 - mu^t)`` for a pair.
    """
    k = len(eigs)
    denom = []
    for j in range(k):
        d = 1.0
        for m in range(k):
            if m != j:
                d = d * (diffs[(j, m)] if j < m else -diffs[(m, j)])
        denom.append(d)
    f = 0.0
    f_abs = 0.0
    for j in range(k):
        term = fz[j] / denom[j] * eigs[j].pow
        f = f + term
        f_abs = f_abs + np.abs(term)
    v = [gz[j] / denom[j] for j in range(k)]
    G = 0.0
    g_abs = 0.0
    for j in range(k):
        for m in range(j, k):
            ej, em = eigs[j], eigs[m]
            if (j, m) in special_pairs:
                one_minus_mu, one_minus_mut = special_pairs[(j, m)]
            elif j == m:
                one_minus_mu = ej.q * ej.p
                one_minus_mut = ej.one_minus_square_t(t)
            else:
                one_minus_mu = ej.q + ej.lam * em.q
                one_minus_mut = -(ej.e + em.e + ej.e * em.e)
            term = v[j] * v[m] * (one_minus_mut / one_minus_mu)
            if j != m:
                term = 2.0 * term
            G = G + term
            g_abs = g_abs + np.abs(term)
    return f, f_abs, G, g_abs


# ----------------------------------------------------------- complex path
def _cplx(re, im):
    """A complex array from real and imaginary parts, without temporaries."""
    re, im = np.broadcast_arrays(re, im)
    out = np.empty(re.shape, dtype=np.complex128)
    out.real = re
    out.imag = im
    return out


def _abs_bound(z):
    """|Re z| + |Im z|: within a factor sqrt(2) of |z| and cheaper (error bounds)."""
    return np.abs(z.real) + np.abs(z.imag)


def _complex_pair_terms(s, alpha, beta, gamma, big, disc, ema: bool, t):
    r"""Underdamped momentum (complex roots r, conj(r)), with or without averaging.

    Only :math:`r = (\tau + i\sqrt{-D})/2` is computed; its conjugate's terms are
    complex conjugates, so sums over the pair are twice the real part.
    """
    tau = 1.0 - s + beta
    sq = np.sqrt(-disc)
    half_sq = 0.5 * sq
    lam = _cplx(0.5 * tau, half_sq)
    qp = _cplx(0.5 * big, -half_sq) * _cplx(0.5 * (3.0 - s + beta), half_sq)  # 1 - r^2
    log_abs = 0.5 * np.log(beta)  # |r|^2 = beta
    phase = np.arctan2(sq, tau)
    # r^t and r^t - 1 from one half-angle evaluation (|r|^t is per setting).
    em1 = np.expm1(t * log_abs)
    mod_t = np.exp(t * log_abs)  # not em1 + 1: that loses |r|^t once it is tiny
    sh = np.sin(0.5 * t * phase)
    ch = np.cos(0.5 * t * phase)
    two_sh2 = 2.0 * sh * sh
    sin_t = 2.0 * sh * ch
    e = _cplx(em1 * (1.0 - two_sh2) - two_sh2, mod_t * sin_t)  # r^t - 1
    pw = _cplx(mod_t * (1.0 - two_sh2), mod_t * sin_t)  # r^t directly
    one_minus_beta_t = -np.expm1(t * np.log(beta))  # 1 - (r conj r)^t
    phi_rr = -(e * (2.0 + e)) / qp  # (1 - r^{2t}) / (1 - r^2)
    if not ema:
        # F(z) = z - beta, G(z) = -alpha z; denominator r - conj(r) = i sq
        inv_d12 = -1.0 / sq  # 1 / (i sq) = -i / sq, applied as a rotation below
        w = _cplx(lam.imag, beta - lam.real) * (-inv_d12)  # (lam - beta) / (i sq)
        v = _cplx(lam.imag, -lam.real) * (alpha * -inv_d12)  # -alpha lam / (i sq)
        f1 = w * pw
        f = 2.0 * f1.real
        f_abs = 2.0 * _abs_bound(f1)
        t_rr = v * v * phi_rr
        t_rc = (v.real**2 + v.imag**2) * (one_minus_beta_t / (1.0 - beta))
        G = 2.0 * t_rr.real + 2.0 * t_rc
        g_abs = 2.0 * _abs_bound(t_rr) + 2.0 * np.abs(t_rc)
        return f, f_abs, G, g_abs
    g = _Real(gamma, 1.0 - gamma, 1.0 + gamma, t)
    # r - gamma = (1 - gamma) - q, with q = (big - i sq) / 2
    d1g_re = (1.0 - gamma) - 0.5 * big
    d1g_im = half_sq
    # den1 = (r - conj r)(r - gamma) = i sq (r - gamma); 1/den1 via its conjugate
    den_re = -sq * d1g_im
    den_im = sq * d1g_re
    inv_abs2 = 1.0 / (den_re * den_re + den_im * den_im)
    inv_den1 = _cplx(den_re * inv_abs2, -den_im * inv_abs2)
    deng = d1g_re * d1g_re + d1g_im * d1g_im  # (gamma - r)(gamma - conj r)
    lin = beta + gamma * (1.0 - s)
    lam2 = lam * lam
    w1 = (lam2 - lin * lam + beta * gamma) * inv_den1
    wg = (gamma * gamma - lin * gamma + beta * gamma) / deng
    c = -alpha * (1.0 - gamma)
    v1 = (c * lam2) * inv_den1
    vg = c * gamma * gamma / deng
    f1 = w1 * pw
    fg = wg * g.pow
    f = 2.0 * f1.real + fg
    f_abs = 2.0 * _abs_bound(f1) + np.abs(fg)
    t_rr = v1 * v1 * phi_rr
    t_rc = (v1.real**2 + v1.imag**2) * (one_minus_beta_t / (1.0 - beta))
    one_minus_mu = _cplx(
        (1.0 - gamma) + gamma * 0.5 * big, -gamma * half_sq
    )  # 1 - r gamma
    one_minus_mut = -(e + g.e + e * g.e)
    t_rg = (v1 * vg) * (one_minus_mut / one_minus_mu)
    t_gg = vg * vg * (g.one_minus_square_t(t) / ((1.0 - gamma) * (1.0 + gamma)))
    G = 2.0 * t_rr.real + 2.0 * t_rc + 4.0 * t_rg.real + t_gg
    g_abs = (
        2.0 * _abs_bound(t_rr)
        + 2.0 * np.abs(t_rc)
        + 4.0 * _abs_bound(t_rg)
        + np.abs(t_gg)
    )
    return f, f_abs, G, g_abs


# ----------------------------------------------------------------- public
def closed_form_terms(hh, alpha, beta, gamma, feats: Features, t: int):
    """Per-mode :math:`F_t = f_t^2` and :math:`G_t = \\sum_{k<t} g_k^2` (unit noise).

    Args:
        hh, alpha, beta, gamma: broadcastable arrays (shape ``S``).
        feats: state layout.
        t: number of updates, ``t >= 1``.

    Returns:
        ``(F, G, err_F, err_G)``: arrays of shape ``S``; ``err_*`` bound the
        absolute rounding error caused by cancellation between terms (``inf`` where
        the closed form is undefined, e.g. exactly coinciding eigenvalues).
        Overflowing (diverging) modes give ``F`` or ``G`` equal to ``inf``.
    """
    # Per-setting quantities keep their own (smaller) shape; numpy broadcasting
    # applies them to all modes, so e.g. log(gamma) is computed once per setting.
    hh, alpha, beta, gamma = (
        np.asarray(v, dtype=np.float64) for v in (hh, alpha, beta, gamma)
    )
    s = alpha * hh
    shape = np.broadcast_shapes(s.shape, beta.shape, gamma.shape)
    s = np.broadcast_to(s, shape)
    with np.errstate(all="ignore"):
        if not feats.momentum and not feats.ema:
            return _sgd_terms(s, alpha, t)
        if feats.momentum:
            big, disc = (np.broadcast_to(x, shape) for x in _momentum_roots(s, beta))
            cplx = disc < 0
        else:
            cplx = np.zeros(shape, dtype=bool)
        real = ~cplx
        # Per-setting values of size one stay scalars: masking would copy them to
        # every mode, and their logs and powers would be computed once per mode.
        per_setting = [
            x.reshape(()) if x.size == 1 else x for x in (alpha, beta, gamma)
        ]
        per_mode = [s] + ([big, disc] if feats.momentum else [])
        if not np.any(cplx) or not np.any(real):
            a_, b_, g_ = per_setting
            if np.any(cplx):
                out = _complex_pair_terms(s, a_, b_, g_, big, disc, ema=feats.ema, t=t)
            else:
                out = _real_case(s, a_, b_, g_, *per_mode[1:], feats=feats, t=t)
            f, f_abs, G, g_abs = (np.broadcast_to(x, shape) for x in out)
        else:
            f = np.empty(shape)
            f_abs = np.empty(shape)
            G = np.empty(shape)
            g_abs = np.empty(shape)

            def take(x, mask):
                return x if x.ndim == 0 else np.broadcast_to(x, shape)[mask]

            for mask, complex_path in ((real, False), (cplx, True)):
                a_, b_, g_ = (take(x, mask) for x in per_setting)
                pm = [take(x, mask) for x in per_mode]
                if complex_path:
                    out = _complex_pair_terms(
                        pm[0], a_, b_, g_, pm[1], pm[2], ema=feats.ema, t=t
                    )
                else:
                    out = _real_case(pm[0], a_, b_, g_, *pm[1:], feats=feats, t=t)
                for dst, src in zip((f, f_abs, G, g_abs), out, strict=True):
                    dst[mask] = src
        F = f * f
        err_F = 4.0 * EPS * f_abs * (np.abs(f) + f_abs)
        err_G = 8.0 * EPS * g_abs
        err_F = np.where(np.isfinite(err_F), err_F, np.inf)
        err_G = np.where(np.isfinite(err_G), err_G, np.inf)
        return _finite_or_inf(F), _finite_or_inf(G), err_F, err_G


def _real_case(s, alpha, beta, gamma, big=None, disc=None, *, feats, t):
    if feats.momentum:
        sq = np.sqrt(disc)
        q_big = 0.5 * (big + sq)
        q_small = s / q_big
        p_small = 2.0 - q_small
        p_big = (2.0 - s + 2.0 * beta) / p_small  # (1 + r1)(1 + r2)
        r1 = _Real(1.0 - q_small, q_small, p_small, t)
        r2 = _Real(1.0 - q_big, q_big, p_big, t)
        pair = ((1.0 - beta), -np.expm1(t * np.log(beta)))  # r1 r2 = beta
    if feats.momentum and not feats.ema:
        eigs = [r1, r2]
        diffs = {(0, 1): sq}
        fz = [e.lam - beta for e in eigs]
        gz = [-alpha * e.lam for e in eigs]
        return _real_terms(eigs, diffs, fz, gz, {(0, 1): pair}, t)
    g = _Real(gamma, 1.0 - gamma, 1.0 + gamma, t)
    if not feats.momentum:
        a = _Real(1.0 - s, s, 2.0 - s, t)
        eigs = [a, g]
        diffs = {(0, 1): (1.0 - gamma) - s}
        fz = [e.lam - gamma * (1.0 - s) for e in eigs]
        gz = [-alpha * (1.0 - gamma) * e.lam for e in eigs]
        special = {(0, 1): ((1.0 - gamma) + gamma * s, -(a.e + g.e + a.e * g.e))}
        return _real_terms(eigs, diffs, fz, gz, special, t)
    eigs = [r1, r2, g]
    diffs = {(0, 1): sq, (0, 2): (1.0 - gamma) - q_small, (1, 2): (1.0 - gamma) - q_big}
    lin = beta + gamma * (1.0 - s)
    fz = [e.lam * e.lam - lin * e.lam + beta * gamma for e in eigs]
    gz = [-alpha * (1.0 - gamma) * e.lam * e.lam for e in eigs]
    special = {(0, 1): pair}
    for j, e in ((0, r1), (1, r2)):
        special[(j, 2)] = ((1.0 - gamma) + gamma * e.q, -(e.e + g.e + e.e * g.e))
    return _real_terms(eigs, diffs, fz, gz, special, t)


def _finite_or_inf(x):
    return np.where(np.isfinite(x), np.maximum(x, 0.0), np.inf)


def _sgd_terms(s, alpha, t):
    """SGD: :math:`F = (1-s)^{2t}`, :math:`G = \\alpha^2 (1 - (1-s)^{2t})/(s(2-s))`."""
    log_abs, _ = _log_abs(1.0 - s, s, 2.0 - s)
    x = 2.0 * t * log_abs
    F = np.exp(x)
    G = alpha * alpha * (-np.expm1(x)) / (s * (2.0 - s))
    G = np.where(s == 2.0, alpha * alpha * t, G)  # |1 - s| = 1 exactly
    zero = np.zeros_like(F)
    return _finite_or_inf(F), _finite_or_inf(G), zero, zero


# ------------------------------------------------- bounds for first crossings
def mean_response_bound(hh, alpha, beta, gamma, feats: Features, t: int, span: int):
    """Per-mode lower bound of :math:`f_\\tau^2` over :math:`\\tau \\in [t, t + span]`.

    With :math:`f_\\tau = \\sum_j w_j \\lambda_j^\\tau` and :math:`|\\lambda_j| \\le 1`,

    .. math:: |f_\\tau - f_t| \\le \\sum_j |w_j \\lambda_j^t|\\,
              \\min(2, (\\tau - t)\\,|1 - \\lambda_j|),

    because :math:`|\\lambda^k - 1| \\le k |1 - \\lambda|` inside the unit disc. The
    rounding error of :math:`f_t` itself (cancellation between terms) is added to
    the slack, so the bound is valid for every mode; it is 0 for unstable modes
    and where the Lagrange form is undefined. Used by
    :func:`nqm.search.steps_to_target` to prune intervals that cannot contain the
    first crossing. Complex arithmetic; not on the fast path.

    Returns:
        ``(lower_sq, f_t)``, shape ``S`` each.
    """
    hh, alpha, beta, gamma = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (hh, alpha, beta, gamma))
    )
    s = alpha * hh
    with np.errstate(all="ignore"):
        if not feats.momentum and not feats.ema:
            lam = [1.0 - s + 0j]
            w = [np.ones_like(s) + 0j]
        else:
            if feats.momentum:
                tau = 1.0 - s + beta
                disc = ((1.0 - np.sqrt(s)) ** 2 - beta) * (
                    (1.0 + np.sqrt(s)) ** 2 - beta
                )
                sq = np.sqrt(disc + 0j)
                r1, r2 = 0.5 * (tau + sq), 0.5 * (tau - sq)
            if feats.momentum and feats.ema:
                lam = [r1, r2, gamma + 0j]
                lin = beta + gamma * (1.0 - s)
                fz = [z * z - lin * z + beta * gamma for z in lam]
            elif feats.momentum:
                lam = [r1, r2]
                fz = [z - beta for z in lam]
            else:
                lam = [1.0 - s + 0j, gamma + 0j]
                fz = [z - gamma * (1.0 - s) for z in lam]
            w = []
            for j, zj in enumerate(lam):
                den = 1.0 + 0j
                for m, zm in enumerate(lam):
                    if m != j:
                        den = den * (zj - zm)
                w.append(fz[j] / den)
        terms = [w[j] * lam[j] ** t for j in range(len(lam))]
        f = sum(terms).real
        mags = [np.abs(x) for x in terms]
        slack = 8.0 * EPS * sum(mags)
        for j, zj in enumerate(lam):
            slack = slack + mags[j] * np.minimum(2.0, span * np.abs(1.0 - zj))
        stable = np.ones(s.shape, dtype=bool)
        for zj in lam:
            stable &= np.abs(zj) <= 1.0
        lower = np.maximum(np.abs(f) - slack, 0.0)
        lower = np.where(stable & np.isfinite(lower), lower, 0.0)
    return lower * lower, f
