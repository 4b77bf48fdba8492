"""E.1/E.2/E.4 on MNIST-1D: train briefly with SGD, then spectra and H-vs-C.

Trains ``MODEL`` (default ResNet8) at ``WIDTH`` (default 1) for ``STEPS``
(default 600) SGD steps at batch 100 on 4000 generated MNIST-1D examples, takes
type-2 K-FAC factors (per-example Fisher) on 1000 fixed training examples at
steps 0, 50, 200 and the last, and prints: how much the top-2000 K-FAC
eigenvalues still change, the power-law fit of the final spectrum over ranks
[10, d/2], and the per-layer comparison of gradient variance with curvature in
the Kronecker eigenbasis over 2000 examples (float64). The default takes about
6 minutes on 2 cores.

Run from the repository root:
``python benchmarks/measure_mnist1d.py [MODEL [WIDTH [STEPS]]]``.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kfac_spectra import compute_factors  # noqa: E402
from kfac_spectra.data import iterate_batches, load_mnist1d  # noqa: E402
from kfac_spectra.eigenbasis import kronecker_bases  # noqa: E402
from kfac_spectra.gradient_stats import (  # noqa: E402
    compare_variance_curvature,
    eigenbasis_gradient_stats,
)
from kfac_spectra.layer_capture import find_blocks  # noqa: E402
from kfac_spectra.models import build_model  # noqa: E402
from kfac_spectra.powerlaw import fit_power_law  # noqa: E402
from kfac_spectra.spectra import (  # noqa: E402
    factor_spectra,
    kfac_eigenvalues,
    spectrum_evolution,
)


def main() -> None:
    torch.set_num_threads(2)
    name = sys.argv[1] if len(sys.argv) > 1 else "resnet8"
    width = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 600
    data = load_mnist1d(4000, seed=0)
    model = build_model(
        name, data.spec, width, generator=torch.Generator().manual_seed(0)
    )
    print(name, "width", width, "params", sum(p.numel() for p in model.parameters()))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    probe_x, probe_y = data.x_train[:1000], data.y_train[:1000]

    def factors_now():
        f = compute_factors(model, probe_x, probe_y, "ce", "type2", reduction="sum")
        return {k: (a, s / len(probe_x)) for k, (a, s) in f.items()}  # per-example F

    snapshots, snap_steps = [], []
    t0 = time.time()
    step = 0
    while step < steps:
        for xb, yb in iterate_batches(data.x_train, data.y_train, 100, generator=gen):
            if step in (0, 50, 200, steps - 1):
                snapshots.append(factor_spectra(factors_now()))
                snap_steps.append(step)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    with torch.no_grad():
        acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    print(
        f"trained {steps} steps in {time.time() - t0:.1f}s, final batch loss "
        f"{loss.item():.3f}, test acc {acc:.3f}"
    )
    evo = spectrum_evolution(snap_steps, snapshots, k=2000)
    print(
        "steps",
        snap_steps,
        "RMS log-change of top-2000 vs last:",
        np.round(evo.log_change(), 3),
    )
    factors = factors_now()
    spectrum = kfac_eigenvalues(factor_spectra(factors))
    d = spectrum.size
    fit = fit_power_law(spectrum, rank_min=10, rank_max=d // 2, num_points=60)
    print(
        f"K-FAC spectrum: {d} eigenvalues; power law over ranks [10, {d // 2}]: "
        f"s = {fit.exponent:.3f} [{fit.ci_low:.3f}, {fit.ci_high:.3f}], "
        f"R^2 {fit.r_squared:.3f}"
    )
    blocks = find_blocks(model)
    bases = kronecker_bases(factors, blocks)
    model = model.double()
    t0 = time.time()
    x64 = data.x_train[:2000].double()
    y64 = data.y_train[:2000]
    batches = [(x64[i : i + 250], y64[i : i + 250]) for i in range(0, 2000, 250)]
    stats = eigenbasis_gradient_stats(model, batches, bases, loss="ce")
    print(f"gradient stats over 2000 examples, type-2: {time.time() - t0:.1f}s")
    comp = compare_variance_curvature(stats)
    for key, c in comp.items():
        print(
            f"  {key:>14}: slope {c.log_slope:.3f}  corr {c.log_correlation:.3f}  "
            f"within 2x {c.fraction_within:.3f}  n {c.curvature.size} "
            f"excl {c.num_excluded}"
        )


if __name__ == "__main__":
    main()
