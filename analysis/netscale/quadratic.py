r"""The noisy quadratic model written as a network and a data set: an exact workload.

For an :class:`nqm.NQMProblem` with curvatures :math:`h_i`, noise variances
:math:`c_i` and :math:`E[\theta_i(0)^2] = \text{init\_sq}_i`, the network has one
parameter vector :math:`\theta \in \mathbb R^d` and maps an input :math:`x \in
\mathbb R` to :math:`f(x) = x\,(s \odot \theta)` with :math:`s_i = \sqrt{d h_i/2}`.
Training example :math:`n` has :math:`x_n = 1` and target
:math:`y_{n,i} = -\frac{d}{2 s_i} z_{n,i}`, :math:`z_n \sim N(0, \operatorname{diag}(c))`
independently. With the ``mse`` loss (``F.mse_loss``, the mean over the batch and
the d outputs) the gradient of a batch :math:`\mathcal B` is

.. math::
    \nabla_\theta \frac{1}{Bd}\sum_{n\in\mathcal B}\|s\odot\theta - y_n\|^2
    = H\theta + \varepsilon,\qquad
    \varepsilon = \frac1B\sum_{n\in\mathcal B} z_n \sim N(0, C/B),

exactly, with :math:`\varepsilon` independent of :math:`\theta`: the NQM's
gradient (Zhang et al. 2019, section 2). The test split is one example with
:math:`y = 0`, so its ``test_loss`` is :math:`\frac1d\sum_i s_i^2\theta_i^2 =
\frac12\sum_i h_i\theta_i^2`, the NQM's loss. While a run draws fresh examples
(``n_train >= steps * B``: one epoch without replacement), its iterates follow
the NQM's SGD recursion in distribution, so :func:`nqm.steps_to_target` is the
exact oracle of the mean curve's crossing. Everything is float64.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kfac_spectra.data import Dataset, DataSpec, InputKind
from nqm import NQMProblem

__all__ = ["NoisyQuadraticNet", "quadratic_dataset"]


class NoisyQuadraticNet(nn.Module):
    r"""``f(x) = x (s ⊙ θ)`` with :math:`s_i = \sqrt{d h_i / 2}` (float64).

    Args:
        problem: the NQM.
        generator: draws :math:`\theta_0 \sim N(0, \operatorname{diag}(\text{init\_sq}))`.
    """

    def __init__(self, problem: NQMProblem, generator: torch.Generator) -> None:
        super().__init__()
        h = torch.tensor(np.array(problem.h), dtype=torch.float64)
        d = h.numel()
        self.register_buffer("scale", torch.sqrt(d * h / 2.0))
        init_sd = torch.sqrt(
            torch.tensor(np.array(problem.init_sq), dtype=torch.float64)
        )
        theta = torch.randn(d, generator=generator, dtype=torch.float64) * init_sd
        self.theta = nn.Parameter(theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1) -> (N, d)."""
        return x * (self.scale * self.theta)


def quadratic_dataset(problem: NQMProblem, n_train: int, seed: int) -> Dataset:
    """The training examples :math:`(1, y_n)` and the test example :math:`(1, 0)`.

    Args:
        problem: the NQM (``weight`` must be all ones: one network output per mode).
        n_train: training examples; at least steps × batch size of a run for the
            exact NQM dynamics.
        seed: seed of the noise draws :math:`z_n`.

    Returns:
        A float64 :class:`~kfac_spectra.data.Dataset` of kind ``vector``.

    Raises:
        ValueError: for modes with a multiplicity weight other than 1.
    """
    h = np.asarray(problem.h, dtype=np.float64)
    c = np.asarray(problem.c, dtype=np.float64)
    if not np.all(np.asarray(problem.weight) == 1):
        raise ValueError("problem: every mode must have weight 1")
    d = h.size
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_train, d)) * np.sqrt(c)
    s = np.sqrt(d * h / 2.0)
    y = -(d / (2.0 * s)) * z
    spec = DataSpec(InputKind.VECTOR, (1,), d)
    return Dataset(
        "noisy_quadratic",
        torch.ones(n_train, 1, dtype=torch.float64),
        torch.from_numpy(y),
        torch.ones(1, 1, dtype=torch.float64),
        torch.zeros(1, d, dtype=torch.float64),
        spec,
    )
