"""Atomic file writes, shared by every package of the project.

The bytes go to a temporary file in the destination directory, which is then
renamed over the destination with :func:`os.replace` (atomic on POSIX and
Windows). An interrupted write leaves the old file or the complete new one, never
a half-written file; the temporary file is removed on failure.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["write_atomic", "write_text_atomic"]

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
