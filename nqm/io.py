"""Atomic file writes, shared by every package of the project.

The one I/O layer: raw bytes and text, strict JSON, tidy CSV tables and
matplotlib figures. The bytes go to a temporary file in the destination
directory, which is then renamed over the destination with :func:`os.replace`
(atomic on POSIX and Windows). An interrupted write leaves the old file or the
complete new one, never a half-written file; the temporary file is removed on
failure.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "write_atomic",
    "write_text_atomic",
    "jsonable",
    "json_text",
    "csv_text",
    "write_json",
    "write_csv",
    "write_table",
    "save_figure",
]

#: Permissions of written files (``mkstemp`` would leave them private).
FILE_MODE = 0o644


def write_atomic(path: str | os.PathLike, writer: Callable[[IO[bytes]], None]) -> Path:
    """Call ``writer(f)`` on a temporary binary file, then rename it to ``path``.

    Args:
        path: destination; its directory must exist.
        writer: writes the whole content to the open binary file it is given.

    Returns:
        The destination path.

    Raises:
        FileNotFoundError: if the destination directory does not exist.
        Any exception of ``writer``: the destination is left untouched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path: the directory of {str(path)!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically (see :func:`write_atomic`)."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda f: f.write(data))


def jsonable(value: Any) -> Any:
    """Convert to strict JSON: tuples to lists, numpy scalars and arrays to Python,
    paths to strings, and non-finite floats to ``None`` (JSON has no infinity;
    ``null`` steps mean the target is never reached)."""
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


def json_text(obj: Any) -> str:
    """``obj`` as the indented strict JSON text :func:`write_json` writes."""
    return json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented strict JSON (see :func:`jsonable`), atomically.

    Args:
        path: destination ``.json``; its directory must exist.
        obj: mappings, sequences, numbers, strings, numpy values, paths.

    Returns:
        The destination path.
    """
    return write_text_atomic(path, json_text(obj))


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, np.generic):
        # a numpy scalar is written as the Python number it holds (numpy 2's
        # repr would write ``np.float64(1.5)``)
        value = value.item()
    if isinstance(value, (list, tuple)):
        return ";".join(str(_csv_cell(v)) for v in value)
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, float):
        return repr(value)
    return value


def csv_text(
    rows: Iterable[Mapping[str, Any] | Sequence[Any]],
    columns: Sequence[str] | None = None,
) -> str:
    """The tidy CSV text :func:`write_csv` writes (see there for the format).

    Raises:
        ValueError: for sequence rows without ``columns``, or a sequence row
            whose length differs from ``columns``.
    """
    rows = list(rows)
    records = [r for r in rows if isinstance(r, Mapping)]
    if records and len(records) != len(rows):
        raise ValueError("rows must be all mappings or all sequences")
    if columns is None:
        if rows and not records:
            raise ValueError("columns: required when the rows are sequences")
        seen: dict[str, None] = {}
        for r in records:
            seen.update(dict.fromkeys(r))
        columns = list(seen)
    columns = list(columns)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        if isinstance(r, Mapping):
            cells = [r.get(c) for c in columns]
        else:
            cells = list(r)
            if len(cells) != len(columns):
                raise ValueError(
                    f"rows: a row has {len(cells)} cells for {len(columns)} columns"
                )
        w.writerow([_csv_cell(v) for v in cells])
    return buf.getvalue()


def write_csv(
    path: str | os.PathLike,
    rows: Iterable[Mapping[str, Any] | Sequence[Any]],
    columns: Sequence[str] | None = None,
) -> Path:
    """Write a tidy CSV (one row per record, ``\\n`` line ends) atomically.

    Missing cells and ``None`` are empty, infinities are ``inf``/``-inf``, floats
    are written with :func:`repr` (round-trip exact), sequences are ``;``-joined.

    Args:
        path: destination ``.csv``; its directory must exist.
        rows: records, each a mapping from column name to value, or each a
            sequence of cells in the order of ``columns``.
        columns: column order (the header); default for mappings: first-seen
            order over all rows. Required for sequence rows.

    Returns:
        The destination path.

    Raises:
        ValueError: for sequence rows without ``columns``, or a sequence row
            whose length differs from ``columns``.
    """
    return write_text_atomic(path, csv_text(rows, columns))


def write_table(
    directory: str | os.PathLike,
    stem: str,
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
) -> tuple[Path, Path]:
    """Write the same tidy records as ``stem.csv`` and ``stem.json``.

    Returns:
        The paths of the CSV and the JSON file.
    """
    rows = list(rows)
    directory = Path(directory)
    return (
        write_csv(directory / f"{stem}.csv", rows, columns),
        write_json(directory / f"{stem}.json", rows),
    )


def save_figure(
    fig: Any,
    stem: str | os.PathLike,
    formats: Sequence[str] = ("png", "pdf"),
    dpi: int = 72,
) -> list[Path]:
    """Save a matplotlib figure as ``stem.<format>`` for each format, atomically.

    Args:
        fig: a :class:`matplotlib.figure.Figure`.
        stem: destination path without the suffix, e.g. ``figures/optimal_lr``;
            its directory must exist.
        formats: file formats matplotlib knows (``"png"``, ``"pdf"``, ``"svg"``).
        dpi: resolution of raster formats.

    Returns:
        The written paths, one per format.
    """
    stem = Path(stem)
    return [
        write_atomic(
            stem.parent / f"{stem.name}.{fmt}",
            lambda f, fmt=fmt: fig.savefig(f, format=fmt, dpi=dpi),
        )
        for fmt in formats
    ]
