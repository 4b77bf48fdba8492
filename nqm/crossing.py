"""Steps to a target loss, exactly: the certified first crossing.

``steps_to_target`` returns the first integer :math:`t` with
:math:`E[L(\\theta_t)] \\le \\text{target}`: loss curves need not be monotone
(momentum oscillates; schedules change the rate), so it never bisects blindly. It
runs a leftmost-first branch-and-bound over intervals of steps, pruning an
interval :math:`[a, b]` only when a *certified* lower bound of the loss on it
exceeds the target:

.. math:: \\min_{a \\le t \\le b} E[L_t] \\ge \\underline D(a, b) + N(a)/B,

where :math:`N` (accumulated noise) never decreases and :math:`\\underline D`
bounds the deterministic part (monotone modes: :math:`f_b^2`; any stable mode:
the larger of a Lipschitz bound from :math:`t=a` and a chord bound between
:math:`a` and :math:`b+1`, or the chord bound of the weighted sum over modes,
see :class:`nqm._closed.MeanResponse`; the chords shrink with the square of the
interval, so next to the crossing of a long run few intervals are split). A
noise term known at an earlier step stands in for :math:`N(a)` where it
suffices, and :math:`N(a)` is not evaluated where even a noise term known at
a later step (an upper bound) would not prune. Short intervals are scanned
step by step.

"""

from __future__ import annotations

import bisect
import math

import numpy as np

from ._closed import MeanResponse
from ._system import Features
from .arguments import validate_batch_size, validate_step_limit
from .batch_schedule import BatchSchedule
from .dynamics import (
    PieceStates,
    _modes,
    _scheduled_terms,
    risk_terms,
    split_batch,
)
from .families import MAX_STEPS, ConstantSetting
from .optimizer import Optimizer
from .problem import NQMProblem

__all__ = ["steps_to_target", "examples_to_target"]

_SCAN = 4
#: Constant-lr curves scan leaves of up to this many (steps x modes) at once: a
#: leaf is one vectorised evaluation, so small problems scan long runs of steps
#: instead of splitting them into many tiny intervals.
_SCAN_ELEMENTS = 1 << 15
_SCAN_MAX = 4096
#: Relative margin by which the piecewise floor of a plain-SGD schedule
#: (:meth:`_Curve._piecewise_floor`) and the constant-lr bounds of
#: :meth:`_Curve.lower_bound` are lowered for rounding (far above the accuracy
#: to which the exact losses they are compared with are certified).
_FLOOR_RTOL = 1e-9


def _check_target(target) -> float:
    tg = float(target)
    if not math.isfinite(tg) or tg <= 0:
        raise ValueError(f"target must be a finite positive loss, got {target!r}")
    return tg


class _Curve:
    r"""Loss of one optimizer at one batch size, with certified interval bounds.

    Three regimes:

    * constant lr: :math:`N` (accumulated noise) never decreases; :math:`D` is
      bounded per mode (monotone modes by :math:`f_b^2`, all stable modes by the
      Lipschitz and chord bounds of :class:`nqm._closed.MeanResponse`) or as a
      weighted sum (its chord bound);
    * plain SGD with a schedule: per mode, :math:`F` shrinks at every stable step
      and the noise response obeys :math:`V_t \ge V_a F_b / F_a` on
      :math:`[a, b]`; after the schedule's constant tail each mode's :math:`V`
      moves monotonically toward its steady state;
    * momentum or averaging with a changing schedule: no bound; scanned.
    """

    def __init__(
        self,
        problem: NQMProblem,
        optimizer: Optimizer | ConstantSetting,
        batch_size: float,
        batch: BatchSchedule | None = None,
    ):
        # With a batch schedule, ``batch_size`` is 1 and each update's 1/B_s is
        # inside the noise term; the lr and batch pieces are propagated together.
        if batch is not None and isinstance(optimizer, ConstantSetting):
            optimizer = optimizer.optimizer()
        self.problem, self.opt, self.b = problem, optimizer, float(batch_size)
        self.batch = batch
        # a constant lr is read as its floats, the arguments of risk_terms
        self.setting = (
            None
            if batch is not None
            else optimizer
            if isinstance(optimizer, ConstantSetting)
            else ConstantSetting.of(optimizer)
        )
        self.constant = self.setting is not None
        self.hh, self.wd, self.wn = _modes(problem, optimizer.precond_power)
        self.feats = Features(optimizer.momentum > 0, optimizer.ema > 0)
        self.plain = not self.feats.momentum and not self.feats.ema
        self.evaluations = 0
        self.target = math.inf  # set by steps_to_target
        self._mean: MeanResponse | None = None
        self._cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        # constant lr: every evaluated noise term, by step
        self._noise_steps: list[int] = []
        self._noise_vals: list[float] = []
        if self.constant:
            s = self.setting.lr * self.hh
            if self.plain:
                self.monotone = np.abs(1.0 - s) <= 1.0
            elif not self.feats.momentum:
                self.monotone = s <= 1.0  # averaging a positive decreasing sequence
            else:
                self.monotone = np.zeros(self.hh.shape, dtype=bool)
            self.all_monotone = bool(np.all(self.monotone))
            self.mode = "constant"
        elif self.plain:
            self.mode = "sgd_schedule"
            self._states = PieceStates(self.hh, optimizer, batch)
            self.tail = optimizer.schedule.constant_after()
            if self.tail is not None and batch is not None:
                self.tail = max(self.tail, batch.constant_after())
            if self.tail is not None:
                lr = float(optimizer.schedule(self.tail))
                inv_b = 1.0 if batch is None else 1.0 / batch(self.tail)
                s = lr * self.hh
                with np.errstate(all="ignore"):
                    self.tail_ss = np.where(
                        s < 2.0, inv_b * lr * lr / (s * (2.0 - s)), np.inf
                    )
                lrs = optimizer.schedule.pieces(self.tail + 1)[1]
                self.stable = bool(np.all(lrs * self.hh.max() <= 2.0))
            else:
                self.stable = False
        else:
            self.mode = "scan"

    def _sgd_modes(self, steps):
        self.evaluations += len(steps)
        return self._states.at(steps)

    def terms(self, steps) -> tuple[np.ndarray, np.ndarray]:
        steps = np.asarray(steps, dtype=np.int64)
        key = steps.tobytes()
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._terms(steps)
            if self.constant:
                self._record_noise(steps, hit[1])
        return hit

    def _record_noise(self, steps, noise):
        """Adds evaluated noise terms to the sorted record behind
        :meth:`_noise_before` (constant lr: ``N`` never decreases)."""
        for t, n in zip(steps.tolist(), np.asarray(noise).tolist(), strict=True):
            if not math.isfinite(n):
                continue
            i = bisect.bisect_right(self._noise_steps, t)
            self._noise_steps.insert(i, t)
            self._noise_vals.insert(i, n)

    def _terms(self, steps) -> tuple[np.ndarray, np.ndarray]:
        if self.mode == "constant":
            self.evaluations += steps.size
            st = self.setting
            return risk_terms(
                self.problem, st.lr, st.momentum, st.ema, st.precond_power, steps
            )
        if self.mode == "sgd_schedule":
            F, V = self._sgd_modes(steps)
            return F @ self.wd, V @ self.wn
        self.evaluations += steps.size
        return _scheduled_terms(self.hh, self.wd, self.wn, self.opt, steps, self.batch)

    def loss(self, steps) -> np.ndarray:
        d, n = self.terms(steps)
        with np.errstate(invalid="ignore", over="ignore"):
            out = d + n / self.b
        return np.where(np.isnan(out), np.inf, out)

    def never_after(self, t: int) -> bool:
        """Certifies that the loss stays above target for all steps >= ``t``."""
        if self.mode == "constant":
            return self._noise_at(t) / self.b > self.target
        if self.mode == "sgd_schedule" and self.tail is not None and t >= self.tail:
            _, V = self._sgd_modes([t])
            floor = np.minimum(V[0], self.tail_ss) @ self.wn
            return floor / self.b > self.target
        return False

    def _noise_at(self, t):
        return self.terms([t])[1][0]

    def _piecewise_floor(self, a: int, b: int, F, V) -> float:
        r"""Plain SGD: a lower bound of the loss on ``[a, b]`` from the states
        at ``a``, ``b`` (``F``, ``V``, shape ``(2, M)``) and at the pieces'
        starts in between.

        Within one piece (constant lr and batch size) each mode's share of the
        loss, :math:`\ell = w^D F + w^N V / B`, is a constant plus a multiple of
        :math:`(1 - \alpha h)^{2n}` after :math:`n` steps of the piece, so it
        is monotone in the step: on a segment it is at least the smaller of its
        two end values. The loss on ``[a, b]`` is at least the least, over the
        segments the pieces cut it into, of the sum over modes of those minima.
        Shrinks to the loss itself as the interval does (unlike the bound from
        ``a`` alone), which prunes the intervals next to the crossing.
        """
        st = self._states
        k0 = int(np.searchsorted(st.starts, a, side="right"))
        k1 = int(np.searchsorted(st.starts, b, side="left"))
        k1 = min(k1, st.F.shape[0])  # beyond the known pieces: the tail piece
        inner = slice(k0, max(k0, k1))  # pieces starting strictly inside (a, b)
        Fs = np.concatenate([F[:1], st.F[inner], F[1:]])
        Vs = np.concatenate([V[:1], st.V[inner], V[1:]])
        with np.errstate(invalid="ignore", over="ignore"):
            ell = Fs * self.wd + Vs * (self.wn / self.b)
            seg = np.minimum(ell[:-1], ell[1:]).sum(axis=1)
        low = float(np.min(seg))
        # rounding: the loss itself is a sum over modes, accurate to a few ulps
        # of M terms; the bound is lowered by far more
        return low * (1.0 - _FLOOR_RTOL) if math.isfinite(low) else -math.inf

    def lower_bound(self, a: int, b: int) -> float:
        """A certified lower bound of the loss on steps ``[a, b]`` (or -inf)."""
        if self.mode == "scan" or (self.mode == "sgd_schedule" and not self.stable):
            return -math.inf
        if self.mode == "sgd_schedule":
            F, V = self._sgd_modes([a, b])
            within = self._piecewise_floor(a, b, F, V)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(F[0] > 0, F[1] / F[0], 0.0)
                # Within a piece each mode's noise response moves monotonically
                # toward that piece's steady state, increasing in the lr: so on
                # [a, b) it never falls below min(V_a, ss(smallest lr there)).
                # (and, under a batch schedule, in 1/B: the largest B bounds it)
                lr_min = self._states.min_lr(a, b)
                inv_b = self._states.min_inv_b(a, b)
                s = lr_min * self.hh
                ss = np.where(s < 2.0, inv_b * lr_min / (self.hh * (2.0 - s)), np.inf)
                v_low = np.maximum(V[0] * ratio, np.minimum(V[0], ss))
            return max(float(F[1] @ self.wd + v_low @ self.wn / self.b), within)
        if self._mean is None:  # eigenvalues and weights: once per curve
            st = self.setting
            self._mean = MeanResponse(self.hh, st.lr, st.momentum, st.ema, self.feats)
        # The noise N never decreases: a value known at a step at or before a
        # bounds it on [a, b] without an evaluation; N(a) itself is computed
        # only when that does not already prune the interval.
        known = self._noise_before(a)
        if known is not None and known / self.b > self.target:
            return known / self.b * (1.0 - _FLOOR_RTOL)
        self.evaluations += 1
        # the chord bound runs to b + 1, the next interval's start (its terms
        # are computed once, for both)
        if self.all_monotone:  # each mode at its value at b: nothing tighter
            low, _ = self._mean.bound(b, 0)
        else:
            low = self._mean.interval_bound(a, b + 1)
            if np.any(self.monotone):
                fb, _ = self._mean.bound(b, 0)
                low = np.where(self.monotone, np.maximum(low, fb), low)
        det = float(low @ self.wd)

        def with_known(det):  # the bound with the noise known before a
            return (
                None if known is None else (det + known / self.b) * (1.0 - _FLOOR_RTOL)
            )

        bound = with_known(det)
        # the chord of the weighted sum only where the per-mode bounds fall short
        if not self.all_monotone and (bound is None or bound <= self.target):
            det = max(det, self._mean.total_chord(a, b + 1, self.wd))
            bound = with_known(det)
        if bound is not None and bound > self.target:
            return bound
        # a noise known at a later step bounds N(a) from above: where even it
        # would not prune, N(a) itself need not be evaluated
        later = self._noise_from(a)
        if later is not None and (det + later / self.b) * (1.0 - _FLOOR_RTOL) <= (
            self.target
        ):
            return (det + (known or 0.0) / self.b) * (1.0 - _FLOOR_RTOL)
        noise = self._noise_at(a) / self.b
        if noise > self.target:
            return noise * (1.0 - _FLOOR_RTOL)
        return (det + noise) * (1.0 - _FLOOR_RTOL)

    def _noise_from(self, t: int):
        """The known noise term ``N`` at the smallest step ``>= t`` (``None`` if
        none): an upper bound of ``N(t)``."""
        i = bisect.bisect_left(self._noise_steps, t)
        return self._noise_vals[i] if i < len(self._noise_vals) else None

    def _noise_before(self, t: int):
        """The largest known noise term ``N`` at a step ``<= t`` (``None`` if
        none): a lower bound of ``N`` from ``t`` on, since ``N`` never
        decreases."""
        i = bisect.bisect_right(self._noise_steps, t)
        return self._noise_vals[i - 1] if i else None


def steps_to_target(
    problem: NQMProblem,
    optimizer: Optimizer | ConstantSetting,
    batch_size,
    target: float,
    *,
    max_steps: int | None = None,
    guess: int | None = None,
) -> int | float:
    r"""The smallest integer :math:`t \ge 0` with exact :math:`E[L(\theta_t)] \le`
    ``target``; ``math.inf`` when it is never reached (target below the
    steady-state risk, a diverging setting, or beyond ``max_steps``).

    Args:
        problem: the NQM.
        optimizer: any optimizer and schedule, or a
            :class:`~nqm.families.ConstantSetting` (the floats of a constant lr;
            the tuner certifies its candidates so). Constant lr and plain-SGD
            schedules get certified pruning (cost about :math:`O(d \log t)`
            evaluations); momentum or averaging combined with a changing schedule
            are scanned step by step and need an explicit ``max_steps``.
        batch_size: :math:`B \ge 1`, or a :class:`~nqm.BatchSchedule` (plain
            SGD under it keeps certified pruning; momentum or averaging under it
            is scanned, as with a changing lr).
        target: the loss to reach, ``> 0``.
        max_steps: give up (``inf``) beyond this many steps (default
            :data:`MAX_STEPS`; at most ``10**7`` for scanned combinations).
        guess: a step count believed close to the answer (e.g. from a cheaper
            model). The search for an upper end starts there instead of at one
            step; every step below that end is still certified, so the result
            never depends on the guess, only the cost does.

    Raises:
        ValueError: for a non-positive target, a batch size below one, a
            scanned combination without a small enough ``max_steps``, or a
            guess below one.
    """
    tg = _check_target(target)
    batch_size, batch = split_batch(batch_size)
    b = float(validate_batch_size(batch_size, scalar=True))
    curve = _Curve(problem, optimizer, b, batch)
    if max_steps is not None:
        validate_step_limit(max_steps, "max_steps")
    if curve.mode == "scan":
        if max_steps is None or max_steps > 10**7:
            raise ValueError(
                "max_steps must be given (<= 1e7) for momentum or averaging with a "
                "changing lr schedule: their first crossing is found by scanning"
            )
    limit = (
        MAX_STEPS if max_steps is None else validate_step_limit(max_steps, "max_steps")
    )
    if guess is not None:
        try:
            ok = math.isfinite(guess) and guess >= 1
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"guess must be a step count >= 1, got {guess!r}")
    curve.target = tg
    return _first_crossing(curve, tg, limit, None if guess is None else int(guess))


#: From a guess, the upper end grows by this fraction first, then by twice the
#: previous growth each time (a guess a little short costs few evaluations, a
#: bad one about as many as doubling from one step).
_GUESS_GROWTH = 1.0 / 64.0


def _first_crossing(
    curve: _Curve, target: float, max_steps: int, guess: int | None = None
) -> int | float:
    if curve.loss([0])[0] <= target:
        return 0
    if max_steps == 0:
        return math.inf
    if curve.mode == "scan":
        chunk = 4096
        for a in range(1, max_steps + 1, chunk):
            steps = np.arange(a, min(a + chunk, max_steps + 1))
            hit = np.nonzero(curve.loss(steps) <= target)[0]
            if hit.size:
                return int(steps[hit[0]])
        return math.inf
    # Find an upper end: a step at or below target, or a step after which the
    # loss provably stays above it.
    hi = 1 if guess is None else min(guess, max_steps)
    growth = _GUESS_GROWTH
    end_hit = False  # the loss at ``hi`` is known to be at or below target
    while True:
        loss = curve.loss([hi])[0]
        if loss <= target:
            end_hit = True
            break
        if not np.isfinite(loss) or curve.never_after(hi):
            break
        if hi >= max_steps:
            break
        if guess is None:
            hi = min(2 * hi, max_steps)
        else:
            hi = min(max(hi + 1, math.ceil(hi * (1.0 + growth))), max_steps)
            growth *= 2.0
    scan = _SCAN
    if curve.mode == "constant":
        scan = max(_SCAN, min(_SCAN_MAX, _SCAN_ELEMENTS // curve.hh.size))
    stack = [(1, hi)]
    while stack:
        a, z = stack.pop()
        if z - a < scan:
            steps = np.arange(a, z + 1)
            hit = np.nonzero(curve.loss(steps) <= target)[0]
            if hit.size:
                return int(steps[hit[0]])
            continue
        # An interval ending at a step known to reach the target cannot be
        # pruned: its lower bound is at most that step's loss.
        if not (end_hit and z == hi) and curve.lower_bound(a, z) > target:
            continue
        m = (a + z) // 2
        stack.append((m + 1, z))
        stack.append((a, m))
    return math.inf


def examples_to_target(
    problem: NQMProblem,
    optimizer: Optimizer,
    batch_size,
    target: float,
    **kwargs,
) -> tuple[int | float, int | float]:
    r"""Steps and examples to ``target``: :math:`(S, E(S))` with
    :math:`E(S) = \sum_{s<S} B_s` (``(inf, inf)`` when never reached).

    Args:
        problem, optimizer, target, **kwargs: as :func:`steps_to_target`.
        batch_size: an integer :math:`B \ge 1` (:math:`E = BS`) or a
            :class:`~nqm.BatchSchedule`.

    Raises:
        ValueError: as :func:`steps_to_target`.
    """
    steps = steps_to_target(problem, optimizer, batch_size, target, **kwargs)
    if isinstance(batch_size, BatchSchedule):
        return steps, batch_size.examples(steps)
    b = float(validate_batch_size(batch_size, scalar=True))
    if math.isinf(steps):
        return steps, math.inf
    ex = b * steps
    return steps, int(ex) if ex == int(ex) else ex
