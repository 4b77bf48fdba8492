"""Precision and layout of the fast paths of kfac_spectra.gradient_stats.

Oracles:

* the float64 path (``compute_dtype=torch.float64``), itself checked against
  ``torch.func`` per-example gradients in ``test_gradient_stats.py``, for the
  float32 projections and products used by default for float32 models;
* explicit input rows ``[a; 1]`` (``Use.inputs``) times the vectors, for the
  convolution-based projection of :meth:`Use.projected_inputs`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kfac_spectra.eigenbasis import basis_from_factors
from kfac_spectra.gradient_stats import eigenbasis_gradient_stats
from kfac_spectra.language_models import LSTMLanguageModel
from kfac_spectra.layer_capture import PerExampleCapture, find_blocks
from kfac_spectra.models import ResNet8, SimpleCNN, init_parameters_

#: Relative error of float32 projections/products against float64, per direction
#: whose value exceeds FLOOR times its block's largest (variance, second moment,
#: curvature).
MIXED_RTOL = 1e-4
#: Error of the float32 mean in units of its standard error sqrt(var / N).
MEAN_STDERR_TOL = 1e-3
FLOOR = 1e-12
#: Two float64 code paths (convolution vs explicit rows).
LAYOUT_RTOL = 1e-12


def _random_bases(blocks, gen):
    def psd(n):
        m = torch.randn(n, n, generator=gen, dtype=torch.float64)
        return m @ m.T + 0.1 * torch.eye(n, dtype=torch.float64)

    return {
        k: basis_from_factors(psd(b.shape[0]), psd(b.shape[1]))
        for k, b in blocks.items()
    }


@pytest.mark.parametrize(
    "module, shape",
    [
        (nn.Conv1d(3, 4, 3, stride=2, padding=1), (5, 3, 9)),
        (nn.Conv1d(2, 3, 3, padding="same", dilation=2, bias=False), (5, 2, 8)),
        (nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0)), (4, 2, 5, 4)),
        (nn.Linear(5, 4), (3, 6, 5)),
        (nn.Linear(5, 4, bias=False), (3, 5)),
    ],
)
def test_projected_inputs_equal_explicit_rows(module: nn.Module, shape) -> None:
    gen = torch.Generator().manual_seed(0)
    module = module.double()
    capture = PerExampleCapture(module)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    with capture.recording():
        module(x)
    (use,) = next(iter(capture.blocks.values())).uses
    c = use.inputs.shape[-1]
    vectors = torch.randn(c, c + 2, generator=gen, dtype=torch.float64)
    got = use.projected_inputs(vectors)
    assert use.num_positions == use.inputs.shape[1]
    torch.testing.assert_close(
        got, use.inputs @ vectors, rtol=LAYOUT_RTOL, atol=LAYOUT_RTOL
    )
    with pytest.raises(ValueError, match="vectors"):
        use.projected_inputs(vectors[1:])


def _float32_case(name: str):
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    n = 24
    if name == "resnet8_1d":
        model = ResNet8(1, 1, 3, base_channels=3)
        # a large common offset: along some directions the mean gradient is
        # orders of magnitude above its spread (cancellation in E[z^2] - E[z]^2)
        x = 3.0 + 0.1 * torch.randn(n, 1, 12, generator=gen)
    elif name == "cnn2d":
        model = SimpleCNN(2, (4, 4), 3, channels=(3, 4), hidden=5)
        x = 2.0 + 0.1 * torch.randn(n, 2, 4, 4, generator=gen)
    else:
        model = LSTMLanguageModel(6, embed_dim=3, hidden=4, num_layers=1)
        x = torch.randint(0, 6, (n, 5), generator=gen)
    init_parameters_(model, gen)
    if name == "lstm":
        y = torch.randint(0, 6, x.shape, generator=gen)
    else:  # one class for all: nearly equal per-example gradients
        y = torch.zeros(n, dtype=torch.long)
    return model, x, y, _random_bases(find_blocks(model), gen)


@pytest.mark.parametrize("name", ["resnet8_1d", "cnn2d", "lstm"])
def test_float32_products_match_float64(name: str) -> None:
    model, x, y, bases = _float32_case(name)
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]

    def run(**kwargs):
        return eigenbasis_gradient_stats(
            model,
            batches,
            bases,
            loss="ce",
            fisher_type="mc",
            generator=torch.Generator().manual_seed(1),
            **kwargs,
        )

    ref = run(compute_dtype=torch.float64)
    # default chunks (float32 sums within a chunk), and one example per chunk
    # (the shift is then the first example's matrix)
    worst_ratio = 0.0
    for got in (run(), run(max_chunk_elements=1)):
        assert got.layers.keys() == ref.layers.keys()
        for key, r in ref.layers.items():
            g = got.layers[key]
            for field in ("variance", "second_moment", "curvature"):
                want, have = getattr(r, field), getattr(g, field)
                keep = np.abs(want) > FLOOR * np.abs(want).max()
                np.testing.assert_allclose(have[keep], want[keep], rtol=MIXED_RTOL)
            stderr = np.sqrt(r.variance / r.num_examples)
            keep = r.variance > FLOOR * r.variance.max()
            error = np.abs(g.mean - r.mean)[keep]
            assert np.all(error <= MEAN_STDERR_TOL * stderr[keep])
            ratio = (r.mean**2 / r.variance)[keep].max()
            worst_ratio = max(worst_ratio, float(ratio))
    if name != "lstm":  # the offset makes the test meaningful: mean^2 >> var
        assert worst_ratio > 1e4


def test_default_compute_dtype_follows_the_model() -> None:
    model, x, y, bases = _float32_case("cnn2d")
    kwargs = {"loss": "ce", "fisher_type": "empirical"}
    fast = eigenbasis_gradient_stats(model, [(x, y)], bases, **kwargs)
    same = eigenbasis_gradient_stats(
        model, [(x, y)], bases, compute_dtype=torch.float32, **kwargs
    )
    model64, x64 = model.double(), x.double()
    exact = eigenbasis_gradient_stats(model64, [(x64, y)], bases, **kwargs)
    forced = eigenbasis_gradient_stats(
        model64, [(x64, y)], bases, compute_dtype=torch.float64, **kwargs
    )
    for key in bases:
        np.testing.assert_array_equal(
            fast.layers[key].variance, same.layers[key].variance
        )
        np.testing.assert_array_equal(
            exact.layers[key].variance, forced.layers[key].variance
        )
    with pytest.raises(ValueError, match="compute_dtype"):
        eigenbasis_gradient_stats(
            model64, [(x64, y)], bases, compute_dtype=torch.int64, **kwargs
        )
    with pytest.raises(ValueError, match="max_chunk_elements"):
        eigenbasis_gradient_stats(
            model64, [(x64, y)], bases, max_chunk_elements=0, **kwargs
        )
