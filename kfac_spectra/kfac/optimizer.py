r"""The K-FAC optimizer.

Usage — an ordinary PyTorch loop; the optimizer's hooks capture what it needs on the
forward pass, and the optional closure only *evaluates* the loss (for the
Levenberg–Marquardt adaptation of the damping):

>>> import torch, torch.nn.functional as F
>>> from torch import nn
>>> from kfac_spectra import KFAC
>>> gen = torch.Generator().manual_seed(0)
>>> x, y = torch.randn(64, 5, generator=gen), torch.randint(0, 3, (64,), generator=gen)
>>> model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
>>> with torch.no_grad():  # the initial weights from the seeded generator too
...     for p in model.parameters():
...         _ = p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
>>> opt = KFAC(model, loss="ce", lr=0.3, damping=1e-2, inverse_interval=5)
>>> first = F.cross_entropy(model(x), y).item()
>>> for _ in range(20):
...     opt.zero_grad()
...     loss = F.cross_entropy(model(x), y)
...     loss.backward()
...     opt.step()
>>> F.cross_entropy(model(x), y).item() < 0.5 * first
True

Each step (λ damping, η weight decay, g the mini-batch gradient plus ηθ):

1. on factor steps (every ``factor_interval``), the forward hooks build A; the root
   output is probed (MC targets / type-2 columns) and the probes are
   back-propagated to the layer outputs right away, keeping the graph for the
   user's ``backward``; the moving averages ``A ← ρA + (1−ρ)A_batch`` (same for S)
   are updated at ``step()``. With ``stats_batch_size = m`` the batch statistics
   come from m examples drawn without replacement (a seeded generator; all N when
   N ≤ m) while the gradient uses all N (Martens & Grosse 2015, arXiv §8): A
   from their inputs, S from probes of their outputs only, weighted as the
   subset's own loss (mean) or by N/m (sum) — an unbiased estimate of the batch
   statistics;
2. on inverse steps (every ``inverse_interval``) each block is decomposed
   (:mod:`~kfac_spectra.kfac.inverse`);
3. ``v = (S ⊗ A + damping)^{-1} g`` per block (plain g for unsupported layers);
   with ``structure="block_tridiagonal"``, ``v = F̂^{-1} g`` jointly over each chain
   of linear layers (Martens & Grosse 2015, §4.3;
   :mod:`~kfac_spectra.kfac.tridiagonal`);
4. ``step_rule="fixed"``: KL clipping ``ν`` (on by default) and heavy-ball momentum
   ``m ← βm + νv, θ ← θ − αm``; ``step_rule="qmodel"``: ``δ = αΔ + μδ₀`` with
   (α, μ) minimising the exact quadratic model (Fisher/GGN-vector products by
   forward-mode differentiation on the last captured batch), ``θ ← θ + δ``;
5. every ``lm_interval`` steps, with a closure and ``adapt_damping=True``, λ is
   adapted from the reduction ratio.

Under ``torch.distributed`` (``process_group``, the model plain or in
``DistributedDataParallel``) the factor statistics, losses and curvature terms
are made global and the inverse work shared over the ranks (decompositions
broadcast, replicated, or kept by their owners, which broadcast the
preconditioned gradients: ``inverse_layout``), so that every rank follows the
trajectory of one process on the global batch: see
:mod:`~kfac_spectra.kfac.distributed`.

References:
    Martens & Grosse (2015); Grosse & Martens (2016); Ba, Grosse & Martens (2017);
    Zhang et al. (2019) Appendix A and F.4; Martens, Ba & Johnson (2018);
    Eschenhagen et al. (2023); Chen (2021).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp
from torch.nn.parallel import DistributedDataParallel

from .blocks import (
    BlockSet,
    CurvatureBlock,
    RNNBlock,
    TiedEmbeddingBlock,
    build_blocks,
    stat_dtype_for,
)
from .blocks.base import Record
from .capture import Capture
from .config import KFACConfig
from .damping import kl_clip_factor, lm_adjust, qmodel_coefficients
from .distributed import (
    DistContext,
    FactorSync,
    InverseLayout,
    contiguous_fields,
    decomposition_cost,
    resolve_process_group,
    step_seed,
)
from .enums import (
    DampingType,
    FisherType,
    InverseMethod,
    LossType,
    Reduction,
    RNNApprox,
    StepRule,
    Structure,
)
from .factors import warn_unsupported
from .finite import all_finite
from .fisher import (
    loss_scale,
    output_hessian_form,
    output_probes,
    subset_term_weight,
)
from .inverse import (
    ChainInverse,
    CholeskyInverse,
    Damping,
    EigenInverse,
    cg_fac_solve,
    robust_eigh,
)
from .tridiagonal import ChainFactors, ChainStatistics, linear_chains
from .workspace import Workspace

__all__ = ["KFAC"]

logger = logging.getLogger(__name__)

Inverse = EigenInverse | CholeskyInverse | ChainInverse


class _Direction(NamedTuple):
    """The preconditioned gradient, per parameter and as ``(v, g)`` pairs; the
    workspace that holds it, if one does."""

    per_param: dict[Tensor, Tensor]
    pairs: list[tuple[Tensor, Tensor]]
    workspace: Workspace | None = None


# parameter dtypes the workspace takes: their own statistics dtype
_STAT_DTYPES = (torch.float32, torch.float64)
_INVERSE_TYPES = {
    "eigen": EigenInverse,
    "cholesky": CholeskyInverse,
    "chain": ChainInverse,
}


def _same(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    """Whether two sequences hold the same tensors (by identity), in order."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _inverse_dtype(inv: Inverse) -> torch.dtype:
    """The dtype of a decomposition (of its first tensor field)."""
    for f in dataclasses.fields(inv):
        value = getattr(inv, f.name)
        if isinstance(value, Tensor):
            return value.dtype
    raise ValueError(f"{type(inv).__name__} holds no tensor")


def _own(value: Any) -> Any:
    """``value``, or a copy of it if it is a view of a larger tensor (a
    decomposition received in a shared buffer): ``torch.save`` writes a view's
    whole storage."""
    if isinstance(value, Tensor) and value._base is not None:
        return value.clone()
    return value


_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(KFACConfig))


class KFAC(torch.optim.Optimizer):
    """Kronecker-factored approximate curvature (see the module docstring).

    The options are those of :class:`~kfac_spectra.kfac.config.KFACConfig`, given
    as keywords (``KFAC(model, "ce", lr=0.3)``), as a config
    (``KFAC(model, config=cfg)``), or both: keywords then override the config's
    fields.

    Args:
        model: The network. Its forward must return the tensor the loss is computed
            from (last dim = classes for CE, features for MSE).
        loss: ``"ce"``, ``"mse"`` or ``"bce"`` (the one option also accepted
            positionally).
        config: The options; defaults to ``KFACConfig()``.
        **options: Fields of :class:`~kfac_spectra.kfac.config.KFACConfig`.

    Attributes:
        config: The validated options (``damping`` there is the initial λ; the
            current one is :attr:`damping`).
        last_stats_rows: Example indices (sorted) of the last captured batch's
            statistics; ``None`` when they used the whole batch.

    Raises:
        ValueError: Naming any invalid hyperparameter or option, or when the model
            has no trainable parameters.
        TypeError: For a keyword that is not an option.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossType | str | None = None,
        *,
        config: KFACConfig | None = None,
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - _OPTION_NAMES)
        if unknown:
            raise TypeError(f"KFAC got an unknown option {unknown[0]!r}")
        if loss is not None:
            options["loss"] = loss
        cfg = (
            KFACConfig(**options)
            if config is None
            else dataclasses.replace(config, **options)
        )
        if isinstance(model, DistributedDataParallel):
            model = model.module  # hooks and re-evaluations on the plain module
        self.config = cfg
        self.loss = cfg.loss
        tridiagonal = self.config.structure == Structure.BLOCK_TRIDIAGONAL
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters")
        defaults = {
            "lr": cfg.lr,
            "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay,
        }
        super().__init__(params, defaults)
        self.model = model
        self.damping = float(cfg.damping)
        self.lm_omega = (19.0 / 20.0) ** cfg.lm_interval
        self.steps = 0
        self.counters = {
            "skipped_steps": 0,
            "inverse_failures": 0,
            "nonfinite_factors": 0,
            "cg_iterations": 0,
        }
        self.last_rho = float("nan")
        self._dist = self._dist_context(cfg.process_group, cfg.inverse_layout)
        self._blocks: BlockSet = build_blocks(
            model, self.config.kfac_approx, self.config.rnn_approx, cfg.skip_modules
        )
        warn_unsupported(self._blocks)
        self._block_params = [
            (key, block, tuple(block.params()))
            for key, block in self._blocks.blocks.items()
        ]
        for block in self._blocks.blocks.values():
            block.keep_rows = (
                self.config.inverse_method == InverseMethod.CG and block.supports_cg
            )
        self._chains: ChainStatistics | None = None
        self._chain_factors: dict[tuple[str, ...], ChainFactors] = {}
        if tridiagonal:
            self._chains = self._find_chains(model)
        self._ema: dict[str, dict[str, Tensor]] = {}
        # under a process group with factor_sync="on_read": the moving averages
        # of this rank's own statistics, averaged over the ranks when read; the
        # statistics of each block updated since (the same on every rank)
        self._defer = (
            self._dist is not None
            and cfg.factor_sync == FactorSync.ON_READ
            and not tridiagonal
        )
        self._unsynced: dict[str, set[str]] = {}
        self._inverses: dict[str, Inverse] = {}
        # the owner layout: each block's owner, and the blocks whose owner holds
        # a decomposition (every rank knows both; only the owner has it)
        self._owner_layout = (
            self._dist is not None
            and self._dist.layout == InverseLayout.OWNER
            and self._dist.world_size > 1
        )
        self._owner_of: dict[str, int] = {}
        self._inverse_keys: set[str] = set()
        self._cg_rows: dict[str, tuple[Tensor, Tensor]] = {}
        self._cg_solutions: dict[str, Tensor] = {}
        self._watched: list[tuple[Record, float]] = []
        # flat buffers for the every-step solve (see _workspace_for), built on
        # the first step; the last parameters with gradients that did not fit
        self._workspace: Workspace | None = None
        self._workspace_miss: tuple[Tensor, ...] | None = None
        device = params[0].device
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(cfg.seed)
        # a CPU stream of its own (randperm), seeded apart from the MC stream
        row_seed = np.random.SeedSequence((cfg.seed, 1)).generate_state(1, np.uint64)[0]
        self._row_generator = torch.Generator()
        self._row_generator.manual_seed(int(row_seed))
        self._device = device
        self.last_stats_rows: Tensor | None = None
        self._capture = Capture(model, self._blocks.module_blocks, self._on_output)
        if cfg.stats_batch_size is not None:
            self._capture.row_sampler = self._sample_rows
        self._capture.keep_inputs = (
            self.config.step_rule == StepRule.QMODEL or cfg.adapt_damping
        )
        self._capture.attach()
        self._arm()

    # ------------------------------------------------------------- public API
    @property
    def blocks(self) -> dict[str, CurvatureBlock]:
        """Curvature blocks by key (module name; embedding's name for tied)."""
        return dict(self._blocks.blocks)

    @property
    def held_inverses(self) -> list[str]:
        """The blocks whose decomposition this process holds: all that have one,
        but in the ``owner`` layout only those this rank owns."""
        return list(self._inverses)

    @property
    def distributed(self) -> DistContext | None:
        """The process group's context (rank, world size, bytes sent), or
        ``None`` when running as one process."""
        return self._dist

    @property
    def unsupported(self) -> list[str]:
        """Modules with trainable parameters that get the plain gradient."""
        return list(self._blocks.unsupported)

    def sync_factors(self) -> None:
        """Average the ranks' factor moving averages into the global ones now.

        Under a process group with ``factor_sync="on_read"`` each rank keeps the
        moving average of its own statistics between reads; this averages them
        (one all-reduce, a collective: every rank calls it, at the same step)
        if any were updated since the last time. :meth:`factors`,
        :meth:`eigenbases` and :meth:`state_dict` call it themselves; call it on
        every rank before calling one of them on one rank only (e.g. rank 0
        writing a checkpoint). Without a process group, or with nothing
        updated, it does nothing.
        """
        self._sync_factors()

    def factors(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Current moving-average factors ``{key: (A, S)}`` (convention of
        :func:`~kfac_spectra.kfac.factors.compute_factors`).

        Under a process group with ``factor_sync="on_read"``, a collective when
        the factors changed since they were last averaged (:meth:`sync_factors`).
        """
        self._sync_factors()
        return {
            k: self._blocks.blocks[k].kronecker(stats) for k, stats in self._ema.items()
        }

    def eigenbases(self) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor | None]]:
        """Eigendecompositions ``{key: (eigvals_S, U_S, eigvals_A, U_A)}``.

        From the last inverse update with ``inverse_method="eigh"`` (and for chain
        RNN blocks), otherwise computed now from the current factors. ``U_A`` is
        ``None`` for diagonal A (embeddings, tied weights: ``eigvals_A`` is then the
        diagonal itself, in vocabulary order). Eigenvalues ascend. In the
        ``owner`` layout of a process group this rank holds only its own blocks'
        decompositions; the others' are computed here from the current factors.

        Under a process group with ``factor_sync="on_read"``, a collective when
        the factors changed since they were last averaged (:meth:`sync_factors`).

        Raises:
            RuntimeError: With ``inverse_method="cg"`` (no factors are formed).
        """
        if self.config.inverse_method == InverseMethod.CG:
            raise RuntimeError("inverse_method='cg' never forms the factors")
        self._sync_factors()
        out = {}
        for key in self._ema:
            inv = self._inverses.get(key)
            if isinstance(inv, EigenInverse):
                out[key] = (inv.eval_s, inv.evec_s, inv.eval_a, inv.evec_a)
            elif isinstance(inv, ChainInverse):
                out[key] = (inv.eval_s, inv.evec_s, inv.eval_a, inv.evec_a)
            else:
                eig = self._eigen(key)
                if eig is not None:
                    out[key] = (eig.eval_s, eig.evec_s, eig.eval_a, eig.evec_a)
        return out

    def remove_hooks(self) -> None:
        """Detach the capture hooks from the model (the optimizer then stops
        updating its factors)."""
        self._capture.detach()

    # ------------------------------------------------------------ distributed
    def _dist_context(
        self, process_group: Any, layout: InverseLayout
    ) -> DistContext | None:
        """The process group's context (see :mod:`~kfac_spectra.kfac.distributed`),
        or ``None`` for one process."""
        group = resolve_process_group(process_group)
        if group is None:
            return None
        ctx = DistContext(group, layout)
        if self.config.inverse_method == InverseMethod.CG:
            raise ValueError(
                "inverse_method='cg' is single-process only (its rows stay on each "
                "rank): use 'eigh' or 'cholesky' under a process group"
            )
        m = self.config.stats_batch_size
        if m is not None and m % ctx.world_size:
            raise ValueError(
                f"stats_batch_size={m} is invalid: must be divisible by the world "
                f"size {ctx.world_size} (each rank draws stats_batch_size / W rows)"
            )
        return ctx

    # ---------------------------------------------------------------- capture
    def _arm(self) -> None:
        armed = self.steps % self.config.factor_interval == 0
        if self._capture.enabled != armed:  # (un)registers the layer hooks
            self._capture.enabled = armed
        if armed and self._dist is not None:
            # per-rank streams that depend only on (seed, rank, step): independent
            # across ranks, and the same after a resume on any number of ranks
            rank = self._dist.rank
            self._generator.manual_seed(
                step_seed(self.config.seed, 2, rank, self.steps)
            )
            self._row_generator.manual_seed(
                step_seed(self.config.seed, 3, rank, self.steps)
            )

    def _sample_rows(self, batch: int) -> Tensor | None:
        """Sorted indices of ``stats_batch_size`` of ``batch`` examples (or None)."""
        m = self.config.stats_batch_size
        if m is not None and self._dist is not None:
            m //= self._dist.world_size  # this rank's share of the global count
        if m is None or batch <= m:
            return None
        perm = torch.randperm(batch, generator=self._row_generator)
        return perm[:m].sort().values.to(self._device)

    def _find_chains(self, model: nn.Module) -> ChainStatistics:
        """The linear chains of ``structure='block_tridiagonal'`` (their blocks keep
        their rows for the cross factors); warns naming the other blocks."""
        blocks = self._blocks.blocks
        chains = linear_chains(model, blocks)
        in_chain = {k for c in chains for k in c}
        rest = [k for k in blocks if k not in in_chain]
        if rest:
            warnings.warn(
                "K-FAC: structure='block_tridiagonal' keeps block-diagonal K-FAC for "
                f"the layers outside a chain of linear layers: {', '.join(rest)}",
                stacklevel=3,
            )
        for key in in_chain:
            blocks[key].keep_rows = True
        return ChainStatistics(chains, blocks)

    def _on_output(self, output: Tensor, call: int, rows: Tensor | None) -> None:
        records = self._capture.take_records(call)
        if not records:
            return
        if self._dist is not None:
            self._dist.count_rows(output.shape[0] if output.ndim else 1)
        self.last_stats_rows = rows
        if not all_finite([output]):
            # a diverged forward: no statistics from it (the step will be skipped
            # by the non-finite gradient check)
            self.counters["nonfinite_factors"] += 1
            for r in records:
                r.block.reset_batch()
            return
        # the statistics' rows: the probes and their back-propagation start there
        sub = output if rows is None else output.index_select(0, rows)
        if self.config.fisher_type == FisherType.EMPIRICAL:
            # the user's gradient carries c per term; the statistics want √w
            c = loss_scale(output, self.loss, self.config.reduction)
            if rows is None:
                scale = 1.0 / math.sqrt(c)
            else:
                w = subset_term_weight(output, sub, self.loss, self.config.reduction)
                scale = math.sqrt(w) / c
            Capture.watch(records)
            self._watched.extend((r, scale) for r in records)
            return
        probes = output_probes(
            sub,
            self.loss,
            self.config.reduction,
            self.config.fisher_type,
            mc_samples=self.config.mc_samples,
            generator=self._generator,
        )
        if rows is not None and self.config.reduction == Reduction.SUM:
            # the probes carry the subset's own c = 1; the sum's estimate is N/m·Σ
            w = math.sqrt(
                subset_term_weight(output, sub, self.loss, self.config.reduction)
            )
            probes = [v * w for v in probes]
        Capture.backprop_probes(sub, records, probes)
        for r in records:
            r.block.accumulate(r)

    def _update_factors(self) -> None:
        for record, scale in self._watched:
            record.block.accumulate(record, grad_scale=scale)
        self._watched.clear()
        rho = self.config.factor_decay
        cross = {} if self._chains is None else self._chains.batch()
        for chain in [] if self._chains is None else self._chains.broken:
            self._chain_factors.pop(chain, None)  # back to block-diagonal
        batch = []
        for key, block in self._blocks.blocks.items():
            rows = (block.rows_x, block.rows_g)
            batch.append((key, block, rows, block.batch_factors()))
        bad: set[str] | None = None  # the non-finite blocks, once known
        if self._dist is not None and self._capture.enabled and self._defer:
            # this rank's statistics into its own moving averages; the vote
            # tells which blocks every rank has, and which are non-finite on one
            nonfinite = self._nonfinite([s for *_, s in batch])
            agreed, bad = self._dist.agree([(k, s) for k, _, _, s in batch], nonfinite)
            keep = set(agreed)
            batch = [entry for entry in batch if entry[0] in keep]
        elif self._dist is not None and self._capture.enabled:
            # the global batch's statistics (the same on every rank)
            # the cross factors' batch statistics travel along, keyed by pair
            pairs = [] if self._chains is None else self._chains.pairs()
            extra = [(" | ".join(p), cross.get(p)) for p in pairs]
            glob = self._dist.reduce_statistics(
                [(k, s) for k, _, _, s in batch] + extra
            )
            batch = [(k, b, r, glob[k]) for k, b, r, _ in batch if k in glob]
            cross = {p: glob[" | ".join(p)] for p in pairs if " | ".join(p) in glob}
        else:
            batch = [entry for entry in batch if entry[3] is not None]
        if bad is None:
            flags = self._nonfinite([s for *_, s in batch])
            bad = {entry[0] for entry, b in zip(batch, flags, strict=True) if b}
        for key, block, rows, stats in batch:
            if key in bad:
                self.counters["nonfinite_factors"] += 1
                warnings.warn(
                    f"K-FAC: non-finite factor statistics for {key!r}; batch skipped",
                    stacklevel=3,
                )
                continue
            if block.keep_rows and self._chains is None and rows[0] and rows[1]:
                self._cg_rows[key] = (torch.cat(rows[0]), torch.cat(rows[1]))
            old = self._ema.get(key)
            if old is None:
                self._ema[key] = {k: v.clone() for k, v in stats.items()}
            else:
                for k, v in stats.items():
                    # ρ·old + (1−ρ)·v in one pass, as v + ρ(old − v); a new tensor,
                    # not in place: state_dict() and factors() hand out references
                    old[k] = torch.lerp(v, old[k], rho) if k in old else v.clone()
            if self._defer:
                self._unsynced.setdefault(key, set()).update(stats)
        if self._defer:
            self._sync_factors(every_step_only=True)
        if self._chains is not None and not bad:
            self._chains.update(cross, rho)

    @staticmethod
    def _nonfinite(stats: Sequence[dict[str, Tensor] | None]) -> list[bool]:
        """Per block, whether its statistics hold a NaN or infinity: one check
        (one host synchronisation) for all; per block only if it fails."""
        if all_finite(t for st in stats if st is not None for t in st.values()):
            return [False] * len(stats)
        return [st is not None and not all_finite(st.values()) for st in stats]

    def _sync_factors(self, every_step_only: bool = False) -> None:
        """Average the moving averages updated on this rank since they were last
        averaged over the ranks (``factor_sync="on_read"``; a collective: the
        updated set is the same on every rank). With ``every_step_only``, only
        the statistics read on every step (``every_step_stats``)."""
        if not self._unsynced:
            return
        assert self._dist is not None
        blocks = self._blocks.blocks
        entries = [
            (key, name)
            for key in blocks
            for name in sorted(self._unsynced.get(key, ()))
            if not every_step_only or name in blocks[key].every_step_stats
        ]
        if not entries:
            return
        means = self._dist.mean_tensors([self._ema[k][n] for k, n in entries])
        for (key, name), mean in zip(entries, means, strict=True):
            # a copy: the received buffer holds every statistic, and a view
            # would make state_dict() save all of it with each
            self._ema[key][name] = mean.clone()
            self._unsynced[key].discard(name)
            if not self._unsynced[key]:
                del self._unsynced[key]

    # ---------------------------------------------------------------- inverse
    def _damping_spec(self) -> Damping:
        wd = self.param_groups[0]["weight_decay"]
        return Damping(
            self.config.damping_type == DampingType.FACTORED, self.damping + wd
        )

    def _eigen(self, key: str) -> EigenInverse | None:
        block = self._blocks.blocks[key]
        a, s = block.kronecker(self._ema[key])
        eig_s = robust_eigh(s)
        if block.diagonal_a:
            eig_a = (a, None) if bool(torch.isfinite(a).all()) else None
        else:
            eig_a = robust_eigh(a)
        if eig_s is None or eig_a is None:
            return None
        return EigenInverse(eig_s[0], eig_s[1], eig_a[0], eig_a[1])

    def _build_inverse(self, key: str, damping: Damping) -> Inverse | None:
        block = self._blocks.blocks[key]
        if isinstance(block, RNNBlock) and block.chain:
            return ChainInverse.build(self._ema[key], damping)
        if self.config.inverse_method == InverseMethod.CHOLESKY:
            a, s = block.kronecker(self._ema[key])
            return CholeskyInverse.build(a, s, damping)
        return self._eigen(key)

    def _update_inverses(self) -> None:
        self._sync_factors()  # every rank decomposes the global factors
        damping = self._damping_spec()
        chained = self._update_chain_inverses(damping)  # on every rank
        ctx = self._dist
        if ctx is None:
            built = {
                key: self._build_inverse(key, damping)
                for key in self._ema
                if key not in chained
            }
            failed = [key for key, inv in built.items() if inv is None]
        else:
            owners = ctx.owners(self._decomposition_costs(chained))
            built = {
                key: self._build_inverse(key, damping)
                for key, rank in owners.items()
                if rank == ctx.rank
            }
            if ctx.world_size > 1 and ctx.layout != InverseLayout.REPLICATED:
                for key, inv in built.items():
                    if inv is not None:  # the receivers' (and a checkpoint's) layout
                        built[key] = contiguous_fields(inv)
            if self._owner_layout:
                failed = self._keep_owned(built, owners)
            else:
                if ctx.layout == InverseLayout.SHARED and ctx.world_size > 1:
                    for inv in built.values():
                        if inv is not None:
                            inv.two_sided(damping)  # the damped inverses, sent along
                    built = ctx.share_inverses(built, owners, self._device)
                failed = [key for key, inv in built.items() if inv is None]
        for key in failed:
            self.counters["inverse_failures"] += 1
            warnings.warn(
                f"K-FAC: inverse update failed for {key!r} (non-finite factor or "
                "failed decomposition, also in float64); keeping the previous one",
                stacklevel=3,
            )
        self._inverses.update((k, v) for k, v in built.items() if v is not None)

    def _decomposition_costs(self, chained: set[str]) -> dict[str, float]:
        """The cost of decomposing each block with factors, but those in
        block-tridiagonal ``chained`` (:func:`decomposition_cost`)."""
        return {
            key: decomposition_cost(self._blocks.blocks[key].kronecker(stats))
            for key, stats in self._ema.items()
            if key not in chained
        }

    def _keep_owned(
        self, built: dict[str, Inverse | None], owners: dict[str, int]
    ) -> list[str]:
        """The ``owner`` layout's bookkeeping after an inverse update: which
        blocks have a decomposition on their owner (every rank learns it), and
        this rank's decompositions reduced to the blocks it owns now.

        Returns:
            The keys (of every rank) whose decomposition failed.
        """
        assert self._dist is not None
        ok = self._dist.agree_built(
            {key: inv is not None for key, inv in built.items()}, owners
        )
        previous = self._owner_of
        # a failed block keeps its previous decomposition where its owner kept it
        kept = {k for k in self._inverse_keys if previous.get(k) == owners.get(k)}
        self._inverse_keys = ok | (kept & set(owners))
        self._owner_of = dict(owners)
        rank = self._dist.rank
        self._inverses = {
            k: v for k, v in self._inverses.items() if owners.get(k) == rank
        }
        return [key for key in owners if key not in ok]

    def _update_chain_inverses(self, damping: Damping) -> set[str]:
        """Rebuild the block-tridiagonal inverses; the keys they cover."""
        if self._chains is None:
            return set()
        covered = set()
        for chain in self._chains.chains:
            pairs = list(zip(chain[:-1], chain[1:], strict=True))
            if any(k not in self._ema for k in chain) or any(
                p not in self._chains.ema for p in pairs
            ):
                continue
            blocks = self._blocks.blocks
            factors = ChainFactors(
                chain,
                [blocks[k].kronecker(self._ema[k]) for k in chain],
                [(self._chains.ema[p]["A"], self._chains.ema[p]["S"]) for p in pairs],
                damping.gamma,
            )
            if factors.inverse() is None:
                self.counters["inverse_failures"] += 1
                warnings.warn(
                    f"K-FAC: block-tridiagonal inverse update failed for {chain!r}; "
                    "keeping the previous one",
                    stacklevel=4,
                )
            else:
                self._chain_factors[chain] = factors
            if chain in self._chain_factors:
                covered.update(chain)
        return covered

    def _chain_solutions(
        self, grads: dict[Tensor, Tensor]
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """``{key: (X, G)}`` of the block-tridiagonal chains (``X = F̂^{-1} G``,
        damped with the λ of their last inverse update)."""
        out: dict[str, tuple[Tensor, Tensor]] = {}
        blocks = self._blocks.blocks
        for chain, factors in self._chain_factors.items():
            params = [blocks[k].params() for k in chain]
            if any(p not in grads for ps in params for p in ps):
                continue
            inv = factors.inverse()
            if inv is None:
                continue
            mats = []
            for key, ps in zip(chain, params, strict=True):
                gs = [grads[p].to(inv.denom[0].dtype) for p in ps]
                mats.append(blocks[key].to_matrix(gs))
            for key, x, g in zip(chain, inv.apply(mats), mats, strict=True):
                out[key] = (x, g)
        return out

    # ------------------------------------------------------------ direction
    def _workspace_for(self, grads: dict[Tensor, Tensor]) -> Workspace | None:
        """The workspace of these gradients' parameters, or None if they do not
        fit one: every parameter of the group with a gradient, all of one float32
        or float64 dtype and one device, every block with ``split_views``, the
        blocks' solves two products (not CG-FAC). Built once; a step with another
        set of parameters with gradients takes the general path."""
        keys = tuple(grads)
        ws = self._workspace
        if ws is not None and _same(ws.params, keys):
            return ws
        miss = self._workspace_miss
        if miss is not None and _same(miss, keys):
            return None
        built = self._build_workspace(keys)
        if built is None:
            self._workspace_miss = keys
        else:
            self._workspace = built
        return built

    def _build_workspace(self, keys: tuple[Tensor, ...]) -> Workspace | None:
        group = self.param_groups[0]["params"]
        if self.config.inverse_method == InverseMethod.CG or not _same(keys, group):
            return None
        dtype, device = keys[0].dtype, keys[0].device
        if dtype not in _STAT_DTYPES or any(
            p.dtype != dtype or p.device != device for p in keys
        ):
            return None
        with_grad = {id(p) for p in keys}
        for _, block, ps in self._block_params:
            if not block.split_views or any(id(p) not in with_grad for p in ps):
                return None
        try:
            return Workspace(self._block_params, keys)
        except ValueError:
            return None

    def _preconditioned_in(
        self, ws: Workspace, grads: dict[Tensor, Tensor], damping: Damping
    ) -> _Direction | None:
        """:meth:`_preconditioned` in the workspace; None (nothing written) when a
        block has no inverse yet or one that is not two products.

        In the ``owner`` layout a block's own solve need not be two products (its
        owner applies it into the workspace), so that the choice of this path
        depends only on what every rank knows.
        """
        chains = []
        for chain, factors in self._chain_factors.items():
            inv = factors.inverse()
            if inv is None or inv.denom[0].dtype != ws.dtype:
                return None
            chains.append((chain, inv))
        chained = {k for c in self._chain_factors for k in c}
        sides: list[tuple[Tensor, Tensor] | Inverse | None] = []
        for key, _, _, _ in ws.blocks:
            if key in chained:
                sides.append(None)
            elif self._owner_layout:
                if not self._has_inverse(key):
                    return None
                sides.append(None if self._remote(key) else self._inverses[key])
            else:
                inv = self._inverses.get(key)
                pair = None if inv is None else inv.two_sided(damping)
                if pair is None or pair[0].dtype != ws.dtype:
                    return None
                sides.append(pair)
        ws.load(list(grads.values()))
        for i, side in enumerate(sides):
            if isinstance(side, tuple):
                ws.solve(i, *side)
            elif side is not None:
                self._solve_owned(ws, i, side, damping)
        views = {key: (g, x) for key, g, _, x in ws.blocks}
        if self._owner_layout:
            assert self._dist is not None
            targets = [(key, x) for key, _, _, x in ws.blocks if key not in chained]
            self._dist.share_directions(dict(targets), targets, self._owner_of)
        for chain, inv in chains:
            solved = inv.apply([views[k][0] for k in chain])
            for key, u in zip(chain, solved, strict=True):
                views[key][1].copy_(u)
        return _Direction(ws.per_param, [(ws.direction, ws.grad)], ws)

    @staticmethod
    def _solve_owned(ws: Workspace, index: int, inv: Inverse, damping: Damping) -> None:
        """Block ``index``'s ``X`` in the workspace from its decomposition: two
        products where it has them in the workspace's dtype, else its ``apply``."""
        pair = inv.two_sided(damping)
        if pair is not None and pair[0].dtype == ws.dtype:
            ws.solve(index, *pair)
            return
        _, g, _, x = ws.blocks[index]
        dtype = pair[0].dtype if pair is not None else _inverse_dtype(inv)
        x.copy_(inv.apply(g.to(dtype), damping))

    def _preconditioned(self, grads: dict[Tensor, Tensor]) -> _Direction:
        """``P^{-1} g`` for every parameter (plain g outside blocks).

        Also returns ``(v, g)`` pairs that cover every parameter exactly once, for
        ``vᵀg`` and the finiteness check: a block's pair is its ``(out, in')``
        matrices ``(X, G)``, one tensor each instead of one per parameter. This is
        exact because ``split_update`` is the adjoint of ``to_matrix`` for every
        block (``Σ_p ⟨split(X)_p, g_p⟩ = ⟨X, to_matrix(g)⟩``; tested). In the
        workspace (when the gradients fit one) the single pair is the flat
        ``(X, G)`` of all parameters. In the ``owner`` layout each rank solves
        its own blocks and receives the others' ``X`` from their owners.
        """
        damping = self._damping_spec()
        ws = self._workspace_for(grads)
        if ws is not None:
            direction = self._preconditioned_in(ws, grads, damping)
            if direction is not None:
                return direction
        solved = self._block_solutions(grads, damping)
        out = dict(grads)
        pairs: list[tuple[Tensor, Tensor]] = []
        covered: set[Tensor] = set()
        for key, block, ps, gs, x, mat in solved:
            ups = block.split_update(x)  # parameter-shaped
            for p, u in zip(ps, ups, strict=False):
                out[p] = u if u.dtype == p.dtype else u.to(p.dtype)
            pairs.append((x, mat))
            covered.update(ps[: len(ups)])
            if isinstance(block, TiedEmbeddingBlock) and len(ps) == 2:
                s_head = self._ema.get(key, {}).get("Sh")
                if s_head is not None:
                    b = ps[1]
                    out[b] = (gs[1] / (s_head + damping.gamma)).to(b.dtype)
                    pairs.append((out[b], grads[b]))
                    covered.add(b)
        pairs += [(g, g) for p, g in grads.items() if p not in covered]
        return _Direction(out, pairs)

    def _block_solutions(
        self, grads: dict[Tensor, Tensor], damping: Damping
    ) -> list[
        tuple[str, CurvatureBlock, tuple[Tensor, ...], list[Tensor], Tensor, Tensor]
    ]:
        """``(key, block, params, grads, X, G)`` of every block that has a
        solution, in block order: ``G`` the gradient matrix, ``X`` its solve
        (a chain's, CG-FAC's, or the block's decomposition's; in the ``owner``
        layout the owner's, received)."""
        solved = []
        use_cg = self.config.inverse_method == InverseMethod.CG
        chained = self._chain_solutions(grads)
        targets: list[tuple[str, Tensor]] = []
        for key, block, ps in self._block_params:
            if any(p not in grads for p in ps):
                continue
            dtype = stat_dtype_for(ps[0].dtype)
            gs = [grads[p] for p in ps]
            if any(g.dtype != dtype for g in gs):
                gs = [g.to(dtype) for g in gs]
            if key in chained:
                x, mat = chained[key]
                solved.append((key, block, ps, gs, x, mat))
                continue
            mat = block.to_matrix(gs)
            chain = isinstance(block, RNNBlock) and block.chain
            if use_cg and block.supports_cg and not chain:
                rows = self._cg_rows.get(key)
                if rows is None:
                    continue
                x, iters = cg_fac_solve(
                    mat,
                    rows[0],
                    rows[1],
                    damping,
                    x0=self._cg_solutions.get(key),
                    max_iter=self.config.cg_max_iter,
                    rtol=self.config.cg_rtol,
                )
                self.counters["cg_iterations"] += iters
                self._cg_solutions[key] = x
            elif not self._has_inverse(key):
                continue
            elif self._remote(key):
                # the owner's, received below (contiguous, like the owner's)
                x = torch.empty(mat.shape, dtype=mat.dtype, device=mat.device)
            else:
                x = self._inverses[key].apply(mat, damping)
            if self._owner_layout:
                # the dtype and memory layout every rank has: a later product or
                # sum over a view of X rounds alike on all ranks only if the
                # layout is the same
                x = x.to(mat.dtype).contiguous()
                targets.append((key, x))
            solved.append((key, block, ps, gs, x, mat))
        if self._owner_layout:
            assert self._dist is not None
            self._dist.share_directions(dict(targets), targets, self._owner_of)
        return solved

    @staticmethod
    def _checked_dot(
        pairs: list[tuple[Tensor, Tensor]], with_grads: bool, with_dot: bool
    ) -> tuple[bool, float]:
        """Whether every ``v`` (and ``g`` if ``with_grads``) is finite, and ``vᵀg``.

        With the dot products (KL clip on) they are the check, in one host
        synchronisation: a NaN or infinite element of ``v`` or ``g`` makes its
        pair's ``⟨v, g⟩`` NaN or infinite (``±inf · 0`` is NaN), so finite products
        prove finite tensors. Only a non-finite product (or none computed) has the
        extremes of every tensor examined, which also tells an overflowed product
        of finite tensors (then ``vᵀg = ±inf`` and the clip is off) from a
        non-finite tensor.
        """
        vg = 0.0
        if with_dot and pairs:
            dots = [torch.dot(v.reshape(-1), g.reshape(-1)) for v, g in pairs]
            values = [dots[0].item()] if len(dots) == 1 else torch.stack(dots).tolist()
            vg = sum(values)
            if all(math.isfinite(d) for d in values):
                return True, vg
        checks: list[Tensor] = []
        for v, g in pairs:
            checks.append(v)
            if with_grads and g is not v:
                checks.append(g)
        return all_finite(checks), vg

    # ----------------------------------------------------------- curvature
    def _jvp(self, tangents: list[dict[str, Tensor]]) -> tuple[Tensor, list[Tensor]]:
        """Model output on the last captured batch and ``J v`` per tangent."""
        if self._capture.last_inputs is None:
            raise RuntimeError(
                "step_rule='qmodel' / adapt_damping need a training-mode forward "
                "pass of the model before step()"
            )
        args, kwargs = self._capture.last_inputs
        names = [n for n, _ in self.model.named_parameters()]
        primals = {n: p.detach() for n, p in self.model.named_parameters()}
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}

        def fn(params: dict[str, Tensor]) -> Tensor:
            return functional_call(self.model, (params, buffers), args, kwargs)

        outs = []
        output = None
        with self._capture.suspend():
            for tan in tangents:
                full = {n: tan.get(n, torch.zeros_like(primals[n])) for n in names}
                try:
                    output, jv = jvp(fn, (primals,), (full,))
                except (RuntimeError, NotImplementedError):
                    output, jv = self._jvp_double_backward(fn, primals, full)
                outs.append(jv.detach())
        assert output is not None
        return output.detach(), outs

    @staticmethod
    def _jvp_double_backward(
        fn: Callable[[dict[str, Tensor]], Tensor],
        primals: dict[str, Tensor],
        tangent: dict[str, Tensor],
    ) -> tuple[Tensor, Tensor]:
        """``J v`` by differentiating the (linear in u) VJP ``Jᵀu`` w.r.t. u."""
        with torch.enable_grad():
            ps = {n: p.detach().requires_grad_(True) for n, p in primals.items()}
            out = fn(ps)
            u = torch.zeros_like(out, requires_grad=True)
            vjp = torch.autograd.grad(out, list(ps.values()), u, create_graph=True)
            dot = sum((g * tangent[n]).sum() for n, g in zip(ps, vjp, strict=True))
            (jv,) = torch.autograd.grad(dot, u)
        return out.detach(), jv

    def _named(self, per_param: dict[Tensor, Tensor]) -> dict[str, Tensor]:
        return {
            n: per_param[p] for n, p in self.model.named_parameters() if p in per_param
        }

    def _quadratic_terms(self, vecs: list[dict[Tensor, Tensor]]) -> list[list[float]]:
        """Gram matrix ``vᵢᵀ(F + (λ+η)I)vⱼ`` of the given update directions."""
        output, jvs = self._jvp([self._named(v) for v in vecs])
        gamma = self._damping_spec().gamma
        n = len(vecs)
        pairs = [(i, j) for i in range(n) for j in range(i, n)]
        forms = [
            float(
                output_hessian_form(
                    output, jvs[i], jvs[j], self.loss, self.config.reduction
                )
            )
            for i, j in pairs
        ]
        if self._dist is not None:
            forms = self._dist.mean(forms)  # each rank's batch: the global mean
        gram = [[0.0] * n for _ in range(n)]
        for (i, j), fij in zip(pairs, forms, strict=True):
            dot = sum(float((vecs[i][p] * vecs[j][p]).sum()) for p in vecs[i])
            gram[i][j] = gram[j][i] = fij + gamma * dot
        return gram

    # ------------------------------------------------------------------ step
    def _skip(self, why: str) -> None:
        self.counters["skipped_steps"] += 1
        warnings.warn(f"K-FAC: step skipped ({why})", stacklevel=3)
        for block in self._blocks.blocks.values():
            block.reset_batch()
        if self._dist is not None:
            self._dist.pending_rows = 0
        self._watched.clear()
        self._capture.take_records()
        self._arm()

    @torch.no_grad()
    def step(
        self,
        closure: Callable[[], Tensor | float] | None = None,
        *,
        loss: Tensor | float | None = None,
    ) -> Tensor | float | None:
        """Update the parameters from their ``.grad``.

        Args:
            closure: Optional; re-evaluates and returns the loss on the current
                batch *without* calling ``backward`` (it is run under
                ``torch.no_grad``). Used by ``adapt_damping``.
            loss: Optional loss value of this batch; a non-finite value skips the
                step (as non-finite gradients do). Under a process group it is
                averaged over the ranks first (a non-finite value on one rank
                skips the step on all).

        Returns:
            The loss before the update if it was evaluated, else ``loss`` (under a
            process group: their mean over the ranks, a float).
        """
        lm_due = (
            self.config.adapt_damping
            and closure is not None
            and self.steps % self.config.lm_interval == 0
        )
        if lm_due:
            with self._capture.suspend():
                loss = closure()
        if loss is not None and self._dist is not None:
            loss = self._dist.mean([float(loss)])[0]  # NaN on one rank: on all
        if loss is not None and not math.isfinite(float(loss)):
            self._skip("non-finite loss")
            return loss
        group = self.param_groups[0]
        lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
        grads: dict[Tensor, Tensor] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad.to_dense() if p.grad.is_sparse else p.grad
            grads[p] = g.detach() if g.requires_grad else g
        raw = grads  # without weight decay, for the skip message
        # factors or inverses to update: the gradient is checked first, so that a
        # skipped step leaves them untouched; otherwise one check after the solve
        # covers the gradient and the direction
        pending = self._capture.enabled or bool(self._watched) or self._inverse_due()
        if pending and not all_finite(grads.values()):
            self._skip("non-finite gradient")
            return loss
        if wd > 0:
            grads = {p: g + wd * p.detach() for p, g in grads.items()}
        if pending:
            self._update_factors()
            if self._inverse_due():
                self._update_inverses()
        direction = self._preconditioned(grads)
        fixed = self.config.step_rule == StepRule.FIXED
        finite, vg = self._checked_dot(
            direction.pairs,
            with_grads=not pending,
            with_dot=fixed and self.config.kl_clip is not None,
        )
        if not finite:
            if not pending and not all_finite(raw.values()):
                self._skip("non-finite gradient")
            else:
                self._skip("non-finite preconditioned gradient")
            return loss
        if fixed:
            nu = kl_clip_factor(self.config.kl_clip, lr, vg)
            params, bufs = self._momentum(direction, nu, beta)
            torch._foreach_add_(params, bufs, alpha=-lr)
            if lm_due:
                update = {p: -lr * b for p, b in zip(params, bufs, strict=True)}
                self._adapt_damping(closure, loss, grads, update, None)
        else:
            update, model_value = self._qmodel_update(grads, direction.per_param)
            for p, u in update.items():
                p.add_(u)
            if lm_due:
                self._adapt_damping(closure, loss, grads, update, model_value)
        self.steps += 1
        self._arm()
        return loss

    def _has_inverse(self, key: str) -> bool:
        """Whether block ``key`` has a decomposition (on its owner, in the
        ``owner`` layout; every rank gives the same answer)."""
        if self._owner_layout:
            return key in self._inverse_keys
        return key in self._inverses

    def _remote(self, key: str) -> bool:
        """Whether another rank owns block ``key`` (``owner`` layout only)."""
        if not self._owner_layout:
            return False
        assert self._dist is not None
        return self._owner_of[key] != self._dist.rank

    def _inverse_due(self) -> bool:
        """Whether this step decomposes the factors (also when one is missing)."""
        if (
            self.config.inverse_method == InverseMethod.CG
            and self.config.rnn_approx != RNNApprox.CHAIN
        ):
            return False
        chained = {k for c in self._chain_factors for k in c}
        return self.steps % self.config.inverse_interval == 0 or any(
            not self._has_inverse(k) and k not in chained for k in self._ema
        )

    def _momentum(
        self, direction: _Direction, nu: float, beta: float
    ) -> tuple[list[Tensor], list[Tensor]]:
        """``m ← βm + νv`` for every parameter, in place (one fused call for all;
        in a workspace, two calls on its flat buffers).

        Returns:
            The parameters and their momentum buffers, in the same order.
        """
        ws = direction.workspace
        if ws is not None:
            ws.adopt_momentum(self.state)
            ws.momentum.mul_(beta).add_(ws.direction, alpha=nu)
            return ws.params, ws.momentum_views
        params, bufs, dirs = [], [], []
        for p, v in direction.per_param.items():
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                state["momentum_buffer"] = v * nu if nu != 1.0 else v.clone()
            else:
                bufs.append(buf)
                dirs.append(v)
            params.append(p)
        if bufs:
            torch._foreach_mul_(bufs, beta)
            torch._foreach_add_(bufs, dirs, alpha=nu)
        return params, [self.state[p]["momentum_buffer"] for p in params]

    def _qmodel_update(
        self, grads: dict[Tensor, Tensor], direction: dict[Tensor, Tensor]
    ) -> tuple[dict[Tensor, Tensor], float]:
        proposal = {p: -d for p, d in direction.items()}
        prev = {p: self.state[p].get("qmodel_prev") for p in grads}
        has_prev = all(v is not None for v in prev.values())
        vecs = [proposal] + ([prev] if has_prev else [])
        gram = self._quadratic_terms(vecs)
        b1 = sum(float((grads[p] * proposal[p]).sum()) for p in grads)
        if has_prev:
            b2 = sum(float((grads[p] * prev[p]).sum()) for p in grads)
            alpha, mu, value = qmodel_coefficients(
                gram[0][0], gram[0][1], gram[1][1], b1, b2
            )
        else:
            alpha, mu, value = qmodel_coefficients(gram[0][0], 0.0, 0.0, b1, 0.0)
        update = {}
        for p in grads:
            u = alpha * proposal[p]
            if has_prev and mu != 0.0:
                u = u + mu * prev[p]
            update[p] = u
            self.state[p]["qmodel_prev"] = u.clone()
        self.last_alpha, self.last_mu = alpha, mu
        return update, value

    def _adapt_damping(
        self,
        closure: Callable[[], Tensor | float],
        loss_before: Tensor | float | None,
        grads: dict[Tensor, Tensor],
        update: dict[Tensor, Tensor],
        model_value: float | None,
    ) -> None:
        if model_value is None:
            gram = self._quadratic_terms([update])
            lin = sum(float((grads[p] * u).sum()) for p, u in update.items())
            model_value = 0.5 * gram[0][0] + lin
        with self._capture.suspend():
            loss_after = float(closure())
        if self._dist is not None:
            loss_after = self._dist.mean([loss_after])[0]
        rho = (
            (loss_after - float(loss_before)) / model_value if model_value < 0 else -1.0
        )
        self.last_rho = rho
        self.damping = lm_adjust(
            self.damping,
            rho,
            self.lm_omega,
            self.config.min_damping,
            self.config.max_damping,
        )

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Base optimizer state plus everything K-FAC needs to resume bit-for-bit.

        Includes the factor moving averages, the current decompositions, λ, the
        step count, counters, CG warm starts and the RNG states of the MC sampler and
        of the ``stats_batch_size`` row sampler. Take it
        between steps: statistics captured by a forward pass since the last
        ``step()`` (a training-mode forward with autograd on is captured for the
        next step — evaluate under ``torch.no_grad()``) are not included.

        In the ``owner`` layout the decompositions are spread over the ranks, and
        this is a collective: every rank must call it (each gets every
        decomposition, broadcast by its owner; rank 0 writes the file). So it is
        with ``factor_sync="on_read"`` when the factors changed since they were
        last averaged over the ranks (:meth:`sync_factors`).
        """
        self._sync_factors()
        sd = super().state_dict()
        inverses = {}
        for key, inv in self._all_inverses().items():
            kind = next(k for k, t in _INVERSE_TYPES.items() if isinstance(inv, t))
            inverses[key] = {
                "kind": kind,
                **{f: _own(getattr(inv, f)) for f in inv.__dataclass_fields__},
            }
        sd["kfac"] = {
            "steps": self.steps,
            "damping": self.damping,
            "counters": dict(self.counters),
            "last_rho": self.last_rho,
            "ema": {k: dict(v) for k, v in self._ema.items()},
            "inverses": inverses,
            "cg_rows": dict(self._cg_rows),
            "cg_solutions": dict(self._cg_solutions),
            "generator": self._generator.get_state(),
            "row_generator": self._row_generator.get_state(),
        }
        if self._chains is not None:
            sd["kfac"]["tridiagonal"] = {
                **self._chains.state_dict(),
                "factors": {
                    c: (f.diagonal, f.cross, f.gamma)
                    for c, f in self._chain_factors.items()
                },
            }
        return sd

    def _all_inverses(self) -> dict[str, Inverse]:
        """Every block's decomposition on this rank: in the ``owner`` layout
        gathered from the owners (a collective), else this rank's own."""
        if not self._owner_layout:
            return dict(self._inverses)
        assert self._dist is not None
        owners = {k: r for k, r in self._owner_of.items() if k in self._inverse_keys}
        local = {k: v for k, v in self._inverses.items() if k in owners}
        gathered = self._dist.share_inverses(local, owners, self._device)
        return {k: v for k, v in gathered.items() if v is not None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (tensors moved to the model's device)."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("kfac")
        super().load_state_dict(state_dict)
        device = self.param_groups[0]["params"][0].device

        def move(t: Any) -> Any:
            return t.to(device) if isinstance(t, Tensor) else t

        self.steps = int(extra["steps"])
        self.damping = float(extra["damping"])
        self.counters = dict(extra["counters"])
        self.last_rho = float(extra["last_rho"])
        self._ema = {
            k: {n: move(t) for n, t in v.items()} for k, v in extra["ema"].items()
        }
        self._unsynced = {}  # the checkpoint's averages are the global ones
        self._inverses = {}
        for key, fields in extra["inverses"].items():
            fields = dict(fields)
            cls = _INVERSE_TYPES[fields.pop("kind")]
            self._inverses[key] = cls(**{f: move(t) for f, t in fields.items()})
        self._cg_rows = {
            k: (move(a), move(b)) for k, (a, b) in extra["cg_rows"].items()
        }
        self._cg_solutions = {k: move(v) for k, v in extra["cg_solutions"].items()}
        self._generator.set_state(extra["generator"])
        if "row_generator" in extra:  # checkpoints from before stats_batch_size
            self._row_generator.set_state(extra["row_generator"])
        tri = extra.get("tridiagonal")
        if self._chains is not None and tri is not None:
            self._chains.load_state_dict(tri, device)
            self._chain_factors = {
                tuple(c): ChainFactors(
                    tuple(c),
                    [(move(a), move(s)) for a, s in diag],
                    [(move(a), move(s)) for a, s in cross],
                    float(gamma),
                )
                for c, (diag, cross, gamma) in tri["factors"].items()
            }
        if self._owner_layout:
            self._own_loaded_inverses()
        self._arm()

    def _own_loaded_inverses(self) -> None:
        """The ``owner`` layout after a load: the owners of the loaded blocks
        (as the next inverse update assigns them), and only this rank's kept."""
        assert self._dist is not None
        chained = {k for c in self._chain_factors for k in c}
        self._owner_of = dict(self._dist.owners(self._decomposition_costs(chained)))
        self._inverse_keys = set(self._inverses) & set(self._owner_of)
        rank = self._dist.rank
        self._inverses = {
            k: v for k, v in self._inverses.items() if self._owner_of.get(k) == rank
        }
