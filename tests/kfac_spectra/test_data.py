"""Tests for kfac_spectra.data and kfac_spectra.data_files.

The real-file loaders are exercised on small files written here in exactly the
published formats (IDX magic numbers and big-endian dimensions, gzip, CIFAR-10
pickled dicts), so they are checked against the format, not against themselves.
"""

from __future__ import annotations

import gzip
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kfac_spectra.data import (
    DataFileError,
    DataFileNotFoundError,
    DatasetName,
    InputKind,
    TokenLevel,
    ZipfMarkovSource,
    iterate_batches,
    load_cifar10,
    load_dataset,
    load_digits,
    load_mnist1d,
    load_mnist_idx,
    load_synthetic_text,
    load_text_file,
)
from kfac_spectra.data_files import read_idx

STANDARDIZE_TOL = 1e-10


def write_idx(path: Path, array: np.ndarray, type_byte: int, gz: bool) -> None:
    """Write ``array`` in the IDX format: 00 00 type ndim, dims (>u4), data (BE)."""
    header = bytes([0, 0, type_byte, array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if gz:
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def write_mnist_dir(root: Path, gz: bool, n_train: int = 12, n_test: int = 5) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(root / (name + (".gz" if gz else "")), array, 0x08, gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist_dir(tmp_path, gz)
    data = load_mnist_idx(tmp_path, standardize=False, dtype=torch.float64)
    assert data.spec.kind == InputKind.IMAGE
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
    expected = arrays["train-images-idx3-ubyte"][:, None] / 255.0
    np.testing.assert_array_equal(data.x_train.numpy(), expected)
    np.testing.assert_array_equal(
        data.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"].astype(np.int64)
    )


def test_mnist_standardized_with_training_statistics(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path, gz=False)
    data = load_mnist_idx(tmp_path, dtype=torch.float64)
    assert abs(data.x_train.mean().item()) < STANDARDIZE_TOL
    assert abs(data.x_train.std(unbiased=False).item() - 1.0) < STANDARDIZE_TOL


def test_fashion_mnist_uses_same_files(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path, gz=True)
    data = load_dataset(DatasetName.FASHION_MNIST, tmp_path)
    assert data.name == "fashion_mnist" and data.x_train.shape[0] == 12


def test_read_idx_big_endian_float(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5
    write_idx(tmp_path / "f.idx", array, 0x0D, gz=False)
    out = read_idx(tmp_path / "f.idx")
    np.testing.assert_array_equal(out, array)
    assert out.dtype == np.float32


def test_mnist_missing_directory_and_file(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match="does not exist"):
        load_mnist_idx(tmp_path / "nowhere")
    write_mnist_dir(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist_idx(tmp_path)


@pytest.mark.parametrize(
    ("corruption", "message"),
    [
        ("magic", "not an IDX file"),
        ("truncated", "IDX dimensions"),
        ("bad_gzip", "gzip"),
        ("count_mismatch", "labels"),
    ],
)
def test_mnist_corrupt_files(tmp_path: Path, corruption: str, message: str) -> None:
    arrays = write_mnist_dir(tmp_path, gz=False)
    target = tmp_path / "train-images-idx3-ubyte"
    raw = target.read_bytes()
    if corruption == "magic":
        target.write_bytes(b"\x12\x34" + raw[2:])
    elif corruption == "truncated":
        target.write_bytes(raw[:-10])
    elif corruption == "bad_gzip":
        target.write_bytes(b"\x1f\x8b" + b"not really gzip")
    else:
        labels = arrays["train-labels-idx1-ubyte"][:-1]
        write_idx(tmp_path / "train-labels-idx1-ubyte", labels, 0x08, gz=False)
    with pytest.raises(DataFileError, match=message) as info:
        load_mnist_idx(tmp_path)
    assert isinstance(info.value, ValueError)
    assert str(tmp_path) in str(info.value)


def write_cifar_dir(root: Path, per_batch: int = 4) -> dict:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, (per_batch, 3072), np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
        }
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = batch
    return written


def test_cifar10_roundtrip(tmp_path: Path) -> None:
    written = write_cifar_dir(tmp_path / "cifar-10-batches-py")
    data = load_cifar10(tmp_path, standardize=False, dtype=torch.float64)
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    first = written["data_batch_1"][b"data"][0]
    # 1024 red, then green, then blue values, each a row-major 32x32 image
    np.testing.assert_array_equal(
        data.x_train[0, 1].numpy(), first[1024:2048].reshape(32, 32) / 255.0
    )
    np.testing.assert_array_equal(
        data.y_train[4:8].numpy(), written["data_batch_2"][b"labels"]
    )
    standardized = load_cifar10(tmp_path / "cifar-10-batches-py", dtype=torch.float64)
    channel_means = standardized.x_train.mean(dim=(0, 2, 3))
    assert channel_means.abs().max().item() < STANDARDIZE_TOL


def test_cifar10_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError):
        load_cifar10(tmp_path / "absent")
    write_cifar_dir(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataFileNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path)
    write_cifar_dir(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"garbage, not a pickle")
    with pytest.raises(DataFileError, match="test_batch"):
        load_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10))}))
    with pytest.raises(DataFileError, match="labels"):
        load_cifar10(tmp_path)


def test_text_file_char_and_word(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    text = "the cat sat on the mat and the dog sat on the log " * 6
    path.write_text(text, encoding="utf-8")
    chars = load_text_file(path, level=TokenLevel.CHARACTER, seq_len=8)
    vocab = chars.vocabulary
    assert chars.spec.kind == InputKind.TOKENS and chars.spec.num_outputs == len(vocab)
    # most frequent character first; ids decode back to the text
    assert vocab[0] == " "
    decoded = "".join(vocab[i] for i in chars.x_train[0].tolist())
    assert decoded == text[:8]
    np.testing.assert_array_equal(chars.x_train[:, 1:], chars.y_train[:, :-1])
    np.testing.assert_array_equal(chars.x_train[1:, 0], chars.y_train[:-1, -1])
    words = load_text_file(path, level="word", seq_len=4, max_vocab=5)
    # the training 90% is 70 of 78 words: five repeats plus "the cat sat on the";
    # counts the 22 > on = sat 11 (tie by token) > cat 6 > the rest 5; <unk> last
    assert words.vocabulary == ("the", "on", "sat", "cat", "<unk>")
    assert len(words.vocabulary) == 5 and words.vocabulary[-1] == "<unk>"
    first = [words.vocabulary[i] for i in words.x_train[0].tolist()]
    expected = [w if w in words.vocabulary else "<unk>" for w in text.split()[:4]]
    assert first == expected


def test_text_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match="text file"):
        load_text_file(tmp_path / "none.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa invalid utf-8")
    with pytest.raises(DataFileError, match="UTF-8"):
        load_text_file(bad)
    short = tmp_path / "short.txt"
    short.write_text("abc", encoding="utf-8")
    with pytest.raises(DataFileError, match="too few"):
        load_text_file(short, seq_len=8)


def test_mnist1d_generated_locally_and_leaves_global_state() -> None:
    np_before = np.random.get_state()[1].copy()  # noqa: NPY002
    py_before = random.getstate()
    a = load_mnist1d(200, seed=3)
    b = load_mnist1d(200, seed=3)
    c = load_mnist1d(200, seed=4)
    assert a.x_train.shape == (160, 1, 40) and a.x_test.shape == (40, 1, 40)
    assert a.spec.kind == InputKind.SIGNAL and a.spec.num_outputs == 10
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert set(a.y_train.tolist()) == set(range(10))
    np.testing.assert_array_equal(np.random.get_state()[1], np_before)  # noqa: NPY002
    assert random.getstate() == py_before


def test_digits() -> None:
    data = load_digits(seed=0, dtype=torch.float64)
    assert data.x_train.shape[1:] == (1, 8, 8)
    assert data.x_train.shape[0] + data.x_test.shape[0] == 1797
    assert abs(data.x_train.mean().item()) < STANDARDIZE_TOL


def test_zipf_markov_source_matches_its_transition_matrix() -> None:
    source = ZipfMarkovSource(vocab_size=6, exponent=1.0, seed=2)
    matrix = source.transition_matrix()
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    # every row is a permutation of the same Zipf weights 1/(r+1) / H_6
    weights = 1.0 / np.arange(1, 7) / np.sum(1.0 / np.arange(1, 7))
    np.testing.assert_allclose(
        np.sort(matrix, axis=1)[:, ::-1], weights[None] + 0 * matrix
    )
    entropy = -(matrix * np.log(matrix)).sum(axis=1)
    np.testing.assert_allclose(entropy, source.entropy_rate(), rtol=1e-12)
    stream = source.sample(60_000, np.random.default_rng(0))
    counts = np.zeros((6, 6))
    np.add.at(counts, (stream[:-1], stream[1:]), 1)
    visits = counts.sum(axis=1, keepdims=True)
    empirical = counts / visits
    # binomial standard error per cell; 5 sigma is a loose bound for 36 cells
    se = np.sqrt(matrix * (1 - matrix) / visits)
    assert np.all(np.abs(empirical - matrix) < 5 * se + 1e-12)


def test_synthetic_text_dataset() -> None:
    source = ZipfMarkovSource(vocab_size=16, seed=1)
    data = load_synthetic_text(50, 10, source=source, seed=5)
    assert data.x_train.shape == (45, 10) and data.x_test.shape == (5, 10)
    assert data.spec.num_outputs == 16 and data.x_train.dtype == torch.int64
    np.testing.assert_array_equal(data.x_train[:, 1:], data.y_train[:, :-1])
    again = load_synthetic_text(50, 10, source=source, seed=5)
    assert torch.equal(data.x_train, again.x_train)


def test_iterate_batches_is_a_permutation() -> None:
    x = torch.arange(10).float()[:, None]
    y = torch.arange(10)
    gen = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(x, y, 4, generator=gen))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(10))
    assert all(torch.equal(bx[:, 0].long(), by) for bx, by in batches)
    dropped = list(iterate_batches(x, y, 4, generator=None, drop_last=True))
    assert torch.equal(torch.cat([b[1] for b in dropped]), torch.arange(8))
    with pytest.raises(ValueError, match="batch_size"):
        list(iterate_batches(x, y, 0, generator=None))


def test_load_dataset_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="path"):
        load_dataset(DatasetName.MNIST)
    with pytest.raises(ValueError, match="path"):
        load_dataset(DatasetName.DIGITS, tmp_path)
