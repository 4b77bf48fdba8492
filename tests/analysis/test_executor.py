"""Tests of the plan executor (analysis.executor): local processes and Ray.

Oracles: the in-process run of the same plan computed by hand (a chain of seeded
numpy draws), marker files that a task writes when it ends (a task that needs it
must see the file when it starts: no timing involved), and the process id of the
caller.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from analysis import executor as ex
from analysis.executor import ExecutorKind, Task, run_plan

#: Bound on the time a failing plan may take while a 60 s task is in flight.
CANCEL_BOUND_S = 30.0


# -------------------------------------------------------- tasks (module level)
def draw(seed: int, n: int, inputs: dict | None = None) -> float:
    """A pure task: a seeded draw plus the sum of its inputs."""
    value = float(np.random.default_rng(seed).standard_normal(n).sum())
    return value + sum((inputs or {}).values())


def marked(name: str, directory: str, sleep: float, inputs: dict | None = None) -> dict:
    """Records which tasks had finished (their marker files) when it started, and
    how many tasks were running; writes its own marker when it ends."""
    d = Path(directory)
    running = d / f"running-{name}"
    running.touch()
    seen = {p.name[len("done-") :] for p in d.glob("done-*")}
    concurrent = len(list(d.glob("running-*")))
    time.sleep(sleep)
    running.unlink()
    (d / f"done-{name}").touch()
    return {"seen": seen, "concurrent": concurrent, "inputs": sorted(inputs or {})}


def fail_if(key: int, bad: int, inputs: dict | None = None) -> int:
    if key == bad:
        raise ValueError(f"task {key} failed")
    return key


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def pid() -> int:
    return os.getpid()


def thread_variable() -> str | None:
    return os.environ.get("OPENBLAS_NUM_THREADS")


def set_flag() -> None:
    os.environ["ANA_EXECUTOR_INIT"] = "yes"


def read_flag() -> str | None:
    return os.environ.get("ANA_EXECUTOR_INIT")


# ---------------------------------------------------------------- the plans
def chain_plan() -> list[Task]:
    """A diamond with a tail: a -> (b, c) -> d, plus independent e."""
    return [
        Task("a", draw, (1, 5)),
        Task("b", draw, (2, 5), needs=("a",)),
        Task("c", draw, (3, 5), needs=("a",)),
        Task(("d", 4), draw, (4, 5), needs=("b", "c")),
        Task("e", draw, kwargs={"seed": 5, "n": 5}),
    ]


def chain_oracle() -> dict:
    def r(seed):
        return float(np.random.default_rng(seed).standard_normal(5).sum())

    a = r(1)
    b, c = r(2) + a, r(3) + a
    return {"a": a, "b": b, "c": c, ("d", 4): r(4) + b + c, "e": r(5)}


def marker_plan(directory: Path) -> list[Task]:
    # The needed tasks sleep longest, so an executor that ignored needs would
    # start the others before the markers exist.
    d = str(directory)
    return [
        Task("a", marked, ("a", d, 0.4)),
        Task("x", marked, ("x", d, 0.05)),
        Task("b", marked, ("b", d, 0.05), needs=("a",)),
        Task("c", marked, ("c", d, 0.3), needs=("a", "x")),
        Task("y", marked, ("y", d, 0.05)),
        Task("d", marked, ("d", d, 0.05), needs=("c", "b")),
    ]


def check_markers(tasks: list[Task], results: dict, workers: int) -> None:
    for t in tasks:
        assert set(t.needs) <= results[t.key]["seen"], t.key
        assert results[t.key]["inputs"] == sorted(t.needs)
        assert 1 <= results[t.key]["concurrent"] <= workers


# ------------------------------------------------------------------- local
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_local_results_match_the_hand_computed_plan(workers):
    out = run_plan(chain_plan(), workers=workers)
    assert out == chain_oracle()  # bitwise: same draws, same additions
    assert list(out) == [t.key for t in chain_plan()]  # plan order


@pytest.mark.parametrize("workers", [1, 2])
def test_local_needs_finish_before_a_task_starts(tmp_path, workers):
    tasks = marker_plan(tmp_path)
    check_markers(tasks, run_plan(tasks, workers=workers), workers)


def test_on_result_once_per_task_in_the_caller(tmp_path):
    calls = []
    out = run_plan(
        chain_plan(),
        workers=2,
        on_result=lambda t, r: calls.append((t.key, r, os.getpid())),
    )
    assert sorted(map(repr, (k for k, _, _ in calls))) == sorted(map(repr, out))
    assert all(out[k] == r and p == os.getpid() for k, r, p in calls)


def test_in_process_runs_in_plan_order_respecting_needs():
    order = []
    tasks = [
        Task("late", draw, (1, 1), needs=("first",)),
        Task("first", draw, (2, 1)),
        Task("free", draw, (3, 1)),
    ]
    run_plan(tasks, workers=1, on_result=lambda t, r: order.append(t.key))
    assert order == ["first", "late", "free"]  # "late" goes as soon as ready


def test_workers_run_in_other_processes_with_one_blas_thread(monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    out = run_plan([Task(i, pid) for i in range(4)], workers=2)
    assert os.getpid() not in out.values()
    env = run_plan([Task(i, thread_variable) for i in range(2)], workers=2)
    assert set(env.values()) == {"1"}
    assert "OPENBLAS_NUM_THREADS" not in os.environ
    assert run_plan([Task(0, pid)], workers=1) == {0: os.getpid()}


def test_initializer_runs_in_each_worker(monkeypatch):
    monkeypatch.delenv("ANA_EXECUTOR_INIT", raising=False)
    tasks = [Task(i, read_flag) for i in range(3)]
    assert set(run_plan(tasks, workers=2, initializer=set_flag).values()) == {"yes"}
    assert "ANA_EXECUTOR_INIT" not in os.environ


def test_worker_environment_is_single_threaded_and_restored(monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a user's choice is kept
    with ex.single_threaded_children():
        assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
        assert os.environ["OMP_NUM_THREADS"] == "3"
    assert "OPENBLAS_NUM_THREADS" not in os.environ
    assert os.environ["OMP_NUM_THREADS"] == "3"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_task_exception_propagates_and_earlier_results_stay(workers):
    seen = []
    tasks = [Task(i, fail_if, (i, 2), needs=(i - 1,) if i else ()) for i in range(4)]
    with pytest.raises(ValueError, match="task 2 failed"):
        run_plan(tasks, workers=workers, on_result=lambda t, r: seen.append(t.key))
    assert seen == [0, 1]  # a chain: 3 never starts


def test_a_failure_cancels_the_tasks_in_flight():
    tasks = [Task("slow", nap, (60.0,)), Task("bad", fail_if, (1, 1))]
    start = time.perf_counter()
    with pytest.raises(ValueError, match="task 1 failed"):
        run_plan(tasks, workers=2)
    assert time.perf_counter() - start < CANCEL_BOUND_S


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([Task("a", draw), Task("a", draw)], "duplicate key 'a'"),
        ([Task("a", draw, needs=("z",))], "needs unknown key 'z'"),
        (
            [
                Task("a", draw, needs=("b",)),
                Task("b", draw, needs=("a",)),
                Task("c", draw),
            ],
            "form a cycle",
        ),
        ([("a", draw)], "Task objects"),
    ],
)
def test_bad_plans_are_rejected_before_any_work(tasks, message):
    with pytest.raises(ValueError, match=message):
        run_plan(tasks)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="workers"):
        run_plan([Task("a", draw, (1, 1))], workers=-1)
    with pytest.raises(ValueError, match="executor must be one of local, ray"):
        run_plan([Task("a", draw, (1, 1))], executor="dask")
    assert run_plan([]) == {}


def test_missing_ray_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(ImportError, match=r"^executor 'ray' needs .*\.\[ray\]$"):
        run_plan([Task("a", draw, (1, 1))], executor="ray")
    with pytest.raises(ImportError, match=r"pip install \.\[ray\]"):
        ex.require_executor("ray")
    assert ex.require_executor("local") is ExecutorKind.LOCAL


# --------------------------------------------------------------------- Ray
# One local Ray (2 CPUs) for the module; starting it takes most of the ~10 s.
@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        # Ray workers import this test module (its task functions) by name.
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}},
    )
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_results_match_the_hand_computed_plan(ray_session, tmp_path):
    assert run_plan(chain_plan(), executor="ray", workers=2) == chain_oracle()
    assert ray_session.is_initialized()  # not shut down: it was not started here
    tasks = marker_plan(tmp_path)
    calls = []
    out = run_plan(
        tasks,
        executor=ExecutorKind.RAY,
        workers=2,
        on_result=lambda t, r: calls.append((t.key, os.getpid())),
    )
    check_markers(tasks, out, 2)
    assert sorted(k for k, _ in calls) == sorted(out)
    assert {p for _, p in calls} == {os.getpid()}


@pytest.mark.slow
def test_ray_task_exception_propagates(ray_session):
    seen = []
    tasks = [Task(i, fail_if, (i, 1), needs=(i - 1,) if i else ()) for i in range(3)]
    with pytest.raises(ValueError, match="task 1 failed"):
        run_plan(
            tasks, executor="ray", workers=2, on_result=lambda t, r: seen.append(t.key)
        )
    assert seen == [0]
