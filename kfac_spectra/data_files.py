"""Readers for data files the user already has on disk (nothing is downloaded).

Formats:

* IDX (MNIST, Fashion-MNIST): a 4-byte magic number ``0x00 0x00 <type> <ndim>``,
  then ``ndim`` big-endian uint32 dimensions, then the values, big-endian, in
  row-major order. Files may be gzipped (detected from the content, not the name).
* CIFAR-10 "python version": pickled dicts with ``b"data"`` (N, 3072) uint8, rows
  laid out as 1024 red, 1024 green, 1024 blue values of a 32x32 image, and
  ``b"labels"`` (N,) ints. Only open pickles you trust: unpickling runs code.
* Plain UTF-8 text, tokenised per character or per whitespace-separated word.

Every problem with a path is reported as :class:`DataFileError` (a ``ValueError``);
a missing path as its subclass :class:`DataFileNotFoundError`, which is also a
``FileNotFoundError``. The message says which file was expected where.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "CIFAR10_TEST_FILE",
    "CIFAR10_TRAIN_FILES",
    "IDX_FILES",
    "DataFileError",
    "DataFileNotFoundError",
    "find_file",
    "read_cifar10_batch",
    "read_idx",
    "tokenize_text",
]

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type byte -> numpy dtype (big-endian).
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""Standard MNIST / Fashion-MNIST file names (each may also end in ``.gz``)."""

CIFAR10_TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"


class DataFileError(ValueError):
    """A data file is missing, unreadable or not in the expected format."""


class DataFileNotFoundError(DataFileError, FileNotFoundError):
    """An expected data file or directory does not exist."""


def find_file(root: str | os.PathLike[str], names: Sequence[str], what: str) -> Path:
    """Return the first of ``names`` that exists in directory ``root``.

    Args:
        root: Directory to look in.
        names: Candidate file names, in order of preference.
        what: Human-readable description for the error message.

    Returns:
        Path of the first existing candidate.

    Raises:
        DataFileNotFoundError: If ``root`` is not a directory or none exists.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFileNotFoundError(
            f"expected a directory with {what} at {str(root)!r}, but it does not exist"
        )
    for name in names:
        if (root / name).is_file():
            return root / name
    raise DataFileNotFoundError(
        f"expected {what} in {str(root)!r} as one of {list(names)}, found none"
    )


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFileNotFoundError(f"file {str(path)!r} does not exist") from None
    except OSError as err:
        raise DataFileError(f"cannot read {str(path)!r}: {err}") from err
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataFileError(
                f"{str(path)!r} starts like gzip but does not decompress: {err}"
            ) from err
    return raw


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into an array.

    Args:
        path: File path.

    Returns:
        Array with the file's dimensions and native-endian dtype.

    Raises:
        DataFileNotFoundError: If the file does not exist.
        DataFileError: If the magic number, type byte or length is wrong.

    References:
        LeCun et al., "The MNIST database", file format section.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataFileError(
            f"{str(path)!r} is not an IDX file: expected magic bytes 00 00 <type> "
            f"<ndim> with type in {[hex(t) for t in _IDX_TYPES]}, got {raw[:4].hex()}"
        )
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{str(path)!r}: IDX header truncated")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataFileError(
            f"{str(path)!r}: IDX dimensions {dims} need {expected} data bytes, "
            f"file has {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def read_cifar10_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch file.

    Args:
        path: A ``data_batch_i`` or ``test_batch`` file.

    Returns:
        ``(images, labels)``: uint8 (N, 3, 32, 32) and int64 (N,) in [0, 10).

    Raises:
        DataFileNotFoundError: If the file does not exist.
        DataFileError: If it is not a pickled dict with well-formed ``b"data"`` and
            ``b"labels"``.
    """
    path = Path(path)
    raw = _read_bytes(path)
    try:
        batch = pickle.loads(raw, encoding="bytes")
    except Exception as err:  # unpickling can fail in many ways; report them all
        raise DataFileError(f"{str(path)!r} is not a CIFAR-10 pickle: {err}") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataFileError(
            f"{str(path)!r}: expected a dict with keys b'data' and b'labels'"
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFileError(
            f"{str(path)!r}: b'data' must be uint8 of shape (N, 3072), "
            f"got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0:
        raise DataFileError(f"{str(path)!r}: b'labels' must be N ints in [0, 10)")
    if labels.max(initial=0) >= 10:
        raise DataFileError(f"{str(path)!r}: b'labels' must be N ints in [0, 10)")
    return data.reshape(-1, 3, 32, 32), labels


def tokenize_text(text: str, by_character: bool) -> list[str]:
    """Split text into characters, or into whitespace-separated words."""
    return list(text) if by_character else text.split()


def build_vocabulary(
    tokens: Sequence[str], max_size: int | None, unknown: str
) -> tuple[str, ...]:
    """Vocabulary sorted by decreasing count, ties by token.

    Args:
        tokens: Training tokens.
        max_size: Keep at most this many entries, counting ``unknown`` (which is
            appended when tokens are dropped). ``None`` keeps all.
        unknown: Token that stands for dropped ones.

    Returns:
        The vocabulary; index i is token id i.

    Raises:
        ValueError: If ``max_size`` < 2.
    """
    if max_size is not None and max_size < 2:
        raise ValueError(f"max_size must be >= 2, got {max_size}")
    counts = Counter(tokens)
    ordered = sorted(counts, key=lambda t: (-counts[t], t))
    if max_size is not None and len(ordered) > max_size:
        ordered = ordered[: max_size - 1] + [unknown]
    return tuple(ordered)
