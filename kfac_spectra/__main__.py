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
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

from kfac_spectra.report import ReportSummary, write_report

DEFAULT_RUN_DIR = Path("runs") / "kfac_spectra_default"
DEFAULT_FIGURES = Path("figures") / "kfac_spectra"
DEFAULT_AUTOENCODER_DIR = Path("runs") / "autoencoder"


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
    from nqm.runtime import torch_device

    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name) is not None
    }
    config = resolve_config(args.config, overrides)
    torch_device(config.device)  # one line naming an absent device, before any work
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
