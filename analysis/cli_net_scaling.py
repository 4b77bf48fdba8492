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
  and ``manifest.json`` (config, versions, timings, files);

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
import importlib.metadata
import json
import logging
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "add_workload_arguments", "run", "config_from_args"]

logger = logging.getLogger(__name__)

#: argparse dest -> config field (options whose unset value is None).
_OPTION_FIELDS: tuple[str, ...] = (
    "model",
    "data",
    "data_dir",
    "loss",
    "metric",
    "target",
    "width",
    "optimizers",
    "ema",
    "schedule",
    "batch_sizes",
    "trials",
    "max_steps",
    "eval_every",
    "seed",
    "seeds",
    "thresholds",
    "n_boot",
    "workers",
    "executor",
    "ray_address",
    "out",
    "figures",
)

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

_MANIFEST_PACKAGES: tuple[str, ...] = (
    "batchscale",
    "numpy",
    "scipy",
    "torch",
    "matplotlib",
    "mnist1d",
    "ray",
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``net-scaling`` subcommand.

    Args:
        sub: the subparsers object of the ``python -m analysis`` parser.

    Returns:
        The subcommand's parser (its ``func`` default is :func:`run`).
    """
    p = sub.add_parser(
        "net-scaling",
        help="measured steps to target vs batch size for tuned optimizers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_workload_arguments(p)
    s = p.add_argument_group("sweep")
    s.add_argument(
        "--optimizers", help="comma-separated: sgd,momentum,nesterov,adam,kfac"
    )
    s.add_argument(
        "--ema",
        action="store_const",
        const=True,
        default=None,
        help="evaluate the EMA of the iterates (its 1-gamma tuned)",
    )
    s.add_argument("--schedule", help="constant|linear_decay")
    s.add_argument("--batch-sizes", help='e.g. "8,16,32" or "2^3..2^9"')
    s.add_argument("--trials", help="tuning trials per optimizer and batch size")
    s.add_argument("--max-steps", help="step budget per trial")
    s.add_argument("--eval-every", help="steps between evaluations of the metric")
    s.add_argument("--seed", help="sweep seed")
    s.add_argument(
        "--seeds", help="repeats of each best trial with independent seeds (0: none)"
    )
    s.add_argument(
        "--thresholds", help="further thresholds (>= target) for the threshold figure"
    )
    s.add_argument("--n-boot", help="bootstrap replicates of the critical batch size")
    a = p.add_argument_group("archive (no training)")
    a.add_argument(
        "--archive",
        metavar="DIR",
        help="analyse one workload <dataset>/<model>/<optimizer> of the unpacked "
        "Shallue et al. (2018) archive instead of training; --target applies",
    )
    a.add_argument(
        "--archive-metric",
        default="train/cross_entropy_error",
        help="measurements column of the archive (default train/cross_entropy_error)",
    )
    r = p.add_argument_group("run")
    r.add_argument("--workers", help="trials in flight (default 0: one per CPU)")
    r.add_argument("--executor", help="local|ray")
    r.add_argument("--ray-address", help="Ray cluster to join (with --executor ray)")
    r.add_argument("--out", help="results directory (default results/net-scaling)")
    r.add_argument("--figures", help="figure directory (default figures/net-scaling)")
    r.add_argument("--config", metavar="FILE.toml", help="TOML file of the same keys")
    r.add_argument("--quick", action="store_true", help="a one-minute preset")
    r.add_argument("--no-figures", action="store_true", help="write the tables only")
    r.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar over trials (default: only on a terminal)",
    )
    p.set_defaults(func=run)
    return p


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
    w.add_argument("--model", help="mlp|simple_cnn|resnet8 or package.module:factory")
    w.add_argument(
        "--data",
        help="mnist1d|digits|mnist|fashion_mnist|cifar10 or package.module:factory",
    )
    w.add_argument("--data-dir", help="directory of mnist, fashion_mnist, cifar10")
    w.add_argument("--loss", help="ce|mse")
    w.add_argument("--metric", help="train_loss|test_loss|test_error")
    w.add_argument("--target", help="threshold the metric must reach")
    w.add_argument("--width", help="size multiplier of the built-in models")


def config_from_args(args: argparse.Namespace) -> Any:
    """Resolve defaults < ``--quick`` < ``--config`` < explicit options.

    Raises:
        ValueError: naming the offending option or value.
    """
    from analysis.netscale.config import resolve_net_config

    return resolve_net_config(
        quick=bool(getattr(args, "quick", False)),
        config_file=getattr(args, "config", None),
        overrides={k: getattr(args, k, None) for k in _OPTION_FIELDS},
    )


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
    path = out / "sweep.json"
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(
            k for k in set(old) | set(identity) if old.get(k) != identity.get(k)
        )
        if changed:
            raise ValueError(
                f"{out} holds a sweep with other settings ({', '.join(changed)}); "
                "use another --out"
            )


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _MANIFEST_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


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
    from nqm.io import jsonable, save_figure, write_csv, write_json, write_text_atomic

    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    cfg = config_from_args(args)
    out, fig_dir = Path(cfg.out), Path(cfg.figures)
    identity = {k: v for k, v in cfg.to_dict().items() if k not in _RUN_FIELDS}
    archive = getattr(args, "archive", None)
    if archive is not None:
        from analysis.netscale.archive import read_workload

        identity = {"archive": str(archive), "metric": args.archive_metric}
        identity["target"] = cfg.target
        _check_same_sweep(out, identity)
        _, records = read_workload(
            archive, metric=args.archive_metric, target=cfg.target
        )
    else:
        _check_same_sweep(out, identity)
        _check_workload(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", identity)
    write_text_atomic(out / "config.toml", cfg.to_toml())
    timings: dict[str, float] = {"validate": time.perf_counter() - t0}

    t = time.perf_counter()
    if archive is not None:
        write_text_atomic(
            out / "trials.jsonl",
            "".join(json.dumps(jsonable(r), sort_keys=True) + "\n" for r in records),
        )
    else:
        records = run_sweep(
            cfg.sweep(),
            out / "trials.jsonl",
            executor=cfg.executor,
            workers=cfg.workers,
            ray_address=cfg.ray_address,
            progress=getattr(args, "progress", None),
        )
    timings["sweep"] = time.perf_counter() - t

    t = time.perf_counter()
    steps_rows = results.steps_table(records)
    hp_cols = sorted({k for r in steps_rows for k in r if k.startswith("hp_")})
    written = [
        write_csv(out / "steps.csv", steps_rows, [*results.STEPS_COLUMNS, *hp_cols])
    ]
    taus = cfg.figure_thresholds()
    threshold_rows = results.threshold_table(records, taus)
    written.append(write_csv(out / "thresholds.csv", threshold_rows))
    critical = results.critical_batch_table(
        records, n_boot=cfg.n_boot, level=cfg.level, seed=cfg.seed, thresholds=taus
    )
    written.append(
        write_csv(out / "critical_batch.csv", critical, results.CRITICAL_COLUMNS)
    )
    timings["tables"] = time.perf_counter() - t

    if not getattr(args, "no_figures", False):
        t = time.perf_counter()
        fig_dir.mkdir(parents=True, exist_ok=True)
        tables = {
            "steps_vs_batch": steps_rows,
            "tuned_lr": steps_rows,
            "steps_by_threshold": threshold_rows,
        }
        for name, fn in plots.FIGURES.items():
            written += save_figure(fn(tables[name]), fig_dir / name)
            written.append(write_csv(fig_dir / f"{name}.csv", tables[name]))
        timings["figures"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    timings["trial_seconds"] = float(sum(r.get("seconds", 0.0) for r in records))

    write_json(
        out / "manifest.json",
        {
            "command": "net-scaling",
            "started_utc": started,
            "config": cfg.to_dict(),
            "versions": _versions(),
            "platform": platform.platform(),
            "timings_s": timings,
            "n_trials": len(records),
            "files": [str(p) for p in written] + [str(out / "trials.jsonl")],
        },
    )
    logger.info("net-scaling done in %.1fs; results in %s", timings["total"], out)
    return 0
