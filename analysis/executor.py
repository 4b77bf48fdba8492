r"""Run a plan of pure tasks: in this process, on local processes, or on Ray.

A *plan* is data: a sequence of :class:`Task` objects, each a module-level
function with its arguments and the keys of the tasks whose results it needs. One
executor runs any plan. Tasks are pure, so the results never depend on the
executor, on the number of workers or on the order in which tasks finish.

Scheduling is the same for every executor: tasks are submitted in plan order as
soon as every task they need has finished, with at most ``workers`` in flight, so
that a task that becomes ready goes before cheaper tasks queued later in the
plan. The caller orders the plan (for example, most expensive first).

* ``local`` with ``workers=1`` runs the tasks in this process.
* ``local`` with ``workers > 1`` (or 0: one per CPU) runs them in a
  :class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start
  method; the children's BLAS is single-threaded (``OMP_NUM_THREADS``,
  ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` set to 1 unless the user set
  them), since the workers already use every core.
* ``ray`` runs each task as a ``ray.remote(num_cpus=1)`` task: Ray's own task and
  resource model places them (``ray`` is imported only here, and only then).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import multiprocessing
import os
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from .journal import ResultJournal

__all__ = [
    "ExecutorKind",
    "Task",
    "ResultJournal",
    "run_plan",
    "require_executor",
    "executor_options",
    "single_threaded_children",
    "THREAD_VARIABLES",
]


class ExecutorKind(enum.StrEnum):
    """Where the tasks of a plan run."""

    LOCAL = "local"
    RAY = "ray"


@dataclasses.dataclass(frozen=True)
class Task:
    """One unit of a plan: ``fn(*args, **kwargs)``, run in a worker.

    When ``needs`` is not empty the executor calls
    ``fn(*args, inputs={k: result_of_k for k in needs}, **kwargs)``.

    Attributes:
        key: unique within a plan; hashable and picklable.
        fn: a module-level (picklable) function.
        args: positional arguments of ``fn``.
        kwargs: keyword arguments of ``fn``.
        needs: keys of the tasks whose results ``fn`` receives; the task starts
            only after all of them have finished.
    """

    key: Hashable
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    needs: tuple[Hashable, ...] = ()


#: Thread-pool variables of BLAS/OpenMP, read when a worker imports numpy.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_RAY_MISSING = "executor 'ray' needs the ray package: pip install .[ray]"


def require_executor(executor: str | ExecutorKind) -> ExecutorKind:
    """Parse an executor name and check that its backend can be imported.

    Cheap enough to call while validating options, before any work.

    Args:
        executor: ``"local"`` or ``"ray"``.

    Returns:
        The :class:`ExecutorKind`.

    Raises:
        ValueError: for an unknown executor name.
        ImportError: for ``ray`` when the ``ray`` package is not installed.
    """
    try:
        kind = ExecutorKind(executor)
    except ValueError:
        choices = ", ".join(k.value for k in ExecutorKind)
        raise ValueError(
            f"executor must be one of {choices}, got {executor!r}"
        ) from None
    if kind is ExecutorKind.RAY:
        _import_ray()
    return kind


def executor_options(
    executor: str | ExecutorKind, workers: Any, ray_address: str | None
) -> ExecutorKind:
    """Validate the executor options of a configuration, before any work.

    Args:
        executor: ``"local"`` or ``"ray"``.
        workers: a non-negative integer (0: one per CPU).
        ray_address: a Ray cluster to join; only with ``executor="ray"``.

    Returns:
        The :class:`ExecutorKind`.

    Raises:
        ValueError: one line naming the option that is wrong, including a
            missing ``ray`` package for ``executor="ray"``.
    """
    if isinstance(workers, bool) or int(workers) != workers or workers < 0:
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
    try:
        kind = require_executor(executor)
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    if ray_address is not None and kind is not ExecutorKind.RAY:
        raise ValueError("ray_address needs executor = 'ray'")
    return kind


def run_plan(
    tasks: Sequence[Task],
    *,
    executor: str | ExecutorKind = ExecutorKind.LOCAL,
    workers: int = 1,
    ray_address: str | None = None,
    on_result: Callable[[Task, Any], None] | None = None,
    initializer: Callable[[], None] | None = None,
    journal: ResultJournal | None = None,
) -> dict[Hashable, Any]:
    """Run every task of a plan and return their results by key.

    Args:
        tasks: the plan, in submission order. Keys are unique; every key in a
            task's ``needs`` names a task of the plan, and the needs form no
            cycle.
        executor: ``"local"`` (processes on this machine) or ``"ray"``.
        workers: at most this many tasks in flight. Local: 1 runs the tasks in
            this process, 0 means one per CPU. Ray: 0 means the CPUs of the
            cluster; a local Ray started here gets ``num_cpus=workers``.
        ray_address: Ray only: the cluster to join; ``None`` uses the Ray
            already initialised in this process or starts a local one (and shuts
            down only a Ray it started).
        on_result: ``on_result(task, result)``, called in this process once per
            task as it finishes (atomic per-task writes, progress lines).
        initializer: called once in each local worker process before its first
            task (not in this process, and not on Ray).
        journal: where finished results are kept, so that a rerun of the plan
            after a kill resumes: journalled tasks are not run again, and
            ``on_result`` gets them first, in plan order.

    Returns:
        ``{task.key: result}`` in plan order.

    Raises:
        ValueError: for a duplicate key, an unknown or cyclic need, a negative
            ``workers`` or an unknown executor.
        ImportError: for ``executor="ray"`` without the ``ray`` package.
        Exception: the first exception raised by a task (or by ``on_result``),
            after the tasks still in flight are cancelled; results already given
            to ``on_result`` stay with it.
    """
    kind = require_executor(executor)
    if isinstance(workers, bool) or int(workers) != workers or workers < 0:
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
    _check_plan(tasks)
    if not tasks:
        return {}
    done: dict[Hashable, Any] = {}
    if journal is not None:
        digests = journal.digests(tasks)
        done = journal.load(digests)
        user_callback = on_result

        def on_result(task: Task, value: Any) -> None:
            journal.save(digests[task.key], value)
            if user_callback is not None:
                user_callback(task, value)

        for t in tasks:
            if t.key in done and user_callback is not None:
                user_callback(t, done[t.key])
    todo = [t for t in tasks if t.key not in done]
    if not todo:
        results = done
    elif kind is ExecutorKind.RAY:
        with _ray_session(int(workers), ray_address) as backend:
            results = _schedule(todo, backend, on_result, done)
    elif workers == 1 or len(todo) == 1:
        results = _schedule(todo, _InProcess(), on_result, done)
    else:
        n = (os.cpu_count() or 1) if workers == 0 else int(workers)
        with _process_pool(min(n, len(todo)), initializer) as backend:
            results = _schedule(todo, backend, on_result, done)
    return {t.key: results[t.key] for t in tasks}


# ----------------------------------------------------------------- the plan
def _check_plan(tasks: Sequence[Task]) -> None:
    keys: set[Hashable] = set()
    for t in tasks:
        if not isinstance(t, Task):
            raise ValueError(f"tasks must be Task objects, got {type(t).__name__}")
        if t.key in keys:
            raise ValueError(f"tasks: duplicate key {t.key!r}")
        keys.add(t.key)
    for t in tasks:
        for k in t.needs:
            if k not in keys:
                raise ValueError(f"tasks: {t.key!r} needs unknown key {k!r}")
    # Kahn's algorithm: whatever never becomes ready lies on or behind a cycle.
    missing = {t.key: len(set(t.needs)) for t in tasks}
    users: dict[Hashable, list[Hashable]] = {k: [] for k in keys}
    for t in tasks:
        for k in set(t.needs):
            users[k].append(t.key)
    ready = [k for k, n in missing.items() if n == 0]
    while ready:
        for u in users[ready.pop()]:
            missing[u] -= 1
            if missing[u] == 0:
                ready.append(u)
    stuck = [t.key for t in tasks if missing[t.key] > 0]
    if stuck:
        raise ValueError(f"tasks: the needs of {stuck[0]!r} form a cycle")


def _call(
    fn: Callable[..., Any],
    args: tuple,
    kwargs: Mapping[str, Any],
    inputs: Mapping[Hashable, Any] | None,
) -> Any:
    """Run one task (in a worker): ``inputs`` only when the task needs any."""
    if inputs is None:
        return fn(*args, **kwargs)
    return fn(*args, inputs=inputs, **kwargs)


def _schedule(
    tasks: Sequence[Task],
    backend: _Backend,
    on_result: Callable[[Task, Any], None] | None,
    done: Mapping[Hashable, Any],
) -> dict[Hashable, Any]:
    """Submit ready tasks in plan order, at most ``backend.slots`` in flight
    (``done``: results known before the start, which ``tasks`` may need)."""
    queue = list(tasks)
    results: dict[Hashable, Any] = dict(done)
    in_flight: dict[Any, Task] = {}
    try:
        while queue or in_flight:
            for t in [t for t in queue if all(k in results for k in t.needs)]:
                if len(in_flight) >= backend.slots:
                    break
                queue.remove(t)
                inputs = {k: results[k] for k in t.needs} if t.needs else None
                in_flight[backend.submit(t, inputs)] = t
            for handle, value in backend.wait(list(in_flight)):
                t = in_flight.pop(handle)
                results[t.key] = value
                if on_result is not None:
                    on_result(t, value)
    except BaseException:
        backend.cancel(list(in_flight))
        raise
    return results


# ------------------------------------------------------------------ backends
class _Backend:
    """Submits tasks and waits for some to finish; ``slots`` bounds in-flight."""

    slots: int

    def submit(self, task: Task, inputs: Mapping[Hashable, Any] | None) -> Any:
        raise NotImplementedError

    def wait(self, handles: list[Any]) -> list[tuple[Any, Any]]:
        """Block until at least one handle finished; its (handle, result) pairs."""
        raise NotImplementedError

    def cancel(self, handles: list[Any]) -> None:
        raise NotImplementedError


@dataclasses.dataclass(eq=False)
class _Finished:
    """The handle of a task run at submission (hashed by identity)."""

    value: Any


class _InProcess(_Backend):
    """Runs each task at submission, in this process, one at a time."""

    slots = 1

    def submit(self, task: Task, inputs: Mapping[Hashable, Any] | None) -> Any:
        return _Finished(_call(task.fn, task.args, task.kwargs, inputs))

    def wait(self, handles: list[Any]) -> list[tuple[Any, Any]]:
        return [(h, h.value) for h in handles]

    def cancel(self, handles: list[Any]) -> None:
        pass


class _Pool(_Backend):
    def __init__(self, pool: ProcessPoolExecutor, slots: int) -> None:
        self.pool = pool
        self.slots = slots

    def submit(self, task: Task, inputs: Mapping[Hashable, Any] | None) -> Future:
        return self.pool.submit(_call, task.fn, task.args, task.kwargs, inputs)

    def wait(self, handles: list[Any]) -> list[tuple[Any, Any]]:
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        # Plan order among tasks that finished together: handles keep it.
        return [(h, h.result()) for h in handles if h in done]

    def cancel(self, handles: list[Any]) -> None:
        for h in handles:
            h.cancel()
        # Running tasks cannot be cancelled through a future: end the workers.
        terminate = getattr(self.pool, "terminate_workers", None)
        if terminate is not None:  # Python >= 3.14
            terminate()
            return
        for process in list(getattr(self.pool, "_processes", {}).values()):
            process.terminate()


@contextlib.contextmanager
def single_threaded_children() -> Iterator[None]:
    """Give worker processes started inside one BLAS thread each.

    Variables the user set are kept; this process' environment is restored on
    exit.
    """
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    for k in THREAD_VARIABLES:
        os.environ.setdefault(k, "1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _process_pool(
    n_workers: int, initializer: Callable[[], None] | None
) -> Iterator[_Pool]:
    ctx = multiprocessing.get_context("spawn")
    with (
        single_threaded_children(),
        ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=initializer) as pool,
    ):
        yield _Pool(pool, n_workers)


# ----------------------------------------------------------------------- Ray
def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(_RAY_MISSING) from None
    return ray


def _ray_call(
    fn: Callable[..., Any],
    args: tuple,
    kwargs: Mapping[str, Any],
    need_keys: tuple[Hashable, ...] | None,
    *need_values: Any,
) -> Any:
    """A Ray task: the needed results arrive as top-level arguments, which Ray
    resolves from its object store (no round trip through the driver)."""
    inputs = (
        None if need_keys is None else dict(zip(need_keys, need_values, strict=True))
    )
    return _call(fn, args, kwargs, inputs)


class _Ray(_Backend):
    def __init__(self, ray: Any, slots: int) -> None:
        self.ray = ray
        self.slots = slots
        self.remote = ray.remote(num_cpus=1)(_ray_call)
        self.refs: dict[Hashable, Any] = {}

    def submit(self, task: Task, inputs: Mapping[Hashable, Any] | None) -> Any:
        if inputs is None:
            ref = self.remote.remote(task.fn, task.args, dict(task.kwargs), None)
        else:
            keys = tuple(inputs)
            ref = self.remote.remote(
                task.fn,
                task.args,
                dict(task.kwargs),
                keys,
                *(self.refs[k] for k in keys),
            )
        self.refs[task.key] = ref
        return ref

    def wait(self, handles: list[Any]) -> list[tuple[Any, Any]]:
        ready, _ = self.ray.wait(handles, num_returns=1)
        done = set(ready)
        return [(h, self.ray.get(h)) for h in handles if h in done]

    def cancel(self, handles: list[Any]) -> None:
        for h in handles:
            with contextlib.suppress(Exception):
                self.ray.cancel(h, force=True)


@contextlib.contextmanager
def _ray_session(workers: int, address: str | None) -> Iterator[_Ray]:
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        if address is not None:
            ray.init(address=address, logging_level="WARNING")
        else:
            ray.init(
                num_cpus=workers or None,
                include_dashboard=False,
                logging_level="WARNING",
            )
        started = True
    try:
        slots = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        yield _Ray(ray, slots)
    finally:
        if started:
            ray.shutdown()
