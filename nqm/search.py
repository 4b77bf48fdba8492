"""Steps to a target loss: exact (:mod:`nqm.crossing`) and tuned over families.

``steps_to_target`` and ``examples_to_target`` are the certified first crossing of
:mod:`nqm.crossing`; ``best_steps`` tunes the hyperparameters of a family for the
fewest of those steps (the tuner, :mod:`nqm._tuning`, certifies its candidates with
``steps_to_target``).
"""

from __future__ import annotations

import numpy as np

from ._tuning import tune, tune_powers
from .crossing import _check_target, examples_to_target, steps_to_target
from .dynamics import validate_batch_size
from .families import MAX_STEPS, Family, TuneResult
from .problem import NQMProblem

__all__ = [
    "steps_to_target",
    "examples_to_target",
    "Family",
    "TuneResult",
    "best_steps",
    "MAX_STEPS",
]


def best_steps(
    problem: NQMProblem,
    family: Family | str,
    batch_size,
    target: float,
    precond_power: float = 0.0,
    **options,
):
    """Tune a family's hyperparameters for the fewest exact steps to ``target``.

    Args:
        problem: the NQM.
        family: a :class:`Family` or its name.
        batch_size: :math:`B \\ge 1`, or a sequence of them (vectorised; returns a
            list).
        target: loss to reach (``> 0``).
        precond_power: :math:`p \\in [0, 1]`, or a sequence of powers (returns
            one result, or one list over batch sizes, per power). The schedule
            families (``pwc``, ``linear_decay``, ``wsd``, ``cosine``) then tune
            every (power, batch size) in one batched L-BFGS; the constant-lr families tune the powers in turn (different
            powers share no evaluations). Results equal those of one call per
            power.
        **options: ``surrogate_bins`` (128; modes of the binned surrogate),
            ``grid`` (per-coordinate grid sizes), ``pieces`` (10, for ``pwc``),
            ``stairs`` (64, for ``linear_decay``, ``wsd`` and ``cosine``),
            ``decay_shape`` (``wsd`` only: ``one_minus_sqrt`` (default) or
            ``linear``), ``polish`` (1; rounds of local
            refinement at one step fewer, on a finer surrogate, each certified
            exactly), ``baseline`` (already tuned results of a family
            this one contains, one per batch size, e.g. SGD's; computed if
            omitted), ``contained`` (``momentum_ema`` only: the results of
            ``momentum`` and of ``ema``, which it also contains; tuned here if
            omitted), ``fixed_momentum`` (``momentum`` and ``momentum_ema``
            only: keep :math:`\\beta` at this value and tune the rest, as in
            Figure 14b; such an optimizer does not contain SGD, so no baseline is
            used), ``device`` (``"cpu"``; the torch device on which the schedule
            families run their L-BFGS, e.g. ``"cuda"``). See
            :mod:`nqm._tuning`.

    With a sequence of powers, ``baseline`` and ``contained`` hold one entry per
    power.

    Returns:
        A :class:`TuneResult`, or a list of them for a sequence of batch sizes;
        for a sequence of powers, a list of those, one per power.

    Raises:
        ValueError: for an unknown family, a bad target, batch size or power.
    """
    try:
        fam = Family(family)
    except ValueError:
        raise ValueError(
            f"unknown family {family!r}; choose from {[f.value for f in Family]}"
        ) from None
    tg = _check_target(target)
    one_power = np.ndim(precond_power) == 0
    try:
        powers = np.atleast_1d(np.asarray(precond_power, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(
            f"precond_power must be a number or a sequence, got {precond_power!r}"
        ) from None
    if powers.ndim != 1 or powers.size == 0:
        raise ValueError(
            f"precond_power must be a number or a non-empty 1-D sequence, "
            f"got {precond_power!r}"
        )
    for p in powers:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"precond_power must lie in [0, 1], got {p!r}")
    scalar = np.ndim(batch_size) == 0
    bs = np.atleast_1d(validate_batch_size(batch_size)).astype(np.float64)
    if one_power:
        results = tune(problem, fam, bs, tg, float(powers[0]), **options)
        return results[0] if scalar else results
    opts = dict(options)
    opts["baselines"] = opts.pop("baseline", None)
    per_power = tune_powers(problem, fam, bs, tg, powers.tolist(), **opts)
    return [r[0] if scalar else r for r in per_power]
