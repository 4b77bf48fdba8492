"""Process-level settings that make the exact dynamics fast (opt-in, never implicit).

The closed forms evaluate a few hundred NumPy expressions on arrays of one value per
mode (80 kB at d = 10^4). Each expression allocates a temporary. With glibc's
default heap settings, freeing them often leaves more than the trim threshold free
at the top of the heap, so the memory is returned to the operating system and the
next allocation faults every page back in. On virtual machines a page fault is
expensive: measured on this project's 2-core CI machine, one momentum + EMA
evaluation at d = 10^4 spent about 60% of its time in page faults.

:func:`keep_freed_memory` tells the allocator to keep freed memory (``mallopt``),
for the whole process. It is called by the command-line studies
(``python -m analysis``) and the benchmarks, not at import, because it changes the
process, not just this library. The cost is that the process keeps its peak heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["keep_freed_memory"]

_log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(
    trim_threshold: int = 1 << 30,
    mmap_threshold: int = 32 << 20,
    top_pad: int = 64 << 20,
) -> bool:
    """Keep freed heap memory in the process (glibc only; a no-op elsewhere).

    Args:
        trim_threshold: free bytes at the top of the heap before glibc returns
            them to the system.
        mmap_threshold: allocations at least this large use ``mmap`` (and are
            unmapped, so faulted in again, on every reuse); glibc caps it at 32 MiB
            on 64-bit systems.
        top_pad: extra bytes requested whenever the heap grows.

    Returns:
        True when glibc accepted every setting; False where the C library is not
        glibc (macOS, musl, Windows) or refused a value. Nothing is changed then.

    Raises:
        ValueError: for a negative size.
    """
    for name, v in (
        ("trim_threshold", trim_threshold),
        ("mmap_threshold", mmap_threshold),
        ("top_pad", top_pad),
    ):
        if int(v) < 0:
            raise ValueError(f"{name} must be non-negative, got {v!r}")
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        _log.info("no glibc mallopt here; allocator settings left unchanged")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = True
    for param, value in (
        (_M_MMAP_THRESHOLD, mmap_threshold),
        (_M_TRIM_THRESHOLD, trim_threshold),
        (_M_TOP_PAD, top_pad),
    ):
        ok &= mallopt(param, int(value)) == 1
    return bool(ok)
