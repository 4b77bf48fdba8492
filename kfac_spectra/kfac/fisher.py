r"""Output-space curvature: loss scales, Fisher probes and output-Hessian products.

The loss is ``L = c Σ_m ℓ_m`` over M loss terms, where ℓ_m is the unit-scale
negative log-likelihood of term m and ``c`` is fixed by the reduction exactly as in
``torch.nn.functional``:

* cross-entropy (logits ``f`` of shape ``(..., C)``, integer targets of shape
  ``f.shape[:-1]``): ``ℓ_m = -log softmax(f_m)[y_m]``; ``c = 1`` (sum) or ``1/M``
  (mean, M = ``f.numel() / C``);
* MSE: ``ℓ_m = ||f_m - y_m||²`` (Gaussian with variance 1/2); ``c = 1`` (sum) or
  ``1/f.numel()`` (mean over every element, like ``F.mse_loss``);
* binary cross-entropy on logits (targets in [0, 1] shaped like ``f``): one
  Bernoulli term per element, ``ℓ_m = -y log σ(f_m) - (1-y) log(1-σ(f_m))``;
  ``c = 1`` (sum) or ``1/f.numel()`` (mean, like
  ``F.binary_cross_entropy_with_logits``).

A *probe* is a tensor ``v`` shaped like ``f`` such that back-propagating it
(``∂f/∂s ᵀ v``) to a layer output ``s`` gives one set of output gradients ĝ, and
summing ``ĝ ĝᵀ`` over probes reproduces the layer's share of the curvature of L:

.. math::
    \sum_{\text{probes}} v_m v_m^\top \;\approx\; c\, H_\ell(f_m)
    \qquad\text{(exact for type-2, in expectation for MC)}.

* type-2: the C columns of ``sqrt(c) H_ℓ^{1/2}``; ``H_ℓ^{1/2} = sqrt(2) I`` for MSE,
  ``diag(√p) − p √pᵀ`` for cross-entropy (its square is ``diag(p) − p pᵀ``) and
  ``diag(sqrt(p(1−p)))`` with ``p = σ(f)`` for binary cross-entropy;
* MC: ``sqrt(c/k) ∇_f ℓ(f, ŷ)`` with ``ŷ ~ p(y | f)``, for k samples (for binary
  cross-entropy ``∇_f ℓ = p − ŷ``, ``ŷ ~ Bernoulli(p)`` element-wise);
* empirical: ``sqrt(c) ∇_f ℓ(f, y)`` with the observed targets.

References:
    Martens & Grosse (2015), §1.2 and Appendix (Fisher = GGN for these losses);
    Martens (2014), "New insights and perspectives on the natural gradient method".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .enums import FisherType, LossType, Reduction

__all__ = [
    "loss_scale",
    "num_loss_terms",
    "output_hessian_form",
    "output_probes",
    "subset_term_weight",
]


def num_loss_terms(output: Tensor, loss: LossType) -> int:
    """Number M of loss terms: rows of ``output.reshape(-1, C)``.

    Args:
        output: Model output, shape ``(..., C)``.
        loss: The loss type.

    Returns:
        M.
    """
    if loss == LossType.BCE:  # one Bernoulli term per element
        return output.numel()
    return output.numel() // output.shape[-1]


def loss_scale(output: Tensor, loss: LossType, reduction: Reduction) -> float:
    """The constant ``c`` in ``L = c Σ_m ℓ_m``.

    Args:
        output: Model output, shape ``(..., C)``.
        loss: The loss type.
        reduction: The reduction.

    Returns:
        ``c``.
    """
    if reduction == Reduction.SUM:
        return 1.0
    if loss in (LossType.MSE, LossType.BCE):
        return 1.0 / output.numel()
    return 1.0 / num_loss_terms(output, loss)


def subset_term_weight(
    output: Tensor, subset: Tensor, loss: LossType, reduction: Reduction
) -> float:
    r"""Weight ``w`` of each loss term when the curvature is estimated on a subset.

    The curvature of ``L = c Σ_{m≤M} ℓ_m`` is estimated from the ``M'`` terms of a
    subset of the examples (Martens & Grosse 2015, arXiv §8) by
    ``w Σ_{m∈subset} ...``:

    .. math::
        w = c' \;(\text{mean: the subset's own scale}), \qquad
        w = M / M' \;(\text{sum}),

    both unbiased for a uniformly drawn subset (the mean's estimate of the average
    per-term curvature is the subset's average).

    Args:
        output: The full model output, shape ``(N, ..., C)``.
        subset: Its rows of the subset, shape ``(N', ..., C)``.
        loss: The loss type.
        reduction: The reduction.

    Returns:
        ``w``; with ``subset`` equal to ``output`` it is ``c``.
    """
    if reduction == Reduction.SUM:
        return num_loss_terms(output, loss) / num_loss_terms(subset, loss)
    return loss_scale(subset, loss, reduction)


def _unit_gradient(f: Tensor, y: Tensor, loss: LossType) -> Tensor:
    """``∇_f ℓ(f, y)`` for the unit-scale NLL, rows of ``f`` shaped ``(M, C)``."""
    if loss == LossType.MSE:
        return 2.0 * (f - y)
    if loss == LossType.BCE:
        return torch.sigmoid(f) - y
    p = torch.softmax(f, dim=-1)
    return p - torch.nn.functional.one_hot(y, f.shape[-1]).to(p.dtype)


def output_probes(
    output: Tensor,
    loss: LossType,
    reduction: Reduction,
    fisher_type: FisherType,
    *,
    targets: Tensor | None = None,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Probes whose back-propagation gives the output gradients ĝ for factor S.

    Args:
        output: Model output ``f``, shape ``(..., C)``; detached internally.
        loss: The loss type.
        reduction: The reduction of the loss.
        fisher_type: Which Fisher (see module docstring).
        targets: Observed targets, required for the empirical Fisher: class indices
            of shape ``f.shape[:-1]`` (CE) or values shaped like ``f`` (MSE).
        mc_samples: Number of sampled targets per term (MC only).
        generator: Random generator for MC sampling (on ``output``'s device).

    Returns:
        A list of probes, each with the shape, dtype and device of ``output``.
        Statistics are computed in float32 or better and cast back.

    Raises:
        ValueError: If targets are missing or mis-shaped for the empirical Fisher, or
            ``mc_samples < 1``.
    """
    stat_dtype = torch.promote_types(output.dtype, torch.float32)
    shape = output.shape
    num_classes = shape[-1]
    f = output.detach().to(stat_dtype).reshape(-1, num_classes)
    c = loss_scale(output, loss, reduction)
    probes: list[Tensor] = []
    if fisher_type == FisherType.TYPE2:
        if loss == LossType.MSE:
            col = torch.full_like(f[:, 0], math.sqrt(2.0 * c))
            for k in range(num_classes):
                v = torch.zeros_like(f)
                v[:, k] = col
                probes.append(v)
        elif loss == LossType.BCE:
            p = torch.sigmoid(f)
            root = (p * (1.0 - p) * c).sqrt()
            for k in range(num_classes):
                v = torch.zeros_like(f)
                v[:, k] = root[:, k]
                probes.append(v)
        else:
            p = torch.softmax(f, dim=-1)
            sqrt_p = p.sqrt()
            for k in range(num_classes):
                # column k of diag(√p) − p √pᵀ
                v = -p * sqrt_p[:, k : k + 1]
                v[:, k] += sqrt_p[:, k]
                probes.append(v * math.sqrt(c))
    elif fisher_type == FisherType.MC:
        if mc_samples < 1:
            raise ValueError(f"mc_samples={mc_samples} must be >= 1")
        scale = math.sqrt(c / mc_samples)
        for _ in range(mc_samples):
            if loss == LossType.MSE:
                eps = torch.randn(
                    f.shape, generator=generator, device=f.device, dtype=f.dtype
                )
                # ∇ℓ = 2(f − ŷ) with ŷ = f + ε/√2, i.e. −√2 ε (sign is irrelevant)
                probes.append(eps * (math.sqrt(2.0) * scale))
            elif loss == LossType.BCE:
                p = torch.sigmoid(f)
                y = torch.bernoulli(p, generator=generator)
                probes.append((p - y) * scale)
            else:
                p = torch.softmax(f, dim=-1)
                y = torch.multinomial(p, 1, generator=generator).squeeze(-1)
                # ∇ℓ = p − onehot(ŷ) (the softmax is already at hand)
                grad = p - torch.nn.functional.one_hot(y, num_classes).to(p.dtype)
                probes.append(grad * scale)
    elif fisher_type == FisherType.EMPIRICAL:
        if targets is None:
            raise ValueError("targets are required for fisher_type='empirical'")
        if loss == LossType.CE:
            if targets.shape != shape[:-1]:
                raise ValueError(
                    f"targets shape {tuple(targets.shape)} must equal output.shape[:-1]"
                    f" = {tuple(shape[:-1])} for cross-entropy"
                )
            y = targets.reshape(-1).to(torch.long)
        else:
            if targets.shape != shape:
                raise ValueError(
                    f"targets shape {tuple(targets.shape)} must equal output shape "
                    f"{tuple(shape)} for {loss.value}"
                )
            y = targets.detach().to(stat_dtype).reshape(-1, num_classes)
        probes.append(_unit_gradient(f, y, loss) * math.sqrt(c))
    return [v.reshape(shape).to(output.dtype) for v in probes]


def output_hessian_form(
    output: Tensor,
    u: Tensor,
    w: Tensor,
    loss: LossType,
    reduction: Reduction,
) -> Tensor:
    r"""The bilinear form ``Σ_m c u_mᵀ H_ℓ(f_m) w_m`` of the output Hessian of L.

    With ``u = J v`` and ``w = J v'`` (Jacobian-vector products) this is
    ``vᵀ G v'`` for the GGN ``G`` (= Fisher for these losses).

    Args:
        output: Model output ``f``, shape ``(..., C)``.
        u: Output-space tangent, shape of ``output``.
        w: Output-space tangent, shape of ``output``.
        loss: The loss type.
        reduction: The reduction.

    Returns:
        A scalar tensor in float32 or better.
    """
    stat_dtype = torch.promote_types(output.dtype, torch.float32)
    num_classes = output.shape[-1]
    c = loss_scale(output, loss, reduction)
    u = u.detach().to(stat_dtype).reshape(-1, num_classes)
    w = w.detach().to(stat_dtype).reshape(-1, num_classes)
    if loss == LossType.MSE:
        return 2.0 * c * (u * w).sum()
    if loss == LossType.BCE:
        p = torch.sigmoid(output.detach().to(stat_dtype).reshape(-1, num_classes))
        return c * (p * (1.0 - p) * u * w).sum()
    p = torch.softmax(output.detach().to(stat_dtype).reshape(-1, num_classes), dim=-1)
    return c * ((p * u * w).sum() - ((p * u).sum(-1) * (p * w).sum(-1)).sum())
