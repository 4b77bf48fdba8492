"""``python -m analysis net-predict``: the NQM's batch-size prediction for a
network, held against that network's measured scaling.

measure → estimate → predict → compare:

1. train the workload's network once with checkpoints (``kfac_spectra run``,
   into ``OUT/reference``, resumable; or ``--run DIR``, a finished run), and
   build the NQM at each ``--checkpoints`` step (``kfac_spectra.estimate_nqm``);
   a workload the reference run cannot train (a ``package.module:factory``, the
   ``mse`` loss) takes the NQM from ``--problem FILE.npz`` instead;
2. map the target to L_target − L_floor (the floor: the metric at the end of the
   reference run, or ``--floor X``) and each optimizer to its NQM family and
   preconditioning power (SGD, momentum, EMA, linear decay; K-FAC p = 1; Adam
   p = 0.5, with 0.25 and 0.75 beside it);
3. tune the NQM study for every optimizer and batch size: predicted steps and
   B_crit;
4. with ``--sweep DIR`` (a ``net-scaling`` output of the same workload; repeat
   the option for sweeps with other ``--ema``/``--schedule``): measured B_crit
   with its bootstrap interval, log-ratios, S_min-normalised curves, rankings,
   and, at the measured best settings with ``--seeds K`` repeats, the
   expected-loss crossing against the seed-averaged curve and the first-passage
   law against the single runs; the four claims of Zhang et al. (2019) with a
   verdict each.

Writes ``OUT/prediction.json``, ``OUT/prediction.md``, ``OUT/steps.csv``,
``OUT/b_crit.csv`` and ``OUT/manifest.json`` (default ``results/net-predict``),
and the figures into ``--figures`` (default ``figures/net-predict``). Bad
options, a target at or below a given floor, a sweep of another workload and a
checkpoint the run did not collect stop with one line before any work.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analysis import cli_common as common
from analysis.cli_net_scaling import add_workload_arguments, config_from_args

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)

#: The checkpoints of a fresh reference run (early and late).
DEFAULT_CHECKPOINTS = "0,150"
#: Steps of a fresh reference run.
DEFAULT_REFERENCE_STEPS = 300


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``net-predict`` (:func:`analysis.cli_common.add_subcommand`)."""
    return common.add_subcommand(
        sub,
        "net-predict",
        "the NQM's predicted batch-size scaling of a network, and its check",
        __doc__,
        _arguments,
        run,
    )


def _arguments(p: argparse.ArgumentParser) -> None:
    add_workload_arguments(p)
    s = p.add_argument_group("prediction")
    s.add_argument("--batch-sizes", help='default: the sweeps\' (else "2^4..2^10")')
    s.add_argument(
        "--predict",
        help="comma-separated optimizers: sgd,momentum,ema,linear_decay,kfac,adam "
        "(default all)",
    )
    s.add_argument(
        "--thresholds",
        help="further targets (> --target) for B_crit vs target (default 2x target)",
    )
    s.add_argument("--floor", type=float, help="loss floor L_floor (default: measured)")
    s.add_argument(
        "--target-mapping",
        default="excess",
        help="excess: L_target - L_floor (default); relative: the same fraction "
        "of the way from the checkpoint's loss to the floor, on the NQM's scale",
    )
    s.add_argument(
        "--checkpoints",
        help=f"reference-run steps to estimate at ({DEFAULT_CHECKPOINTS})",
    )
    s.add_argument("--run", metavar="DIR", help="a finished kfac_spectra run to use")
    s.add_argument(
        "--reference-steps",
        type=int,
        help=f"steps of the reference run ({DEFAULT_REFERENCE_STEPS})",
    )
    s.add_argument(
        "--reference-config",
        metavar="FILE.toml",
        help="TrainConfig of the reference run",
    )
    s.add_argument(
        "--problem", metavar="FILE.npz", help="the NQM itself (no reference run)"
    )
    s.add_argument(
        "--replicas", type=int, default=500, help="first-passage replicas per setting"
    )
    c = p.add_argument_group("comparison")
    c.add_argument("--sweep", action="append", metavar="DIR", help="net-scaling output")
    c.add_argument("--n-boot", help="bootstrap replicates (default 200)")
    c.add_argument("--seed", help="seed of the bootstrap and the replicas")
    r = p.add_argument_group("run")
    r.add_argument("--workers", help="NQM curves in parallel (0: one per CPU)")
    r.add_argument("--out", default="results/net-predict", help="results directory")
    r.add_argument("--figures", default="figures/net-predict", help="figure directory")
    r.add_argument(
        "--config", metavar="FILE.toml", help="net-scaling TOML of the workload keys"
    )
    r.add_argument("--no-figures", action="store_true", help="write the tables only")


def _labels(text: str | None) -> tuple[Any, ...]:
    from analysis.netpredict.mapping import PredictedOptimizer

    if text is None:
        return tuple(PredictedOptimizer)
    out = []
    for item in text.split(","):
        try:
            out.append(PredictedOptimizer(item.strip()))
        except ValueError:
            names = ",".join(m.value for m in PredictedOptimizer)
            raise ValueError(
                f"predict: unknown optimizer {item!r}; choose from {names}"
            ) from None
    return tuple(dict.fromkeys(out))


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",")}))
    except ValueError:
        raise ValueError(
            f"{what}: expected comma-separated integers, got {text!r}"
        ) from None
    if not values or values[0] < 0:
        raise ValueError(f"{what}: steps must be >= 0, got {text!r}")
    return values


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(
            f"{what}: expected comma-separated numbers, got {text!r}"
        ) from None


def _validate(args: argparse.Namespace) -> dict[str, Any]:
    """Every option checked, sweeps read and matched, inputs located: no work."""
    import nqm
    from analysis.netpredict import measured, reference
    from analysis.netpredict.mapping import TargetMapping, nqm_target

    cfg = config_from_args(args)
    labels = _labels(args.predict)
    target = float(cfg.target)
    thresholds = (
        _floats(args.thresholds, "thresholds") if args.thresholds else (2 * target,)
    )
    for t in thresholds:
        if not (math.isfinite(t) and t > target):
            raise ValueError(f"thresholds must exceed the target {target:g}, got {t!r}")
    if args.replicas < 2:
        raise ValueError(f"replicas must be >= 2, got {args.replicas}")
    if args.floor is not None:
        if not math.isfinite(args.floor):
            raise ValueError(f"floor must be finite, got {args.floor!r}")
        nqm_target(target, args.floor)
    sweeps = [measured.read_sweep(d) for d in args.sweep or ()]
    for sw in sweeps:
        measured.check_workload(sw, cfg.to_dict(), target)
    if sweeps and args.batch_sizes is None:
        sizes = tuple(
            sorted({int(b) for sw in sweeps for b in sw.identity["batch_sizes"]})
        )
    else:
        sizes = tuple(sorted(set(cfg.batch_sizes)))
    if len(sizes) < 3:
        raise ValueError(f"batch_sizes: need at least 3 for B_crit, got {sizes}")
    try:
        mapping = TargetMapping(args.target_mapping)
    except ValueError:
        raise ValueError(
            f"target_mapping: unknown {args.target_mapping!r}; choose from "
            f"{', '.join(m.value for m in TargetMapping)}"
        ) from None
    plan: dict[str, Any] = {"cfg": cfg, "labels": labels, "thresholds": thresholds,
                            "sweeps": sweeps, "batch_sizes": sizes,
                            "mapping": mapping}  # fmt: skip
    if args.problem is not None:
        if mapping is not TargetMapping.EXCESS:
            raise ValueError("target_mapping: relative needs a reference run")
        if args.floor is None:
            raise ValueError(
                "floor: --problem needs --floor (there is no reference run)"
            )
        try:  # one line: missing, a directory, not an archive, truncated, ...
            plan["problem"] = nqm.NQMProblem.load(args.problem)
        except ValueError as exc:
            raise ValueError(f"problem: {exc}") from None
        return plan
    checkpoints = _ints(args.checkpoints or DEFAULT_CHECKPOINTS, "checkpoints")
    plan["checkpoints"] = checkpoints
    workload = cfg.workload()
    if args.run is not None:
        if not Path(args.run).is_dir():
            raise ValueError(f"run: no directory {args.run}")
        reference.check_checkpoints(args.run, checkpoints)
        plan["run_dir"] = Path(args.run)
        if args.floor is None:
            plan["floor"] = reference.final_metric(args.run, workload)
            nqm_target(target, plan["floor"])
        return plan
    overrides = {"steps": args.reference_steps or DEFAULT_REFERENCE_STEPS}
    plan["train_config"] = reference.reference_config(
        workload, checkpoints, config_file=args.reference_config, overrides=overrides
    )
    plan["run_dir"] = Path(args.out) / "reference"
    return plan


def _parse_int(value: str | None, default: int, what: str) -> int:
    if value is None:
        return default
    try:
        v = int(value)
    except ValueError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if v < 0:
        raise ValueError(f"{what} must be >= 0, got {v}")
    return v


def run(args: argparse.Namespace) -> int:
    """Validate, then reference run, estimate, predict, compare and write.

    The output folders are owned by this run (:mod:`nqm.run_folder`) from the
    end of the validation on.

    Returns:
        0 on success.

    Raises:
        ValueError: for a bad option, a target at or below a given floor, a
            sweep of another workload or a missing checkpoint, before any work.
    """
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    plan = _validate(args)
    plan["n_boot"] = _parse_int(args.n_boot, 200, "n_boot")
    plan["seed"] = _parse_int(args.seed, 0, "seed")
    plan["workers"] = _parse_int(args.workers, 1, "workers")
    timings: dict[str, float] = {"validate": time.perf_counter() - t0}
    figures = None if args.no_figures else args.figures
    with common.output_folders(args.out, figures, command="net-predict") as (
        tables,
        figs,
    ):
        _execute(args, plan, tables, figs, timings)
        meta = {"command": "net-predict", "started_utc": started}
        if figs is not None and figs is not tables:
            figs.finish(meta)
        tables.finish({**meta, "timings_s": timings})
    logger.info("net-predict done in %.1fs; results in %s", time.perf_counter() - t0,
                args.out)  # fmt: skip
    return 0


def _reference_inputs(
    args: argparse.Namespace, plan: dict[str, Any], figs: Any, timings: dict
) -> dict[str, Any]:
    """The reference run (trained or resumed), its floor, the NQM at each
    checkpoint and the reference report's figures (into ``figs/spectra``)."""
    from analysis.netpredict import reference
    from analysis.netpredict.mapping import TargetMapping, nqm_target

    cfg = plan["cfg"]
    t = time.perf_counter()
    run_dir = plan["run_dir"]
    if "train_config" in plan:
        reference.run_reference(plan["train_config"], run_dir)
    timings["reference_run"] = time.perf_counter() - t
    if args.floor is not None:
        floor, floor_source = float(args.floor), "user (--floor)"
    else:
        floor = plan.get("floor")
        if floor is None:
            floor = reference.final_metric(run_dir, cfg.workload())
        floor_source = f"end of the reference run {run_dir}"
    nqm_target(float(cfg.target), floor)
    t = time.perf_counter()
    est = reference.estimate_checkpoints(run_dir, plan["checkpoints"])
    timings["estimate"] = time.perf_counter() - t
    recorded: list[str] = []
    if figs is not None:
        from kfac_spectra.report import write_report

        summary = write_report(
            run_dir, figs.path / "spectra", nqm_step=plan["checkpoints"][0]
        )
        recorded = [Path(f).relative_to(figs.path).as_posix() for f in summary.files]
    return {
        "problems": {int(s): e.problem for s, e in est.items()},
        "floor": floor,
        "floor_source": floor_source,
        "target_maps": (
            None
            if plan["mapping"] is TargetMapping.EXCESS
            else reference.relative_target_maps(run_dir, est, floor, cfg.metric)
        ),
        "estimates": {
            str(s): {
                "modes": e.problem.n_modes,
                "dropped": e.num_dropped,
                "final_step": e.final_step,
                "nqm_initial_loss": e.problem.initial_loss(),
            }
            for s, e in est.items()
        },  # fmt: skip
        "recorded": recorded,
    }


def _execute(
    args: argparse.Namespace, plan: dict[str, Any], tables: Any, figs: Any,
    timings: dict[str, float],
) -> None:  # fmt: skip
    """Everything after the validation, written into the owned folders."""
    from analysis.journal import JOURNAL_DIR, ResultJournal
    from analysis.netpredict import plots
    from analysis.netpredict.measured import WORKLOAD_FIELDS
    from analysis.netpredict.pipeline import PredictionInputs, predict_and_check
    from analysis.netpredict.report import markdown, write_folder

    cfg = plan["cfg"]
    # Tuned NQM curves are journalled as they finish: a rerun after a kill
    # resumes there (removed with the run's last write, below).
    journal = ResultJournal(
        tables.path / JOURNAL_DIR, salt=common.package_versions(common.BASE_PACKAGES)
    )
    if "problem" in plan:
        ref = {"problems": {"given": plan["problem"]}, "floor": float(args.floor),
               "floor_source": "user (--floor)", "target_maps": None,
               "estimates": {}, "recorded": []}  # fmt: skip
    else:
        ref = _reference_inputs(args, plan, figs, timings)
    t = time.perf_counter()
    inputs = PredictionInputs(
        problems=ref["problems"],
        labels=plan["labels"],
        batch_sizes=plan["batch_sizes"],
        target=float(cfg.target),
        thresholds=plan["thresholds"],
        floor=ref["floor"],
        floor_source=ref["floor_source"],
        target_maps=ref["target_maps"],
        sweeps=plan["sweeps"],
        replicas=args.replicas,
        n_boot=plan["n_boot"],
        seed=plan["seed"],
        workers=plan["workers"],
        journal=journal,
    )
    doc = predict_and_check(inputs)
    timings["predict_and_check"] = time.perf_counter() - t
    doc["estimates"] = ref["estimates"]
    doc["workload"] = {k: cfg.to_dict()[k] for k in WORKLOAD_FIELDS}
    steps_rows, crit_rows = _tables(doc)
    outputs = [("prediction.json", doc), ("prediction.md", markdown(doc)),
               ("steps.csv", steps_rows), ("b_crit.csv", crit_rows)]  # fmt: skip
    if figs is not None:
        panels = {
            name: {"predicted": e["predicted"], "measured": e["measured"]}
            for name, e in doc["optimizers"].items()
        }
        write_folder(
            figs,
            [("steps_vs_batch", plots.plot_steps_panels(panels)),
             ("steps_vs_batch.csv", steps_rows),
             ("steps_over_s_min", plots.plot_normalised_overlay(panels)),
             ("b_crit_predicted_vs_measured", plots.plot_b_crit_summary(crit_rows)),
             ("b_crit_predicted_vs_measured.csv", crit_rows)],
            recorded=ref["recorded"],
        )  # fmt: skip
    write_folder(tables, outputs)
    journal.remove()


def _tables(doc: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    steps_rows, crit_rows = [], []
    for name, e in doc["optimizers"].items():
        pred, meas = e["predicted"], e["measured"]
        measured_steps = (
            dict(zip(meas["batch_sizes"], meas["steps"], strict=True)) if meas else {}
        )
        for b, s in zip(pred["batch_sizes"], pred["steps"], strict=True):
            steps_rows.append({
                "optimizer": name, "batch_size": b, "predicted": s,
                "measured": measured_steps.get(b),
            })  # fmt: skip
        crit_rows.append({
            "optimizer": name,
            "predicted": pred["b_crit"],
            "measured": meas["b_crit"] if meas else None,
            "measured_low": meas["b_crit_low"] if meas else None,
            "measured_high": meas["b_crit_high"] if meas else None,
        })  # fmt: skip
    return steps_rows, crit_rows
