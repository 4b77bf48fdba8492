"""kfac_spectra: K-FAC for real PyTorch networks, their Kronecker eigenspectra, and
the gradient statistics in the Kronecker eigenbasis that test the NQM's assumptions.
"""

from .bridge import estimate_nqm
from .kfac import KFAC, KFACConfig, compute_factors

__all__ = ["KFAC", "KFACConfig", "compute_factors", "estimate_nqm"]
