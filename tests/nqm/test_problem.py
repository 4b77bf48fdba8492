"""`nqm.NQMProblem`: validation, constructors, compression, binning and I/O."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from nqm_oracles import brute_force_problem_loss

import nqm

RTOL_LOSSLESS = 1e-12


def test_power_law_values():
    prob = nqm.NQMProblem.power_law(dim=7, h_power=2.0, c_power=0.5, init_sq=3.0)
    i = np.arange(1, 8, dtype=np.float64)
    np.testing.assert_allclose(prob.h, 1.0 / i**2, rtol=1e-15)
    np.testing.assert_allclose(prob.c, 1.0 / np.sqrt(i), rtol=1e-15)
    np.testing.assert_array_equal(prob.init_sq, np.full(7, 3.0))
    np.testing.assert_array_equal(prob.weight, np.ones(7))
    assert prob.n_modes == 7 and prob.dim == 7.0
    assert prob.initial_loss() == pytest.approx(0.5 * np.sum(3.0 / i**2), rel=1e-15)
    default = nqm.NQMProblem.power_law(dim=10)
    np.testing.assert_allclose(default.h, 1.0 / np.arange(1, 11), rtol=1e-15)
    np.testing.assert_allclose(default.c, default.h, rtol=1e-15)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": 2.5}, "dim"),
        ({"h_power": np.nan}, "h_power"),
        ({"c_power": np.inf}, "c_power"),
    ],
)
def test_power_law_rejects_bad_inputs(kwargs, param):
    with pytest.raises(ValueError, match=param):
        nqm.NQMProblem.power_law(**({"dim": 5} | kwargs))


def test_from_spectra_and_immutability():
    h = np.array([0.5, 0.1, 0.5])
    prob = nqm.NQMProblem.from_spectra(h, [1.0, 2.0, 3.0], init_sq=[1.0, 1.0, 3.0])
    np.testing.assert_array_equal(prob.h, h)
    assert prob.n_modes == 3
    with pytest.raises(ValueError):
        prob.h[0] = 1.0  # arrays are read-only
    merged = nqm.NQMProblem.from_spectra(
        [0.5, 0.1, 0.5], [1.0, 2.0, 3.0], init_sq=[1.0, 1.0, 3.0], compress=True
    )
    assert merged.n_modes == 2
    assert merged.dim == 3.0
    i = int(np.argmax(merged.h))
    assert merged.h[i] == 0.5 and merged.weight[i] == 2.0
    assert merged.c[i] == pytest.approx(2.0) and merged.init_sq[i] == pytest.approx(2.0)


def test_constructor_does_not_alias_caller_arrays():
    h = np.array([1.0, 0.5])
    view = h[:]
    prob = nqm.NQMProblem(h, [1.0, 1.0])
    view[1] = -3.0  # written through a view that existed before construction
    assert prob.h[1] == 0.5
    h[0] = 2.0  # the caller's array must stay the caller's
    assert prob.h[0] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"h": [1.0, 0.0]}, "h"),
        ({"h": [1.0, -2.0]}, "h"),
        ({"h": [1.0, np.inf]}, "h"),
        ({"h": [1.0, np.nan]}, "h"),
        ({"h": []}, "h"),
        ({"h": [[1.0, 2.0]]}, "h"),
        ({"c": [1.0, -1e-300]}, "c"),
        ({"c": [1.0, np.nan]}, "c"),
        ({"c": [1.0, 2.0, 3.0]}, "c"),
        ({"c": []}, "c"),
        ({"init_sq": [-1.0, 1.0]}, "init_sq"),
        ({"init_sq": [1.0]}, "init_sq"),
        ({"weight": [0.0, 1.0]}, "weight"),
        ({"weight": [np.inf, 1.0]}, "weight"),
    ],
)
def test_constructor_rejects_bad_inputs(kwargs, param):
    args = {"h": [1.0, 0.5], "c": [1.0, 1.0], "init_sq": 1.0, "weight": 1.0} | kwargs
    with pytest.raises(ValueError, match=rf"^{param}\b"):
        nqm.NQMProblem(**args)


def _repeated_problem(seed=0):
    rng = np.random.default_rng(seed)
    base = np.exp(rng.uniform(-5, 0, 6))
    h = rng.permutation(np.repeat(base, rng.integers(1, 5, 6)))
    return nqm.NQMProblem(
        h=h,
        c=rng.uniform(0, 2, h.size),
        init_sq=rng.uniform(0, 2, h.size),
        weight=rng.integers(1, 4, h.size).astype(np.float64),
    )


@pytest.mark.parametrize(
    ("lr", "beta", "gamma", "p"),
    [
        (0.5, 0.0, 0.0, 0.0),
        (0.3, 0.8, 0.0, 0.5),
        (0.9, 0.0, 0.9, 1.0),
        (0.2, 0.9, 0.5, 0.3),
    ],
)
def test_compressed_is_lossless(lr, beta, gamma, p):
    prob = _repeated_problem()
    small = prob.compressed()
    assert small.n_modes == np.unique(prob.h).size < prob.n_modes
    assert small.dim == pytest.approx(prob.dim, rel=1e-15)
    assert small.initial_loss() == pytest.approx(prob.initial_loss(), rel=RTOL_LOSSLESS)
    steps = [0, 1, 17, 250]
    opt = nqm.Optimizer(lr, beta, gamma, p)
    np.testing.assert_allclose(
        nqm.expected_loss(small, opt, 3, steps),
        nqm.expected_loss(prob, opt, 3, steps),
        rtol=RTOL_LOSSLESS,
    )
    # and both against the brute force on the uncompressed modes
    want = brute_force_problem_loss(
        prob,
        lambda s: lr,
        beta,
        gamma,
        p,
        3,
        steps,
    )
    np.testing.assert_allclose(
        nqm.expected_loss(small, opt, 3, steps), want, rtol=1e-10
    )


def test_compressed_without_repeats_is_identity():
    prob = nqm.NQMProblem.power_law(dim=5)
    assert prob.compressed() is prob


def test_binned_error_decreases_with_bins():
    prob = nqm.NQMProblem.power_law(dim=2000)
    opt = nqm.Optimizer(0.5, momentum=0.5)
    steps = np.array([10, 100, 1000])
    exact = nqm.expected_loss(prob, opt, 8, steps)
    errors = []
    for n in (4, 16, 64, 256):
        b = prob.binned(n)
        assert b.n_modes <= n
        assert b.dim == pytest.approx(prob.dim, rel=1e-12)
        # the invariants the docstring promises: initial loss and sum w h c
        assert b.initial_loss() == pytest.approx(prob.initial_loss(), rel=1e-12)
        assert np.sum(b.weight * b.h * b.c) == pytest.approx(
            np.sum(prob.weight * prob.h * prob.c), rel=1e-12
        )
        errors.append(np.max(np.abs(nqm.expected_loss(b, opt, 8, steps) / exact - 1)))
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.05 * errors[0]
    single = nqm.NQMProblem(h=[0.3, 0.3], c=[1.0, 3.0]).binned(5)
    assert single.n_modes == 1 and single.h[0] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="n_bins"):
        prob.binned(0)


def test_save_load_round_trip(tmp_path):
    prob = _repeated_problem(3)
    path = tmp_path / "spec.npz"
    prob.save(path)
    back = nqm.NQMProblem.load(path)
    for name in ("h", "c", "init_sq", "weight"):
        np.testing.assert_array_equal(getattr(back, name), getattr(prob, name))
    assert [p.name for p in tmp_path.iterdir()] == ["spec.npz"]  # no temp file left
    # a file with only h and c is valid (defaults for the rest)
    np.savez(tmp_path / "min.npz", h=np.array([1.0, 0.5]), c=np.array([0.1, 0.2]))
    minimal = nqm.NQMProblem.load(tmp_path / "min.npz")
    np.testing.assert_array_equal(minimal.init_sq, [1.0, 1.0])


def test_load_rejects_corrupt_files(tmp_path):
    prob = nqm.NQMProblem.power_law(dim=4)
    good = tmp_path / "good.npz"
    prob.save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:40])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a numpy file at all")
    missing_c = tmp_path / "missing.npz"
    np.savez(missing_c, h=np.ones(3))
    bad_values = tmp_path / "bad.npz"
    np.savez(bad_values, h=np.array([1.0, -1.0]), c=np.ones(2))
    pickled = tmp_path / "pickled.npz"
    with zipfile.ZipFile(pickled, "w") as z:
        z.writestr("h.npy", b"\x93NUMPY garbage header")
    for path in (
        truncated,
        garbage,
        missing_c,
        bad_values,
        pickled,
        tmp_path / "none.npz",
    ):
        with pytest.raises(ValueError):
            nqm.NQMProblem.load(path)
    with pytest.raises(ValueError, match="c"):
        nqm.NQMProblem.load(missing_c)


def test_preconditioned_view():
    prob = nqm.NQMProblem(h=[4.0, 0.25], c=[1.0, 2.0])
    hh, cc = prob.preconditioned(0.5)
    np.testing.assert_allclose(hh, [2.0, 0.5], rtol=1e-15)
    np.testing.assert_allclose(cc, [0.25, 8.0], rtol=1e-15)
    hh1, cc1 = prob.preconditioned(1.0)
    np.testing.assert_allclose(hh1, [1.0, 1.0], rtol=1e-15)
    with pytest.raises(ValueError, match="precond_power"):
        prob.preconditioned(-0.1)
