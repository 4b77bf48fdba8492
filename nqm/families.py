"""The optimizer families that the tuner searches, how they nest, and its result.

Both the step search (:mod:`nqm.search`) and the tuner behind
:func:`nqm.search.best_steps` import these names from here, and studies that
plan which families to tune first (``analysis.scaling``) read the nesting from
:attr:`Family.contained`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .optimizer import Optimizer

__all__ = ["Family", "TuneResult", "MAX_STEPS"]

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
    """

    SGD = "sgd"
    MOMENTUM = "momentum"
    EMA = "ema"
    MOMENTUM_EMA = "momentum_ema"
    PWC = "pwc"
    LINEAR_DECAY = "linear_decay"

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
}


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
