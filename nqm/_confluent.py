"""Closed-form moments by divided differences, exact where eigenvalues meet.

The Lagrange sums of :mod:`nqm._closed` divide by the gaps between eigenvalues
and lose digits when two or three of them nearly coincide (critical damping, an
averaging rate :math:`\\gamma` next to a momentum root). Written as divided
differences, the same quantities have no small denominators.

Mean. With the eigenvalues :math:`\\lambda_1, \\dots, \\lambda_k` of a mode's
transition matrix (ordered by decreasing real part) and the monic numerator
:math:`F` of degree :math:`k-1` (table in :mod:`nqm._closed`),

.. math:: f_t = [\\lambda_1, \\dots, \\lambda_k](F\\, z^t)
          = \\sum_{r=0}^{k-1} [\\lambda_{r+1}, \\dots, \\lambda_k] F \\;
            [\\lambda_1, \\dots, \\lambda_{r+1}]\\, z^t

(the Leibniz rule with the Newton basis: only divided differences of
:math:`z^t` over prefixes of the nodes, and of :math:`F` over suffixes, which
are :math:`1`, :math:`\\lambda_2 + \\lambda_3 - (\\beta + \\gamma(1-s))` and
:math:`F(\\lambda_k)`, each evaluated from a cancellation-free formula).

Noise. With :math:`G(z) = c\\, z^{m}`, :math:`m = k - 1`, the noise response is
:math:`g_j = c\\,[\\lambda](z^{j+m})`, so

.. math:: G_t = \\sum_{j<t} g_j^2 = c^2 \\mathcal L(\\psi), \\qquad
          \\psi(\\mu) = \\sum_{n=m}^{m+t-1} \\mu^n, \\qquad
          \\mathcal L(\\psi) = [\\lambda]_x [\\lambda]_y\\, \\psi(xy),

a linear functional supported on the product nodes
:math:`\\nu = \\lambda_a \\lambda_b` (:math:`a \\le b`, :math:`P = k(k+1)/2` of
them, kept with multiplicity). In Newton form over the ordered
:math:`\\nu_1, \\dots, \\nu_P`,

.. math:: \\mathcal L(\\psi) = \\sum_{r=m}^{P-1} \\mathcal L(\\pi_r)\\,
          [\\nu_1, \\dots, \\nu_{r+1}]\\psi, \\qquad
          \\pi_r(\\mu) = \\prod_{i \\le r} (\\mu - \\nu_i), \\qquad
          \\mathcal L(\\mu^n) = h_{n-m}(\\lambda)^2,

(:math:`h_j` the complete homogeneous symmetric polynomial; the terms
:math:`r < m` vanish), and since :math:`\\psi(\\mu) = [\\mu, 1] z^{t+m} -
[\\mu, 1] z^m`, every divided difference needed is
:math:`[\\nu_1, \\dots, \\nu_{r+1}]\\psi = [1, \\nu_1, \\dots, \\nu_{r+1}]\\,
z^{t+m}`.

Divided differences of :math:`z^N`. One table per node sequence (sorted, so
that the two ends of every run are its farthest pair). A run whose spread is
small, :math:`N \\max|\\nu_l - \\nu_i| \\le |\\nu_i|`, is summed as the Taylor
series about its first node,

.. math:: [\\nu_i, \\dots, \\nu_{i+o}]\\, z^N = \\sum_{j \\ge 0}
          \\binom{N}{j+o} \\nu_i^{N-j-o}\\, h_j(\\nu_{i+1} - \\nu_i, \\dots,
          \\nu_{i+o} - \\nu_i),

which converges like :math:`1/j!` and equals the confluent form when nodes
coincide exactly; every other entry comes from the recurrence
:math:`([\\nu_{i+1..j}] - [\\nu_{i..j-1}]) / (\\nu_j - \\nu_i)`, whose
difference no longer cancels badly once the spread is that large. All gaps are
formed from the parameters (:math:`r_1 - r_2 = \\sqrt{D}`,
:math:`1 - \\lambda_a\\lambda_b = q_a + \\lambda_a q_b`, ...), never by
subtracting rounded nodes.

Error bound. Every entry carries a running bound on its rounding error in
units of the machine epsilon (the sum of absolute values that went into it,
amplified by each division, plus the rounding of the powers,
:math:`\\epsilon(1 + N |\\log|\\nu||)`, and the truncated tail of each series),
so the result comes with the same kind of a-posteriori bound as
:mod:`nqm._closed` and is certified by the same test.

References:
    Opitz, G. (1964), Steigungsmatrizen (divided differences as a matrix
    function); McCurdy, Ng & Parlett (1984), Accurate computation of divided
    differences of the exponential function, Math. Comp. 43, §2-3 (Taylor
    series for clustered nodes, recurrence otherwise).
"""

from __future__ import annotations

import numpy as np

from ._system import Features

EPS = np.finfo(np.float64).eps
#: A run of nodes is summed as a Taylor series when N * spread <= this * |node|.
CLUSTER_RADIUS = 1.0
#: Most series terms summed (the terms fall like CLUSTER_RADIUS^j / j!).
MAX_TERMS = 30


# ------------------------------------------------------------------ nodes
class _Nodes:
    """Eigenvalues (or their products) of a batch of modes, with accurate data.

    Attributes (lists over nodes of arrays of shape ``(M,)``): ``val`` the node,
    ``q`` = 1 - node, ``logabs`` = log|node|, and its argument as
    :math:`k\\pi + \\phi` with ``kpi`` = k in {0, 1} and ``phi`` the (small,
    accurate) rest, so that powers of nodes near -1 keep their phase;
    ``gap[(i, j)]`` = node_j - node_i.
    """

    def __init__(self, val, q, logabs, kpi, phi, gap):
        self.val, self.q, self.logabs = val, q, logabs
        self.kpi, self.phi, self.gap = kpi, phi, gap

    def __len__(self):
        return len(self.val)

    def g(self, i, j):
        if i == j:
            return np.zeros_like(self.val[i])
        return self.gap[(i, j)] if (i, j) in self.gap else -self.gap[(j, i)]


def _real_node(lam, q, p):
    """(val, q, logabs, kpi, phi) of a real eigenvalue from q = 1-lam, p = 1+lam."""
    pos = lam > 0
    logabs = np.log1p(-np.where(pos, q, p))
    return lam, q, logabs, (~pos).astype(np.float64), np.zeros(lam.shape)


def _discriminant(s, beta):
    """q_1 + q_2, r_1 + r_2, p_1 + p_2, p_1 p_2 and the discriminant of
    z^2 - (1 - s + beta) z + beta.

    The discriminant is formed as (q_1 + q_2)^2 - 4 q_1 q_2 where the roots lie
    right of 0 and as (p_1 + p_2)^2 - 4 p_1 p_2 left of it, from the same sums
    and products the roots are then formed from, so that near either critical
    damping the computed roots are the exact roots of parameters perturbed by a
    few units in the last place of the small quantities q or p.
    """
    big = 1.0 - beta + s  # q_1 + q_2 (q_1 q_2 = s)
    tau = 1.0 - s + beta  # r_1 + r_2
    p_sum = (3.0 - s) + beta  # exact in binary for s in [1.5, 6], beta >= 1/2
    p_prod = (2.0 - s) + 2.0 * beta
    disc = np.where(tau >= 0, big * big - 4.0 * s, p_sum * p_sum - 4.0 * p_prod)
    return big, tau, p_sum, p_prod, disc


def _momentum_roots(s, beta, cplx):
    """The two roots of z^2 - (1 - s + beta) z + beta, as node data, with
    r - beta for each and the gap r_2 - r_1.

    Roots near +1 are formed from q = 1 - r (sum 1 - beta + s, product s),
    roots near -1 from p = 1 + r (sum 3 - s + beta, product 2 - s + 2 beta,
    both exact in binary for s in [2.5, 4], beta >= 1/2), so that either end
    keeps the relative accuracy of the root's distance to +-1.
    """
    big, tau, p_sum, p_prod, disc = _discriminant(s, beta)
    if cplx:
        sqi = np.sqrt(-disc)
        r = 0.5 * (tau + 1j * sqi)
        q_r = 0.5 * (big - 1j * sqi)
        la = 0.5 * np.log(beta)
        # arg r = k pi + phi with |phi| <= pi/2 (exact parity near -1)
        left = tau < 0
        phi = np.where(left, -np.arctan2(sqi, -tau), np.arctan2(sqi, tau))
        kpi = left.astype(np.float64)
        d = 0.5 * ((1.0 - beta) - s) + 0.5j * sqi  # r - beta
        nodes = [
            (r, q_r, la, kpi, phi),
            (np.conj(r), np.conj(q_r), la, kpi, -phi),
        ]
        return nodes, [d, np.conj(d)], -1j * sqi
    sq = np.sqrt(disc)
    # right: both roots positive (q-form); left: both negative (p-form)
    q_big = 0.5 * (big + sq)
    q_small = s / q_big
    p_big = 0.5 * (p_sum + sq)
    p_small = p_prod / p_big
    left = tau < 0
    q1 = np.where(left, 2.0 - p_big, q_small)  # r_1 >= r_2
    p1 = np.where(left, p_big, 2.0 - q_small)
    q2 = np.where(left, 2.0 - p_small, q_big)
    p2 = np.where(left, p_small, 2.0 - q_big)
    nodes = [_real_node(1.0 - q, q, p) for q, p in ((q1, p1), (q2, p2))]
    # r - beta: the larger of (1-beta) - q directly, the other from
    # (r_1 - beta)(r_2 - beta) = beta s.
    d1 = (1.0 - beta) - q1
    d2 = (1.0 - beta) - q2
    first = np.abs(d1) >= np.abs(d2)
    d = [np.where(first, d1, beta * s / d2), np.where(first, beta * s / d1, d2)]
    return nodes, d, -sq


def _family_nodes(s, alpha, beta, gamma, feats: Features, cplx: bool):
    """Nodes, F values, pair coefficients and the noise factor of each mode.

    Returns ``(nodes, fval, fpair, c)``: ``fval[j]`` = F(lambda_j),
    ``fpair[(i, j)]`` = [lambda_i, lambda_j] F (k = 3 only), ``c`` with
    G(z) = c z^(k-1).
    """
    gap, fpair = {}, {}
    if feats.momentum:
        data, d, gap[(0, 1)] = _momentum_roots(s, beta, cplx)
        if not feats.ema:
            return _Nodes(*map(list, zip(*data, strict=True)), gap), d, fpair, -alpha
        # momentum + averaging: third node gamma
        g1 = 1.0 - gamma
        zero = np.zeros(s.shape)
        data.append(
            (
                gamma + 0.0 * data[0][0],
                g1 + 0.0 * data[0][0],
                np.log(gamma) + zero,
                zero,
                zero,
            )
        )
        for j in (0, 1):
            gap[(j, 2)] = data[j][1] - g1  # gamma - r = (1 - r) - (1 - gamma)
        # F(r) = (1-gamma)(r(1-s) - beta): directly, or as
        # s beta r / (r' - beta) where the direct difference cancels.
        fval = []
        for j in (0, 1):
            r = data[j][0]
            direct = d[j] - r * s
            other = s * beta * r / d[1 - j]
            fval.append(
                g1 * np.where(np.abs(direct) >= 0.5 * np.abs(d[j]), direct, other)
            )
        fval.append(gamma * gamma * s)
        fpair[(0, 1)] = g1 * (1.0 - s) + 0.0 * data[0][0]
        for j in (0, 1):
            fpair[(j, 2)] = d[j] + gamma * s
        nodes = _Nodes(*map(list, zip(*data, strict=True)), gap)
        return nodes, fval, fpair, -alpha * g1
    # averaging alone: nodes 1 - s and gamma
    zero = np.zeros(s.shape)
    data = [
        _real_node(1.0 - s, s, 2.0 - s),
        _real_node(gamma + zero, 1.0 - gamma + zero, 1.0 + gamma + zero),
    ]
    gap[(0, 1)] = s - (1.0 - gamma)
    fval = [(1.0 - s) * (1.0 - gamma), gamma * s]
    nodes = _Nodes(*map(list, zip(*data, strict=True)), gap)
    return nodes, fval, fpair, -alpha * (1.0 - gamma)


# ---------------------------------------------------------- ordering
def _order(nodes: _Nodes, first_fixed: bool = False):
    """Per-mode permutation sorting the nodes by decreasing real part."""
    key = -np.real(np.stack(nodes.val))
    if first_fixed:
        key[0] = -np.inf
    return np.argsort(key, axis=0, kind="stable")


def _take(items, perm):
    """items[perm[i]] per mode, for a list of per-node arrays."""
    st = np.stack(items)
    return list(np.take_along_axis(st, perm, axis=0))


def _permuted(nodes: _Nodes, perm):
    n = len(nodes)
    val, q, la, kpi, phi = (
        _take(x, perm) for x in (nodes.val, nodes.q, nodes.logabs, nodes.kpi, nodes.phi)
    )
    full = np.stack([np.stack([nodes.g(i, j) for j in range(n)]) for i in range(n)])
    shape = (n, n) + perm.shape[1:]
    rows = np.take_along_axis(full, np.broadcast_to(perm[:, None], shape), axis=0)
    both = np.take_along_axis(rows, np.broadcast_to(perm[None, :], shape), axis=1)
    gap = {(i, j): both[i, j] for i in range(n) for j in range(i + 1, n)}
    return _Nodes(val, q, la, kpi, phi, gap)


# ------------------------------------------------------ powers and tables
def _power(logabs, kpi, phi, n):
    """nu^n from log|nu| and arg nu = kpi pi + phi (n: float array of integers)."""
    mod = np.exp(n * logabs)
    mod = np.where((kpi != 0.0) & (np.fmod(n, 2.0) != 0.0), -mod, mod)
    if not np.any(phi):
        return mod
    phase = n * phi
    return mod * (np.cos(phase) + 1j * np.sin(phase))


def _series(nodes: _Nodes, i, omax, N, sel):
    """Taylor series about node i of [nu_i..nu_{i+o}] z^N, o = 1..omax, on the
    modes ``sel``. Returns (values, magnitudes) lists indexed by o - 1."""
    v = nodes.val[i][sel]
    nn = N[sel]
    la = nodes.logabs[i][sel]
    t0 = _power(la, nodes.kpi[i][sel], nodes.phi[i][sel], nn)
    # rounding of nu^N (of log|nu| and arg nu, times N), in units of eps
    rel_pow = 4.0 + np.abs(nn * la) + np.abs(nn * nodes.phi[i][sel])
    e = [nodes.g(i, i + o)[sel] for o in range(1, omax + 1)]
    # T_j = binom(N, j) nu^(N - j), j = 0 .. MAX_TERMS + omax
    T = [t0]
    inv = 1.0 / v
    for j in range(MAX_TERMS + omax):
        T.append(T[-1] * ((nn - j) / (j + 1.0)) * inv)
    S = [np.zeros_like(t0) for _ in range(omax)]
    mag = [np.zeros(t0.shape) for _ in range(omax)]
    h = [np.ones_like(t0 * e[0]) for _ in range(omax + 1)]  # h_0 = 1
    last = [None] * omax
    for j in range(MAX_TERMS):
        if j > 0:
            h[0] = np.zeros_like(h[0])
            for o in range(1, omax + 1):
                h[o] = h[o - 1] + e[o - 1] * h[o]
        done = True
        for o in range(1, omax + 1):
            term = T[j + o] * h[o]
            S[o - 1] = S[o - 1] + term
            a = np.abs(term)
            mag[o - 1] = mag[o - 1] + a
            last[o - 1] = a
            if j >= 2 and np.any(a > 1e-3 * EPS * np.abs(S[o - 1])):
                done = False
        if j >= 2 and done:
            break
    for o in range(omax):
        # rounding of each term (powers, h, products) and the truncated tail
        tail = 2.0 * last[o] / EPS
        mag[o] = mag[o] * (rel_pow + 2.0 * (o + 3)) + tail
    return S, mag


def _dd_top_row(nodes: _Nodes, N):
    """[nu_0, ..., nu_j] z^N for j = 0..n-1, and error magnitudes (units of eps).

    ``N``: float array (M,) of non-negative integers.
    """
    n = len(nodes)
    D = [[None] * n for _ in range(n)]
    E = [[None] * n for _ in range(n)]
    for i in range(n):
        D[i][i] = _power(nodes.logabs[i], nodes.kpi[i], nodes.phi[i], N)
        E[i][i] = np.abs(D[i][i]) * (
            4.0 + np.abs(N * nodes.logabs[i]) + np.abs(N * nodes.phi[i])
        )
    # clustered[i][o]: run i..i+o is summed as a series
    clustered = {}
    for i in range(n - 1):
        lim = CLUSTER_RADIUS * np.abs(nodes.val[i])
        spread = np.zeros(N.shape)
        ok = np.ones(N.shape, dtype=bool)
        for o in range(1, n - i):
            spread = np.maximum(spread, np.abs(nodes.g(i, i + o)))
            ok = ok & (N * spread <= lim)
            clustered[(i, o)] = ok
        omax = max((o for o in range(1, n - i) if np.any(clustered[(i, o)])), default=0)
        if omax:
            sel = clustered[(i, 1)]
            S, mag = _series(nodes, i, omax, N, sel)
            for o in range(1, omax + 1):
                full = np.zeros(N.shape, dtype=np.result_type(D[i][i], S[o - 1]))
                fm = np.zeros(N.shape)
                full[sel] = S[o - 1]
                fm[sel] = mag[o - 1]
                clustered[(i, o, "v")] = (full, fm)
    for o in range(1, n):
        for i in range(n - o):
            j = i + o
            g = nodes.g(i, j)
            val = (D[i + 1][j] - D[i][j - 1]) / g
            err = (E[i + 1][j] + E[i][j - 1]) / np.abs(g) + 6.0 * np.abs(val)
            if (i, o, "v") in clustered:
                cl = clustered[(i, o)]
                sv, sm = clustered[(i, o, "v")]
                val = np.where(cl, sv, val)
                err = np.where(cl, sm, err)
            D[i][j] = val
            E[i][j] = err
    return D[0], E[0]


# ------------------------------------------------------ Newton coefficients
def _complete_homogeneous(vals, top):
    """h_0..h_top of the given variables (list of arrays)."""
    h = [np.ones_like(vals[0])] + [np.zeros_like(vals[0]) for _ in range(top)]
    for x in vals:
        for j in range(1, top + 1):
            h[j] = h[j] + x * h[j - 1]
    return h


def _products(lam: _Nodes):
    """Product nodes lambda_a lambda_b (a <= b) preceded by the node 1."""
    k = len(lam)
    pairs = [(a, b) for a in range(k) for b in range(a, k)]
    one = np.ones_like(lam.val[0])
    val = [one] + [lam.val[a] * lam.val[b] for a, b in pairs]
    q = [0.0 * one] + [lam.q[a] + lam.val[a] * lam.q[b] for a, b in pairs]
    la = [np.zeros(np.shape(lam.logabs[0]))] + [
        lam.logabs[a] + lam.logabs[b] for a, b in pairs
    ]
    zero = np.zeros(np.shape(lam.logabs[0]))
    kpi = [zero] + [np.fmod(lam.kpi[a] + lam.kpi[b], 2.0) for a, b in pairs]
    phi = [zero] + [lam.phi[a] + lam.phi[b] for a, b in pairs]
    gap = {}
    for i in range(1, len(pairs) + 1):
        gap[(0, i)] = -q[i]  # lambda_a lambda_b - 1
    for i, (a, b) in enumerate(pairs, start=1):
        for j, (c, d) in enumerate(pairs, start=1):
            if j <= i:
                continue
            # cd - ab two ways; keep the one with less cancellation
            x1 = lam.val[c] * lam.g(b, d) + lam.val[b] * lam.g(a, c)
            w1 = np.abs(lam.val[c] * lam.g(b, d)) + np.abs(lam.val[b] * lam.g(a, c))
            x2 = lam.val[c] * lam.g(a, d) + lam.val[a] * lam.g(b, c)
            w2 = np.abs(lam.val[c] * lam.g(a, d)) + np.abs(lam.val[a] * lam.g(b, c))
            gap[(i, j)] = np.where(w1 <= w2, x1, x2)
    return _Nodes(val, q, la, kpi, phi, gap)


# ----------------------------------------------------------------- public
def confluent_terms(s, alpha, beta, gamma, feats: Features, t):
    """Per-entry ``(F, G, err_F, err_G)`` by divided differences.

    Args:
        s, alpha, beta, gamma: flat arrays of shape ``(M,)`` (``s = alpha h``).
        feats: state layout (momentum and/or averaging; not plain SGD).
        t: step counts, shape ``(M,)`` (or broadcastable), ``t >= 1``.

    Returns:
        Arrays of shape ``(M,)``; ``err_*`` bound the absolute rounding error
        (``inf`` where the evaluation overflowed).
    """
    s, alpha, beta, gamma = (
        np.asarray(x, dtype=np.float64) for x in (s, alpha, beta, gamma)
    )
    shape = np.broadcast_shapes(
        s.shape, alpha.shape, beta.shape, gamma.shape, np.shape(t)
    )
    s, alpha, beta, gamma = (
        np.broadcast_to(x, shape).ravel() for x in (s, alpha, beta, gamma)
    )
    t = np.broadcast_to(np.asarray(t, dtype=np.float64), shape).ravel()
    out = [np.empty(s.shape) for _ in range(4)]
    if feats.momentum:
        with np.errstate(all="ignore"):
            cplx = _discriminant(s, beta)[-1] < 0
        groups = [(~cplx, False), (cplx, True)]
    else:
        groups = [(np.ones(s.shape, dtype=bool), False)]
    with np.errstate(all="ignore"):
        for mask, is_c in groups:
            if not np.any(mask):
                continue
            res = _terms(
                s[mask], alpha[mask], beta[mask], gamma[mask], feats, t[mask], is_c
            )
            for dst, src in zip(out, res, strict=True):
                dst[mask] = src
    F, G, eF, eG = out
    ok = np.isfinite(F) & np.isfinite(G) & np.isfinite(eF) & np.isfinite(eG)
    return (
        np.where(ok, F, np.inf),
        np.where(ok, G, np.inf),
        np.where(ok, eF, np.inf),
        np.where(ok, eG, np.inf),
    )


def _terms(s, alpha, beta, gamma, feats, t, cplx):
    nodes, fval, fpair, c = _family_nodes(s, alpha, beta, gamma, feats, cplx)
    k = len(nodes)
    m = k - 1
    # ---- mean: f = sum_r [lam_{r+1..k}]F [lam_1..lam_{r+1}] z^t
    perm = _order(nodes)
    lam = _permuted(nodes, perm)
    fv = _take(fval, perm)
    D, E = _dd_top_row(lam, t)
    f = D[0] + 0.0
    f_mag = E[0] + 0.0
    if k == 2:
        coefs = [fv[1]]
    else:
        pair_full = {}
        for (i, j), v in fpair.items():
            pair_full[(i, j)] = pair_full[(j, i)] = v
        # [lam_2, lam_3] F in the sorted order: the pair that leaves out perm[0]
        p0 = perm[0]
        fp = np.where(
            p0 == 0,
            pair_full[(1, 2)],
            np.where(p0 == 1, pair_full[(0, 2)], pair_full[(0, 1)]),
        )
        coefs = [fp, fv[2]]
    for r, cf in enumerate(coefs, start=1):
        f = f + cf * D[r]
        f_mag = f_mag + np.abs(cf) * (E[r] + 4.0 * np.abs(D[r]))
    # ---- noise: G = c^2 sum_{r>=m} L(pi_r) [1, nu_1..nu_{r+1}] z^(t+m)
    prod = _products(lam)
    pperm = _order(prod, first_fixed=True)
    nu = _permuted(prod, pperm)
    P = len(nu) - 1
    Dg, Eg = _dd_top_row(nu, t + m)
    hl = _complete_homogeneous(lam.val, P - m)
    Lmu = [np.zeros_like(hl[0]) for _ in range(m)] + [x * x for x in hl]  # L(mu^n)
    Lmag = [np.abs(x) for x in Lmu]
    poly = [np.ones_like(nu.val[1])]  # pi_0 = 1, ascending coefficients
    G = 0.0
    G_mag = 0.0
    for r in range(P):
        if r >= m:
            Lr = sum(poly[n] * Lmu[n] for n in range(len(poly)))
            Lr_mag = sum(np.abs(poly[n]) * Lmag[n] for n in range(len(poly))) * (
                2.0 * r + 4.0
            )
            G = G + Lr * Dg[r + 1]
            G_mag = G_mag + np.abs(Lr) * Eg[r + 1] + Lr_mag * np.abs(Dg[r + 1])
        # pi_{r+1} = pi_r (mu - nu_{r+1})
        root = nu.val[r + 1]
        new = [-root * poly[0]]
        for n in range(1, len(poly)):
            new.append(poly[n - 1] - root * poly[n])
        new.append(poly[-1])
        poly = new
    f = np.real(f)
    G = np.real(G)
    cc = c * c
    err_f = EPS * f_mag
    err_F = 2.0 * np.abs(f) * err_f + err_f * err_f
    err_G = EPS * (cc * G_mag + 4.0 * cc * np.abs(G))
    return f * f, cc * G, err_F, err_G
