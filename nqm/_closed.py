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
accuracy. The numerators are evaluated in factored form wherever the expanded
polynomial cancels: :math:`F(\\gamma) = \\gamma^2 s` (both) or
:math:`\\gamma s` (averaging alone), :math:`F(1-s) = (1-s)(1-\\gamma)`, and at
a momentum root :math:`F(r) = (1-\\gamma)(r(1-s) - \\beta)`, whose two values
are the roots of a quadratic with known sum and product (real roots) or have
the real part :math:`(1-\\gamma)((1-s)^2 - \\beta(1+s))/2` (complex roots).
The one loss of accuracy is cancellation between Lagrange terms when
two eigenvalues nearly coincide (critical damping, :math:`\\gamma \\approx \\lambda`).
It is measured a posteriori (the sum of the terms' absolute values) and returned,
so the caller can recompute those modes by doubling.

Speed. Modes with real eigenvalues use real arithmetic only; underdamped modes
(complex momentum roots) compute one root of each conjugate pair. Each pass
over the modes costs microseconds, so the count of passes is what is kept
small: a real root whose power underflows in every mode (long horizons) costs
one reduction instead of its three transcendental passes, exponentials skip
NumPy's slow path for underflowing arguments, and signs and powers of two are
carried into the products that need them.
"""

from __future__ import annotations

import numpy as np

from ._system import Features

EPS = np.finfo(np.float64).eps

#: Double arguments at or below which :math:`e^x` rounds to exactly 0 (it is
#: below half the smallest subnormal, :math:`e^{-745.14}`).
EXP_ZERO = -746.0


# ------------------------------------------------------------------ helpers
def _exp(x):
    """``np.exp(x)``, the same values, without NumPy's slow path for arguments
    whose result underflows.

    NumPy's vectorised exponential hands a whole array to a scalar loop when
    any entry underflows (several times slower; long horizons make most
    transients underflow). Entries at or below :data:`EXP_ZERO` are exactly 0
    and skipped; NaN stays NaN. Extended-precision arrays (whose range is
    wider) and scalars go to ``np.exp`` directly.
    """
    if np.ndim(x) == 0 or x.dtype != np.float64:
        return np.exp(x)
    if not x.size or not x.min() <= EXP_ZERO:  # no underflow (NaN: np.exp)
        return np.exp(x)
    out = np.zeros(x.shape)
    np.exp(x, out=out, where=~(x <= EXP_ZERO))
    return out


def _log_abs(lam, q, p):
    """:math:`\\log|\\lambda|` from whichever of q = 1-lam, p = 1+lam is accurate."""
    if lam.size == 0 or lam.min() > 0:  # the common case: one reduction
        return np.log1p(-q), True
    pos = lam > 0
    return np.log1p(-np.where(pos, q, p)), pos


def _power_minus_one(log_abs, pos, t):
    """:math:`\\lambda^t - 1` for real lambda (integer t), accurately."""
    even = np.asarray(t) % 2 == 0
    if pos.all() or np.all(even):
        return np.expm1(t * log_abs)
    odd_negative = ~pos & ~even
    return np.where(odd_negative, -np.exp(t * log_abs) - 1.0, np.expm1(t * log_abs))


#: A transient :math:`\lambda^t` with :math:`t \log\lambda` below this is
#: taken as decayed: :data:`EXP_ZERO` with a relative margin far above the
#: rounding of :math:`\log\lambda` (the bound is tested on the smallest
#: :math:`q = 1 - \lambda`, the array's entries are rounded independently).
DECAYED_EXPONENT = 1.01 * EXP_ZERO


def _decayed(lam, q, t):
    r"""Whether ``lam`` (``q = 1 - lam``) is positive and :math:`\lambda^t`
    underflows to 0 in every entry and at every step ``t``: for a double
    array, one reduction instead of three transcendental passes; for an
    extended-precision scalar (:func:`extended_terms`), its own range."""
    if isinstance(q, np.ndarray):
        if not (q.dtype == np.float64 and q.size > 1):
            return False
        if not lam.min() > 0.0:  # NaN compares False
            return False
        return bool(np.min(t) * np.log1p(-q.min()) < DECAYED_EXPONENT)
    if isinstance(q, EXTENDED) and np.ndim(t) == 0:
        return bool(lam > 0.0 and t * np.log1p(-q) < EXTENDED_DECAYED_EXPONENT)
    return False


class _Real:
    """A real eigenvalue with accurate companions."""

    def __init__(self, lam, q, p, t):
        self.lam, self.q, self.p = lam, q, p
        if _decayed(lam, q, t):
            # every lam^t underflows: the exponentials below would return
            # exactly these values (e^x = 0 and e^x - 1 = -1 for x <= EXP_ZERO)
            self.pos, self.all_pos, self.log_abs = True, True, None
            self.e, self.pow = -1.0, 0.0
            return
        self.log_abs, self.pos = _log_abs(lam, q, p)
        self.all_pos = bool(np.all(self.pos))
        x = t * self.log_abs  # log|lam^t|
        if self.all_pos:
            self.e = np.expm1(x)  # lam^t - 1
        else:
            self.e = _power_minus_one(self.log_abs, self.pos, t)
        # lam^t itself, directly: forming it as e + 1 would lose its relative
        # accuracy once the transient has decayed far below one.
        self.pow = _exp(x)
        if not self.all_pos:
            self.pow = np.where(self.pos | (t % 2 == 0), self.pow, -self.pow)

    def one_minus_square_t(self, t):
        """:math:`1 - \\lambda^{2t}`.

        For positive lambda from :math:`e = \\lambda^t - 1` as :math:`-e(2 + e)`
        (both factors keep their relative accuracy: :math:`2 + e \\in (1, 2]`),
        which saves an exponential; otherwise by ``expm1``.
        """
        by_e = self.e * (-2.0 - self.e)  # -e (2 + e), with one pass fewer
        if self.all_pos:
            return by_e
        # per entry, so that a mode's value does not depend on its batch
        return np.where(self.pos, by_e, -np.expm1(2.0 * t * self.log_abs))


def _momentum_roots(s, beta):
    """Discriminant and accurate pieces of the roots of z^2 - (1-s+beta) z + beta."""
    big = 1.0 - beta + s  # q1 + q2
    rs = np.sqrt(s)
    disc = ((1.0 - rs) ** 2 - beta) * ((1.0 + rs) ** 2 - beta)
    return big, disc


# -------------------------------------------------------------- real path
def _vanishes(power) -> bool:
    r"""Whether a power :math:`\lambda^t` is the scalar 0 (decayed in every
    mode and setting: see :func:`_decayed`)."""
    return isinstance(power, float) and power == 0.0


def _real_terms(eigs, diffs, fz, gz, special_pairs, t):
    """Lagrange sums with all-real eigenvalues (two or three).

    ``diffs[(j, l)]`` is :math:`\\lambda_j - \\lambda_l` for ``j < l``;
    ``special_pairs[(j, l)] = (1 - mu, x, sign)`` overrides the pair's
    :math:`1 - \\mu` and gives :math:`1 - \\mu^t = \\pm x`.

    The second Lagrange denominator is negative (``-d01`` or ``-d01 d12``):
    its sign, and those of the factors :math:`1 - \\mu^t = -(e_j + e_m + e_j
    e_m)`, are carried to the additions rather than applied on their own
    (negation is exact, so every term keeps its value). Mean terms of a root
    decayed in every mode (:math:`\\lambda^t = 0`) are skipped; a mode where
    such a term would be undefined has an undefined noise term as well.
    """
    k = len(eigs)
    d01 = diffs[(0, 1)]
    if k == 2:
        denom = [d01, d01]
    else:
        d02, d12 = diffs[(0, 2)], diffs[(1, 2)]
        denom = [d01 * d02, d01 * d12, d02 * d12]
    neg = [False, True, False]  # denominator j is -denom[j]
    f = f_abs = None
    for j in range(k):
        pw = eigs[j].pow
        if _vanishes(pw):
            continue
        term = fz[j] / denom[j] * pw
        if f is None:
            f, f_abs = (-term if neg[j] else term), np.abs(term)
        else:
            f = f - term if neg[j] else f + term
            f_abs = f_abs + np.abs(term)
    if f is None:
        f = f_abs = np.zeros(np.shape(denom[0]))
    v = [gz[j] / denom[j] for j in range(k)]  # up to the signs neg
    twice = {}
    G = g_abs = None
    for j in range(k):
        for m in range(j, k):
            ej, em = eigs[j], eigs[m]
            sign = neg[j] != neg[m]  # the term is -(vv x / (1 - mu))
            if (j, m) in special_pairs:
                one_minus_mu, x, pair_sign = special_pairs[(j, m)]
                sign ^= pair_sign < 0
            elif j == m:
                one_minus_mu = ej.q * ej.p
                x = ej.one_minus_square_t(t)
            else:
                one_minus_mu = ej.q + ej.lam * em.q
                x = (ej.e + em.e) + ej.e * em.e  # -(1 - mu^t)
                sign = not sign
            if j == m:
                vv = v[j] * v[m]
            else:
                if j not in twice:
                    twice[j] = 2.0 * v[j]
                vv = twice[j] * v[m]
            term = vv * (x / one_minus_mu)
            # a diagonal term is >= 0 (or NaN): v^2 times (1 - lam^2t) / (1 - lam^2)
            term_abs = term if j == m else np.abs(term)
            if G is None:
                G, g_abs = (-term if sign else term), term_abs
            else:
                G = G - term if sign else G + term
                g_abs = g_abs + term_abs
    return f, f_abs, G, g_abs


# ----------------------------------------------------------- complex path
# Complex numbers on this path are (re, im) pairs of real arrays: numpy's complex
# arithmetic (and its temporaries) costs several times the real operations.
def _cmul(x, y):
    return (x[0] * y[0] - x[1] * y[1], x[0] * y[1] + x[1] * y[0])


def _cdiv(x, y, scale=1.0):
    """``scale * x / y`` (``scale`` real, a number or an array), the factor
    riding on the one reciprocal; a power of two gives exactly ``scale`` times
    the quotient."""
    inv = scale / (y[0] * y[0] + y[1] * y[1])
    if np.ndim(x[0]) == 0 and np.ndim(x[1]) == 0 and x[1] == 0.0:
        # a real scalar numerator (decayed transients): the same values, with
        # the products by zero left out (y is finite)
        return ((x[0] * y[0]) * inv, ((-x[0]) * y[1]) * inv)
    return ((x[0] * y[0] + x[1] * y[1]) * inv, (x[1] * y[0] - x[0] * y[1]) * inv)


def _abs_bound(x):
    """|Re z| + |Im z|: within a factor sqrt(2) of |z| and cheaper (error bounds)."""
    return np.abs(x[0]) + np.abs(x[1])


def _complex_pair_terms(s, alpha, beta, gamma, big, disc, ema: bool, t):
    r"""Underdamped momentum (complex roots r, conj(r)), with or without averaging.

    Only :math:`r = (\tau + i\sqrt{-D})/2` is computed; its conjugate's terms are
    complex conjugates, so sums over the pair are twice the real part. Every root
    has :math:`|r|^2 = \beta`, so :math:`|r|^t` is per setting; where it underflows
    to zero in every setting, :math:`r^t = 0` exactly and no phase is needed.

    Every pass over the modes counts (a few microseconds each at d = 10^4), so
    signs and factors of two are carried into the products that need them
    rather than applied on their own (negating an operand and scaling by a
    power of two are exact), and per-setting factors ride on the per-mode
    quantities that need them (the cross term's weight on the reciprocal of
    its quotient).
    """
    sq = np.sqrt(-disc)
    b = 0.5 * sq
    hb = 0.5 * big  # 1 - Re r, big = 1 - beta + s
    # 2 Re r, the argument of the phase t arg(r): t times its rounding moves
    # a transient that survives t = 10^6 by up to 1e-8 (conditioning, outside
    # the certified bound), so this one expression serves every evaluation
    tau = 1.0 - s + beta
    a = 0.5 * tau  # r = a + i b
    bb = b * b
    x = 2.0 - hb  # 1 + Re r
    qp = (hb * x + bb, hb * b - b * x)  # (1 - r)(1 + r)
    log_abs = 0.5 * np.log(beta)  # log|r|
    mod_t = np.exp(t * log_abs)  # |r|^t, directly: expm1 + 1 would lose it when tiny
    decayed = not np.any(mod_t)
    if decayed:
        e = (-1.0, 0.0)  # r^t - 1
        pw = (0.0, 0.0)  # r^t
        ninv = -2.0 / (qp[0] * qp[0] + qp[1] * qp[1])
        phi_n = (qp[0] * ninv, (-qp[1]) * ninv)  # 2 (r^{2t} - 1) / (1 - r^2)
    else:
        em1 = np.expm1(t * log_abs)
        half = (0.5 * t) * np.arctan2(sq, tau)  # half the phase of r^t
        # The phase through u = tan(half) (NumPy's tangent is several times
        # cheaper than its sine and cosine): 1 - cos and sin of the full angle
        # are quotients that keep their relative accuracy, and |u| <= 2e16 for
        # any double argument (no overflow). cos is formed as 1 - (1 - cos), so
        # that a decayed |r|^t = 0 gives r^t - 1 = -1 exactly, as the branch
        # above (a mode's value does not depend on its batch).
        u = np.tan(half)
        u2 = u * u
        inv2 = 2.0 / (1.0 + u2)
        two_sh2 = u2 * inv2  # 1 - cos(2 half) = 2 sin(half)^2
        cos_t = 1.0 - two_sh2
        sin_t = u * inv2
        e = (em1 * cos_t - two_sh2, mod_t * sin_t)
        pw = (mod_t * cos_t, e[1])
        e2 = _cmul(e, (2.0 + e[0], e[1]))  # r^{2t} - 1
        phi_n = _cdiv(e2, qp, 2.0)
    one_minus_beta_t = -np.expm1(t * np.log(beta))  # 1 - (r conj r)^t
    # the pair's terms enter G twice (conjugates): phi_n and ratio_rc carry
    # that factor 2, exactly
    ratio_rc = 2.0 * (one_minus_beta_t / (1.0 - beta))
    if not ema:
        # F(z) = z - beta, G(z) = -alpha z; denominator r - conj(r) = i sq:
        # w = (r - beta) / (i sq) = 1/2 + i w2/2, v = -alpha r / (i sq) = v0 - i v1n
        inv_sq2 = 2.0 / sq
        w2 = (beta - a) * inv_sq2
        v0 = 0.5 * alpha
        v1n = (v0 * a) * inv_sq2
        # f = 2 Re(w r^t), f_abs = 2 (|Re| + |Im|)
        f = pw[0] - w2 * pw[1]
        f_abs = np.abs(f) + np.abs(pw[1] + w2 * pw[0])
        # t_rr = v^2 phi_rr = -(m0 + i m1'), with v^2 = (A, -Bn)
        v1sq = v1n * v1n
        A = v0 * v0 - v1sq
        Bn = (2.0 * v0) * v1n
        m0 = A * phi_n[0] + Bn * phi_n[1]  # -2 Re t_rr
        m1 = Bn * phi_n[0] - A * phi_n[1]  # 2 Im t_rr
        # t_rc = |v|^2 (1 - beta^t) / (1 - beta) >= 0
        t_rc = (v0 * v0 + v1sq) * ratio_rc  # 2 t_rc
        G = t_rc - m0  # 2 (Re t_rr + t_rc)
        g_abs = np.abs(m0) + np.abs(m1) + t_rc
        return f, f_abs, G, g_abs
    g = _Real(gamma, 1.0 - gamma, 1.0 + gamma, t)
    d1g_re = (1.0 - gamma) - hb  # r - gamma = (1 - gamma) - (1 - r)
    deng = d1g_re * d1g_re + bb  # (r - gamma)(conj r - gamma)
    nk = -1.0 / (sq * deng)
    inv_den1 = (b * nk, d1g_re * nk)  # 1 / ((r - conj r)(r - gamma))
    lam2 = (a * a - bb, tau * b)  # r^2 (tau = 2 a exactly)
    # F(gamma) = gamma^2 - (beta + gamma (1 - s)) gamma + beta gamma = gamma^2 s
    c = -alpha * (1.0 - gamma)
    v1 = _cmul((c * lam2[0], c * lam2[1]), inv_den1)
    vg4 = (4.0 * c) * gamma * gamma / deng  # 4 vg, vg = c gamma^2 / |r - gamma|^2
    if decayed and np.ndim(g.pow) == 0 and g.pow == 0.0:  # every transient is 0
        f = f_abs = np.zeros(np.shape(deng))
    elif decayed:  # r^t = 0: the pair's mean terms vanish
        wg = gamma * gamma * s / deng
        f = wg * g.pow
        f_abs = np.abs(f)
    else:
        # F(r) = (1 - gamma)(r (1 - s) - beta), its real part from
        # Re(r (1 - s) - beta) = ((1 - s)^2 - beta (1 + s)) / 2 (no cancellation
        # against terms of order one, unlike the expanded quadratic); fr2 = 2 F(r)
        one_s = 1.0 - s
        g1 = 1.0 - gamma
        fr2 = (
            g1 * (one_s * one_s - beta * (1.0 + s)),
            (2.0 * g1) * (b * one_s),
        )
        f1 = _cmul(_cmul(fr2, inv_den1), pw)  # 2 w1 r^t
        fg = gamma * gamma * s / deng * g.pow
        f = f1[0] + fg
        f_abs = np.abs(f1[0]) + np.abs(f1[1]) + np.abs(fg)
    # t_rr = v1^2 phi_rr = -t_rrn / 2
    v1r2 = v1[0] * v1[0]
    v1i2 = v1[1] * v1[1]
    t_rrn = _cmul((v1r2 - v1i2, (2.0 * v1[0]) * v1[1]), phi_n)
    t_rc = (v1r2 + v1i2) * ratio_rc  # 2 t_rc
    one_minus_mu = ((1.0 - gamma) + gamma * hb, (-gamma) * b)  # 1 - r gamma
    # (r gamma)^t - 1 = (r^t - 1) gamma^t + (gamma^t - 1) = -(1 - (r gamma)^t)
    gt = 1.0 + g.e  # gamma^t, per setting
    mut_m1 = (e[0] * gt + g.e, e[1] * gt)
    q = _cdiv(mut_m1, one_minus_mu, vg4)
    t_rgn = _cmul(v1, q)  # -4 t_rg, t_rg = v1 vg (1 - (r gamma)^t) / (1 - r gamma)
    ratio_gg = g.one_minus_square_t(t) / ((1.0 - gamma) * (1.0 + gamma))
    t_gg = vg4 * vg4 * (ratio_gg / 16.0)
    # t_rc, t_gg >= 0 (squared moduli times ratios of positive factors)
    G = (t_rc - t_rrn[0]) - t_rgn[0] + t_gg  # 2 Re(t_rr) + 2 t_rc + 4 Re(t_rg) + t_gg
    g_abs = (_abs_bound(t_rrn) + t_rc) + _abs_bound(t_rgn) + t_gg
    return f, f_abs, G, g_abs


# ----------------------------------------------------------------- public
def closed_form_terms(hh, alpha, beta, gamma, feats: Features, t, sums=False):
    """Per-mode :math:`F_t = f_t^2` and :math:`G_t = \\sum_{k<t} g_k^2` (unit noise).

    Args:
        hh, alpha, beta, gamma: broadcastable arrays (shape ``S``).
        feats: state layout.
        t: number of updates, ``t >= 1``: an int, or an integer array of shape
            ``(T,)`` to evaluate several step counts at once.
        sums: with momentum or averaging, return the Lagrange sums
            ``(f, f_abs, G, g_abs)`` that :func:`squared_terms` turns into the
            result (for a caller that needs only their weighted totals).

    Returns:
        ``(F, G, err_F, err_G)``: arrays of shape ``S`` (``(T,) + S`` for an array
        ``t``); ``err_*`` bound the absolute rounding error caused by cancellation
        between terms (``inf`` where the closed form is undefined, e.g. exactly
        coinciding eigenvalues). Overflowing (diverging) modes give ``F`` or ``G``
        equal to ``inf``.
    """
    # Per-setting quantities keep their own (smaller) shape; numpy broadcasting
    # applies them to all modes, so e.g. log(gamma) is computed once per setting.
    hh, alpha, beta, gamma = (
        np.asarray(v, dtype=np.float64) for v in (hh, alpha, beta, gamma)
    )
    s = alpha * hh
    if beta.ndim == 0 and gamma.ndim == 0:  # one setting: no broadcasting
        shape = s.shape
    else:
        shape = np.broadcast_shapes(s.shape, beta.shape, gamma.shape)
        s = _fit(s, shape)
    if np.ndim(t) == 0:
        t = int(t)
        t_full = t_flat = t
        out_shape = shape
    else:
        steps = np.asarray(t, dtype=np.int64).reshape(-1)
        t_full = steps.reshape((-1,) + (1,) * len(shape))  # against S
        t_flat = steps[:, None]  # against masked (flattened) modes
        out_shape = (steps.size,) + shape
    with np.errstate(all="ignore"):
        if not feats.momentum and not feats.ema:
            return _sgd_terms(s, alpha, t_full)
        if feats.momentum:
            big, disc = (_fit(x, shape) for x in _momentum_roots(s, beta))
            cplx = disc < 0
        else:
            cplx = np.zeros(shape, dtype=bool)
        any_c = bool(cplx.any())
        one_path = not any_c or bool(cplx.all())
        # Per-setting values of size one stay scalars: masking would copy them to
        # every mode, and their logs and powers would be computed once per mode.
        per_setting = [
            x.reshape(())[()] if x.size == 1 else x for x in (alpha, beta, gamma)
        ]
        per_mode = [s] + ([big, disc] if feats.momentum else [])
        if one_path:
            a_, b_, g_ = per_setting
            if any_c:
                out = _complex_pair_terms(
                    s, a_, b_, g_, big, disc, ema=feats.ema, t=t_full
                )
            else:
                out = _real_case(s, a_, b_, g_, *per_mode[1:], feats=feats, t=t_full)
            f, f_abs, G, g_abs = (_fit(x, out_shape) for x in out)
        else:
            f = np.empty(out_shape)
            f_abs = np.empty(out_shape)
            G = np.empty(out_shape)
            g_abs = np.empty(out_shape)

            def take(x, mask):
                if x.ndim == 0:
                    return x
                return (x if x.shape == shape else np.broadcast_to(x, shape))[mask]

            parts = _contiguous_parts(cplx) if len(shape) == 1 else None
            if parts is None:
                parts = (~cplx, cplx)
            for mask, complex_path in zip(parts, (False, True), strict=True):
                a_, b_, g_ = (take(x, mask) for x in per_setting)
                pm = [take(x, mask) for x in per_mode]
                if complex_path:
                    out = _complex_pair_terms(
                        pm[0], a_, b_, g_, pm[1], pm[2], ema=feats.ema, t=t_flat
                    )
                else:
                    out = _real_case(pm[0], a_, b_, g_, *pm[1:], feats=feats, t=t_flat)
                for dst, src in zip((f, f_abs, G, g_abs), out, strict=True):
                    _put(dst, mask, src)
        if sums:
            return f, f_abs, G, g_abs
        return squared_terms(f, f_abs, G, g_abs)


#: The format the Lagrange sums are re-evaluated in where double precision
#: cannot certify them (x87 extended on x86-64: 11 more bits than double).
EXTENDED = np.longdouble
#: Unit roundoff of :data:`EXTENDED`.
EXTENDED_EPS = float(np.finfo(EXTENDED).eps)
#: Whether :data:`EXTENDED` is wider than double (on some platforms it is the
#: double format itself, and re-evaluating cannot certify anything more).
HAS_EXTENDED = EXTENDED_EPS < EPS
#: :data:`DECAYED_EXPONENT` for :data:`EXTENDED`: below the logarithm of its
#: smallest subnormal, with the same relative margin.
EXTENDED_DECAYED_EXPONENT = 1.01 * (
    float(np.log(np.finfo(EXTENDED).smallest_subnormal)) - 1.0
)
#: Modes whose momentum discriminant factor :math:`(1-\sqrt s)^2 - \beta`
#: is below this fraction of :math:`\beta` (next to critical damping) are not
#: certified in extended precision: the rounding of that cancelling factor
#: shifts :math:`\sqrt{D}`, the gap every Lagrange weight divides by.
CRITICAL_MARGIN = 2.0**-20


def extended_terms(s, alpha, beta, gamma, feats: Features, t):
    r"""Per-entry ``(F, G, err_F, err_G)`` of the Lagrange sums in extended precision.

    The same formulas as :func:`closed_form_terms`, evaluated in
    :data:`EXTENDED` from the same double parameters (``s`` is the double
    product :math:`\alpha \hat h` the double path used), so the bound
    :math:`4\epsilon f_{abs}(|f| + f_{abs})`, :math:`8\epsilon g_{abs}` holds
    with the extended unit roundoff, to which the rounding of the result to
    double is added. Where two eigenvalues nearly coincide the double sums lose
    :math:`\log_{10}` (sum of absolute values / result) digits; the extended
    sums have :math:`\log_{10} 2^{11} \approx 3.3` more to lose, which
    certifies most such modes at a fraction of the cost of divided
    differences. Entries next to critical damping (:data:`CRITICAL_MARGIN`)
    get an infinite bound. The computed roots are the exact roots of
    :math:`\beta` perturbed by a few units of the extended format (far below
    the rounding of the double parameters themselves); the bound also carries
    the rounding :math:`\kappa` of the cancelling discriminant factor relative
    to itself, by which :math:`\sqrt{D}` (the gap every momentum weight
    divides by) may be inconsistent with the roots: :math:`4\kappa` times the
    sums' absolute values.

    Args:
        s, alpha, beta, gamma: arrays of shape ``(M,)`` (``s = alpha h`` in
            double); momentum and/or averaging (not plain SGD).
        feats: state layout.
        t: step counts, shape ``(M,)``, ``t >= 1``.

    Returns:
        Double arrays of shape ``(M,)``; ``err_*`` ``inf`` where not certified
        (no extended format, next to critical damping, overflow).
    """
    shape = np.broadcast_shapes(*(np.shape(x) for x in (s, alpha, beta, gamma, t)))
    if not HAS_EXTENDED:
        inf = np.full(shape, np.inf)
        return inf, inf.copy(), inf.copy(), inf.copy()
    one = shape == (1,)
    if one:
        # one entry (the usual case): NumPy scalars, several times cheaper per
        # operation than one-element arrays; the same formulas and roundings
        s, alpha, beta, gamma = (
            EXTENDED(np.ravel(x)[0]) for x in (s, alpha, beta, gamma)
        )
        t = np.int64(np.ravel(t)[0])
    else:
        s, alpha, beta, gamma = (
            np.broadcast_to(np.asarray(x, dtype=np.float64).astype(EXTENDED), shape)
            for x in (s, alpha, beta, gamma)
        )
        t = np.broadcast_to(np.asarray(t, dtype=np.int64), shape)
    with np.errstate(all="ignore"):
        kappa = np.zeros(shape, dtype=EXTENDED)
        if feats.momentum:
            big, disc = _momentum_roots(s, beta)
            cplx = disc < 0
            rs = np.sqrt(s)
            near = (1.0 - rs) ** 2 - beta  # the factor that cancels
            # its rounding, relative to itself, shifts sqrt(D) by half that
            kappa = 4.0 * EXTENDED_EPS * ((1.0 - rs) ** 2 + beta) / np.abs(near)
            critical = np.abs(near) < CRITICAL_MARGIN * beta
        else:
            cplx = np.zeros(shape, dtype=bool)
            critical = cplx
        any_c = bool(np.any(cplx))
        if not any_c or bool(np.all(cplx)):  # one path: no selection
            if any_c:
                out = _complex_pair_terms(
                    s, alpha, beta, gamma, big, disc, ema=feats.ema, t=t
                )
            else:
                extra = [big, disc] if feats.momentum else []
                out = _real_case(s, alpha, beta, gamma, *extra, feats=feats, t=t)
            parts = list(out) if one else [np.broadcast_to(x, shape) for x in out]
        else:
            parts = [np.empty(shape, dtype=EXTENDED) for _ in range(4)]
            for mask, complex_path in ((~cplx, False), (cplx, True)):
                a_, b_, g_, s_, t_ = (x[mask] for x in (alpha, beta, gamma, s, t))
                if complex_path:
                    out = _complex_pair_terms(
                        s_, a_, b_, g_, big[mask], disc[mask], ema=feats.ema, t=t_
                    )
                else:
                    extra = [big[mask], disc[mask]] if feats.momentum else []
                    out = _real_case(s_, a_, b_, g_, *extra, feats=feats, t=t_)
                for dst, src in zip(parts, out, strict=True):
                    dst[mask] = src
        f, f_abs, G, g_abs = parts
        F, G, err_F, err_G = squared_terms(f, f_abs, G, g_abs, eps=EXTENDED_EPS)
        err_F = err_F + 4.0 * kappa * f_abs * (np.abs(f) + f_abs)
        err_G = err_G + 4.0 * kappa * g_abs
        F64, G64 = F.astype(np.float64), G.astype(np.float64)
        # rounding the results to double
        err_F = err_F.astype(np.float64) + EPS * F64
        err_G = err_G.astype(np.float64) + EPS * G64
        F64, G64, err_F, err_G = (
            np.reshape(x, shape) for x in (F64, G64, err_F, err_G)
        )
        bad = critical | ~np.isfinite(err_F) | ~np.isfinite(err_G)
        err_F[bad] = np.inf
        err_G[bad] = np.inf
    return _finite_or_inf(F64), _finite_or_inf(G64), err_F, err_G


def _fit(x, shape):
    """``x`` broadcast to ``shape`` (itself where it has that shape already:
    ``np.broadcast_to`` costs microseconds even then)."""
    return x if np.shape(x) == shape else np.broadcast_to(x, shape)


def _contiguous_parts(cplx):
    r"""``(real, complex)`` as two slices where each kind of root occupies one
    contiguous run of the (1-D) modes, else ``None``.

    The modes come sorted by curvature, and the complex roots are those with
    :math:`(1-\sqrt\beta)^2 < s < (1+\sqrt\beta)^2`: usually one run, the
    real roots below it (and rarely above). Slices select views, and results
    are written back without boolean indexing.
    """
    lo = int(cplx.argmax())  # the first complex mode (there is one)
    hi = cplx.size - int(cplx[::-1].argmax())  # after the last
    if not cplx[lo:hi].all():
        return None
    if lo == 0:
        return slice(hi, None), slice(0, hi)
    if hi == cplx.size:
        return slice(0, lo), slice(lo, None)
    return None


def _put(dst, mask, src):
    """``dst[..., mask] = src`` (``dst`` has at most one leading axis more than
    ``mask``, or ``mask`` is a slice of the last axis), one row at a time:
    NumPy's boolean assignment under a leading axis is several times slower
    than row by row. A ``src`` without that leading axis, or with one row, is
    broadcast over the rows (values the same at every step, e.g. decayed
    transients)."""
    if isinstance(mask, slice):
        dst[..., mask] = src
    elif dst.ndim == mask.ndim:
        dst[mask] = src
    elif np.ndim(src) < dst.ndim or len(src) != len(dst):
        dst[..., mask] = src
    else:
        for row, values in zip(dst, src, strict=True):
            row[mask] = values


def _f_over_one_minus_gamma(s, beta, sq):
    r""":math:`X_j = r_j (1 - s) - \beta` at the real momentum roots, where
    :math:`F(r_j) = (1 - \gamma) X_j` (momentum and averaging).

    Expanded, :math:`F(r) = r^2 - (\beta + \gamma(1-s)) r + \beta\gamma`
    cancels to a small multiple of :math:`1 - \gamma` or of :math:`s`. The
    :math:`X_j` are the roots of :math:`Y^2 - S Y + \beta^2 s` with
    :math:`S = X_1 + X_2 = (1-s)^2 - \beta(1+s)` and :math:`X_1 - X_2 = \sqrt{D}
    (1-s)`: the larger from their sum and difference, the smaller from the
    product, as for the roots of a quadratic.
    """
    one_s = 1.0 - s
    S = one_s * one_s - beta * (1.0 + s)
    w = sq * one_s  # X_1 - X_2
    big = 0.5 * (S + np.copysign(w, S))
    small = (beta * beta) * s / big
    first = (S >= 0) == (w >= 0)  # X_1 is the larger
    if first.all():  # the common case: no selection
        return big, small
    return np.where(first, big, small), np.where(first, small, big)


def _real_case(s, alpha, beta, gamma, big=None, disc=None, *, feats, t):
    if feats.momentum:
        sq = np.sqrt(disc)
        q_big = 0.5 * (big + sq)
        q_small = s / q_big
        p_small = 2.0 - q_small
        p_big = (2.0 - s + 2.0 * beta) / p_small  # (1 + r1)(1 + r2)
        r1 = _Real(1.0 - q_small, q_small, p_small, t)
        r2 = _Real(1.0 - q_big, q_big, p_big, t)
        pair = ((1.0 - beta), -np.expm1(t * np.log(beta)), 1.0)  # r1 r2 = beta
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
        # F(z) = z - gamma (1 - s) at both nodes, factored (no cancellation)
        fz = [(1.0 - s) * (1.0 - gamma), gamma * s]
        gz = [-alpha * (1.0 - gamma) * e.lam for e in eigs]
        special = {(0, 1): ((1.0 - gamma) + gamma * s, (a.e + g.e) + a.e * g.e, -1.0)}
        return _real_terms(eigs, diffs, fz, gz, special, t)
    eigs = [r1, r2, g]
    diffs = {(0, 1): sq, (0, 2): (1.0 - gamma) - q_small, (1, 2): (1.0 - gamma) - q_big}
    if _vanishes(r1.pow) and _vanishes(r2.pow):
        fz = [None, None, gamma * gamma * s]  # the roots' mean terms are skipped
    else:
        x1, x2 = _f_over_one_minus_gamma(s, beta, sq)
        fz = [(1.0 - gamma) * x1, (1.0 - gamma) * x2, gamma * gamma * s]
    gz = [-alpha * (1.0 - gamma) * e.lam * e.lam for e in eigs]
    special = {(0, 1): pair}
    for j, e in ((0, r1), (1, r2)):
        special[(j, 2)] = ((1.0 - gamma) + gamma * e.q, (e.e + g.e) + e.e * g.e, -1.0)
    return _real_terms(eigs, diffs, fz, gz, special, t)


def _finite_or_inf(x):
    if np.isfinite(x).all():  # the common case: no selection
        return np.maximum(x, 0.0)
    return np.where(np.isfinite(x), np.maximum(x, 0.0), np.inf)


def _inf_unless_finite(x):
    """``x`` with every non-finite entry replaced by ``inf``."""
    if np.isfinite(x).all():
        return x
    return np.where(np.isfinite(x), x, np.inf)


def _sgd_terms(s, alpha, t):
    """SGD: :math:`F = (1-s)^{2t}`, :math:`G = \\alpha^2 (1 - (1-s)^{2t})/(s(2-s))`."""
    log_abs, _ = _log_abs(1.0 - s, s, 2.0 - s)
    x = 2.0 * t * log_abs
    zero_steps = np.asarray(t) == 0
    if np.any(zero_steps):
        # (1 - s)^0 = 1 also where s = 1 exactly (log 0 = -inf, and 0 * -inf is nan)
        x = np.where(zero_steps, 0.0, x)
    F = _exp(x)
    G = alpha * alpha * (-np.expm1(x)) / (s * (2.0 - s))
    G = np.where(s == 2.0, alpha * alpha * t, G)  # |1 - s| = 1 exactly
    zero = np.zeros_like(F)
    return _finite_or_inf(F), _finite_or_inf(G), zero, zero


# ------------------------------------------------- bounds for first crossings
class MeanResponse:
    """Certified lower bounds of every mode's squared mean response over a range.

    With :math:`f_\\tau = \\sum_j w_j \\lambda_j^\\tau` and :math:`|\\lambda_j| \\le 1`,
    two bounds hold on integer :math:`\\tau \\in [a, c]`. From :math:`a` alone,

    .. math:: |f_\\tau - f_a| \\le \\sum_j |w_j \\lambda_j^a|\\,
              \\min(2, (\\tau - a)\\,|1 - \\lambda_j|),

    because :math:`|\\lambda^k - 1| \\le k |1 - \\lambda|` inside the unit disc.
    From both ends: :math:`f_\\tau` is the value at an integer of the smooth
    :math:`\\varphi(\\tau) = \\operatorname{Re} \\sum_j w_j e^{\\tau \\log\\lambda_j}`
    (principal logarithms), whose second derivative on :math:`[a, c]` is at most
    :math:`M_2 = \\sum_j |w_j \\lambda_j^a|\\,|\\log\\lambda_j|^2` in modulus, so
    :math:`\\varphi` stays within :math:`(c - a)^2 M_2 / 8` of the chord through
    :math:`(a, f_a)` and :math:`(c, f_c)` (linear interpolation error). Where
    :math:`f_a` and :math:`f_c` have one sign, :math:`|f_\\tau| \\ge
    \\min(|f_a|, |f_c|) - (c - a)^2 M_2 / 8`: next to slowly turning
    eigenvalues (long runs) this is far tighter than the first bound, which
    loses :math:`(c-a)|1-\\lambda|` where the second loses its square. Each mode
    takes the larger. The rounding error of :math:`f_t` itself (cancellation
    between terms, and the powers' own rounding) is added to the slack, so the
    bound is valid for every mode; it is 0 for unstable modes and where the
    Lagrange form is undefined. The eigenvalues :math:`\\lambda_j` and Lagrange
    weights :math:`w_j` do not depend on :math:`t`: they are computed once,
    here, and the terms at each step once per step. Used by
    :func:`nqm.search.steps_to_target` to prune intervals that cannot contain the
    first crossing. Complex arithmetic; not on the fast path.
    """

    def __init__(self, hh, alpha, beta, gamma, feats: Features):
        hh, alpha, beta, gamma = np.broadcast_arrays(
            *(np.asarray(v, dtype=np.float64) for v in (hh, alpha, beta, gamma))
        )
        s = alpha * hh
        w_err: list = []
        with np.errstate(all="ignore"):
            if not feats.momentum and not feats.ema:
                lam = [1.0 - s + 0j]
                w = [np.ones_like(s) + 0j]
                w_err = [0.0]
            else:
                if feats.momentum:
                    tau = 1.0 - s + beta
                    disc = ((1.0 - np.sqrt(s)) ** 2 - beta) * (
                        (1.0 + np.sqrt(s)) ** 2 - beta
                    )
                    sq = np.sqrt(disc + 0j)
                    r1, r2 = 0.5 * (tau + sq), 0.5 * (tau - sq)
                # F at each node, and a bound on its rounding (the terms
                # cancel where F is small: the weight's error is then far
                # above its own relative rounding)
                if feats.momentum and feats.ema:
                    lam = [r1, r2, gamma + 0j]
                    lin = beta + gamma * (1.0 - s)
                    fz = [z * z - lin * z + beta * gamma for z in lam]
                    fz_err = [
                        8.0 * EPS * (np.abs(z) ** 2 + np.abs(lin * z) + beta * gamma)
                        for z in lam
                    ]
                elif feats.momentum:
                    lam = [r1, r2]
                    fz = [z - beta for z in lam]
                    fz_err = [2.0 * EPS * (np.abs(z) + beta) for z in lam]
                else:
                    lam = [1.0 - s + 0j, gamma + 0j]
                    fz = [z - gamma * (1.0 - s) for z in lam]
                    fz_err = [
                        4.0 * EPS * (np.abs(z) + gamma * np.abs(1.0 - s)) for z in lam
                    ]
                w = []
                for j, zj in enumerate(lam):
                    den = 1.0 + 0j
                    for m, zm in enumerate(lam):
                        if m != j:
                            den = den * (zj - zm)
                    w.append(fz[j] / den)
                    # F's rounding through the denominator, and the relative
                    # rounding of the differences, products and quotient
                    w_err.append(fz_err[j] / np.abs(den) + 16.0 * EPS * np.abs(w[-1]))
            self.lam, self.w = lam, w
            self._w_err = w_err
            self.dist = [np.abs(1.0 - z) for z in lam]
            # |log lam|^2 = log|lam|^2 + arg(lam)^2, raised by a relative margin
            # far above the rounding of its few operations
            self.log_sq = [
                (np.log(np.abs(z)) ** 2 + np.angle(z) ** 2) * (1.0 + _CURVE_MARGIN)
                for z in lam
            ]
            self.log_abs = [np.sqrt(x) * (1.0 + _CURVE_MARGIN) for x in self.log_sq]
            # polar form of each eigenvalue and weight, once per curve: a step
            # then costs real exponentials and one tangent
            self._log_mod = [np.log(np.abs(z)) for z in lam]
            self._ang = [np.angle(z) for z in lam]
            self._cplx = [bool(np.any(z.imag)) for z in lam]
            # real eigenvalues: angle 0 or pi, the sign of an odd power
            self._odd_sign = [np.where(a != 0.0, -1.0, 1.0) for a in self._ang]
            eff = [
                a if c else np.where(a != 0.0, np.pi, 0.0)
                for a, c in zip(self._ang, self._cplx, strict=True)
            ]
            self._slope = [
                1.0 + np.abs(lm) + np.abs(a)
                for lm, a in zip(self._log_mod, eff, strict=True)
            ]
            self._slope_finite = [bool(np.isfinite(x).all()) for x in self._slope]
            self._w_re = [x.real.copy() for x in w]
            self._w_im = [x.imag.copy() for x in w]
            self._w_abs = [np.abs(x) for x in w]
            # the second momentum root is the conjugate of the first or equal to
            # it (real double roots) in every mode: its phase is the first's
            # (then its cosine is the first's, its sine +-)
            self._sine_sign = None
            if feats.momentum and self._cplx[0]:
                a0, a1 = self._ang[0], self._ang[1]
                sign = np.where(a1 == -a0, -1.0, np.where(a1 == a0, 1.0, np.nan))
                if not np.isnan(sign).any():
                    self._sine_sign = sign
            stable = np.ones(s.shape, dtype=bool)
            for z in lam:
                stable &= np.abs(z) <= 1.0
            self.stable = stable
            self.all_stable = bool(stable.all())
        self._at: dict[int, tuple] = {}

    def terms_at(self, t: int):
        """``(f_t, err_t, mags)``: the mean response at step ``t``, a bound on
        its rounding error, and the terms' moduli :math:`|w_j \\lambda_j^t|`
        (each raised by the relative error of its power), per mode; computed
        once per step."""
        hit = self._at.get(t)
        if hit is not None:
            return hit
        # |lam^t| = exp(t log|lam|) and the phase t arg(lam): the computed
        # log|lam| and arg(lam) are off by about eps (1 + |log|lam||) and
        # eps |arg lam| (the modulus itself is rounded), so the exponent and the
        # phase by t times that, which bounds the power's relative error by
        # 4 eps (1 + t (1 + |log|lam|| + |arg lam|)) (a factor 4 of slack); the
        # phasor (cos, sin) of the phase is formed from u = tan(phase / 2)
        # (NumPy's tangent costs a fraction of its sine and cosine) as
        # ((1 - u^2), 2u) / (1 + u^2), which adds at most 4 eps of the tangent
        # (moving the angle by at most 2 eps) and 7 eps of rounding in these
        # few operations to the phasor, in modulus: _PHASOR_EPS.
        f = err = 0.0
        mags = []
        trig = None
        with np.errstate(all="ignore"):
            for j in range(len(self.lam)):
                if t == 0:
                    r, cos, sin, rel = 1.0, 1.0, 0.0, 0.0
                else:
                    r = np.exp(t * self._log_mod[j])
                    if not self._cplx[j]:  # real: a signed power
                        cos, sin = (self._odd_sign[j] if t % 2 else 1.0), 0.0
                    elif j == 1 and trig is not None and self._sine_sign is not None:
                        cos, sin = trig[0], self._sine_sign * trig[1]
                    else:
                        u = np.tan((0.5 * t) * self._ang[j])
                        u2 = u * u
                        inv = 1.0 / (1.0 + u2)
                        cos, sin = (1.0 - u2) * inv, (2.0 * u) * inv
                        if j == 0:
                            trig = (cos, sin)
                    rel = 4.0 * EPS * (1.0 + t * self._slope[j])
                    if self._cplx[j]:
                        rel = rel + _PHASOR_EPS
                    if not self._slope_finite[j]:
                        rel = np.where(np.isfinite(rel), rel, 0.0)
                re = r * (self._w_re[j] * cos - self._w_im[j] * sin)
                mag = self._w_abs[j] * r
                f = f + re
                # sum rounding, power rounding, the weight's rounding
                err = err + (mag * (8.0 * EPS + rel) + self._w_err[j] * r * (1.0 + rel))
                mags.append((mag + self._w_err[j] * r) * (1.0 + rel))
        hit = self._at[t] = (f, err, mags)
        return hit

    def bound(self, t: int, span: int):
        """Per-mode lower bound of :math:`f_\\tau^2` over :math:`\\tau \\in [t, t +
        span]` from :math:`t` alone, and :math:`f_t`; ``(lower_sq, f_t)``, shape
        ``S`` each."""
        f, err, mags = self.terms_at(t)
        with np.errstate(all="ignore"):
            lower = np.abs(f) - self._lipschitz_slack(err, mags, span)
            lower = self._valid(lower)
        return lower * lower, f

    def _lipschitz_slack(self, err, mags, span):
        slack = err
        for j in range(len(self.lam)):
            # the possible movement of lam^t over the span
            slack = slack + mags[j] * np.minimum(2.0, span * self.dist[j])
        return slack

    def _valid(self, lower):
        lower = np.maximum(lower, 0.0)
        return np.where(self.stable & np.isfinite(lower), lower, 0.0)

    def interval_bound(self, a: int, c: int):
        """Per-mode lower bound of :math:`f_\\tau^2` over the integers
        :math:`\\tau \\in [a, c]`, ``a < c``: the larger of the bound from
        :math:`a` alone and the chord bound (see the class docstring); shape
        ``S``."""
        fa, err_a, mags = self.terms_at(a)
        fc, err_c, _ = self.terms_at(c)
        span = c - a
        with np.errstate(all="ignore"):
            lip = np.abs(fa) - self._lipschitz_slack(err_a, mags, span)
            m2 = mags[0] * self.log_sq[0]
            for j in range(1, len(self.lam)):
                m2 = m2 + mags[j] * self.log_sq[j]
            sag = (0.125 * float(span) * float(span) * (1.0 + _CURVE_MARGIN)) * m2
            chord = np.minimum(np.abs(fa), np.abs(fc)) - sag - np.maximum(err_a, err_c)
            chord = np.where(np.signbit(fa) == np.signbit(fc), chord, 0.0)
            lower = self._valid(np.fmax(lip, chord))  # chord: NaN where lam = 0
        return lower * lower

    def total_chord(self, a: int, c: int, weights) -> float:
        r"""A lower bound of :math:`\sum_m \omega_m f_{\tau,m}^2` over the integers
        :math:`\tau \in [a, c]`, ``a < c`` (``weights`` :math:`\omega \ge 0`,
        shape ``S``), from the chord of the sum.

        Each :math:`\varphi_m^2` (class docstring) has second derivative
        :math:`2(\varphi_m'^2 + \varphi_m \varphi_m'') \le 2(M_1^2 + A M_2)`
        on :math:`[a, c]`, with :math:`A = \sum_j |w_j \lambda_j^a|` (bounds
        :math:`|\varphi_m|`) and :math:`M_1 = \sum_j |w_j \lambda_j^a|
        |\log\lambda_j|` (bounds :math:`|\varphi_m'|`), so the weighted sum
        :math:`S(\tau)` stays above its chord less
        :math:`(c-a)^2/8 \cdot \sum_m 2\omega_m (M_1^2 + A M_2)`: it is at
        least :math:`\min(S(a), S(c))` less that sag. Unlike the per-mode
        bound of :meth:`interval_bound`, modes turning one way and the other
        (oscillating momentum modes) are not each taken at their own minimum,
        so next to the crossing of a long run the bound approaches the
        loss's own minimum on the interval. ``-inf`` when some mode is
        unstable.
        """
        if not self.all_stable:
            return -np.inf
        fa, err_a, mags = self.terms_at(a)
        fc, err_c, _ = self.terms_at(c)
        with np.errstate(all="ignore"):
            amp = mags[0]
            m1 = mags[0] * self.log_abs[0]
            m2 = mags[0] * self.log_sq[0]
            for j in range(1, len(self.lam)):
                amp = amp + mags[j]
                m1 = m1 + mags[j] * self.log_abs[j]
                m2 = m2 + mags[j] * self.log_sq[j]
            curv = np.fmax(2.0 * (m1 * m1 + amp * m2), 0.0)  # NaN where lam = 0
            # the ends' values, lowered by their rounding
            low_a = np.maximum(np.abs(fa) - err_a, 0.0)
            low_c = np.maximum(np.abs(fc) - err_c, 0.0)
            ends = min(
                float((low_a * low_a) @ weights), float((low_c * low_c) @ weights)
            )
            sag = 0.125 * float(c - a) ** 2 * float(curv @ weights)
        out = (ends - sag * (1.0 + _CURVE_MARGIN)) * (1.0 - _CURVE_MARGIN)
        return out if np.isfinite(out) else -np.inf


#: Error of the phasor :class:`MeanResponse` forms from the tangent of the half
#: phase, relative to the power's modulus (see :meth:`MeanResponse.terms_at`).
_PHASOR_EPS = 16.0 * EPS

#: Relative margin by which :class:`MeanResponse` raises the curvature factors of
#: its chord bound (rounding of :math:`|\\log\\lambda|^2` and of the sag).
_CURVE_MARGIN = 2.0**-30


def weighted_totals(f, f_abs, G, g_abs, wd, wn):
    r"""``F @ wd, G @ wn, err_F @ wd, err_G @ wn`` of :func:`squared_terms`'s
    result, without its per-mode bound arrays, or ``None`` where any of them is
    not finite (then :func:`squared_terms` decides what each entry becomes).

    The bounds' factors :math:`4\epsilon` and :math:`8\epsilon` are powers of
    two, so applying them to the weighted sums gives the same values. All four
    totals finite (the weights are ``>= 0``) means that every entry is finite,
    where :func:`squared_terms` replaces nothing.
    """
    with np.errstate(all="ignore"):
        d = (f * f) @ wd
        n = np.maximum(G, 0.0) @ wn
        ed = (4.0 * EPS) * ((f_abs * (np.abs(f) + f_abs)) @ wd)
        en = (8.0 * EPS) * (g_abs @ wn)
    if not np.isfinite(d + n + ed + en):
        return None
    return d, n, ed, en


def squared_terms(f, f_abs, G, g_abs, eps=EPS):
    """``(F, G, err_F, err_G)`` from the mean response ``f`` (``F = f²``) and
    the noise term ``G``, with their rounding bounds (``f_abs``, ``g_abs``: the
    sums of absolute values behind them, computed with unit roundoff ``eps``);
    non-finite values become ``inf``."""
    F = f * f
    err_F = 4.0 * eps * f_abs * (np.abs(f) + f_abs)
    err_G = 8.0 * eps * g_abs
    if np.isfinite(f_abs + g_abs).all():
        # |f| <= f_abs and |G| <= g_abs: f and G are finite, so F and both
        # bounds are finite or +inf (overflow), never NaN: nothing to replace
        return F, np.maximum(G, 0.0), err_F, err_G
    # F = f^2 >= 0 already: only non-finite entries change
    return (
        _inf_unless_finite(F),
        _finite_or_inf(G),
        _inf_unless_finite(err_F),
        _inf_unless_finite(err_G),
    )
