r"""Solving with damped Kronecker blocks: eigendecomposition, Cholesky, CG-FAC and the
closed-form inverse of the chain-structured RNN approximation.

Every preconditioner maps the ``(out, in')`` gradient matrix ``G`` to
``mat((S ⊗ A + damping)^{-1} vec(G))`` with row-major vec, using
``(S ⊗ A) vec(X) = vec(S X A)`` for symmetric factors.

* eigh: ``S = U_S diag(s) U_Sᵀ``, ``A = U_A diag(a) U_Aᵀ``; then
  ``X = U_S [(U_Sᵀ G U_A) ⊘ D] U_Aᵀ`` with ``D_ij = (s_i + γ_S)(a_j + γ_A)``
  (factored) or ``s_i a_j + γ`` (Tikhonov). Damping is applied at solve time, so
  changing λ needs no new decomposition.
* Cholesky: ``(S + γ_S I)^{-1} G (A + γ_A I)^{-1}`` (factored damping only).
* CG-FAC (Chen, 2021): conjugate gradient on ``(S ⊗ A + γ I) x = g`` (or the
  factored operator) with ``S V = Ĝᵀ(Ĝ V)`` and ``V A = (V X̄ᵀ) X̄ / R`` from the
  stored rows — A and S are never formed — warm-started from the last solution.

Robustness: :func:`robust_eigh` symmetrises, checks finiteness, and on failure
(cuSOLVER raises or returns NaN) retries in float64 on the CPU; ``None`` means both
attempts failed and the caller must skip the inverse update.

References:
    Martens & Grosse (2015), §3.2 and §6.3; Chen (2021), CG-FAC, Algorithm 2;
    Martens, Ba & Johnson (2018), Option 2 (chain-structured inverse).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .blocks.base import gram
from .finite import all_finite

__all__ = [
    "ChainInverse",
    "CholeskyInverse",
    "EigenInverse",
    "cg_fac_solve",
    "robust_cholesky_inverse",
    "robust_eigh",
    "two_sided_solve",
    "zeta",
]


def robust_eigh(mat: Tensor) -> tuple[Tensor, Tensor] | None:
    """Eigendecomposition of a symmetric matrix that never returns NaN.

    Args:
        mat: Square matrix (symmetrised internally).

    Returns:
        ``(eigenvalues ascending, eigenvectors)`` in ``mat``'s dtype/device, or
        ``None`` if the matrix is non-finite or both attempts fail.
    """
    if not all_finite([mat]):
        return None
    sym = 0.5 * (mat + mat.mT)
    for retry in (False, True):
        # the float64 CPU copy only when the first attempt failed
        m = sym.to(device="cpu", dtype=torch.float64, copy=True) if retry else sym
        try:
            evals, evecs = torch.linalg.eigh(m)
        except RuntimeError:
            continue
        if all_finite([evals, evecs]):
            return evals.to(mat), evecs.to(mat)
    return None


def robust_cholesky_inverse(mat: Tensor) -> Tensor | None:
    """Inverse of an SPD matrix via Cholesky, with a float64/CPU retry.

    Returns:
        The inverse, or ``None`` if both attempts fail or give non-finite values.
    """
    if not bool(torch.isfinite(mat).all()):
        return None
    sym = 0.5 * (mat + mat.mT)
    for m in (sym, sym.to(device="cpu", dtype=torch.float64)):
        try:
            inv = torch.cholesky_inverse(torch.linalg.cholesky(m))
        except RuntimeError:
            continue
        if bool(torch.isfinite(inv).all()):
            return inv.to(mat)
    return None


PI_RANGE = (1e-4, 1e4)


def pi_heuristic(trace_a: Tensor, dim_a: int, trace_s: Tensor, dim_s: int) -> Tensor:
    """π = sqrt((tr A / dim A) / (tr S / dim S)) (Martens & Grosse 2015, §6.3).

    Returns 1 when either trace is non-positive or non-finite, and clamps π to
    ``PI_RANGE``: once a model fits its batch, S collapses towards 0 (sampled
    targets equal the predictions) and an unbounded π would push the damped
    factors outside the float32 range.
    """
    ma = (trace_a / dim_a).double()
    ms = (trace_s / dim_s).double()
    ok = torch.isfinite(ma) & torch.isfinite(ms) & (ma > 0) & (ms > 0)
    pi = torch.where(ok, torch.sqrt(ma / ms.clamp_min(1e-300)), torch.ones_like(ma))
    return pi.clamp(*PI_RANGE).to(trace_a.dtype)


@dataclass
class Damping:
    """Damping of one block.

    Attributes:
        factored: Factored (π) damping if true, else exact Tikhonov.
        gamma: ``λ + η`` (Tikhonov) — the factored version uses ``sqrt(λ + η)``.
    """

    factored: bool
    gamma: float

    def split(self, pi: Tensor) -> tuple[Tensor, Tensor]:
        """``(γ_S, γ_A) = (sqrt(γ)/π, π sqrt(γ))`` for the factored form."""
        root = self.gamma**0.5
        return root / pi, root * pi


def two_sided_solve(
    left: Tensor,
    g: Tensor,
    right: Tensor,
    scratch: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """``L G R`` (``R`` 1-D: ``(L G) diag(R)``), the solve of a factored inverse.

    ``L G`` goes into ``scratch`` and the result into ``out`` where given.
    """
    lg = torch.mm(left, g, out=scratch)
    if right.ndim == 1:
        return torch.mul(lg, right, out=out)
    return torch.mm(lg, right, out=out)


@dataclass
class EigenInverse:
    """Eigendecompositions of S and A (A may be diagonal: ``evec_a is None``).

    For factored damping the damped inverses ``U diag(1/(e + γ)) Uᵀ`` are formed
    once per damping value and cached, so a solve costs two matrix products.
    """

    eval_s: Tensor
    evec_s: Tensor
    eval_a: Tensor
    evec_a: Tensor | None

    def __post_init__(self) -> None:
        self._cache: tuple[float, Tensor, Tensor] | None = None

    def _factored_inverses(self, damping: Damping) -> tuple[Tensor, Tensor]:
        if self._cache is not None and self._cache[0] == damping.gamma:
            return self._cache[1], self._cache[2]
        s = self.eval_s.clamp_min(0)
        a = self.eval_a.clamp_min(0)
        pi = pi_heuristic(a.sum(), a.numel(), s.sum(), s.numel())
        gs, ga = damping.split(pi)
        # U diag(1/d) Uᵀ = W Wᵀ with W = U diag(d^{-1/2}): a Gram matrix, formed
        # once per pair of entries (d > 0: clamped eigenvalues plus γ > 0)
        inv_s = gram((self.evec_s * (s + gs).rsqrt()).T)
        if self.evec_a is None:
            inv_a = 1.0 / (a + ga)
        else:
            inv_a = gram((self.evec_a * (a + ga).rsqrt()).T)
        self._cache = (damping.gamma, inv_s, inv_a)
        return inv_s, inv_a

    @property
    def damped_inverses(self) -> tuple[float, Tensor, Tensor] | None:
        """The cached ``(γ, (S + γ_S)^{-1}, (A + γ_A)^{-1})`` of factored damping
        (``None`` until :meth:`two_sided` forms them)."""
        return self._cache

    def adopt_damped_inverses(self, cache: tuple[float, Tensor, Tensor]) -> None:
        """Take damped inverses formed elsewhere from the same eigendecompositions
        (another rank's :attr:`damped_inverses`)."""
        self._cache = cache

    def two_sided(self, damping: Damping) -> tuple[Tensor, Tensor] | None:
        """``(L, R)`` with ``apply(G) = L G R`` (``R`` 1-D: ``L G diag(R)``).

        The cached damped inverses for factored damping; ``None`` for Tikhonov
        damping, which does not factor into two products.
        """
        if not damping.factored:
            return None
        return self._factored_inverses(damping)

    def apply(self, g: Tensor, damping: Damping) -> Tensor:
        """``mat((S ⊗ A + damping)^{-1} vec(G))``."""
        if damping.factored:
            inv_s, inv_a = self._factored_inverses(damping)
            return two_sided_solve(inv_s, g, inv_a)
        s = self.eval_s.clamp_min(0)
        a = self.eval_a.clamp_min(0)
        gt = self.evec_s.T @ g
        if self.evec_a is not None:
            gt = gt @ self.evec_a
        x = gt / (s[:, None] * a[None, :] + damping.gamma)
        if self.evec_a is not None:
            x = x @ self.evec_a.T
        return self.evec_s @ x


@dataclass
class CholeskyInverse:
    """Inverses of the damped factors (A may be diagonal, stored 1-D)."""

    inv_s: Tensor
    inv_a: Tensor

    @staticmethod
    def build(a: Tensor, s: Tensor, damping: Damping) -> CholeskyInverse | None:
        """Invert ``S + γ_S I`` and ``A + γ_A I``; ``None`` on failure."""
        tr_a = a.sum() if a.ndim == 1 else torch.diagonal(a).sum()
        pi = pi_heuristic(tr_a, a.shape[0], torch.diagonal(s).sum(), s.shape[0])
        gs, ga = damping.split(pi)
        inv_s = robust_cholesky_inverse(s + gs * torch.eye(s.shape[0]).to(s))
        if a.ndim == 1:
            inv_a = 1.0 / (a + ga)
            ok = bool(torch.isfinite(inv_a).all()) and bool((a + ga > 0).all())
            inv_a = inv_a if ok else None
        else:
            inv_a = robust_cholesky_inverse(a + ga * torch.eye(a.shape[0]).to(a))
        if inv_s is None or inv_a is None:
            return None
        return CholeskyInverse(inv_s, inv_a)

    def two_sided(self, damping: Damping) -> tuple[Tensor, Tensor]:
        """``(L, R)`` with ``apply(G) = L G R`` (``R`` 1-D: ``L G diag(R)``)."""
        del damping
        return self.inv_s, self.inv_a

    def apply(self, g: Tensor, damping: Damping) -> Tensor:
        """``(S + γ_S)^{-1} G (A + γ_A)^{-1}`` (damping fixed at build time)."""
        del damping
        return two_sided_solve(self.inv_s, g, self.inv_a)


def zeta(x: Tensor, steps: int) -> Tensor:
    r"""``ζ_T(x) = Σ_{|d|<T} (T − |d|) x^{|d|} = T + 2 Σ_{d=1}^{T−1} (T−d) x^d``.

    Args:
        x: Values in (−1, 1).
        steps: T ≥ 1.

    Returns:
        ``ζ_T(x)``, same shape as ``x``.
    """
    out = torch.full_like(x, float(steps))
    power = torch.ones_like(x)
    for d in range(1, steps):
        power = power * x
        out = out + 2.0 * (steps - d) * power
    return out


@dataclass
class ChainInverse:
    r"""Closed-form inverse of the chain-structured RNN Fisher approximation.

    With damped ``S, A``, whitened symmetric lag-one factors
    ``Ψ_S = S^{-1/2} sym(S₁) S^{-1/2} = V_S diag(ψ_S) V_Sᵀ`` (same for A), and
    ``P_S = S^{-1/2} V_S``, ``P_A = A^{-1/2} V_A``:

    .. math::
        F^{-1} \operatorname{vec}(G) = \operatorname{vec}\big(
        P_S [ (P_S^\top G P_A) \odot T / ζ_T(ψ_S ψ_A^\top) ] P_A^\top \big).
    """

    p_s: Tensor
    p_a: Tensor
    weights: Tensor
    eval_s: Tensor
    evec_s: Tensor
    eval_a: Tensor
    evec_a: Tensor

    @staticmethod
    def build(
        stats: dict[str, Tensor], damping: Damping, psi_max: float = 0.99
    ) -> ChainInverse | None:
        """Build from ``A, S, A1, S1, T``; ``None`` if a decomposition fails.

        The eigenvalues ψ are clipped to ``[−psi_max, psi_max]`` (the chain model
        needs |ψ| < 1). Damping is always the factored form.
        """
        a, s = stats["A"], stats["S"]
        eig_a, eig_s = robust_eigh(a), robust_eigh(s)
        if eig_a is None or eig_s is None:
            return None
        ea, ua = eig_a[0].clamp_min(0), eig_a[1]
        es, us = eig_s[0].clamp_min(0), eig_s[1]
        pi = pi_heuristic(ea.sum(), ea.numel(), es.sum(), es.numel())
        gs, ga = damping.split(pi)
        if not (bool(ga > 0) and bool(gs > 0)):
            return None
        a_isqrt = ua @ torch.diag((ea + ga).rsqrt()) @ ua.T
        s_isqrt = us @ torch.diag((es + gs).rsqrt()) @ us.T
        a1, s1 = stats["A1"], stats["S1"]
        psi_a = robust_eigh(a_isqrt @ (0.5 * (a1 + a1.T)) @ a_isqrt)
        psi_s = robust_eigh(s_isqrt @ (0.5 * (s1 + s1.T)) @ s_isqrt)
        if psi_a is None or psi_s is None:
            return None
        steps = max(int(round(float(stats["T"]))), 1)
        x = torch.outer(psi_s[0], psi_a[0]).clamp(-psi_max, psi_max)
        weights = steps / zeta(x, steps)
        return ChainInverse(
            s_isqrt @ psi_s[1], a_isqrt @ psi_a[1], weights, es, us, ea, ua
        )

    def two_sided(self, damping: Damping) -> None:
        """``None``: the chain inverse is not two products (see :meth:`apply`)."""
        del damping

    def apply(self, g: Tensor, damping: Damping) -> Tensor:
        """Apply the inverse (damping fixed at build time)."""
        del damping
        return self.p_s @ ((self.p_s.T @ g @ self.p_a) * self.weights) @ self.p_a.T


def cg_fac_solve(
    g: Tensor,
    rows_x: Tensor,
    rows_g: Tensor,
    damping: Damping,
    x0: Tensor | None = None,
    max_iter: int = 100,
    rtol: float = 1e-6,
) -> tuple[Tensor, int]:
    r"""CG-FAC: solve ``(S ⊗ A + damping) x = g`` matrix-free from the stored rows.

    ``A = X̄ᵀX̄ / R`` and ``S = ĜᵀĜ`` are only ever applied, never formed.

    Args:
        g: Right-hand side, ``(out, in')``.
        rows_x: Input rows ``X̄``, ``(R, in')``.
        rows_g: Output-gradient rows ``Ĝ`` (already probe-scaled), ``(R', out)``.
        damping: Tikhonov or factored damping (π from ``||X̄||²/R`` and ``||Ĝ||²``).
        x0: Warm start (e.g. the previous solution), ``(out, in')``.
        max_iter: Maximum CG iterations.
        rtol: Stop when ``||r|| ≤ rtol ||g||``.

    Returns:
        ``(x, iterations)``.
    """
    n_rows = rows_x.shape[0]

    def s_mv(v: Tensor) -> Tensor:
        return rows_g.T @ (rows_g @ v)

    def a_mv(v: Tensor) -> Tensor:
        return (v @ rows_x.T) @ rows_x / n_rows

    if damping.factored:
        tr_a = rows_x.pow(2).sum() / n_rows
        tr_s = rows_g.pow(2).sum()
        pi = pi_heuristic(tr_a, rows_x.shape[1], tr_s, rows_g.shape[1])
        gs, ga = damping.split(pi)

        def op(v: Tensor) -> Tensor:
            av = a_mv(v) + ga * v
            return s_mv(av) + gs * av
    else:
        gamma = damping.gamma

        def op(v: Tensor) -> Tensor:
            return s_mv(a_mv(v)) + gamma * v

    x = torch.zeros_like(g) if x0 is None else x0.clone()
    r = g - op(x) if x0 is not None else g.clone()
    p = r.clone()
    rho = (r * r).sum()
    stop = (rtol * g.norm()) ** 2
    it = 0
    while it < max_iter and rho > stop:
        u = op(p)
        alpha = rho / (p * u).sum()
        x = x + alpha * p
        r = r - alpha * u
        rho_new = (r * r).sum()
        p = r + (rho_new / rho) * p
        rho = rho_new
        it += 1
    return x, it
