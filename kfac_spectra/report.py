"""The report of a ``kfac_spectra`` run: the E.1, E.2 and E.4 figures of Zhang
et al. (2019, appendix E) with the tables of their points, and the run's NQM
problem (``RUN_DIR/nqm_problem.npz``, :func:`kfac_spectra.bridge.estimate_nqm`).

:func:`write_report` checks every file of the run against its checksum first,
and refuses a run that did not finish unless ``final_step`` names the step that
stands for the end of training. ``python -m kfac_spectra report`` and
``python -m analysis net-predict`` call it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FIGURE_DPI",
    "REPORT_COMMAND",
    "SPECTRUM_RANGE",
    "ReportSummary",
    "write_report",
]

SPECTRUM_RANGE = 1e-16
"""E.1 bins span [SPECTRUM_RANGE * largest, largest] K-FAC eigenvalue."""
FIGURE_DPI = 120
REPORT_COMMAND = "kfac_spectra report"


@dataclass(frozen=True)
class ReportSummary:
    """Headline numbers of a report.

    Attributes:
        step: Step of E.2/E.4.
        exponent: Fitted power-law exponent s.
        ci: Its interval.
        r_squared: Fit quality.
        within_2x: Overall fraction of directions with c/h in [1/2, 2].
        slope: Overall log-log slope of c on h.
        correlation: Overall log-log correlation.
        nqm_modes: Modes of the NQM problem.
        nqm_dropped: Directions dropped for zero curvature.
        nqm_path: Where the problem was written.
        files: Figures and tables written.
    """

    step: int
    exponent: float
    ci: tuple[float, float]
    r_squared: float
    within_2x: float
    slope: float
    correlation: float
    nqm_modes: int
    nqm_dropped: int
    nqm_path: Path
    files: tuple[Path, ...]


class _FigureSink:
    """Where a report writes its figures and tables: a run folder, under a prefix
    (the figures folder inside the run directory, or a folder of its own)."""

    def __init__(self, folder: Any, prefix: str) -> None:
        self.folder, self.prefix = folder, prefix

    def save_figure(self, fig: Any, stem: str) -> list[Path]:
        return self.folder.save_figure(fig, self.prefix + stem, dpi=FIGURE_DPI)

    def write_csv(
        self, name: str, header: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> Path:
        """A CSV whose NumPy scalars become Python ones (the text of a NumPy
        float is its ``repr``, ``np.float64(...)``)."""
        plain = [
            [v.item() if isinstance(v, np.generic) else v for v in r] for r in rows
        ]
        return self.folder.write_csv(self.prefix + name, plain, header)


@contextlib.contextmanager
def _report_folders(
    run_dir: Path, figures: Path, *, complete: bool
) -> Iterator[tuple[Any, _FigureSink]]:
    """Own the run directory (for ``nqm_problem.npz``; every file of it verified)
    and the figures folder, inside it or a folder of its own. The run manifest
    gets its ``complete`` flag back, also when the report fails."""
    from nqm.run_folder import open_run_folders

    inside = figures.resolve().is_relative_to(run_dir.resolve())
    paths = [run_dir] if inside else [run_dir, figures]
    flags = [True, False][: len(paths)]
    with open_run_folders(paths, command=REPORT_COMMAND, resume=flags) as folders:
        run, meta = folders[0], folders[0].meta
        try:
            if inside:
                rel = figures.resolve().relative_to(run_dir.resolve()).as_posix()
                yield run, _FigureSink(run, "" if rel == "." else rel + "/")
            else:
                yield run, _FigureSink(folders[1], "")
                folders[1].finish({"command": REPORT_COMMAND, "run_dir": str(run_dir)})
        finally:
            (run.finish if complete else run.checkpoint)(meta)


def write_report(
    run_dir: Path,
    figures: Path,
    *,
    step: int | None = None,
    nqm_step: int | None = None,
    final_step: int | None = None,
) -> ReportSummary:
    """Draw E.1, E.2, E.4 with CSV tables, and write ``RUN_DIR/nqm_problem.npz``.

    Every file of the run is checked against its checksum first; the run
    directory and the figures folder are locked while the report writes.

    Args:
        run_dir: a run directory of ``kfac_spectra run``.
        figures: the folder of the figures and their tables.
        step: step of E.2/E.4 (default: the last collected).
        nqm_step: step of the NQM problem (default: the first collected).
        final_step: collected step standing for the end of training (default:
            the last step of a complete run; required for an incomplete one).

    Raises:
        ValueError: If the run has no collected steps, a step is not collected,
            or the run is incomplete and ``final_step`` is not given.
        CorruptFileError: If a file of the run is missing or corrupted.
        FolderInUseError: If another run or report holds a folder.
    """
    from kfac_spectra.bridge import default_final_step, measure_nqm
    from kfac_spectra.checkpoints import read_manifest

    manifest = read_manifest(run_dir)
    steps = [c["step"] for c in manifest.get("checkpoints", [])]
    if not steps:
        raise ValueError(f"run_dir: {run_dir} has no collected steps")
    step = steps[-1] if step is None else step
    nqm_step = steps[0] if nqm_step is None else nqm_step
    if final_step is None:
        final_step = default_final_step(run_dir)
    for name, value in (
        ("step", step),
        ("nqm_step", nqm_step),
        ("final_step", final_step),
    ):
        if value not in steps:
            raise ValueError(f"{name}: {value} not collected; have {steps}")
    complete = manifest.get("complete") is True
    with _report_folders(run_dir, figures, complete=complete) as (run, sink):
        spectra = _spectra(run_dir, steps)
        files = _write_e1_spectra(run_dir, spectra, sink)
        comparisons, e2_files = _write_e2_variance_curvature(run_dir, step, sink)
        fit, e4_files = _write_e4_power_law(spectra[step], step, sink)
        files += e2_files + e4_files

        estimate = measure_nqm(run_dir, nqm_step, final_step=final_step)
        nqm_path = run.file("nqm_problem.npz")
        estimate.problem.save(nqm_path)
        run.record("nqm_problem.npz")
    overall = comparisons["overall"]
    return ReportSummary(
        step=step,
        exponent=fit.exponent,
        ci=(fit.ci_low, fit.ci_high),
        r_squared=fit.r_squared,
        within_2x=overall.fraction_within,
        slope=overall.log_slope,
        correlation=overall.log_correlation,
        nqm_modes=estimate.problem.n_modes,
        nqm_dropped=estimate.num_dropped,
        nqm_path=nqm_path,
        files=tuple(files),
    )


def _spectra(run_dir: Path, steps: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The factor spectra ``{step: {block: FactorSpectrum}}`` of the collected steps."""
    from kfac_spectra.checkpoints import load_checkpoint_arrays
    from kfac_spectra.spectra import FactorSpectrum

    spectra = {}
    for s in steps:
        factors, _, _ = load_checkpoint_arrays(run_dir, s)
        spectra[s] = {
            k: FactorSpectrum(f["row_values"], f["col_values"])
            for k, f in factors.items()
        }
    return spectra


def _write_e1_spectra(
    run_dir: Path, spectra: dict[int, dict[str, Any]], sink: _FigureSink
) -> list[Path]:
    """E.1: histograms of the K-FAC eigenvalues at every collected step.

    Raises:
        ValueError: If no step has a positive K-FAC eigenvalue.
    """
    from kfac_spectra import plots
    from kfac_spectra.spectra import eigenvalue_histogram, log_bins

    highs, lows = [], []
    for layers in spectra.values():
        for sp in layers.values():
            first, second = sp.first[sp.first > 0], sp.second[sp.second > 0]
            if first.size and second.size:
                highs.append(first[0] * second[0])
                lows.append(first[-1] * second[-1])
    if not highs:
        raise ValueError(f"run_dir: {run_dir} has no positive K-FAC eigenvalue")
    # Products below 1e-16 of the largest are round-off of numerically zero
    # factor eigenvalues; they are counted in a first row of the table, not drawn.
    high = max(highs)
    low = max(min(lows), high * SPECTRUM_RANGE)
    if not low < high:
        low, high = low / 2, high * 2
    edges = log_bins(low * 0.999, high * 1.001, 60)
    steps = list(spectra)
    histograms = [eigenvalue_histogram(spectra[s], edges) for s in steps]
    files = sink.save_figure(
        plots.plot_spectra_evolution(steps, histograms), "e1_spectra"
    )
    table = sink.write_csv(
        "e1_spectra.csv",
        ["step", "bin_low", "bin_high", "count"],
        [
            row
            for s, h in zip(steps, histograms, strict=True)
            for row in [
                (s, 0.0, edges[0], h.below),
                *(
                    (s, edges[b], edges[b + 1], int(h.counts[b]))
                    for b in range(h.counts.size)
                ),
                (s, edges[-1], np.inf, h.above),
            ]
        ],
    )
    return [*files, table]


def _write_e2_variance_curvature(
    run_dir: Path, step: int, sink: _FigureSink
) -> tuple[dict[str, Any], list[Path]]:
    """E.2: gradient variance against curvature per direction at ``step``."""
    from kfac_spectra import plots
    from kfac_spectra.checkpoints import load_checkpoint_arrays
    from kfac_spectra.gradient_stats import compare_variance_curvature

    _, stats, _ = load_checkpoint_arrays(run_dir, step)
    comparisons = compare_variance_curvature(stats)
    files = sink.save_figure(
        plots.plot_variance_vs_curvature(comparisons), "e2_variance_curvature"
    )
    table = sink.write_csv(
        "e2_variance_curvature.csv",
        [
            "block",
            "directions",
            "excluded",
            "log_slope",
            "log_intercept",
            "log_correlation",
            "fraction_within_2x",
        ],
        [
            (
                k,
                c.curvature.size,
                c.num_excluded,
                c.log_slope,
                c.log_intercept,
                c.log_correlation,
                c.fraction_within,
            )
            for k, c in comparisons.items()
        ],
    )
    return comparisons, [*files, table]


def _write_e4_power_law(
    spectra: dict[str, Any], step: int, sink: _FigureSink
) -> tuple[Any, list[Path]]:
    """E.4: the K-FAC spectrum at ``step`` against ``1/i``; returns the fit."""
    from kfac_spectra import plots
    from kfac_spectra.powerlaw import fit_power_law, rank_overlay
    from kfac_spectra.spectra import kfac_eigenvalues

    spectrum = kfac_eigenvalues(spectra)
    d = int(np.sum(spectrum > 0))
    rank_min = 10 if d >= 60 else 1
    fit = fit_power_law(
        spectrum,
        rank_min=rank_min,
        rank_max=max(d // 2, rank_min + 2),
        num_points=60 if d >= 60 else None,
    )
    overlay = rank_overlay(spectrum[spectrum > 0], fit)
    files = sink.save_figure(plots.plot_power_law(overlay, fit), "e4_power_law")
    table = sink.write_csv(
        "e4_power_law.csv",
        [
            "step",
            "exponent",
            "ci_low",
            "ci_high",
            "confidence",
            "rank_min",
            "rank_max",
            "num_points",
            "r_squared",
            "num_eigenvalues",
        ],
        [
            (
                step,
                fit.exponent,
                fit.ci_low,
                fit.ci_high,
                fit.confidence,
                fit.rank_min,
                fit.rank_max,
                fit.num_points,
                fit.r_squared,
                spectrum.size,
            )
        ],
    )
    return fit, [*files, table]
