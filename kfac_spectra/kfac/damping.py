r"""Damping and step-size rules of K-FAC.

* Levenberg–Marquardt adaptation of λ (Martens & Grosse, 2015, §6.5): every T₁ steps
  compute the reduction ratio ``ρ = (h(θ+δ) − h(θ)) / M(δ)`` with the quadratic
  model ``M(δ) = ½ δᵀ(F + (λ+η)I)δ + ∇hᵀδ``; if ρ > 3/4 then λ ← ωλ, if ρ < 1/4
  then λ ← λ/ω, with ω = (19/20)^{T₁}.
* Re-scaling and momentum from the exact quadratic model (§6.4, §7): with the
  proposal ``Δ = −F̆^{-1}∇h`` and the previous update ``δ₀``, choose
  ``δ = αΔ + μδ₀`` minimising M:

  .. math::
      \begin{bmatrix} α \\ μ \end{bmatrix} = -
      \begin{bmatrix} Δ^\top \hat F Δ & Δ^\top \hat F δ_0 \\
                      δ_0^\top \hat F Δ & δ_0^\top \hat F δ_0 \end{bmatrix}^{-1}
      \begin{bmatrix} ∇h^\top Δ \\ ∇h^\top δ_0 \end{bmatrix},
      \quad \hat F = F + (λ+η) I,

  and ``M(δ) = ½ (α ∇hᵀΔ + μ ∇hᵀδ₀)`` at the optimum.
* KL clipping (Ba et al., 2017; Zhang et al. 2019, appendix F.4): scale the
  preconditioned gradient ``v = F̆^{-1}g`` by ``ν = min(1, sqrt(κ / (α² vᵀg)))``.
"""

from __future__ import annotations

import math

__all__ = ["kl_clip_factor", "lm_adjust", "qmodel_coefficients"]


def lm_adjust(
    damping: float,
    rho: float,
    omega: float,
    min_damping: float,
    max_damping: float,
) -> float:
    """One Levenberg–Marquardt update of λ.

    Args:
        damping: Current λ.
        rho: Reduction ratio (actual / predicted change); NaN counts as bad.
        omega: Decay factor in (0, 1).
        min_damping: Lower clamp.
        max_damping: Upper clamp.

    Returns:
        The new λ.
    """
    if not math.isfinite(rho) or rho < 0.25:
        damping = damping / omega
    elif rho > 0.75:
        damping = damping * omega
    return min(max(damping, min_damping), max_damping)


def qmodel_coefficients(
    q11: float, q12: float, q22: float, b1: float, b2: float
) -> tuple[float, float, float]:
    """Minimise ``½ xᵀQx + bᵀx`` over ``x = (α, μ)``.

    With ``q22 == 0`` (no previous update) only α is optimised (μ = 0).

    Args:
        q11: ``ΔᵀF̂Δ``.
        q12: ``ΔᵀF̂δ₀``.
        q22: ``δ₀ᵀF̂δ₀``.
        b1: ``∇hᵀΔ``.
        b2: ``∇hᵀδ₀``.

    Returns:
        ``(α, μ, M)`` with ``M`` the model value at the optimum (≤ 0), or
        ``(0, 0, 0)`` if the model is degenerate.
    """
    if q22 > 0:
        det = q11 * q22 - q12 * q12
        if det > 1e-12 * q11 * q22:
            alpha = -(q22 * b1 - q12 * b2) / det
            mu = -(q11 * b2 - q12 * b1) / det
            return alpha, mu, 0.5 * (alpha * b1 + mu * b2)
    if q11 > 0:
        alpha = -b1 / q11
        return alpha, 0.0, 0.5 * alpha * b1
    return 0.0, 0.0, 0.0


def kl_clip_factor(kl_clip: float | None, lr: float, vg: float) -> float:
    """``ν = min(1, sqrt(κ / (lr² vᵀg)))``; 1 when disabled or ``vᵀg ≤ 0``."""
    if kl_clip is None or not math.isfinite(vg) or vg <= 0 or lr <= 0:
        return 1.0
    return min(1.0, math.sqrt(kl_clip / (lr * lr * vg)))
