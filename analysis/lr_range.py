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

#: Relative accuracy of the interval's ends: each end lies in ``[x, x(1+RANGE_RTOL)]``
#: with ``x`` certified inside (exact risk) and ``x(1+RANGE_RTOL)`` outside.
RANGE_RTOL = 1e-6
#: An optimum is degenerate when its interval spans more than this ratio
#: (``lr_max / lr_min``): wider than a marker on the figure's log axis.
DEGENERATE_RATIO = 1.1
#: The first probe beyond the tuned lr is this relative step; it grows 8-fold.
_FIRST_STEP = 1e-3
#: Probes give up (the end is unbounded) after this many 8-fold growths.
_MAX_GROWTHS = 30


@dataclasses.dataclass(frozen=True)
class LrRange:
    """The lrs around a tuned lr that reach the target in its step count.

    Attributes:
        lr_min: the smallest lr of the interval (certified to reach the target in
            ``steps`` steps, exactly).
        lr_max: the largest one (certified likewise); ``inf`` if no probe up to
            :math:`8^{30}` times the tuned lr left the interval.
        steps: the step count :math:`S^*` shared by the interval.
    """

    lr_min: float
    lr_max: float
    steps: int

    @property
    def degenerate(self) -> bool:
        """Whether the interval is wider than :data:`DEGENERATE_RATIO`."""
        return self.lr_max > DEGENERATE_RATIO * self.lr_min


def optimal_lr_range(
    problem: nqm.NQMProblem,
    optimizer: nqm.Optimizer,
    batch_size: int,
    target: float,
    steps: int,
) -> LrRange:
    r"""The interval of constant lrs around ``optimizer.lr`` that take ``steps``.

    An lr :math:`\alpha` is *inside* when :math:`E[L(\theta_{S-1})] > L^*
    \ge E[L(\theta_S)]` with the other hyperparameters of ``optimizer`` (momentum,
    averaging, preconditioning power) unchanged: it reaches the target in
    exactly :math:`S` steps. From the tuned lr the ends are bracketed by probes
    that grow 8-fold, then bisected (geometrically) to :data:`RANGE_RTOL`. Both
    returned ends are inside by an exact evaluation.

    Args:
        problem: the NQM.
        optimizer: the tuned optimizer; constant lr :math:`\alpha > 0`.
        batch_size: :math:`B \ge 1`.
        target: :math:`L^* > 0`.
        steps: :math:`S \ge 1`, the tuned optimizer's steps to target.

    Returns:
        The :class:`LrRange`.

    Raises:
        ValueError: if the schedule is not constant, ``steps < 1``, or the tuned
            lr itself does not take exactly ``steps`` steps.
    """
    if not isinstance(optimizer.schedule, nqm.Constant):
        raise ValueError("optimizer must have a constant lr schedule")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    steps = int(steps)
    lr = float(optimizer.schedule.lr)
    check = np.array([steps - 1, steps])

    def inside(a: float) -> bool:
        if not (a > 0 and math.isfinite(a)):
            return False
        before, at = nqm.expected_loss(
            problem, dataclasses.replace(optimizer, lr=a), batch_size, check
        )
        return bool(before > target >= at)

    if not inside(lr):
        raise ValueError(
            f"steps: the tuned lr {lr!r} does not reach the target in exactly "
            f"{steps} steps"
        )
    return LrRange(_end(inside, lr, -1), _end(inside, lr, +1), steps)


def _end(inside: Any, lr: float, direction: int) -> float:
    """The end of the interval on one side of ``lr`` (``direction`` ±1)."""
    step = _FIRST_STEP
    last_in = lr
    for _ in range(_MAX_GROWTHS):
        probe = lr * (1.0 + step) ** direction
        if not inside(probe):
            break
        last_in, step = probe, 8.0 * step
    else:
        return math.inf if direction > 0 else 0.0
    # Geometric bisection between an inside and an outside lr.
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

    Args:
        problem: the NQM the records were tuned on.
        records: tidy study records (:data:`analysis.scaling.RECORD_COLUMNS`).

    Returns:
        Rows ``{"family", "precond_power", "target", "batch_size", "momentum",
        "steps", "lr_min", "lr_max", "effective_lr_min", "effective_lr_max",
        "degenerate"}``, one per such record, in record order (the effective lr
        is :math:`\\alpha/(1-\\beta)`).
    """
    rows = []
    for r in records:
        steps = r.get("steps")
        if r.get("schedule") != "constant" or not (0 < steps < math.inf):
            continue
        opt = nqm.Optimizer(
            r["lr"], r["momentum"], r["ema"], precond_power=r["precond_power"]
        )
        rng = optimal_lr_range(problem, opt, r["batch_size"], r["target"], steps)
        scale = 1.0 / (1.0 - r["momentum"])
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
                "effective_lr_min": rng.lr_min * scale,
                "effective_lr_max": rng.lr_max * scale,
                "degenerate": rng.degenerate,
            }
        )
    return rows
