"""``python -m analysis nqm-scaling``: batch-size scaling studies on the NQM.

Runs the reference study of Zhang et al. 2019 (section 3.7 and appendix
E.3-E.7): every optimizer family tuned at every preconditioning power and batch
size, then writes

* into ``--out`` (default ``results/nqm-scaling/``): the tidy tables
  ``records``, ``critical_batch``, ``lower_bound``, ``schedule_shapes``,
  ``momentum_transient`` (CSV and JSON each), ``config.json`` and
  ``config.toml`` (the resolved configuration; the TOML is a valid
  ``--config``) and ``manifest.json`` (configuration, package versions, git
  revision, timings, files);
* into ``--figures`` (default ``figures/``): each figure as PNG and PDF with the
  table of its points beside it (CSV and JSON). Besides the paper's figures:
  ``critical_batch_vs_target`` (B_crit(L)), ``steps_examples_tradeoff``
  (McCandlish et al. 2018, fig. 1, with its hyperbola) and ``batch_ramp``
  (steps a tuned batch-size ramp saves at equal examples).

Defaults live in :class:`analysis.config.ScalingConfig`; ``--quick`` applies the
small preset :data:`analysis.config.QUICK_OVERRIDES`; ``--config FILE.toml`` sets
the same keys; explicit options override the file. Every file is written
atomically (temporary file + rename).

On a terminal a progress bar shows the tuning; otherwise (output to a log or a
pipe) one line per finished curve goes to stderr. Each tuned curve is journalled
in ``--out/.journal`` as it finishes, so a rerun of the same configuration after
a kill resumes there; the journal is removed once the manifest is written.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analysis import cli_common as common

__all__ = ["add_parser", "run", "config_from_args"]

logger = logging.getLogger(__name__)

#: Inside --out: the tuned curves of an unfinished run (resumed by a rerun).
JOURNAL_DIR = ".journal"
#: Options that results do not depend on: a rerun that changes them resumes.
NOT_IN_RESULTS = ("out", "figures", "workers", "executor", "ray_address")

#: Packages whose versions go into the manifest.
_MANIFEST_PACKAGES: tuple[str, ...] = (*common.BASE_PACKAGES, "tqdm")


_COMMAND = "nqm-scaling"
_SUMMARY = "steps-to-target vs batch size for tuned optimizers on the NQM"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``nqm-scaling`` (:func:`analysis.cli_common.add_subcommand`)."""
    return common.add_subcommand(sub, _COMMAND, _SUMMARY, __doc__, _arguments, run)


def _arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "problem (default: d = 10^4, h_i = c_i = 1/i, E[theta^2] = 1)"
    )
    g.add_argument("--dim", help="dimensions of the power-law problem")
    g.add_argument("--h-power", help="h_i = i^-a")
    g.add_argument("--c-power", help="c_i = i^-b")
    g.add_argument("--init-sq", help="E[theta_i(0)^2]")
    g.add_argument(
        "--problem",
        metavar="FILE.npz",
        help="measured spectrum (keys h, c[, init_sq, weight]); replaces the power law",
    )
    s = p.add_argument_group("study")
    s.add_argument("--targets", help="comma-separated target losses (default 0.01)")
    s.add_argument(
        "--threshold-targets",
        help="targets of the loss-threshold figure, SGD at p = 0 "
        "(default 0.1,0.03,0.01,0.003)",
    )
    s.add_argument(
        "--batch-sizes", help='e.g. "1,2,4" or "2^0..2^20" (default 2^0..2^20)'
    )
    s.add_argument(
        "--families",
        help="comma-separated: sgd,momentum,ema,momentum_ema,pwc,linear_decay,"
        "wsd,cosine (default all)",
    )
    s.add_argument("--powers", help="comma-separated preconditioning powers in [0, 1]")
    s.add_argument(
        "--fixed-momentum",
        help="momentum held fixed in the E.6 panel (b), lr tuned (default 0.9; 0: skip)",
    )
    f = p.add_argument_group("beyond the paper")
    f.add_argument(
        "--bcrit-targets",
        help="targets of the critical-batch-vs-target figure "
        "(default 0.3,0.1,0.03,0.01,0.003; empty: skip)",
    )
    f.add_argument(
        "--bcrit-families", help="families of that figure, p = 0 (default sgd)"
    )
    f.add_argument(
        "--ramp-budgets",
        help="example budgets of the batch-ramp figure in units of E_min at the "
        "first target (default 1.5,3,10; empty: skip)",
    )
    o = common.add_run_options(
        p,
        out_default="results/nqm-scaling",
        figures_default="figures",
        quick_help="small preset (d = 200, 9 batch sizes, 4 families, 3 powers) "
        "for a fast look",
        workers_help="processes tuning curves in parallel (default 1; 0: all CPUs)",
    )
    o.add_argument(
        "--device",
        help="torch device of the schedules' batched L-BFGS (default cpu; e.g. cuda)",
    )
    o.add_argument(
        "--keep-going",
        action="store_const",
        const=True,
        default=None,
        help="record batch sizes whose tuning fails (steps nan, error column) "
        "instead of aborting",
    )


def config_from_args(args: argparse.Namespace) -> Any:
    """The config of ``args`` (:func:`analysis.cli_common.config_from_options`).

    Raises:
        ValueError: naming the offending option or value.
    """
    from analysis.config import ScalingConfig, resolve_config

    return common.config_from_options(args, ScalingConfig, resolve_config)


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    if out.returncode != 0 or not rev:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=10,
        cwd=Path(__file__).resolve().parent,
        check=False,
    )
    return rev + ("-dirty" if dirty.stdout.strip() else "")


@contextlib.contextmanager
def _progress_lines(enabled: bool) -> Iterator[None]:
    """Without a progress bar (output to a log or a pipe), show the study's
    ``INFO`` lines, one per finished curve, on stderr."""
    if not enabled:
        yield
        return
    log = logging.getLogger("analysis")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def run(args: argparse.Namespace) -> int:
    """Run the study, write tables, figures, the resolved config and a manifest.

    Args:
        args: the parsed ``nqm-scaling`` options.

    Returns:
        0 on success.

    Raises:
        ValueError: for a bad option (unknown family, target <= 0, batch size < 1,
            unreadable spectrum or config file), before any work is done.
    """
    # Heavy imports only when the command runs.
    import nqm.runtime
    from analysis import plots
    from analysis.journal import ResultJournal
    from analysis.scaling import (
        RECORD_COLUMNS,
        build_problem,
        figure_tables,
        run_reference_study,
        write_study,
    )

    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    cfg = config_from_args(args)
    build_problem(cfg)  # fail fast on an unreadable spectrum file
    make_figures = not getattr(args, "no_figures", False)
    # the folders are created only now, after every option has been validated
    with common.output_folders(
        cfg.out, cfg.figures if make_figures else None, command="nqm-scaling"
    ) as (out, figs):
        out.write_json("config.json", cfg.to_dict())
        out.write_text("config.toml", cfg.to_toml())

        # NumPy temporaries otherwise page-fault on every evaluation (nqm.runtime).
        kept = nqm.runtime.keep_freed_memory()
        # Every tuned curve is journalled as it finishes: a rerun after a kill
        # resumes there (the journal goes once the manifest is written).
        results_depend_on = {
            k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_RESULTS
        }
        versions = common.package_versions(_MANIFEST_PACKAGES)
        journal = ResultJournal(
            out.path / JOURNAL_DIR, salt=(results_depend_on, versions)
        )
        progress = getattr(args, "progress", None)
        bar = progress if progress is not None else sys.stderr.isatty()
        # Without a bar, the study's lines and the last one go to stderr.
        with _progress_lines(enabled=not bar):
            # The tuning is the expensive part: save its records before anything.
            result = run_reference_study(
                cfg,
                progress=progress,
                checkpoint=lambda recs: out.write_table(
                    "records", recs, RECORD_COLUMNS
                ),
                keep_freed_memory=kept,
                journal=journal,
            )
            write_study(result, out)
            timings = dict(result.timings)

            if figs is not None:
                t_fig = time.perf_counter()
                for name, rows in figure_tables(result, cfg).items():
                    figs.save_figure(plots.FIGURES[name](rows), name)
                    figs.write_table(name, rows)
                timings["figures"] = time.perf_counter() - t_fig
            timings["total"] = time.perf_counter() - t0

            manifest = {
                "command": "nqm-scaling",
                "started_utc": started,
                "config": cfg.to_dict(),
                "versions": versions,
                "git_revision": _git_revision(),
                "platform": platform.platform(),
                "allocator_keeps_freed_memory": kept,
                "timings_s": timings,
                "n_records": len(result.records),
                "failed_records": [r for r in result.records if r.get("error")],
            }
            if figs is not None and figs is not out:
                figs.finish({"command": "nqm-scaling", "started_utc": started})
            out.finish(manifest)
            journal.remove()
            logger.info(
                "nqm-scaling done in %.1fs; results in %s", timings["total"], cfg.out
            )
    return 0
