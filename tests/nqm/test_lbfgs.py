"""The batched L-BFGS behind the schedule tuner: rows are independent problems."""

import pytest
import torch

from nqm._lbfgs import batched_lbfgs

f64 = torch.float64


def _quadratics(n_rows, n_par, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n_rows, n_par, n_par, generator=gen, dtype=f64))
    evals = torch.logspace(0, 2, n_par, dtype=f64).expand(n_rows, n_par)
    mats = q @ torch.diag_embed(evals) @ q.mT  # condition number 100
    centres = torch.randn(n_rows, n_par, generator=gen, dtype=f64)
    mats, centres = mats.to(device), centres.to(device)

    def fun(x, rows):
        z = x - centres[rows]
        return 0.5 * torch.einsum("ri,rij,rj->r", z, mats[rows], z)

    return fun, centres


def _rosenbrock(scales):
    def fun(x, rows):
        a = scales[rows]
        return (1 - x[:, 0]) ** 2 + a * (x[:, 1] - x[:, 0] ** 2) ** 2

    return fun


def test_quadratic_rows_reach_their_own_minimisers():
    fun, centres = _quadratics(7, 6, seed=0)
    res = batched_lbfgs(fun, torch.zeros(7, 6, dtype=f64), max_iter=100, tol_change=0.0)
    assert torch.allclose(res.x, centres, rtol=0, atol=1e-8)
    assert float(res.f.max()) < 1e-14
    assert int(res.iterations.max()) < 100  # stopped by the gradient test


def test_rosenbrock_rows_of_different_scales():
    scales = torch.tensor([1.0, 10.0, 100.0, 1000.0], dtype=f64)
    x0 = torch.tensor([[-1.2, 1.0]], dtype=f64).repeat(4, 1)
    res = batched_lbfgs(_rosenbrock(scales), x0, max_iter=500, tol_change=0.0)
    assert torch.allclose(res.x, torch.ones(4, 2, dtype=f64), atol=1e-6)


def test_rows_do_not_interact():
    """A row's iterates are the same alone and stacked with other problems."""
    scales = torch.tensor([1.0, 30.0, 100.0, 300.0, 3.0], dtype=f64)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(5, 2, generator=gen, dtype=f64)
    fun = _rosenbrock(scales)
    together = batched_lbfgs(fun, x0, max_iter=40)
    for r in range(5):

        def alone_fun(x, rows, r=r):
            return fun(x, rows + r)

        alone = batched_lbfgs(alone_fun, x0[r : r + 1], max_iter=40)
        assert torch.allclose(alone.x[0], together.x[r], rtol=0, atol=1e-12)
        assert int(alone.iterations[0]) == int(together.iterations[r])


def test_agrees_with_torch_lbfgs_on_one_problem():
    fun, centres = _quadratics(1, 5, seed=1)
    x = torch.zeros(1, 5, dtype=f64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [x],
        max_iter=200,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-12,
        tolerance_change=0.0,
    )

    def closure():
        opt.zero_grad()
        v = fun(x, torch.tensor([0])).sum()
        v.backward()
        return v

    opt.step(closure)
    res = batched_lbfgs(fun, torch.zeros(1, 5, dtype=f64), max_iter=200, tol_change=0.0)
    assert torch.allclose(res.x, x.detach(), atol=1e-8)
    assert torch.allclose(res.x, centres, atol=1e-8)


def test_non_finite_region_is_backtracked_out_of():
    """f = inf beyond x = 2: the line search halves until it is back inside."""

    def fun(x, rows):
        v = (x[:, 0] - 1.9) ** 2 * 1e-3
        return torch.where(x[:, 0] < 2.0, v, torch.full_like(v, float("inf")))

    res = batched_lbfgs(fun, torch.tensor([[-50.0]], dtype=f64), max_iter=200)
    assert abs(float(res.x[0, 0]) - 1.9) < 1e-5
    assert torch.isfinite(res.f).all()


def test_a_row_at_its_minimum_does_not_move():
    fun, centres = _quadratics(3, 4, seed=2)
    x0 = torch.zeros(3, 4, dtype=f64)
    x0[1] = centres[1]
    res = batched_lbfgs(fun, x0, max_iter=50)
    assert torch.equal(res.x[1], centres[1])
    assert int(res.iterations[1]) == 0


@pytest.mark.parametrize(
    "kwargs", [{"history": 0}, {"max_iter": 0}], ids=["history", "max_iter"]
)
def test_bad_arguments(kwargs):
    fun, _ = _quadratics(1, 2, seed=0)
    with pytest.raises(ValueError, match="history and max_iter"):
        batched_lbfgs(fun, torch.zeros(1, 2, dtype=f64), **kwargs)
    with pytest.raises(ValueError, match="shape"):
        batched_lbfgs(fun, torch.zeros(2, dtype=f64))


def test_evaluations_are_counted_per_row():
    """A row at its minimum costs one evaluation; the others count their own."""
    fun, centres = _quadratics(3, 4, seed=4)
    x0 = torch.zeros(3, 4, dtype=f64)
    x0[0] = centres[0]
    calls = torch.zeros(3, dtype=torch.long)

    def counting(x, rows):
        calls[rows] += 1
        return fun(x, rows)

    res = batched_lbfgs(counting, x0, max_iter=50)
    assert torch.equal(res.evaluations, calls)
    assert int(res.evaluations[0]) == 1
    assert bool((res.evaluations[1:] > res.iterations[1:]).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_equals_cpu():
    fun_cpu, centres = _quadratics(5, 6, seed=7)
    fun_gpu, _ = _quadratics(5, 6, seed=7, device="cuda")
    x0 = torch.zeros(5, 6, dtype=f64)
    cpu = batched_lbfgs(fun_cpu, x0, max_iter=100, tol_change=0.0)
    gpu = batched_lbfgs(fun_gpu, x0.cuda(), max_iter=100, tol_change=0.0)
    assert gpu.x.device.type == "cuda"
    assert torch.allclose(gpu.x.cpu(), cpu.x, atol=1e-8)
    assert torch.allclose(gpu.x.cpu(), centres, atol=1e-8)
