"""The binary cross-entropy (logistic output) loss of K-FAC's output-space curvature,
against autograd's Hessian of ``F.binary_cross_entropy_with_logits``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kfac_spectra.kfac.enums import FisherType, LossType, Reduction
from kfac_spectra.kfac.fisher import loss_scale, output_hessian_form, output_probes

EXACT_RTOL = 1e-12
MC_SAMPLES = 40_000
MC_ATOL = 6.0 / MC_SAMPLES**0.5  # entries of p(1-p) c ≤ c/4; ~6 standard errors


def _hessian(f: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    def loss(flat: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            flat.reshape(f.shape), y, reduction=reduction
        )

    return torch.autograd.functional.hessian(loss, f.reshape(-1))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_type2_probes_and_hessian_form(reduction: str) -> None:
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    y = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    hess = _hessian(f, y, reduction)
    probes = output_probes(f, LossType.BCE, Reduction(reduction), FisherType.TYPE2)
    # the probes of one row (loss term group) reproduce that row's Hessian block
    cols = f.shape[1]
    for m in range(f.shape[0]):
        outer = sum(torch.outer(v[m], v[m]) for v in probes)
        block = hess[m * cols : (m + 1) * cols, m * cols : (m + 1) * cols]
        assert torch.allclose(outer, block, rtol=EXACT_RTOL, atol=0)
    u = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    form = output_hessian_form(f, u, w, LossType.BCE, Reduction(reduction))
    expected = u.reshape(-1) @ hess @ w.reshape(-1)
    assert abs(float(form - expected)) <= EXACT_RTOL * abs(float(expected))
    c = loss_scale(f, LossType.BCE, Reduction(reduction))
    assert c == (1.0 / f.numel() if reduction == "mean" else 1.0)


def test_bce_mc_probes_match_the_fisher_in_expectation() -> None:
    gen = torch.Generator().manual_seed(1)
    f = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    y = torch.zeros(2, 3, dtype=torch.float64)
    hess = _hessian(f, y, "sum")
    probes = output_probes(
        f,
        LossType.BCE,
        Reduction.SUM,
        FisherType.MC,
        mc_samples=MC_SAMPLES,
        generator=gen,
    )
    stacked = torch.stack([v.reshape(-1) for v in probes])
    estimate = stacked.T @ stacked
    assert float((estimate - hess).abs().max()) < MC_ATOL
    empirical = output_probes(
        f, LossType.BCE, Reduction.SUM, FisherType.EMPIRICAL, targets=y
    )
    assert torch.allclose(empirical[0], torch.sigmoid(f) - y)
