"""The trial log ``trials.jsonl``: one JSON line per finished trial, append-only.

Each record is appended as one ``write`` of a complete line followed by
``fsync`` the moment its trial finishes, so a killed sweep loses at most the
trials in flight. A kill during the write can leave a torn last line (no
newline, or not valid JSON): :func:`read_log` reports it and
:func:`repair_log` rewrites the file atomically without it before a resumed sweep
appends again. A malformed line anywhere else is an error, not something to
skip.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nqm.io import jsonable, write_text_atomic

__all__ = ["record_key", "read_log", "repair_log", "TrialLog"]


def record_key(record: Mapping[str, Any]) -> tuple[str, int, int, int]:
    """A record's identity: (optimizer, batch_size, trial, repeat).

    A repeat (``repeat > 0``) is identified without its trial index (-1): which
    trial it repeats is decided by the tuning results, not by the plan.
    """
    repeat = int(record.get("repeat", 0))
    return (
        str(record["optimizer"]),
        int(record["batch_size"]),
        int(record["trial"]) if repeat == 0 else -1,
        repeat,
    )


def read_log(path: str | os.PathLike) -> tuple[list[dict[str, Any]], bool]:
    """Read a trial log.

    Args:
        path: the ``trials.jsonl`` file (a missing file has no records).

    Returns:
        ``(records, torn)``: the complete records in file order, and whether a
        torn last line was dropped.

    Raises:
        ValueError: for a malformed line that is not the last one.
    """
    path = Path(path)
    if not path.exists():
        return [], False
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    # text ends with "\n" when the last record is complete: the final piece is ""
    tail, lines = lines[-1], lines[:-1]
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not tail:
                return records, True  # a torn line that happens to end in "\n"
            raise ValueError(f"{path}: line {i + 1} is not a JSON record") from None
    return records, bool(tail)


def repair_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Drop a torn last line (atomically) and return the complete records."""
    records, torn = read_log(path)
    if torn:
        write_text_atomic(path, "".join(_line(r) for r in records))
    return records


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(jsonable(record), allow_nan=False, sort_keys=True) + "\n"


class TrialLog:
    """Appends records to a ``trials.jsonl`` durably (one write + fsync each).

    Args:
        path: the log file; created if missing. A torn last line is removed
            first (:func:`repair_log`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = repair_log(self.path)

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record and flush it to disk."""
        data = _line(record).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records.append(json.loads(data))

    def extend(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append several records."""
        for r in records:
            self.append(r)
