"""The process group of a data-parallel run launched by ``torchrun``.

``torchrun --nproc-per-node N -m kfac_spectra run ...`` starts N processes with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in
their environment; :func:`init_from_environment` joins them into the default
process group (``gloo`` on the CPU, ``nccl`` on CUDA devices, one device per local
rank) before any work, and :func:`finish` leaves it. A plain ``python -m
kfac_spectra run`` (no ``WORLD_SIZE``, or 1) stays one process.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import torch
import torch.distributed as dist

__all__ = [
    "Launch",
    "finish",
    "group_position",
    "init_from_environment",
    "launch_from",
]

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
