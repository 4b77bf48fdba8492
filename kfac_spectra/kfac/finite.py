"""Finiteness checks for the optimizer's guards, cheap enough to run every step.

``torch.isfinite(t).all()`` materialises a boolean tensor the size of ``t`` and, on
CPU, costs about as much as a small matrix product per parameter. A tensor is finite
exactly when its minimum and maximum are (``aminmax`` propagates NaN and an
infinity is its own extreme), so one fused reduction per tensor and one host
synchronisation for the whole list give the same answer. The extremes are checked
on the host (``isfinite`` of the stacked extremes is itself several small calls).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["all_finite"]


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every element of every tensor is finite.

    Args:
        tensors: Real floating-point tensors (any shapes, devices of one kind);
            empty tensors count as finite.

    Returns:
        ``True`` iff no element is NaN or ±inf.
    """
    extremes: list[Tensor] = []
    for t in tensors:
        if t.numel():
            extremes += torch.aminmax(t.detach())
    if not extremes:
        return True
    dtype = extremes[0].dtype
    if any(e.dtype != dtype for e in extremes):
        # float64 holds every narrower float exactly: no overflow from the cast
        extremes = [e.double() for e in extremes]
    return all(map(math.isfinite, torch.stack(extremes).tolist()))
