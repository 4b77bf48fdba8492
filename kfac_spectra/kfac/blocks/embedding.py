r"""Curvature blocks for ``nn.Embedding`` and for a weight tied to a pre-softmax layer.

**Embedding.** ``e = W[i]`` with ``W`` of shape ``(V, D)`` is the linear layer
``e = Wᵀ onehot(i)``: in the ``(out, in) = (D, V)`` convention its weight is ``Wᵀ``,
its input factor is ``A = mean_r onehot(i_r) onehot(i_r)ᵀ = diag(frequencies)``
(exactly diagonal, stored as a 1-D tensor) and its output factor ``S = Σ_r ĝ_r ĝ_rᵀ``
is dense ``(D, D)``. On the row-major vec of the *stored* ``(V, D)`` weight the block
is therefore ``A ⊗ S``.

**Tied weight** (Zhang et al. 2019, appendix A.1, eqn 16). The pre-softmax layer computes
``s = W h`` with the same ``W``; its own K-FAC block on the stored weight is
``S_h ⊗ A_h`` with ``S_h`` (V×V, from the logit gradients; only its diagonal is
kept, for large vocabularies) and ``A_h`` (D×D, from the head inputs) — the factors
are swapped relative to the embedding's. The two uses are combined factor-wise, as
if they were extra examples: the V-side factor from ``A_e`` and ``diag(S_h)``, the
D-side factor from ``S_e`` and ``A_h``. Because a Kronecker pair is only defined up
to a scalar moved between its factors, each pair is first balanced (equal mean
eigenvalue on both sides), the balanced factors are summed, and the product is
rescaled so that its trace equals ``tr(A_e)tr(S_e) + tr(S_h)tr(A_h)`` — the trace of
the sum of the two blocks. With one use absent the result is that use's block.
A bias of the head is preconditioned with ``diag(S_h)``.

The key of a tied block is the embedding's qualified name.

Embeddings always use the expand flavour (the average of one-hot rows is not
diagonal).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..enums import KFACApprox
from .base import CurvatureBlock, Record, select_rows
from .linear import linear_rows

__all__ = ["EmbeddingBlock", "TiedEmbeddingBlock", "combine_tied_factors"]


def _onehot_counts(idx: Tensor, num: int, dtype: torch.dtype) -> Tensor:
    return torch.bincount(idx.reshape(-1), minlength=num).to(dtype)


class EmbeddingBlock(CurvatureBlock):
    """K-FAC block of an ``nn.Embedding`` with a diagonal input factor."""

    diagonal_a = True
    split_views = True

    def __init__(self, name: str, module: nn.Embedding, approx: KFACApprox) -> None:
        super().__init__(name, module, approx)

    def params(self) -> list[nn.Parameter]:
        """The embedding matrix."""
        return [self.module.weight]

    def to_matrix(self, tensors: list[Tensor]) -> Tensor:
        """``Wᵀ``, shape ``(D, V)``."""
        return tensors[0].T

    def split_update(self, mat: Tensor) -> list[Tensor]:
        """Transpose ``(D, V)`` back to the stored ``(V, D)``."""
        return [mat.T]

    def batch_size(self, module: nn.Module, args: tuple[Any, ...]) -> int:
        """Dim 0 of the index tensor (1 for a single index)."""
        idx = args[0]
        return 1 if idx.ndim == 0 else int(idx.shape[0])

    def forward_record(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        output: Any,
        call: int,
        rows: Tensor | None = None,
    ) -> tuple[Record | None, Any]:
        """Count indices (A is diagonal) and ask for the output gradient."""
        if not isinstance(output, Tensor) or not output.requires_grad:
            return None, None
        idx = select_rows(args[0].detach(), rows)
        self._add_a(
            _onehot_counts(idx, self.module.num_embeddings, self.stat_dtype),
            idx.numel(),
        )
        return Record(self, None, [output], call=call, rows=rows), None

    def accumulate(self, record: Record, grad_scale: float = 1.0) -> None:
        """Add ``Σ ĝ ĝᵀ`` over rows to S."""
        for grads in record.grads:
            if grads[0] is None:
                continue
            g = select_rows(grads[0].detach(), record.rows).to(self.stat_dtype)
            g = g.reshape(-1, g.shape[-1]) * grad_scale
            self._add_s(g.T @ g, record.call)


def combine_tied_factors(
    a_emb: Tensor | None,
    s_emb: Tensor | None,
    s_head_diag: Tensor | None,
    a_head: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Combine the two uses of a tied weight into one Kronecker pair.

    Args:
        a_emb: Embedding input factor (diagonal), shape ``(V,)``, or ``None``.
        s_emb: Embedding output factor, ``(D, D)``, or ``None``.
        s_head_diag: Diagonal of the head's output factor, ``(V,)``, or ``None``.
        a_head: Head input factor without bias column, ``(D, D)``, or ``None``.

    Returns:
        ``(A, S)``: the V-side diagonal ``(V,)`` and the D-side ``(D, D)`` factor.

    Raises:
        ValueError: If neither use has a non-zero pair.
    """
    pairs = []
    for p, q in ((a_emb, s_emb), (s_head_diag, a_head)):
        if p is None or q is None:
            continue
        tp, tq = p.sum(), torch.diagonal(q).sum()
        if not (tp > 0 and tq > 0):
            continue
        pairs.append((p, q, tp, tq))
    if not pairs:
        raise ValueError("tied weight: no use has non-zero factors")
    v, d = pairs[0][0].shape[0], pairs[0][1].shape[0]
    x = torch.zeros_like(pairs[0][0])
    y = torch.zeros_like(pairs[0][1])
    total = 0.0
    for p, q, tp, tq in pairs:
        s = torch.sqrt((tq / d) / (tp / v))
        x = x + p * s
        y = y + q / s
        total = total + tp * tq
    kappa = total / (x.sum() * torch.diagonal(y).sum())
    root = torch.sqrt(kappa)
    return x * root, y * root


class TiedEmbeddingBlock(CurvatureBlock):
    """One block for a weight shared by an ``nn.Embedding`` and an ``nn.Linear`` head.

    Args:
        name: The embedding's qualified name (the block key).
        module: The embedding.
        head_name: The head's qualified name.
        head: The head ``nn.Linear`` with ``head.weight is module.weight``.
        approx: Expand or reduce for the head's shared dims.
    """

    diagonal_a = True
    # the head's bias is preconditioned by its diagonal S on every step
    every_step_stats = frozenset({"Sh"})

    def __init__(
        self,
        name: str,
        module: nn.Embedding,
        head_name: str,
        head: nn.Linear,
        approx: KFACApprox,
    ) -> None:
        self.head = head
        self.head_name = head_name
        super().__init__(name, module, approx)

    def reset_batch(self) -> None:
        """Forget the per-use batch sums."""
        super().reset_batch()
        self._sums: dict[str, Tensor] = {}
        self._rows_by_use = {"emb": 0, "head": 0}
        self._calls_by_use: dict[str, set[int]] = {"emb": set(), "head": set()}

    def params(self) -> list[nn.Parameter]:
        """The tied matrix, then the head's bias if present."""
        ps = [self.module.weight]
        if self.head.bias is not None:
            ps.append(self.head.bias)
        return ps

    def to_matrix(self, tensors: list[Tensor]) -> Tensor:
        """``Wᵀ`` of the tied matrix, shape ``(D, V)`` (the bias is separate)."""
        return tensors[0].T

    def split_update(self, mat: Tensor) -> list[Tensor]:
        """Transpose back to ``(V, D)`` (the bias is handled separately)."""
        return [mat.T]

    def _add(self, key: str, value: Tensor) -> None:
        prev = self._sums.get(key)
        self._sums[key] = value if prev is None else prev + value

    def batch_size(self, module: nn.Module, args: tuple[Any, ...]) -> int:
        """Dim 0 of the input of either use (1 if unbatched)."""
        x = args[0]
        if module is self.module:
            return 1 if x.ndim == 0 else int(x.shape[0])
        return 1 if x.ndim <= 1 else int(x.shape[0])

    def forward_record(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        output: Any,
        call: int,
        rows: Tensor | None = None,
    ) -> tuple[Record | None, Any]:
        """Record either use."""
        if not isinstance(output, Tensor) or not output.requires_grad:
            return None, None
        x = select_rows(args[0].detach(), rows)
        if module is self.module:
            counts = _onehot_counts(x, self.module.num_embeddings, self.stat_dtype)
            self._add("Ae", counts)
            self._rows_by_use["emb"] += x.numel()
            return Record(self, None, [output], call=call, tag="emb", rows=rows), None
        feats = linear_rows(x, self.approx, self.stat_dtype)
        self._add("Ah", feats.T @ feats)
        self._rows_by_use["head"] += feats.shape[0]
        return Record(self, None, [output], call=call, tag="head", rows=rows), None

    def accumulate(self, record: Record, grad_scale: float = 1.0) -> None:
        """Add the output-gradient statistics of either use."""
        for grads in record.grads:
            if grads[0] is None:
                continue
            g = select_rows(grads[0].detach(), record.rows).to(self.stat_dtype)
            if g.ndim == 1:
                g = g[None]
            if record.tag == "head" and self.approx == KFACApprox.REDUCE and g.ndim > 2:
                g = g.reshape(g.shape[0], -1, g.shape[-1]).sum(dim=1)
            g = g.reshape(-1, g.shape[-1]) * grad_scale
            if record.tag == "emb":
                self._add("Se", g.T @ g)
            else:
                self._add("Sh", (g * g).sum(dim=0))
            self._calls_by_use[record.tag].add(record.call)

    def batch_factors(self) -> dict[str, Tensor] | None:
        """Per-use statistics ``Ae, Se, Ah, Sh`` (combined in :meth:`kronecker`)."""
        out: dict[str, Tensor] = {}
        s = self._sums
        if "Ae" in s and "Se" in s:
            out["Ae"] = s["Ae"] / self._rows_by_use["emb"]
            out["Se"] = s["Se"] / max(len(self._calls_by_use["emb"]), 1)
        if "Ah" in s and "Sh" in s:
            out["Ah"] = s["Ah"] / self._rows_by_use["head"]
            out["Sh"] = s["Sh"] / max(len(self._calls_by_use["head"]), 1)
        self.reset_batch()
        return out or None

    @staticmethod
    def kronecker(stats: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Combined ``(A, S)`` = (V-side diagonal, D-side dense) from per-use stats."""
        return combine_tied_factors(
            stats.get("Ae"), stats.get("Se"), stats.get("Sh"), stats.get("Ah")
        )
