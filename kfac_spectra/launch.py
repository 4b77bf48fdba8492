"""The process group of a data-parallel run launched by ``torchrun``.

``torchrun --nproc-per-node N -m kfac_spectra run ...`` starts N processes with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in
their environment; :func:`init_from_environment` joins them into the default
process group (``gloo`` on the CPU, ``nccl`` on CUDA devices, one device per local
rank) before any work, and :func:`finish` leaves it. A plain ``python -m
kfac_spectra run`` (no ``WORLD_SIZE``, or 1) stays one process.

:func:`spawn_local` starts a small group on this machine without a launcher (the
tests and benchmarks of data-parallel training): W processes joined in a ``gloo``
group over a free local port (:func:`free_port`).
"""

from __future__ import annotations

import dataclasses
import faulthandler
import gc
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = [
    "Launch",
    "finish",
    "free_port",
    "group_position",
    "init_from_environment",
    "launch_from",
    "spawn_local",
]

_LOCALHOST = "127.0.0.1"

_ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclasses.dataclass(frozen=True)
class Launch:
    """Where this process stands in the run.

    Attributes:
        rank: Global rank (0 for one process).
        local_rank: Rank on this machine (its CUDA device index).
        world_size: Number of processes.
        device: The device this process trains on.
    """

    rank: int
    local_rank: int
    world_size: int
    device: str

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1


def group_position() -> tuple[int, int]:
    """``(rank, world size)`` in the default process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launch_from(environ: Mapping[str, str], device: str) -> Launch:
    """Read the launcher's variables (no side effects).

    Args:
        environ: The environment (``os.environ``).
        device: The configured device, ``"cpu"`` or ``"cuda[:k]"``; under a
            multi-process launch ``"cuda"`` becomes ``"cuda:<LOCAL_RANK>"``.

    Returns:
        The :class:`Launch`.

    Raises:
        ValueError: If ``WORLD_SIZE`` > 1 but another launcher variable is missing
            or an integer variable is malformed.
    """
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(
            f"WORLD_SIZE={environ['WORLD_SIZE']!r} is not an integer"
        ) from None
    if world <= 1:
        return Launch(0, 0, 1, device)
    missing = [k for k in _ENV_KEYS if k not in environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world} but {', '.join(missing)} unset: launch with torchrun"
        )
    try:
        rank, local = int(environ["RANK"]), int(environ["LOCAL_RANK"])
    except ValueError:
        raise ValueError("RANK and LOCAL_RANK must be integers") from None
    if device == "cuda":
        device = f"cuda:{local}"
    return Launch(rank, local, world, device)


def init_from_environment(device: str) -> Launch:
    """Join the launcher's processes into the default group (if there are several).

    Args:
        device: The configured device (see :func:`launch_from`).

    Returns:
        The :class:`Launch`; with ``world_size > 1`` the default process group is
        initialised (``nccl`` for CUDA, else ``gloo``) unless it already was.

    Raises:
        ValueError: As :func:`launch_from`, or when a CUDA device is asked for
            but absent.
    """
    launch = launch_from(os.environ, device)
    if not launch.distributed:
        return launch
    cuda = launch.device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: CUDA is not available")
        torch.cuda.set_device(torch.device(launch.device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return launch


def finish(launch: Launch, *, wait: bool = True) -> None:
    """Leave the process group :func:`init_from_environment` joined.

    Args:
        launch: What :func:`init_from_environment` returned.
        wait: Whether all ranks wait for each other first (so that rank 0's last
            writes are done); ``False`` after an error, when some rank may never
            arrive.
    """
    if launch.distributed and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port on this machine that no socket holds now (the operating system's
    pick), for a local group's rendezvous."""
    with socket.socket() as s:
        s.bind((_LOCALHOST, 0))
        return int(s.getsockname()[1])


def _local_rank(
    rank: int,
    worker: Callable[..., None],
    world_size: int,
    port: int,
    threads: int,
    args: tuple[Any, ...],
) -> None:
    """One process of :func:`spawn_local`: join the group, run, wait, leave.
    A fatal signal (a native abort in a communication thread) prints every
    thread's Python stack on stderr before the process dies."""
    faulthandler.enable(all_threads=True)
    torch.set_num_threads(threads)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{_LOCALHOST}:{port}",
        rank=rank,
        world_size=world_size,
    )
    try:
        worker(rank, world_size, *args)
        dist.barrier()  # nobody leaves while another rank still works
    finally:
        # Optimizers hold the group in reference cycles (their hooks): collect
        # them now, while the interpreter is whole, rather than during its
        # finalization, where freeing communication state can abort.
        gc.collect()
        dist.destroy_process_group()


def spawn_local(
    worker: Callable[..., None], world_size: int, *args: Any, threads: int = 1
) -> None:
    """Run ``worker(rank, world_size, *args)`` in ``world_size`` local processes,
    joined in a ``gloo`` default process group.

    Each process is started fresh (``spawn``), sets ``threads`` intra-op threads,
    joins the group over :func:`free_port` on the loopback interface, runs the
    worker, waits for the others at a barrier and leaves the group. Returns when
    every process has; an exception in one is raised here.

    Args:
        worker: A module-level (picklable) function.
        world_size: Number of processes W ≥ 1.
        *args: Passed to ``worker`` after ``(rank, world_size)``; picklable.
        threads: ``torch.set_num_threads`` in each process.

    Raises:
        ValueError: If ``world_size < 1`` or ``threads < 1``.
        torch.multiprocessing.ProcessRaisedException: When a worker raised.
    """
    if world_size < 1:
        raise ValueError(f"world_size={world_size} is invalid: must be >= 1")
    if threads < 1:
        raise ValueError(f"threads={threads} is invalid: must be >= 1")
    mp.start_processes(
        _local_rank,
        args=(worker, world_size, free_port(), threads, args),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )
