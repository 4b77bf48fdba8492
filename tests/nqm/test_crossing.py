"""The interval bounds behind the certified first crossing, against oracles.

:class:`nqm._closed.MeanResponse` bounds each mode's squared mean response
:math:`f_\\tau^2` (and their weighted sum) from below over a range of steps;
:func:`nqm.crossing.steps_to_target` prunes intervals with them. The oracles:
the 50-digit binary powering of the update rule (``nqm_oracles.mp_mode_terms``)
for the per-step responses, and step-by-step propagation of the second moments
(``nqm_oracles.brute_force_problem_loss``) for the first crossing.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from nqm_oracles import brute_force_problem_loss, mp_mode_terms

from nqm import NQMProblem, Optimizer
from nqm._closed import MeanResponse
from nqm._system import Features
from nqm.crossing import steps_to_target

#: Digits of the mpmath oracle.
DPS = 50

# Curvatures and learning rates are short binary fractions, so that the double
# product s = lr h the bounds start from is exact (the oracle uses lr and h).
CURVATURES = np.array([2.0**-k for k in (0, 1, 3, 6, 10, 14)])

# (lr, momentum, ema, steps a, span c - a): heavy ball turning slowly at a long
# horizon, turning fast, next to critical damping; averaging alone; both.
SETTINGS = [
    (2.0**-12, 0.9999, 0.0, 300_000, 8),
    (1.5, 0.9, 0.0, 150, 6),
    (0.25, 0.5, 0.0, 40, 5),
    (0.75, 0.0, 0.99, 2_000, 7),
    (0.375, 0.95, 0.999, 5_000, 9),
]


def _exact_f_sq(lr, beta, gamma, steps):
    """Per mode and step, :math:`f_\\tau^2` in 50 digits, shape ``(T, M)``."""
    out = np.empty((len(steps), CURVATURES.size))
    with mpmath.workdps(DPS):
        for m, h in enumerate(CURVATURES):
            terms = mp_mode_terms(lr, h, 0.0, beta, gamma, steps)
            out[:, m] = [float(f_sq) for f_sq, _ in terms]
    return out


@pytest.mark.parametrize(("lr", "beta", "gamma", "a", "span"), SETTINGS)
def test_interval_bounds_lie_below_every_step(lr, beta, gamma, a, span):
    """Per mode and for a weighted sum, the bounds on ``[a, c]`` are at most
    the exact response at every step of it."""
    c = a + span
    exact = _exact_f_sq(lr, beta, gamma, list(range(a, c + 1)))
    resp = MeanResponse(CURVATURES, lr, beta, gamma, Features(beta > 0, gamma > 0))
    per_mode = resp.interval_bound(a, c)
    assert np.all(per_mode <= exact.min(axis=0))
    weights = np.random.default_rng(3).uniform(0.1, 1.0, CURVATURES.size)
    total = resp.total_chord(a, c, weights)
    assert total <= (exact @ weights).min()
    # the bound from a alone, over the same span, is also kept
    from_a, _ = resp.bound(a, span)
    assert np.all(per_mode >= from_a)


#: Below the smallest double: an exact response that underflows there is 0.
UNDERFLOW = 1e-300


@pytest.mark.parametrize(
    ("lr", "beta", "gamma"),
    [
        (1.5, 0.9, 0.0),  # complex momentum roots
        (2.375, 0.25, 0.0),  # negative real momentum roots (stable)
        (1.5, 0.0, 0.9),  # averaging, 1 - s < 0
        (1.75, 0.0, 0.0),  # plain SGD, 1 - s < 0
        (0.375, 0.95, 0.999),  # both
        (2.0**-8, 0.87890625 + 1e-9, 0.0),  # next to critical damping at h = 1
        (2.0**-8, 0.87890625 - 1e-9, 0.93),  # and an average at a root
    ],
)
def test_response_at_a_step_is_within_its_error_bound(lr, beta, gamma):
    """:math:`f_t` of :meth:`MeanResponse.terms_at` is within its certified error
    of the 50-digit response, up to horizons where the phase is ~1e9 radians."""
    resp = MeanResponse(CURVATURES, lr, beta, gamma, Features(beta > 0, gamma > 0))
    steps = [0, 1, 2, 999, 10**6 + 1, 10**9 + 1]
    with mpmath.workdps(DPS):
        for m, h in enumerate(CURVATURES):
            exact = [
                mpmath.sqrt(f_sq)
                for f_sq, _ in mp_mode_terms(lr, h, 0.0, beta, gamma, steps)
            ]
            for t, want in zip(steps, exact, strict=True):
                f, err, mags = resp.terms_at(t)
                assert abs(abs(f[m]) - float(want)) <= err[m] + UNDERFLOW, (h, t)
                assert sum(x[m] for x in mags) >= float(want) - UNDERFLOW


def test_response_error_bound_over_random_turns_against_high_precision():
    """Underdamped heavy ball at random moduli (down to 1e-12 from the unit
    circle) and turns, up to 1e9 steps: :math:`f_t` within its certified error
    of the 50-digit response, and every term's modulus bound above the exact
    response."""
    rng = np.random.default_rng(11)
    for _ in range(12):
        beta = 1.0 - 10.0 ** -rng.uniform(0.1, 12.0)
        lo, hi = (1.0 - np.sqrt(beta)) ** 2, (1.0 + np.sqrt(beta)) ** 2
        lr = float(rng.uniform(lo, min(hi, 2.0 * (1.0 + beta))))
        resp = MeanResponse(np.ones(1), lr, beta, 0.0, Features(True, False))
        steps = [1, 3, 999, 10**6, 10**9 + 1]
        with mpmath.workdps(DPS):
            exact = [
                mpmath.sqrt(f) for f, _ in mp_mode_terms(lr, 1.0, 0.0, beta, 0.0, steps)
            ]
        for t, want in zip(steps, exact, strict=True):
            f, err, mags = resp.terms_at(t)
            assert abs(abs(f[0]) - float(want)) <= err[0] + UNDERFLOW, (lr, beta, t)
            assert sum(x[0] for x in mags) >= float(want) - UNDERFLOW


def test_chord_bound_is_tight_where_the_eigenvalues_turn_slowly():
    """Long heavy-ball run: over a few steps the chord bound loses the square
    of the span times the eigenvalues' turn, not the span times it; it lies
    within 1e-5 of the exact minimum where the bound from ``a`` alone does
    not."""
    lr, beta, gamma, a, span = 2.0**-24, 0.99999, 0.0, 2_000_000, 8
    c = a + span
    exact = _exact_f_sq(lr, beta, gamma, list(range(a, c + 1))).min(axis=0)
    resp = MeanResponse(CURVATURES, lr, beta, gamma, Features(True, False))
    chord = resp.interval_bound(a, c)
    from_a, _ = resp.bound(a, span)
    big = exact > 1e-30 * exact.max()
    assert np.all(chord[big] >= exact[big] * (1.0 - 1e-5))
    assert np.any(from_a[big] < exact[big] * (1.0 - 1e-4))


#: A target lies at least this far (relative) from every step's loss, far above
#: the rounding of either computation.
TARGET_MARGIN = 1e-8


def _last_record(losses):
    """``(step, target)``: the last step whose loss falls below every earlier
    one by :data:`TARGET_MARGIN` at least, and a target halfway down to it (so
    that step is its first crossing)."""
    before = np.minimum.accumulate(losses)[:-1]  # lowest loss before each step
    drop = (before - losses[1:]) / losses[1:]
    at = int(np.flatnonzero(drop > 2.0 * TARGET_MARGIN)[-1]) + 1
    return at, 0.5 * (losses[at] + before[at - 1])


@pytest.mark.parametrize(
    ("lr", "beta", "batch", "horizon"),
    [(0.05, 0.995, 64.0, 3_000), (0.01, 0.9, 1e5, 400), (0.02, 0.999, 1e6, 4_000)],
)
def test_first_crossing_of_momentum_matches_step_by_step(lr, beta, batch, horizon):
    """The certified first crossing equals the first step at or below target of
    the step-by-step loss (a target first reached late in the run, at a new
    low)."""
    problem = NQMProblem.power_law(12)
    steps = np.arange(horizon + 1)
    losses = brute_force_problem_loss(
        problem, lambda _: lr, beta, 0.0, 0.0, batch, steps
    )
    at, target = _last_record(losses)
    assert at > horizon // 4  # a late crossing: many intervals pruned before it
    opt = Optimizer(lr=lr, momentum=beta)
    assert steps_to_target(problem, opt, batch, target) == at
    assert steps_to_target(problem, opt, batch, target, guess=max(1, at // 2)) == at
