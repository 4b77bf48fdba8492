"""The deep-autoencoder benchmark: schedules, model, data loading and the CLI."""

from __future__ import annotations

import csv
import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kfac_spectra.__main__ import main
from kfac_spectra.autoencoder import (
    MNIST_ENCODER,
    SPARSE_FAN_IN,
    AutoencoderConfig,
    build_autoencoder,
    exponential_batch_size,
    load_images,
    reconstruction_error,
    sutskever_momentum,
)
from kfac_spectra.data_files import DataFileError, DataFileNotFoundError
from nqm.run_folder import verify_folder

EXACT_RTOL = 1e-12
TINY = [
    "--iterations",
    "3",
    "--sgd-iterations",
    "8",
    "--eval-interval",
    "2",
    "--kfac-initial-batch",
    "64",
    "--kfac-full-batch-at",
    "3",
    "--train-size",
    "120",
]


def _write_idx_images(path: Path, images: np.ndarray, gz: bool) -> None:
    """IDX by hand: 00 00 08 03, three big-endian u4 dims, then the bytes."""
    payload = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", *images.shape)
    payload += images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)


def test_sutskever_momentum_schedule() -> None:
    # 1 − 2^{−1−log2(⌊t/250⌋+1)}: 1/2, 3/4, then 5/6 at t = 500, 7/8 at 750
    assert sutskever_momentum(0, 0.999) == 0.5
    assert sutskever_momentum(249, 0.999) == 0.5
    assert math.isclose(sutskever_momentum(250, 0.999), 0.75, rel_tol=EXACT_RTOL)
    assert math.isclose(sutskever_momentum(500, 0.999), 5 / 6, rel_tol=EXACT_RTOL)
    assert math.isclose(sutskever_momentum(750, 0.999), 7 / 8, rel_tol=EXACT_RTOL)
    assert sutskever_momentum(10**6, 0.99) == 0.99


def test_exponential_batch_size_schedule() -> None:
    m1, n, full_at = 100, 1797, 40
    sizes = [exponential_batch_size(k, m1, n, full_at) for k in range(1, 60)]
    assert sizes[0] == m1 and sizes[full_at - 1] == n and sizes[-1] == n
    assert all(a <= b for a, b in zip(sizes, sizes[1:], strict=False))
    k = 21  # m_k = m_1 (N/m_1)^{(k−1)/(full_at−1)}
    assert sizes[k - 1] == round(m1 * (n / m1) ** ((k - 1) / (full_at - 1)))
    assert exponential_batch_size(5, 2000, n, full_at) == n


def test_autoencoder_architecture_and_sparse_init() -> None:
    model = build_autoencoder((20, 16, 8, 3), seed=0, dtype=torch.float64)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    widths = [(m.in_features, m.out_features) for m in linears]
    assert widths == [(20, 16), (16, 8), (8, 3), (3, 8), (8, 16), (16, 20)]
    kinds = [type(m).__name__ for m in model]
    # logistic hidden units, a linear code layer, logits at the output
    assert kinds == [
        "Linear", "Sigmoid", "Linear", "Sigmoid", "Linear",
        "Linear", "Sigmoid", "Linear", "Sigmoid", "Linear",
    ]  # fmt: skip
    for m in linears:
        nonzero = (m.weight != 0).sum(dim=1)
        assert torch.all(nonzero == min(SPARSE_FAN_IN, m.in_features))
        assert torch.all(m.bias == 0)
    again = build_autoencoder((20, 16, 8, 3), seed=0, dtype=torch.float64)
    assert all(
        torch.equal(p, q)
        for p, q in zip(model.parameters(), again.parameters(), strict=True)
    )


def test_reconstruction_error_is_squared_error_per_image() -> None:
    model = build_autoencoder((6, 4, 2), seed=1, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(7, 6, generator=gen, dtype=torch.float64)
    brute = 0.0
    for row in x:
        with torch.no_grad():
            recon = 1.0 / (1.0 + torch.exp(-model(row[None])[0]))
        brute += float(sum((recon[d] - row[d]) ** 2 for d in range(6)))
    got = reconstruction_error(model, x, chunk=3)
    assert math.isclose(got, brute / 7, rel_tol=EXACT_RTOL)


@pytest.mark.parametrize("gz", [False, True])
def test_load_images_reads_mnist_idx(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (9, 28, 28), dtype=np.uint8)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    _write_idx_images(tmp_path / name, images, gz)
    got = load_images(tmp_path)
    assert got.shape == (9, 784) and got.dtype == torch.float64
    expected = torch.from_numpy(images.reshape(9, -1).astype(np.float64)) / 255
    assert torch.equal(got, expected)
    assert torch.equal(load_images(tmp_path, train_size=4), expected[:4])
    with pytest.raises(ValueError, match="train_size"):
        load_images(tmp_path, train_size=10)


def test_load_images_rejects_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match="train-images-idx3-ubyte"):
        load_images(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00")
    with pytest.raises(DataFileError):
        load_images(tmp_path)
    digits = load_images(None)
    assert digits.shape == (1797, 64)
    assert float(digits.min()) == 0.0 and float(digits.max()) == 1.0


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="methods"):
        AutoencoderConfig(methods=("adam",))
    with pytest.raises(ValueError, match="kfac_full_batch_at"):
        AutoencoderConfig(kfac_full_batch_at=0)
    with pytest.raises(ValueError, match="sgd_max_momentum"):
        AutoencoderConfig(sgd_max_momentum=1.0)


def test_cli_smoke_resume_and_config_clash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ae"
    assert main(["autoencoder", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "target training error" in printed
    with open(out / "autoencoder_curves.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    methods = {r["method"] for r in rows}
    assert methods == {"sgd_nesterov", "kfac_blockdiag", "kfac_tridiag"}
    for method in methods:
        errors = [float(r["train_error"]) for r in rows if r["method"] == method]
        assert all(math.isfinite(e) for e in errors) and errors[-1] < errors[0]
    assert (out / "autoencoder.png").stat().st_size > 0
    assert (out / "autoencoder.pdf").stat().st_size > 0
    curves = sorted(out.glob("curve_*.json"))
    before = {p: p.read_bytes() for p in curves}
    stamps = {p: p.stat().st_mtime_ns for p in curves}
    # a rerun with the same configuration resumes: no method is trained again
    assert main(["autoencoder", "--out", str(out), *TINY]) == 0
    assert {p: p.stat().st_mtime_ns for p in curves} == stamps
    assert {p: p.read_bytes() for p in curves} == before
    listed = verify_folder(out)["files"]  # every file, with its checksum
    assert {p.name for p in curves} | {"autoencoder.png"} <= set(listed)
    capsys.readouterr()
    assert main(["autoencoder", "--out", str(out), *TINY, "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "another configuration" in err and "\n" not in err
    # a corrupted curve is not resumed from
    curves[0].write_bytes(before[curves[0]][:-3])
    assert main(["autoencoder", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert curves[0].name in err and "checksum" in err and "\n" not in err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--iterations", "0"], "iterations"),
        (["--methods", "adam"], "methods"),
        (["--mnist-dir", "no/such/dir"], "no/such/dir"),
        (["--threads", "0"], "threads"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    out = tmp_path / "ae"
    assert main(["autoencoder", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err
    assert not out.exists()


@pytest.mark.slow
def test_cli_mnist_architecture_on_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    _write_idx_images(tmp_path / "train-images-idx3-ubyte.gz", images, gz=True)
    out = tmp_path / "ae"
    argv = ["autoencoder", "--out", str(out), "--mnist-dir", str(tmp_path)]
    argv += ["--iterations", "2", "--sgd-iterations", "2", "--eval-interval", "1"]
    argv += ["--kfac-initial-batch", "20", "--kfac-full-batch-at", "2"]
    assert main(argv) == 0
    model = build_autoencoder(MNIST_ENCODER, seed=0)
    assert sum(isinstance(m, nn.Linear) for m in model) == 8
    assert (out / "autoencoder_curves.csv").exists()
