"""Where and how the computation runs: the torch device, and an allocator setting.

:func:`torch_device` turns a user's device name into a ``torch.device`` that can
compute in float64 here, or a one-line error naming it; the tuner's batched
L-BFGS (``best_steps(..., device=...)``) and the command-line studies use it.

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["keep_freed_memory", "torch_device"]

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


def torch_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` that can compute in float64 in this process.

    CPU and CUDA devices are checked without touching the device (no CUDA context
    is created): CUDA must be available and the index must exist. Any other device
    type (``meta``, ``mps``, ``xpu``, ...) is checked by computing one float64
    value on it and copying it back, which is what the tuner does with it.

    Args:
        device: a device name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...) or a
            ``torch.device``.

    Returns:
        The ``torch.device``.

    Raises:
        ValueError: (one line, naming the device) when ``device`` names no torch
            device, or one that is absent here or cannot compute, e.g. ``"meta"``
            (it holds no data) or a device without float64.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must name a torch device, got {device!r}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} asked for, but only "
                f"{torch.cuda.device_count()} CUDA device(s) are present"
            )
        return dev
    try:
        (torch.ones(1, dtype=torch.float64, device=dev) * 2.0).cpu()
    # Backends report an unusable device with assorted exception types
    # (NotImplementedError for meta, AssertionError for a build without it, ...).
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"device {device!r} cannot compute in float64 here ({reason})"
        ) from None
    return dev
