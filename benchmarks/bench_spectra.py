"""Side-by-side timings (medians of 5) of the spectrum and eigenbasis-statistics
shortcuts, for the README.

1. The K-FAC spectrum of a Simple CNN of MNIST size (factor eigenvalues drawn
   log-normally): full sort of all products vs the exact top-k and the
   histogram that never form them.
2. Mean and second moment of the gradient along every Kronecker eigen-direction
   of an MLP (width 1/4) on MNIST-1D, N = 1024: the factorised computation of
   ``eigenbasis_gradient_stats`` vs per-example gradients (``torch.func``) and an
   explicit projection; the two are checked to agree before timing.

Run from the repository root: ``python benchmarks/bench_spectra.py``.
"""

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kfac_spectra.data import load_mnist1d  # noqa: E402
from kfac_spectra.eigenbasis import basis_from_factors  # noqa: E402
from kfac_spectra.gradient_stats import eigenbasis_gradient_stats  # noqa: E402
from kfac_spectra.layer_capture import find_blocks  # noqa: E402
from kfac_spectra.models import build_model  # noqa: E402
from kfac_spectra.spectra import (  # noqa: E402
    FactorSpectrum,
    eigenvalue_histogram,
    kfac_eigenvalues,
    log_bins,
    top_k_eigenvalues,
)


def med(fn, reps=5):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    # Simple CNN (paper size, MNIST) factor dimensions: (out, in+1)
    dims = [(32, 26), (64, 801), (1024, 3137), (10, 1025)]
    layers = [
        FactorSpectrum(rng.lognormal(0, 2, m), rng.lognormal(0, 2, n)) for m, n in dims
    ]
    total = sum(m * n for m, n in dims)
    t_full = med(lambda: kfac_eigenvalues(layers))
    t_top = med(lambda: top_k_eigenvalues(layers, 10_000))
    edges = log_bins(1e-8, 1e8, 160)
    t_hist = med(lambda: eigenvalue_histogram(layers, edges))
    assert np.array_equal(
        top_k_eigenvalues(layers, 10_000), kfac_eigenvalues(layers)[:10_000]
    )
    print(
        f"spectrum of {total} eigenvalues (Simple CNN, MNIST sizes): full sort "
        f"{t_full * 1e3:.0f} ms, top-10k {t_top * 1e3:.0f} ms "
        f"({t_full / t_top:.1f}x), 160-bin histogram {t_hist * 1e3:.1f} ms "
        f"({t_full / t_hist:.0f}x)"
    )

    data = load_mnist1d(2000, seed=0)
    model = build_model(
        "mlp",
        data.spec,
        0.25,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    x, y = data.x_train[:1024].double(), data.y_train[:1024]
    blocks = find_blocks(model)
    g = torch.Generator().manual_seed(0)

    def psd(n):
        m = torch.randn(n, n, generator=g, dtype=torch.float64)
        return m @ m.T

    bases = {
        k: basis_from_factors(psd(b.shape[0]), psd(b.shape[1]))
        for k, b in blocks.items()
    }

    def ours():
        return eigenbasis_gradient_stats(
            model, [(x, y)], bases, loss="ce", fisher_type="empirical"
        )

    params = {k: v.detach() for k, v in model.named_parameters()}

    def brute():
        def single(p, xn, yn):
            out = functional_call(model, p, (xn[None],))
            return F.cross_entropy(out, yn[None], reduction="sum")

        grads = vmap(grad(single), in_dims=(None, 0, 0))(params, x, y)
        out = {}
        for k, b in blocks.items():
            G = b.gradient_matrix(grads[f"{k}.weight"], grads[f"{k}.bias"])  # (N, r, c)
            Z = bases[k].row_vectors.T @ G @ bases[k].col_vectors
            out[k] = (Z.mean(0), Z.square().mean(0))
        return out

    a, b_ = ours(), brute()
    for k in blocks:
        assert np.allclose(a.layers[k].second_moment, b_[k][1].numpy(), rtol=1e-9)
    t_ours, t_brute = med(ours), med(brute)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"MLP width 1/4 on MNIST-1D ({n_params} params), N=1024, mean+second moment "
        f"in all {n_params} directions: factorised {t_ours * 1e3:.0f} ms vs "
        f"per-example gradients + projection {t_brute * 1e3:.0f} ms "
        f"({t_brute / t_ours:.1f}x)"
    )


if __name__ == "__main__":
    main()
