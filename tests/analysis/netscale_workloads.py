"""Small workloads for the net-scaling tests, loaded as ``module:factory``.

``blobs`` is a seeded three-class Gaussian-blob problem small enough for sweeps
of dozens of trials in seconds; ``quadratic_*`` is the exact NQM workload of
:mod:`analysis.netscale.quadratic` at the test problem below.
"""

import numpy as np
import torch
from torch import nn

from analysis.netscale.quadratic import NoisyQuadraticNet, quadratic_dataset
from kfac_spectra.data import Dataset, DataSpec, InputKind
from nqm import NQMProblem

#: The exact-workload problem: d = 100, h = c = 1/i, E[theta^2] = 1.
QUAD_PROBLEM = NQMProblem.power_law(100)
#: Steps x batch size x a margin, so that runs rarely share examples.
QUAD_TRAIN = 24_000


def blobs() -> Dataset:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 8)) * 0.6
    y = rng.integers(0, 3, 320)
    x = centres[y] + rng.standard_normal((320, 8))
    xt = torch.from_numpy(x).float()
    yt = torch.from_numpy(y).long()
    spec = DataSpec(InputKind.VECTOR, (8,), 3)
    return Dataset("blobs", xt[:256], yt[:256], xt[256:], yt[256:], spec)


def blobs_regression() -> Dataset:
    data = blobs()
    onehot = torch.nn.functional.one_hot(data.y_train, 3).float()
    onehot_t = torch.nn.functional.one_hot(data.y_test, 3).float()
    return Dataset("blobs_mse", data.x_train, onehot, data.x_test, onehot_t, data.spec)


def small_mlp(spec: DataSpec) -> nn.Module:
    return nn.Sequential(
        nn.Linear(spec.input_shape[0], 16), nn.Tanh(), nn.Linear(16, spec.num_outputs)
    )


def own_init_mlp(spec: DataSpec, generator: torch.Generator) -> nn.Module:
    """Initialises itself from the harness' generator (weights N(0, 1/fan_in))."""
    model = small_mlp(spec)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[-1] if p.ndim > 1 else 16
            p.copy_(torch.randn(p.shape, generator=generator) / fan_in**0.5)
    return model


def not_a_dataset():
    return 42


def quadratic_data() -> Dataset:
    return quadratic_dataset(QUAD_PROBLEM, QUAD_TRAIN, seed=0)


def quadratic_model(spec: DataSpec, generator: torch.Generator) -> nn.Module:
    return NoisyQuadraticNet(QUAD_PROBLEM, generator)
