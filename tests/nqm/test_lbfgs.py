"""The batched L-BFGS behind the schedule tuner: rows are independent problems."""

import numpy as np
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


#: The reference sums the two-loop recursion in another order; on these
#: Rosenbrock rows (scale up to 1000, 60 iterations) that moves trial points by
#: up to about 4e-12.
ORDER_ATOL = 1e-10


def _reference_lbfgs(fun1, x0, max_iter, history=10, c1=1e-4, c2=0.9, trials=40):
    """One row, step by step in plain Python floats and numpy: the two-loop
    recursion (Nocedal & Wright 2006, Algorithm 7.4) and the weak Wolfe line
    search of Lewis & Overton (2013), as the module documents them. Returns the
    final point and the list of every trial point evaluated."""
    import numpy as np

    x = np.array(x0, dtype=np.float64)
    f, g = fun1(x)
    pairs, visited = [], []
    for _ in range(max_iter):
        if not (np.isfinite(f) and np.abs(g).max() > 1e-10):
            break
        q, alphas = g.copy(), []
        for s, y in reversed(pairs):
            a = (s @ q) / (s @ y)
            q -= a * y
            alphas.append(a)
        if pairs:
            s, y = pairs[-1]
            q *= (s @ y) / (y @ y)
        for (s, y), a in zip(pairs, reversed(alphas), strict=True):
            q += s * (a - (y @ q) / (s @ y))
        d = -q
        gd = g @ d
        if not (np.isfinite(gd) and gd < 0):
            d, gd, pairs = -g, -(g @ g), []
        t = 1.0 if pairs else min(1.0, 1.0 / np.abs(g).sum())
        lo, hi, best = 0.0, np.inf, None
        for _ in range(trials):
            xt = x + t * d
            ft, gt = fun1(xt)
            visited.append(xt)
            ok = np.isfinite(ft) and ft <= f + c1 * t * gd
            flat = gt @ d >= c2 * gd
            if ok and (best is None or ft < best[1] or flat):
                best = (xt, ft, gt)
            lo, hi = (t, hi) if ok else (lo, t)
            if ok and flat:
                break
            t = 2 * lo if np.isinf(hi) else 0.5 * (lo + hi)
        if best is None:
            break
        s, y = best[0] - x, best[2] - g
        if s @ y > 1e-10 * np.linalg.norm(s) * np.linalg.norm(y):
            pairs = (pairs + [(s, y)])[-history:]
        step, drop = np.abs(s).max(), abs(f - best[1])
        x, f, g = best
        if step <= 1e-12 or drop < 1e-12 or np.abs(g).max() <= 1e-10:
            break
    return x, visited


def test_each_row_follows_the_one_row_reference_and_rows_advance_on_their_own():
    """Every row visits exactly the trial points of a step-by-step one-row
    implementation, and the rows advance independently: one call per trial of
    the row that needs the most trials in total, not per iteration the sum of
    the longest line search."""
    scales = torch.tensor([1.0, 30.0, 100.0, 300.0, 3.0, 1000.0], dtype=f64)
    gen = torch.Generator().manual_seed(11)
    x0 = torch.randn(6, 2, generator=gen, dtype=f64) * 1.5
    fun = _rosenbrock(scales)
    trials_of = {}
    calls = []

    def recording(x, rows):
        calls.append(rows.numel())
        for r, p in zip(rows.tolist(), x.detach().tolist(), strict=True):
            trials_of.setdefault(r, []).append(p)
        return fun(x, rows)

    res = batched_lbfgs(recording, x0, max_iter=60)
    longest = 0
    for r in range(6):

        def fun1(z, r=r):
            zt = torch.tensor(z[None], dtype=f64, requires_grad=True)
            v = fun(zt, torch.tensor([r]))
            (gz,) = torch.autograd.grad(v.sum(), zt)
            return float(v.detach()[0]), gz[0].numpy()

        x_ref, visited = _reference_lbfgs(fun1, x0[r].numpy(), max_iter=60)
        got = torch.tensor(trials_of[r][1:], dtype=f64)  # [0]: the start
        assert got.shape == (len(visited), 2)
        assert torch.allclose(
            got, torch.tensor(np.array(visited)), rtol=0, atol=ORDER_ATOL
        )
        assert torch.allclose(res.x[r], torch.tensor(x_ref), rtol=0, atol=ORDER_ATOL)
        longest = max(longest, len(visited))
    assert len(calls) == 1 + longest  # the start, then one trial per call


def test_a_decrease_below_rounding_ends_the_line_search():
    """f = 1e16 + x, whose float64 spacing there is 2: the first trial step
    (1) rounds to the same value, which passes sufficient decrease only by
    rounding, and the next trial (2) would predict a decrease of 2, below the
    rounding of f. The search stops after that one trial instead of doubling
    up to max_backtracks times."""

    def fun(x, rows):
        return 1e16 + x[:, 0]

    res = batched_lbfgs(fun, torch.zeros(1, 1, dtype=f64), max_iter=5)
    assert int(res.evaluations[0]) == 2  # the start and one trial
    assert float(res.x[0, 0]) == -1.0
