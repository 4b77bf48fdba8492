"""The benchmark helper networks."""

from __future__ import annotations

import pytest
import torch

from kfac_spectra import compute_factors
from kfac_spectra.kfac.toy_models import cnn1d, mlp


def test_mlp_and_cnn_shapes_and_full_kfac_coverage() -> None:
    x = torch.randn(5, 1, 40, generator=torch.Generator().manual_seed(0))
    for net, names in (
        (mlp(40, 8, 10, depth=2), {"1", "3", "5"}),
        (cnn1d(40, 4, 10), {"0", "2", "5"}),
    ):
        assert net(x).shape == (5, 10)
        assert set(compute_factors(net, x, None, "ce", "mc")) == names


@pytest.mark.parametrize(
    ("fn", "kwargs", "name"),
    [
        (mlp, {"in_dim": 0, "hidden": 3, "out_dim": 2}, "in_dim"),
        (mlp, {"in_dim": 3, "hidden": 3, "out_dim": 2, "depth": 0}, "depth"),
        (cnn1d, {"length": 1, "channels": 3, "out_dim": 2}, "length"),
    ],
)
def test_invalid_sizes_raise(fn, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        fn(**kwargs)
