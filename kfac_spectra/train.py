r"""The training loop: train a model and collect at the chosen steps.

:func:`train` runs an ordinary loop of the configured optimizer
(:class:`~kfac_spectra.train_config.TrainConfig`) and, at the chosen iterations,
calls :func:`~kfac_spectra.checkpoints.collect_checkpoint`, which writes one step
directory of the checkpoint store (:mod:`kfac_spectra.checkpoints`)::

    RUN/config.toml, RUN/config.json     the resolved configuration
    RUN/manifest.json                    checkpoints collected so far, whether the
                                         run is complete, the SHA-256 of every file
    RUN/resume.pt                        model + optimizer + data position
    RUN/step_000050/...                  one collected step

The run directory is a :mod:`nqm.run_folder`: one run at a time holds its lock
(a second gets a one-line error naming the holder), every file is listed in the
run manifest with its checksum, and a file is taken out of the manifest before
it is rewritten.

The Kronecker factors saved at step s are K-FAC's own moving averages
(``factor_source="optimizer"``, the default: the basis K-FAC preconditions in, and
no extra pass over data), or -- at step 0, for SGD/Adam, or with
``factor_source="measure"`` -- computed on a fixed measurement batch of
``measure_examples`` training examples. The measurement runs on a *twin* of the
model that holds a copy of the parameters: the optimizer's K-FAC hooks never see
these forward passes, and the same batch at every step makes the spectra
comparable across steps.

**Resuming.** After each collection the resume state (parameters, optimizer
``state_dict`` -- for K-FAC including its factor averages and MC generator --,
the epoch and the batch index within it) is written atomically. Every epoch's
permutation is drawn from a generator seeded by ``(seed, epoch)``, so the data
position is two integers. A killed run restarted with the same configuration
continues from the last checkpoint and reproduces the uninterrupted run bit for
bit; saved step directories are never deleted. Before it resumes, every file of
the run manifest -- the resume state and the collected steps -- is checked
against its checksum: a truncated or corrupted file is a one-line
:class:`~nqm.run_folder.CorruptFileError` naming it, never a traceback and never
a run that silently reports success.

**Data parallel.** Under a ``torch.distributed`` process group (e.g. launched by
``torchrun --nproc-per-node N -m kfac_spectra run ...``, see
:mod:`kfac_spectra.launch`) every rank draws the same global batch of
``batch_size`` examples and trains on its ``batch_size / N`` slice, with the model
in ``DistributedDataParallel`` (K-FAC makes its statistics global: see
:mod:`kfac_spectra.kfac.distributed`). Rank 0 alone collects and writes every
file; every rank reads the resume state, so a run resumes on any number of ranks.

The names of the configuration and the store are importable from here too
(``from kfac_spectra.train import TrainConfig, read_manifest, ...``).

References:
    Zhang et al. 2019, "Which Algorithmic Choices Matter at Which Batch Sizes?",
    appendix E.1, E.2, E.4; Martens and Grosse 2015 (K-FAC).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from kfac_spectra.checkpoints import (
    MANIFEST_FILE,
    STEP_FILES,
    collect_checkpoint,
    load_checkpoint_arrays,
    read_manifest,
    step_dir,
)
from kfac_spectra.data import Dataset, DatasetName, load_dataset
from kfac_spectra.kfac import KFAC, KFACConfig, LossType
from kfac_spectra.launch import group_position
from kfac_spectra.models import build_model
from kfac_spectra.train_config import (
    FactorSource,
    OptimizerName,
    TrainConfig,
    resolve_config,
)
from nqm.config import config_to_toml
from nqm.run_folder import (
    CorruptFileError,
    FolderInUseError,
    RunFolder,
    open_run_folder,
)
from nqm.runtime import torch_device

__all__ = [
    "FactorSource",
    "OptimizerName",
    "TrainConfig",
    "TrainResult",
    "collect_checkpoint",
    "kfac_config",
    "load_checkpoint_arrays",
    "make_optimizer",
    "read_manifest",
    "resolve_config",
    "step_dir",
    "train",
]

logger = logging.getLogger(__name__)

RESUME_FILE = "resume.pt"
#: The command named in the run directory's lock and manifest.
RUN_COMMAND = "kfac_spectra run"


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        run_dir: The run directory.
        collected: Steps collected (all of them, including earlier sessions).
        final_loss: Last training batch loss.
        seconds: Wall time of this session.
    """

    run_dir: Path
    collected: tuple[int, ...]
    final_loss: float
    seconds: float


def _load_data(config: TrainConfig) -> Dataset:
    options: dict[str, Any] = {}
    if config.data_size is not None:
        size_option = {
            DatasetName.MNIST1D.value: "num_samples",
            DatasetName.SYNTHETIC_TEXT.value: "num_sequences",
        }.get(config.data)
        if size_option is None:
            raise ValueError(f"data_size: data set {config.data} has a fixed size")
        options[size_option] = config.data_size
    if config.data in (DatasetName.MNIST1D.value, DatasetName.SYNTHETIC_TEXT.value):
        options["seed"] = config.data_seed
    return load_dataset(config.data, config.data_path, **options)


def _build(config: TrainConfig, data: Dataset, device: torch.device) -> nn.Module:
    generator = torch.Generator(device=device).manual_seed(config.seed)
    return build_model(
        config.model, data.spec, config.width, generator=generator, device=device
    )


def kfac_config(config: TrainConfig) -> KFACConfig:
    """The K-FAC options of a run (cross-entropy loss, eigendecomposed inverses)."""
    return KFACConfig(
        loss=LossType.CE,
        lr=config.lr,
        momentum=config.momentum,
        damping=config.damping,
        weight_decay=config.weight_decay,
        factor_interval=config.factor_interval,
        inverse_interval=config.inverse_interval,
        inverse_method="eigh",
        kl_clip=config.kl_clip,
        seed=config.seed,
    )


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer :func:`train` uses for ``config`` (K-FAC, SGD or Adam)."""
    if config.optimizer == OptimizerName.KFAC:
        return KFAC(model, config=kfac_config(config))
    if config.optimizer == OptimizerName.SGD:
        return torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.Adam(
        model.parameters(),
        lr=config.lr,
        betas=(config.momentum, 0.999),
        weight_decay=config.weight_decay,
    )


def _ce(output: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), targets.reshape(-1))


def _epoch_batches(
    data: Dataset, config: TrainConfig, epoch: int, skip: int
) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    """Batches from position ``(epoch, skip)`` on; each epoch's order is seeded."""
    n = data.x_train.shape[0]
    if n < config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {n} examples")
    while True:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch + 1)
        order = torch.randperm(n, generator=generator)
        for index in range(skip, n // config.batch_size):
            rows = order[index * config.batch_size : (index + 1) * config.batch_size]
            yield epoch, index + 1, data.x_train[rows], data.y_train[rows]
        epoch, skip = epoch + 1, 0


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    values["checkpoints"] = list(values["checkpoints"])
    return values


@dataclass
class _Run:
    """What one session of a run holds: the networks, the measurement batch and
    the position (step, data position, steps collected, the run manifest)."""

    data: Dataset
    model: nn.Module
    net: nn.Module  # what is trained: the model, or its DistributedDataParallel
    twin: nn.Module  # measurement copy: never hooked by K-FAC
    optimizer: torch.optim.Optimizer
    measure_x: Tensor
    measure_y: Tensor
    manifest: dict[str, Any]
    step: int = 0
    epoch: int = 0
    batch_index: int = 0
    collected: list[int] = dataclasses.field(default_factory=list)


def _build_run(config: TrainConfig) -> _Run:
    """Build data, networks and optimizer (no file of the run is touched).

    Raises:
        ValueError: If a configuration value does not fit the data or model.
    """
    device = torch.device(config.device)
    data = _load_data(config)
    n = data.x_train.shape[0]
    if n < config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {n} examples")
    data = dataclasses.replace(
        data, x_train=data.x_train.to(device), y_train=data.y_train.to(device)
    )
    model = _build(config, data, device)
    twin = _build(config, data, device)
    net = model
    if group_position()[1] > 1:
        ids = [torch.cuda.current_device()] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
    optimizer = make_optimizer(config, net)
    n_measure = min(config.measure_examples, n)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))[
        :n_measure
    ].to(device)
    manifest = {
        "command": RUN_COMMAND,
        "config": _config_dict(config),
        "checkpoints": [],
        "final_step": config.steps,
    }
    return _Run(
        data,
        model,
        net,
        twin,
        optimizer,
        data.x_train[pick],
        data.y_train[pick],
        manifest,
    )


def _check_same_config(config: TrainConfig, run_dir: Path) -> None:
    """Refuse a directory that holds another run, before anything is written."""
    path = run_dir / MANIFEST_FILE
    if path.is_file() and read_manifest(run_dir).get("config") != _config_dict(config):
        raise ValueError(
            f"run_dir: {run_dir} holds a run with a different config; "
            "choose a new directory"
        )


def _load_resume_state(path: Path, device: torch.device) -> dict[str, Any]:
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptFileError(
            f"{path}: not a readable resume state ({first}); delete it to train "
            "again from step 0, or use a new --out"
        ) from None


def _resume(
    config: TrainConfig, run_dir: Path, run: _Run, folder: RunFolder | None
) -> None:
    """Continue from the resume state, if there is one; rank 0 (``folder``) takes
    only a resume state whose checksum the run manifest vouches for.

    Raises:
        ValueError: If ``run_dir`` holds a run with a different configuration.
        CorruptFileError: If the resume state is not in the run manifest, or is
            unreadable.
    """
    path = run_dir / RESUME_FILE
    if folder is not None:
        if RESUME_FILE not in folder.records:
            if path.exists():
                raise CorruptFileError(
                    f"{path}: not in the run manifest, so it cannot be verified; "
                    "delete it to train again from step 0, or use a new --out"
                )
            return
    elif not path.is_file():
        return
    state = _load_resume_state(path, torch.device(config.device))
    if not isinstance(state, dict) or state.get("config") != _config_dict(config):
        raise ValueError(
            f"run_dir: {run_dir} holds a run with a different config; "
            "choose a new directory"
        )
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.step, run.epoch = state["step"], state["epoch"]
    run.batch_index = state["batch_index"]
    run.collected = list(state["collected"])
    if folder is not None:
        run.manifest = {**run.manifest, **folder.meta}
    logger.info("resuming %s at step %d", run_dir, run.step)


def _checkpoint(config: TrainConfig, folder: RunFolder | None, run: _Run) -> None:
    """Collect the current step, then record it in the run manifest and write
    the resume state (each file listed with its checksum once it is written)."""
    step = run.step
    run.collected.append(step)
    if isinstance(run.optimizer, KFAC):
        # every rank: the factors rank 0 reads and saves are the global ones
        run.optimizer.sync_factors()
    if folder is None:
        return  # rank 0 collects and writes
    names = [f"{step_dir('', step).name}/{n}" for n in (*STEP_FILES, MANIFEST_FILE)]
    for name in names:  # out of the manifest before they are written again
        folder.file(name)
    entry, digests = _collect(config, folder.path, run)
    for name in names:  # the data files as hashed while they were written
        folder.record(name, digests.get(name.rsplit("/", 1)[1]))
    run.manifest["checkpoints"] = sorted(
        [c for c in run.manifest["checkpoints"] if c["step"] != step] + [entry],
        key=lambda c: c["step"],
    )
    folder.checkpoint(run.manifest)
    state = {
        "config": _config_dict(config),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "step": step,
        "epoch": run.epoch,
        "batch_index": run.batch_index,
        "collected": run.collected,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    folder.write_bytes(RESUME_FILE, buffer.getvalue())
    if step == config.steps:
        folder.finish(run.manifest)
    else:
        folder.checkpoint(run.manifest)


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike[str],
    *,
    step_callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.data`` and collect at the checkpoints.

    If ``run_dir`` holds a resume state of the same configuration, training
    continues from it; collected steps are kept.

    Args:
        config: The resolved configuration.
        run_dir: Output directory (created).
        step_callback: Called as ``callback(step, loss)`` after every update.

    Returns:
        Summary of the run.

    Under a process group (see the module docstring) every rank calls it; the
    loss reported is the mean over the ranks.

    Raises:
        ValueError: If ``run_dir`` holds a run with a different configuration, a
            configuration value does not fit the data/model, or the world size
            does not divide ``batch_size``.
        FloatingPointError: If the training loss becomes non-finite.
        CorruptFileError: If a file the run resumes from (the resume state, a
            collected step) is missing, truncated or corrupted.
        FolderInUseError: If another run holds ``run_dir``.
    """
    begin = time.perf_counter()
    rank, world = group_position()
    if config.batch_size % world:
        raise ValueError(
            f"batch_size={config.batch_size} is not divisible by the world size "
            f"{world} (each rank trains on batch_size / world examples)"
        )
    torch_device(config.device)  # an absent device is refused before any work
    run_dir = Path(run_dir)
    run = _build_run(config)  # every check before the directory is created
    with contextlib.ExitStack() as stack:
        folder, error = None, None
        try:
            if rank == 0:
                _check_same_config(config, run_dir)
                folder = stack.enter_context(
                    open_run_folder(run_dir, command=RUN_COMMAND, resume=True)
                )
            _resume(config, run_dir, run, folder)
        except (ValueError, OSError, FolderInUseError) as exc:
            error = exc
        # every rank has read the resume state (rank 0 writes from here on), and
        # a rank that could not open the run stops every rank
        _agree_on_opening(error, run_dir, world, run.measure_x.device)
        if folder is not None:
            folder.write_text("config.toml", config_to_toml(config))
            folder.write_json("config.json", _config_dict(config))
            folder.checkpoint(run.manifest)
        loss_value = _train_loop(config, run, folder, step_callback)
        if folder is not None and run.step >= config.steps:
            folder.finish(run.manifest)
    if world > 1:
        dist.barrier()  # rank 0's last files are written when any rank returns
    return TrainResult(
        run_dir, tuple(sorted(run.collected)), loss_value, time.perf_counter() - begin
    )


def _train_loop(
    config: TrainConfig,
    run: _Run,
    folder: RunFolder | None,
    step_callback: Callable[[int, float], None] | None,
) -> float:
    """Train from the run's position to ``config.steps``, collecting on the way.

    Returns:
        The last training batch loss (averaged over the ranks).
    """
    rank, world = group_position()
    batches = _epoch_batches(run.data, config, run.epoch, run.batch_index)
    net, optimizer = run.net, run.optimizer
    share = config.batch_size // world
    loss_value = float("nan")
    interactive = sys.stderr.isatty()
    with tqdm(total=config.steps, initial=run.step, disable=not interactive) as bar:
        while True:
            if run.step in config.collect_steps and run.step not in run.collected:
                _checkpoint(config, folder, run)
            if run.step >= config.steps:
                break
            run.epoch, run.batch_index, xb, yb = next(batches)
            if world > 1:  # this rank's slice of the global batch
                xb = xb[rank * share : (rank + 1) * share]
                yb = yb[rank * share : (rank + 1) * share]
            optimizer.zero_grad()
            loss = _ce(net(xb), yb)
            loss.backward()
            optimizer.step()
            loss_value = _mean_over_ranks(loss.detach(), world)
            if not np.isfinite(loss_value):
                raise FloatingPointError(
                    f"training loss is {loss_value} at step {run.step}"
                )
            run.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            if step_callback is not None:
                step_callback(run.step, loss_value)
    return loss_value


def _agree_on_opening(
    error: BaseException | None, run_dir: Path, world: int, device: torch.device
) -> None:
    """Raise on every rank if any rank could not open the run (a corrupt file, a
    folder in use), instead of leaving the others waiting for it.

    Raises:
        The rank's own error; on the other ranks a ValueError naming ``run_dir``.
    """
    failed = error is not None
    if world > 1:
        flag = torch.tensor([float(failed)], device=device)
        dist.all_reduce(flag)
        if flag.item() > 0 and not failed:
            raise ValueError(
                f"run_dir: another rank could not open {run_dir} (see rank 0's error)"
            )
    if error is not None:
        raise error


def _mean_over_ranks(value: Tensor, world: int) -> float:
    """The mean of a scalar over the ranks (itself for one process); a non-finite
    value on one rank reaches every rank, so all stop together."""
    if world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return float(value)


def _collect(
    config: TrainConfig, run_dir: Path, run: _Run
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copy the parameters into the twin, evaluate, collect and log one line.

    Returns:
        The step's entry of the run manifest, and the checksums of its data
        files (``name -> {"sha256", "bytes"}``, from the step manifest).
    """
    step, twin, optimizer, data = run.step, run.twin, run.optimizer, run.data
    measure_x, measure_y = run.measure_x, run.measure_y
    twin.load_state_dict(run.model.state_dict())
    with torch.no_grad():
        measure_loss = float(_ce(twin(measure_x), measure_y))
        x_test = data.x_test[:1000].to(measure_x.device)
        y_test = data.y_test[:1000].to(measure_x.device)
        out = twin(x_test)
        test_loss = float(_ce(out, y_test))
        test_acc = float((out.argmax(-1) == y_test).float().mean())
    # The MC generator depends on (seed, step) only, so a resumed run measures alike.
    generator = torch.Generator(device=measure_x.device)
    generator.manual_seed(config.seed * 1_000_003 + step)
    factors = None
    if config.factor_source == FactorSource.OPTIMIZER and isinstance(optimizer, KFAC):
        factors = optimizer.factors() or None  # empty before the first step
    entry = collect_checkpoint(
        run_dir,
        step,
        twin,
        measure_x,
        measure_y,
        loss=LossType.CE,
        fisher_type=config.measure_fisher,
        mc_samples=config.mc_samples,
        generator=generator,
        factors=factors,
        extra={
            "measure_loss": measure_loss,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
        },
    )
    logger.info(
        "step %d: measure loss %.4f, test loss %.4f, test acc %.3f, %d directions, "
        "collected in %.2fs",
        step,
        measure_loss,
        test_loss,
        test_acc,
        entry["num_directions"],
        entry["collect_seconds"],
    )
    kept = {k: entry[k] for k in ("step", "measure_loss", "test_loss", "test_accuracy")}
    return kept, entry["files"]
