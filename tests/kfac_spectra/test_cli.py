"""Smoke and error-path tests of ``python -m kfac_spectra``.

Oracles: the report's NQM file equals ``estimate_nqm`` of the same run; its E.2
table equals ``compare_variance_curvature`` of the stored statistics; its E.4
table equals ``fit_power_law`` of the stored factor eigenvalues.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kfac_spectra.__main__ import main
from kfac_spectra.bridge import estimate_nqm
from kfac_spectra.gradient_stats import compare_variance_curvature
from kfac_spectra.powerlaw import fit_power_law
from kfac_spectra.spectra import FactorSpectrum, kfac_eigenvalues
from kfac_spectra.train import load_checkpoint_arrays
from nqm import NQMProblem
from nqm.run_folder import verify_folder

REPO = Path(__file__).resolve().parents[2]
RUN_ARGS = [
    "--model",
    "mlp",
    "--data",
    "digits",
    "--width",
    "0.03",
    "--steps",
    "6",
    "--checkpoints",
    "0,3",
    "--batch-size",
    "32",
    "--measure-examples",
    "64",
    "--measure-fisher",
    "type2",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["run", "--out", str(out), *RUN_ARGS]) == 0
    return out


def test_run_and_report(run_dir, tmp_path, capsys):
    figures = tmp_path / "figs"
    assert main(["report", str(run_dir), "--figures", str(figures)]) == 0
    printed = capsys.readouterr().out
    assert "power-law exponent" in printed and "within 2x" in printed
    for stem in ("e1_spectra", "e2_variance_curvature", "e4_power_law"):
        for ext in ("png", "pdf", "csv"):
            assert (figures / f"{stem}.{ext}").stat().st_size > 0
    problem = NQMProblem.load(run_dir / "nqm_problem.npz")
    expected = estimate_nqm(run_dir, 0)
    np.testing.assert_array_equal(problem.h, expected.h)
    np.testing.assert_array_equal(problem.c, expected.c)
    np.testing.assert_array_equal(problem.init_sq, expected.init_sq)
    assert f"{problem.n_modes} modes" in printed
    # the run keeps a complete manifest listing the problem; the figures folder
    # has its own
    assert "nqm_problem.npz" in verify_folder(run_dir)["files"]
    assert verify_folder(run_dir)["complete"] is True
    assert "e1_spectra.png" in verify_folder(figures)["files"]

    _, stats, _ = load_checkpoint_arrays(run_dir, 6)
    comparison = compare_variance_curvature(stats)
    with open(figures / "e2_variance_curvature.csv") as handle:
        rows = {r["block"]: r for r in csv.DictReader(handle)}
    assert set(rows) == set(comparison)
    for name, comp in comparison.items():
        assert float(rows[name]["fraction_within_2x"]) == pytest.approx(
            comp.fraction_within, rel=1e-12
        )
        assert float(rows[name]["log_slope"]) == pytest.approx(comp.log_slope, rel=1e-9)

    factors, _, _ = load_checkpoint_arrays(run_dir, 6)
    spectrum = kfac_eigenvalues(
        {
            k: FactorSpectrum(f["row_values"], f["col_values"])
            for k, f in factors.items()
        }
    )
    with open(figures / "e4_power_law.csv") as handle:
        row = next(csv.DictReader(handle))
    fit = fit_power_law(
        spectrum,
        rank_min=int(row["rank_min"]),
        rank_max=int(row["rank_max"]),
        num_points=int(row["num_points"]) if spectrum.size >= 60 else None,
    )
    assert int(row["rank_max"]) <= int(np.sum(spectrum > 0)) // 2
    assert float(row["exponent"]) == pytest.approx(fit.exponent, rel=1e-9)

    with open(figures / "e1_spectra.csv") as handle:
        e1 = list(csv.DictReader(handle))
    counts = {}
    for r in e1:
        counts[int(r["step"])] = counts.get(int(r["step"]), 0) + int(r["count"])
    for step in (0, 3, 6):  # every eigenvalue is in exactly one row
        factors, _, _ = load_checkpoint_arrays(run_dir, step)
        sizes = [f["row_values"].size * f["col_values"].size for f in factors.values()]
        assert counts[step] == sum(sizes)


def test_report_other_steps(run_dir, tmp_path):
    assert (
        main(
            [
                "report",
                str(run_dir),
                "--figures",
                str(tmp_path),
                "--step",
                "3",
                "--nqm-step",
                "3",
            ]
        )
        == 0
    )
    problem = NQMProblem.load(run_dir / "nqm_problem.npz")
    np.testing.assert_array_equal(problem.h, estimate_nqm(run_dir, 3).h)


def test_run_with_config_file(tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text('model = "mlp"\ndata = "digits"\nwidth = 0.03\nsteps = 50\n')
    out = tmp_path / "run"
    args = [
        "run",
        "--config",
        str(toml),
        "--steps",
        "2",
        "--checkpoints",
        "",
        "--measure-examples",
        "16",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "collected steps [2]" in capsys.readouterr().out
    assert (out / "step_000002" / "stats.npz").is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--out", "x", "--steps", "-1"],
        ["run", "--out", "x", "--model", "vgg"],
        ["run", "--out", "x", "--width", "wide"],
        ["run", "--out", "x", "--config", "/nonexistent/c.toml"],
        ["run", "--model", "mlp"],
        ["run", "--out", "x", "--bogus", "1"],
        ["report", "/nonexistent/run"],
        ["frobnicate"],
        ["--steps", "3"],
    ],
)
def test_errors_are_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m kfac_spectra: error:")
    assert len(err.splitlines()) == 1


def test_report_step_not_collected(run_dir, capsys):
    assert main(["report", str(run_dir), "--step", "5"]) == 2
    assert "step" in capsys.readouterr().err


def test_module_entry_point_exit_status(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "kfac_spectra", "report", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "no manifest.json" in proc.stderr


def _absent_devices() -> list[str]:
    """Device names no run can use here: an index past the last CUDA device
    (whether or not CUDA exists), plain ``cuda`` without CUDA, and ``meta``."""
    import torch

    names = ["cuda:99", "meta"]
    if not torch.cuda.is_available():
        names.append("cuda")
    return names


@pytest.mark.parametrize("device", _absent_devices())
def test_run_on_absent_device_is_one_line_before_any_work(tmp_path, device):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "kfac_spectra", "run", "--device", device,
         "--out", str(out), *RUN_ARGS],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert repr(device) in proc.stderr
    assert not out.exists()
