r"""Curvature block for ``nn.Linear``, including weight sharing over extra dims.

For an input ``x`` of shape ``(N, *shared, in)`` and output gradients ``ĝ`` of shape
``(N, *shared, out)``:

* K-FAC-expand: every shared position is a row,
  ``A = mean_{n,t} ā_{n,t} ā_{n,t}ᵀ``, ``S = Σ_{n,t} ĝ_{n,t} ĝ_{n,t}ᵀ``;
* K-FAC-reduce: ``ã_n = mean_t ā_{n,t}`` and ``g̃_n = Σ_t ĝ_{n,t}``,
  ``A = mean_n ã_n ã_nᵀ``, ``S = Σ_n g̃_n g̃_nᵀ``.

Both are exact for deep linear networks in their respective setting (expand: loss
terms per shared position; reduce: shared positions aggregated before the loss).

References:
    Martens & Grosse (2015), eqn (1); Eschenhagen et al. (2023), K-FAC-expand and
    K-FAC-reduce.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..enums import KFACApprox
from .base import CurvatureBlock, Record, gram, homogeneous_gram, select_rows

__all__ = ["DenseBlock", "LinearBlock"]


def linear_rows(x: Tensor, approx: KFACApprox, dtype: torch.dtype) -> Tensor:
    """Input rows of a (weight-shared) linear map, without the bias column.

    K-FAC-expand treats every leading position as a row; K-FAC-reduce averages
    over the shared positions first, one row per example (Eschenhagen et al. 2023, §3).
    """
    x = x.to(dtype)
    if x.ndim == 1:
        x = x[None]
    if approx == KFACApprox.REDUCE and x.ndim > 2:
        x = x.reshape(x.shape[0], -1, x.shape[-1]).mean(dim=1)
    return x.reshape(-1, x.shape[-1])


class DenseBlock(CurvatureBlock):
    """Shared machinery for blocks whose factors come from dense row matrices.

    Subclasses implement :meth:`input_features` and :meth:`grad_rows`.
    """

    supports_cg = True
    split_views = True

    @property
    def has_bias(self) -> bool:
        """Whether a bias is appended as the homogeneous column."""
        return getattr(self.module, "bias", None) is not None

    def params(self) -> list[nn.Parameter]:
        """Weight, then bias if present."""
        ps = [self.module.weight]
        if self.has_bias:
            ps.append(self.module.bias)
        return ps

    def to_matrix(self, tensors: list[Tensor]) -> Tensor:
        """``[W.reshape(out, -1) | b]`` (the bias is there iff it is in ``tensors``)."""
        w = tensors[0]
        mat = w.reshape(w.shape[0], -1)
        if len(tensors) > 1:
            mat = torch.cat([mat, tensors[1].unsqueeze(1)], dim=1)
        return mat

    def split_update(self, mat: Tensor) -> list[Tensor]:
        """Split ``(out, in')`` back into weight- and bias-shaped tensors (views)."""
        shape = self.module.weight.shape
        if self.has_bias:
            return [mat[:, :-1].view(shape), mat[:, -1]]
        return [mat.view(shape)]

    def input_features(self, x: Tensor) -> Tensor:
        """Rows ``a`` without the homogeneous coordinate, stat dtype."""
        raise NotImplementedError

    def input_rows(self, x: Tensor) -> Tensor:
        """Rows ``ā`` (with the homogeneous 1 when there is a bias), stat dtype."""
        return self._bias_column(self.input_features(x), self.has_bias)

    def grad_rows(self, g: Tensor) -> Tensor:
        """Rows ``ĝ`` matching :meth:`input_rows`, stat dtype."""
        raise NotImplementedError

    def input_gram(self, x: Tensor) -> tuple[Tensor, int]:
        """``(Σ_r ā_r ā_rᵀ, R)`` of the input rows (a block may skip forming them)."""
        feats = self.input_features(x)
        return homogeneous_gram(feats, self.has_bias), feats.shape[0]

    def grad_gram(self, g: Tensor) -> Tensor:
        """``Σ_r ĝ_r ĝ_rᵀ`` of the output-gradient rows."""
        return gram(self.grad_rows(g))

    def forward_record(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        output: Any,
        call: int,
        rows: Tensor | None = None,
    ) -> tuple[Record | None, Any]:
        """Form A's batch sum from the input rows; ask for the output's gradient."""
        if not isinstance(output, Tensor) or not output.requires_grad:
            return None, None
        x = select_rows(args[0].detach(), rows)
        if self.keep_rows:
            feats = self.input_features(x)
            self._add_a(homogeneous_gram(feats, self.has_bias), feats.shape[0])
            self.rows_x.append(self._bias_column(feats, self.has_bias))
        else:
            self._add_a(*self.input_gram(x))
        return Record(self, None, [output], call=call, rows=rows), None

    def accumulate(self, record: Record, grad_scale: float = 1.0) -> None:
        """Add ``Σ_probes ĝᵀĝ`` to S's batch sum."""
        for grads in record.grads:
            g = grads[0]
            if g is None:
                continue
            g = select_rows(g.detach(), record.rows)
            if not self.keep_rows and grad_scale == 1.0:
                self._add_s(self.grad_gram(g), record.call)
                continue
            rows = self.grad_rows(g)
            if grad_scale != 1.0:
                rows = rows * grad_scale
            self._add_s(gram(rows), record.call)
            if self.keep_rows:
                self.rows_g.append(rows)


class LinearBlock(DenseBlock):
    """K-FAC block of an ``nn.Linear`` (inputs ``(..., in)``)."""

    def __init__(self, name: str, module: nn.Linear, approx: KFACApprox) -> None:
        super().__init__(name, module, approx)

    def input_features(self, x: Tensor) -> Tensor:
        """Expand: all leading dims are rows; reduce: mean over the shared dims."""
        return linear_rows(x, self.approx, self.stat_dtype)

    def grad_rows(self, g: Tensor) -> Tensor:
        """Expand: all leading dims are rows; reduce: sum over the shared dims."""
        g = g.to(self.stat_dtype)
        if g.ndim == 1:
            g = g[None]
        if self.approx == KFACApprox.REDUCE and g.ndim > 2:
            g = g.reshape(g.shape[0], -1, g.shape[-1]).sum(dim=1)
        return g.reshape(-1, g.shape[-1])
