"""Option enums for K-FAC, and a helper that accepts an enum or its string value.

Every option of the K-FAC code is a ``str`` Enum, so ``LossType.CE`` and ``"ce"`` are
interchangeable wherever an option is accepted.
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import TypeVar

__all__ = [
    "DampingType",
    "FisherType",
    "InverseMethod",
    "KFACApprox",
    "LossType",
    "Reduction",
    "RNNApprox",
    "StepRule",
    "Structure",
    "coerce_enum",
]


class LossType(StrEnum):
    """The loss whose curvature K-FAC approximates.

    ``MSE`` is ``torch.nn.functional.mse_loss`` (the negative log-likelihood of a
    Gaussian with variance 1/2, so its Hessian in the output is 2 I); ``CE`` is
    ``torch.nn.functional.cross_entropy`` on logits whose last dimension is the class;
    ``BCE`` is ``torch.nn.functional.binary_cross_entropy_with_logits`` (one
    Bernoulli term per output element, e.g. the logistic output units of an
    autoencoder).
    """

    MSE = "mse"
    CE = "ce"
    BCE = "bce"


class Reduction(StrEnum):
    """How the per-term losses are combined, exactly as in ``torch.nn.functional``."""

    MEAN = "mean"
    SUM = "sum"


class FisherType(StrEnum):
    """Which output-gradient statistics form the factor S.

    ``TYPE2``: exact, one backward pass per column of the square root of the output
    Hessian (the GGN's Kronecker factors). ``MC``: targets sampled from the model's
    predictive distribution (the "true" Fisher, default). ``EMPIRICAL``: the observed
    targets (the empirical Fisher).
    """

    TYPE2 = "type2"
    MC = "mc"
    EMPIRICAL = "empirical"


class KFACApprox(StrEnum):
    """K-FAC flavour for linear weight-sharing layers (Eschenhagen et al., 2023).

    ``EXPAND`` treats each shared position (sequence element, spatial location, call)
    as an extra example; ``REDUCE`` averages inputs and sums output gradients over the
    shared positions of an example before forming the factors.
    """

    EXPAND = "expand"
    REDUCE = "reduce"


class InverseMethod(StrEnum):
    """How ``(S ⊗ A + damping)^{-1} g`` is computed."""

    EIGH = "eigh"
    CHOLESKY = "cholesky"
    CG = "cg"


class DampingType(StrEnum):
    """Damping of the Kronecker block.

    ``FACTORED``: ``(S + γ/π I) ⊗ (A + πγ I)`` with γ = sqrt(λ + η) and the π
    heuristic (Martens & Grosse, 2015, §6.3). ``TIKHONOV``: ``S ⊗ A + (λ + η) I``
    exactly (needs eigendecompositions or CG).
    """

    FACTORED = "factored"
    TIKHONOV = "tikhonov"


class StepRule(StrEnum):
    """How the preconditioned direction becomes a parameter update.

    ``FIXED``: heavy-ball momentum ``m <- βm + ν P^{-1} g; θ <- θ - α m`` with a fixed
    learning rate and optional KL clipping ν. ``QMODEL``: the step ``δ = αΔ + μδ₀``
    whose (α, μ) minimise the exact quadratic model of the loss (Martens & Grosse,
    2015, §6.4 and §7), evaluated with Fisher/GGN-vector products.
    """

    FIXED = "fixed"
    QMODEL = "qmodel"


class Structure(StrEnum):
    """Which blocks of the inverse Fisher K-FAC keeps (Martens & Grosse 2015, §4).

    ``BLOCK_DIAGONAL``: one Kronecker block per layer (§4.2). ``BLOCK_TRIDIAGONAL``:
    chains of linear layers also keep the blocks between neighbouring layers, the
    inverse of a directed Gaussian chain (§4.3; see
    :mod:`kfac_spectra.kfac.tridiagonal`); other layers stay block-diagonal.
    """

    BLOCK_DIAGONAL = "block_diagonal"
    BLOCK_TRIDIAGONAL = "block_tridiagonal"


class RNNApprox(StrEnum):
    """Curvature approximation for recurrent layers (Martens et al., 2018).

    ``INDEPENDENT`` treats time steps as independent examples (their Option 1 /
    K-FAC-expand over time). ``CHAIN`` models the temporal correlation of the
    per-step gradient contributions with a stationary chain-structured linear
    Gaussian model and inverts the resulting Fisher in closed form.
    """

    INDEPENDENT = "independent"
    CHAIN = "chain"


E = TypeVar("E", bound=Enum)


def coerce_enum(enum_cls: type[E], value: E | str, name: str) -> E:
    """Return ``value`` as a member of ``enum_cls``.

    Args:
        enum_cls: The ``str`` Enum class.
        value: A member or its string value.
        name: The parameter name, used in the error message.

    Returns:
        The enum member.

    Raises:
        ValueError: If ``value`` is not a member nor the value of one.
    """
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_cls)
        raise ValueError(
            f"{name}={value!r} is invalid; expected one of {allowed}"
        ) from None
