"""K-FAC for PyTorch networks: curvature blocks, factor capture, inversion, damping
and the :class:`~kfac_spectra.kfac.optimizer.KFAC` optimizer.

See :mod:`kfac_spectra.kfac.factors` for the Kronecker-factor convention and the
mean/sum reduction scaling.
"""

from .config import KFACConfig
from .distributed import FactorSync, InverseLayout
from .enums import (
    DampingType,
    FisherType,
    InverseMethod,
    KFACApprox,
    LossType,
    Reduction,
    RNNApprox,
    StepRule,
    Structure,
)
from .factors import compute_factors
from .optimizer import KFAC

__all__ = [
    "DampingType",
    "FactorSync",
    "FisherType",
    "InverseLayout",
    "InverseMethod",
    "KFAC",
    "KFACApprox",
    "KFACConfig",
    "LossType",
    "RNNApprox",
    "Reduction",
    "StepRule",
    "Structure",
    "compute_factors",
]
