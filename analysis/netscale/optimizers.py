r"""Optimizers of the measured sweep, their search spaces and learning-rate schedules.

Every search space is data: a tuple of :class:`Param` (name, range, scale). A
point of the unit cube :math:`u \in [0, 1)^k` maps to hyperparameters
coordinate by coordinate:

* ``LOG``: :math:`v = \exp(\log lo + u(\log hi - \log lo))`;
* ``LINEAR``: :math:`v = lo + u(hi - lo)`.

Momentum-like parameters are searched as :math:`1-\beta` on a log scale (Shallue
et al. 2018, section 3.3), so the space reaches :math:`\beta = 0.999` as easily as
:math:`\beta = 0.9`.

=========  ===================================================================
optimizer  searched (default ranges in :data:`SEARCH_SPACES`)
=========  ===================================================================
sgd        lr
momentum   lr, 1-β (heavy ball, ``m ← βm + g, θ ← θ − αm``)
nesterov   lr, 1-β (PyTorch's Nesterov form)
adam       lr, 1-β₁, 1-β₂, ε
kfac       lr, damping, KL clip κ, 1-β (this project's :class:`~kfac_spectra.KFAC`)
=========  ===================================================================

K-FAC's momentum is tuned as Zhang et al. (2019, appendix F.4) do for all their
models but the Transformer (there they fix it at 0.9); the factor moving average
stays at the optimizer's default.

``--ema`` adds :math:`1-\gamma` (log-scaled) to any space: the evaluated model is
the exponential moving average of the iterates,
:math:`\tilde\theta \leftarrow \gamma\tilde\theta + (1-\gamma)\theta`,
:math:`\tilde\theta_0 = \theta_0` (the NQM's averaging, ``nqm.Optimizer.ema``).

The linear-decay schedule (Zhang et al. 2019, appendix F.3; Shallue et al. 2018)
adds the decay factor :math:`\delta` and the horizon :math:`T` as a fraction of
the step budget:

.. math::
    \alpha(t) = \alpha_0\,\bigl(1 - (1-\delta)\min(t, T)/T\bigr).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping

import torch
from torch import nn

__all__ = [
    "OptimizerName",
    "Schedule",
    "Scale",
    "Param",
    "SEARCH_SPACES",
    "EMA_PARAM",
    "SCHEDULE_PARAMS",
    "search_space",
    "from_unit",
    "make_optimizer",
    "learning_rate",
]


class OptimizerName(enum.StrEnum):
    """The optimizers a sweep can tune."""

    SGD = "sgd"
    MOMENTUM = "momentum"
    NESTEROV = "nesterov"
    ADAM = "adam"
    KFAC = "kfac"


class Schedule(enum.StrEnum):
    """Learning-rate schedules (Zhang et al. 2019, appendix F.3)."""

    CONSTANT = "constant"
    LINEAR_DECAY = "linear_decay"


class Scale(enum.StrEnum):
    """How a unit coordinate maps onto a parameter's range."""

    LOG = "log"
    LINEAR = "linear"


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched hyperparameter.

    Attributes:
        name: the key in a trial's hyperparameters (``one_minus_beta`` etc.).
        low: lower end of the range (> 0 for ``LOG``).
        high: upper end of the range (> ``low``).
        scale: :class:`Scale` of the search.
    """

    name: str
    low: float
    high: float
    scale: Scale = Scale.LOG

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"{self.name}: range must be finite")
        if not self.low < self.high:
            raise ValueError(f"{self.name}: low must be < high")
        if self.scale is Scale.LOG and self.low <= 0:
            raise ValueError(f"{self.name}: a log-scaled range must be positive")

    def value(self, u: float) -> float:
        """The parameter value at unit coordinate ``u`` in [0, 1]."""
        if self.scale is Scale.LOG:
            lo, hi = math.log(self.low), math.log(self.high)
            return math.exp(lo + u * (hi - lo))
        return self.low + u * (self.high - self.low)


#: The documented default search spaces (ranges chosen to bracket the tuned
#: optima of small networks at batch sizes 2^3..2^10).
SEARCH_SPACES: Mapping[OptimizerName, tuple[Param, ...]] = {
    OptimizerName.SGD: (Param("lr", 3e-2, 3.0),),
    OptimizerName.MOMENTUM: (
        Param("lr", 3e-3, 1.0),
        Param("one_minus_beta", 1e-2, 0.3),
    ),
    OptimizerName.NESTEROV: (
        Param("lr", 3e-3, 1.0),
        Param("one_minus_beta", 1e-2, 0.3),
    ),
    OptimizerName.ADAM: (
        Param("lr", 3e-4, 3e-2),
        Param("one_minus_beta1", 1e-2, 0.3),
        Param("one_minus_beta2", 1e-4, 0.1),
        Param("eps", 1e-8, 1e-3),
    ),
    OptimizerName.KFAC: (
        Param("lr", 1e-2, 1.0),
        Param("damping", 1e-3, 0.3),
        Param("kl_clip", 1e-3, 0.1),
        Param("one_minus_beta", 1e-2, 0.3),
    ),
}

#: Added with ``--ema``: :math:`1-\gamma` of the iterate average.
EMA_PARAM = Param("one_minus_gamma", 1e-3, 0.5)

#: Added with the linear-decay schedule: the decay factor δ and the horizon T as
#: a fraction of the step budget.
SCHEDULE_PARAMS: Mapping[Schedule, tuple[Param, ...]] = {
    Schedule.CONSTANT: (),
    Schedule.LINEAR_DECAY: (
        Param("decay_factor", 1e-3, 1.0),
        Param("decay_fraction", 0.1, 1.0, Scale.LINEAR),
    ),
}


def search_space(
    optimizer: OptimizerName | str, *, ema: bool, schedule: Schedule | str
) -> tuple[Param, ...]:
    """The searched parameters of one optimizer, schedule and averaging choice.

    Returns:
        The optimizer's own parameters, then the schedule's, then the EMA's.

    Raises:
        ValueError: for an unknown optimizer or schedule name.
    """
    name = _enum(OptimizerName, optimizer, "optimizer")
    sched = _enum(Schedule, schedule, "schedule")
    return SEARCH_SPACES[name] + SCHEDULE_PARAMS[sched] + ((EMA_PARAM,) if ema else ())


def from_unit(space: tuple[Param, ...], u) -> dict[str, float]:
    """Map a point of the unit cube (shape ``(len(space),)``) to hyperparameters."""
    if len(u) != len(space):
        raise ValueError(f"u has {len(u)} coordinates, the space {len(space)}")
    return {p.name: p.value(float(x)) for p, x in zip(space, u, strict=True)}


def learning_rate(
    hparams: Mapping[str, float], step: int, schedule: Schedule, max_steps: int
) -> float:
    r"""The learning rate of step ``step`` (0-based).

    .. math::
        \alpha(t) = \alpha_0\,\bigl(1 - (1-\delta)\min(t, T)/T\bigr),\quad
        T = \max(1, \lfloor f\,t_{\max} \rceil)

    for the linear decay (``decay_factor`` δ, ``decay_fraction`` f), and
    :math:`\alpha_0` for the constant schedule.
    """
    lr = hparams["lr"]
    if schedule is Schedule.CONSTANT:
        return lr
    horizon = max(1, round(hparams["decay_fraction"] * max_steps))
    frac = min(step, horizon) / horizon
    return lr * (1.0 - (1.0 - hparams["decay_factor"]) * frac)


def make_optimizer(
    name: OptimizerName,
    model: nn.Module,
    hparams: Mapping[str, float],
    *,
    loss: str,
    seed: int,
) -> torch.optim.Optimizer:
    """Build the torch optimizer of a trial.

    Args:
        name: which optimizer.
        model: the network (K-FAC hooks into its layers).
        hparams: the trial's hyperparameters (see :data:`SEARCH_SPACES`).
        loss: ``"ce"`` or ``"mse"`` (K-FAC's Fisher needs it).
        seed: K-FAC's Monte-Carlo sampling seed.

    Returns:
        The optimizer; every parameter group's ``lr`` is set per step by the
        trial from :func:`learning_rate`.
    """
    params = list(model.parameters())
    lr = hparams["lr"]
    if name is OptimizerName.SGD:
        return torch.optim.SGD(params, lr=lr)
    if name in (OptimizerName.MOMENTUM, OptimizerName.NESTEROV):
        # torch's SGD momentum is the heavy ball m <- beta m + g, theta -= lr m
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=1.0 - hparams["one_minus_beta"],
            nesterov=name is OptimizerName.NESTEROV,
        )
    if name is OptimizerName.ADAM:
        return torch.optim.Adam(
            params,
            lr=lr,
            betas=(1.0 - hparams["one_minus_beta1"], 1.0 - hparams["one_minus_beta2"]),
            eps=hparams["eps"],
        )
    from kfac_spectra import KFAC

    return KFAC(
        model,
        loss,
        lr=lr,
        momentum=1.0 - hparams["one_minus_beta"],
        damping=hparams["damping"],
        kl_clip=hparams["kl_clip"],
        min_damping=min(1e-8, hparams["damping"]),
        seed=seed,
    )


def _enum(cls: type[enum.StrEnum], value, what: str):
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown {what} {value!r}; choose from {choices}") from None
