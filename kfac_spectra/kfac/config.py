"""The options of the K-FAC optimizer, validated once, as one frozen value.

``KFAC(model, lr=0.1, ...)`` builds a :class:`KFACConfig` from its keywords;
``KFAC(model, config=KFACConfig(...))`` takes one built elsewhere (a training
configuration, a sweep). Construction coerces the string options to their enums and
checks every value, so an invalid option fails with a one-line ``ValueError`` naming
it before any hook is registered.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from . import enums
from .distributed import FactorSync, InverseLayout
from .enums import coerce_enum

__all__ = ["KFACConfig"]

# option name -> its enum; the values are coerced in __post_init__
_ENUM_FIELDS: dict[str, type] = {
    "loss": enums.LossType,
    "reduction": enums.Reduction,
    "fisher_type": enums.FisherType,
    "kfac_approx": enums.KFACApprox,
    "rnn_approx": enums.RNNApprox,
    "inverse_method": enums.InverseMethod,
    "damping_type": enums.DampingType,
    "step_rule": enums.StepRule,
    "structure": enums.Structure,
    "inverse_layout": InverseLayout,
    "factor_sync": FactorSync,
}


def _check(name: str, value: Any, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: must be {what}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class KFACConfig:
    """The options of :class:`~kfac_spectra.kfac.optimizer.KFAC`.

    String options are stored as their enums (``"ce"`` becomes ``LossType.CE``) and
    ``skip_modules`` as a tuple, so two configs with the same options compare equal.

    Attributes:
        loss: ``"ce"``, ``"mse"`` or ``"bce"``; the training loss must be
            ``F.cross_entropy(out.reshape(-1, C), y.reshape(-1), reduction=...)``,
            ``F.mse_loss(out, y, reduction=...)`` or
            ``F.binary_cross_entropy_with_logits(out, y, reduction=...)``.
        lr: Learning rate α (``step_rule="fixed"``), finite and ≥ 0.
        momentum: Heavy-ball β (``step_rule="fixed"``), in [0, 1).
        damping: Initial λ > 0.
        weight_decay: η ≥ 0, an L2 term ``η/2 ||θ||²`` added to the objective.
        reduction: ``"mean"`` or ``"sum"`` — how the loss is reduced.
        fisher_type: ``"mc"`` (default), ``"type2"`` or ``"empirical"``.
        mc_samples: Sampled targets per term for MC (≥ 1).
        kfac_approx: ``"expand"`` or ``"reduce"`` for weight-sharing layers.
        rnn_approx: ``"independent"`` or ``"chain"`` for RNN/LSTM layers.
        factor_decay: ρ of the factor moving averages, in [0, 1).
        factor_interval: Steps between factor captures (≥ 1).
        stats_batch_size: ``None`` (default): factor statistics from the whole
            mini-batch. An int m ≥ 1: from m of its N examples (all of them when
            N ≤ m), drawn uniformly without replacement by the optimizer's seeded
            row generator (checkpointed); the gradient still uses all N. Cuts the
            statistics' cost (the input factors' Gram matrices, the gradient rows)
            by about m/N; the extra probe backward still runs over the whole batch
            (autograd does not skip zero rows). Needs the examples along dim 0 of
            the model output and along every layer's batch dimension (one example
            may not be mixed into another's activations, e.g. by batch norm).
        inverse_interval: Steps between inverse updates (≥ 1).
        inverse_method: ``"eigh"`` (default), ``"cholesky"`` or ``"cg"``.
        damping_type: ``"factored"`` (π heuristic, default) or ``"tikhonov"``
            (not with ``inverse_method="cholesky"``).
        step_rule: ``"fixed"`` or ``"qmodel"``.
        kl_clip: κ > 0 for KL clipping (``None`` disables). On by default
            (κ = 1e-3, the value of Ba et al., 2017): it bounds the predicted
            change ``α² νvᵀg`` of each step, so that a small damping (λ = 1e-3)
            with a large learning rate (0.1) cannot take the huge steps along
            weak-curvature directions with which K-FAC otherwise diverges in its
            first iterations.
        adapt_damping: Levenberg–Marquardt adaptation of λ (needs a closure).
        lm_interval: T₁, steps between λ adaptations (≥ 1).
        min_damping: Lower clamp for adapted λ, in (0, damping].
        max_damping: Upper clamp for adapted λ, ≥ damping.
        cg_max_iter: CG-FAC iteration cap (≥ 1).
        cg_rtol: CG-FAC relative residual tolerance (> 0).
        seed: Seeds the MC sampling generator and (derived from it) the row
            generator of ``stats_batch_size``; both states are checkpointed.
        skip_modules: Qualified module names left to the plain gradient.
        process_group: Data-parallel training (see
            :mod:`~kfac_spectra.kfac.distributed`): ``None`` (default) uses the
            default group when ``torch.distributed`` is initialised, else one
            process; ``False`` forces one process; ``True`` requires the default
            group; or a ``torch.distributed.ProcessGroup``. The model may be
            wrapped in ``DistributedDataParallel`` or plain with its gradients
            averaged by the user: either way they are taken as averaged (never
            averaged again), and the factor statistics, the losses and the
            curvature terms are made global.
        inverse_layout: ``"shared"`` (default: each block decomposed by one rank,
            balanced by cost, and broadcast), ``"replicated"`` (every rank
            decomposes every block, nothing sent) or ``"owner"`` (each block's
            owner alone keeps its decomposition and broadcasts the block's
            preconditioned gradient on every step; ``state_dict()`` is then a
            collective). The bytes each sends per step are tabled in
            :mod:`~kfac_spectra.kfac.distributed`.
        factor_sync: ``"on_read"`` (default: each rank keeps the moving average
            of its own statistics, and the ranks average them only when they
            are read, e.g. before each inverse update: ``factor_interval /
            inverse_interval`` of the bytes; ``factors()``, ``eigenbases()`` and
            ``state_dict()`` are then collectives, or call ``sync_factors()`` on
            every rank first) or ``"every_update"`` (the statistics are
            averaged on every factor update). Block-tridiagonal chains always
            average on every update.
        structure: ``"block_diagonal"`` (default) or ``"block_tridiagonal"``:
            chains of ``nn.Linear`` layers in an ``nn.Sequential`` with
            element-wise maps between them get the block-tridiagonal inverse of
            Martens & Grosse (2015, §4.3; :mod:`~kfac_spectra.kfac.tridiagonal`),
            every other layer block-diagonal K-FAC (with a warning naming it).
            Needs ``damping_type="factored"`` and ``inverse_method`` ``"eigh"``
            or ``"cholesky"``.

    Raises:
        ValueError: Naming the first invalid option.

    References:
        Martens & Grosse (2015), §6.5–6.6 (damping) and §8 (statistics from a
        subset of the mini-batch); Ba, Grosse & Martens (2017) (KL clipping);
        Chen (2021) (CG-FAC).
    """

    loss: enums.LossType | str = enums.LossType.CE
    lr: float = 0.1
    momentum: float = 0.9
    damping: float = 1e-3
    weight_decay: float = 0.0
    reduction: enums.Reduction | str = enums.Reduction.MEAN
    fisher_type: enums.FisherType | str = enums.FisherType.MC
    mc_samples: int = 1
    kfac_approx: enums.KFACApprox | str = enums.KFACApprox.EXPAND
    rnn_approx: enums.RNNApprox | str = enums.RNNApprox.INDEPENDENT
    factor_decay: float = 0.95
    factor_interval: int = 1
    stats_batch_size: int | None = None
    inverse_interval: int = 10
    inverse_method: enums.InverseMethod | str = enums.InverseMethod.EIGH
    damping_type: enums.DampingType | str = enums.DampingType.FACTORED
    step_rule: enums.StepRule | str = enums.StepRule.FIXED
    kl_clip: float | None = 1e-3
    adapt_damping: bool = False
    lm_interval: int = 5
    min_damping: float = 1e-8
    max_damping: float = 1e3
    cg_max_iter: int = 100
    cg_rtol: float = 1e-6
    seed: int = 0
    skip_modules: Sequence[str] = ()
    process_group: Any = None
    inverse_layout: InverseLayout | str = InverseLayout.SHARED
    factor_sync: FactorSync | str = FactorSync.ON_READ
    structure: enums.Structure | str = enums.Structure.BLOCK_DIAGONAL

    def __post_init__(self) -> None:
        self._check_numbers()
        for name, enum_cls in _ENUM_FIELDS.items():
            value = coerce_enum(enum_cls, getattr(self, name), name)
            object.__setattr__(self, name, value)
        if isinstance(self.skip_modules, str):
            # a lone name would otherwise be read as its characters
            object.__setattr__(self, "skip_modules", (self.skip_modules,))
        object.__setattr__(self, "skip_modules", tuple(self.skip_modules))
        if (
            self.inverse_method == enums.InverseMethod.CHOLESKY
            and self.damping_type == enums.DampingType.TIKHONOV
        ):
            raise ValueError(
                "damping_type='tikhonov' needs inverse_method='eigh' or 'cg', "
                "not 'cholesky'"
            )
        if self.structure == enums.Structure.BLOCK_TRIDIAGONAL and (
            self.damping_type != enums.DampingType.FACTORED
            or self.inverse_method == enums.InverseMethod.CG
        ):
            raise ValueError(
                "structure='block_tridiagonal' needs damping_type='factored' and "
                "inverse_method 'eigh' or 'cholesky'"
            )

    def _check_numbers(self) -> None:
        lr, damping = self.lr, self.damping
        _check("lr", lr, lr >= 0 and math.isfinite(lr), "finite and >= 0")
        _check("momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)")
        _check("damping", damping, damping > 0 and math.isfinite(damping), "> 0")
        _check("weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0")
        _check("mc_samples", self.mc_samples, self.mc_samples >= 1, ">= 1")
        _check(
            "factor_decay", self.factor_decay, 0 <= self.factor_decay < 1, "in [0, 1)"
        )
        _check(
            "factor_interval", self.factor_interval, self.factor_interval >= 1, ">= 1"
        )
        m = self.stats_batch_size
        _check(
            "stats_batch_size",
            m,
            m is None or (_is_int(m) and m >= 1),
            "None or an int >= 1",
        )
        for name in ("inverse_interval", "lm_interval"):
            value = getattr(self, name)
            _check(name, value, value >= 1, ">= 1")
        kl = self.kl_clip
        _check("kl_clip", kl, kl is None or kl > 0, "None or > 0")
        _check(
            "min_damping",
            self.min_damping,
            0 < self.min_damping <= damping,
            "in (0, λ]",
        )
        _check(
            "max_damping", self.max_damping, self.max_damping >= damping, ">= damping"
        )
        _check("cg_max_iter", self.cg_max_iter, self.cg_max_iter >= 1, ">= 1")
        _check("cg_rtol", self.cg_rtol, self.cg_rtol > 0, "> 0")
