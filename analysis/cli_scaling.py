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
import importlib.metadata
import logging
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run", "config_from_args"]

logger = logging.getLogger(__name__)

#: Inside --out: the tuned curves of an unfinished run (resumed by a rerun).
JOURNAL_DIR = ".journal"
#: Options that results do not depend on: a rerun that changes them resumes.
NOT_IN_RESULTS = ("out", "figures", "workers", "executor", "ray_address")

#: argparse dest -> ScalingConfig field, for options whose unset value is None.
_OPTION_FIELDS: tuple[str, ...] = (
    "dim",
    "h_power",
    "c_power",
    "init_sq",
    "problem",
    "targets",
    "threshold_targets",
    "batch_sizes",
    "families",
    "powers",
    "fixed_momentum",
    "bcrit_targets",
    "bcrit_families",
    "ramp_budgets",
    "out",
    "figures",
    "workers",
    "keep_going",
    "device",
    "executor",
    "ray_address",
)

#: Packages whose versions go into the manifest.
_MANIFEST_PACKAGES: tuple[str, ...] = (
    "batchscale",
    "numpy",
    "scipy",
    "torch",  # the schedules' L-BFGS
    "matplotlib",
    "tqdm",
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``nqm-scaling`` subcommand.

    Args:
        sub: the subparsers object of the ``python -m analysis`` parser.

    Returns:
        The subcommand's parser (its ``func`` default is :func:`run`).
    """
    p = sub.add_parser(
        "nqm-scaling",
        help="steps-to-target vs batch size for tuned optimizers on the NQM",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    o = p.add_argument_group("run")
    o.add_argument(
        "--out", help="tables, config and manifest (default results/nqm-scaling)"
    )
    o.add_argument("--figures", help="figure directory (default figures)")
    o.add_argument("--config", metavar="FILE.toml", help="TOML file of the same keys")
    o.add_argument(
        "--quick",
        action="store_true",
        help="small preset (d = 200, 9 batch sizes, 4 families, 3 powers) "
        "for a fast look",
    )
    o.add_argument(
        "--workers", help="processes tuning curves in parallel (default 1; 0: all CPUs)"
    )
    o.add_argument(
        "--device",
        help="torch device of the schedules' batched L-BFGS (default cpu; e.g. cuda)",
    )
    o.add_argument(
        "--executor",
        help="where curves are tuned: local processes or ray tasks (default local)",
    )
    o.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="Ray cluster to join with --executor ray (default: start a local Ray "
        "with --workers CPUs)",
    )
    o.add_argument(
        "--keep-going",
        action="store_const",
        const=True,
        default=None,
        help="record batch sizes whose tuning fails (steps nan, error column) "
        "instead of aborting",
    )
    o.add_argument("--no-figures", action="store_true", help="write the tables only")
    o.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tqdm progress bar (default: only on a terminal)",
    )
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace) -> Any:
    """Resolve defaults < ``--quick`` < ``--config`` file < explicit options.

    Raises:
        ValueError: naming the offending option or value.
    """
    from analysis.config import resolve_config

    overrides = {k: getattr(args, k, None) for k in _OPTION_FIELDS}
    return resolve_config(
        quick=bool(getattr(args, "quick", False)),
        config_file=getattr(args, "config", None),
        overrides=overrides,
    )


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


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _MANIFEST_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


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
    from nqm.io import save_figure, write_json, write_table, write_text_atomic

    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    cfg = config_from_args(args)
    build_problem(cfg)  # fail fast on an unreadable spectrum file
    out = Path(cfg.out)
    fig_dir = Path(cfg.figures)
    out.mkdir(parents=True, exist_ok=True)
    make_figures = not getattr(args, "no_figures", False)
    if make_figures:
        fig_dir.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.to_dict())
    write_text_atomic(out / "config.toml", cfg.to_toml())

    # NumPy temporaries otherwise page-fault on every evaluation (nqm.runtime).
    kept = nqm.runtime.keep_freed_memory()
    # Every tuned curve is journalled as it finishes: a rerun after a kill
    # resumes there (the journal goes once the manifest is written).
    results_depend_on = {
        k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_RESULTS
    }
    journal = ResultJournal(out / JOURNAL_DIR, salt=(results_depend_on, _versions()))
    progress = getattr(args, "progress", None)
    bar = progress if progress is not None else sys.stderr.isatty()
    # Without a bar, the study's lines and the last one go to stderr.
    with _progress_lines(enabled=not bar):
        # The tuning is the expensive part: save its records before anything else.
        result = run_reference_study(
            cfg,
            progress=progress,
            checkpoint=lambda recs: write_table(out, "records", recs, RECORD_COLUMNS),
            keep_freed_memory=kept,
            journal=journal,
        )
        written = [str(p) for p in write_study(result, out)]
        timings = dict(result.timings)

        if make_figures:
            t_fig = time.perf_counter()
            for name, rows in figure_tables(result, cfg).items():
                fig = plots.FIGURES[name](rows)
                written += [str(p) for p in save_figure(fig, fig_dir / name)]
                written += [str(p) for p in write_table(fig_dir, name, rows)]
            timings["figures"] = time.perf_counter() - t_fig
        timings["total"] = time.perf_counter() - t0

        manifest = {
            "command": "nqm-scaling",
            "started_utc": started,
            "config": cfg.to_dict(),
            "versions": _versions(),
            "git_revision": _git_revision(),
            "platform": platform.platform(),
            "allocator_keeps_freed_memory": kept,
            "timings_s": timings,
            "n_records": len(result.records),
            "failed_records": [r for r in result.records if r.get("error")],
            "files": written,
        }
        write_json(out / "manifest.json", manifest)
        journal.remove()
        logger.info("nqm-scaling done in %.1fs; results in %s", timings["total"], out)
    return 0
