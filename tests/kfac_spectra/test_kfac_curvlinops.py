"""Factors agree with curvlinops' KFACLinearOperator (test-only oracle).

curvlinops 3.0.1 with ``separate_weight_and_bias=False`` uses the same convention:
the input factor is the mean over rows with the bias as the last coordinate, the
gradient factor carries the reduction scaling so that the Kronecker product is the
curvature of the loss as reduced, and ``MSELoss(reduction="mean")`` also averages
over the output dimension. Its MC sampler draws ``multinomial`` (CE) / ``randn``
(MSE) from a generator seeded 2147483647 in the same order as ours, so even the MC
factors agree exactly when we pass a generator with that seed.
"""

from __future__ import annotations

import pytest
import torch
from kfac_helpers import rel_err
from torch import Tensor, nn

from kfac_spectra.kfac import compute_factors

curvlinops = pytest.importorskip("curvlinops")

DT = torch.float64
CURVLINOPS_SEED = 2147483647
MATCH_RTOL = 1e-12


class Flatten(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def _models() -> dict[str, tuple[nn.Module, Tensor, list[str]]]:
    gen = torch.Generator().manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x_mlp = torch.randn(8, 5, generator=gen, dtype=DT)
    cnn = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 2, 3, stride=2),
        Flatten(),
        nn.Linear(2 * 2 * 2, 3),
    ).double()
    x_cnn = torch.randn(4, 2, 6, 6, generator=gen, dtype=DT)
    return {"mlp": (mlp, x_mlp, ["0", "2"]), "cnn": (cnn, x_cnn, ["0", "2", "4"])}


def _targets(loss: str, n: int) -> Tensor:
    gen = torch.Generator().manual_seed(1)
    if loss == "ce":
        return torch.randint(0, 3, (n,), generator=gen)
    return torch.randn(n, 3, generator=gen, dtype=DT)


# "reduce" only for the CNN: without weight sharing it is "expand"
@pytest.mark.parametrize(
    ("model_name", "approx"), [("mlp", "expand"), ("cnn", "expand"), ("cnn", "reduce")]
)
@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("fisher", ["type2", "mc", "empirical"])
def test_factors_match_curvlinops(
    model_name: str, approx: str, loss: str, reduction: str, fisher: str
) -> None:
    model, x, names = _models()[model_name]
    y = _targets(loss, x.shape[0])
    loss_func = (nn.CrossEntropyLoss if loss == "ce" else nn.MSELoss)(
        reduction=reduction
    )
    theirs = curvlinops.KFACLinearOperator(
        model,
        loss_func,
        list(model.parameters()),
        [(x, y)],
        fisher_type={"type2": "type-2"}.get(fisher, fisher),
        kfac_approx=approx,
        separate_weight_and_bias=False,
        check_deterministic=False,
    )
    theirs.compute_kronecker_factors()
    gen = torch.Generator().manual_seed(CURVLINOPS_SEED)
    ours = compute_factors(
        model,
        x,
        y,
        loss,
        fisher,
        reduction=reduction,
        kfac_approx=approx,
        generator=gen,
    )
    for name in names:
        a, s = ours[name]
        assert rel_err(a, theirs._input_covariances[name]) < MATCH_RTOL, name
        assert rel_err(s, theirs._gradient_covariances[name]) < MATCH_RTOL, name
    # the public operator: KFAC @ v equals (S ⊗ A) vec([W|b]) blockwise
    vgen = torch.Generator().manual_seed(2)
    vs = [torch.randn(p.shape, generator=vgen, dtype=DT) for p in model.parameters()]
    kv = theirs @ vs
    i = 0
    for name in names:
        w = model.get_submodule(name).weight
        vw, vb = vs[i].reshape(w.shape[0], -1), vs[i + 1]
        a, s = ours[name]
        mine = s @ torch.cat([vw, vb[:, None]], 1) @ a
        want = torch.cat([kv[i].reshape(w.shape[0], -1), kv[i + 1][:, None]], 1)
        assert rel_err(mine, want) < MATCH_RTOL, name
        i += 2
