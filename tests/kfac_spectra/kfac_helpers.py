"""Shared helpers of the kfac_spectra tests: seeded generators, seeded parameter
initialisation, and the independent float64 GGN oracle.

The GGN oracle uses only ``torch.func``: the Jacobian of the network output with
respect to one layer's ``[W | b]`` (row-major), and the exact output Hessian of the
loss, ``G = Jᵀ H J``. It shares no code with ``kfac_spectra``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from kfac_spectra.train import TrainConfig, resolve_config

DT = torch.float64
# a training run of a few seconds: a tiny MLP on the digits
TINY_RUN = {
    "model": "mlp",
    "data": "digits",
    "width": 1 / 64,
    "steps": 10,
    "batch_size": 32,
    "checkpoints": "0,4,7",
    "measure_examples": 48,
    "inverse_interval": 3,
}


def seeded(seed: int = 0) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def tiny_run(**changes: object) -> TrainConfig:
    """The configuration :data:`TINY_RUN` with ``changes``."""
    return resolve_config(None, {**TINY_RUN, **changes})


def randomise(model: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    """Overwrite every parameter with ``scale`` times standard normal draws (in the
    parameter's own dtype) from ``seeded(seed)``; returns ``model``."""
    g = seeded(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


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
