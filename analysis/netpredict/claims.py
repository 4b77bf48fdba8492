r"""The paper's qualitative claims, judged on numbers with a verdict each.

Zhang et al. (2019, sections 4-5) make four claims about batch-size scaling; each
is judged here from critical batch sizes (with intervals, when measured) and
steps to target:

1. **momentum** extends perfect scaling to larger batches than SGD:
   :math:`B_{\text{crit}}^{\text{momentum}} > B_{\text{crit}}^{\text{sgd}}`;
2. **preconditioning** (K-FAC, Adam) extends it further:
   :math:`B_{\text{crit}}^{\text{kfac}}, B_{\text{crit}}^{\text{adam}} >
   B_{\text{crit}}^{\text{momentum}}`;
3. **averaging and schedules** help at small batch sizes and not at large ones:
   the speed-up :math:`S_{\text{sgd}}(B)/S_{\text{variant}}(B)` of ``ema`` and
   ``linear_decay`` is at least :data:`HELP_RATIO` at the smallest common batch
   size and at most :data:`NO_HELP_RATIO` at the largest;
4. :math:`B_{\text{crit}}` **grows as the target falls**: for each optimizer,
   :math:`B_{\text{crit}}` at the lowest threshold exceeds that at the highest.

A comparison "a > b" of two intervals is *supported* when a's lower end lies
above b's upper end, *contradicted* when a's upper end lies below b's lower end,
and *inconclusive* when they overlap or a number is missing (a prediction is an
interval of zero width). A claim made of several comparisons is contradicted
when any part is, supported when every part is, and inconclusive otherwise.
Nothing here is tuned to agree: the thresholds are fixed constants, and a
contradicted claim is reported as such with its numbers.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "Verdict",
    "Claim",
    "Interval",
    "HELP_RATIO",
    "NO_HELP_RATIO",
    "greater",
    "combine",
    "momentum_claim",
    "preconditioning_claim",
    "averaging_claim",
    "target_claim",
    "judge_claims",
]

#: A speed-up at least this large "helps".
HELP_RATIO = 1.25
#: A speed-up at most this large does "not help".
NO_HELP_RATIO = 1.1


class Verdict(enum.StrEnum):
    """The outcome of a claim."""

    SUPPORTED = "supported"
    CONTRADICTED = "contradicted"
    INCONCLUSIVE = "inconclusive"


class Claim(enum.StrEnum):
    """The four claims, in the order of the module docstring."""

    MOMENTUM = "momentum extends perfect scaling to larger batches than SGD"
    PRECONDITIONING = "preconditioning (K-FAC, Adam) extends it further"
    AVERAGING = "averaging and schedules help at small batch sizes, not at large"
    TARGET = "B_crit grows as the target loss falls"


@dataclasses.dataclass(frozen=True)
class Interval:
    """A value with an interval (``low = high = value`` for a prediction)."""

    value: float
    low: float
    high: float

    @classmethod
    def point(cls, value: float) -> Interval:
        """A value without uncertainty."""
        return cls(float(value), float(value), float(value))

    def as_dict(self) -> dict[str, float]:
        """``{"value", "low", "high"}``."""
        return dataclasses.asdict(self)


def greater(a: Interval | None, b: Interval | None) -> Verdict:
    """The verdict on "a > b" (see the module docstring)."""
    if a is None or b is None:
        return Verdict.INCONCLUSIVE
    vals = (a.value, a.low, a.high, b.value, b.low, b.high)
    if not all(math.isfinite(v) for v in vals):
        return Verdict.INCONCLUSIVE
    if a.low > b.high:
        return Verdict.SUPPORTED
    if a.high < b.low:
        return Verdict.CONTRADICTED
    return Verdict.INCONCLUSIVE


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """Contradicted if any part is; supported if all (and at least one) are."""
    vs = list(verdicts)
    if Verdict.CONTRADICTED in vs:
        return Verdict.CONTRADICTED
    if vs and all(v is Verdict.SUPPORTED for v in vs):
        return Verdict.SUPPORTED
    return Verdict.INCONCLUSIVE


def _result(claim: Claim, verdict: Verdict, parts: list[dict[str, Any]]) -> dict:
    return {"claim": claim.value, "verdict": verdict.value, "parts": parts}


def _compare(name: str, a: Interval | None, b: Interval | None) -> dict[str, Any]:
    return {
        "comparison": name,
        "a": None if a is None else a.as_dict(),
        "b": None if b is None else b.as_dict(),
        "verdict": greater(a, b).value,
    }


def momentum_claim(b_crit: Mapping[str, Interval]) -> dict[str, Any]:
    """Claim 1 from the critical batch sizes keyed by optimizer label."""
    part = _compare(
        "B_crit momentum > B_crit sgd", b_crit.get("momentum"), b_crit.get("sgd")
    )
    return _result(Claim.MOMENTUM, Verdict(part["verdict"]), [part])


def preconditioning_claim(b_crit: Mapping[str, Interval]) -> dict[str, Any]:
    """Claim 2: each measured preconditioned optimizer against momentum."""
    parts = [
        _compare(
            f"B_crit {name} > B_crit momentum", b_crit[name], b_crit.get("momentum")
        )
        for name in ("kfac", "adam")
        if name in b_crit
    ]
    verdict = combine(Verdict(p["verdict"]) for p in parts)
    return _result(Claim.PRECONDITIONING, verdict, parts)


def _speedup(base: Mapping[int, float], variant: Mapping[int, float], b: int) -> float:
    s0, s1 = base[b], variant[b]
    if not (math.isfinite(s0) and math.isfinite(s1) and s1 > 0):
        return math.nan
    return s0 / s1


def averaging_claim(steps: Mapping[str, Mapping[int, float]]) -> dict[str, Any]:
    """Claim 3 from steps to target keyed by optimizer label, then batch size."""
    parts = []
    base = steps.get("sgd")
    for name in ("ema", "linear_decay"):
        variant = steps.get(name)
        if base is None or variant is None:
            continue
        common = sorted(
            b
            for b in set(base) & set(variant)
            if math.isfinite(base[b]) and math.isfinite(variant[b])
        )
        if len(common) < 2:
            parts.append({"comparison": name, "verdict": Verdict.INCONCLUSIVE.value})
            continue
        small = _speedup(base, variant, common[0])
        large = _speedup(base, variant, common[-1])
        if small >= HELP_RATIO and large <= NO_HELP_RATIO:
            verdict = Verdict.SUPPORTED
        elif small <= NO_HELP_RATIO or large >= HELP_RATIO:
            verdict = Verdict.CONTRADICTED
        else:
            verdict = Verdict.INCONCLUSIVE
        parts.append(
            {
                "comparison": f"speed-up of {name} over sgd",
                "small_batch": common[0],
                "speedup_small": small,
                "large_batch": common[-1],
                "speedup_large": large,
                "verdict": verdict.value,
            }
        )
    verdict = combine(Verdict(p["verdict"]) for p in parts)
    return _result(Claim.AVERAGING, verdict, parts)


def target_claim(
    b_crit_by_threshold: Mapping[str, Mapping[float, Interval]],
) -> dict[str, Any]:
    """Claim 4 from critical batch sizes keyed by optimizer label, then threshold."""
    parts = []
    for name, by_tau in sorted(b_crit_by_threshold.items()):
        if len(by_tau) < 2:
            continue
        low, high = min(by_tau), max(by_tau)
        part = _compare(
            f"{name}: B_crit at {low:g} > B_crit at {high:g}",
            by_tau[low],
            by_tau[high],
        )
        parts.append(part)
    verdict = combine(Verdict(p["verdict"]) for p in parts)
    return _result(Claim.TARGET, verdict, parts)


def judge_claims(
    b_crit: Mapping[str, Interval],
    steps: Mapping[str, Mapping[int, float]],
    b_crit_by_threshold: Mapping[str, Mapping[float, Interval]],
) -> list[dict[str, Any]]:
    """The four claims, each ``{"claim", "verdict", "parts"}``.

    Args:
        b_crit: critical batch size at the target, per optimizer label.
        steps: steps to target per optimizer label and batch size.
        b_crit_by_threshold: critical batch size per label and threshold.
    """
    return [
        momentum_claim(b_crit),
        preconditioning_claim(b_crit),
        averaging_claim(steps),
        target_claim(b_crit_by_threshold),
    ]
