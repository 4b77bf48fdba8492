r"""From a network's optimizers and loss to their NQM counterparts.

**Target.** The NQM's loss is the excess over the optimum, which it places at
zero. A network's loss does not fall to zero, so a target :math:`L_{\text{target}}`
on the network becomes

.. math:: L^*_{\text{NQM}} = L_{\text{target}} - L_{\text{floor}},

with :math:`L_{\text{floor}}` the measured loss at the end of the reference run
(the parameters that :func:`kfac_spectra.estimate_nqm` takes for the optimum) or a
value the user passes. A target at or below the floor has no NQM counterpart. This is the *excess*
mapping (:class:`TargetMapping`), the default.

The estimated NQM need not start where the network starts: its initial loss
:math:`L_{\text{NQM}}(0) = \tfrac12\sum_i h_i E[\theta_i(0)^2]` can fall short of
the network's excess :math:`L_{\text{start}} - L_{\text{floor}}` at the
checkpoint (the loss is not quadratic), and a target between them is then
"reached" at step 0. The *relative* mapping keeps the fraction of the way from
start to floor instead:

.. math::
    L^*_{\text{NQM}} = L_{\text{NQM}}(0)\,
    \frac{L_{\text{target}} - L_{\text{floor}}}{L_{\text{start}} - L_{\text{floor}}}.

Both coincide when the NQM is exact (:math:`L_{\text{NQM}}(0) = L_{\text{start}}
- L_{\text{floor}}`).

**Optimizers** (Zhang et al. 2019, sections 3.3-3.5):

============  ======================  ======================================
measured      NQM family              preconditioning power p
============  ======================  ======================================
sgd           ``sgd``                 0
momentum      ``momentum``            0
ema (sgd)     ``ema``                 0
linear decay  ``linear_decay``        0
kfac          ``momentum``            1
adam          ``momentum``            0.5 (0.25 and 0.75 for sensitivity)
============  ======================  ======================================

K-FAC and Adam are preconditioned heavy ball: the measured sweep tunes their
momentum (:mod:`analysis.netscale.optimizers`), so their counterpart is the
``momentum`` family, whose tuned optimum includes :math:`\beta = 0`. Adam's
diagonal second-moment scaling stands in for :math:`H^{1/2}` (the paper's proxy);
reporting :math:`p = 0.25` and :math:`0.75` beside it shows how much the
prediction hangs on that choice.

A measured sweep runs every optimizer with one averaging flag and one schedule;
:func:`measured_label` names the NQM counterpart of each (optimizer, flag,
schedule), ``None`` where the table has none (Nesterov; momentum or Adam with a
schedule or averaging).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping

import nqm
from analysis.netscale.optimizers import OptimizerName, Schedule
from nqm import Family

__all__ = [
    "TargetMapping",
    "TargetMap",
    "PredictedOptimizer",
    "Counterpart",
    "COUNTERPARTS",
    "ADAM_SENSITIVITY_POWERS",
    "nqm_target",
    "measured_label",
    "nqm_optimizer",
    "study_curves",
]


class PredictedOptimizer(enum.StrEnum):
    """The optimizers a prediction covers, named as a measured sweep names them."""

    SGD = "sgd"
    MOMENTUM = "momentum"
    EMA = "ema"
    LINEAR_DECAY = "linear_decay"
    KFAC = "kfac"
    ADAM = "adam"


@dataclasses.dataclass(frozen=True)
class Counterpart:
    """An optimizer's NQM counterpart.

    Attributes:
        family: the tuned :class:`nqm.Family`.
        power: the preconditioning power :math:`p` of the prediction.
        sensitivity: further powers reported beside it.
    """

    family: Family
    power: float
    sensitivity: tuple[float, ...] = ()


#: Adam's powers reported beside the paper's proxy p = 0.5.
ADAM_SENSITIVITY_POWERS: tuple[float, ...] = (0.25, 0.75)

#: The mapping of the module docstring.
COUNTERPARTS: Mapping[PredictedOptimizer, Counterpart] = {
    PredictedOptimizer.SGD: Counterpart(Family.SGD, 0.0),
    PredictedOptimizer.MOMENTUM: Counterpart(Family.MOMENTUM, 0.0),
    PredictedOptimizer.EMA: Counterpart(Family.EMA, 0.0),
    PredictedOptimizer.LINEAR_DECAY: Counterpart(Family.LINEAR_DECAY, 0.0),
    PredictedOptimizer.KFAC: Counterpart(Family.MOMENTUM, 1.0),
    PredictedOptimizer.ADAM: Counterpart(Family.MOMENTUM, 0.5, ADAM_SENSITIVITY_POWERS),
}


def nqm_target(target: float, floor: float) -> float:
    r""":math:`L^*_{\text{NQM}} = L_{\text{target}} - L_{\text{floor}}`.

    Args:
        target: the network's target loss.
        floor: the loss standing for the optimum.

    Returns:
        The NQM target (> 0).

    Raises:
        ValueError: when either is not finite, or the target is at or below
            the floor.
    """
    if not (math.isfinite(target) and math.isfinite(floor)):
        raise ValueError(f"target {target!r} and floor {floor!r} must be finite")
    if target <= floor:
        raise ValueError(
            f"target {target:g} is at or below the loss floor {floor:g}: the NQM "
            "target L_target - L_floor must be positive (raise --target or pass "
            "a lower --floor)"
        )
    return float(target) - float(floor)


class TargetMapping(enum.StrEnum):
    """How a network target becomes an NQM target (see the module docstring)."""

    EXCESS = "excess"
    RELATIVE = "relative"


@dataclasses.dataclass(frozen=True)
class TargetMap:
    """The target mapping of one NQM problem.

    Attributes:
        floor: :math:`L_{\text{floor}}`.
        mapping: :class:`TargetMapping`.
        start_loss: :math:`L_{\text{start}}`, the network's loss where the
            problem starts (``relative`` only).
        nqm_initial_loss: :math:`L_{\text{NQM}}(0)` (``relative`` only).

    Raises:
        ValueError: for a relative mapping without both losses, or a start at
            or below the floor.
    """

    floor: float
    mapping: TargetMapping = TargetMapping.EXCESS
    start_loss: float | None = None
    nqm_initial_loss: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mapping", TargetMapping(self.mapping))
        if self.mapping is TargetMapping.RELATIVE:
            if self.start_loss is None or self.nqm_initial_loss is None:
                raise ValueError("target_mapping: relative needs the start losses")
            if not self.start_loss > self.floor:
                raise ValueError(
                    f"target_mapping: the start loss {self.start_loss:g} is not "
                    f"above the floor {self.floor:g}"
                )

    @property
    def scale(self) -> float:
        """NQM loss per unit of network loss (1 for ``excess``)."""
        if self.mapping is TargetMapping.EXCESS:
            return 1.0
        return self.nqm_initial_loss / (self.start_loss - self.floor)

    def __call__(self, target: float) -> float:
        """The NQM target of a network target.

        Raises:
            ValueError: for a target at or below the floor.
        """
        return nqm_target(target, self.floor) * self.scale


#: (measured optimizer, averaging, schedule) -> counterpart label.
_MEASURED: Mapping[tuple[OptimizerName, bool, Schedule], PredictedOptimizer] = {
    (OptimizerName.SGD, False, Schedule.CONSTANT): PredictedOptimizer.SGD,
    (OptimizerName.MOMENTUM, False, Schedule.CONSTANT): PredictedOptimizer.MOMENTUM,
    (OptimizerName.SGD, True, Schedule.CONSTANT): PredictedOptimizer.EMA,
    (OptimizerName.SGD, False, Schedule.LINEAR_DECAY): PredictedOptimizer.LINEAR_DECAY,
    (OptimizerName.KFAC, False, Schedule.CONSTANT): PredictedOptimizer.KFAC,
    (OptimizerName.ADAM, False, Schedule.CONSTANT): PredictedOptimizer.ADAM,
}


def measured_label(
    optimizer: OptimizerName | str, ema: bool, schedule: Schedule | str
) -> PredictedOptimizer | None:
    """The counterpart label of a measured optimizer (``None``: none in the table).

    Args:
        optimizer: the sweep's optimizer name.
        ema: whether the sweep evaluated the iterates' moving average.
        schedule: the sweep's learning-rate schedule.
    """
    key = (OptimizerName(optimizer), bool(ema), Schedule(schedule))
    return _MEASURED.get(key)


def nqm_optimizer(
    label: PredictedOptimizer, hparams: Mapping[str, float]
) -> nqm.Optimizer | None:
    r"""The NQM optimizer with a measured trial's own hyperparameters.

    Exact where the update is the same in parameter space: SGD
    (:math:`\alpha`), heavy-ball momentum (torch's
    :math:`m \leftarrow \beta m + g,\ \theta \leftarrow \theta - \alpha m`, the
    NQM's form) and SGD with iterate averaging (:math:`\gamma = 1 -`
    ``one_minus_gamma``). Adam, K-FAC and the decaying schedule have no
    hyperparameter-for-hyperparameter counterpart (their step scale depends on
    statistics the NQM does not carry), so ``None``.

    Args:
        label: the counterpart label.
        hparams: the trial's hyperparameters (``lr``, ``one_minus_beta``,
            ``one_minus_gamma``).
    """
    if label is PredictedOptimizer.SGD:
        return nqm.Optimizer(lr=hparams["lr"])
    if label is PredictedOptimizer.MOMENTUM:
        return nqm.Optimizer(lr=hparams["lr"], momentum=1 - hparams["one_minus_beta"])
    if label is PredictedOptimizer.EMA:
        return nqm.Optimizer(lr=hparams["lr"], ema=1 - hparams["one_minus_gamma"])
    return None


def study_curves(
    labels: Iterable[PredictedOptimizer],
) -> dict[tuple[PredictedOptimizer, float], tuple[Family, float]]:
    """The (family, power) curves a prediction tunes, keyed by (label, power).

    Args:
        labels: the optimizers to predict.

    Returns:
        For each label its power and its sensitivity powers, in order.
    """
    out: dict[tuple[PredictedOptimizer, float], tuple[Family, float]] = {}
    for label in labels:
        cp = COUNTERPARTS[PredictedOptimizer(label)]
        for p in (cp.power, *cp.sensitivity):
            out[(PredictedOptimizer(label), p)] = (cp.family, p)
    return out
