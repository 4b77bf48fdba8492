r"""Batch-size schedules: the batch size as a piecewise-constant function of the step.

Update ``t`` (0-based, mapping :math:`\theta_t` to :math:`\theta_{t+1}`) draws a
mini-batch of :math:`B_t` examples, so its gradient noise has covariance
:math:`C/B_t`. After :math:`t` updates the run has seen

.. math:: E(t) = \sum_{s<t} B_s

examples. Ramps (batch-size warm-up, Merrill et al. 2025; McCandlish et al. 2018,
§5) are discretised into constant pieces, which the exact dynamics propagate in
closed form piece by piece.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from .arguments import check_pieces, validate_step_limit

__all__ = [
    "BatchSchedule",
    "RampShape",
    "BatchSize",
    "joint_pieces",
    "ramp_pieces_and_shape",
]


class RampShape(enum.StrEnum):
    """How a batch-size ramp moves from its start to its end batch size.

    * ``linear``: equal increments per piece.
    * ``geometric``: equal ratios per piece (doubling-style warm-up).
    """

    LINEAR = "linear"
    GEOMETRIC = "geometric"


def _check_batch(value, where: str) -> int:
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{where} must be an integer >= 1, not a boolean")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be an integer >= 1, got {value!r}") from None
    if not math.isfinite(v) or v < 1 or v != round(v):
        raise ValueError(f"{where} must be an integer >= 1, got {value!r}")
    return int(v)


@dataclass(frozen=True)
class BatchSchedule:
    """``values[k]`` examples per update for updates in ``[boundaries[k-1],
    boundaries[k])`` (the convention of :class:`nqm.PiecewiseConstant`).

    Args:
        boundaries: strictly increasing positive integers, length ``K - 1``.
        values: the ``K`` batch sizes, integers :math:`\\ge 1`; the last one holds
            forever.

    Raises:
        ValueError: for lengths that do not match, boundaries that are not
            strictly increasing positive integers, or a batch size that is not an
            integer :math:`\\ge 1`.
    """

    boundaries: tuple[int, ...]
    values: tuple[int, ...]

    def __post_init__(self) -> None:
        check_pieces(self, _check_batch, "batch_size")

    # ------------------------------------------------------------ constructors
    @classmethod
    def constant(cls, batch_size: int) -> BatchSchedule:
        """One piece: ``batch_size`` at every update."""
        return cls((), (batch_size,))

    @classmethod
    def ramp(
        cls,
        start: int,
        end: int,
        ramp_steps: int,
        pieces: int,
        shape: RampShape | str = RampShape.LINEAR,
    ) -> BatchSchedule:
        r"""A ramp from ``start`` to ``end`` over ``ramp_steps`` updates, in
        ``pieces`` equal-length constant pieces, then ``end`` forever.

        Piece :math:`k = 0..K-1` covers updates
        :math:`[\lfloor kR/K \rceil, \lfloor (k+1)R/K \rceil)` and uses

        .. math::
            B_k = \operatorname{round}\bigl(B_0 + (B_1 - B_0)\tfrac{k}{K}\bigr)
            \ \text{(linear)}, \qquad
            B_k = \operatorname{round}\bigl(B_0 (B_1/B_0)^{k/K}\bigr)
            \ \text{(geometric)},

        the value at the piece's start (so a ramp never uses more examples than
        the continuous one). Empty pieces (``ramp_steps < pieces``) are dropped
        and equal neighbours merged.

        Args:
            start: :math:`B_0 \ge 1`, integer.
            end: :math:`B_1 \ge 1`, integer (a ramp may also go down).
            ramp_steps: :math:`R \ge 0` (0: ``end`` from the first update).
            pieces: :math:`K \ge 1`.
            shape: a :class:`RampShape`.

        Raises:
            ValueError: naming the argument that is out of range.
        """
        b0 = _check_batch(start, "start")
        b1 = _check_batch(end, "end")
        validate_step_limit(ramp_steps, "ramp_steps")
        k, shape = ramp_pieces_and_shape(pieces, shape)
        r = int(ramp_steps)
        frac = np.arange(k) / k
        if shape is RampShape.LINEAR:
            vals = b0 + (b1 - b0) * frac
        else:
            vals = b0 * (b1 / b0) ** frac
        vals = np.maximum(1, np.round(vals)).astype(np.int64)
        starts = np.round(np.arange(k) * r / k).astype(np.int64)
        starts = np.append(starts, r)
        vals = np.append(vals, b1)
        return cls._from_starts(starts, vals)

    @classmethod
    def _from_starts(cls, starts, vals) -> BatchSchedule:
        """From piece starts (non-decreasing, first 0) and values: the last piece
        starting at a step wins, equal neighbours merge."""
        starts = np.asarray(starts, dtype=np.int64)
        vals = np.asarray(vals, dtype=np.int64)
        keep = np.append(starts[1:] != starts[:-1], True)
        starts, vals = starts[keep], vals[keep]
        change = np.append(True, vals[1:] != vals[:-1])
        starts, vals = starts[change], vals[change]
        return cls(tuple(int(s) for s in starts[1:]), tuple(int(v) for v in vals))

    # ----------------------------------------------------------------- queries
    def __call__(self, step):
        """The batch size of update ``step`` (scalar or array)."""
        idx = np.searchsorted(
            np.asarray(self.boundaries, dtype=np.int64), step, side="right"
        )
        out = np.asarray(self.values, dtype=np.int64)[idx]
        return out if np.ndim(step) else int(out)

    def pieces(self, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Constant pieces covering updates ``[0, n_steps)``: ``(starts, values)``,
        as :meth:`nqm.Schedule.pieces` (the last piece runs to ``n_steps``)."""
        starts = np.array((0,) + self.boundaries, dtype=np.int64)
        keep = (starts < max(int(n_steps), 1)) | (np.arange(starts.size) == 0)
        return starts[keep], np.asarray(self.values, dtype=np.int64)[keep]

    def constant_after(self) -> int:
        """The first update from which the batch size never changes."""
        return self.boundaries[-1] if self.boundaries else 0

    @property
    def is_constant(self) -> bool:
        return len(set(self.values)) == 1

    def examples(self, steps):
        r""":math:`E(t) = \sum_{s<t} B_s`, the examples seen in ``t`` updates.

        Args:
            steps: integers :math:`\ge 0` (scalar or array); ``inf`` maps to
                ``inf``.

        Returns:
            int for an integer scalar, float ``inf`` for ``inf``, else an array
            (float64 when it holds ``inf``, else int64).
        """
        t = np.asarray(steps, dtype=np.float64)
        if np.any(np.isnan(t)) or np.any(t < 0):
            raise ValueError(f"steps must be non-negative, got {steps!r}")
        inf = np.isinf(t)
        ti = np.where(inf, 0, t).astype(np.int64)
        starts = np.array((0,) + self.boundaries, dtype=np.int64)
        vals = np.asarray(self.values, dtype=np.int64)
        # examples before each piece starts
        before = np.concatenate([[0], np.cumsum(vals[:-1] * np.diff(starts))])
        k = np.searchsorted(starts, ti, side="right") - 1
        out = before[k] + vals[k] * (ti - starts[k])
        if np.any(inf):
            out = np.where(inf, np.inf, out.astype(np.float64))
            return float(out) if out.ndim == 0 else out
        return int(out) if out.ndim == 0 else out

    def steps_for_examples(self, examples) -> int:
        """The most updates whose examples stay within ``examples``."""
        n = float(examples)
        if not n >= 0:
            raise ValueError(f"examples must be non-negative, got {examples!r}")
        if math.isinf(n):
            return math.inf  # type: ignore[return-value]
        starts = np.array((0,) + self.boundaries, dtype=np.int64)
        vals = np.asarray(self.values, dtype=np.int64)
        before = np.concatenate([[0], np.cumsum(vals[:-1] * np.diff(starts))])
        k = int(np.searchsorted(before, n, side="right") - 1)
        return int(starts[k] + (int(n) - before[k]) // vals[k])


#: What :func:`nqm.expected_loss` and friends accept as a batch size.
BatchSize = float | int | BatchSchedule


def joint_pieces(lr_schedule, batch: BatchSchedule | None, n_steps: int):
    """Constant pieces of an lr schedule and a batch schedule together.

    Returns:
        ``(starts, lrs, inv_b)``: the union of both schedules' piece starts
        below ``n_steps`` (``starts[0] == 0``), each piece's lr and
        :math:`1/B`. Without a batch schedule ``inv_b`` is all ones (the batch
        size is applied by the caller).
    """
    s_lr, lrs = lr_schedule.pieces(n_steps)
    if batch is None:
        return s_lr, lrs, np.ones(lrs.shape)
    s_b, bs = batch.pieces(n_steps)
    starts = np.union1d(s_lr, s_b)
    i_lr = np.searchsorted(s_lr, starts, side="right") - 1
    i_b = np.searchsorted(s_b, starts, side="right") - 1
    return starts, np.asarray(lrs)[i_lr], 1.0 / bs[i_b].astype(np.float64)


def ramp_pieces_and_shape(pieces: int, shape: RampShape | str) -> tuple[int, RampShape]:
    """Validated ramp options: a positive integer count of pieces and a
    :class:`RampShape`.

    Raises:
        ValueError: naming ``pieces`` or ``shape``.
    """
    if isinstance(pieces, bool) or int(pieces) != pieces or pieces < 1:
        raise ValueError(f"pieces must be a positive integer, got {pieces!r}")
    try:
        return int(pieces), RampShape(shape)
    except ValueError:
        raise ValueError(
            f"shape must be one of {[s.value for s in RampShape]}, got {shape!r}"
        ) from None
