"""The one visible block of defaults for the NQM batch-size scaling study.

Precedence, lowest first: the defaults of :class:`ScalingConfig`, the ``--quick``
preset (:data:`QUICK_OVERRIDES`), a TOML file (``--config``), then explicit command
line options. :func:`resolve_config` merges them with
:func:`nqm.config.resolve_config` and validates the result.

A TOML file uses the field names below, for example::

    dim = 2000
    targets = [0.01, 0.03]
    batch_sizes = "2^0..2^12"      # or a list of integers
    families = ["sgd", "momentum"]
    powers = [0.0, 0.5]
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import nqm.config
from nqm.search import Family

from .executor import ExecutorKind, executor_options

__all__ = [
    "ScalingConfig",
    "QUICK_OVERRIDES",
    "REFERENCE_FAMILIES",
    "parse_batch_sizes",
    "load_config_file",
    "resolve_config",
]

_ALL_FAMILIES: tuple[str, ...] = tuple(f.value for f in Family)
#: The families of the reference study (Zhang et al. 2019, section 3.7 and
#: appendix E); the other :class:`nqm.search.Family` members are opt-in.
REFERENCE_FAMILIES: tuple[str, ...] = tuple(
    f.value
    for f in (
        Family.SGD,
        Family.MOMENTUM,
        Family.EMA,
        Family.MOMENTUM_EMA,
        Family.PWC,
        Family.LINEAR_DECAY,
    )
)


@dataclass(frozen=True)
class ScalingConfig:
    """Every knob of the scaling study, with the paper's reference values.

    The default problem is Zhang et al. 2019, section 3.7: ``d = 10^4``, :math:`h_i = 1/i`,
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
        families: optimizer families (values of :class:`nqm.search.Family`;
            default every family: the paper's :data:`REFERENCE_FAMILIES` and the
            warm-up schedules ``wsd`` and ``cosine``).
        powers: preconditioning powers in [0, 1].
        shape_batch_sizes: how many batch sizes (spread over the range) to show
            in the schedule-shape figure.
        transient_alpha_h: :math:`\\alpha h` of the momentum-vs-SGD transient
            comparison (E.3).
        transient_one_minus_beta: the values of :math:`1-\\beta` compared in E.3.
        fixed_momentum: the momentum held fixed in Figure 14b (E.6), where only
            the lr is tuned, at every power and main target (when the momentum
            family is studied); 0 skips that panel.
        bcrit_targets: targets of the critical-batch-vs-target figure (empty:
            skip it).
        bcrit_families: families whose B_crit(L) is drawn (p = 0).
        ramp_budgets: example budgets of the batch-ramp figure, as multiples of
            the constant batch's E_min at the first main target (SGD, p = 0;
            empty: skip it).
        ramp_pieces: pieces of each tuned batch-size ramp.
        out: directory for tables, the resolved config and the manifest.
        figures: directory for the figures and the tables of their points.
        workers: processes tuning curves in parallel (0: one per CPU); the
            results do not depend on it.
        keep_going: record batch sizes whose tuning raises (``steps = nan`` and
            the message in the ``error`` column) instead of aborting the study.
        device: torch device of the schedule families' batched L-BFGS (``"cpu"``
            or e.g. ``"cuda"``); the constant-lr families always run in numpy.
        executor: where the curves are tuned (:class:`analysis.executor.
            ExecutorKind`): local processes or Ray tasks; the results do not
            depend on it.
        ray_address: the Ray cluster to join (``executor = "ray"``); unset: a
            local Ray with ``workers`` CPUs.
    """

    dim: int = 10_000
    h_power: float = 1.0
    c_power: float = 1.0
    init_sq: float = 1.0
    problem: str | None = None
    targets: tuple[float, ...] = (0.01,)
    threshold_targets: tuple[float, ...] = (0.1, 0.03, 0.01, 0.003)
    batch_sizes: tuple[int, ...] = field(
        default=tuple(2**k for k in range(21)),
        metadata={nqm.config.PARSE: lambda v: _batch_sizes_value(v)},
    )
    families: tuple[str, ...] = _ALL_FAMILIES
    powers: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    shape_batch_sizes: int = 4
    transient_alpha_h: float = 0.0005
    transient_one_minus_beta: tuple[float, ...] = (0.5, 0.1, 0.03, 0.01)
    fixed_momentum: float = 0.9
    bcrit_targets: tuple[float, ...] = (0.3, 0.1, 0.03, 0.01, 0.003)
    bcrit_families: tuple[str, ...] = ("sgd",)
    ramp_budgets: tuple[float, ...] = (1.5, 3.0, 10.0)
    ramp_pieces: int = 16
    out: str = "results/nqm-scaling"
    figures: str = "figures"
    workers: int = 1
    keep_going: bool = False
    device: str = "cpu"
    executor: ExecutorKind = ExecutorKind.LOCAL
    ray_address: str | None = None

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON/TOML-friendly dict (tuples become lists, enums their values)."""
        return {
            k: list(v) if isinstance(v, tuple) else _plain(v)
            for k, v in asdict(self).items()
        }

    def to_toml(self) -> str:
        """The configuration as a TOML document that ``--config`` reads back.

        ``None`` values (no spectrum file) are left out: TOML has no null.
        """
        return nqm.config.config_to_toml(
            self, "resolved nqm-scaling configuration (python -m analysis nqm-scaling)"
        )


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, ExecutorKind) else value


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
    "bcrit_targets": (0.2, 0.1, 0.05),
    "ramp_budgets": (1.5, 5.0),
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


# --------------------------------------------------------------- validation
def _validate(cfg: ScalingConfig) -> None:
    if isinstance(cfg.dim, bool) or int(cfg.dim) != cfg.dim or cfg.dim < 1:
        raise ValueError(f"dim must be a positive integer, got {cfg.dim!r}")
    for name in ("h_power", "c_power"):
        if not math.isfinite(getattr(cfg, name)):
            raise ValueError(f"{name} must be finite, got {getattr(cfg, name)!r}")
    if not (math.isfinite(cfg.init_sq) and cfg.init_sq > 0):
        raise ValueError(f"init_sq must be positive, got {cfg.init_sq!r}")
    for name in ("targets", "threshold_targets", "bcrit_targets"):
        values = getattr(cfg, name)
        if not values and name != "bcrit_targets":
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
    for f in cfg.families + cfg.bcrit_families:
        if f not in _ALL_FAMILIES:
            raise ValueError(
                f"unknown family {f!r}; choose from {', '.join(_ALL_FAMILIES)}"
            )
    for m in cfg.ramp_budgets:
        if not (math.isfinite(m) and m >= 1.0):
            raise ValueError(
                f"ramp_budgets are multiples of E_min, each >= 1, got {m!r}"
            )
    if int(cfg.ramp_pieces) != cfg.ramp_pieces or cfg.ramp_pieces < 1:
        raise ValueError(
            f"ramp_pieces must be a positive integer, got {cfg.ramp_pieces!r}"
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
    kind = executor_options(cfg.executor, cfg.workers, cfg.ray_address)
    object.__setattr__(cfg, "executor", kind)
    if cfg.device != "cpu":
        from nqm.runtime import torch_device

        torch_device(cfg.device)  # ValueError naming the device
    if not (0 < cfg.transient_alpha_h < 1):
        raise ValueError(
            f"transient_alpha_h must lie in (0, 1), got {cfg.transient_alpha_h!r}"
        )
    for v in cfg.transient_one_minus_beta:
        if not (0 < v <= 1):
            raise ValueError(
                f"transient_one_minus_beta values must lie in (0, 1], got {v!r}"
            )


def _batch_sizes_value(value: Any) -> tuple[int, ...]:
    """Batch sizes from a file or the command line: text (:func:`parse_batch_sizes`),
    a list of integers or ``"a^k"`` terms, or one integer."""
    if isinstance(value, str):
        return parse_batch_sizes(value)
    if isinstance(value, (list, tuple)):
        return tuple(_int_term(str(v)) for v in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (_int_term(str(value)),)
    raise ValueError(f"batch_sizes must be a list, got {value!r}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML file of :class:`ScalingConfig` keys (:func:`nqm.config.load_toml`).

    Raises:
        ValueError: if the file is unreadable, not TOML, or has an unknown key.
    """
    return nqm.config.load_toml(ScalingConfig, path)


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
    start = base or ScalingConfig()
    if quick:
        start = replace(start, **QUICK_OVERRIDES)
    return nqm.config.resolve_config(ScalingConfig, config_file, overrides, base=start)


def unique_sorted(values: Iterable[float]) -> tuple:
    """Sorted unique values (the study treats batch sizes and powers as sets)."""
    return tuple(sorted(set(values)))
