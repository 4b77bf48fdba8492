"""The GGN oracle of the K-FAC tests (:mod:`kfac_helpers`) against brute force."""

from __future__ import annotations

import torch
from kfac_helpers import GGN_RTOL, ggn_block, rel_err
from torch import Tensor, nn


def test_ggn_oracle_equals_hessian_for_linear_mse() -> None:
    """For a linear model and MSE the GGN is the Hessian (brute force check)."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(3, 2).double()
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(5, 2, generator=gen, dtype=torch.float64)

    def loss_of(theta: Tensor) -> Tensor:
        w, b = theta[:, :3], theta[:, 3]
        return torch.nn.functional.mse_loss(x @ w.T + b, y, reduction="sum")

    theta = torch.cat([model.weight, model.bias[:, None]], dim=1).detach()
    hess = torch.autograd.functional.hessian(loss_of, theta).reshape(8, 8)
    ggn = ggn_block(model, "", x, "mse", "sum")
    assert rel_err(ggn, hess) < GGN_RTOL
