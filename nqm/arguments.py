"""Validation of the arguments the public ``nqm`` entry points share.

Step counts, step limits and batch sizes are checked here and nowhere else, so
that every entry point (:func:`nqm.expected_loss`, :func:`nqm.risk_terms`,
:func:`nqm.second_moments`, :func:`nqm.steps_to_target`, :func:`nqm.simulate`,
the closed forms, the schedules, ...) accepts and refuses the same values with
the same one-line message naming the parameter:

* a boolean is refused wherever a number is expected (``True`` is an ``int``
  in Python, but never a step count or a batch size);
* a step count is an integer :math:`0 \\le t \\le` :data:`MAX_T` given as a
  Python or NumPy integer (signed or unsigned), or an integral float; a float
  with a fractional part is refused, never truncated;
* a batch size is a finite number :math:`\\ge 1`; entry points that take one
  batch size refuse a sequence with a message saying so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "MAX_T",
    "validate_steps",
    "validate_step_limit",
    "validate_batch_size",
    "check_pieces",
]

#: The largest step count the exact risk accepts, :math:`2^{63} - 1`: steps are
#: int64 throughout (the parity of :math:`t` decides the sign of
#: :math:`\lambda^t` for a negative eigenvalue, so :math:`t` is never a float).
MAX_T = 2**63 - 1


def _too_large(name: str, value: Any) -> ValueError:
    return ValueError(
        f"{name} must be at most 2**63 - 1 = {MAX_T} (the largest supported t), "
        f"got {value!r}"
    )


def _scalar_step(value: Any, name: str) -> int:
    """One step count as a Python int, checked."""
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be integers, not booleans, got {value!r}")
    if isinstance(value, int | np.integer):
        v = int(value)
    else:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be integers, got {value!r}") from None
        if not math.isfinite(f):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if f != round(f):
            raise ValueError(f"{name} must be integers, got {value!r}")
        v = int(f)
    if v < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    if v > MAX_T:
        raise _too_large(name, value)
    return v


def validate_steps(steps: Any, name: str = "steps") -> np.ndarray:
    """Step counts as an int64 array of the same shape (0-d for a scalar).

    Args:
        steps: an integer :math:`0 \\le t \\le` :data:`MAX_T`, or an array-like of
            them (integral floats are accepted, fractions refused).
        name: the parameter named in errors.

    Returns:
        ``np.ndarray`` of dtype int64.

    Raises:
        ValueError: (one line naming ``name``) for an empty array, a boolean, a
            non-integer, a negative count or one above :data:`MAX_T`.
    """
    if np.ndim(steps) == 0 and not isinstance(steps, np.ndarray):
        return np.asarray(_scalar_step(steps, name), dtype=np.int64)
    try:
        t = np.asarray(steps)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be integers, got {steps!r}") from None
    if t.size == 0:
        raise ValueError(f"{name} must not be empty")
    kind = t.dtype.kind
    if kind == "b":
        raise ValueError(f"{name} must be integers, not booleans, got {steps!r}")
    if kind in "iu":
        if kind == "i" and t.min() < 0:
            raise ValueError(f"{name} must be non-negative, got {steps!r}")
        if kind == "u" and t.max() > MAX_T:
            raise _too_large(name, steps)
        return t.astype(np.int64)
    if kind == "f":
        if not np.all(np.isfinite(t)):
            raise ValueError(f"{name} must be finite, got {steps!r}")
        if np.any(t != np.round(t)):
            raise ValueError(f"{name} must be integers, got {steps!r}")
        if np.any(t < 0):
            raise ValueError(f"{name} must be non-negative, got {steps!r}")
        if np.any(t >= 2.0**63):  # float(MAX_T) rounds up to 2**63
            raise _too_large(name, steps)
        return t.astype(np.int64)
    if kind == "O":  # Python ints beyond int64, mixed types: one by one
        flat = [_scalar_step(v, name) for v in t.ravel()]
        return np.array(flat, dtype=np.int64).reshape(t.shape)
    raise ValueError(f"{name} must be integers, got {steps!r}")


def validate_step_limit(value: Any, name: str, minimum: int = 0) -> int:
    """One step count (a limit, a horizon) as a Python int, never truncated.

    Raises:
        ValueError: (one line naming ``name``) for a boolean, a non-integer, a
            value below ``minimum`` or above :data:`MAX_T`.
    """
    if np.ndim(value) != 0:
        raise ValueError(f"{name} must be one integer, got {value!r}")
    v = _scalar_step(value, name)
    if v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return v


def validate_batch_size(batch_size: Any, *, scalar: bool = False) -> np.ndarray:
    """Batch sizes as a float64 array (0-d for a scalar).

    Args:
        batch_size: :math:`B \\ge 1`, finite; a number, or an array-like of them
            unless ``scalar``.
        scalar: whether the entry point takes one batch size only.

    Returns:
        ``np.ndarray`` of dtype float64 (0-d when ``scalar``).

    Raises:
        ValueError: (one line naming ``batch_size``) for a boolean, a
            non-number, an empty or (with ``scalar``) non-scalar array, or a value
            that is not finite and :math:`\\ge 1`.
    """
    if isinstance(batch_size, bool | np.bool_):
        raise ValueError(
            f"batch_size must be a number >= 1, not a boolean, got {batch_size!r}"
        )
    if scalar and np.ndim(batch_size) != 0:
        raise ValueError(
            f"batch_size must be one number >= 1 here, got {batch_size!r}; "
            "call once per batch size (nqm.expected_loss takes an array)"
        )
    try:
        raw = np.asarray(batch_size)
        if raw.dtype.kind == "b":
            raise TypeError
        b = raw.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"batch_size must be a number >= 1 or an array of them, got {batch_size!r}"
        ) from None
    if b.size == 0 or not np.all(np.isfinite(b)) or np.any(b < 1):
        raise ValueError(f"batch_size must be finite and >= 1, got {batch_size!r}")
    return b


def check_pieces(
    schedule: Any, check_value: Callable[[Any, str], Any], what: str
) -> None:
    """Validate a piecewise-constant schedule's pieces and store them as tuples.

    ``schedule`` is a frozen dataclass with ``boundaries`` (strictly increasing
    positive integer steps, length ``K - 1``) and ``values`` (``K`` values, each
    checked as ``check_value(value, "<what> value")``); both are replaced by
    tuples of the checked Python values.

    Args:
        schedule: the schedule being constructed (from its ``__post_init__``).
        check_value: returns the checked value or raises ``ValueError``.
        what: the schedule's name in errors (``"lr schedule"``, ...).

    Raises:
        ValueError: for boundaries that are not integers or not strictly
            increasing and positive, mismatched lengths, or a bad value.
    """
    boundaries, values = schedule.boundaries, schedule.values
    increasing = f"{what} boundaries must be strictly increasing positive steps"
    raw = np.atleast_1d(np.asarray(boundaries, dtype=object))
    if np.size(boundaries) == 0:
        raw = raw[:0]
    b = []
    for x in raw:
        if isinstance(x, int | float | np.number) and not isinstance(x, bool):
            if x <= 0:
                raise ValueError(increasing)
        b.append(validate_step_limit(x, f"{what} boundaries"))
    raw_v = np.atleast_1d(np.asarray(values, dtype=object))
    v = tuple(check_value(x, f"{what} value") for x in raw_v)
    if len(v) != len(b) + 1:
        raise ValueError(
            f"{what} needs len(values) == len(boundaries) + 1, got "
            f"{len(v)} values and {len(b)} boundaries"
        )
    if any(y <= x for x, y in zip(b, b[1:], strict=False)):
        raise ValueError(increasing)
    object.__setattr__(schedule, "boundaries", tuple(b))
    object.__setattr__(schedule, "values", v)
