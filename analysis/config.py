"""The one visible block of defaults for the NQM batch-size scaling study.

Precedence, lowest first: the defaults of :class:`ScalingConfig`, the ``--quick``
preset (:data:`QUICK_OVERRIDES`), a TOML file (``--config``), then explicit command
line options. :func:`resolve_config` merges them and validates the result.

A TOML file uses the field names below, for example::

    dim = 2000
    targets = [0.01, 0.03]
    batch_sizes = "2^0..2^12"      # or a list of integers
    families = ["sgd", "momentum"]
    powers = [0.0, 0.5]
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from nqm.search import Family

__all__ = [
    "ScalingConfig",
    "QUICK_OVERRIDES",
    "parse_batch_sizes",
    "parse_floats",
    "parse_families",
    "load_config_file",
    "resolve_config",
]

_ALL_FAMILIES: tuple[str, ...] = tuple(f.value for f in Family)


@dataclass(frozen=True)
class ScalingConfig:
    """Every knob of the scaling study, with the paper's reference values.

    The default problem is seed 004, section 3.7: ``d = 10^4``, :math:`h_i = 1/i`,
    :math:`c_i = h_i`, :math:`E[\\theta_i(0)^2] = 1`, target loss 0.01, batch sizes
    :math:`2^0 \\ldots 2^{20}`.

    Attributes:
        dim: number of dimensions of the power-law problem.
        h_power: :math:`h_i = i^{-a}`.
        c_power: :math:`c_i = i^{-b}`.
        init_sq: :math:`E[\\theta_i(0)^2]`.
        problem: optional ``.npz`` spectrum file (keys ``h``, ``c``; read by
            :meth:`nqm.NQMProblem.load`); replaces the power-law problem.
        targets: target losses of the main study (every family and power).
        threshold_targets: the loss-threshold family (E.5), run for SGD, p = 0.
        batch_sizes: batch sizes, integers >= 1.
        families: optimizer families (values of :class:`nqm.search.Family`).
        powers: preconditioning powers in [0, 1].
        shape_batch_sizes: how many batch sizes (spread over the range) to show
            in the schedule-shape figure.
        transient_alpha_h: :math:`\\alpha h` of the momentum-vs-SGD transient
            comparison (E.3).
        transient_one_minus_beta: the values of :math:`1-\\beta` compared in E.3.
        fixed_momentum: the momentum held fixed in Figure 14b (E.6), where only
            the lr is tuned, at every power and main target (when the momentum
            family is studied); 0 skips that panel.
        out: directory for tables, the resolved config and the manifest.
        figures: directory for the figures and the tables of their points.
        workers: processes tuning curves in parallel (0: one per CPU); the
            results do not depend on it.
        keep_going: record batch sizes whose tuning raises (``steps = nan`` and
            the message in the ``error`` column) instead of aborting the study.
        device: torch device of the schedule families' batched L-BFGS (``"cpu"``
            or e.g. ``"cuda"``); the constant-lr families always run in numpy.
    """

    dim: int = 10_000
    h_power: float = 1.0
    c_power: float = 1.0
    init_sq: float = 1.0
    problem: str | None = None
    targets: tuple[float, ...] = (0.01,)
    threshold_targets: tuple[float, ...] = (0.1, 0.03, 0.01, 0.003)
    batch_sizes: tuple[int, ...] = tuple(2**k for k in range(21))
    families: tuple[str, ...] = _ALL_FAMILIES
    powers: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    shape_batch_sizes: int = 4
    transient_alpha_h: float = 0.0005
    transient_one_minus_beta: tuple[float, ...] = (0.5, 0.1, 0.03, 0.01)
    fixed_momentum: float = 0.9
    out: str = "results/nqm-scaling"
    figures: str = "figures"
    workers: int = 1
    keep_going: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON/TOML-friendly dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
        }

    def to_toml(self) -> str:
        """The configuration as a TOML document that ``--config`` reads back.

        ``None`` values (no spectrum file) are left out: TOML has no null.
        """
        lines = [
            "# resolved nqm-scaling configuration (python -m analysis nqm-scaling)"
        ]
        for key, value in self.to_dict().items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(int(value))


#: The documented small configuration behind ``--quick`` (used by the tests and
#: for a look at the pipeline in seconds): 200 dimensions, 9 batch sizes.
QUICK_OVERRIDES: Mapping[str, Any] = {
    "dim": 200,
    "targets": (0.05,),
    "threshold_targets": (0.2, 0.1, 0.05),
    "batch_sizes": tuple(2**k for k in range(0, 17, 2)),
    "families": ("sgd", "momentum", "ema", "pwc"),
    "powers": (0.0, 0.5, 1.0),
    "shape_batch_sizes": 3,
}


# ------------------------------------------------------------------ parsing
_POWER_TERM = re.compile(r"^\s*(\d+)\s*\^\s*(\d+)\s*$")
_RANGE = re.compile(r"^\s*(\d+)\s*\^\s*(\d+)\s*\.\.\s*(\d+)\s*\^\s*(\d+)\s*$")


def _int_term(text: str) -> int:
    m = _POWER_TERM.match(text)
    if m:
        return int(m.group(1)) ** int(m.group(2))
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"batch size {text.strip()!r} is not an integer") from None
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"batch size {text.strip()!r} is not an integer")
    return int(value)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """Parse ``"1,2,4"``, ``"2^0..2^20"`` or a comma list mixing both.

    ``a^m..a^n`` expands to :math:`a^m, a^{m+1}, \\ldots, a^n`.

    Raises:
        ValueError: naming ``batch size`` for a malformed entry (range checks
            happen in :class:`ScalingConfig`).
    """
    out: list[int] = []
    for part in str(text).split(","):
        if not part.strip():
            raise ValueError(f"batch sizes {text!r} contain an empty entry")
        m = _RANGE.match(part)
        if m:
            base, lo, base2, hi = (int(g) for g in m.groups())
            if base != base2 or lo > hi:
                raise ValueError(
                    f"batch size range {part.strip()!r} must be a^m..a^n, m<=n"
                )
            out.extend(base**k for k in range(lo, hi + 1))
        else:
            out.append(_int_term(part))
    return tuple(out)


def parse_floats(text: str, name: str) -> tuple[float, ...]:
    """Parse a comma-separated list of floats for option ``name``."""
    try:
        return tuple(float(x) for x in str(text).split(","))
    except ValueError:
        raise ValueError(
            f"{name} must be comma-separated numbers, got {text!r}"
        ) from None


def parse_families(text: str) -> tuple[str, ...]:
    """Parse a comma-separated list of family names (validated later)."""
    return tuple(x.strip() for x in str(text).split(",") if x.strip())


# --------------------------------------------------------------- validation
def _validate(cfg: ScalingConfig) -> None:
    if isinstance(cfg.dim, bool) or int(cfg.dim) != cfg.dim or cfg.dim < 1:
        raise ValueError(f"dim must be a positive integer, got {cfg.dim!r}")
    for name in ("h_power", "c_power"):
        if not math.isfinite(getattr(cfg, name)):
            raise ValueError(f"{name} must be finite, got {getattr(cfg, name)!r}")
    if not (math.isfinite(cfg.init_sq) and cfg.init_sq > 0):
        raise ValueError(f"init_sq must be positive, got {cfg.init_sq!r}")
    for name in ("targets", "threshold_targets"):
        values = getattr(cfg, name)
        if not values:
            raise ValueError(f"{name} must not be empty")
        for t in values:
            if not (math.isfinite(t) and t > 0):
                raise ValueError(
                    f"target must be a positive number, got {t!r} in {name}"
                )
    if not cfg.batch_sizes:
        raise ValueError("batch_sizes must not be empty")
    for b in cfg.batch_sizes:
        if isinstance(b, bool) or int(b) != b or b < 1:
            raise ValueError(f"batch size must be an integer >= 1, got {b!r}")
    if not cfg.families:
        raise ValueError("families must not be empty")
    for f in cfg.families:
        if f not in _ALL_FAMILIES:
            raise ValueError(
                f"unknown family {f!r}; choose from {', '.join(_ALL_FAMILIES)}"
            )
    if not cfg.powers:
        raise ValueError("powers must not be empty")
    for p in cfg.powers:
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"precond power must lie in [0, 1], got {p!r}")
    if not (math.isfinite(cfg.fixed_momentum) and 0.0 <= cfg.fixed_momentum < 1.0):
        raise ValueError(
            f"fixed_momentum must lie in [0, 1) (0: skip), got {cfg.fixed_momentum!r}"
        )
    if int(cfg.shape_batch_sizes) != cfg.shape_batch_sizes or cfg.shape_batch_sizes < 1:
        raise ValueError(
            "shape_batch_sizes must be a positive integer, "
            f"got {cfg.shape_batch_sizes!r}"
        )
    if (
        isinstance(cfg.workers, bool)
        or int(cfg.workers) != cfg.workers
        or cfg.workers < 0
    ):
        raise ValueError(f"workers must be a non-negative integer, got {cfg.workers!r}")
    if cfg.device != "cpu":
        from nqm._tuning import _torch_device

        _torch_device(cfg.device)  # ValueError naming the device
    if not (0 < cfg.transient_alpha_h < 1):
        raise ValueError(
            f"transient_alpha_h must lie in (0, 1), got {cfg.transient_alpha_h!r}"
        )
    for v in cfg.transient_one_minus_beta:
        if not (0 < v <= 1):
            raise ValueError(
                f"transient_one_minus_beta values must lie in (0, 1], got {v!r}"
            )


def _coerce(name: str, value: Any) -> Any:
    """Bring a file or CLI value to the field's type (lists -> sorted-free tuples)."""
    if name == "batch_sizes":
        if isinstance(value, str):
            return parse_batch_sizes(value)
        return tuple(_int_term(str(v)) for v in _as_list(name, value))
    if name == "families":
        if isinstance(value, str):
            return parse_families(value)
        return tuple(str(v) for v in _as_list(name, value))
    if name in ("targets", "threshold_targets", "powers", "transient_one_minus_beta"):
        if isinstance(value, str):
            return parse_floats(value, name)
        try:
            return tuple(float(v) for v in _as_list(name, value))
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} must be a list of numbers, got {value!r}"
            ) from None
    if name in ("dim", "shape_batch_sizes", "workers"):
        if isinstance(value, str):
            value = _number(name, value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value != int(value):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if name in ("h_power", "c_power", "init_sq", "transient_alpha_h", "fixed_momentum"):
        if isinstance(value, str):
            return _number(name, value)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if name == "keep_going":
        if not isinstance(value, bool):
            raise ValueError(f"keep_going must be true or false, got {value!r}")
        return value
    if name in ("problem", "out", "figures"):
        return None if value is None else str(value)
    if name == "device":
        if not isinstance(value, str):
            raise ValueError(f"device must be a string, got {value!r}")
        return value
    raise ValueError(f"unknown config key {name!r}")  # pragma: no cover


def _number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None


def _as_list(name: str, value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    raise ValueError(f"{name} must be a list, got {value!r}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML file of :class:`ScalingConfig` keys.

    Raises:
        ValueError: if the file is unreadable, not TOML, or has an unknown key.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ValueError(
            f"cannot read config file {str(path)!r}: {exc.strerror}"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
    known = {f.name for f in fields(ScalingConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"config file {str(path)!r} has unknown key(s) {unknown}; "
            f"known keys: {', '.join(sorted(known))}"
        )
    return {k: _coerce(k, v) for k, v in data.items()}


def resolve_config(
    *,
    quick: bool = False,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: ScalingConfig | None = None,
) -> ScalingConfig:
    """Merge defaults < quick preset < config file < explicit overrides.

    Args:
        quick: apply :data:`QUICK_OVERRIDES`.
        config_file: optional TOML file.
        overrides: explicit values (``None`` values are ignored, so an argparse
            namespace's unset options do not mask the file).
        base: starting point (default: :class:`ScalingConfig` defaults).

    Returns:
        The validated, frozen configuration.

    Raises:
        ValueError: naming the offending key or value.
    """
    merged: dict[str, Any] = {}
    if quick:
        merged.update(QUICK_OVERRIDES)
    if config_file is not None:
        merged.update(load_config_file(config_file))
    for k, v in (overrides or {}).items():
        if v is not None:
            merged[k] = _coerce(k, v)
    return replace(base or ScalingConfig(), **merged)


def unique_sorted(values: Iterable[float]) -> tuple:
    """Sorted unique values (the study treats batch sizes and powers as sets)."""
    return tuple(sorted(set(values)))
