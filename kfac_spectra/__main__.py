"""Command line: train and collect, then report.

::

    python -m kfac_spectra run --model resnet8 --data mnist1d --out RUN_DIR \\
        [--steps N --checkpoints 0,50,200 --width W --config FILE.toml ...]
    python -m kfac_spectra report RUN_DIR [--figures DIR] [--step S] [--nqm-step S]
        [--final-step S]
    python -m kfac_spectra autoencoder [--out DIR] [--mnist-dir DIR] [--threads N]
        [--iterations N --config FILE.toml ...]
    python -m kfac_spectra            # embedded default: MNIST-1D ResNet8, then report
    torchrun --nproc-per-node N -m kfac_spectra run ...   # data parallel, N ranks

``run`` accepts one ``--<field>`` flag per :class:`kfac_spectra.train_config.TrainConfig`
field (flags override the TOML file, which overrides the defaults). ``report``
writes the E.1, E.2 and E.4 figures (PNG + PDF) with CSV tables beside them and
``RUN_DIR/nqm_problem.npz`` (:func:`kfac_spectra.bridge.estimate_nqm`), after
checking every file of the run against its checksum; it refuses an incomplete
run (killed or still training) unless ``--final-step`` names the step that stands
for the end of training. Bad arguments, a folder in use by another run and a
corrupt file print one line and exit with status 2. Under ``torchrun`` the ranks
train data-parallel (gloo on the CPU, nccl with ``--device cuda``, one GPU per
rank); rank 0 writes the run directory and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_RUN_DIR = Path("runs") / "kfac_spectra_default"
DEFAULT_FIGURES = Path("figures") / "kfac_spectra"
DEFAULT_AUTOENCODER_DIR = Path("runs") / "autoencoder"
SPECTRUM_RANGE = 1e-16
"""E.1 bins span [SPECTRUM_RANGE * largest, largest] K-FAC eigenvalue."""
FIGURE_DPI = 120
REPORT_COMMAND = "kfac_spectra report"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser (``run`` flags generated from ``TrainConfig``)."""
    from kfac_spectra.train import TrainConfig

    parser = _Parser(prog="python -m kfac_spectra", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    run = sub.add_parser("run", help="train and collect factors and statistics")
    run.add_argument("--out", required=True, help="run directory")
    run.add_argument("--config", help="TOML file of TrainConfig fields")
    run.add_argument("--report", action="store_true", help="report after training")
    _add_config_flags(run, TrainConfig)
    _add_autoencoder_parser(sub)
    report = sub.add_parser("report", help="figures, tables and the NQM problem")
    report.add_argument("run_dir")
    report.add_argument("--figures", help="output folder (default RUN_DIR/figures)")
    report.add_argument("--step", type=int, help="step for E.2/E.4 (default: last)")
    report.add_argument(
        "--nqm-step", type=int, help="step for the NQM problem (default: first)"
    )
    report.add_argument(
        "--final-step",
        type=int,
        help="step standing for the end of training in the NQM problem (default: "
        "the last step of a complete run; required for an incomplete one)",
    )
    return parser


def _add_config_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One ``--field-name`` flag per field of a config dataclass (unset: ``None``,
    so that the TOML file and the defaults apply)."""
    for field in dataclasses.fields(config_cls):
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            default=None,
            help=f"(default {field.default!r})",
        )


def _add_autoencoder_parser(sub: Any) -> None:
    from kfac_spectra.autoencoder import AutoencoderConfig

    ae = sub.add_parser(
        "autoencoder",
        help="deep-autoencoder benchmark: SGD vs block-diagonal vs "
        "block-tridiagonal K-FAC (Martens & Grosse 2015, Figure 4)",
    )
    ae.add_argument("--out", default=str(DEFAULT_AUTOENCODER_DIR), help="output folder")
    ae.add_argument("--config", help="TOML file of AutoencoderConfig fields")
    ae.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    _add_config_flags(ae, AutoencoderConfig)


# ----------------------------------------------------------------- report
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
    from nqm.run_folder import open_run_folder

    with open_run_folder(run_dir, command=REPORT_COMMAND, resume=True) as run:
        meta = run.meta
        try:
            inside = figures.resolve().is_relative_to(run_dir.resolve())
            if inside:
                rel = figures.resolve().relative_to(run_dir.resolve()).as_posix()
                yield run, _FigureSink(run, "" if rel == "." else rel + "/")
            else:
                with open_run_folder(figures, command=REPORT_COMMAND) as figs:
                    yield run, _FigureSink(figs, "")
                    figs.finish({"command": REPORT_COMMAND, "run_dir": str(run_dir)})
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


def _print_summary(summary: ReportSummary, nqm_step_label: str) -> None:
    print(
        f"E.4 (step {summary.step}): power-law exponent s = {summary.exponent:.3f} "
        f"[{summary.ci[0]:.3f}, {summary.ci[1]:.3f}], R^2 {summary.r_squared:.3f}"
    )
    print(
        f"E.2 (step {summary.step}): c vs h log-log slope {summary.slope:.3f}, "
        f"correlation {summary.correlation:.3f}, within 2x of H = C "
        f"{summary.within_2x:.3f}"
    )
    print(
        f"NQM problem ({nqm_step_label}): {summary.nqm_modes} modes, "
        f"{summary.nqm_dropped} directions dropped (h ~ 0) -> {summary.nqm_path}"
    )
    print(f"figures and tables: {summary.files[0].parent}")


# ----------------------------------------------------------------- commands
def _run(args: argparse.Namespace) -> int:
    from kfac_spectra.launch import finish, init_from_environment
    from kfac_spectra.train import TrainConfig, resolve_config, train

    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name) is not None
    }
    config = resolve_config(args.config, overrides)
    # under torchrun: join the other ranks (data-parallel training)
    launch = init_from_environment(config.device)
    try:
        result = train(config, args.out)
    except BaseException:
        finish(launch, wait=False)
        raise
    finish(launch)
    if launch.rank != 0:
        return 0
    ranks = f" on {launch.world_size} ranks" if launch.distributed else ""
    print(
        f"trained {config.steps} steps{ranks} in {result.seconds:.1f}s; final batch "
        f"loss {result.final_loss:.4f}; collected steps {list(result.collected)} -> "
        f"{result.run_dir}"
    )
    if args.report:
        summary = write_report(Path(args.out), Path(args.out) / "figures")
        _print_summary(summary, "first step")
    return 0


def _report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    figures = Path(args.figures) if args.figures else run_dir / "figures"
    summary = write_report(
        run_dir,
        figures,
        step=args.step,
        nqm_step=args.nqm_step,
        final_step=args.final_step,
    )
    _print_summary(
        summary, f"step {args.nqm_step if args.nqm_step is not None else 'first'}"
    )
    return 0


def _autoencoder(args: argparse.Namespace) -> int:
    import torch

    from kfac_spectra.autoencoder import (
        AutoencoderConfig,
        reach_summary,
        run_comparison,
    )
    from nqm.config import resolve_config

    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(AutoencoderConfig)
    }
    config = resolve_config(AutoencoderConfig, args.config, overrides)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads={args.threads} must be >= 1")
        torch.set_num_threads(args.threads)

    def progress(method: str, iteration: int, error: float) -> None:
        logging.getLogger("kfac_spectra").info(
            "%s iteration %d: training error %.4f", method, iteration, error
        )

    curves = run_comparison(config, args.out, progress)
    target, reached = reach_summary(curves, config.target_error)
    print(f"target training error {target:.4g}:")
    for (method, hit), curve in zip(reached, curves, strict=True):
        where = "not reached" if hit is None else f"iteration {hit[0]}, {hit[1]:.1f}s"
        print(f"  {method:15s} final {curve.errors[-1]:.4g}; target at {where}")
    print(f"curves, CSV and figure: {args.out}")
    return 0


def _default() -> int:
    from kfac_spectra.train import TrainConfig, train

    start = time.perf_counter()
    config = TrainConfig()
    print(
        f"default run: {config.model} (width {config.width}) on {config.data}, "
        f"{config.steps} {config.optimizer} steps at batch {config.batch_size} -> "
        f"{DEFAULT_RUN_DIR}"
    )
    result = train(config, DEFAULT_RUN_DIR)
    print(f"trained and collected in {result.seconds:.1f}s")
    summary = write_report(DEFAULT_RUN_DIR, DEFAULT_FIGURES)
    _print_summary(summary, "step 0")
    print(f"total wall time {time.perf_counter() - start:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    from nqm.run_folder import FolderInUseError  # a RuntimeError, caught by name

    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if not argv:
            return _default()
        args = build_parser().parse_args(argv)
        if args.command == "run":
            return _run(args)
        if args.command == "report":
            return _report(args)
        if args.command == "autoencoder":
            return _autoencoder(args)
        raise _UsageError("choose a command: run, report or autoencoder")
    except _UsageError as err:
        print(f"python -m kfac_spectra: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, OSError, FloatingPointError, FolderInUseError) as err:
        print(f"python -m kfac_spectra: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
