r"""Preallocated buffers for the preconditioning that K-FAC does on every step.

With factors and inverses refreshed every few steps, most steps only apply the
cached damped inverses: per block ``X = L G R`` (``L = (S + γ_S)^{-1}``,
``R = (A + γ_A)^{-1}``, or a vector scaling the columns for a diagonal A), then
``vᵀg`` for the KL clip, heavy-ball momentum and the parameter update. For layers
of a few hundred units the products are cheap and the step's time went to the
calls around them: a ``cat`` per block to form ``[∇W | ∇b]``, views to split the
result, one dot product per block, a fused call per list of parameters.

A :class:`Workspace` lays out, for one dtype and device, three flat buffers alike —
gradients ``G``, directions ``X`` and momentum ``M`` — each block's ``(out, in')``
matrix, then every parameter without a block, flattened. Offsets are multiples of
64 bytes (a fresh allocation's alignment), and the parameter-shaped views are made
once: the block's own ``split_update`` of its matrices. A step then

* copies each gradient into its view of ``G`` (``to_matrix`` without a ``cat``),
* solves ``X = L G R`` with ``out=`` products (a scratch matrix per block),
* takes ``vᵀg = ⟨X, G⟩`` over the flat buffers in one dot product — the plain
  parameters' direction is their gradient, copied into ``X`` — and
* updates ``M ← βM + νX`` in two calls; the momentum state of every parameter is
  its view of ``M``, so checkpoints and the general code path see ordinary
  per-parameter buffers.

Only blocks whose ``split_update`` returns views (``split_views``) take part, and
only while every parameter of the group has a gradient of the group's dtype; the
optimizer keeps its general path for everything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .blocks.base import CurvatureBlock
from .inverse import two_sided_solve

__all__ = ["Workspace"]

_ALIGN_BYTES = 64  # c10's CPU allocator aligns fresh tensors to 64 bytes


def _aligned(offset: int, itemsize: int) -> int:
    step = max(_ALIGN_BYTES // itemsize, 1)
    return -(-offset // step) * step


class Workspace:
    """Flat gradient, direction and momentum buffers of one parameter group.

    Args:
        blocks: ``(key, block, params)`` of the blocks, each with
            ``block.split_views`` true; ``params`` in the block's order.
        params: Every parameter of the group, in the group's order (the blocks'
            parameters among them); all of one dtype and device.

    Raises:
        ValueError: If a block's ``split_update`` does not return views of its
            matrix, or a parameter is in two blocks.
    """

    def __init__(
        self,
        blocks: Sequence[tuple[str, CurvatureBlock, tuple[Tensor, ...]]],
        params: Sequence[Tensor],
    ) -> None:
        self.params = list(params)
        first = self.params[0]
        self.dtype, self.device = first.dtype, first.device
        itemsize = first.element_size()
        in_block = {id(p) for _, _, ps in blocks for p in ps}
        if len(in_block) != sum(len(ps) for _, _, ps in blocks):
            raise ValueError("a parameter belongs to two blocks")
        plain = [p for p in self.params if id(p) not in in_block]
        shapes = []
        offset = 0
        for _, block, ps in blocks:
            # the matrix shape, from the block's own map of parameter-shaped tensors
            shape = block.to_matrix([torch.empty(p.shape, device="meta") for p in ps])
            shapes.append((offset, tuple(shape.shape)))
            offset = _aligned(offset + shape.numel(), itemsize)
        plain_at = []
        for p in plain:
            plain_at.append(offset)
            offset = _aligned(offset + p.numel(), itemsize)
        kw: dict[str, Any] = {"dtype": self.dtype, "device": self.device}
        # zeros: the padding between entries takes part in the flat dot and
        # momentum update, and must stay 0 there
        self.grad = torch.zeros(offset, **kw)
        self.direction = torch.zeros(offset, **kw)
        self.momentum = torch.zeros(offset, **kw)
        views: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self.blocks: list[tuple[str, Tensor, Tensor, Tensor]] = []
        for (key, block, ps), (at, shape) in zip(blocks, shapes, strict=True):
            n = shape[0] * shape[1]
            mats = [buf[at : at + n].view(shape) for buf in self._buffers()]
            split = [block.split_update(m) for m in mats]
            for m, parts in zip(mats, split, strict=True):
                if len(parts) != len(ps) or any(
                    u._base is not m._base or u.shape != p.shape
                    for u, p in zip(parts, ps, strict=True)
                ):
                    raise ValueError(f"split_update of {key!r} does not return views")
            for i, p in enumerate(ps):
                views[id(p)] = (split[0][i], split[1][i], split[2][i])
            self.blocks.append((key, mats[0], torch.empty(shape, **kw), mats[1]))
        self.plain: list[tuple[Tensor, Tensor]] = []
        for p, at in zip(plain, plain_at, strict=True):
            g, x, m = (
                buf[at : at + p.numel()].view(p.shape) for buf in self._buffers()
            )
            views[id(p)] = (g, x, m)
            self.plain.append((g, x))
        self.grad_views = [views[id(p)][0] for p in self.params]
        #: the direction of every parameter (a view of :attr:`direction`)
        self.per_param = {p: views[id(p)][1] for p in self.params}
        self.momentum_views = [views[id(p)][2] for p in self.params]

    def _buffers(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.grad, self.direction, self.momentum

    def load(self, grads: Sequence[Tensor]) -> None:
        """Copy the gradients (in parameter order) into ``G``; plain ones into ``X``."""
        if len(grads) != len(self.grad_views):
            raise ValueError(f"{len(grads)} gradients for {len(self.params)} params")
        torch._foreach_copy_(self.grad_views, list(grads))
        if self.plain:
            torch._foreach_copy_([x for _, x in self.plain], [g for g, _ in self.plain])

    def solve(self, index: int, left: Tensor, right: Tensor) -> None:
        """``X = L G R`` for block ``index`` (``R`` 1-D: ``X = (L G) diag(R)``)."""
        _, g, scratch, x = self.blocks[index]
        two_sided_solve(left, g, right, scratch=scratch, out=x)

    def adopt_momentum(self, state: dict[Tensor, dict[str, Any]]) -> None:
        """Make every parameter's ``momentum_buffer`` its view of ``M``.

        A buffer that is already the view is left alone; any other buffer (a
        loaded checkpoint, a step taken on the general path) is copied in; a
        missing one starts at 0, so that ``βM + νX`` gives its first value ``νX``.
        """
        for p, view in zip(self.params, self.momentum_views, strict=True):
            entry = state[p]
            buf = entry.get("momentum_buffer")
            if buf is view:
                continue
            if buf is None:
                view.zero_()
            else:
                view.copy_(buf)
            entry["momentum_buffer"] = view
