"""Optimizer configuration (learning rate, momentum, iterate averaging,
preconditioning) and learning-rate schedules."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .arguments import check_pieces

__all__ = [
    "Schedule",
    "Constant",
    "PiecewiseConstant",
    "LinearDecay",
    "WarmupStableDecay",
    "CosineWarmup",
    "DecayShape",
    "FromCallable",
    "Optimizer",
]


class Schedule:
    """A learning-rate schedule: ``schedule(step)`` is the lr used by update ``step``.

    Update ``step`` (0-based) maps :math:`\\theta_{step}` to :math:`\\theta_{step+1}`.
    Subclasses describe themselves as constant pieces through :meth:`pieces`, which
    the exact dynamics use to propagate each piece in closed form.
    """

    def __call__(self, step):  # pragma: no cover - abstract
        raise NotImplementedError

    def pieces(self, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Constant pieces covering updates ``[0, n_steps)``.

        Returns:
            ``(starts, lrs)``: integer start steps (``starts[0] == 0``, strictly
            increasing, all ``< n_steps`` unless ``n_steps == 0``) and the lr of
            each piece. The last piece runs to ``n_steps``.
        """
        raise NotImplementedError  # pragma: no cover

    def constant_after(self) -> int | None:
        """A step from which the lr never changes again, or ``None`` if unknown."""
        return None


def _check_lr(value: float, where: str = "lr") -> float:
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{where} must be a finite positive number, not a boolean")
    v = float(value)
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"{where} must be a finite positive number, got {value!r}")
    return v


@dataclass(frozen=True)
class Constant(Schedule):
    """:math:`\\alpha(t) = \\alpha_0`."""

    lr: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _check_lr(self.lr))

    def __call__(self, step):
        return np.full(np.shape(step), self.lr)[()] if np.ndim(step) else self.lr

    def pieces(self, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(1, dtype=np.int64), np.array([self.lr])

    def constant_after(self) -> int:
        return 0


@dataclass(frozen=True)
class PiecewiseConstant(Schedule):
    """``values[k]`` for updates in ``[boundaries[k-1], boundaries[k])``.

    Args:
        boundaries: strictly increasing positive integers, length ``K - 1``.
        values: the ``K`` learning rates; the last one holds forever.
    """

    boundaries: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        check_pieces(self, _check_lr, "lr schedule")

    def __call__(self, step):
        idx = np.searchsorted(
            np.asarray(self.boundaries, dtype=np.int64), step, side="right"
        )
        out = np.asarray(self.values)[idx]
        return out if np.ndim(step) else float(out)

    def pieces(self, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
        starts = np.array((0,) + self.boundaries, dtype=np.int64)
        keep = (starts < max(n_steps, 1)) | (np.arange(starts.size) == 0)
        return starts[keep], np.asarray(self.values)[keep]

    def constant_after(self) -> int:
        return self.boundaries[-1] if self.boundaries else 0


@dataclass(frozen=True)
class LinearDecay(Schedule):
    r"""Linear decay (Zhang et al. 2019, appendix F.3, after Shallue et al. 2018).

    .. math::
        \alpha(t) = \alpha_0 \left(1 - (1-\delta)\frac{t}{T}\right)
        \text{ for } t < T, \qquad \alpha(t) = \delta\,\alpha_0 \text{ for } t \ge T.

    ``decay`` :math:`\delta \in (0, 1]` is the final lr as a fraction of
    :math:`\alpha_0`. (The appendix prints :math:`\alpha_0 - (1-\delta)t/T`, which
    drops the factor :math:`\alpha_0`; we follow Shallue et al., whose schedule the
    appendix says it reuses.)
    """

    lr0: float
    decay: float
    horizon: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr0", _check_lr(self.lr0, "lr0"))
        d = float(self.decay)
        if not (0.0 < d <= 1.0):
            raise ValueError(f"decay must lie in (0, 1], got {self.decay!r}")
        object.__setattr__(self, "decay", d)
        if int(self.horizon) != self.horizon or self.horizon < 1:
            raise ValueError(
                f"horizon must be a positive integer, got {self.horizon!r}"
            )
        object.__setattr__(self, "horizon", int(self.horizon))

    def __call__(self, step):
        s = np.minimum(np.asarray(step, dtype=np.float64), self.horizon)
        out = self.lr0 * (1.0 - (1.0 - self.decay) * s / self.horizon)
        return out if np.ndim(step) else float(out)

    def pieces(self, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
        if self.decay == 1.0:
            return np.zeros(1, dtype=np.int64), np.array([self.lr0])
        end = min(max(int(n_steps), 1), self.horizon + 1)
        starts = np.arange(end, dtype=np.int64)
        return starts, self(starts)

    def constant_after(self) -> int:
        return self.horizon


class FromCallable(Schedule):
    """Any callable from the (integer) step to the learning rate.

    The callable is evaluated at every step the dynamics need (it may accept a
    numpy array of steps, which is faster); consecutive equal values are merged
    into one constant piece, so a callable that is piecewise constant costs no
    more than a :class:`PiecewiseConstant`.

    Args:
        fn: ``fn(step) -> lr``.
        constant_after: optionally, a step after which ``fn`` is known to be
            constant; lets the exact dynamics treat the tail in closed form.
    """

    def __init__(self, fn: Callable, constant_after: int | None = None) -> None:
        if not callable(fn):
            raise ValueError("lr must be a float, a Schedule, or a callable")
        self.fn = fn
        self._constant_after = None if constant_after is None else int(constant_after)

    def __repr__(self) -> str:
        return f"FromCallable({self.fn!r}, constant_after={self._constant_after})"

    def __call__(self, step):
        return (
            self._values(np.atleast_1d(np.asarray(step, dtype=np.int64)))[()]
            if np.ndim(step)
            else float(self._values(np.array([int(step)]))[0])
        )

    def _values(self, steps: np.ndarray) -> np.ndarray:
        try:
            out = np.asarray(self.fn(steps), dtype=np.float64)
            if out.shape != steps.shape:
                raise TypeError
        except Exception:
            out = np.array([float(self.fn(int(s))) for s in steps], dtype=np.float64)
        bad = ~np.isfinite(out) | (out <= 0)
        if np.any(bad):
            k = int(steps[np.argmax(bad)])
            raise ValueError(
                "lr must be finite and positive; the schedule gives "
                f"{out[np.argmax(bad)]!r} at step {k}"
            )
        return out

    def pieces(self, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
        n = max(int(n_steps), 1)
        if self._constant_after is not None:
            n = min(n, self._constant_after + 1)
        steps = np.arange(n, dtype=np.int64)
        vals = self._values(steps)
        change = np.ones(n, dtype=bool)
        change[1:] = vals[1:] != vals[:-1]
        return steps[change], vals[change]

    def constant_after(self) -> int | None:
        return self._constant_after


class DecayShape(enum.StrEnum):
    r"""How the decay phase of :class:`WarmupStableDecay` falls, as a function of
    its progress :math:`x \in [0, 1]`.

    * ``linear``: :math:`1 - x`.
    * ``one_minus_sqrt``: :math:`1 - \sqrt{x}` (Hägele et al. 2024, §3).
    """

    LINEAR = "linear"
    ONE_MINUS_SQRT = "one_minus_sqrt"


def _check_steps(value, where: str, minimum: int = 0) -> int:
    if int(value) != value or value < minimum:
        raise ValueError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_fraction(value, where: str) -> float:
    v = float(value)
    if not (0.0 < v <= 1.0):
        raise ValueError(f"{where} must lie in (0, 1], got {value!r}")
    return v


class _StepwiseSchedule(Schedule):
    """A schedule given by a vectorised formula up to ``horizon``, then constant:
    one piece per step where it changes, equal neighbours merged."""

    horizon: int

    def _values(self, steps: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, step):
        s = np.minimum(np.asarray(step, dtype=np.float64), self.horizon)
        out = self._values(s)
        return out if np.ndim(step) else float(out)

    def pieces(self, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
        end = min(max(int(n_steps), 1), self.horizon + 1)
        steps = np.arange(end, dtype=np.int64)
        vals = self(steps)
        change = np.ones(end, dtype=bool)
        change[1:] = vals[1:] != vals[:-1]
        return steps[change], vals[change]

    def constant_after(self) -> int:
        return self.horizon


@dataclass(frozen=True)
class WarmupStableDecay(_StepwiseSchedule):
    r"""Warm-up, stable, decay (WSD; Hu et al. 2024, §4; Hägele et al. 2024, §3).

    With peak :math:`\alpha_0`, warm-up length :math:`W`, decay start :math:`S`,
    horizon :math:`T` and final fraction :math:`\delta`,

    .. math::
        \alpha(t) = \alpha_0 \begin{cases}
            (t + 1)/W & t < W \\
            1 & W \le t < S \\
            \delta + (1-\delta)\,\phi\!\left(\frac{t - S}{T - S}\right)
              & S \le t < T \\
            \delta & t \ge T,
        \end{cases}

    with :math:`\phi(x) = 1 - x` (``linear``) or :math:`1 - \sqrt x`
    (``one_minus_sqrt``). The warm-up starts at :math:`\alpha_0/W` (an lr of
    zero is no update) and the last decay step uses
    :math:`\phi(1 - 1/(T-S)) > 0`.

    Args:
        peak_lr: :math:`\alpha_0 > 0`.
        warmup: :math:`W \ge 0` updates.
        decay_start: :math:`S`, with :math:`W \le S \le T`.
        horizon: :math:`T \ge 1`.
        final: :math:`\delta \in (0, 1]`.
        shape: a :class:`DecayShape`.

    Raises:
        ValueError: naming the argument out of range.
    """

    peak_lr: float
    warmup: int
    decay_start: int
    horizon: int
    final: float = 1e-3
    shape: DecayShape = DecayShape.LINEAR

    def __post_init__(self) -> None:
        object.__setattr__(self, "peak_lr", _check_lr(self.peak_lr, "peak_lr"))
        h = _check_steps(self.horizon, "horizon", 1)
        w = _check_steps(self.warmup, "warmup")
        d = _check_steps(self.decay_start, "decay_start")
        if not w <= d <= h:
            raise ValueError(
                f"need warmup <= decay_start <= horizon, got {w}, {d}, {h}"
            )
        for name, v in (("horizon", h), ("warmup", w), ("decay_start", d)):
            object.__setattr__(self, name, v)
        object.__setattr__(self, "final", _check_fraction(self.final, "final"))
        try:
            object.__setattr__(self, "shape", DecayShape(self.shape))
        except ValueError:
            raise ValueError(
                f"shape must be one of {[s.value for s in DecayShape]}, "
                f"got {self.shape!r}"
            ) from None

    def _values(self, s: np.ndarray) -> np.ndarray:
        warm = np.minimum(1.0, (s + 1.0) / max(self.warmup, 1))
        span = max(self.horizon - self.decay_start, 1)
        x = np.clip((s - self.decay_start) / span, 0.0, 1.0)
        phi = 1.0 - x if self.shape is DecayShape.LINEAR else 1.0 - np.sqrt(x)
        decay = np.where(
            s >= self.decay_start, self.final + (1.0 - self.final) * phi, 1.0
        )
        return self.peak_lr * np.where(s < self.warmup, warm, decay)


@dataclass(frozen=True)
class CosineWarmup(_StepwiseSchedule):
    r"""Linear warm-up, then cosine decay (Loshchilov & Hutter 2017, §3).

    .. math::
        \alpha(t) = \alpha_0 \begin{cases}
            (t + 1)/W & t < W \\
            \delta + \frac{1-\delta}{2}\left(1 + \cos\frac{\pi (t - W)}{T - W}
              \right) & W \le t < T \\
            \delta & t \ge T.
        \end{cases}

    Args:
        peak_lr: :math:`\alpha_0 > 0`.
        warmup: :math:`W`, with :math:`0 \le W \le T`.
        horizon: :math:`T \ge 1`.
        final: :math:`\delta \in (0, 1]`.

    Raises:
        ValueError: naming the argument out of range.
    """

    peak_lr: float
    warmup: int
    horizon: int
    final: float = 1e-3

    def __post_init__(self) -> None:
        object.__setattr__(self, "peak_lr", _check_lr(self.peak_lr, "peak_lr"))
        h = _check_steps(self.horizon, "horizon", 1)
        w = _check_steps(self.warmup, "warmup")
        if w > h:
            raise ValueError(f"need warmup <= horizon, got {w} > {h}")
        object.__setattr__(self, "horizon", h)
        object.__setattr__(self, "warmup", w)
        object.__setattr__(self, "final", _check_fraction(self.final, "final"))

    def _values(self, s: np.ndarray) -> np.ndarray:
        warm = np.minimum(1.0, (s + 1.0) / max(self.warmup, 1))
        x = np.clip((s - self.warmup) / max(self.horizon - self.warmup, 1), 0.0, 1.0)
        cos = self.final + (1.0 - self.final) * 0.5 * (1.0 + np.cos(np.pi * x))
        return self.peak_lr * np.where(s < self.warmup, warm, cos)


LearningRate = float | Schedule | Callable


@dataclass(frozen=True)
class Optimizer:
    r"""Preconditioned heavy-ball SGD with an exponential moving average of iterates.

    .. math::
        m_{t+1} = \beta m_t + P^{-1} g_t, \qquad
        \theta_{t+1} = \theta_t - \alpha_t m_{t+1}, \qquad
        \tilde\theta_{t+1} = \gamma \tilde\theta_t + (1-\gamma)\theta_{t+1},

    with :math:`m_0 = 0`, :math:`\tilde\theta_0 = \theta_0` and :math:`P = H^p`.
    The reported loss is that of :math:`\tilde\theta` when :math:`\gamma > 0`, else
    of :math:`\theta`. The effective learning rate is :math:`\alpha/(1-\beta)`.

    Args:
        lr: :math:`\alpha`: a positive float, a :class:`Schedule`, or a callable
            ``step -> lr``.
        momentum: :math:`\beta \in [0, 1)`.
        ema: :math:`\gamma \in [0, 1)`.
        precond_power: :math:`p \in [0, 1]`.

    Raises:
        ValueError: naming the parameter that is out of range.
    """

    lr: LearningRate
    momentum: float = 0.0
    ema: float = 0.0
    precond_power: float = 0.0

    def __post_init__(self) -> None:
        lr = self.lr
        if isinstance(lr, Schedule):
            pass
        elif isinstance(lr, (int, float, np.floating, np.integer)) and not isinstance(
            lr, bool
        ):
            lr = Constant(_check_lr(lr))
        elif callable(lr):
            lr = FromCallable(lr)
        else:
            raise ValueError(
                f"lr must be a positive float, a Schedule or a callable, got {lr!r}"
            )
        object.__setattr__(self, "lr", lr)
        for name in ("momentum", "ema"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and 0.0 <= v < 1.0):
                raise ValueError(
                    f"{name} must lie in [0, 1), got {getattr(self, name)!r}"
                )
            object.__setattr__(self, name, v)
        p = float(self.precond_power)
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(
                f"precond_power must lie in [0, 1], got {self.precond_power!r}"
            )
        object.__setattr__(self, "precond_power", p)

    @property
    def schedule(self) -> Schedule:
        """The learning rate as a :class:`Schedule`."""
        return self.lr  # type: ignore[return-value]

    @property
    def constant_lr(self) -> float | None:
        """The lr if it is constant, else ``None``."""
        return self.lr.lr if isinstance(self.lr, Constant) else None

    @property
    def effective_lr(self) -> float | None:
        """:math:`\\alpha / (1 - \\beta)` for a constant lr."""
        lr = self.constant_lr
        return None if lr is None else lr / (1.0 - self.momentum)
