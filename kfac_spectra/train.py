r"""Training harness that records Kronecker factors and eigenbasis statistics.

Read it top to bottom: :class:`TrainConfig` holds every default in one place;
:func:`resolve_config` overrides it from a TOML file and then from a mapping (the
CLI's flags); :func:`train` runs the loop and, at the chosen iterations, calls
:func:`collect_checkpoint`, which writes one directory per step::

    RUN/config.toml, RUN/config.json     the resolved configuration
    RUN/manifest.json                    checkpoints collected so far
    RUN/resume.pt                        model + optimizer + data position
    RUN/step_000050/factors.npz          "<block>/A", "<block>/S" and the
                                         eigenbasis "<block>/row_values", ...
    RUN/step_000050/stats.npz            GradientStats.to_arrays()
    RUN/step_000050/params.npz           "param/<name>" and "block/<name>"
                                         (the (r, c) matrix [W | b])
    RUN/step_000050/manifest.json        written last: marks the step complete

**What is measured at step s** (parameters after s updates; s = 0 is the
initialisation). The Kronecker factors ``(A, S)`` of every block are K-FAC's own
moving averages (``factor_source="optimizer"``, the default: the basis K-FAC
preconditions in, and no extra pass over data), or -- at step 0, for SGD/Adam, or
with ``factor_source="measure"`` -- computed with :func:`kfac_spectra.
compute_factors` on a fixed measurement batch of ``measure_examples`` training
examples (``reduction="mean"``, the Fisher chosen by ``measure_fisher``). They are
eigendecomposed in float64 (:func:`kfac_spectra.eigenbasis.kronecker_bases`), and
on the measurement batch, along each direction :math:`v = u_i \otimes w_j` the
gradient statistics of :func:`kfac_spectra.gradient_stats.eigenbasis_gradient_stats`
are measured: curvature :math:`h_v = v^\top F v` and per-example gradient variance
:math:`c_v`. The measurement runs on a *twin* of the model that holds a copy of the
parameters: the optimizer's K-FAC hooks never see these forward passes, and the
same batch at every step makes the spectra comparable across steps.

**Resuming.** After each collection the resume state (parameters, optimizer
``state_dict`` -- for K-FAC including its factor averages and MC generator --,
the epoch and the batch index within it) is written atomically. Every epoch's
permutation is drawn from a generator seeded by ``(seed, epoch)``, so the data
position is two integers. A killed run restarted with the same configuration
continues from the last checkpoint and reproduces the uninterrupted run bit for
bit; saved step directories are never deleted.

References:
    Zhang et al. 2019, "Which Algorithmic Choices Matter at Which Batch Sizes?",
    appendix E.1, E.2, E.4; Martens and Grosse 2015 (K-FAC).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import struct
import sys
import tempfile
import time
import tomllib
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from kfac_spectra.data import Dataset, DatasetName, load_dataset
from kfac_spectra.eigenbasis import KroneckerBasis, kronecker_bases
from kfac_spectra.gradient_stats import GradientStats, eigenbasis_gradient_stats
from kfac_spectra.kfac import KFAC, FisherType, LossType, compute_factors
from kfac_spectra.layer_capture import find_blocks
from kfac_spectra.models import ModelName, build_model
from nqm.io import FILE_MODE, write_atomic

__all__ = [
    "FactorSource",
    "OptimizerName",
    "TrainConfig",
    "TrainResult",
    "collect_checkpoint",
    "load_checkpoint_arrays",
    "make_optimizer",
    "read_manifest",
    "resolve_config",
    "step_dir",
    "train",
]

logger = logging.getLogger(__name__)

RESUME_FILE = "resume.pt"
MANIFEST_FILE = "manifest.json"


class OptimizerName(StrEnum):
    """Training optimizer."""

    KFAC = "kfac"
    SGD = "sgd"
    ADAM = "adam"


class FactorSource(StrEnum):
    """Where the Kronecker factors saved at a checkpoint come from."""

    OPTIMIZER = "optimizer"
    """K-FAC's own moving-average factors (the basis it preconditions in); falls
    back to ``MEASURE`` where there are none (step 0, SGD, Adam)."""
    MEASURE = "measure"
    """:func:`~kfac_spectra.compute_factors` on the fixed measurement batch."""


# ----------------------------------------------------------------- configuration
@dataclass(frozen=True)
class TrainConfig:
    """Every default of a run. Override from TOML or the command line.

    Attributes:
        model: A :class:`kfac_spectra.models.ModelName`.
        data: A :class:`kfac_spectra.data.DatasetName`.
        data_path: Directory or file for data sets read from disk.
        data_size: Examples to generate (MNIST-1D) or sequences (synthetic text);
            ``None`` keeps the loader's default.
        data_seed: Seed of the data generation/split.
        width: Model width multiplier.
        optimizer: :class:`OptimizerName`.
        steps: Training steps.
        batch_size: Training batch size B.
        lr: Learning rate α.
        momentum: Heavy-ball β (SGD, K-FAC) or Adam's β₁.
        weight_decay: L2 coefficient.
        damping: K-FAC damping λ (0.03 with ``kl_clip=1e-3`` is stable on
            MNIST-1D; 1e-3 without clipping diverged at lr 0.01).
        kl_clip: K-FAC KL clip κ (``None`` disables).
        factor_interval: K-FAC steps between factor updates.
        inverse_interval: K-FAC steps between inverse updates.
        checkpoints: Steps at which to collect (the final step is always added).
        factor_source: :class:`FactorSource` of the saved factors and basis.
        measure_examples: Size of the fixed measurement batch.
        measure_fisher: :class:`~kfac_spectra.kfac.FisherType` of the measured
            factors and curvature (``"mc"``: one sampled target, cheap and
            unbiased; ``"type2"``: exact GGN, ~C times dearer for C classes).
        mc_samples: Sampled targets per example for ``"mc"``.
        seed: Seed of initialisation, data order and K-FAC sampling.
        device: ``"cpu"`` or ``"cuda"``.
    """

    model: str = ModelName.RESNET8.value
    data: str = DatasetName.MNIST1D.value
    data_path: str | None = None
    data_size: int | None = None
    data_seed: int = 0
    width: float = 1.0
    optimizer: str = OptimizerName.KFAC.value
    steps: int = 300
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    damping: float = 0.03
    kl_clip: float | None = 1e-3
    factor_interval: int = 1
    inverse_interval: int = 10
    checkpoints: tuple[int, ...] = (0, 50, 150)
    factor_source: str = FactorSource.OPTIMIZER.value
    measure_examples: int = 256
    measure_fisher: str = FisherType.MC.value
    mc_samples: int = 1
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name, enum in (
            ("model", ModelName),
            ("data", DatasetName),
            ("optimizer", OptimizerName),
            ("measure_fisher", FisherType),
            ("factor_source", FactorSource),
        ):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value).value)
            except ValueError:
                raise ValueError(
                    f"{name}: unknown value {value!r}; choose from "
                    f"{[m.value for m in enum]}"
                ) from None
        positive = ("steps", "batch_size", "factor_interval", "inverse_interval")
        for name in (*positive, "mc_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.measure_examples < 2:
            raise ValueError(
                f"measure_examples must be >= 2, got {self.measure_examples}"
            )
        for name in ("lr", "width", "damping"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.kl_clip is not None and not self.kl_clip > 0:
            raise ValueError(f"kl_clip must be None or > 0, got {self.kl_clip}")
        if self.data_size is not None and self.data_size < 1:
            raise ValueError(f"data_size must be >= 1, got {self.data_size}")
        marks = tuple(sorted({int(s) for s in self.checkpoints}))
        if marks and (marks[0] < 0 or marks[-1] > self.steps):
            raise ValueError(
                f"checkpoints must lie in [0, steps={self.steps}], got {marks}"
            )
        object.__setattr__(self, "checkpoints", marks)
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(
                f"device: expected 'cpu' or 'cuda[:k]', got {self.device!r}"
            )

    @property
    def collect_steps(self) -> tuple[int, ...]:
        """The checkpoints plus the final step, ascending."""
        return tuple(sorted({*self.checkpoints, self.steps}))


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Convert a TOML or command-line value to the field's type."""
    kind = _FIELDS[name].type
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        if "None" in kind:
            return None
        raise ValueError(f"{name}: may not be None")
    try:
        if kind.startswith("tuple"):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(int(v) for v in items if str(v).strip() != "")
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: cannot read {value!r} as {kind}") from None


def resolve_config(
    toml_path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Defaults, then the TOML file, then ``overrides`` (later wins).

    Args:
        toml_path: A TOML file of ``field = value`` pairs (top level, or a
            ``[train]`` table).
        overrides: Field name -> value (strings are parsed, e.g. ``"0,50,200"``).
        base: Starting point (default: :class:`TrainConfig`'s defaults).

    Returns:
        The resolved configuration.

    Raises:
        ValueError: For an unreadable file, an unknown field or a bad value.
    """
    values = dataclasses.asdict(base or TrainConfig())
    layers: list[Mapping[str, Any]] = []
    if toml_path is not None:
        try:
            with open(toml_path, "rb") as handle:
                table = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"config: cannot read {toml_path}: {err}") from None
        layers.append(table.get("train", table))
    layers.append(overrides or {})
    for layer in layers:
        for key, value in layer.items():
            name = key.replace("-", "_")
            if name not in _FIELDS:
                raise ValueError(f"config: unknown field {key!r}")
            values[name] = _coerce(name, value)
    return TrainConfig(**values)


def config_to_toml(config: TrainConfig) -> str:
    """The configuration as TOML (``None`` fields are left out: TOML has no null)."""
    lines = []
    for name, value in dataclasses.asdict(config).items():
        if value is None:
            lines.append(f"# {name} = None")
        elif isinstance(value, str):
            lines.append(f"{name} = {json.dumps(value)}")
        elif isinstance(value, tuple | list):
            lines.append(f"{name} = [{', '.join(str(v) for v in value)}]")
        else:
            lines.append(f"{name} = {value!r}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- atomic files
def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through ``write(handle)`` atomically (:func:`nqm.io.write_atomic`);
    text mode (``"w"``) wraps the binary handle in UTF-8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "wb":
        write_atomic(path, write)
        return

    def text_writer(f):
        handle = io.TextIOWrapper(f, encoding="utf-8", write_through=True)
        write(handle)
        handle.flush()
        handle.detach()  # leave the binary file to write_atomic

    write_atomic(path, text_writer)


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda h: json.dump(obj, h, indent=2, sort_keys=True), "w")


_ZIP_LOCAL = struct.Struct("<4s5H3L2H")
_ZIP_CENTRAL = struct.Struct("<4s6H3L5H2L")
_ZIP_END = struct.Struct("<4s4H2LH")
_ZIP_DOS_DATE = (1 << 5) | 1  # 1980-01-01, the earliest date a zip can hold
_ZIP_UTF8 = 0x800  # flag bit 11: the member name is UTF-8


def _savez(handle: IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    """Write what ``np.savez(handle, **arrays)`` writes, with less work per array.

    An ``.npz`` file is an uncompressed zip archive of ``<key>.npy`` members.
    ``np.savez`` writes each member through :mod:`zipfile`, about 25 us per
    array (a zip64 header that is rewritten after the data); a checkpoint of the
    MNIST-1D models holds 60-120 arrays, whose writing took 1-2 ms of a
    collection of 20-80 ms. Here each member's header, CRC-32 included, is
    written once, followed by the array's memory. The member contents are byte
    for byte those of ``np.savez``; object arrays, headers that need ``.npy``
    format 2 and archives that need zip64 (4 GiB, 65,535 members) go to
    ``np.savez``.
    """
    members = []
    for key, value in arrays.items():
        array = np.asanyarray(value)
        if array.dtype.hasobject:
            np.savez(handle, **arrays)
            return
        header = np.lib.format.header_data_from_array_1_0(array)
        buffer = io.BytesIO()
        try:
            np.lib.format.write_array_header_1_0(buffer, header)
        except ValueError:  # header longer than format 1.0 allows
            np.savez(handle, **arrays)
            return
        data = array.T if header["fortran_order"] else array
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        members.append((f"{key}.npy", buffer.getvalue(), data))
    total = sum(len(h) + d.nbytes + 2 * len(n) + 76 for n, h, d in members)
    if len(members) >= 0xFFFF or handle.tell() + total + 22 >= 0xFFFFFFFF:
        np.savez(handle, **arrays)
        return
    central = []
    for name, header, data in members:
        encoded = name.encode("utf-8")
        flags = 0 if name.isascii() else _ZIP_UTF8
        crc = zlib.crc32(data, zlib.crc32(header))
        size = len(header) + data.nbytes
        offset = handle.tell()
        fields = (20, flags, 0, 0, _ZIP_DOS_DATE, crc, size, size, len(encoded))
        handle.write(_ZIP_LOCAL.pack(b"PK\x03\x04", *fields, 0))
        handle.write(encoded)
        handle.write(header)
        handle.write(data)
        central.append(
            _ZIP_CENTRAL.pack(b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, 0, offset)
        )
        central.append(encoded)
    start = handle.tell()
    directory = b"".join(central)
    handle.write(directory)
    count = len(members)
    handle.write(
        _ZIP_END.pack(b"PK\x05\x06", 0, 0, count, count, len(directory), start, 0)
    )


def _fsync_directory(folder: Path) -> None:
    """Make the renames in ``folder`` durable (POSIX; a no-op elsewhere)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_and_close(handle: IO[bytes]) -> None:
    try:
        os.fsync(handle.fileno())
    finally:
        handle.close()


class _StepFiles:
    """The files of one step directory, written atomically and made durable.

    :meth:`add` writes a file under a temporary name and starts its ``fsync`` in a
    background thread at once. The thread waits for the disk, not the CPU, so a
    file added before the statistics are computed reaches the disk meanwhile, and
    the files' ``fsync`` calls overlap instead of following one another.
    :meth:`commit` waits for them, renames the files over their destinations
    (``os.replace``: atomic), the marker (the step's manifest, which says that
    the step is complete) last, and then fsyncs the directory once, so that the
    renames are durable when it returns. A marker from an earlier collection of
    the step is removed before anything is renamed. Every file is thus old or
    complete and new, never partial, even after a power loss; that the marker
    also never outlives the renames before it relies on the file system
    committing metadata in order, as journaling ones (ext4, XFS) do; a directory
    ``fsync`` between the renames would not, but each one cost about 4 ms of wall
    time on this project's machine (half a step of the smallest model).

    On an error the pending temporary files are removed; those of a killed process
    are removed by the next ``_StepFiles`` of the same directory.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        self.folder = folder
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fsync")
        self._pending: list[tuple[Path, Path, Future[None]]] = []

    def __enter__(self) -> _StepFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)
        for tmp, _, _ in self._pending:  # not committed: an error came first
            tmp.unlink(missing_ok=True)
        self._pending.clear()

    def add(self, name: str, write: Callable[[IO[bytes]], None]) -> None:
        """Write ``name`` (through ``write(handle)``) to a temporary file."""
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{name}.", suffix=".tmp")
        handle = os.fdopen(fd, "wb")
        try:
            os.chmod(tmp, FILE_MODE)
            write(handle)
            handle.flush()
        except BaseException:
            handle.close()
            os.unlink(tmp)
            raise
        future = self._pool.submit(_sync_and_close, handle)
        self._pending.append((Path(tmp), self.folder / name, future))

    def commit(self, marker: str) -> None:
        """Wait for every pending ``fsync``, remove an old ``marker``, rename the
        files into place (``marker`` last) and fsync the directory.

        Raises:
            ValueError: If no pending file is named ``marker``.
            OSError: If an ``fsync`` or rename failed (files not yet renamed stay
                under their temporary names, removed on exit).
        """
        marked = [entry for entry in self._pending if entry[1].name == marker]
        if not marked:
            raise ValueError(f"marker: no pending file {marker!r}")
        for _, _, future in self._pending:
            future.result()
        # an old marker must not vouch for a mix of old and new files
        (self.folder / marker).unlink(missing_ok=True)
        for entry in [e for e in self._pending if e is not marked[0]] + marked:
            os.replace(entry[0], entry[1])
            self._pending.remove(entry)
        _fsync_directory(self.folder)


def step_dir(run_dir: str | os.PathLike[str], step: int) -> Path:
    """Directory of the collection at ``step``."""
    return Path(run_dir) / f"step_{step:06d}"


def read_manifest(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run manifest (config and collected checkpoints).

    Raises:
        ValueError: If ``run_dir`` holds no manifest.
    """
    path = Path(run_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ValueError(f"run_dir: no {MANIFEST_FILE} in {run_dir}")
    with open(path) as handle:
        return json.load(handle)


def load_checkpoint_arrays(
    run_dir: str | os.PathLike[str], step: int
) -> tuple[dict[str, dict[str, np.ndarray]], GradientStats, dict[str, np.ndarray]]:
    """Read one collected step.

    Returns:
        ``(factors, stats, params)``: ``factors[block]`` with keys ``A``, ``S``,
        ``row_values``, ``row_vectors``, ``col_values``, ``col_vectors``; the
        gradient statistics; and the flat parameter arrays of ``params.npz``.

    Raises:
        ValueError: If the step was not collected (completely).
    """
    folder = step_dir(run_dir, step)
    if not (folder / MANIFEST_FILE).is_file():
        raise ValueError(f"step: {step} was not collected in {run_dir}")
    factors: dict[str, dict[str, np.ndarray]] = {}
    with np.load(folder / "factors.npz") as archive:
        for key in archive.files:
            block, field = key.rsplit("/", 1)
            factors.setdefault(block, {})[field] = archive[key]
    with np.load(folder / "stats.npz") as archive:
        stats = GradientStats.from_arrays({k: archive[k] for k in archive.files})
    with np.load(folder / "params.npz") as archive:
        params = {k: archive[k] for k in archive.files}
    return factors, stats, params


# ----------------------------------------------------------------- measurement
def _batches(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, x.shape[0], size)]


def collect_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    loss: LossType | str,
    fisher_type: FisherType | str = FisherType.MC,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    chunk: int = 256,
    factors: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    extra: Mapping[str, Any] | None = None,
    compute_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Measure and save factors, eigenbases, gradient statistics and parameters.

    ``model`` must carry no K-FAC hooks (pass a twin holding a copy of the
    parameters). Factors use ``reduction="mean"``: :math:`S \\otimes A` is the
    curvature of the mean loss. Files are written atomically and durably (to a
    temporary name, fsynced, renamed, the directory fsynced); the step's
    ``manifest.json`` is renamed last. Its ``collect_seconds`` is the time up to
    these final fsyncs.

    Args:
        run_dir: Run directory.
        step: Training step of ``model``'s parameters.
        model: Hook-free network.
        inputs: (N, ...) measurement inputs.
        targets: (N, ...) their targets.
        loss: The per-term loss.
        fisher_type: Fisher of factors and curvature.
        mc_samples: Samples per example for MC.
        generator: Generator for MC sampling (on the model's device).
        chunk: Examples per forward pass of the statistics.
        factors: ``name -> (A, S)`` to use (e.g. ``KFAC.factors()``) instead of
            computing them on ``inputs``; the basis is their eigendecomposition.
        extra: JSON-serialisable values added to the step manifest.
        compute_dtype: precision of the per-example projections, passed to
            :func:`~kfac_spectra.gradient_stats.eigenbasis_gradient_stats`
            (``None``: its default; ``torch.float64`` forces float64 throughout).

    Returns:
        The step manifest.

    Raises:
        ValueError: If ``step`` < 0 or the model has no supported block.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    start = time.perf_counter()
    blocks = find_blocks(model)
    if not blocks:
        raise ValueError("model: no supported layer to measure")
    source = FactorSource.OPTIMIZER
    if factors is None:
        source = FactorSource.MEASURE
        factors = compute_factors(
            model,
            inputs,
            targets,
            loss,
            fisher_type,
            reduction="mean",
            mc_samples=mc_samples,
            generator=generator,
        )
    bases = kronecker_bases(factors, blocks)
    with _StepFiles(step_dir(run_dir, step)) as files:
        # written before the statistics, so that the disk writes them meanwhile
        factor_arrays = _factor_arrays(factors, bases)
        files.add("factors.npz", lambda h: _savez(h, factor_arrays))
        param_arrays = _parameter_arrays(model)
        files.add("params.npz", lambda h: _savez(h, param_arrays))
        stats = eigenbasis_gradient_stats(
            model,
            _batches(inputs, targets, chunk),
            bases,
            loss=loss,
            fisher_type=fisher_type,
            mc_samples=mc_samples,
            generator=generator,
            compute_dtype=compute_dtype,
        )
        stat_arrays = stats.to_arrays()
        files.add("stats.npz", lambda h: _savez(h, stat_arrays))
        manifest = {
            "step": int(step),
            "num_examples": int(stats.num_examples),
            "loss": str(LossType(loss).value),
            "fisher_type": str(FisherType(fisher_type).value),
            "factor_source": source.value,
            "blocks": {k: list(b.shape) for k, b in bases.items()},
            "num_directions": int(sum(b.shape[0] * b.shape[1] for b in bases.values())),
            "collect_seconds": time.perf_counter() - start,
            **dict(extra or {}),
        }
        text = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
        files.add(MANIFEST_FILE, lambda h: h.write(text))
        files.commit(marker=MANIFEST_FILE)
    return manifest


def _factor_arrays(
    factors: Mapping[str, tuple[Tensor, Tensor]], bases: Mapping[str, KroneckerBasis]
) -> dict[str, np.ndarray]:
    out = {}
    for name, (a, s) in factors.items():
        out[f"{name}/A"] = a.detach().cpu().numpy()
        out[f"{name}/S"] = s.detach().cpu().numpy()
        for field in ("row_values", "row_vectors", "col_values", "col_vectors"):
            out[f"{name}/{field}"] = getattr(bases[name], field).cpu().numpy()
    return out


def _parameter_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    out = {
        f"param/{name}": p.detach().cpu().numpy()
        for name, p in model.named_parameters()
    }
    with torch.no_grad():
        for name, block in find_blocks(model).items():
            matrix = block.gradient_matrix(block.weight, block.bias)
            out[f"block/{name}"] = matrix.detach().cpu().numpy()
    return out


# ----------------------------------------------------------------- training
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


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer :func:`train` uses for ``config`` (K-FAC, SGD or Adam)."""
    if config.optimizer == OptimizerName.KFAC:
        return KFAC(
            model,
            LossType.CE,
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

    Raises:
        ValueError: If ``run_dir`` holds a run with a different configuration, or
            a configuration value does not fit the data/model.
        FloatingPointError: If the training loss becomes non-finite.
    """
    begin = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device)
    data = _load_data(config)
    data = dataclasses.replace(
        data, x_train=data.x_train.to(device), y_train=data.y_train.to(device)
    )
    model = _build(config, data, device)
    twin = _build(config, data, device)  # measurement copy: never hooked by K-FAC
    optimizer = make_optimizer(config, model)
    n_measure = min(config.measure_examples, data.x_train.shape[0])
    pick = torch.randperm(
        data.x_train.shape[0], generator=torch.Generator().manual_seed(config.seed)
    )[:n_measure].to(device)
    measure_x, measure_y = data.x_train[pick], data.y_train[pick]

    step, epoch, batch_index, collected = 0, 0, 0, []
    manifest: dict[str, Any] = {"config": _config_dict(config), "checkpoints": []}
    resume_path = run_dir / RESUME_FILE
    if resume_path.is_file():
        state = torch.load(resume_path, map_location=device, weights_only=False)
        if state["config"] != _config_dict(config):
            raise ValueError(
                f"run_dir: {run_dir} holds a run with a different config; "
                "choose a new directory"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, batch_index = state["step"], state["epoch"], state["batch_index"]
        collected = list(state["collected"])
        manifest = read_manifest(run_dir)
        logger.info("resuming %s at step %d", run_dir, step)
    _atomic_write(
        run_dir / "config.toml", lambda h: h.write(config_to_toml(config)), "w"
    )
    _write_json(run_dir / "config.json", _config_dict(config))

    batches = _epoch_batches(data, config, epoch, batch_index)
    loss_value = float("nan")
    interactive = sys.stderr.isatty()
    with tqdm(total=config.steps, initial=step, disable=not interactive) as bar:
        while True:
            if step in config.collect_steps and step not in collected:
                entry = _collect(
                    config,
                    run_dir,
                    step,
                    model,
                    twin,
                    optimizer,
                    measure_x,
                    measure_y,
                    data,
                )
                collected.append(step)
                manifest["checkpoints"] = sorted(
                    [c for c in manifest["checkpoints"] if c["step"] != step] + [entry],
                    key=lambda c: c["step"],
                )
                manifest["final_step"] = config.steps
                manifest["complete"] = step == config.steps
                _write_json(run_dir / MANIFEST_FILE, manifest)
                state = {
                    "config": _config_dict(config),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "epoch": epoch,
                    "batch_index": batch_index,
                    "collected": collected,
                }
                _atomic_write(resume_path, lambda h, s=state: torch.save(s, h))
            if step >= config.steps:
                break
            epoch, batch_index, xb, yb = next(batches)
            optimizer.zero_grad()
            loss = _ce(model(xb), yb)
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())
            if not np.isfinite(loss_value):
                raise FloatingPointError(
                    f"training loss is {loss_value} at step {step}"
                )
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            if step_callback is not None:
                step_callback(step, loss_value)
    return TrainResult(
        run_dir, tuple(sorted(collected)), loss_value, time.perf_counter() - begin
    )


def _collect(
    config: TrainConfig,
    run_dir: Path,
    step: int,
    model: nn.Module,
    twin: nn.Module,
    optimizer: torch.optim.Optimizer,
    measure_x: Tensor,
    measure_y: Tensor,
    data: Dataset,
) -> dict[str, Any]:
    """Copy the parameters into the twin, evaluate, collect and log one line."""
    twin.load_state_dict(model.state_dict())
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
    return {k: entry[k] for k in ("step", "measure_loss", "test_loss", "test_accuracy")}
