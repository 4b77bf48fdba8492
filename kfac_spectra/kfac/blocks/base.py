r"""The curvature-block interface shared by all layer types.

A block owns the Kronecker factors of one weight (plus its bias). Conventions (they
hold for every block; see the package docstring for the reduction scaling):

* The weight is viewed as a matrix ``W̄`` of shape ``(out, in')`` where
  ``in' = in + 1`` when there is a bias, appended as the last column (homogeneous
  coordinate), else ``in' = in``.
* The block is ``S ⊗ A`` acting on the row-major ``vec(W̄) = W̄.reshape(-1)``;
  S is ``(out, out)`` from output gradients, A is ``(in', in')`` from inputs (or a
  1-D tensor holding a diagonal A).
* ``A = (1/R) Σ_r ā_r ā_rᵀ`` is a mean over the R rows (examples × shared
  positions) and ``S = Σ_probes Σ_r ĝ_r ĝ_rᵀ`` is a sum, where the probes carry the
  loss scale (see :mod:`kfac_spectra.kfac.fisher`), so that ``S ⊗ A`` approximates
  the layer's diagonal block of the Fisher/GGN of the loss exactly as reduced.

Capture flow: a forward hook calls :meth:`CurvatureBlock.forward_record`, which
stores the processed inputs and returns the output tensors whose gradients are
needed; once those gradients are known (probe back-propagation, or tensor hooks for
the empirical Fisher), :meth:`CurvatureBlock.accumulate` adds them to the batch sums.

Statistics from a subset of the batch (Martens & Grosse 2015, arXiv §8): when the
record's ``rows`` holds example indices, both factors use only those examples — the
inputs' and the output gradients' rows along the batch dimension
(:meth:`CurvatureBlock.batch_size`); the probes carry the subset's loss scale.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..enums import KFACApprox

__all__ = [
    "CurvatureBlock",
    "Record",
    "gram",
    "homogeneous_gram",
    "select_rows",
    "stat_dtype_for",
]


def stat_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """Statistics dtype: float32 or better (float64 stays float64)."""
    if dtype in (torch.float32, torch.float64):  # the usual case, no dispatcher call
        return dtype
    return torch.promote_types(dtype, torch.float32)


# Strip widths of :func:`gram` (measured on a 2-core AMD EPYC with MKL, one thread:
# 20-30% faster than one product from width 160 up, slower below)
_STRIP_MIN_WIDTH = 160
_STRIP_TALL, _STRIP_WIDE = 64, 128


def _strips(d: int, tall: bool) -> list[int]:
    width = _STRIP_TALL if tall else _STRIP_WIDE
    bounds = list(range(0, d, width)) + [d]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < width // 2:
        bounds.pop(-2)  # a short last strip joins the one before it
    return bounds


def gram(rows: Tensor) -> Tensor:
    r"""``XᵀX`` for the rows ``X`` of shape ``(R, d)``, computed once per pair.

    The result is symmetric, so on the CPU, for ``d ≥ 160``, only the block upper
    triangle is multiplied — strip ``i`` of columns times the columns from strip
    ``i`` on, ``X_iᵀ X_{i:}`` — and mirrored: with k strips that is
    ``(k + 1) / 2k`` of the product's flops (in practice 20-30% less time than
    one ``X.T @ X``). Elsewhere (small d, other devices) it is the plain product.

    Args:
        rows: ``X``, shape ``(R, d)``; any strides (``X.T`` of a contiguous
            ``(d, R)`` matrix is fine).

    Returns:
        Shape ``(d, d)``, dtype and device of ``rows``.
    """
    d = rows.shape[1]
    if d < _STRIP_MIN_WIDTH or rows.device.type != "cpu":
        return rows.T @ rows
    bounds = _strips(d, tall=rows.shape[0] >= 4 * d)
    if len(bounds) == 2:
        return rows.T @ rows
    out = rows.new_empty(d, d)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        torch.mm(rows[:, lo:hi].T, rows[:, lo:], out=out[lo:hi, lo:])
    for lo, hi in zip(bounds[:-2], bounds[1:-1], strict=True):
        out[hi:, lo:hi] = out[lo:hi, hi:].T
    return out


def homogeneous_gram(rows: Tensor, bias: bool) -> Tensor:
    r"""``Σ_r ā_r ā_rᵀ`` for the rows ``ā_r = [a_r, 1]`` (or ``a_r`` without bias).

    The column of ones is never formed:

    .. math::
        \sum_r ā_r ā_r^\top = \begin{bmatrix} X^\top X & X^\top 1 \\
        1^\top X & R \end{bmatrix},

    which saves a copy of the (often large, e.g. convolution patch) row matrix.

    Args:
        rows: ``X``, shape ``(R, d)``.
        bias: Whether to append the homogeneous coordinate.

    Returns:
        Shape ``(d + 1, d + 1)`` with ``bias``, else ``(d, d)``; dtype of ``rows``.
    """
    if not bias:
        return gram(rows)
    d = rows.shape[1]
    out = rows.new_empty(d + 1, d + 1)
    out[:d, :d] = gram(rows)
    col = rows.sum(dim=0)
    out[:d, d] = col
    out[d, :d] = col
    out[d, d] = rows.shape[0]
    return out


def select_rows(t: Tensor, rows: Tensor | None, dim: int = 0) -> Tensor:
    """The examples ``rows`` of ``t`` along its batch dimension ``dim`` (all if None).

    Args:
        t: A batched tensor.
        rows: Sorted example indices (1-D, int64, on ``t``'s device) or ``None``.
        dim: The batch dimension of ``t``.

    Returns:
        ``t.index_select(dim, rows)``, or ``t`` itself when ``rows`` is ``None``.
    """
    return t if rows is None else t.index_select(dim, rows)


@dataclass
class Record:
    """What one forward call of a module left for the factor computation.

    Attributes:
        block: The block that made it.
        data: Processed, detached inputs (block specific).
        outputs: Output tensors (in the autograd graph) whose gradients are needed.
        call: Index of the root forward call this record belongs to.
        tag: Block-specific marker (e.g. which use of a tied weight).
        grads: Per probe, the gradients of ``outputs`` (filled in later).
        rows: Indices of the examples the statistics use (``None``: all of them);
            ``accumulate`` takes these rows of each output gradient.
    """

    block: CurvatureBlock
    data: Any
    outputs: list[Tensor]
    call: int = 0
    tag: str = ""
    grads: list[list[Tensor | None]] = field(default_factory=list)
    rows: Tensor | None = None


class CurvatureBlock(ABC):
    """One Kronecker-factored curvature block.

    Args:
        name: Qualified name of the module (key in factor dictionaries).
        module: The module.
        approx: K-FAC-expand or K-FAC-reduce for weight-sharing dimensions.
    """

    #: Whether factor A is stored as its diagonal (1-D tensor).
    diagonal_a: bool = False
    #: Whether CG-FAC can run matrix-free on this block's stored rows.
    supports_cg: bool = False
    #: Whether :meth:`split_update` returns views of its matrix, one per parameter,
    #: such that writing parameter-shaped tensors into them forms
    #: :meth:`to_matrix` of those tensors (the optimizer's workspace relies on it).
    split_views: bool = False
    #: Statistics the optimizer reads on every step, not only when it decomposes
    #: the factors (kept global on every factor update under a process group).
    every_step_stats: frozenset[str] = frozenset()

    def __init__(self, name: str, module: nn.Module, approx: KFACApprox) -> None:
        self.name = name
        self.module = module
        self.approx = approx
        self.keep_rows = False
        self.reset_batch()

    # ----------------------------------------------------------------- params
    @abstractmethod
    def params(self) -> list[nn.Parameter]:
        """The parameters this block preconditions, in a fixed order."""

    @property
    def stat_dtype(self) -> torch.dtype:
        """Statistics dtype (float32 or better)."""
        return stat_dtype_for(self.params()[0].dtype)

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.params()[0].device

    @abstractmethod
    def to_matrix(self, tensors: list[Tensor]) -> Tensor:
        """Param-shaped tensors (as :meth:`params`) to the ``(out, in')`` matrix."""

    def param_grads(self) -> list[Tensor]:
        """Dense gradients of :meth:`params` (zeros where ``None``), stat dtype."""
        out = []
        for p in self.params():
            g = p.grad
            if g is None:
                g = torch.zeros_like(p)
            elif g.is_sparse:
                g = g.to_dense()
            out.append(g.detach().to(self.stat_dtype))
        return out

    def grad_matrix(self) -> Tensor:
        """The gradient as the ``(out, in')`` matrix ``[∇W | ∇b]`` (stat dtype)."""
        return self.to_matrix(self.param_grads())

    @abstractmethod
    def split_update(self, mat: Tensor) -> list[Tensor]:
        """Inverse of :meth:`grad_matrix`: param-shaped tensors, as :meth:`params`."""

    # ---------------------------------------------------------------- capture
    def reset_batch(self) -> None:
        """Forget the statistics accumulated since the last :meth:`batch_factors`."""
        self._a_sum: Tensor | None = None
        self._s_sum: Tensor | None = None
        self._rows = 0
        self._calls: set[int] = set()
        self.rows_x: list[Tensor] = []
        self.rows_g: list[Tensor] = []

    def batch_size(self, module: nn.Module, args: tuple[Any, ...]) -> int:
        """Number of examples in a call's input (1 for an unbatched input).

        The examples lie along dim 0 of the input and of every recorded output
        (blocks with another layout override this and select accordingly).

        Args:
            module: The module that ran.
            args: Its positional inputs.

        Returns:
            The size of the batch dimension.
        """
        del module
        x = args[0]
        return 1 if x.ndim <= 1 else int(x.shape[0])

    @abstractmethod
    def forward_record(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        output: Any,
        call: int,
        rows: Tensor | None = None,
    ) -> tuple[Record | None, Any]:
        """Process one forward call.

        Args:
            module: The module that ran (a block may own several, e.g. tied weights).
            args: Its positional inputs.
            output: Its output.
            call: Index of the root forward call.
            rows: Example indices whose statistics are kept (``None``: all); the
                returned record carries them for :meth:`accumulate`.

        Returns:
            The record (``None`` to skip this call) and a replacement output
            (``None`` keeps the module's own output).
        """

    @abstractmethod
    def accumulate(self, record: Record, grad_scale: float = 1.0) -> None:
        """Add ``record.grads`` (times ``grad_scale``) to the batch statistics."""

    def _add_a(self, a: Tensor, rows: int) -> None:
        self._a_sum = a if self._a_sum is None else self._a_sum + a
        self._rows += rows

    def _add_s(self, s: Tensor, call: int) -> None:
        self._s_sum = s if self._s_sum is None else self._s_sum + s
        self._calls.add(call)

    @property
    def calls_captured(self) -> int:
        """Root forward calls with output gradients in the current batch sums."""
        return len(self._calls)

    def batch_factors(self) -> dict[str, Tensor] | None:
        """The factors of the batch captured since the last call, then reset.

        ``A`` is the mean over rows; ``S`` the probe sum, averaged over root forward
        calls (several calls before one step are micro-batches of one batch).

        Returns:
            ``{"A": A, "S": S, ...}`` or ``None`` if nothing complete was captured.
        """
        if self._a_sum is None or self._s_sum is None or self._rows == 0:
            self.reset_batch()
            return None
        calls = len(self._calls)
        out = {
            "A": self._a_sum / self._rows,
            # the sum is a fresh tensor of this block's own: no copy for one call
            "S": self._s_sum / calls if calls > 1 else self._s_sum,
        }
        self.reset_batch()
        return out

    @staticmethod
    def kronecker(stats: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The Kronecker pair ``(A, S)`` from (moving averages of) batch statistics."""
        return stats["A"], stats["S"]

    # ------------------------------------------------------------- utilities
    def _bias_column(self, rows: Tensor, has_bias: bool) -> Tensor:
        if not has_bias:
            return rows
        return torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
