"""Independent float64 oracles for the K-FAC tests (and a test of the oracles).

The GGN oracle uses only ``torch.func``: the Jacobian of the network output with
respect to one layer's ``[W | b]`` (row-major), and the exact output Hessian of the
loss, ``G = Jᵀ H J``. It shares no code with ``kfac_spectra.kfac``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

GGN_RTOL = 1e-10


def layer_matrix_jacobian(model: nn.Module, name: str, inputs: Tensor) -> Tensor:
    """Jacobian of ``model(inputs).reshape(-1)`` w.r.t. row-major ``vec([W | b])``.

    Returns:
        ``(numel(output), out * in')``.
    """
    module = model.get_submodule(name)
    params = dict(model.named_parameters())
    w_key = f"{name}.weight" if name else "weight"
    b_key = f"{name}.bias" if name else "bias"
    has_bias = getattr(module, "bias", None) is not None
    keys = [w_key] + ([b_key] if has_bias else [])

    def f(*tensors: Tensor) -> Tensor:
        p = dict(params)
        p.update(dict(zip(keys, tensors, strict=True)))
        return functional_call(model, p, (inputs,)).reshape(-1)

    jacs = jacrev(f, argnums=tuple(range(len(keys))))(*[params[k] for k in keys])
    out_dim = params[w_key].shape[0]
    jw = jacs[0].reshape(jacs[0].shape[0], out_dim, -1)
    if has_bias:
        jw = torch.cat([jw, jacs[1][:, :, None]], dim=2)
    return jw.reshape(jw.shape[0], -1)


def output_hessian(output: Tensor, loss: str, reduction: str) -> Tensor:
    """Hessian of the reduced loss w.r.t. ``output.reshape(-1)`` (dense)."""
    c_dim = output.shape[-1]
    f = output.detach().reshape(-1, c_dim)
    m = f.shape[0]
    if loss == "mse":
        c = 1.0 if reduction == "sum" else 1.0 / output.numel()
        return 2.0 * c * torch.eye(f.numel(), dtype=f.dtype)
    c = 1.0 if reduction == "sum" else 1.0 / m
    p = torch.softmax(f, dim=-1)
    blocks = [torch.diag(pi) - torch.outer(pi, pi) for pi in p]
    return c * torch.block_diag(*blocks)


def ggn_block(
    model: nn.Module, name: str, inputs: Tensor, loss: str, reduction: str
) -> Tensor:
    """Exact GGN diagonal block ``Jᵀ H J`` of layer ``name``."""
    j = layer_matrix_jacobian(model, name, inputs)
    h = output_hessian(model(inputs), loss, reduction)
    return j.T @ h @ j


def rel_err(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||b||`` (Frobenius)."""
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm())


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
