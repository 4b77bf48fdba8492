r"""The checkpoint store: one directory per collected step, written atomically.

:func:`collect_checkpoint` measures a model at one step and writes::

    RUN/step_000050/factors.npz          "<block>/A", "<block>/S" and the
                                         eigenbasis "<block>/row_values", ...
    RUN/step_000050/stats.npz            GradientStats.to_arrays()
    RUN/step_000050/params.npz           "param/<name>" and "block/<name>"
                                         (the (r, c) matrix [W | b])
    RUN/step_000050/manifest.json        written last: marks the step complete
                                         and holds the SHA-256 of the three files

and :func:`load_checkpoint_arrays` reads a step back, each file checked against
its checksum in the step manifest (a truncated or changed file is a one-line
:class:`~nqm.run_folder.CorruptFileError`); :func:`read_manifest` reads the run's
manifest (``RUN/manifest.json``, the configuration, the steps collected so far
and the checksum of every file of the run, written by
:func:`kfac_spectra.train.train`).

**What is measured at step s** (parameters after s updates; s = 0 is the
initialisation). The Kronecker factors ``(A, S)`` of every block are either given
(K-FAC's own moving averages, the basis it preconditions in) or computed with
:func:`kfac_spectra.compute_factors` on the measurement batch (``reduction="mean"``,
the Fisher chosen by ``fisher_type``). They are eigendecomposed in float64
(:func:`kfac_spectra.eigenbasis.kronecker_bases`), and on the measurement batch,
along each direction :math:`v = u_i \otimes w_j` the gradient statistics of
:func:`kfac_spectra.gradient_stats.eigenbasis_gradient_stats` are measured:
curvature :math:`h_v = v^\top F v` and per-example gradient variance :math:`c_v`.

References:
    Zhang et al. 2019, "Which Algorithmic Choices Matter at Which Batch Sizes?",
    appendix E.1, E.2, E.4; Martens and Grosse 2015 (K-FAC).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor, nn

from kfac_spectra.eigenbasis import KroneckerBasis, kronecker_bases
from kfac_spectra.gradient_stats import GradientStats, eigenbasis_gradient_stats
from kfac_spectra.kfac import FisherType, LossType, compute_factors
from kfac_spectra.layer_capture import find_blocks
from kfac_spectra.train_config import FactorSource
from nqm.io import FILE_MODE, read_npz
from nqm.run_folder import CorruptFileError, check_file, file_digest, read_json_object

__all__ = [
    "MANIFEST_FILE",
    "STEP_FILES",
    "StepFiles",
    "collect_checkpoint",
    "load_checkpoint_arrays",
    "read_manifest",
    "step_dir",
    "verified_step_files",
]

MANIFEST_FILE = "manifest.json"
#: The data files of a step directory (its manifest lists their checksums).
STEP_FILES: tuple[str, ...] = ("factors.npz", "stats.npz", "params.npz")
#: What to do about a damaged file of a run directory.
_REMEDY = "restore it or run the training again into a new --out"


def _fsync_directory(folder: Path) -> None:
    """Make the renames in ``folder`` durable (POSIX; a no-op elsewhere)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_close_and_digest(handle: IO[bytes], path: str) -> dict[str, Any]:
    try:
        os.fsync(handle.fileno())
    finally:
        handle.close()
    return file_digest(path)


class StepFiles:
    """The files of one step directory, written atomically and made durable.

    :meth:`add` writes a file under a temporary name and starts its ``fsync`` in a
    background thread at once. The thread waits for the disk, not the CPU, so a
    file added before the statistics are computed reaches the disk meanwhile, and
    the files' ``fsync`` calls overlap instead of following one another; the
    same thread then reads the file back for its checksum (:meth:`digests`).
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
    are removed by the next ``StepFiles`` of the same directory.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        self.folder = folder
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fsync")
        self._pending: list[tuple[Path, Path, Future[dict[str, Any]]]] = []

    def __enter__(self) -> StepFiles:
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
        future = self._pool.submit(_sync_close_and_digest, handle, tmp)
        self._pending.append((Path(tmp), self.folder / name, future))

    def digests(self) -> dict[str, dict[str, Any]]:
        """``name -> {"sha256", "bytes"}`` of every pending file (waits for them).

        Raises:
            OSError: If an ``fsync`` or the read-back failed.
        """
        return {dest.name: future.result() for _, dest, future in self._pending}

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
    """The run manifest (config, collected checkpoints, ``complete``, checksums).

    Raises:
        ValueError: If ``run_dir`` holds no manifest.
        CorruptFileError: If the manifest is unreadable.
    """
    path = Path(run_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ValueError(f"run_dir: no {MANIFEST_FILE} in {run_dir}")
    return read_json_object(path, remedy=_REMEDY)


def verified_step_files(run_dir: str | os.PathLike[str], step: int) -> dict[str, Path]:
    """The data files of a collected step, each checked against its checksum in
    the step manifest.

    Returns:
        ``name -> path`` for :data:`STEP_FILES`.

    Raises:
        ValueError: If the step was not collected (completely).
        CorruptFileError: If a file is missing, or its checksum differs from the
            step manifest (truncated, corrupted or changed), or the step
            manifest is unreadable or lists no checksums.
    """
    folder = step_dir(run_dir, step)
    marker = folder / MANIFEST_FILE
    if not marker.is_file():
        raise ValueError(f"step: {step} was not collected in {run_dir}")
    listed = read_json_object(marker, remedy=_REMEDY).get("files")
    if not isinstance(listed, dict) or not set(STEP_FILES) <= set(listed):
        raise CorruptFileError(
            f"{marker}: lists no checksums of {', '.join(STEP_FILES)}; collect "
            "the run again into a new --out"
        )
    out = {}
    for name in STEP_FILES:
        path = check_file(
            folder / name, listed[name], listed_in=marker.name, remedy=_REMEDY
        )
        out[name] = path
    return out


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        return read_npz(path, "checkpoint file")
    except ValueError as exc:
        raise CorruptFileError(f"{exc}; {_REMEDY}") from None


def load_checkpoint_arrays(
    run_dir: str | os.PathLike[str], step: int
) -> tuple[dict[str, dict[str, np.ndarray]], GradientStats, dict[str, np.ndarray]]:
    """Read one collected step, each file checked against its checksum first.

    Returns:
        ``(factors, stats, params)``: ``factors[block]`` with keys ``A``, ``S``,
        ``row_values``, ``row_vectors``, ``col_values``, ``col_vectors``; the
        gradient statistics; and the flat parameter arrays of ``params.npz``.

    Raises:
        ValueError: If the step was not collected (completely).
        CorruptFileError: If a file is missing, truncated or corrupted
            (:func:`verified_step_files`).
    """
    paths = verified_step_files(run_dir, step)
    factors: dict[str, dict[str, np.ndarray]] = {}
    for key, value in _load_npz(paths["factors.npz"]).items():
        block, field = key.rsplit("/", 1)
        factors.setdefault(block, {})[field] = value
    stats = GradientStats.from_arrays(_load_npz(paths["stats.npz"]))
    params = _load_npz(paths["params.npz"])
    return factors, stats, params


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
    with StepFiles(step_dir(run_dir, step)) as files:
        # written before the statistics, so that the disk writes them meanwhile
        factor_arrays = _factor_arrays(factors, bases)
        files.add("factors.npz", lambda h: np.savez(h, **factor_arrays))
        param_arrays = _parameter_arrays(model)
        files.add("params.npz", lambda h: np.savez(h, **param_arrays))
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
        files.add("stats.npz", lambda h: np.savez(h, **stat_arrays))
        digests = files.digests()
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
            "files": digests,
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
