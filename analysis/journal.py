"""A journal of finished tasks, so that a plan rerun after a kill resumes.

Each finished task's result is written, atomically, to its own file in a
directory, named by a digest of what the result depends on: the task's function,
its arguments, the digests of the tasks it needs, and a *salt* that the caller
derives from its configuration and the package version. A rerun of the same plan
reads those results back instead of computing them again; a task whose inputs
changed has another digest and runs again.

A journal entry is a cache, never a source of truth: an entry that cannot be
read (a truncated file, a foreign file) is logged and recomputed, and the caller
removes the journal once the run's outputs are written.

Entries are pickles, read only from a directory the caller owns (the run's own
output folder), never from anywhere a user is asked to point at.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import shutil
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nqm.io import write_atomic

if TYPE_CHECKING:
    from .executor import Task

__all__ = ["ResultJournal"]

logger = logging.getLogger(__name__)

#: The pickle protocol of the entries (fixed, so that digests and files agree
#: between Python versions that support it).
PICKLE_PROTOCOL = 5
SUFFIX = ".pkl"


class ResultJournal:
    """Finished tasks' results in ``directory``, keyed by what they depend on.

    Args:
        directory: where the entries live (created on the first write).
        salt: anything picklable that every result depends on besides the
            task itself (the configuration, the code's version).
    """

    def __init__(self, directory: str | Path, salt: Any = None) -> None:
        self.directory = Path(directory)
        self._salt = hashlib.sha256(
            pickle.dumps(salt, protocol=PICKLE_PROTOCOL)
        ).hexdigest()

    def digests(self, tasks: Sequence[Task]) -> dict[Hashable, str]:
        """Each task's digest: its function, arguments, salt and the digests of
        the tasks it needs (``tasks`` is a checked plan: no cycles)."""
        by_key = {t.key: t for t in tasks}
        out: dict[Hashable, str] = {}

        def digest(task: Task) -> str:
            if task.key not in out:
                parts = (
                    self._salt,
                    task.fn.__module__,
                    task.fn.__qualname__,
                    task.args,
                    sorted(task.kwargs.items()),
                    [digest(by_key[k]) for k in task.needs],
                )
                try:
                    blob = pickle.dumps(parts, protocol=PICKLE_PROTOCOL)
                except (pickle.PicklingError, TypeError, AttributeError) as exc:
                    raise ValueError(
                        f"journal: the arguments of task {task.key!r} cannot be "
                        f"pickled ({exc})"
                    ) from None
                out[task.key] = hashlib.sha256(blob).hexdigest()
            return out[task.key]

        for t in tasks:
            digest(t)
        return out

    def _path(self, digest: str) -> Path:
        return self.directory / f"{digest}{SUFFIX}"

    def load(self, digests: Mapping[Hashable, str]) -> dict[Hashable, Any]:
        """The journalled results among ``digests`` (unreadable entries are
        logged, removed and left out, so that their tasks run again)."""
        found: dict[Hashable, Any] = {}
        for key, digest in digests.items():
            path = self._path(digest)
            if not path.is_file():
                continue
            try:
                with path.open("rb") as f:
                    found[key] = pickle.load(f)
            except Exception as exc:  # a truncated or foreign file: recompute
                logger.warning(
                    "journal: %s cannot be read (%s: %s); task %r runs again",
                    path.name, type(exc).__name__, exc, key,
                )  # fmt: skip
                path.unlink(missing_ok=True)
        return found

    def save(self, digest: str, value: Any) -> None:
        """Write one task's result, atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(
            self._path(digest),
            lambda f: pickle.dump(value, f, protocol=PICKLE_PROTOCOL),
        )

    def remove(self) -> None:
        """Delete the journal (once the run's outputs are written)."""
        shutil.rmtree(self.directory, ignore_errors=True)
