r"""From a recorded training run to an NQM problem (Zhang et al. 2019, section 3.5).

The NQM is a quadratic with curvature :math:`h_i`, per-example gradient variance
:math:`c_i` and initial second moment :math:`E[\theta_i(0)^2]` along each of its
axes. We take the axes to be the Kronecker eigen-directions
:math:`v = u_i \otimes w_j` of every block, recorded at a step s by
:func:`kfac_spectra.checkpoints.collect_checkpoint`, and set

.. math::
    h_v = v^\top F v, \qquad c_v = \mathrm{Var}_n(v^\top g_n), \qquad
    E[\theta_v(0)^2] := \big(v^\top(\theta_s - \theta_T)\big)^2

with F the measured Fisher/GGN of the mean loss, :math:`g_n` the per-example
gradients (both from :mod:`kfac_spectra.gradient_stats`, on the fixed measurement
batch) and :math:`\theta_T` the parameters at the run's final step: the distance
the parameters still travel, projected on each direction, stands for the
distance to the optimum. For a block whose weight is stored as the (r, c) matrix
:math:`\bar W = [W | b]`, :math:`v^\top \bar W = u_i^\top \bar W w_j`.

**Dropped directions.** The NQM needs :math:`h > 0`. A direction whose measured
curvature is at most ``relative_floor`` times the largest one (default 1e-10,
which also catches exact zeros and negative round-off) carries no curvature
the measurement can resolve -- e.g. an input feature that is always zero, or a
dead unit -- and is dropped; the number dropped is reported in
:class:`NQMEstimate` and logged. Parameters outside K-FAC blocks have no
direction and are not part of the problem.

References:
    Zhang et al. 2019, "Which Algorithmic Choices Matter at Which Batch Sizes?",
    section 3 (NQM, eq. 1-3) and appendix E.2 (H and C in the K-FAC eigenbasis).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from kfac_spectra.checkpoints import load_checkpoint_arrays, read_manifest
from nqm import NQMProblem

__all__ = [
    "DEFAULT_RELATIVE_FLOOR",
    "NQMEstimate",
    "default_final_step",
    "estimate_nqm",
    "measure_nqm",
]

logger = logging.getLogger(__name__)

DEFAULT_RELATIVE_FLOOR = 1e-10
"""Curvatures at or below this fraction of the largest are numerically zero."""


@dataclass(frozen=True)
class NQMEstimate:
    """An NQM problem and what was left out building it.

    Attributes:
        problem: The problem (modes sorted by decreasing h).
        layer: (n,) block name of each mode.
        num_directions: Eigen-directions measured (before dropping).
        num_dropped: Directions dropped for h <= floor.
        floor: The curvature floor used.
        step: Step the statistics were measured at.
        final_step: Step whose parameters stand for the optimum.
    """

    problem: NQMProblem
    layer: np.ndarray
    num_directions: int
    num_dropped: int
    floor: float
    step: int
    final_step: int


def default_final_step(run_dir: str | os.PathLike[str]) -> int:
    """The step that stands for the end of training: the last collected step of
    a complete run.

    Raises:
        ValueError: If the run has no manifest or no collected step, or is
            incomplete (``"complete": false``: killed or still training; its last
            collected step is not the end of training, so the distance to it is
            not the distance to the optimum).
    """
    manifest = read_manifest(run_dir)
    steps = [c["step"] for c in manifest.get("checkpoints", [])]
    if not steps:
        raise ValueError(f"run_dir: {run_dir} has no collected steps")
    if manifest.get("complete") is not True:
        raise ValueError(
            f"run_dir: {run_dir} is an incomplete run (complete: false: killed or "
            f"still training), so its last collected step {max(steps)} is not the "
            "end of training; resume the run, or name the step that stands for "
            f"the end (final_step, --final-step; collected: {steps})"
        )
    return max(steps)


def measure_nqm(
    run_dir: str | os.PathLike[str],
    step: int,
    *,
    final_step: int | None = None,
    relative_floor: float = DEFAULT_RELATIVE_FLOOR,
) -> NQMEstimate:
    """Estimate the NQM of a run at ``step`` (see the module docstring).

    Args:
        run_dir: A run directory written by :func:`kfac_spectra.train.train`
            (or by :func:`~kfac_spectra.checkpoints.collect_checkpoint` calls).
        step: A collected step: h, c and the basis are taken there.
        final_step: Collected step standing for the end of training (default:
            the largest collected step of a complete run; an incomplete run,
            killed or still training, is refused without it).
        relative_floor: Directions with :math:`h \\le` ``relative_floor`` ·
            max h are dropped.

    Returns:
        The estimate.

    Raises:
        ValueError: If a step was not collected, the run is incomplete and
            ``final_step`` is not given, ``relative_floor`` is not in [0, 1),
            the blocks of the two steps differ, a statistic is not finite, or
            no direction has positive curvature.
        CorruptFileError: If a file of either step is missing, truncated or
            corrupted (checked against the step manifest's checksums).
    """
    if not 0 <= relative_floor < 1:
        raise ValueError(f"relative_floor must be in [0, 1), got {relative_floor}")
    if final_step is None:
        final_step = default_final_step(run_dir)
    factors, stats, params = load_checkpoint_arrays(run_dir, step)
    _, _, final_params = load_checkpoint_arrays(run_dir, final_step)
    h_parts, c_parts, init_parts, names = [], [], [], []
    for name, layer in stats.layers.items():
        key = f"block/{name}"
        if key not in params or key not in final_params:
            raise ValueError(f"final_step: block {name!r} missing at one of the steps")
        basis = factors[name]
        delta = params[key].astype(np.float64) - final_params[key].astype(np.float64)
        projected = basis["row_vectors"].T @ delta @ basis["col_vectors"]
        h_parts.append(layer.curvature.ravel())
        c_parts.append(layer.variance.ravel())
        init_parts.append(np.square(projected).ravel())
        names.append(np.full(layer.curvature.size, name, dtype=object))
    h = np.concatenate(h_parts)
    c = np.concatenate(c_parts)
    init_sq = np.concatenate(init_parts)
    layer_names = np.concatenate(names)
    for label, values in (("curvature", h), ("variance", c), ("init_sq", init_sq)):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"step: non-finite {label} at step {step}")
    floor = relative_floor * max(float(h.max()), 0.0)
    keep = h > floor
    if not keep.any():
        raise ValueError(f"step: no direction with positive curvature at step {step}")
    order = np.argsort(-h[keep], kind="stable")
    dropped = int((~keep).sum())
    if dropped:
        logger.info(
            "step %d: dropped %d of %d directions with h <= %.3g",
            step,
            dropped,
            h.size,
            floor,
        )
    problem = NQMProblem.from_spectra(
        h[keep][order], c[keep][order], init_sq[keep][order]
    )
    return NQMEstimate(
        problem=problem,
        layer=layer_names[keep][order],
        num_directions=int(h.size),
        num_dropped=dropped,
        floor=floor,
        step=int(step),
        final_step=int(final_step),
    )


def estimate_nqm(
    run_dir: str | os.PathLike[str],
    step: int,
    *,
    final_step: int | None = None,
    relative_floor: float = DEFAULT_RELATIVE_FLOOR,
) -> NQMProblem:
    """The NQM problem of a run at ``step``: :func:`measure_nqm`'s ``problem``.

    h from the curvature along the Kronecker eigen-directions, c from the
    per-example gradient variance along them, and
    :math:`E[\\theta_v(0)^2] = (v^\\top(\\theta_{step} - \\theta_{final}))^2`.
    Directions with numerically zero curvature are dropped (see
    :func:`measure_nqm`).

    Args:
        run_dir: The run directory.
        step: A collected step.
        final_step: Collected step standing for the end of training.
        relative_floor: Relative curvature floor.

    Returns:
        The problem.

    Raises:
        ValueError: As :func:`measure_nqm` (an incomplete run without
            ``final_step`` included).
        CorruptFileError: As :func:`measure_nqm`.
    """
    return measure_nqm(
        run_dir, step, final_step=final_step, relative_floor=relative_floor
    ).problem
