"""An output folder owned by one run: an exclusive lock and a checksummed manifest.

Every command that writes a folder of results opens it with
:func:`open_run_folder`, which

1. creates the folder and takes an exclusive, non-blocking ``fcntl.flock`` on
   ``FOLDER/.lock`` (the lock dies with its process, so a killed run never
   leaves the folder locked); the holder's pid, host, command and start time
   are written into the lock file, and a second run gets a one-line
   :class:`FolderInUseError` naming them;
2. removes the temporary files that killed writers of :func:`nqm.io.write_atomic`
   left (``.NAME.XXXX.tmp``);
3. removes the previous ``manifest.json`` before anything is written, so a
   manifest never describes files that are no longer its own. With
   ``resume=True`` the previous manifest's files are checked against their
   checksums and kept; the manifest is rewritten at once as in progress
   (``"complete": false``).

The run writes through the :class:`RunFolder` it is given; each file's SHA-256
and size are recorded, and :meth:`RunFolder.finish` writes the manifest last::

    {...meta..., "complete": true,
     "files": {"records.csv": {"sha256": "...", "bytes": 1234}, ...}}

A file the manifest on disk lists is taken out of it (the manifest is rewritten)
before it is written again, so that at every instant each file the manifest
lists has the listed content. While such a file is rewritten, the manifest lists
it under ``"pending"`` with the checksums of its old and its new content: the
write is atomic, so after a kill the file is one of the two, and a resumed run
adopts whichever it finds.

Readers go through :func:`verify_folder` (every listed file) or
:func:`read_verified` (one file), which refuse a file that is missing, not in
the manifest, or whose checksum disagrees, with a one-line
:class:`CorruptFileError` that names the file and says what to do.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import io
import json
import os
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from nqm.io import csv_text, json_text, write_atomic, write_json

__all__ = [
    "LOCK_FILE",
    "MANIFEST_FILE",
    "CorruptFileError",
    "FolderInUseError",
    "RunFolder",
    "check_file",
    "file_digest",
    "open_run_folder",
    "read_verified",
    "verify_folder",
]

#: The lock file inside a run folder (kept: deleting a lock file races with
#: a process that has opened it but not yet locked it).
LOCK_FILE = ".lock"
#: The manifest, written last.
MANIFEST_FILE = "manifest.json"
#: Keys of the manifest that the folder writes itself (not part of ``meta``).
RESERVED_KEYS: frozenset[str] = frozenset({"complete", "files", "pending"})
#: Bytes read at a time while hashing.
_CHUNK = 1 << 20


class FolderInUseError(RuntimeError):
    """Another run holds the folder's lock; the message names the holder."""


class CorruptFileError(ValueError):
    """A file is missing, not in its manifest, or disagrees with its checksum.

    The message is one line: which file, what is wrong, what to do.
    """


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
    """The record of a file: ``{"sha256": hex digest, "bytes": size}``."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"sha256": h.hexdigest(), "bytes": size}


def _bytes_digest(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _check_name(name: str) -> str:
    """A file name relative to the folder, in POSIX form.

    Raises:
        ValueError: for an absolute name, ``..``, or a reserved name.
    """
    pure = PurePosixPath(str(name).replace(os.sep, "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or str(pure) == ".":
        raise ValueError(f"name: {name!r} is not a path inside the folder")
    if str(pure) in (LOCK_FILE, MANIFEST_FILE):
        raise ValueError(f"name: {name!r} is written by the run folder itself")
    return str(pure)


class RunFolder:
    """An output folder owned by one run: exclusive lock, checksummed manifest.

    Made by :func:`open_run_folder`; not constructed directly.

    Attributes:
        path: the folder.
        command: the command that owns it (written into the lock file).
    """

    def __init__(
        self,
        path: Path,
        command: str,
        *,
        records: Mapping[str, Mapping[str, Any]] | None = None,
        meta: Mapping[str, Any] | None = None,
        on_disk: bool = False,
    ) -> None:
        self.path = path
        self.command = command
        self._records: dict[str, dict[str, Any]] = {
            k: dict(v) for k, v in (records or {}).items()
        }
        self._meta: dict[str, Any] = dict(meta or {})
        # the files the manifest on disk lists (None: there is no manifest)
        self._listed: set[str] | None = set(self._records) if on_disk else None
        self._pending: dict[str, dict[str, Any]] = {}

    @property
    def records(self) -> dict[str, dict[str, Any]]:
        """``name -> {"sha256", "bytes"}`` of every file the run owns so far."""
        return {k: dict(v) for k, v in self._records.items()}

    @property
    def meta(self) -> dict[str, Any]:
        """The meta of the last manifest written (or adopted on resume)."""
        return dict(self._meta)

    # --------------------------------------------------------- manifest
    def _write_manifest(self, complete: bool) -> Path:
        body = {
            **self._meta,
            "complete": complete,
            "files": {k: self._records[k] for k in sorted(self._records)},
        }
        if self._pending:
            body["pending"] = {k: self._pending[k] for k in sorted(self._pending)}
        path = write_json(self.path / MANIFEST_FILE, body)
        self._listed = set(self._records)
        return path

    def _release(self, name: str, new: Mapping[str, Any] | None = None) -> None:
        """Take ``name`` out of the manifest on disk before it is rewritten."""
        old = self._records.pop(name, None)
        if self._listed is None or name not in self._listed:
            return
        if new is not None and old is not None:
            self._pending[name] = {"new": dict(new), "previous": old}
        self._write_manifest(complete=False)
        self._pending.pop(name, None)

    def _set_meta(self, meta: Mapping[str, Any]) -> None:
        clash = RESERVED_KEYS & set(meta)
        if clash:
            raise ValueError(f"meta: keys {sorted(clash)} are written by the folder")
        self._meta = dict(meta)

    def checkpoint(self, meta: Mapping[str, Any]) -> Path:
        """Write the manifest of a run still in progress (``"complete": false``),
        listing every file recorded so far: what a resumed run may keep."""
        self._set_meta(meta)
        return self._write_manifest(complete=False)

    def finish(self, meta: Mapping[str, Any]) -> Path:
        """Write ``manifest.json``, last: ``meta``, ``"complete": true`` and the
        checksum and size of every file the run wrote.

        Raises:
            ValueError: if ``meta`` holds a key the folder writes itself.
        """
        self._set_meta(meta)
        return self._write_manifest(complete=True)

    # ---------------------------------------------------------- writers
    def file(self, name: str) -> Path:
        """The path of ``name`` for a writer of its own; call :meth:`record` after.

        The file is taken out of the manifest on disk first (and its parent
        folder created).
        """
        name = _check_name(name)
        self._release(name)
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def record(self, name: str) -> None:
        """Checksum ``name``, a file written by other means, into the manifest.

        Raises:
            FileNotFoundError: if the file does not exist.
        """
        name = _check_name(name)
        self._records[name] = file_digest(self.path / name)

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write ``data`` atomically (:func:`nqm.io.write_atomic`) and record it."""
        name = _check_name(name)
        digest = _bytes_digest(data)
        self._release(name, digest)
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: f.write(data))
        self._records[name] = digest
        return path

    def write_text(self, name: str, text: str) -> Path:
        """Write UTF-8 text atomically and record it."""
        return self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, obj: Any) -> Path:
        """Write strict indented JSON (as :func:`nqm.io.write_json`) and record it."""
        return self.write_text(name, json_text(obj))

    def write_csv(
        self,
        name: str,
        rows: Sequence[Mapping[str, Any] | Sequence[Any]],
        columns: Sequence[str] | None = None,
    ) -> Path:
        """Write a tidy CSV (as :func:`nqm.io.write_csv`) and record it."""
        return self.write_text(name, csv_text(rows, columns))

    def write_table(
        self,
        stem: str,
        rows: Sequence[Mapping[str, Any]],
        columns: Sequence[str] | None = None,
    ) -> tuple[Path, Path]:
        """The same records as ``stem.csv`` and ``stem.json`` (as
        :func:`nqm.io.write_table`)."""
        rows = list(rows)
        return (
            self.write_csv(f"{stem}.csv", rows, columns),
            self.write_json(f"{stem}.json", rows),
        )

    def save_figure(
        self,
        fig: Any,
        stem: str,
        formats: Sequence[str] = ("png", "pdf"),
        dpi: int = 72,
    ) -> list[Path]:
        """Save a matplotlib figure as ``stem.<format>`` per format (as
        :func:`nqm.io.save_figure`) and record each file."""
        out = []
        for fmt in formats:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=dpi)
            out.append(self.write_bytes(f"{stem}.{fmt}", buf.getvalue()))
        return out


# ------------------------------------------------------------------ lock
def _holder_text(command: str) -> str:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "started_utc": now,
            "argv": sys.argv,
        }
    )


def _describe_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 1 << 16, 0).decode("utf-8", "replace")
        info = json.loads(text)
        return (
            f"pid {info['pid']} on {info['host']} ({info['command']}, "
            f"started {info['started_utc']})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not yet written who it is)"


def _lock(folder: Path, command: str) -> int:
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _describe_holder(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise FolderInUseError(
                f"{folder} is in use by {holder}; wait for it to finish, or write "
                "to another folder"
            ) from None
        raise
    data = _holder_text(command).encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    return fd


def _unlock(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove ``.NAME.XXXX.tmp`` files of killed writers, in ``folder`` and the
    subfolders that are not run folders of their own (no ``.lock``)."""
    removed = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        if here != folder and LOCK_FILE in files:
            dirs.clear()  # another run folder: its own run cleans it
            continue
        for name in files:
            if name.startswith(".") and name.endswith(".tmp"):
                (here / name).unlink(missing_ok=True)
                removed.append(here / name)
    return removed


# -------------------------------------------------------------- readers
def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise CorruptFileError(
            f"{path}: missing; the run that wrote {folder} did not finish (or is "
            "still running): run it again"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CorruptFileError(
            f"{path}: unreadable ({exc}); run the command that wrote {folder} again"
        ) from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and "sha256" in v for v in files.values()
    ):
        raise CorruptFileError(
            f"{path}: lists no file checksums (not written through a run folder); "
            "delete it and run the command that wrote the folder again"
        )
    return manifest


#: What to do about a bad file of a folder written through a run folder.
REMEDY = "restore it or run the command that wrote the folder again"


def check_file(
    path: str | os.PathLike,
    record: Mapping[str, Any],
    *,
    listed_in: str = MANIFEST_FILE,
    remedy: str = REMEDY,
) -> Path:
    """Check a file against its record (``{"sha256", "bytes"}``) in a manifest.

    Args:
        path: the file.
        record: its record.
        listed_in: the manifest's name, for the message.
        remedy: what the user should do, for the message.

    Returns:
        ``path``.

    Raises:
        CorruptFileError: one line naming the file, if it is missing or its
            SHA-256 differs (truncated, corrupted or changed after the run).
    """
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{path}: listed in {listed_in} but missing; {remedy}")
    got = file_digest(path)
    if got["sha256"] != record.get("sha256"):
        raise CorruptFileError(
            f"{path}: its checksum differs from {listed_in} ({got['bytes']} bytes, "
            f"{record.get('bytes')} expected): truncated, corrupted or changed "
            f"after the run; {remedy}"
        )
    return path


def verify_folder(path: str | os.PathLike) -> dict[str, Any]:
    """Check every file the folder's manifest lists against its checksum.

    Args:
        path: a folder written through :func:`open_run_folder`.

    Returns:
        The manifest (its ``"complete"`` says whether the run finished).

    Raises:
        CorruptFileError: if the manifest is missing or unreadable, or a listed
            file is missing or has another checksum.
    """
    folder = Path(path)
    manifest = _read_manifest(folder)
    for name, record in manifest["files"].items():
        check_file(folder / name, record)
    return manifest


def read_verified(path: str | os.PathLike, name: str) -> Path:
    """The path of ``name`` in the folder, after checking it against the manifest.

    Args:
        path: the folder.
        name: a file name relative to it.

    Returns:
        ``path / name``.

    Raises:
        CorruptFileError: if the manifest is missing, does not list ``name``,
            or the file is missing or has another checksum.
    """
    folder = Path(path)
    name = _check_name(name)
    manifest = _read_manifest(folder)
    record = manifest["files"].get(name)
    if record is None:
        raise CorruptFileError(
            f"{folder / name}: not in {folder / MANIFEST_FILE}, so not written by "
            "the run that owns the folder (or left by a killed one); run the "
            "command that writes it again"
        )
    return check_file(folder / name, record)


def _resume_records(folder: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The verified records and the meta of the previous manifest, with its
    pending files adopted in whichever of their two versions is on disk."""
    if not (folder / MANIFEST_FILE).exists():
        return None
    manifest = _read_manifest(folder)
    records = {}
    for name, record in manifest["files"].items():
        check_file(folder / name, record)
        records[name] = record
    for name, versions in (manifest.get("pending") or {}).items():
        path = folder / name
        got = file_digest(path) if path.is_file() else None
        ok = [v for v in versions.values() if got and v["sha256"] == got["sha256"]]
        if not ok:
            raise CorruptFileError(
                f"{path}: was being rewritten and is neither its old nor its new "
                "content; delete it or run the command into another folder"
            )
        records[name] = got
    meta = {k: v for k, v in manifest.items() if k not in RESERVED_KEYS}
    return records, meta


@contextlib.contextmanager
def open_run_folder(
    path: str | os.PathLike, *, command: str, resume: bool = False
) -> Iterator[RunFolder]:
    """Own the output folder ``path`` for one run (see the module docstring).

    Args:
        path: the folder (created with its parents).
        command: what runs (written into the lock file, named to a second run).
        resume: keep the files of the previous manifest (each checked against
            its checksum) instead of removing the manifest.

    Yields:
        The folder to write through; its lock is released on exit. On an
        exception no manifest is written (with ``resume`` the in-progress one
        stays).

    Raises:
        ValueError: if ``path`` exists and is not a directory.
        FolderInUseError: if another run holds the folder.
        CorruptFileError: with ``resume``, if a file of the previous manifest
            is missing or corrupted.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"out: {folder} exists and is not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    fd = _lock(folder, command)
    try:
        _remove_stale_temporaries(folder)
        previous = _resume_records(folder) if resume else None
        if previous is None:
            (folder / MANIFEST_FILE).unlink(missing_ok=True)
            run = RunFolder(folder, command)
        else:
            records, meta = previous
            run = RunFolder(folder, command, records=records, meta=meta)
            run.checkpoint(meta)
        yield run
    finally:
        _unlock(fd)
