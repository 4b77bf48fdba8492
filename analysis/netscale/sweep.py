"""Run a sweep: plan what the log lacks, execute it, append each trial as it ends.

The log (:class:`~analysis.netscale.records.TrialLog`) is the sweep's state: a
rerun of the same sweep into the same log runs only the missing trials, and its
records are identical to those of an uninterrupted run because every trial is a
pure function of its identity.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from analysis.executor import ExecutorKind, Task, run_plan

from .plan import SweepSpec, plan_sweep
from .records import TrialLog, record_key

__all__ = ["run_sweep", "sorted_records"]

logger = logging.getLogger(__name__)


def sorted_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records in identity order (optimizer, batch size, trial, repeat)."""
    return sorted(records, key=record_key)


def run_sweep(
    sweep: SweepSpec,
    log_path: str | os.PathLike,
    *,
    executor: str | ExecutorKind = ExecutorKind.LOCAL,
    workers: int = 1,
    ray_address: str | None = None,
    progress: bool | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the trials of ``sweep`` missing from the log at ``log_path``.

    Args:
        sweep: the sweep.
        log_path: the ``trials.jsonl`` file (created, or resumed).
        executor: ``"local"`` or ``"ray"`` (:func:`analysis.executor.run_plan`).
        workers: trials in flight (local: 1 runs in this process, 0 = per CPU).
        ray_address: the Ray cluster to join.
        progress: a tqdm bar over trials with its ETA (default: on a terminal).
        on_record: called with each new record after it is written.

    Returns:
        Every record of the sweep (logged before and new), in identity order.
    """
    log = TrialLog(log_path)
    tasks = plan_sweep(sweep, log.records)
    total = len(log.records) + len(tasks)
    logger.info("%d trials logged, %d to run", len(log.records), len(tasks))
    bar = _progress_bar(progress, total, len(log.records))

    def write(task: Task, record: dict[str, Any] | None) -> None:
        if record is not None:
            log.append(record)
            if on_record is not None:
                on_record(record)
        if bar is not None:
            bar.update(1)

    try:
        run_plan(
            tasks,
            executor=executor,
            workers=workers,
            ray_address=ray_address,
            on_result=write,
        )
    finally:
        if bar is not None:
            bar.close()
    return sorted_records(log.records)


def _progress_bar(progress: bool | None, total: int, initial: int) -> Any:
    import sys

    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="trial", desc="net-scaling")
