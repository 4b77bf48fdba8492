r"""One-shot Kronecker factors of a model on a batch: :func:`compute_factors`.

Convention (used everywhere in :mod:`kfac_spectra.kfac`): for a layer with weight
``W`` of shape ``(out, in)`` and bias ``b``, the block ``S ⊗ A`` acts on the
row-major ``vec([W | b])`` (bias as the last column; no column without a bias);
``A`` is the mean over rows (examples × shared positions) of ``ā ā ᵀ`` and ``S`` the
sum over rows of ``ĝ ĝᵀ`` for probe-scaled output gradients ĝ, so that

.. math::
    S \otimes A \approx \text{layer block of the GGN / Fisher of } L = c \sum_m \ell_m ,

the loss *as reduced*: with ``reduction="sum"`` it is the curvature of the summed
loss; with ``reduction="mean"`` (c = 1/M) it is the curvature of the mean loss,
i.e. the average per-term Fisher — equivalently, the per-term output gradients are
multiplied by M before forming ``S = (1/M) Σ ĝĝᵀ``. MSE "mean" also divides by the
output dimension, exactly like ``F.mse_loss``. This matches curvlinops'
``KFACLinearOperator`` with ``separate_weight_and_bias=False``.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from .blocks import BlockSet, build_blocks
from .capture import Capture
from .enums import FisherType, KFACApprox, LossType, Reduction, RNNApprox, coerce_enum
from .fisher import output_probes

__all__ = ["compute_factors", "warn_unsupported"]

logger = logging.getLogger(__name__)


def warn_unsupported(blocks: BlockSet) -> None:
    """Emit one warning listing the layers left to the plain gradient."""
    if blocks.unsupported:
        import warnings

        warnings.warn(
            "K-FAC: no curvature block for these modules with trainable parameters "
            f"(plain gradient is used): {', '.join(blocks.unsupported)}",
            stacklevel=3,
        )


def compute_factors(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None,
    loss: LossType | str = LossType.MSE,
    fisher_type: FisherType | str = FisherType.TYPE2,
    *,
    reduction: Reduction | str = Reduction.MEAN,
    kfac_approx: KFACApprox | str = KFACApprox.EXPAND,
    rnn_approx: RNNApprox | str = RNNApprox.INDEPENDENT,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
) -> dict[str, tuple[Tensor, Tensor]]:
    r"""Kronecker factors ``(A, S)`` of every supported layer on one batch.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from kfac_spectra import compute_factors
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> gen = torch.Generator().manual_seed(0)
        >>> x = torch.randn(8, 3, generator=gen)
        >>> y = torch.randint(0, 2, (8,), generator=gen)
        >>> f = compute_factors(net, x, y, loss="ce", fisher_type="type2")
        >>> {k: (tuple(a.shape), tuple(s.shape)) for k, (a, s) in f.items()}
        {'0': ((4, 4), (4, 4)), '2': ((5, 5), (2, 2))}

    Args:
        model: The network; ``model(inputs)`` returns ``(..., C)`` (last dim =
            classes for CE, features for MSE).
        inputs: The batch fed to ``model``.
        targets: Class indices ``(...)`` (CE) or values ``(..., C)`` (MSE); needed for
            the empirical Fisher only (may be ``None`` otherwise).
        loss: ``"mse"`` or ``"ce"`` (or :class:`LossType`).
        fisher_type: ``"type2"`` (exact GGN factors), ``"mc"`` or ``"empirical"``.
        reduction: ``"mean"`` or ``"sum"``, as in ``torch.nn.functional``.
        kfac_approx: ``"expand"`` or ``"reduce"`` for weight-sharing layers.
        rnn_approx: ``"independent"`` or ``"chain"`` for recurrent layers (the
            chain's extra statistics are not returned here).
        mc_samples: Sampled targets per term for ``fisher_type="mc"``.
        generator: Random generator for MC sampling (defaults to a fresh one seeded
            with 0 on the model's device, so results are reproducible).

    Returns:
        ``{key: (A, S)}`` keyed by the module's qualified name in
        ``model.named_modules()``. ``A`` is ``(in', in')``, or 1-D (the diagonal) for
        embeddings and tied weights; ``S`` is ``(out, out)``. For a weight tied
        between an ``nn.Embedding`` and an ``nn.Linear`` the key is the embedding's
        name and the pair is the combined one (``A`` over the vocabulary, diagonal).
        For an RNN/LSTM, ``in' = input_size + hidden_size (+1)``. Dtype float32 or
        better (float64 for float64 models).

    Raises:
        ValueError: For invalid option values, or missing targets for the
            empirical Fisher.
    """
    loss = coerce_enum(LossType, loss, "loss")
    fisher_type = coerce_enum(FisherType, fisher_type, "fisher_type")
    reduction = coerce_enum(Reduction, reduction, "reduction")
    kfac_approx = coerce_enum(KFACApprox, kfac_approx, "kfac_approx")
    rnn_approx = coerce_enum(RNNApprox, rnn_approx, "rnn_approx")
    if mc_samples < 1:
        raise ValueError(f"mc_samples={mc_samples} must be >= 1")
    if fisher_type == FisherType.EMPIRICAL and targets is None:
        raise ValueError("targets are required for fisher_type='empirical'")
    blocks = build_blocks(model, kfac_approx, rnn_approx)
    warn_unsupported(blocks)
    if generator is None:
        device = next(model.parameters()).device
        generator = torch.Generator(device=device)
        generator.manual_seed(0)

    def on_output(output: Tensor, call: int, rows: Tensor | None) -> None:
        del rows  # no row sampler: always None
        probes = output_probes(
            output,
            loss,
            reduction,
            fisher_type,
            targets=targets,
            mc_samples=mc_samples,
            generator=generator,
        )
        records = capture.take_records(call)
        Capture.backprop_probes(output, records, probes)
        for r in records:
            r.block.accumulate(r)

    capture = Capture(model, blocks.module_blocks, on_output)
    capture.attach()
    capture.enabled = True
    try:
        with torch.enable_grad():
            model(inputs)
    finally:
        capture.enabled = False
        capture.detach()
    result: dict[str, tuple[Tensor, Tensor]] = {}
    for key, block in blocks.blocks.items():
        stats = block.batch_factors()
        if stats is None:
            logger.debug("no factors captured for %s", key)
            continue
        a, s = block.kronecker(stats)
        result[key] = (a, s)
    return result
