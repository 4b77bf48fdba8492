r"""Data-parallel K-FAC on ``torch.distributed``: the process group, the global
factor statistics, and the inverse work shared over ranks.

Each of the W ranks holds the same model and runs its own slice of the global
batch. The gradients are those that ``DistributedDataParallel`` (or the user's own
all-reduce) has already averaged: the optimizer takes them as they are, never
averaging them again. Everything else that depends on the batch is made global
here, so that every rank holds the same statistics, decompositions and update, and
the trajectory equals that of one process on the concatenated batch.

**Factor statistics.** DDP's gradient is the gradient of the mean of the ranks'
losses, :math:`\bar L = \frac1W \sum_r L_r`; its curvature is the mean of the
ranks' curvatures. Every statistic of every block (``A``, ``S``; the RNN blocks'
lag-one moments and sequence length; a tied weight's per-use factors) is a mean
over rows or a loss-scaled probe sum, so the global one is the mean over ranks:

.. math::
    A = \frac1W \sum_r A_r, \qquad S = \frac1W \sum_r S_r .

With equal local batches (W divides the global batch; checked on every factor
step) and ``reduction="mean"`` this is exactly the single-process statistic of
the global batch, ``A = (1/R) Σ_rows ā āᵀ`` over all ``R = Σ_r R_r`` rows and
``S = c Σ ĝ ĝᵀ`` with the global ``c = 1/M``. (With ``reduction="sum"`` DDP's
gradient is the global sum divided by W, and the statistics are those of the same
objective.)

**When the statistics are averaged** (:class:`FactorSync`). The moving average
is linear, ``Ā ← ρĀ + (1−ρ)A``, and the global statistic is the mean over ranks,
so the mean of the ranks' moving averages of their own statistics is the moving
average of the global ones (to rounding), when every rank applies the same
coefficients to the same blocks on the same steps. With ``on_read`` (the
default) each rank therefore keeps the moving average of its own statistics, and
the ranks average them (one all-reduce) only when something reads them: before
each inverse update, and in ``factors()``, ``eigenbases()``, ``state_dict()``
and ``sync_factors()``; statistics read on every step (a tied weight's head
``Sh``) are averaged on each factor update. With factors every ``f`` steps and
inverses every ``i``, that sends ``f/i`` of the bytes of ``every_update``, which
averages each factor update's batch statistics. On each factor update one
integer vote keeps the ranks in step: which blocks every rank captured alike,
and a flag per block for a NaN or infinity on any rank, so that every rank
drops that block's batch together.

**Monte-Carlo Fisher.** Each rank samples its own targets: under a process group
the sampling generators (MC targets and the ``stats_batch_size`` rows) are
re-seeded on every factor step from ``(seed, rank, step)``. The ranks' samples are
thus independent, the reduced ``S`` is the mean of W independent unbiased
estimates (unbiased, with 1/W of one rank's variance), and a run resumed from a
checkpoint, on any number of ranks, draws exactly the samples it would have drawn.
``stats_batch_size = m`` is the global count: each rank draws ``m / W`` rows of its
own slice.

**Inverse work** (:class:`InverseLayout`). The blocks are assigned to ranks by
the cost of their decompositions, ``Σ n³`` over the block's dense factors (``n``
for a diagonal one), greedily, most expensive first, each to the least loaded
rank (longest processing time first; within 4/3 of the best balance).

* ``shared``: on inverse steps each rank decomposes only the blocks it owns and
  broadcasts the decompositions; every rank then preconditions every block
  itself. The decomposition time per rank falls as 1/W (for many similar blocks);
  every rank still holds every decomposition, so ``state_dict()`` on rank 0 is
  complete.
* ``replicated``: every rank decomposes every block; no communication for the
  inverses. It wins when the decompositions are cheap next to sending them (small
  blocks, slow links), ``shared`` when they are expensive (large blocks, many
  ranks).
* ``owner`` (KAISA's memory-optimal layout): each block's owner alone decomposes
  and keeps its decomposition, and on every step computes that block's
  preconditioned gradient ``X = (S ⊗ A + damping)^{-1} G`` and broadcasts it;
  nothing of the decompositions is sent. Each rank holds about 1/W of the
  decompositions (the factors' moving averages stay on every rank) and does about 1/W of the every-step solves (in proportion to
  its blocks' sizes), for one broadcast of the solved blocks per step. It wins
  when memory is short or the solves dominate the step (small per-rank
  batches, wide layers, many ranks on a fast link). ``state_dict()`` is then a
  collective (every rank calls it; the owners broadcast the decompositions).

In every layout every rank ends up with the same full preconditioned gradient
``v`` (computed by itself, or received from the owners), so ``vᵀg`` (KL
clipping) and the quadratic model's terms that involve only ``v`` and ``g`` are
the same on every rank without further communication, and so is the
finiteness check of ``v`` and ``g``. (The ranks' decompositions of identical
factors are identical when they run the same kernels, as they do on one kind of
device; ``shared`` makes them identical by construction, and ``owner`` has one
copy.)

**Communication per step.** Payload bytes, besides DDP's all-reduce of the
gradient (``P`` numbers of ``b`` bytes: 4 for float32, 8 for float64). ``K``
blocks; a block's factors have sides ``n`` (``n_A = in'``, ``n_S = out``), its
gradient matrix ``out × in'`` numbers; ``f`` and ``i`` the factor and inverse
intervals.

.. list-table::
   :header-rows: 1

   * - What
     - When
     - ``shared``
     - ``replicated``
     - ``owner``
   * - vote (which statistics each rank has, its batch size; with
       ``on_read`` a non-finite flag per block): all-reduce
     - factor steps
     - ``8(3K + 2)`` (``every_update``: ``8(2K + 2)``)
     - same
     - same
   * - statistics: one all-reduce of every block's ``A`` and ``S`` (their
       moving averages with ``factor_sync="on_read"``)
     - inverse steps (``on_read``) or factor steps (``every_update``)
     - ``b Σ (n_A² + n_S²)``
     - same
     - same
   * - decompositions: one broadcast per rank, its blocks'; per dense factor
       eigenvectors, eigenvalues and (factored damping) the damped inverse,
       ``2n² + n`` numbers (``n²`` for a Cholesky inverse), plus a flag per rank
     - inverse steps
     - ``b Σ (2n² + n)`` in all, ``1/W`` of it per rank
     - 0
     - ``8K`` (a flag per block: which owners succeeded)
   * - preconditioned gradients: one broadcast per rank, its blocks' ``X``
     - every step
     - 0
     - 0
     - ``b Σ out·in'`` in all (about the gradient size), ``1/W`` of it per rank
   * - losses and curvature terms (``loss`` given to ``step()``, the
       ``qmodel`` rule, damping adaptation): all-reduce of 1-3 numbers
     - when used
     - ``8`` to ``24``
     - same
     - same

Per step on average the statistics cost ``1/i`` of their all-reduce (``1/f``
with ``every_update``) and the decompositions ``1/i`` of their broadcasts, while ``owner`` sends its
directions on every step: ``owner`` costs about one more gradient-sized
collective per step (:attr:`DistContext.comm_bytes` counts every kind; the
benchmark ``benchmarks/bench_kfac_distributed.py`` prints them against the
gradient). The broadcasts of a rank's decompositions also send, the first time
and when a block's decomposition fails, an all-gather of pickled descriptions.

References:
    Pauloski et al. (2021), "KAISA: an adaptive second-order optimizer framework
    for deep neural networks", SC'21 (assignment of factors to workers,
    communication- and memory-optimal layouts); Osawa et al. (2019), "Large-scale
    distributed second-order optimization using Kronecker-factored approximate
    curvature", CVPR (factors reduced over workers, inversions distributed);
    Graham (1969), "Bounds on multiprocessing timing anomalies" (longest
    processing time first).
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import logging
import math
import zlib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "DistContext",
    "FactorSync",
    "contiguous_fields",
    "InverseLayout",
    "assign_owners",
    "decomposition_cost",
    "resolve_process_group",
    "step_seed",
]

logger = logging.getLogger(__name__)


class InverseLayout(enum.StrEnum):
    """Who decomposes and applies which block under a process group (see the
    module docstring).

    Attributes:
        SHARED: Each block decomposed by one rank (cost balanced) and broadcast;
            every rank preconditions every block.
        REPLICATED: Every block decomposed and applied by every rank, nothing sent.
        OWNER: Each block decomposed, kept and applied by its owner alone, which
            broadcasts the block's preconditioned gradient on every step
            (memory-optimal).
    """

    SHARED = "shared"
    REPLICATED = "replicated"
    OWNER = "owner"


class FactorSync(enum.StrEnum):
    """When the ranks' factor statistics are averaged into the global ones (see
    the module docstring).

    Attributes:
        ON_READ: Each rank keeps the moving average of its own statistics; they
            are averaged over the ranks only when something reads them (an
            inverse update, ``factors()``, ``eigenbases()``, ``state_dict()``,
            :meth:`~kfac_spectra.kfac.optimizer.KFAC.sync_factors`), and
            statistics read on every step (a tied weight's head ``Sh``) on
            every factor update. Reading is then a collective.
        EVERY_UPDATE: The batch statistics are averaged on every factor update;
            every rank always holds the global moving averages.
    """

    ON_READ = "on_read"
    EVERY_UPDATE = "every_update"


def resolve_process_group(process_group: Any) -> Any | None:
    """The process group the optimizer works over, or ``None`` for one process.

    Args:
        process_group: ``None``: the default group when ``torch.distributed`` is
            initialised, else single-process. ``False``: single-process even when
            it is initialised. ``True``: the default group, which must be
            initialised. A ``ProcessGroup``: that group.

    Returns:
        The group, or ``None``.

    Raises:
        ValueError: When a group is requested (``True`` or a group object) but
            ``torch.distributed`` is unavailable or not initialised, or the value
            is of another type.
    """
    ready = dist.is_available() and dist.is_initialized()
    if process_group is False:
        return None
    if process_group is None:
        return dist.group.WORLD if ready else None
    if not ready:
        raise ValueError(
            f"process_group={process_group!r} needs torch.distributed to be "
            "initialised first (torch.distributed.init_process_group, e.g. under "
            "torchrun)"
        )
    if process_group is True:
        return dist.group.WORLD
    if isinstance(process_group, dist.ProcessGroup):
        return process_group
    raise ValueError(
        f"process_group={process_group!r} is invalid: must be None, True, False or a "
        "torch.distributed.ProcessGroup"
    )


def step_seed(seed: int, stream: int, rank: int, step: int) -> int:
    """A 63-bit seed for one generator stream of one rank at one step.

    Args:
        seed: The optimizer's seed.
        stream: Which stream (MC targets, sampled rows, ...).
        rank: The rank.
        step: The optimizer step.

    Returns:
        A seed for ``torch.Generator.manual_seed``, independent across its inputs
        (``numpy.random.SeedSequence`` hashing).
    """
    state = np.random.SeedSequence((seed, stream, rank, step)).generate_state(
        1, np.uint64
    )[0]
    return int(state) >> 1


def decomposition_cost(factors: Sequence[Tensor]) -> float:
    """Cost of decomposing one block: ``Σ n³`` over its square factors, ``n`` for
    a diagonal (1-D) one.

    Args:
        factors: The block's factors, each ``(n, n)`` or ``(n,)``.

    Returns:
        The cost in units of multiply-adds up to a constant.
    """
    total = 0.0
    for f in factors:
        n = float(f.shape[0]) if f.ndim else 1.0
        total += n**3 if f.ndim == 2 else n
    return total


def assign_owners(
    costs: Mapping[Hashable, float], world_size: int
) -> dict[Hashable, int]:
    """Longest processing time first: blocks by falling cost, each to the rank
    with the least total so far (lowest rank on ties).

    Deterministic, so every rank computes the same assignment. The largest load is
    at most ``4/3 − 1/(3W)`` times the best possible (Graham, 1969).

    Args:
        costs: Cost per block key (in a fixed, rank-independent order).
        world_size: W ≥ 1.

    Returns:
        The owning rank of every key.

    Raises:
        ValueError: If ``world_size < 1`` or a cost is negative.
    """
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    order = list(costs)
    for key in order:
        if not costs[key] >= 0:
            raise ValueError(f"cost of {key!r} is {costs[key]!r}: must be >= 0")
    # stable sort: equal costs keep the mapping's order
    order.sort(key=lambda k: -costs[k])
    heap = [(0.0, rank) for rank in range(world_size)]
    owners: dict[Hashable, int] = {}
    for key in order:
        load, rank = heapq.heappop(heap)
        owners[key] = rank
        heapq.heappush(heap, (load + costs[key], rank))
    return {key: owners[key] for key in costs}


# description entries of an eigendecomposition's damped inverses (not fields)
_DAMPED = "damped_inverses"


def contiguous_fields(inv: Any) -> Any:
    """The decomposition with every tensor field made contiguous.

    The layout its receivers get from a broadcast. ``torch.linalg.eigh`` returns
    eigenvectors in column-major strides, and a BLAS product rounds differently
    for another memory layout of the same values, so the owner must compute with
    the layout its receivers (and a checkpoint's reader) have.

    Args:
        inv: A dataclass whose fields are tensors or other values.

    Returns:
        A new instance (``dataclasses.replace``), or ``inv`` if all are contiguous.
    """
    changes = {
        f.name: value.contiguous()
        for f in dataclasses.fields(inv)
        if isinstance(value := getattr(inv, f.name), Tensor)
        and not value.is_contiguous()
    }
    return dataclasses.replace(inv, **changes) if changes else inv


def _signature(stats: Mapping[str, Tensor] | None) -> int:
    """A non-zero 62-bit fingerprint of a block's statistic names and shapes
    (0 when it has none)."""
    if not stats:
        return 0
    text = ";".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in sorted(stats.items()))
    raw = text.encode()
    return (zlib.crc32(raw) << 30 | zlib.adler32(raw) & ((1 << 30) - 1)) + 1


@dataclasses.dataclass
class DistContext:
    """The optimizer's view of its process group.

    Args:
        group: The process group (see :func:`resolve_process_group`).
        layout: The inverse layout.

    Attributes:
        rank: This process's rank in ``group``.
        world_size: Number of ranks W.
        comm_bytes: Payload bytes this rank has sent into collectives, by kind
            (``"vote"``, ``"statistics"``, ``"inverses"``, ``"directions"``,
            ``"scalars"``); an all-reduce counts its buffer once, a broadcast once
            at the source.
        mismatched_batches: Factor steps on which some block's statistics were
            missing (or shaped differently) on some rank and were dropped by all.
    """

    group: Any
    layout: InverseLayout = InverseLayout.SHARED
    rank: int = dataclasses.field(init=False)
    world_size: int = dataclasses.field(init=False)
    comm_bytes: dict[str, int] = dataclasses.field(init=False)
    mismatched_batches: int = dataclasses.field(init=False, default=0)
    pending_rows: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        self.comm_bytes = {
            "vote": 0,
            "statistics": 0,
            "inverses": 0,
            "directions": 0,
            "scalars": 0,
        }
        self._owners: dict[Hashable, int] | None = None
        self._owner_keys: tuple[Hashable, ...] = ()
        # each rank's last exchanged descriptions of its decompositions
        self._described: dict[int, list[Any]] = {}

    # ------------------------------------------------------------- utilities
    def _device(self, like: Tensor | None = None) -> torch.device:
        """Where this backend's buffers live (CUDA for nccl)."""
        if like is not None and like.device.type != "cpu":
            return like.device
        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _global_rank(self, rank: int) -> int:
        if self.group is None or self.group is dist.group.WORLD:
            return rank
        return dist.get_global_rank(self.group, rank)

    def mean(self, values: Sequence[float]) -> list[float]:
        """The mean over ranks of each number (one all-reduce, float64).

        Args:
            values: The same count of numbers on every rank.

        Returns:
            Their means; a NaN or infinity on any rank reaches every rank.
        """
        buf = torch.tensor(list(values), dtype=torch.float64, device=self._device())
        self.comm_bytes["scalars"] += buf.numel() * buf.element_size()
        dist.all_reduce(buf, group=self.group)
        return (buf / self.world_size).tolist()

    # --------------------------------------------------------- statistics
    def agree(
        self,
        batch: Sequence[tuple[str, Mapping[str, Tensor] | None]],
        nonfinite: Sequence[bool] | None = None,
    ) -> tuple[list[str], set[str]]:
        """Which blocks' statistics every rank captured alike, and which of them
        are non-finite on some rank: one all-reduce (MAX) of integers.

        The vote holds, per block, a fingerprint of its statistic names and
        shapes (and its negative, for the minimum), this rank's example count
        since the last factor update, and per block a non-finite flag.

        Args:
            batch: ``(key, stats)`` for every block, in the same key order on
                every rank; ``stats`` is ``None`` for a block with nothing captured.
            nonfinite: Per entry of ``batch``, whether this rank's statistics hold
                a NaN or infinity (``None``: all finite, or not checked).

        Returns:
            The keys whose statistics every rank has, alike, in the order of
            ``batch``; and those of them non-finite on at least one rank.

        Raises:
            ValueError: On every rank, if the ranks ran different numbers of
                examples since the last factor update (the global batch must be
                divisible by the world size).
        """
        rows, self.pending_rows = self.pending_rows, 0
        sigs = [_signature(stats) for _, stats in batch] + [rows]
        flags = [int(b) for b in nonfinite] if nonfinite is not None else []
        vote = torch.tensor(sigs + flags + [-s for s in sigs], dtype=torch.int64)
        vote = vote.to(self._device())
        self.comm_bytes["vote"] += vote.numel() * vote.element_size()
        dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=self.group)
        values = vote.tolist()
        n = len(sigs)
        high, bad, low = values[:n], values[n : n + len(flags)], values[-n:]
        low = [-v for v in low]
        if high[-1] != low[-1]:
            raise ValueError(
                f"the ranks ran between {low[-1]} and {high[-1]} examples since the "
                "last factor update: every rank must run the same number (the "
                "global batch size must be divisible by the world size)"
            )
        mismatched = sum(hi != lo for hi, lo in zip(high[:-1], low[:-1], strict=True))
        if mismatched:
            self.mismatched_batches += 1
            logger.warning(
                "K-FAC: some ranks captured no (or differently shaped) statistics "
                "for %d block(s); their batch is dropped on every rank",
                mismatched,
            )
        agreed = [
            key
            for (key, stats), hi, lo in zip(batch, high, low, strict=False)
            if hi == lo and hi != 0 and stats is not None
        ]
        flagged = {key for (key, _), b in zip(batch, bad, strict=False) if b}
        return agreed, flagged & set(agreed)

    def mean_tensors(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """The mean over ranks of each tensor: one all-reduce per dtype of them
        all, flattened (counted as ``"statistics"`` bytes).

        Args:
            tensors: The same shapes and dtypes, in the same order, on every rank.

        Returns:
            The means, views of one received buffer per dtype (on the device of
            the first tensor of that dtype), in the order of ``tensors``; a NaN
            or infinity on any rank reaches every rank.
        """
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            by_dtype.setdefault(t.dtype, []).append(i)
        out: list[Tensor | None] = [None] * len(tensors)
        for indices in by_dtype.values():
            parts = [tensors[i] for i in indices]
            flat = torch.cat([t.reshape(-1) for t in parts])
            flat = flat.to(self._device(parts[0]))
            self.comm_bytes["statistics"] += flat.numel() * flat.element_size()
            dist.all_reduce(flat, group=self.group)
            flat.div_(self.world_size)
            pieces = flat.to(parts[0].device).split([t.numel() for t in parts])
            for i, piece, t in zip(indices, pieces, parts, strict=True):
                out[i] = piece.view(t.shape)
        return [t for t in out if t is not None]

    def reduce_statistics(
        self, batch: Sequence[tuple[str, Mapping[str, Tensor] | None]]
    ) -> dict[str, dict[str, Tensor]]:
        """The global statistics of every block that all ranks captured.

        Two collectives: the vote (:meth:`agree`), then one all-reduce of all
        agreed statistics, flattened per dtype (:meth:`mean_tensors`).

        Args:
            batch: ``(key, stats)`` for every block, in the same key order on
                every rank; ``stats`` is ``None`` for a block with nothing captured.

        Returns:
            ``{key: mean-over-ranks stats}`` for the blocks whose statistics every
            rank has, in the order of ``batch`` (views of one received buffer).

        Raises:
            ValueError: On every rank, if the ranks ran different numbers of
                examples since the last factor update (the global batch must be
                divisible by the world size).
        """
        keys, _ = self.agree(batch)
        local = {key: stats for key, stats in batch if stats is not None}
        entries = [(key, name) for key in keys for name in sorted(local[key])]
        means = self.mean_tensors([local[k][n] for k, n in entries])
        out: dict[str, dict[str, Tensor]] = {key: {} for key in keys}
        for (key, name), t in zip(entries, means, strict=True):
            out[key][name] = t
        return {key: {n: out[key][n] for n in local[key]} for key in keys}

    def count_rows(self, rows: int) -> None:
        """Note ``rows`` examples of a captured forward call (for the vote)."""
        self.pending_rows += int(rows)

    # ------------------------------------------------------------- inverses
    def owners(self, costs: Mapping[Hashable, float]) -> dict[Hashable, int]:
        """The owner of every block (:func:`assign_owners`; every rank owns every
        block in the ``replicated`` layout). Cached while the set of keys stays.

        Args:
            costs: Decomposition cost per block key, in a rank-independent order.

        Returns:
            The owning rank of every key, in the order of ``costs``.
        """
        keys = tuple(costs)
        if self._owners is None or keys != self._owner_keys:
            self._owners = assign_owners(costs, self.world_size)
            self._owner_keys = keys
        if self.layout == InverseLayout.REPLICATED:
            return {key: self.rank for key in keys}
        return dict(self._owners)

    def _gather_descriptions(
        self, described: list[Any], owners: Mapping[str, int]
    ) -> list[Any]:
        """Every rank's descriptions, pickled and all-gathered only when some
        rank's differ from the last ones exchanged (a new or failed block): else
        one all-reduce of a flag per rank."""
        changed = torch.zeros(self.world_size, dtype=torch.int64)
        changed[self.rank] = int(described != self._described.get(self.rank))
        changed = changed.to(self._device())
        self.comm_bytes["inverses"] += changed.numel() * changed.element_size()
        dist.all_reduce(changed, group=self.group)
        if bool(changed.any()) or len(self._described) != self.world_size:
            everyone: list[Any] = [None] * self.world_size
            dist.all_gather_object(everyone, described, group=self.group)
            self._described = dict(enumerate(everyone))
        return [self._described[rank] for rank in range(self.world_size)]

    def share_inverses(
        self,
        local: Mapping[str, Any | None],
        owners: Mapping[str, int],
        device: torch.device,
    ) -> dict[str, Any | None]:
        """Broadcast each block's decomposition from its owner to every rank.

        ``local`` holds this rank's decompositions (dataclasses whose fields are
        tensors or ``None``; ``None`` for a failed one). One all-gather of their
        descriptions (class, field shapes and dtypes), then one broadcast per rank
        of its tensors, flattened.

        Args:
            local: Decomposition per owned key (``None``: failed).
            owners: Owner per key (the same on every rank).
            device: Where the received tensors go (the factors' device).

        Returns:
            Decomposition (or ``None`` for a failed one) of every key in
            ``owners``.
        """
        described: list[tuple[str, type | None, list[tuple[str, Any]]]] = []
        tensors: list[Tensor] = []
        for key in owners:
            if owners[key] != self.rank:
                continue
            inv = local.get(key)
            if inv is None:
                described.append((key, None, []))
                continue
            fields = []
            for f in dataclasses.fields(inv):
                value = getattr(inv, f.name)
                if isinstance(value, Tensor):
                    fields.append((f.name, (tuple(value.shape), value.dtype)))
                    tensors.append(value)
                else:
                    fields.append((f.name, ("value", value)))
            cache = getattr(inv, "damped_inverses", None)
            if cache is not None:  # formed by the owner: no rank forms them again
                fields.append((_DAMPED, ("value", cache[0])))
                for i, t in enumerate(cache[1:]):
                    fields.append((f"{_DAMPED}{i}", (tuple(t.shape), t.dtype)))
                    tensors.append(t)
            described.append((key, type(inv), fields))
        everyone = self._gather_descriptions(described, owners)
        out: dict[str, Any | None] = {}
        for rank, entries in enumerate(everyone):
            shapes = [
                spec
                for _, cls, fields in entries
                if cls is not None
                for _, spec in fields
                if spec[0] != "value"
            ]
            if not shapes:
                for key, _, _ in entries:
                    out[key] = None
                continue
            # one buffer in the widest dtype: every field converts back exactly
            dtype = shapes[0][1]
            for _, field_dtype in shapes[1:]:
                dtype = torch.promote_types(dtype, field_dtype)
            sizes = [math.prod(shape) for shape, _ in shapes]
            if rank == self.rank:
                flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors])
                flat = flat.to(self._device(flat))
                self.comm_bytes["inverses"] += flat.numel() * flat.element_size()
            else:
                flat = torch.empty(sum(sizes), dtype=dtype, device=self._device())
            dist.broadcast(flat, src=self._global_rank(rank), group=self.group)
            flat = flat.to(device)
            parts = iter(flat.split(sizes))
            for key, cls, fields in entries:
                if cls is None:
                    out[key] = None
                    continue
                kwargs = {}
                for name, spec in fields:
                    if spec[0] == "value":
                        kwargs[name] = spec[1]
                    else:
                        shape, field_dtype = spec
                        # contiguous, like the owner's; a view of the received
                        # buffer where the dtypes agree (no copy: state_dict
                        # clones it, so a checkpoint holds only its own values)
                        part = next(parts).view(shape)
                        kwargs[name] = part.to(field_dtype)
                damped = kwargs.pop(_DAMPED, None)
                damped_parts = [kwargs.pop(f"{_DAMPED}{i}", None) for i in range(2)]
                inv = cls(**kwargs)
                if damped is not None:
                    inv.adopt_damped_inverses((damped, *damped_parts))
                out[key] = inv
        return {key: out[key] for key in owners}

    def agree_built(
        self, built: Mapping[str, bool], owners: Mapping[str, int]
    ) -> set[str]:
        """The blocks whose owners built a decomposition on this inverse step.

        For the ``owner`` layout, where nothing else tells a rank how the other
        ranks' decompositions went: one all-reduce of a flag per block (each
        block's owner sets it), so that every rank knows which blocks have a new
        decomposition and which failed (and counts the failures like one process).

        Args:
            built: For every block this rank owns, whether its decomposition
                succeeded.
            owners: Owner per key (the same on every rank).

        Returns:
            The keys (of every rank) whose decomposition succeeded.
        """
        keys = list(owners)
        flags = torch.zeros(len(keys), dtype=torch.int64)
        for i, key in enumerate(keys):
            if owners[key] == self.rank and built.get(key, False):
                flags[i] = 1
        flags = flags.to(self._device())
        self.comm_bytes["inverses"] += flags.numel() * flags.element_size()
        dist.all_reduce(flags, group=self.group)
        return {key for key, flag in zip(keys, flags.tolist(), strict=True) if flag}

    def share_directions(
        self,
        solved: Mapping[str, Tensor],
        targets: Sequence[tuple[str, Tensor]],
        owners: Mapping[str, int],
    ) -> None:
        """Broadcast each block's preconditioned gradient from its owner, in place.

        One broadcast per rank that owns any of ``targets``, per dtype: its
        blocks' solutions, concatenated in the order of ``targets``. Every rank
        passes the same ``targets`` (keys, shapes and dtypes): the receivers
        know what arrives without a description.

        Args:
            solved: This rank's solutions, by key (every target key it owns).
            targets: ``(key, tensor)`` of every block to exchange, in the same
                order on every rank; the tensors of other ranks' blocks are
                overwritten with their owners' solutions (the owner's own are
                left as they are; ``solved[key]`` may be the target itself).
            owners: Owner per key.

        Raises:
            KeyError: If this rank owns a target key missing from ``solved``.
        """
        for rank in range(self.world_size):
            by_dtype: dict[torch.dtype, list[tuple[str, Tensor]]] = {}
            for key, target in targets:
                if owners[key] == rank:
                    by_dtype.setdefault(target.dtype, []).append((key, target))
            for dtype, entries in by_dtype.items():
                sizes = [t.numel() for _, t in entries]
                if rank == self.rank:
                    flat = torch.cat([solved[k].reshape(-1) for k, _ in entries])
                    flat = flat.to(self._device(flat))
                    self.comm_bytes["directions"] += flat.numel() * flat.element_size()
                else:
                    flat = torch.empty(sum(sizes), dtype=dtype, device=self._device())
                dist.broadcast(flat, src=self._global_rank(rank), group=self.group)
                if rank == self.rank:
                    continue
                parts = flat.split(sizes)
                for (_, target), part in zip(entries, parts, strict=True):
                    target.copy_(part.view(target.shape))
