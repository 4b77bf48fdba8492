"""Tests for kfac_spectra.models and kfac_spectra.language_models.

Parameter counts are checked against closed-form counts written out by hand from
the architecture descriptions (Zhang et al. 2019, appendix F.2), not against the code's own sums.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kfac_spectra.data import DataSpec, InputKind
from kfac_spectra.language_models import LSTMLanguageModel, TransformerLanguageModel
from kfac_spectra.models import ModelName, ResNet8, build_model, scaled

SIGNAL = DataSpec(InputKind.SIGNAL, (1, 40), 10)
IMAGE = DataSpec(InputKind.IMAGE, (3, 32, 32), 10)
MNIST = DataSpec(InputKind.IMAGE, (1, 28, 28), 10)
TOKENS = DataSpec(InputKind.TOKENS, (12,), 50)
SMALL = 1 / 16


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def example_input(spec: DataSpec, n: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if spec.kind is InputKind.TOKENS:
        return torch.randint(0, spec.num_outputs, (n, *spec.input_shape), generator=gen)
    return torch.randn(n, *spec.input_shape, generator=gen)


CASES = [
    (ModelName.MLP, SIGNAL),
    (ModelName.MLP, MNIST),
    (ModelName.SIMPLE_CNN, SIGNAL),
    (ModelName.SIMPLE_CNN, MNIST),
    (ModelName.RESNET8, SIGNAL),
    (ModelName.RESNET8, IMAGE),
    (ModelName.TRANSFORMER, TOKENS),
    (ModelName.LSTM, TOKENS),
]


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_forward_backward_shapes(name: ModelName, spec: DataSpec) -> None:
    model = build_model(name, spec, SMALL, generator=torch.Generator().manual_seed(0))
    x = example_input(spec)
    out = model(x)
    if spec.kind is InputKind.TOKENS:
        assert out.shape == (3, *spec.input_shape, spec.num_outputs)
        loss = F.cross_entropy(out.reshape(-1, spec.num_outputs), x.reshape(-1))
    else:
        assert out.shape == (3, spec.num_outputs)
        loss = F.cross_entropy(out, torch.arange(3))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    # every trainable weight is in a layer type K-FAC understands (or LayerNorm)
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.LayerNorm)
    for module in model.modules():
        if list(module.parameters(recurse=False)):
            assert isinstance(module, kinds), type(module)


def test_paper_sizes() -> None:
    """Parameter counts at width 1 from the F.2 descriptions, counted by hand."""
    gen = torch.Generator().manual_seed(0)
    cnn = build_model(ModelName.SIMPLE_CNN, MNIST, generator=gen)
    # conv 1->32 5x5, conv 32->64 5x5, 28 -> 14 -> 7, fc 64*7*7 -> 1024, 1024 -> 10
    expected = (25 * 32 + 32) + (32 * 25 * 64 + 64) + (3136 * 1024 + 1024) + 10250
    assert count(cnn) == expected == 3_274_634
    resnet = build_model(ModelName.RESNET8, IMAGE, generator=gen)
    convs = [m for m in resnet.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in resnet.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 7 and len(linears) == 1
    assert [c.out_channels for c in convs] == [16, 16, 16, 32, 32, 64, 64]
    conv3 = [(3, 16), (16, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64)]
    expected = sum(9 * i * o + o for i, o in conv3) + 64 * 10 + 10
    assert count(resnet) == expected == 75_050
    transformer = build_model(
        ModelName.TRANSFORMER,
        DataSpec(InputKind.TOKENS, (8,), 32768),
        generator=gen,
    )
    d, ff = 512, 2048
    block = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d
    assert count(transformer) == 32768 * d + 2 * block  # embedding counted once


def test_width_knob_scales_parameters() -> None:
    """MLP hidden h on D inputs, C outputs: D h + h + h h + h + h C + C."""
    gen = torch.Generator().manual_seed(0)
    for width in (1 / 64, 1 / 16, 1 / 4):
        h = scaled(1024, width)
        model = build_model(ModelName.MLP, SIGNAL, width, generator=gen)
        assert count(model) == 40 * h + h + h * h + h + h * 10 + 10
    for name, spec in CASES:
        sizes = [
            count(build_model(name, spec, w, generator=gen)) for w in (1 / 32, 1 / 8)
        ]
        assert sizes[0] < sizes[1], name


def test_tied_weights_are_one_parameter() -> None:
    model = build_model(
        ModelName.TRANSFORMER,
        TOKENS,
        SMALL,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    assert isinstance(model, TransformerLanguageModel)
    assert model.decoder.weight is model.embedding.weight
    assert model.decoder.bias is None
    names = [n for n, _ in model.named_parameters()]
    assert "embedding.weight" in names and "decoder.weight" not in names
    # the gradient is the sum of both uses: compare with an untied copy
    untied = TransformerLanguageModel(50, d_model=32, num_heads=8, d_ff=128)
    untied = untied.double()
    untied.load_state_dict(model.state_dict())
    untied.decoder.weight = nn.Parameter(model.embedding.weight.detach().clone())
    x = example_input(TOKENS)
    model(x).square().sum().backward()
    untied(x).square().sum().backward()
    torch.testing.assert_close(
        model.embedding.weight.grad,
        untied.embedding.weight.grad + untied.decoder.weight.grad,
    )
    tied_lstm = LSTMLanguageModel(11, embed_dim=6, hidden=6, tie_weights=True)
    assert tied_lstm.decoder.weight is tied_lstm.embedding.weight
    with pytest.raises(ValueError, match="tie_weights"):
        LSTMLanguageModel(11, embed_dim=5, hidden=6, tie_weights=True)


@pytest.mark.parametrize("name", [ModelName.TRANSFORMER, ModelName.LSTM])
def test_language_models_are_causal(name: ModelName) -> None:
    model = build_model(name, TOKENS, SMALL, generator=torch.Generator().manual_seed(1))
    x = example_input(TOKENS, 2)
    changed = x.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % TOKENS.num_outputs
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_build_is_deterministic_and_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a = build_model(
        ModelName.RESNET8, SIGNAL, SMALL, generator=torch.Generator().manual_seed(3)
    )
    b = build_model(
        ModelName.RESNET8, SIGNAL, SMALL, generator=torch.Generator().manual_seed(3)
    )
    c = build_model(
        ModelName.RESNET8, SIGNAL, SMALL, generator=torch.Generator().manual_seed(4)
    )
    assert torch.equal(torch.get_rng_state(), state)
    for (_, p), (_, q), (_, r) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True
    ):
        assert torch.equal(p, q) and not torch.equal(p, r)


def test_resnet8_shortcut_is_identity_when_convs_are_zero() -> None:
    """With all weights zero the blocks reduce to relu(shortcut): option A pads."""
    model = ResNet8(1, 1, 10, base_channels=2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.stem.bias.fill_(1.0)
        x = torch.randn(2, 1, 8, dtype=torch.float64)
        h = model.blocks(F.relu(model.stem(x)))
    # stem output is 1 everywhere in 2 channels; strided shortcuts keep it, the
    # zero-padded channels stay 0: 8 channels at length 2
    expected = torch.zeros(2, 8, 2, dtype=torch.float64)
    expected[:, :2] = 1.0
    torch.testing.assert_close(h, expected)


def test_errors() -> None:
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="name"):
        build_model("vgg11", IMAGE, generator=gen)
    with pytest.raises(ValueError, match="spec"):
        build_model(ModelName.TRANSFORMER, IMAGE, generator=gen)
    with pytest.raises(ValueError, match="spec"):
        build_model(ModelName.SIMPLE_CNN, TOKENS, generator=gen)
    with pytest.raises(ValueError, match="width"):
        build_model(ModelName.MLP, SIGNAL, 0.0, generator=gen)
    with pytest.raises(ValueError, match="input_shape"):
        DataSpec(InputKind.IMAGE, (1, 28), 10)
    with pytest.raises(ValueError, match="kind"):
        DataSpec("video", (1, 28), 10)
    assert DataSpec("tokens", [8], 5).kind is InputKind.TOKENS
