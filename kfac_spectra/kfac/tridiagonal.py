r"""Block-tridiagonal K-FAC: the inverse Fisher of a chain of linear layers
approximated as block-tridiagonal (Martens & Grosse 2015, §4.3 and appendix B).

Notation (layers ``i = 1..ℓ`` of one chain, each with the ``(out_i, in'_i)``
weight matrix ``W̄_i = [W_i | b_i]``; row-major ``vec`` as everywhere in
:mod:`kfac_spectra.kfac`, so a Kronecker block ``B ⊗ C`` acts as
``vec(X) ↦ vec(B X Cᵀ)``). With ``ā_i`` the homogeneous input of layer ``i`` and
``ĝ_i`` its probe-scaled output gradient, the Kronecker-factored Fisher ``F̃`` has
the blocks

.. math::
    F̃_{ij} = S_{ij} \otimes A_{ij}, \qquad
    A_{ij} = \mathrm{E}[ā_i ā_j^\top], \qquad
    S_{ij} = \textstyle\sum_{\text{probes}} \mathrm{E}[ĝ_i ĝ_j^\top]

(in the paper's indexing ``Ā_{i-1,j-1} ⊗ G_{i,j}``, its eqn (1) and §3). The
diagonal factors ``S_i = S_{ii}``, ``A_i = A_{ii}`` are those of block-diagonal
K-FAC; this module adds the cross factors ``A_{i,i+1}`` (``in'_i × in'_{i+1}``) and
``S_{i,i+1}`` (``out_i × out_{i+1}``), estimated online from the same rows and
averaged with the same decay (:class:`ChainStatistics`).

The approximation ``F̂`` is the matrix that agrees with ``F̃`` on the diagonal and
first off-diagonal blocks and whose inverse is block-tridiagonal: the covariance
of a directed Gaussian chain ``vec(DW_i) = Ψ_{i,i+1} vec(DW_{i+1}) + ε_i``
(§4.3). With

.. math::
    Ψ_{i,i+1} = F̃_{i,i+1} F̃_{i+1,i+1}^{-1} = Ψ^S_i \otimes Ψ^A_i, \quad
    Ψ^S_i = S_{i,i+1} S_{i+1}^{-1}, \quad Ψ^A_i = A_{i,i+1} A_{i+1}^{-1},

.. math::
    Σ_{i|i+1} = F̃_{ii} - Ψ_{i,i+1} F̃_{i+1,i+1} Ψ_{i,i+1}^\top
      = S_i \otimes A_i - (Ψ^S_i S_{i+1} Ψ^{S\top}_i) \otimes
        (Ψ^A_i A_{i+1} Ψ^{A\top}_i), \qquad Σ_ℓ = F̃_{ℓℓ},

the inverse is ``F̂^{-1} = Ξᵀ Λ Ξ`` with ``Λ = diag(Σ_{1|2}^{-1}, …, Σ_ℓ^{-1})``
and ``Ξ`` the unit upper block-bidiagonal matrix with ``-Ψ_{i,i+1}`` above the
diagonal (§4.3). Applied to the gradient matrices ``V_i`` (the paper's
three-sweep product):

.. math::
    Z_i = V_i - Ψ^S_i V_{i+1} Ψ^{A\top}_i, \quad Y_i = Σ_{i|i+1}^{-1} Z_i, \quad
    U_i = Y_i - Ψ^{S\top}_{i-1} Y_{i-1} Ψ^A_{i-1}.

``Σ_{i|i+1}`` is a sum of two Kronecker products, inverted exactly by the
eigendecomposition method of appendix B: for SPD ``K_1, C_1`` and symmetric
``K_2, C_2``, with the generalised eigenproblems
``K_2 P = K_1 P diag(σ)``, ``Pᵀ K_1 P = I`` (likewise ``Q, τ`` for ``C_2, C_1``),

.. math::
    (K_1 \otimes C_1 + K_2 \otimes C_2)^{-1}
      = (P \otimes Q)\, (I \otimes I + σ \otimes τ)^{-1} (P \otimes Q)^\top ,

here with ``K_1 = S_i``, ``C_1 = A_i``, ``K_2 = -Ψ^S_i S_{i+1} Ψ^{S\top}_i`` and
``C_2 = Ψ^A_i A_{i+1} Ψ^{A\top}_i``, so ``Y = P [(Pᵀ Z Q) ⊘ (1 − σ τᵀ)] Qᵀ`` with
``σ, τ ∈ [0, 1]`` (Schur complements of the PSD joint factors: the 2 × 2 block
matrix of Kronecker products is a principal submatrix of the Kronecker product of
the joint covariances of ``(ĝ_i, ĝ_{i+1})`` and ``(ā_i, ā_{i+1})``). ``P`` comes
from the Cholesky factor ``S_i = L Lᵀ`` and ``eigh(L^{-1} K_2 L^{-\top})``.

Damping (§6.3, factored Tikhonov adapted to the tridiagonal case): every
*diagonal* factor is replaced by its damped form ``S_i + γ/π_i I``,
``A_i + π_i γ I`` (``γ = sqrt(λ + η)``, ``π_i`` the trace heuristic of the
block-diagonal case), wherever it occurs in ``Ψ`` and ``Σ``; the cross factors
are left as they are. ``F̂`` is then the tridiagonal completion of the damped
block-diagonal K-FAC matrix, so with the cross factors at zero the update is
exactly block-diagonal K-FAC's. λ enters the decomposition, so a chain keeps the
λ of its last inverse update until the next one (:class:`ChainFactors`).

Cost, for a chain with layer widths ``out_i`` and ``in'_i`` (``d_i`` either):

* statistics, per factor step: the cross Gram matrices ``X_iᵀ X_{i+1}`` and
  ``Ĝ_iᵀ Ĝ_{i+1}`` over the R rows, ``O(R Σ_i (in'_i in'_{i+1} + out_i
  out_{i+1}))`` flops, as much again as the diagonal factors;
* inverse, per inverse step: per layer two Cholesky
  factorisations, two symmetric eigendecompositions and a few products,
  ``O(Σ_i (out_i³ + in'_i³))`` like block-diagonal K-FAC, done in float64;
* solve, per step: eight matrix products per layer (two for each of ``Ξ`` and
  ``Ξᵀ``, four for ``Λ``) instead of block-diagonal K-FAC's two, ``O(Σ_i
  out_i in'_i (out_i + in'_i + out_{i+1} + in'_{i+1}))``;
* memory: per layer ``Ψ^S, Ψ^A, P, Q`` and ``1 − στᵀ``, and the EMA cross
  factors: about three times block-diagonal K-FAC's ``Σ_i (out_i² + in'_i²)``.

References:
    Martens & Grosse (2015), "Optimizing neural networks with Kronecker-factored
    approximate curvature": §3 (``F̃``), §4.3 (block-tridiagonal inverse and its
    directed graphical model), appendix B (inverse of a sum of two Kronecker
    products), §6.3 (factored Tikhonov damping).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .blocks import CurvatureBlock, LinearBlock
from .inverse import Damping, pi_heuristic

__all__ = [
    "ELEMENTWISE_MODULES",
    "ChainFactors",
    "ChainStatistics",
    "TridiagonalInverse",
    "cross_factors",
    "linear_chains",
]

#: Modules that act element-wise (no parameters, no mixing of units): a chain of
#: linear layers may have any number of these between consecutive layers.
ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Sigmoid,
    nn.Tanh,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Softsign,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.LogSigmoid,
    nn.Tanhshrink,
)


def _sequence_items(seq: nn.Sequential, prefix: str) -> list[tuple[str, nn.Module]]:
    """The modules a plain ``nn.Sequential`` applies, in order, nested ones inlined."""
    items = []
    for name, child in seq.named_children():
        qual = f"{prefix}{name}"
        if isinstance(child, nn.Sequential) and type(child).forward is (
            nn.Sequential.forward
        ):
            items += _sequence_items(child, f"{qual}.")
        else:
            items.append((qual, child))
    return items


def linear_chains(
    model: nn.Module, blocks: Mapping[str, CurvatureBlock]
) -> list[tuple[str, ...]]:
    """Chains of linear layers applied in sequence with element-wise maps between.

    A chain is a run of at least two ``nn.Linear`` modules that follow each other
    in a plain ``nn.Sequential`` (nested plain ``Sequential`` s are inlined), with
    only :data:`ELEMENTWISE_MODULES` between consecutive ones, each module used
    once in the model and owning a :class:`~kfac_spectra.kfac.blocks.LinearBlock`.

    Args:
        model: The network.
        blocks: The optimizer's curvature blocks by key (module qualified name).

    Returns:
        The chains, each a tuple of block keys in the order of application.
    """
    uses: dict[int, int] = {}
    for m in model.modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    chains: list[tuple[str, ...]] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential) or id(module) in seen:
            continue
        if type(module).forward is not nn.Sequential.forward:
            continue
        for sub in module.modules():
            if isinstance(sub, nn.Sequential):
                seen.add(id(sub))
        run: list[str] = []
        for qual, child in _sequence_items(module, f"{name}." if name else ""):
            block = blocks.get(qual)
            if (
                isinstance(child, nn.Linear)
                and type(block) is LinearBlock
                and uses[id(child)] == 1
            ):
                run.append(qual)
                continue
            if isinstance(child, ELEMENTWISE_MODULES):
                continue
            if len(run) >= 2:
                chains.append(tuple(run))
            run = []
        if len(run) >= 2:
            chains.append(tuple(run))
    return chains


def cross_factors(
    first: CurvatureBlock, second: CurvatureBlock
) -> dict[str, Tensor] | None:
    r"""Batch cross factors of two consecutive layers from their kept rows.

    .. math::
        A_{12} = \frac1R X_1^\top X_2, \qquad
        S_{12} = \frac1{C}\sum_{k} Ĝ_{1,k}^\top Ĝ_{2,k},

    with ``X`` the homogeneous input rows of all captured calls, ``Ĝ_{·,k}`` the
    output-gradient rows of probe (and call) ``k`` and ``C`` the number of root
    calls — the normalisation of the diagonal factors
    (:meth:`~kfac_spectra.kfac.blocks.CurvatureBlock.batch_factors`).

    Args:
        first: Block of layer ``i`` (``keep_rows`` on).
        second: Block of layer ``i + 1`` (``keep_rows`` on).

    Returns:
        ``{"A": (in'_1, in'_2), "S": (out_1, out_2)}``, or ``None`` when the rows
        do not pair up (different examples or probes: not a chain on this batch).
    """
    xs1, xs2, gs1, gs2 = first.rows_x, second.rows_x, first.rows_g, second.rows_g
    if not xs1 or len(xs1) != len(xs2) or not gs1 or len(gs1) != len(gs2):
        return None
    if any(a.shape[0] != b.shape[0] for a, b in zip(xs1, xs2, strict=True)) or any(
        a.shape[0] != b.shape[0] for a, b in zip(gs1, gs2, strict=True)
    ):
        return None
    rows = sum(x.shape[0] for x in xs1)
    a = sum(x1.T @ x2 for x1, x2 in zip(xs1, xs2, strict=True)) / rows
    s = sum(g1.T @ g2 for g1, g2 in zip(gs1, gs2, strict=True))
    return {"A": a, "S": s / max(first.calls_captured, 1)}


class ChainStatistics:
    """Moving averages of the cross factors of every consecutive pair of a chain.

    Args:
        chains: The chains (tuples of block keys).
        blocks: The blocks by key.

    Attributes:
        ema: ``{(key_i, key_{i+1}): {"A": A_{i,i+1}, "S": S_{i,i+1}}}``.
        broken: Chains whose rows did not pair up on some batch; they are dropped
            (their layers keep block-diagonal K-FAC) with a warning.
    """

    def __init__(
        self, chains: Sequence[tuple[str, ...]], blocks: Mapping[str, CurvatureBlock]
    ) -> None:
        self.chains = [tuple(c) for c in chains]
        self.blocks = blocks
        self.ema: dict[tuple[str, str], dict[str, Tensor]] = {}
        self.broken: list[tuple[str, ...]] = []

    def pairs(self) -> list[tuple[str, str]]:
        """Consecutive pairs of every chain."""
        return [(c[i], c[i + 1]) for c in self.chains for i in range(len(c) - 1)]

    def batch(self) -> dict[tuple[str, str], dict[str, Tensor]]:
        """The cross factors of the batch captured since the last factor step.

        Call before the blocks' ``batch_factors`` (which forgets the rows). A chain
        whose rows do not pair up is dropped for good, with a warning.
        """
        out = {}
        for chain in list(self.chains):
            found = {}
            for pair in zip(chain[:-1], chain[1:], strict=True):
                first, second = self.blocks[pair[0]], self.blocks[pair[1]]
                if not first.rows_x and not second.rows_x:
                    break  # nothing captured on this step
                stats = cross_factors(first, second)
                if stats is None:
                    self.chains.remove(chain)
                    self.broken.append(chain)
                    for p in zip(chain[:-1], chain[1:], strict=True):
                        self.ema.pop(p, None)
                    warnings.warn(
                        "K-FAC: block-tridiagonal structure dropped for the layers "
                        f"{', '.join(chain)} (their statistics do not pair up as a "
                        "chain); they fall back to block-diagonal",
                        stacklevel=4,
                    )
                    found = {}
                    break
                found[pair] = stats
            out.update(found)
        return out

    def update(
        self, batch: Mapping[tuple[str, str], Mapping[str, Tensor]], rho: float
    ) -> None:
        """``C ← ρ C + (1 − ρ) C_batch`` (the first batch initialises)."""
        for pair, stats in batch.items():
            old = self.ema.get(pair)
            if old is None:
                self.ema[pair] = {k: v.clone() for k, v in stats.items()}
            else:
                for k, v in stats.items():
                    old[k] = torch.lerp(v, old[k], rho)

    def state_dict(self) -> dict[str, object]:
        """The chains still in use and the averaged cross factors."""
        return {"chains": list(self.chains), "ema": dict(self.ema)}

    def load_state_dict(
        self, state: Mapping[str, object], device: torch.device
    ) -> None:
        """Restore :meth:`state_dict` output (tensors moved to ``device``)."""
        self.chains = [tuple(c) for c in state["chains"]]  # type: ignore[union-attr]
        ema = state["ema"]
        self.ema = {
            tuple(p): {k: v.to(device) for k, v in s.items()}
            for p, s in ema.items()  # type: ignore[union-attr]
        }


def _cholesky(mat: Tensor) -> Tensor | None:
    try:
        chol, info = torch.linalg.cholesky_ex(0.5 * (mat + mat.mT))
    except RuntimeError:
        return None
    if int(info) != 0 or not bool(torch.isfinite(chol).all()):
        return None
    return chol


def _whitened_eigh(k1: Tensor, k2: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(σ, P)`` with ``K_2 P = K_1 P diag(σ)`` and ``Pᵀ K_1 P = I`` (``K_1`` SPD)."""
    chol = _cholesky(k1)
    if chol is None:
        return None
    half = torch.linalg.solve_triangular(chol, k2, upper=False)
    whitened = torch.linalg.solve_triangular(chol, half.mT, upper=False)
    try:
        sigma, evec = torch.linalg.eigh(0.5 * (whitened + whitened.mT))
    except RuntimeError:
        return None
    p = torch.linalg.solve_triangular(chol.mT, evec, upper=True)
    return sigma, p


def _damped(mat: Tensor, gamma: Tensor) -> Tensor:
    return mat + gamma * torch.eye(mat.shape[0], dtype=mat.dtype, device=mat.device)


@dataclass
class TridiagonalInverse:
    r"""``F̂^{-1}`` of one chain in the ``Ξᵀ Λ Ξ`` form (see the module docstring).

    Attributes:
        psi_s: ``Ψ^S_i``, ``(out_i, out_{i+1})``, for ``i < ℓ``.
        psi_a: ``Ψ^A_i``, ``(in'_i, in'_{i+1})``, for ``i < ℓ``.
        p_s: ``P_i``, ``(out_i, out_i)``, per layer.
        p_a: ``Q_i``, ``(in'_i, in'_i)``, per layer.
        denom: ``1 − σ_i τ_iᵀ``, ``(out_i, in'_i)``, per layer (all ones for the
            last).
        gamma: The ``λ + η`` the inverse was built with.
    """

    psi_s: list[Tensor]
    psi_a: list[Tensor]
    p_s: list[Tensor]
    p_a: list[Tensor]
    denom: list[Tensor]
    gamma: float

    @staticmethod
    def build(
        diagonal: Sequence[tuple[Tensor, Tensor]],
        cross: Sequence[tuple[Tensor, Tensor]],
        damping: Damping,
    ) -> TridiagonalInverse | None:
        r"""Decompose the damped chain (in float64, results in the factors' dtype).

        Args:
            diagonal: ``(A_i, S_i)`` per layer, ``ℓ ≥ 1`` entries.
            cross: ``(A_{i,i+1}, S_{i,i+1})`` per consecutive pair, ``ℓ − 1``
                entries.
            damping: Factored damping (``γ = 0`` allowed: no damping; the
                factors must then be positive definite).

        Returns:
            The inverse, or ``None`` if a factor is non-finite or a damped
            diagonal factor is not positive definite.

        Raises:
            ValueError: If ``damping`` is not factored or the lengths disagree.
        """
        if not damping.factored:
            raise ValueError("the block-tridiagonal inverse needs factored damping")
        if len(cross) != len(diagonal) - 1:
            raise ValueError(
                f"{len(diagonal)} layers need {len(diagonal) - 1} cross factors, "
                f"got {len(cross)}"
            )
        dtype = diagonal[0][0].dtype
        f64 = torch.float64
        tensors = [t for pair in (*diagonal, *cross) for t in pair]
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            return None
        damped = []
        for a, s in diagonal:
            a, s = a.to(f64), s.to(f64)
            pi = pi_heuristic(
                torch.diagonal(a).sum(), a.shape[0], torch.diagonal(s).sum(), s.shape[0]
            )
            gs, ga = damping.split(pi)
            damped.append((_damped(a, ga), _damped(s, gs)))
        psi_s, psi_a, p_s, p_a, denom = [], [], [], [], []
        for i, (a, s) in enumerate(damped):
            if i + 1 < len(damped):
                a_next, s_next = damped[i + 1]
                a_cross, s_cross = (t.to(f64) for t in cross[i])
                chol_a, chol_s = _cholesky(a_next), _cholesky(s_next)
                if chol_a is None or chol_s is None:
                    return None
                # Ψ = C N^{-1} = (N^{-1} Cᵀ)ᵀ; Ψ N Ψᵀ = Ψ Cᵀ
                pa = torch.cholesky_solve(a_cross.mT, chol_a).mT
                ps = torch.cholesky_solve(s_cross.mT, chol_s).mT
                eig_a = _whitened_eigh(a, pa @ a_cross.mT)
                eig_s = _whitened_eigh(s, ps @ s_cross.mT)
                psi_a.append(pa.to(dtype))
                psi_s.append(ps.to(dtype))
            else:
                eig_a = _whitened_eigh(a, torch.zeros_like(a))
                eig_s = _whitened_eigh(s, torch.zeros_like(s))
            if eig_a is None or eig_s is None:
                return None
            # Schur complements of PSD joint factors: σ, τ ∈ [0, 1]
            tau, q = eig_a[0].clamp(0.0, 1.0), eig_a[1]
            sigma, p = eig_s[0].clamp(0.0, 1.0), eig_s[1]
            d = 1.0 - sigma[:, None] * tau[None, :]
            d = d.clamp_min(torch.finfo(f64).eps)
            p_s.append(p.to(dtype))
            p_a.append(q.to(dtype))
            denom.append(d.to(dtype))
        return TridiagonalInverse(psi_s, psi_a, p_s, p_a, denom, damping.gamma)

    def apply(self, grads: Sequence[Tensor]) -> list[Tensor]:
        r"""``F̂^{-1} v`` for the ``(out_i, in'_i)`` gradient matrices ``V_i``.

        Args:
            grads: ``V_i`` per layer of the chain, in chain order.

        Returns:
            ``U_i`` per layer, same shapes.
        """
        n = len(grads)
        ys = []
        for i in range(n):
            z = grads[i]
            if i + 1 < n:
                z = z - self.psi_s[i] @ grads[i + 1] @ self.psi_a[i].mT
            p, q = self.p_s[i], self.p_a[i]
            ys.append(p @ ((p.mT @ z @ q) / self.denom[i]) @ q.mT)
        out = [ys[0]]
        for i in range(1, n):
            out.append(ys[i] - self.psi_s[i - 1].mT @ ys[i - 1] @ self.psi_a[i - 1])
        return out


@dataclass
class ChainFactors:
    """The factors of one chain at its last inverse update, and their inverse.

    The inverse depends on λ through the damped diagonal factors; it is built with
    the ``λ + η`` of the inverse update (``gamma``) and used until the next one, as
    Martens & Grosse (2015, §6.6 and §8) recompute the inverse with the current
    damping every T₃ iterations. (Block-diagonal K-FAC applies the current λ at
    every solve, which costs it nothing; here a change of λ would cost a new
    decomposition.)

    Attributes:
        keys: Block keys of the chain, in order.
        diagonal: ``(A_i, S_i)`` per layer.
        cross: ``(A_{i,i+1}, S_{i,i+1})`` per consecutive pair.
        gamma: ``λ + η`` of the factored damping.
    """

    keys: tuple[str, ...]
    diagonal: list[tuple[Tensor, Tensor]]
    cross: list[tuple[Tensor, Tensor]]
    gamma: float

    def __post_init__(self) -> None:
        self._inverse: TridiagonalInverse | None = None
        self._built = False

    def inverse(self) -> TridiagonalInverse | None:
        """The inverse (built on first use; ``None`` if it cannot be built)."""
        if not self._built:
            damping = Damping(True, self.gamma)
            self._inverse = TridiagonalInverse.build(self.diagonal, self.cross, damping)
            self._built = True
        return self._inverse
