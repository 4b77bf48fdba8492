"""The optimizer families that the tuner searches, how they nest, its points and
its result.

Both the step search (:mod:`nqm.search`) and the tuner behind
:func:`nqm.search.best_steps` import these names from here, and studies that
plan which families to tune first (``analysis.scaling``) read the nesting from
:attr:`Family.contained`.

The learning rate's path through the package: an :class:`~nqm.Optimizer` with a
constant lr is the :class:`ConstantSetting` ``(lr, momentum, ema,
precond_power)`` (:meth:`ConstantSetting.of`); those floats are what the exact
risk :func:`nqm.dynamics.risk_terms` takes, and what
:func:`nqm.search.steps_to_target` certifies. The tuner searches coordinates
that map to such floats, evaluates every candidate from them through
:func:`~nqm.dynamics.risk_terms` and :func:`~nqm.search.steps_to_target`, and
builds an :class:`~nqm.Optimizer` (:meth:`ConstantSetting.optimizer`) only for the
result it reports.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from .optimizer import Constant, Optimizer, _check_lr

__all__ = ["Family", "TuneResult", "ConstantSetting", "MAX_STEPS"]

#: Searches stop here (about 1.1e15 steps); beyond it the answer is ``inf``.
MAX_STEPS = 2**50


class Family(enum.StrEnum):
    """Optimizer families that :func:`nqm.search.best_steps` tunes.

    * ``sgd``: constant lr.
    * ``momentum``: lr and :math:`\\beta`.
    * ``ema``: lr and :math:`\\gamma`.
    * ``momentum_ema``: lr, :math:`\\beta` and :math:`\\gamma`.
    * ``pwc``: SGD with a piecewise-constant schedule of ``pieces`` equal-length
      pieces (default 10); the total length and every piece's lr are tuned.
    * ``linear_decay``: SGD with the linear decay of Zhang et al. 2019,
      appendix F.3 (:math:`\\alpha_0`, decay factor, horizon = run length),
      discretised into ``stairs`` equal constant steps (default 64); the exact
      risk of that staircase is optimised.
    * ``wsd``: SGD with warm-up, stable and decay phases
      (:class:`nqm.WarmupStableDecay`: peak lr, warm-up length, decay start,
      final fraction; decay shape the option ``decay_shape``, default
      ``one_minus_sqrt``), as ``linear_decay`` a staircase of ``stairs`` steps
      over the tuned run length.
    * ``cosine``: SGD with a linear warm-up and cosine decay
      (:class:`nqm.CosineWarmup`: peak lr, warm-up length, final fraction), a
      staircase as above.

    Constant lr with an exponential moving average of the iterates (the way
    2024 critical-batch-size studies reach any target from one run) is ``ema``.
    """

    SGD = "sgd"
    MOMENTUM = "momentum"
    EMA = "ema"
    MOMENTUM_EMA = "momentum_ema"
    PWC = "pwc"
    LINEAR_DECAY = "linear_decay"
    WSD = "wsd"
    COSINE = "cosine"

    @property
    def contained(self) -> tuple[Family, ...]:
        """The families this one directly contains, in tuning order.

        A family contains another when every optimizer of the other is a
        feasible point of this one: :math:`\\beta = 0` turns momentum into SGD,
        :math:`\\gamma = 0` turns averaging off, and a schedule whose pieces all
        hold one lr is a constant lr. So this family's tuned optimum needs no
        more steps than theirs, and the tuner is given their results to start
        from. Containment is transitive: ``momentum_ema`` contains ``momentum``
        and ``ema``, each of which contains ``sgd``.

        Returns:
            ``()`` for ``sgd``; ``(momentum, ema)`` for ``momentum_ema``;
            ``(sgd,)`` for every other family.
        """
        return _CONTAINED[self]


#: Direct containment, one entry per family (see :attr:`Family.contained`).
_CONTAINED: dict[Family, tuple[Family, ...]] = {
    Family.SGD: (),
    Family.MOMENTUM: (Family.SGD,),
    Family.EMA: (Family.SGD,),
    Family.MOMENTUM_EMA: (Family.MOMENTUM, Family.EMA),
    Family.PWC: (Family.SGD,),
    Family.LINEAR_DECAY: (Family.SGD,),
    Family.WSD: (Family.SGD,),
    Family.COSINE: (Family.SGD,),
}


@dataclass(frozen=True)
class ConstantSetting:
    r"""One constant-lr point of the optimizer families, as floats.

    The hyperparameters of :class:`~nqm.Optimizer` with a constant lr
    :math:`\alpha`: the update is
    :math:`m \leftarrow \beta m + P^{-1} g`, :math:`\theta \leftarrow \theta -
    \alpha m`, :math:`\tilde\theta \leftarrow \gamma\tilde\theta +
    (1-\gamma)\theta`, :math:`P = H^p`. The fields are, in order, the arguments
    of :func:`nqm.dynamics.risk_terms`; :func:`nqm.search.steps_to_target` accepts
    a setting wherever it accepts an optimizer with a constant lr, with the same
    result.

    Args:
        lr: :math:`\alpha > 0`.
        momentum: :math:`\beta \in [0, 1)`.
        ema: :math:`\gamma \in [0, 1)`.
        precond_power: :math:`p \in [0, 1]`.

    Raises:
        ValueError: naming the parameter that is out of range (the checks and
            messages of :class:`~nqm.Optimizer`).
    """

    lr: float
    momentum: float = 0.0
    ema: float = 0.0
    precond_power: float = 0.0

    def __post_init__(self) -> None:
        # The float conversions of Optimizer, so a setting and the optimizer built
        # from it hold bit-identical values.
        object.__setattr__(self, "lr", _check_lr(self.lr))
        for name, top in (("momentum", 1.0), ("ema", 1.0), ("precond_power", None)):
            v = float(getattr(self, name))
            ok = math.isfinite(v) and 0.0 <= v and (v < top if top else v <= 1.0)
            if not ok:
                span = "[0, 1)" if top else "[0, 1]"
                raise ValueError(
                    f"{name} must lie in {span}, got {getattr(self, name)!r}"
                )
            object.__setattr__(self, name, v)

    @classmethod
    def of(cls, optimizer: Optimizer) -> ConstantSetting | None:
        """The setting of an optimizer with a constant lr; ``None`` for a schedule."""
        if not isinstance(optimizer.schedule, Constant):
            return None
        return cls(
            optimizer.schedule.lr,
            optimizer.momentum,
            optimizer.ema,
            optimizer.precond_power,
        )

    def optimizer(self) -> Optimizer:
        """The :class:`~nqm.Optimizer` with this constant lr and these values."""
        return Optimizer(
            self.lr,
            momentum=self.momentum,
            ema=self.ema,
            precond_power=self.precond_power,
        )


@dataclass(frozen=True)
class TuneResult:
    """Fewest steps found for one family at one batch size.

    Attributes:
        steps: exact steps to target of ``optimizer`` (int, or ``inf``).
        optimizer: the best configuration found.
        family, batch_size, precond_power, target: the question asked.
        evaluations: loss evaluations spent.
    """

    steps: int | float
    optimizer: Optimizer | None
    family: Family
    batch_size: float
    precond_power: float
    target: float
    evaluations: int = field(default=0, compare=False)
