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
small, :math:`N \\max|\\nu_l - \\nu_i| \\le` ``CLUSTER_RADIUS`` :math:`|\\nu_i|`,
is summed as the Taylor series about its first node,

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
:mod:`nqm._closed` and is certified by the same test. Like that bound, it
covers the evaluation from the given parameters; the nodes are the exact roots
for parameters perturbed by a few units in the last place (of q = 1 - r, or of
p = 1 + r near -1), whose effect is the loss's own conditioning.

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
CLUSTER_RADIUS = 0.5
#: Most series terms summed (the terms fall like CLUSTER_RADIUS^j / j!).
MAX_TERMS = 24


# ------------------------------------------------------------------ nodes
class _Nodes:
    """Eigenvalues (or their products) of a batch of modes, with accurate data.

    Arrays of shape ``(n, M)`` (node, mode): ``val`` the node, ``q`` = 1 - node,
    ``logabs`` = log|node|, and its argument as :math:`k\\pi + \\phi` with
    ``kpi`` = k in {0, 1} and ``phi`` the (small, accurate) rest, so that powers
    of nodes near -1 keep their phase; ``gap[i, j]`` = node_j - node_i, shape
    ``(n, n, M)``.
    """

    def __init__(self, val, q, logabs, kpi, phi, gap):
        self.val, self.q, self.logabs = val, q, logabs
        self.kpi, self.phi, self.gap = kpi, phi, gap

    def __len__(self):
        return self.val.shape[0]

    def permuted(self, perm):
        """The nodes reordered per mode (``perm``: shape ``(n, M)``)."""
        modes = np.arange(perm.shape[1])

        def take(x):
            return _take_nodes(x, perm, modes)

        gap = self.gap[perm[:, None, :], perm[None, :, :], modes]
        return _Nodes(
            *map(take, (self.val, self.q, self.logabs, self.kpi, self.phi)), gap
        )


def _take_nodes(x, perm, modes=None):
    """``np.take_along_axis(x, perm, axis=0)`` for ``(n, M)`` arrays, by plain
    indexing (the same entries; several times less call overhead)."""
    if modes is None:
        modes = np.arange(perm.shape[1])
    return x[perm, modes]


def _gap_matrix(pairs, n, like):
    """(n, n, M) antisymmetric matrix from ``{(i, j): node_j - node_i}``."""
    gap = np.zeros((n, n) + np.shape(like), dtype=np.result_type(like, *pairs.values()))
    for (i, j), g in pairs.items():
        gap[i, j] = g
        gap[j, i] = -g
    return gap


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


def _stacked(data, gaps):
    """_Nodes from a list of per-node tuples and ``{(i, j): gap}``."""
    val, q, la, kpi, phi = (_stack_broadcast(x) for x in zip(*data, strict=True))
    return _Nodes(val, q, la, kpi, phi, _gap_matrix(gaps, len(data), val[0]))


def _stack_broadcast(xs):
    """``np.stack(np.broadcast_arrays(*xs))``: the same array, built by
    assignment (several times less call overhead)."""
    xs = [np.asarray(x) for x in xs]
    shape = np.broadcast(*xs).shape
    out = np.empty((len(xs),) + shape, dtype=np.result_type(*xs))
    for i, x in enumerate(xs):
        out[i] = x
    return out


def _family_nodes(s, alpha, beta, gamma, feats: Features, cplx: bool):
    """Nodes, F values, pair coefficients and the noise factor of each mode.

    Returns ``(nodes, fval, fpair, c)``: ``fval`` = F(lambda_j), shape ``(k, M)``;
    ``fpair[i, j]`` = [lambda_i, lambda_j] F (k = 3 only, shape ``(3, 3, M)``);
    ``c`` with G(z) = c z^(k-1).
    """
    gap = {}
    if feats.momentum:
        data, d, gap[(0, 1)] = _momentum_roots(s, beta, cplx)
        if not feats.ema:
            return _stacked(data, gap), np.stack(d), None, -alpha
        # momentum + averaging: third node gamma
        g1 = 1.0 - gamma
        zero = np.zeros(s.shape)
        data.append((gamma + zero, g1 + zero, np.log(gamma) + zero, zero, zero))
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
        fval.append(gamma * gamma * s + 0.0 * fval[0])
        pair = {(0, 1): g1 * (1.0 - s) + 0.0 * fval[0]}
        for j in (0, 1):
            pair[(j, 2)] = d[j] + gamma * s
        fpair = _gap_matrix(pair, 3, fval[0])
        upper = np.arange(3)[:, None, None] < np.arange(3)[None, :, None]
        fpair = np.where(upper, fpair, -fpair)  # symmetric: [x, y]F = [y, x]F
        return _stacked(data, gap), np.stack(fval), fpair, -alpha * g1
    # averaging alone: nodes 1 - s and gamma
    zero = np.zeros(s.shape)
    data = [
        _real_node(1.0 - s, s, 2.0 - s),
        _real_node(gamma + zero, 1.0 - gamma + zero, 1.0 + gamma + zero),
    ]
    gap[(0, 1)] = s - (1.0 - gamma)
    fval = np.stack([(1.0 - s) * (1.0 - gamma), gamma * s + zero])
    return _stacked(data, gap), fval, None, -alpha * (1.0 - gamma)


def _sorted(nodes: _Nodes, first_fixed: bool = False):
    """Nodes in decreasing real part per mode (the first kept first if asked),
    and the permutation (``None`` where the given order already is)."""
    key = -np.real(nodes.val)
    if first_fixed:
        key = key.copy()
        key[0] = -np.inf
    if np.all(key[1:] >= key[:-1]):
        return nodes, None
    perm = np.argsort(key, axis=0, kind="stable")
    return nodes.permuted(perm), perm


# ------------------------------------------------------ powers and tables
def _power(logabs, kpi, phi, n):
    """nu^n from log|nu| and arg nu = kpi pi + phi (n: float array of integers)."""
    mod = np.exp(n * logabs)
    mod = np.where((kpi != 0.0) & (np.fmod(n, 2.0) != 0.0), -mod, mod)
    if not np.any(phi):
        return mod
    phase = n * phi
    return mod * (np.cos(phase) + 1j * np.sin(phase))


def _series(val, logabs, kpi, phi, offs, cl, N):
    """Taylor series of [nu_i, ..., nu_{i+o}] z^N about nu_i, every center i
    and o = 1..omax at once.

    Args:
        val, logabs, kpi, phi: the centers, shape ``(n, M)``.
        offs: ``nu_{i+o} - nu_i``, shape ``(n, omax, M)`` (0 past the end).
        cl: where the series is used (convergence is tested there only).
        N: ``(M,)``.

    Returns:
        ``(S, mag)``, shape ``(n, omax, M)`` each (mag in units of eps).
    """
    n, omax = offs.shape[:2]
    T = [_power(logabs, kpi, phi, N)]  # T_j = binom(N, j) nu^(N - j)
    inv = 1.0 / val
    for j in range(omax):
        T.append(T[-1] * ((N - j) / (j + 1.0)) * inv)
    S = np.zeros(offs.shape, dtype=np.result_type(T[0], offs))
    mag = np.zeros(offs.shape)
    h = [np.ones(offs.shape[:1] + offs.shape[2:], dtype=S.dtype)] * (omax + 1)
    last = mag
    for j in range(MAX_TERMS):
        if j > 0:  # h_j(e_1..e_o) = h_j(e_1..e_{o-1}) + e_o h_{j-1}(e_1..e_o)
            h = [np.zeros_like(h[0])] + h[1:]
            for o in range(1, omax + 1):
                h[o] = h[o - 1] + offs[:, o - 1] * h[o]
            k = len(T) - 1
            T.append(T[-1] * ((N - k) / (k + 1.0)) * inv)
        term = np.stack([T[j + o] * h[o] for o in range(1, omax + 1)], axis=1)
        S = S + term
        last = np.abs(term)
        mag = mag + last
        # stop once every used tail is far below the rounding already bounded
        if j >= 2 and not np.any(cl & (last > 1e-3 * EPS * mag)):
            break
    # rounding of each term (nu^N: of log|nu| and arg nu, times N; h; the
    # products) and the truncated tail
    rel_pow = 4.0 + np.abs(N * logabs) + np.abs(N * phi)
    grow = 2.0 * (np.arange(1, omax + 1)[None, :, None] + 3.0)
    return S, mag * (rel_pow[:, None] + grow) + 2.0 * last / EPS


def _dd_top_row(nodes: _Nodes, N):
    """[nu_0, ..., nu_j] z^N for j = 0..n-1 and their error magnitudes (units of
    eps), shape ``(n, M)`` each.

    ``N``: float array (M,) of non-negative integers.
    """
    n = len(nodes)
    idx = np.arange(n)
    diag = _power(nodes.logabs, nodes.kpi, nodes.phi, N)
    err = np.abs(diag) * (4.0 + np.abs(N * nodes.logabs) + np.abs(N * nodes.phi))
    top, top_err = [diag[0]], [err[0]]
    # offsets nu_{i+o} - nu_i (0 past the end) and clustered runs
    offs = np.zeros((n, n - 1) + N.shape, dtype=nodes.gap.dtype)
    for o in range(1, n):
        offs[: n - o, o - 1] = nodes.gap[idx[: n - o], idx[: n - o] + o]
    spread = np.maximum.accumulate(np.abs(offs), axis=1)
    valid = (idx[:, None] + idx[None, 1:] < n)[..., None]
    cl = valid & (N * spread <= CLUSTER_RADIUS * np.abs(nodes.val)[:, None])
    # Where the whole sequence is one cluster, the top row is the series about
    # node 0 alone; elsewhere every clustered run needs its own centre.
    whole = cl[0, n - 2]
    part = np.any(cl, axis=(0, 1)) & ~whole
    used = np.nonzero(np.any(cl[..., part], axis=(0, 2)))[0]
    omax = int(used[-1]) + 1 if used.size else 0
    S = np.zeros((n, max(omax, 1)) + N.shape, dtype=np.result_type(diag, offs))
    Sm = np.zeros(S.shape)
    if omax:
        S[:, :omax, part], Sm[:, :omax, part] = _series(
            nodes.val[:, part],
            nodes.logabs[:, part],
            nodes.kpi[:, part],
            nodes.phi[:, part],
            offs[:, :omax, part],
            cl[:, :omax, part],
            N[part],
        )
    if np.any(whole):
        S0, Sm0 = _series(
            nodes.val[:1, whole],
            nodes.logabs[:1, whole],
            nodes.kpi[:1, whole],
            nodes.phi[:1, whole],
            offs[:1, :, whole],
            cl[:1, :, whole],
            N[whole],
        )
    for o in range(1, n):
        g = nodes.gap[idx[: n - o], idx[: n - o] + o]
        new = (diag[1:] - diag[:-1]) / g
        err = (err[1:] + err[:-1]) / np.abs(g) + 6.0 * np.abs(new)
        if o <= omax:
            c = cl[: n - o, o - 1] & part
            new = np.where(c, S[: n - o, o - 1], new)
            err = np.where(c, Sm[: n - o, o - 1], err)
        diag = new
        t0, e0 = diag[0], err[0]
        if np.any(whole):
            t0, e0 = t0.copy(), e0.copy()
            t0[whole], e0[whole] = S0[0, o - 1], Sm0[0, o - 1]
        top.append(t0)
        top_err.append(e0)
    return top, top_err


# ------------------------------------------------------ Newton coefficients
def _complete_homogeneous(vals, top):
    """h_0..h_top of the variables ``vals`` (shape ``(k, M)``)."""
    h = [np.ones_like(vals[0])] + [np.zeros_like(vals[0]) for _ in range(top)]
    for x in vals:
        for j in range(1, top + 1):
            h[j] = h[j] + x * h[j - 1]
    return h


def _products(lam: _Nodes):
    """Product nodes lambda_a lambda_b (a <= b) preceded by the node 1."""
    k = len(lam)
    A, B = np.triu_indices(k)
    one = np.ones((1,) + lam.val.shape[1:], dtype=lam.val.dtype)
    zero = np.zeros((1,) + lam.val.shape[1:])
    v = lam.val
    val = np.concatenate([one, v[A] * v[B]])
    q = np.concatenate([0.0 * one, lam.q[A] + v[A] * lam.q[B]])
    la = np.concatenate([zero, lam.logabs[A] + lam.logabs[B]])
    kpi = np.concatenate([zero, np.fmod(lam.kpi[A] + lam.kpi[B], 2.0)])
    phi = np.concatenate([zero, lam.phi[A] + lam.phi[B]])
    # cd - ab two ways; keep the one with less cancellation
    a, b, c, d = A[:, None], B[:, None], A[None, :], B[None, :]
    D = lam.gap
    t1, t2 = v[c] * D[b, d], v[b] * D[a, c]
    u1, u2 = v[c] * D[a, d], v[a] * D[b, c]
    pp = np.where(np.abs(t1) + np.abs(t2) <= np.abs(u1) + np.abs(u2), t1 + t2, u1 + u2)
    P = A.size
    gap = np.zeros((P + 1, P + 1) + v.shape[1:], dtype=pp.dtype)
    gap[1:, 1:] = pp
    gap[0, 1:] = -q[1:]  # lambda_a lambda_b - 1
    gap[1:, 0] = q[1:]
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
    s, alpha, beta, gamma, t = (
        np.asarray(x, dtype=np.float64) for x in (s, alpha, beta, gamma, t)
    )
    s, alpha, beta, gamma, t = (
        x.ravel() for x in np.broadcast_arrays(s, alpha, beta, gamma, t)
    )
    out = [np.empty(s.shape) for _ in range(4)]
    with np.errstate(all="ignore"):
        if feats.momentum:
            cplx = _discriminant(s, beta)[-1] < 0
            groups = [(~cplx, False), (cplx, True)]
        else:
            groups = [(None, False)]
        for mask, is_c in groups:
            if mask is None:
                res = _terms(s, alpha, beta, gamma, feats, t, is_c)
                out = list(res)
                break
            if not np.any(mask):
                continue
            part = (x[mask] for x in (s, alpha, beta, gamma))
            res = _terms(*part, feats, t[mask], is_c)
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
    lam, perm = _sorted(nodes)
    if perm is not None:
        fval = _take_nodes(fval, perm)
    D, E = _dd_top_row(lam, t)
    f = D[0] + 0.0
    f_mag = E[0] + 0.0
    if k == 2:
        coefs = [fval[1]]
    else:
        # [lam_2, lam_3] F in the sorted order: the pair that leaves out perm[0]
        if perm is None:
            fp = fpair[1, 2]
        else:
            fp = fpair[perm[1], perm[2], np.arange(perm.shape[1])]
        coefs = [fp, fval[2]]
    for r, cf in enumerate(coefs, start=1):
        f = f + cf * D[r]
        f_mag = f_mag + np.abs(cf) * (E[r] + 4.0 * np.abs(D[r]))
    # ---- noise: G = c^2 sum_{r>=m} L(pi_r) [1, nu_1..nu_{r+1}] z^(t+m)
    nu, _ = _sorted(_products(lam), first_fixed=True)
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
