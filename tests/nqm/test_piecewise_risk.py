"""The schedule tuner's piecewise SGD risk: its closed-form gradient."""

import numpy as np
import pytest
import torch

from nqm._piecewise_risk import piecewise_risk

f64 = torch.float64
#: Relative step of the central differences, and their agreement with the
#: closed form relative to the largest entry of a row's gradient (the
#: differences' truncation error is O(step^2), their rounding O(eps / step)).
FD_STEP = 1e-6
FD_RTOL = 1e-6


def _rows(per_row: bool, above_one: bool, seed: int):
    rng = np.random.default_rng(seed)
    n_rows, k, m = 4, 6, 9
    hh = np.sort(rng.uniform(0.01, 1.0, size=(n_rows, m) if per_row else m))
    wd, wn = (rng.uniform(0.0, 1.0, size=hh.shape) for _ in range(2))
    # lr h in (0, 1), or up to 1.9 (the log(s - 1) branch) where above_one
    top = 1.9 if above_one else 0.95
    lrs = rng.uniform(0.05, top, size=(n_rows, k))
    lengths = rng.integers(0, 40, size=(n_rows, k)).astype(float)
    lengths[:, 1] = 0  # an empty piece
    bs = np.array([1.0, 3.0, 64.0, 1000.0])
    return [torch.tensor(a, dtype=f64) for a in (hh, wd, wn, lrs, lengths, bs)]


def _numpy_risk(hh, wd, wn, lrs, lengths, bs):
    """The risk by the piece-by-piece recursion of each mode (numpy)."""
    out = []
    for r in range(lrs.shape[0]):
        h = hh[r] if hh.ndim == 2 else hh
        mean, noise = np.ones_like(h), np.zeros_like(h)
        for a, n in zip(lrs[r], lengths[r], strict=True):
            f = (1.0 - a * h) ** (2 * n)
            mean = mean * f
            noise = noise * f + a * a * (1.0 - f) / (a * h * (2.0 - a * h))
        w_d = wd[r] if wd.ndim == 2 else wd
        w_n = wn[r] if wn.ndim == 2 else wn
        out.append((w_d * mean).sum() + (w_n * noise).sum() / bs[r])
    return np.array(out)


@pytest.mark.parametrize("per_row", [False, True], ids=["shared", "per-row"])
@pytest.mark.parametrize("above_one", [False, True], ids=["s<1", "s>1"])
def test_gradient_matches_central_differences_of_the_recursion(per_row, above_one):
    """The gradient in the learning rates equals central differences of the
    piece-by-piece recursion (numpy), for every row and piece, empty pieces and
    steps beyond lr h = 1 included; the value equals the recursion."""
    hh, wd, wn, lrs, lengths, bs = _rows(per_row, above_one, seed=3)
    x = lrs.clone().requires_grad_(True)
    risk = piecewise_risk(hh, wd, wn, x, lengths, bs)
    (grad,) = torch.autograd.grad(risk.sum(), x)
    args = [t.numpy() for t in (hh, wd, wn)]
    base = lrs.numpy()
    want_risk = _numpy_risk(*args, base, lengths.numpy(), bs.numpy())
    np.testing.assert_allclose(risk.detach().numpy(), want_risk, rtol=1e-12)
    fd = np.zeros_like(base)
    for r in range(base.shape[0]):
        for k in range(base.shape[1]):
            step = FD_STEP * base[r, k]
            up, down = base.copy(), base.copy()
            up[r, k] += step
            down[r, k] -= step
            diff = _numpy_risk(*args, up, lengths.numpy(), bs.numpy())
            diff -= _numpy_risk(*args, down, lengths.numpy(), bs.numpy())
            fd[r, k] = diff[r] / (2 * step)
    scale = np.abs(fd).max(axis=1, keepdims=True)
    assert np.all(np.abs(grad.numpy() - fd) <= FD_RTOL * scale)
    assert np.all(grad.numpy()[:, 1] == 0.0)  # an empty piece has no effect


def test_without_gradient_it_is_the_same_value():
    hh, wd, wn, lrs, lengths, bs = _rows(False, True, seed=4)
    with torch.no_grad():
        plain = piecewise_risk(hh, wd, wn, lrs, lengths, bs)
    tracked = piecewise_risk(hh, wd, wn, lrs.clone().requires_grad_(True), lengths, bs)
    assert torch.equal(plain, tracked.detach())
