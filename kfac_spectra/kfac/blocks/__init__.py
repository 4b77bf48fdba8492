"""Curvature blocks, one per supported layer, and the registry that builds them.

Supported: ``nn.Linear`` (any leading shared dims), ``nn.Conv1d``/``nn.Conv2d``
(``groups == 1``), ``nn.Embedding`` (diagonal input factor), a weight tied between an
``nn.Embedding`` and an ``nn.Linear`` (pre-softmax layer), ``nn.RNN``/``nn.LSTM``
(unidirectional, no projections, no inter-layer dropout). Any other module with
trainable parameters is reported as unsupported and left to the plain gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..enums import KFACApprox, RNNApprox
from .base import CurvatureBlock, Record, stat_dtype_for
from .conv import ConvBlock, conv_supported
from .embedding import EmbeddingBlock, TiedEmbeddingBlock
from .linear import DenseBlock, LinearBlock
from .rnn import RNNBlock, rnn_supported

__all__ = [
    "BlockSet",
    "ConvBlock",
    "CurvatureBlock",
    "DenseBlock",
    "EmbeddingBlock",
    "LinearBlock",
    "RNNBlock",
    "Record",
    "TiedEmbeddingBlock",
    "build_blocks",
    "stat_dtype_for",
]


@dataclass
class BlockSet:
    """The blocks of a model.

    Attributes:
        blocks: Block per key (the module's qualified name; for a tied weight, the
            embedding's name).
        module_blocks: Block per hooked module.
        unsupported: Qualified names of modules whose trainable parameters get no
            block (plain gradient).
    """

    blocks: dict[str, CurvatureBlock] = field(default_factory=dict)
    module_blocks: dict[nn.Module, CurvatureBlock] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False))


def build_blocks(
    model: nn.Module,
    approx: KFACApprox = KFACApprox.EXPAND,
    rnn_approx: RNNApprox = RNNApprox.INDEPENDENT,
    skip: tuple[str, ...] = (),
) -> BlockSet:
    """Create one curvature block per supported, trainable layer.

    Args:
        model: The network.
        approx: Expand or reduce for weight-sharing layers.
        rnn_approx: Approximation for recurrent layers.
        skip: Qualified module names to leave to the plain gradient.

    Returns:
        The :class:`BlockSet`.
    """
    out = BlockSet()
    named = [(n, m) for n, m in model.named_modules() if n not in skip]
    embeddings = {id(m.weight): (n, m) for n, m in named if isinstance(m, nn.Embedding)}
    tied_heads: dict[int, tuple[str, nn.Linear]] = {}
    for n, m in named:
        if isinstance(m, nn.Linear) and id(m.weight) in embeddings:
            tied_heads[id(m.weight)] = (n, m)
    handled: set[int] = set()
    for name, module in named:
        if id(module) in handled or not _trainable(module):
            continue
        block: CurvatureBlock | None = None
        extra: list[nn.Module] = []
        if isinstance(module, nn.Embedding) and id(module.weight) in tied_heads:
            head_name, head = tied_heads[id(module.weight)]
            block = TiedEmbeddingBlock(name, module, head_name, head, approx)
            extra = [head]
        elif isinstance(module, nn.Linear) and id(module.weight) in embeddings:
            emb_name, emb = embeddings[id(module.weight)]
            block = TiedEmbeddingBlock(emb_name, emb, name, module, approx)
            name = emb_name
            extra = [emb]
        elif isinstance(module, nn.Linear):
            block = LinearBlock(name, module, approx)
        elif conv_supported(module):
            block = ConvBlock(name, module, approx)
        elif isinstance(module, nn.Embedding):
            block = EmbeddingBlock(name, module, approx)
        elif rnn_supported(module):
            block = RNNBlock(name, module, approx, rnn_approx)
        if block is None:
            out.unsupported.append(name)
            continue
        out.blocks[name] = block
        for m in (module, *extra):
            out.module_blocks[m] = block
            handled.add(id(m))
    return out
