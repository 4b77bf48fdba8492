"""``python -m analysis net-scaling``: measured steps to target vs batch size.

Tunes every optimizer at every batch size on a real network with the protocol of
Shallue et al. (2018): the same budget of quasi-random trials per batch size,
each trained from a seeded initialisation on a seeded batch order until the
metric reaches the target or the step budget runs out. Writes into ``--out``
(default ``results/net-scaling``):

* ``trials.jsonl``: one line per finished trial (optimizer, batch_size, trial,
  repeat, hparams, status, steps, the whole curve), appended the moment it ends;
  rerunning the same command skips the trials already there;
* ``steps.csv``: per (optimizer, batch size) the fewest steps, the number of
  trials, feasible (not diverged) and reaching trials, and the best
  hyperparameters (``hp_*``); with ``--seeds K`` also the crossing of the K-seed
  mean curve and the median single-seed crossing;
* ``critical_batch.csv``: per optimizer and threshold, the fit
  S(B) = S_min (1 + B_crit / B) with a bootstrap interval;
* ``thresholds.csv``, ``config.toml`` (a valid ``--config``), ``sweep.json``
  and ``manifest.json`` (config, versions, timings, and the SHA-256 of every
  file, written last; :mod:`nqm.run_folder`: one run per folder at a time, and
  a rerun resumes only from files whose checksums agree);

and into ``--figures`` (default ``figures/net-scaling``) each figure as PNG and
PDF with its points as CSV.

``--archive DIR`` reads one workload of the unpacked Shallue et al. (2018)
archive instead of training and writes the same tables and figures.

The default (MNIST-1D, an MLP, SGD, momentum, Adam and K-FAC over 7 batch sizes)
takes about 4 minutes on 2 lightly loaded cores (several times longer when others load them);
``--quick`` under a minute.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analysis import cli_common as common

__all__ = ["add_parser", "add_workload_arguments", "run", "config_from_args"]

logger = logging.getLogger(__name__)

#: Fields that do not change what a trial computes: a resumed sweep may change them.
_RUN_FIELDS: frozenset[str] = frozenset(
    {
        "seeds",
        "thresholds",
        "n_boot",
        "level",
        "workers",
        "executor",
        "ray_address",
        "out",
        "figures",
    }
)

_MANIFEST_PACKAGES: tuple[str, ...] = (*common.BASE_PACKAGES, "mnist1d", "ray")


#: (flag, help) of the options that take a value, per argument group.
_WORKLOAD_OPTIONS: tuple[tuple[str, str], ...] = (
    ("--model", "mlp|simple_cnn|resnet8 or package.module:factory"),
    ("--data", "mnist1d|digits|mnist|fashion_mnist|cifar10 or package.module:factory"),
    ("--data-dir", "directory of mnist, fashion_mnist, cifar10"),
    ("--loss", "ce|mse"),
    ("--metric", "train_loss|test_loss|test_error"),
    ("--target", "threshold the metric must reach"),
    ("--width", "size multiplier of the built-in models"),
)
_SWEEP_OPTIONS: tuple[tuple[str, str], ...] = (
    ("--optimizers", "comma-separated: sgd,momentum,nesterov,adam,kfac"),
    ("--schedule", "constant|linear_decay"),
    ("--batch-sizes", 'e.g. "8,16,32" or "2^3..2^9"'),
    ("--trials", "tuning trials per optimizer and batch size"),
    ("--max-steps", "step budget per trial"),
    ("--eval-every", "steps between evaluations of the metric"),
    ("--seed", "sweep seed"),
    ("--seeds", "repeats of each best trial with independent seeds (0: none)"),
    ("--thresholds", "further thresholds (>= target) for the threshold figure"),
    ("--n-boot", "bootstrap replicates of the critical batch size"),
)


_COMMAND = "net-scaling"
#: The archive's measurements column read by default (Shallue et al.'s
#: training cross-entropy).
ARCHIVE_METRIC = "train/cross_entropy_error"
_SUMMARY = "measured steps to target vs batch size for tuned optimizers"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``net-scaling`` (:func:`analysis.cli_common.add_subcommand`)."""
    return common.add_subcommand(sub, _COMMAND, _SUMMARY, __doc__, _arguments, run)


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the workload options (``--model``, ``--data``, ``--data-dir``,
    ``--loss``, ``--metric``, ``--target``, ``--width``) as one argument group;
    :func:`config_from_args` reads them.

    Args:
        parser: the parser of a command that takes a workload.
    """
    w = parser.add_argument_group(
        "workload (default: MNIST-1D, MLP, training loss 0.5)"
    )
    for flag, text in _WORKLOAD_OPTIONS:
        w.add_argument(flag, help=text)


def _arguments(p: argparse.ArgumentParser) -> None:
    add_workload_arguments(p)
    s = p.add_argument_group("sweep")
    for flag, text in _SWEEP_OPTIONS:
        s.add_argument(flag, help=text)
    s.add_argument(
        "--ema",
        action="store_const",
        const=True,
        default=None,
        help="evaluate the EMA of the iterates (its 1-gamma tuned)",
    )
    a = p.add_argument_group("archive (no training)")
    a.add_argument(
        "--archive",
        metavar="DIR",
        help="analyse one workload <dataset>/<model>/<optimizer> of the unpacked "
        "Shallue et al. (2018) archive instead of training; --target applies",
    )
    a.add_argument(
        "--archive-metric",
        help=f"measurements column of the archive (default {ARCHIVE_METRIC})",
    )
    common.add_run_options(
        p,
        out_default="results/net-scaling",
        figures_default="figures/net-scaling",
        quick_help="a one-minute preset",
        workers_help="trials in flight (default 0: one per CPU)",
    )


def config_from_args(args: argparse.Namespace) -> Any:
    """The config of ``args`` (:func:`analysis.cli_common.config_from_options`).

    Raises:
        ValueError: naming the offending option or value.
    """
    from analysis.netscale.config import NetScalingConfig, resolve_net_config

    return common.config_from_options(args, NetScalingConfig, resolve_net_config)


def _check_workload(cfg: Any) -> None:
    """Load the data and build the model once, before any training: bad data,
    factories and batch sizes fail here with one line."""
    import torch

    from analysis.netscale.workload import build_network, load_data

    wl = cfg.workload()
    data = load_data(wl)
    n = data.x_train.shape[0]
    too_big = [b for b in cfg.batch_sizes if b > n]
    if too_big:
        raise ValueError(
            f"batch sizes {too_big} exceed the {n} training examples of {cfg.data}"
        )
    build_network(wl, data.spec, torch.Generator().manual_seed(0))


def _check_same_sweep(out: Path, identity: dict[str, Any]) -> None:
    from nqm.run_folder import read_json_object

    path = out / "sweep.json"
    if path.exists():
        old = read_json_object(path, remedy="restore it, or use another --out")
        changed = sorted(
            k for k in set(old) | set(identity) if old.get(k) != identity.get(k)
        )
        if changed:
            raise ValueError(
                f"{out} holds a sweep with other settings ({', '.join(changed)}); "
                "use another --out"
            )


def run(args: argparse.Namespace) -> int:
    """Run the sweep, then write the tables, figures, config and manifest.

    Returns:
        0 on success.

    Raises:
        ValueError: for a bad option, data set, factory or batch size, before
            any training.
    """
    from analysis.netscale import plots, results
    from analysis.netscale.sweep import run_sweep
    from nqm.io import jsonable

    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    cfg = config_from_args(args)
    identity = {k: v for k, v in cfg.to_dict().items() if k not in _RUN_FIELDS}
    archive = getattr(args, "archive", None)
    metric = getattr(args, "archive_metric", None)
    if archive is None and metric is not None:
        raise ValueError("archive_metric: it applies to --archive DIR only")
    if archive is not None:
        from analysis.netscale.archive import read_workload

        metric = metric or ARCHIVE_METRIC
        identity = {"archive": str(archive), "metric": metric}
        identity["target"] = cfg.target
        _check_same_sweep(Path(cfg.out), identity)
        _, records = read_workload(archive, metric=metric, target=cfg.target)
    else:
        _check_same_sweep(Path(cfg.out), identity)
        _check_workload(cfg)
    make_figures = not getattr(args, "no_figures", False)
    meta: dict[str, Any] = {
        "command": "net-scaling",
        "started_utc": started,
        "config": cfg.to_dict(),
        "versions": common.package_versions(_MANIFEST_PACKAGES),
        "platform": platform.platform(),
    }
    # the folders are created only now, after every option has been validated;
    # resume: the trials of a killed or finished run of this sweep are kept
    with common.output_folders(
        cfg.out,
        cfg.figures if make_figures else None,
        command="net-scaling",
        resume=True,
    ) as (out, figs):
        _check_same_sweep(out.path, identity)  # again, now under the lock
        out.write_json("sweep.json", identity)
        out.write_text("config.toml", cfg.to_toml())
        out.checkpoint(meta)
        timings: dict[str, float] = {"validate": time.perf_counter() - t0}

        t = time.perf_counter()
        if archive is not None:
            out.write_text(
                "trials.jsonl",
                "".join(
                    json.dumps(jsonable(r), sort_keys=True) + "\n" for r in records
                ),
            )
        else:
            records = run_sweep(
                cfg.sweep(),
                out.file("trials.jsonl"),
                executor=cfg.executor,
                workers=cfg.workers,
                ray_address=cfg.ray_address,
                progress=getattr(args, "progress", None),
            )
            out.record("trials.jsonl")
        timings["sweep"] = time.perf_counter() - t

        t = time.perf_counter()
        steps_rows = results.steps_table(records)
        hp_cols = sorted({k for r in steps_rows for k in r if k.startswith("hp_")})
        out.write_csv("steps.csv", steps_rows, [*results.STEPS_COLUMNS, *hp_cols])
        taus = cfg.figure_thresholds()
        threshold_rows = results.threshold_table(records, taus)
        out.write_csv("thresholds.csv", threshold_rows)
        critical = results.critical_batch_table(
            records, n_boot=cfg.n_boot, level=cfg.level, seed=cfg.seed, thresholds=taus
        )
        out.write_csv("critical_batch.csv", critical, results.CRITICAL_COLUMNS)
        timings["tables"] = time.perf_counter() - t

        if figs is not None:
            t = time.perf_counter()
            tables = {
                "steps_vs_batch": steps_rows,
                "tuned_lr": steps_rows,
                "steps_by_threshold": threshold_rows,
            }
            for name, fn in plots.FIGURES.items():
                figs.save_figure(fn(tables[name]), name)
                figs.write_csv(f"{name}.csv", tables[name])
            timings["figures"] = time.perf_counter() - t
            if figs is not out:
                figs.finish({"command": "net-scaling", "started_utc": started})
        timings["total"] = time.perf_counter() - t0
        timings["trial_seconds"] = float(sum(r.get("seconds", 0.0) for r in records))
        out.finish({**meta, "timings_s": timings, "n_trials": len(records)})
    logger.info("net-scaling done in %.1fs; results in %s", timings["total"], cfg.out)
    return 0
