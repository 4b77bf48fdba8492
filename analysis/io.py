"""Atomic writers for tidy tables, JSON documents and figures.

Every writer puts its bytes into a temporary file in the destination directory and
then renames it over the destination with :func:`os.replace`, which is atomic on
POSIX and Windows. A run interrupted at any point therefore leaves either the old
file or the complete new one, never a half-written file; the temporary file is
removed on failure.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nqm.io import write_atomic, write_text_atomic

__all__ = [
    "write_atomic",
    "write_text_atomic",
    "write_json",
    "write_csv",
    "write_table",
    "save_figure",
    "jsonable",
]


def jsonable(value: Any) -> Any:
    """Convert to strict JSON: tuples to lists, numpy scalars to Python, and
    non-finite floats to ``None`` (JSON has no infinity; ``null`` steps mean the
    target is never reached)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if (
        hasattr(value, "item")
        and callable(value.item)
        and getattr(value, "ndim", 1) == 0
    ):
        value = value.item()
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented strict JSON (see :func:`jsonable`), atomically."""
    text = json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ";".join(str(_csv_cell(v)) for v in value)
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, float):
        return repr(value)
    return value


def write_csv(
    path: str | os.PathLike,
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
) -> Path:
    """Write a tidy CSV (one row per record) atomically.

    Missing cells are empty, infinities are ``inf``, sequences are ``;``-joined.

    Args:
        path: destination ``.csv``.
        rows: records, each a mapping from column name to value.
        columns: column order; default: first-seen order over all rows.
    """
    rows = list(rows)
    if columns is None:
        seen: dict[str, None] = {}
        for r in rows:
            seen.update(dict.fromkeys(r))
        columns = list(seen)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: _csv_cell(r.get(c)) for c in columns})
    return write_text_atomic(path, buf.getvalue())


def write_table(
    directory: str | os.PathLike,
    stem: str,
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
) -> tuple[Path, Path]:
    """Write the same tidy records as ``stem.csv`` and ``stem.json``."""
    rows = list(rows)
    directory = Path(directory)
    return (
        write_csv(directory / f"{stem}.csv", rows, columns),
        write_json(directory / f"{stem}.json", rows),
    )


def save_figure(
    fig: Any,
    directory: str | os.PathLike,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
    dpi: int = 72,
) -> list[Path]:
    """Save a matplotlib figure in each format atomically; returns the paths."""
    directory = Path(directory)
    paths = []
    for fmt in formats:
        paths.append(
            write_atomic(
                directory / f"{stem}.{fmt}",
                lambda f, fmt=fmt: fig.savefig(f, format=fmt, dpi=dpi),
            )
        )
    return paths
