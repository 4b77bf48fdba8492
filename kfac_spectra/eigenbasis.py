r"""Kronecker eigenbases of K-FAC blocks, in the layout of the stored weight.

For a block whose weight is stored as an (r, c) matrix :math:`\bar W = [W | b]`
(see :mod:`kfac_spectra.layer_capture`), K-FAC approximates the curvature on the
row-major :math:`\mathrm{vec}(\bar W)` by :math:`R \otimes K` with a row factor R
(r x r) and a column factor K (c x c). With :math:`R = U \Lambda U^\top` and
:math:`K = V M V^\top`, the directions

.. math:: v_{ij} = u_i \otimes v_j,\qquad (R \otimes K) v_{ij} = \lambda_i \mu_j v_{ij}

form an orthonormal eigenbasis. For ``nn.Linear``/conv weights (out, in') the row
factor is K-FAC's S and the column factor its A; for an ``nn.Embedding`` (and a
weight tied to one) stored as (V, D), the row factor is the one-hot input factor A
and the column factor the output-gradient factor S (Zhang et al. 2019, appendix A.1: the
factors swap places).

References:
    Martens and Grosse 2015, section 3; George et al. 2018 (EKFAC: the Kronecker
    eigenbasis); Zhang et al. 2019, appendix A.1 and E.2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from kfac_spectra.layer_capture import Block

__all__ = [
    "KroneckerBasis",
    "basis_from_factors",
    "bases_from_eigendecompositions",
    "bases_from_state",
    "bases_to_state",
    "kronecker_bases",
]


@dataclass(frozen=True)
class KroneckerBasis:
    """Eigendecomposition of one block's Kronecker factors (float64, descending).

    Attributes:
        row_values: (r,) eigenvalues of the row factor, descending.
        row_vectors: (r, r) orthonormal eigenvectors (columns).
        col_values: (c,) eigenvalues of the column factor, descending.
        col_vectors: (c, c) orthonormal eigenvectors (columns).
    """

    row_values: Tensor
    row_vectors: Tensor
    col_values: Tensor
    col_vectors: Tensor

    def __post_init__(self) -> None:
        r, c = self.row_values.shape[0], self.col_values.shape[0]
        if self.row_vectors.shape != (r, r) or self.col_vectors.shape != (c, c):
            raise ValueError(
                f"basis shapes disagree: values ({r},), ({c},), vectors "
                f"{tuple(self.row_vectors.shape)}, {tuple(self.col_vectors.shape)}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """(r, c)."""
        return self.row_values.shape[0], self.col_values.shape[0]

    def kronecker_eigenvalues(self) -> Tensor:
        """(r, c) products :math:`\\lambda_i \\mu_j` (K-FAC curvature along v_ij)."""
        return torch.outer(self.row_values, self.col_values)

    def direction(self, i: int, j: int) -> Tensor:
        """The (r, c) matrix of direction :math:`v_{ij} = u_i \\otimes v_j`."""
        return torch.outer(self.row_vectors[:, i], self.col_vectors[:, j])


#: Smallest factor decomposed by NumPy's LAPACK rather than PyTorch's (CPU only).
NUMPY_EIGH_MIN = 128


def _eigh_descending(factor: Tensor) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition in float64, eigenvalues descending; 1-D = diagonal.

    From n = :data:`NUMPY_EIGH_MIN` on, and on the CPU, LAPACK's ``dsyevd`` is
    called through NumPy: on one thread of this project's 2-core AMD machine its
    OpenBLAS build took 10-30% less time than PyTorch's MKL build for n =
    160-1025 (the factors that dominate a collection), but up to 0.08 ms more
    for n <= 97. Both run the same divide-and-conquer algorithm in float64. The
    decomposition of :math:`-F` has F's eigenvalues in descending order and its
    eigenvectors already in that order, so no reordering copy is made.

    Raises:
        ValueError: If the factor is neither square nor 1-D, or not finite.
    """
    factor = factor.detach().to(torch.float64)
    if factor.dim() == 1:
        values, order = torch.sort(factor, descending=True)
        eye = torch.eye(factor.shape[0], dtype=torch.float64, device=factor.device)
        return values, eye[:, order]
    if factor.dim() != 2 or factor.shape[0] != factor.shape[1]:
        raise ValueError(f"factor must be square or 1-D, got {tuple(factor.shape)}")
    if not bool(torch.isfinite(factor).all()):
        raise ValueError("factor: not finite")
    negated = -0.5 * (factor + factor.T)
    if factor.device.type == "cpu" and factor.shape[0] >= NUMPY_EIGH_MIN:
        values, vectors = np.linalg.eigh(negated.numpy())
        return torch.from_numpy(values).neg_(), torch.from_numpy(vectors)
    values, vectors = torch.linalg.eigh(negated)
    return values.neg_(), vectors


def basis_from_factors(row_factor: Tensor, col_factor: Tensor) -> KroneckerBasis:
    """Eigenbasis of :math:`R \\otimes K` from its factors.

    Args:
        row_factor: (r, r) symmetric PSD, or (r,) for a diagonal factor.
        col_factor: (c, c) symmetric PSD, or (c,) for a diagonal factor.

    Returns:
        The basis, float64, eigenvalues in descending order.

    Raises:
        ValueError: If a factor is neither square nor 1-D, or not finite.
    """
    rv, ru = _eigh_descending(row_factor)
    cv, cu = _eigh_descending(col_factor)
    return KroneckerBasis(rv, ru, cv, cu)


def kronecker_bases(
    factors: Mapping[str, tuple[Tensor, Tensor]], blocks: Mapping[str, Block]
) -> dict[str, KroneckerBasis]:
    """Bases from K-FAC factors keyed like ``kfac_spectra.compute_factors``.

    Args:
        factors: ``name -> (A, S)`` with, for a Linear/conv weight (out, in'), the
            block :math:`S \\otimes A` on the row-major vec, and for an embedding
            (or tied) weight stored (V, D), A over the V side and S over the D side.
        blocks: The model's blocks (:func:`kfac_spectra.layer_capture.find_blocks`).

    Returns:
        ``name -> KroneckerBasis`` in the stored layout of each block.

    Raises:
        ValueError: If a name is not a block, or factor sizes do not fit it.
    """
    bases = {}
    for name, (a, s) in factors.items():
        if name not in blocks:
            raise ValueError(f"factors: {name!r} is not a block of the model")
        block = blocks[name]
        embedding_like = any(isinstance(m, nn.Embedding) for m in block.modules)
        basis = basis_from_factors(a, s) if embedding_like else basis_from_factors(s, a)
        if basis.shape != block.shape:
            raise ValueError(
                f"factors: {name!r} has factor sizes {basis.shape} but the block "
                f"is {block.shape}"
            )
        bases[name] = basis
    return bases


def _descending(values: Tensor, vectors: Tensor | None) -> tuple[Tensor, Tensor]:
    values = values.detach().to(torch.float64)
    order = torch.argsort(values, descending=True)
    if vectors is None:  # diagonal factor: eigenvectors are coordinate vectors
        vectors = torch.eye(values.shape[0], dtype=torch.float64, device=values.device)
    return values[order], vectors.detach().to(torch.float64)[:, order]


def bases_from_eigendecompositions(
    eigendecompositions: Mapping[str, tuple[Tensor, Tensor, Tensor, Tensor | None]],
    blocks: Mapping[str, Block],
) -> dict[str, KroneckerBasis]:
    """Bases from ``KFAC.eigenbases()``-style decompositions.

    Args:
        eigendecompositions: ``name -> (eigvals_S, U_S, eigvals_A, U_A)`` in any
            order of eigenvalues; ``U_A = None`` means A is diagonal and
            ``eigvals_A`` is that diagonal.
        blocks: The model's blocks.

    Returns:
        ``name -> KroneckerBasis`` in the stored layout, eigenvalues descending.

    Raises:
        ValueError: If a name is not a block, or sizes do not fit it.
    """
    bases = {}
    for name, (eval_s, evec_s, eval_a, evec_a) in eigendecompositions.items():
        if name not in blocks:
            raise ValueError(f"eigendecompositions: {name!r} is not a block")
        s_side = _descending(eval_s, evec_s)
        a_side = _descending(eval_a, evec_a)
        block = blocks[name]
        if any(isinstance(m, nn.Embedding) for m in block.modules):
            basis = KroneckerBasis(*a_side, *s_side)
        else:
            basis = KroneckerBasis(*s_side, *a_side)
        if basis.shape != block.shape:
            raise ValueError(
                f"eigendecompositions: {name!r} has sizes {basis.shape} but the "
                f"block is {block.shape}"
            )
        bases[name] = basis
    return bases


_FIELDS = ("row_values", "row_vectors", "col_values", "col_vectors")


def bases_to_state(bases: Mapping[str, KroneckerBasis]) -> dict[str, dict[str, Tensor]]:
    """Plain nested dict of tensors (for ``torch.save`` / ``weights_only`` loads)."""
    return {
        name: {f: getattr(b, f).detach().cpu() for f in _FIELDS}
        for name, b in bases.items()
    }


def bases_from_state(
    state: Mapping[str, Mapping[str, Tensor]],
) -> dict[str, KroneckerBasis]:
    """Inverse of :func:`bases_to_state`.

    Raises:
        ValueError: If an entry lacks a field or the shapes disagree.
    """
    out = {}
    for name, entry in state.items():
        missing = [f for f in _FIELDS if f not in entry]
        if missing:
            raise ValueError(f"state: basis {name!r} lacks {missing}")
        out[name] = KroneckerBasis(*(entry[f] for f in _FIELDS))
    return out
