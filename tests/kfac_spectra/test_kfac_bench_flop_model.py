"""The flop model of ``benchmarks/bench_kfac.py``'s width sweep against
``torch.utils.flop_counter`` on the real forward/backward and preconditioning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kfac_helpers import randomise, seeded
from torch.utils.flop_counter import FlopCounterMode

from kfac_spectra import KFAC
from kfac_spectra.kfac.toy_models import mlp


@pytest.mark.parametrize(("hidden", "batch"), [(24, 32), (7, 5)])
def test_forward_backward_and_preconditioning_flops_are_counted_exactly(
    hidden: int, batch: int, load_benchmark
) -> None:
    """F (matrix products of forward and backward; no input gradient for the first
    layer) and P (the two products with the cached damped inverses per layer)
    equal the counts of the operations the code runs."""
    bench = load_benchmark("bench_kfac")
    model = randomise(mlp(40, hidden, 10, depth=2), 0)
    gen = seeded(1)
    x = torch.randn(batch, 40, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    opt = KFAC(model, "ce", factor_interval=100, inverse_interval=100)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()  # factors and inverses now exist
    model_flops = bench.mlp_flops([40, hidden, hidden, 10], batch)
    opt.zero_grad()
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    assert counter.get_total_flops() == model_flops["fwd_bwd"]
    grads = {p: p.grad for p in model.parameters()}
    with FlopCounterMode(display=False) as counter:
        opt._preconditioned(grads)
    assert counter.get_total_flops() == model_flops["precond"]


def test_preconditioning_floor_grows_like_two_h_over_three_b(load_benchmark) -> None:
    """P/F of a wide hidden layer tends to 2h/(3B) (4h³ against 6Bh²)."""
    bench = load_benchmark("bench_kfac")
    h, batch = 4096, 256
    flops = bench.mlp_flops([1, h, h], batch)  # the h-to-h layer dominates
    floor, model = bench.predicted_ratios(flops)
    assert floor - 1 == pytest.approx(2 * h / (3 * batch), rel=0.1)
    assert model > floor
