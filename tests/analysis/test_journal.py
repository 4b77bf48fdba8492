"""Tests of the results journal (analysis.journal) through the executor: a plan
rerun after a failure resumes without running finished tasks again.

Oracles: a call log that every task appends to (which tasks ran, how often),
and the results of the same plan run without a journal.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from analysis.executor import ResultJournal, Task, run_plan

#: Task 3 raises while this file exists (a kill in the middle of the plan; the
#: switch is outside the tasks' arguments, so it is not part of their digests).
KILL_SWITCH = "kill-task-3"


def logged_draw(seed: int, directory: str, inputs: dict | None = None) -> float:
    """A seeded draw plus the sum of its inputs; appends its seed to the log."""
    d = Path(directory)
    if seed == 3 and (d / KILL_SWITCH).exists():
        raise RuntimeError("task 3 killed")
    with open(d / "calls.log", "a") as f:
        f.write(f"{seed}\n")
    value = float(np.random.default_rng(seed).standard_normal(5).sum())
    return value + sum((inputs or {}).values())


def _plan(directory: Path, first_seed: int = 0) -> list[Task]:
    """A diamond 0 -> (1, 2) -> 3, and an independent 4."""
    d = (str(directory),)
    return [
        Task(0, logged_draw, (first_seed, *d)),
        Task(1, logged_draw, (1, *d), needs=(0,)),
        Task(2, logged_draw, (2, *d), needs=(0,)),
        Task(3, logged_draw, (3, *d), needs=(1, 2)),
        Task(4, logged_draw, (4, *d)),
    ]


def _calls(directory: Path) -> list[int]:
    log = directory / "calls.log"
    calls = [int(x) for x in log.read_text().split()] if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


@pytest.fixture
def work(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def test_a_rerun_after_a_kill_runs_only_the_unfinished_tasks(tmp_path, work):
    reference = run_plan(_plan(work))
    assert sorted(_calls(work)) == [0, 1, 2, 3, 4]
    journal = ResultJournal(tmp_path / "journal", salt="config")
    (work / KILL_SWITCH).touch()
    with pytest.raises(RuntimeError, match="task 3 killed"):
        run_plan(_plan(work), journal=journal)
    assert sorted(_calls(work)) == [0, 1, 2]  # in plan order, 4 waits behind 3
    (work / KILL_SWITCH).unlink()
    seen: list[int] = []
    got = run_plan(
        _plan(work), journal=journal, on_result=lambda t, v: seen.append(t.key)
    )
    assert sorted(_calls(work)) == [3, 4]
    assert got == reference
    assert seen[:3] == [0, 1, 2] and sorted(seen) == [0, 1, 2, 3, 4]
    # a third run computes nothing
    assert run_plan(_plan(work), journal=journal) == reference
    assert _calls(work) == []


def test_changed_arguments_or_salt_recompute_the_task_and_its_dependants(
    tmp_path, work
):
    journal = ResultJournal(tmp_path / "journal", salt="config")
    run_plan(_plan(work), journal=journal)
    _calls(work)
    changed = run_plan(_plan(work, first_seed=10), journal=journal)
    assert sorted(_calls(work)) == [1, 2, 3, 10]  # 4 does not depend on task 0
    assert changed == run_plan(_plan(work, first_seed=10))
    _calls(work)
    other = ResultJournal(tmp_path / "journal", salt="another config")
    run_plan(_plan(work), journal=other)
    assert sorted(_calls(work)) == [0, 1, 2, 3, 4]


def test_an_unreadable_entry_is_recomputed_with_a_warning(tmp_path, work, caplog):
    journal = ResultJournal(tmp_path / "journal", salt="config")
    reference = run_plan(_plan(work), journal=journal)
    _calls(work)
    entries = sorted((tmp_path / "journal").glob("*.pkl"))
    assert len(entries) == 5
    victim = entries[0]
    victim.write_bytes(victim.read_bytes()[:3])  # truncated by a kill mid-write
    with caplog.at_level(logging.WARNING, logger="analysis.journal"):
        assert run_plan(_plan(work), journal=journal) == reference
    assert len(_calls(work)) == 1
    assert "cannot be read" in caplog.text


def test_remove_deletes_the_journal(tmp_path, work):
    journal = ResultJournal(tmp_path / "journal")
    run_plan(_plan(work), journal=journal)
    journal.remove()
    assert not (tmp_path / "journal").exists()
