r"""The range of learning rates that are all optimal.

A tuned optimizer reaches the target in :math:`S^*` steps, the fewest any lr
achieves (the other hyperparameters held at their tuned values). Every lr
:math:`\alpha'` with

.. math:: E[L(\theta_{S^*-1})] > L^* \ge E[L(\theta_{S^*})]

(exact expected risk, :func:`nqm.expected_loss`) reaches it in the same number of
steps, so the optimum is an interval of lrs rather than a point. Far from the
noise-dominated regime the interval is narrow (of relative width about
:math:`1/S^*`); where :math:`S^*` is a few steps (for example preconditioning
power :math:`p = 1` at the largest batch sizes, where one step of lr near 1
removes the whole transient) it spans a wide range, and a single tuned lr is an
arbitrary point of it. :func:`optimal_lr_range` finds the interval around the
tuned lr; the ``optimal_lr`` figure draws it where it is wide.

References:
    Zhang et al. (2019), appendix E.6 (optimal learning rate vs batch size).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

import nqm

__all__ = [
    "LrRange",
    "optimal_lr_range",
    "optimal_lr_ranges",
    "RANGE_RTOL",
    "DEGENERATE_RATIO",
]

#: Relative accuracy of the interval's ends: each end ``x`` is certified inside
#: (exact risk) and ``x(1+RANGE_RTOL)`` beyond it is outside.
RANGE_RTOL = 1e-3
#: An optimum is degenerate when its interval spans more than this ratio
#: (``effective_lr_max / effective_lr_min``): wider than a marker on the figure's
#: log axis.
DEGENERATE_RATIO = 1.1
#: The first probe beyond the tuned value is this relative step (an end within
#: it is then known to :data:`RANGE_RTOL` at once); it grows 8-fold.
_FIRST_STEP = RANGE_RTOL
#: Probes give up (the end is unbounded) after this many 8-fold growths.
_MAX_GROWTHS = 30
#: Smallest :math:`1-\beta` probed: a momentum still optimal this close to 1 is
#: taken to be optimal up to 1 (the effective lr is then unbounded).
ONE_MINUS_BETA_FLOOR = 1e-12


@dataclasses.dataclass(frozen=True)
class LrRange:
    """The hyperparameters around a tuned optimum that take the same steps.

    Attributes:
        lr_min: the smallest lr :math:`\alpha` (others held) that reaches the
            target in ``steps`` steps, certified by the exact risk.
        lr_max: the largest one (``inf`` if unbounded).
        steps: the step count :math:`S^*` shared by the interval.
        momentum_min: with the momentum varied (lr held): the smallest
            :math:`\beta` of the interval; ``None`` when not varied.
        momentum_max: the largest; 1 when every :math:`\beta < 1` is optimal
            (e.g. :math:`S^* = 1`, where :math:`\beta` never acts).
        effective_lr_min: the smallest :math:`\alpha/(1-\beta)` over both
            intervals (each with the other hyperparameter at its tuned value).
        effective_lr_max: the largest (``inf`` when ``momentum_max`` is 1).
    """

    lr_min: float
    lr_max: float
    steps: int
    momentum_min: float | None
    momentum_max: float | None
    effective_lr_min: float
    effective_lr_max: float

    @property
    def degenerate(self) -> bool:
        """Whether the effective-lr interval is wider than :data:`DEGENERATE_RATIO`."""
        return self.effective_lr_max > DEGENERATE_RATIO * self.effective_lr_min


def optimal_lr_range(
    problem: nqm.NQMProblem,
    optimizer: nqm.Optimizer,
    batch_size: int,
    target: float,
    steps: int,
    *,
    vary_momentum: bool = False,
) -> LrRange:
    r"""The intervals of lr (and momentum) around a tuned optimum that take ``steps``.

    A setting is *inside* when :math:`E[L(\theta_{S-1})] > L^* \ge E[L(\theta_S)]`
    (exact risk): it reaches the target in exactly :math:`S` steps. From the
    tuned value, each end is bracketed by probes that grow 8-fold, then bisected
    geometrically to :data:`RANGE_RTOL`; every returned end is inside by an exact
    evaluation. The lr interval varies :math:`\alpha` with the other
    hyperparameters held; with ``vary_momentum`` a second interval varies
    :math:`\beta` (as :math:`1-\beta`, geometrically, down to
    :data:`ONE_MINUS_BETA_FLOOR`) with :math:`\alpha` held. The effective lr
    :math:`\alpha/(1-\beta)` spans both.

    Args:
        problem: the NQM.
        optimizer: the tuned optimizer; constant lr :math:`\alpha > 0`.
        batch_size: :math:`B \ge 1`.
        target: :math:`L^* > 0`.
        steps: :math:`S \ge 1`, the tuned optimizer's steps to target.
        vary_momentum: also find the interval of :math:`\beta \in [0, 1)`.

    Returns:
        The :class:`LrRange`.

    Raises:
        ValueError: if the schedule is not constant, ``steps < 1``, or the tuned
            optimizer itself does not take exactly ``steps`` steps.
    """
    if not isinstance(optimizer.schedule, nqm.Constant):
        raise ValueError("optimizer must have a constant lr schedule")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    steps = int(steps)
    lr, beta = float(optimizer.schedule.lr), float(optimizer.momentum)
    check = np.array([steps - 1, steps])

    def inside(a: float, b: float) -> bool:
        if not (a > 0 and math.isfinite(a) and 0.0 <= b < 1.0):
            return False
        opt = dataclasses.replace(optimizer, lr=a, momentum=b)
        before, at = nqm.expected_loss(problem, opt, batch_size, check)
        return bool(before > target >= at)

    if not inside(lr, beta):
        raise ValueError(
            f"steps: the tuned optimizer (lr {lr!r}) does not reach the target in "
            f"exactly {steps} steps"
        )

    def lr_in(a: float) -> bool:
        return inside(a, beta)

    lo = _end(lr_in, lr, -1, 0.0)
    hi = _end(lr_in, lr, +1, math.inf)
    eff = (lo / (1.0 - beta), hi / (1.0 - beta))
    if not vary_momentum:
        return LrRange(lo, hi, steps, None, None, *eff)

    def gap_in(u: float) -> bool:  # u = 1 - beta
        return inside(lr, 1.0 - u)

    gap = 1.0 - beta
    u_lo = _end(gap_in, gap, -1, ONE_MINUS_BETA_FLOOR)
    u_hi = _end(gap_in, gap, +1, 1.0) if gap < 1.0 else 1.0
    if u_lo <= ONE_MINUS_BETA_FLOOR:
        u_lo = 0.0  # optimal as close to 1 as probed: every beta < 1
    eff_max = math.inf if u_lo == 0.0 else max(eff[1], lr / u_lo)
    return LrRange(
        lo, hi, steps, 1.0 - u_hi, 1.0 - u_lo, min(eff[0], lr / u_hi), eff_max
    )


def _end(inside: Any, x: float, direction: int, limit: float) -> float:
    """The end of the interval of ``inside`` around ``x`` towards ``limit``
    (``direction`` ±1); ``limit`` itself when the interval reaches it."""
    step = _FIRST_STEP
    last_in = x
    for _ in range(_MAX_GROWTHS):
        probe = x * (1.0 + step) ** direction
        if (probe - limit) * direction >= 0:
            if limit in (0.0, math.inf) or inside(limit):
                return limit
            probe = limit
            break
        if not inside(probe):
            break
        last_in, step = probe, 8.0 * step
    else:
        return limit
    # Geometric bisection between an inside and an outside value.
    good, bad = last_in, probe
    while abs(math.log(bad / good)) > math.log1p(RANGE_RTOL):
        mid = math.sqrt(good * bad)
        if inside(mid):
            good = mid
        else:
            bad = mid
    return good


def optimal_lr_ranges(
    problem: nqm.NQMProblem, records: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """:func:`optimal_lr_range` of every constant-lr record with finite steps > 0.

    The momentum is varied too for the ``momentum`` family's records whose
    momentum was tuned (``momentum_tuned`` true or absent).

    Args:
        problem: the NQM the records were tuned on.
        records: tidy study records (:data:`analysis.scaling.RECORD_COLUMNS`).

    Returns:
        Rows ``{"family", "precond_power", "target", "batch_size", "momentum",
        "steps", "lr_min", "lr_max", "momentum_min", "momentum_max",
        "effective_lr_min", "effective_lr_max", "degenerate"}``, one per such
        record, in record order.
    """
    rows = []
    for r in records:
        steps = r.get("steps")
        if r.get("schedule") != "constant" or not (0 < steps < math.inf):
            continue
        opt = nqm.Optimizer(
            r["lr"], r["momentum"], r["ema"], precond_power=r["precond_power"]
        )
        vary = r["family"] == "momentum" and r.get("momentum_tuned", True)
        rng = optimal_lr_range(
            problem, opt, r["batch_size"], r["target"], steps, vary_momentum=vary
        )
        rows.append(
            {
                "family": r["family"],
                "precond_power": r["precond_power"],
                "target": r["target"],
                "batch_size": r["batch_size"],
                "momentum": r["momentum"],
                "steps": rng.steps,
                "lr_min": rng.lr_min,
                "lr_max": rng.lr_max,
                "momentum_min": rng.momentum_min,
                "momentum_max": rng.momentum_max,
                "effective_lr_min": rng.effective_lr_min,
                "effective_lr_max": rng.effective_lr_max,
                "degenerate": rng.degenerate,
            }
        )
    return rows
