"""Data sets: embedded ones that need no download, and loaders for local files.

Embedded (always available, generated or shipped with a dependency):

* MNIST-1D, generated locally by the ``mnist1d`` package at any sample count;
  inputs (N, 1, 40).
* scikit-learn's ``load_digits``: 1,797 8x8 images, inputs (N, 1, 8, 8).
* A synthetic token corpus from a seeded Zipfian Markov source
  (:class:`ZipfMarkovSource`), for the language models.

From a directory the user names (see :mod:`kfac_spectra.data_files` for formats):
MNIST and Fashion-MNIST IDX files, CIFAR-10 python batches, and a plain text file.

Images are scaled to [0, 1] and, by default, standardised per channel with the
training split's mean and standard deviation. Language-model data are token ids
(N, T) with next-token targets (N, T).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kfac_spectra.data_files import (
    CIFAR10_TEST_FILE,
    CIFAR10_TRAIN_FILES,
    IDX_FILES,
    DataFileError,
    DataFileNotFoundError,
    build_vocabulary,
    find_file,
    read_cifar10_batch,
    read_idx,
    tokenize_text,
)

__all__ = [
    "DataFileError",
    "DataFileNotFoundError",
    "DataSpec",
    "Dataset",
    "DatasetName",
    "InputKind",
    "TokenLevel",
    "ZipfMarkovSource",
    "iterate_batches",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_mnist1d",
    "load_mnist_idx",
    "load_synthetic_text",
    "load_text_file",
]

UNKNOWN_TOKEN = "<unk>"


class InputKind(StrEnum):
    """What a data set's inputs look like, so a model can be matched to it."""

    VECTOR = "vector"
    """(N, D) feature vectors."""
    SIGNAL = "signal"
    """(N, C, L) one-dimensional signals (MNIST-1D: C=1, L=40)."""
    IMAGE = "image"
    """(N, C, H, W) images."""
    TOKENS = "tokens"
    """(N, T) integer token ids; targets are the next tokens (N, T)."""


@dataclass(frozen=True)
class DataSpec:
    """Shape information a model builder needs from a data set.

    Attributes:
        kind: Input kind.
        input_shape: Shape of one input without the batch dimension: ``(D,)``,
            ``(C, L)``, ``(C, H, W)`` or ``(T,)``.
        num_outputs: Number of classes, regression outputs, or the vocabulary size.
    """

    kind: InputKind
    input_shape: tuple[int, ...]
    num_outputs: int

    def __post_init__(self) -> None:
        try:
            kind = InputKind(self.kind)
        except ValueError:
            raise ValueError(f"kind: unknown input kind {self.kind!r}") from None
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        expected = {
            InputKind.VECTOR: 1,
            InputKind.SIGNAL: 2,
            InputKind.IMAGE: 3,
            InputKind.TOKENS: 1,
        }[kind]
        if len(self.input_shape) != expected or min(self.input_shape) < 1:
            raise ValueError(
                f"input_shape {self.input_shape} does not fit kind {self.kind}: "
                f"expected {expected} positive dimensions"
            )
        if self.num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {self.num_outputs}")


@dataclass(frozen=True)
class Dataset:
    """A train/test split held in memory.

    Attributes:
        name: Data set name.
        x_train: Inputs (N, *spec.input_shape); float, or int64 token ids.
        y_train: Targets: int64 class labels (N,) or next tokens (N, T).
        x_test: Test inputs.
        y_test: Test targets.
        spec: Kind, input shape and number of outputs.
        vocabulary: Token strings (index = id) for text data, else ``None``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    spec: DataSpec
    vocabulary: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for x, y, split in (
            (self.x_train, self.y_train, "train"),
            (self.x_test, self.y_test, "test"),
        ):
            if x.shape[0] != y.shape[0] or tuple(x.shape[1:]) != self.spec.input_shape:
                raise ValueError(
                    f"{split} split: inputs {tuple(x.shape)} and targets "
                    f"{tuple(y.shape)} do not match spec {self.spec}"
                )


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield mini-batches, shuffled by ``generator`` (in order if it is ``None``).

    Args:
        x: Inputs (N, ...).
        y: Targets (N, ...).
        batch_size: Examples per batch.
        generator: CPU generator for the permutation, or ``None`` for no shuffle.
        drop_last: Drop a final incomplete batch.

    Yields:
        ``(x_batch, y_batch)``.

    Raises:
        ValueError: If ``batch_size`` < 1 or the lengths differ.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y lengths differ: {x.shape[0]} vs {y.shape[0]}")
    n = x.shape[0]
    order = (
        torch.arange(n) if generator is None else torch.randperm(n, generator=generator)
    )
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size].to(x.device)
        yield x[index], y[index]


def _standardize(
    train: np.ndarray, test: np.ndarray, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (axis 1) standardisation with training statistics in float64."""
    axes = (0, *range(2, train.ndim))
    mean = train.mean(axis=axes, dtype=np.float64, keepdims=True)
    std = train.std(axis=axes, dtype=np.float64, keepdims=True)
    std = np.where(std > 0, std, 1.0)
    return (
        torch.from_numpy((train - mean) / std).to(dtype),
        torch.from_numpy((test - mean) / std).to(dtype),
    )


def _split_index(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(n * test_fraction))
    return order[n_test:], order[:n_test]


def load_mnist1d(
    num_samples: int = 5000,
    *,
    seed: int = 42,
    train_fraction: float = 0.8,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Generate MNIST-1D locally (no download): 10 classes, signals of length 40.

    ``mnist1d.data.make_dataset`` seeds NumPy's and Python's global generators
    itself; we save and restore both around the call, so the caller's global state
    is unchanged and the data depend only on ``seed``.

    Args:
        num_samples: Total examples (rounded down to a multiple of 10: the package
            generates equally many per class).
        seed: Generation seed.
        train_fraction: Fraction of examples in the training split.
        dtype: Input dtype.

    Returns:
        Dataset with inputs (N, 1, 40), already centred and scaled by the package.

    Raises:
        ValueError: If ``num_samples`` < 20 or ``train_fraction`` is not in (0, 1).

    References:
        Greydanus 2020, "Scaling down deep learning" (MNIST-1D).
    """
    if num_samples < 20:
        raise ValueError(f"num_samples must be >= 20, got {num_samples}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    from mnist1d.data import get_dataset_args, make_dataset  # slow import (pyplot)

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, train_fraction
    # mnist1d seeds the legacy global generators; put the caller's state back.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    spec = DataSpec(InputKind.SIGNAL, (1, raw["x"].shape[1]), 10)
    return Dataset(
        "mnist1d",
        torch.from_numpy(raw["x"][:, None, :]).to(dtype),
        torch.from_numpy(raw["y"]).long(),
        torch.from_numpy(raw["x_test"][:, None, :]).to(dtype),
        torch.from_numpy(raw["y_test"]).long(),
        spec,
    )


def load_digits(
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped with sklearn).

    Args:
        seed: Seed of the random train/test split.
        test_fraction: Fraction of examples in the test split.
        standardize: Standardise with training mean and std (else scale to [0, 1]).
        dtype: Input dtype.

    Returns:
        Dataset with inputs (N, 1, 8, 8) and 10 classes.

    Raises:
        ValueError: If ``test_fraction`` is not in (0, 1).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = bunch.images[:, None].astype(np.float64) / 16.0
    train, test = _split_index(len(images), test_fraction, seed)
    return _image_dataset(
        "digits",
        images[train],
        bunch.target[train],
        images[test],
        bunch.target[test],
        standardize,
        dtype,
    )


def _image_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    standardize: bool,
    dtype: torch.dtype,
    num_classes: int = 10,
) -> Dataset:
    if standardize:
        xtr, xte = _standardize(x_train, x_test, dtype)
    else:
        xtr = torch.from_numpy(x_train).to(dtype)
        xte = torch.from_numpy(x_test).to(dtype)
    spec = DataSpec(InputKind.IMAGE, tuple(x_train.shape[1:]), num_classes)
    return Dataset(
        name,
        xtr,
        torch.from_numpy(np.asarray(y_train, dtype=np.int64)),
        xte,
        torch.from_numpy(np.asarray(y_test, dtype=np.int64)),
        spec,
    )


@dataclass(frozen=True)
class ZipfMarkovSource:
    """A first-order Markov chain over tokens with Zipfian transition rows.

    Row i ranks the tokens by a permutation :math:`\\pi_i` drawn from ``seed`` and
    gives the token of rank r probability

    .. math:: P(x_{t+1} = \\pi_i(r) \\mid x_t = i) \\propto (r + 1)^{-s},
       \\quad r = 0, \\dots, V - 1.

    The first token is drawn from the same Zipf law over ranks with the identity
    ranking. Unigram frequencies are then roughly Zipfian, as in natural text, and
    the conditional entropy is known exactly (:meth:`entropy_rate`).

    Attributes:
        vocab_size: V >= 2.
        exponent: Zipf exponent s > 0.
        seed: Seed of the permutations.
    """

    vocab_size: int = 64
    exponent: float = 1.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if not (math.isfinite(self.exponent) and self.exponent > 0):
            raise ValueError(f"exponent must be positive, got {self.exponent}")

    def zipf_weights(self) -> np.ndarray:
        """Zipf probabilities over ranks, shape (V,)."""
        w = np.arange(1, self.vocab_size + 1, dtype=np.float64) ** -self.exponent
        return w / w.sum()

    def transition_matrix(self) -> np.ndarray:
        """Row-stochastic (V, V) matrix, row = current token, column = next token."""
        rng = np.random.default_rng(self.seed)
        weights = self.zipf_weights()
        matrix = np.empty((self.vocab_size, self.vocab_size))
        for i in range(self.vocab_size):
            matrix[i, rng.permutation(self.vocab_size)] = weights
        return matrix

    def entropy_rate(self) -> float:
        """Conditional entropy H(x_{t+1} | x_t) in nats (the same for every row)."""
        w = self.zipf_weights()
        return float(-(w * np.log(w)).sum())

    def sample(self, num_tokens: int, rng: np.random.Generator) -> np.ndarray:
        """Draw one token stream.

        Args:
            num_tokens: Length of the stream.
            rng: Source of randomness.

        Returns:
            int64 array (num_tokens,).

        Raises:
            ValueError: If ``num_tokens`` < 1.
        """
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        cumulative = np.cumsum(self.transition_matrix(), axis=1)
        cumulative[:, -1] = 1.0
        uniforms = rng.random(num_tokens)
        tokens = np.empty(num_tokens, dtype=np.int64)
        first = np.cumsum(self.zipf_weights())
        first[-1] = 1.0
        tokens[0] = np.searchsorted(first, uniforms[0], side="right")
        for t in range(1, num_tokens):
            tokens[t] = np.searchsorted(
                cumulative[tokens[t - 1]], uniforms[t], side="right"
            )
        return tokens


def _sequences(stream: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a token stream into non-overlapping (input, next-token) pairs."""
    count = (len(stream) - 1) // seq_len
    if count < 1:
        raise ValueError(
            f"seq_len={seq_len} leaves no sequence in a stream of {len(stream)} tokens"
        )
    used = stream[: count * seq_len + 1]
    x = torch.from_numpy(used[:-1].reshape(count, seq_len).copy())
    y = torch.from_numpy(used[1:].reshape(count, seq_len).copy())
    return x, y


def load_synthetic_text(
    num_sequences: int = 2000,
    seq_len: int = 32,
    *,
    source: ZipfMarkovSource | None = None,
    seed: int = 0,
    test_fraction: float = 0.1,
) -> Dataset:
    """Token sequences from a seeded :class:`ZipfMarkovSource`.

    Args:
        num_sequences: Train plus test sequences.
        seq_len: Tokens per sequence T.
        source: The Markov source (default: ``ZipfMarkovSource()``, V=64).
        seed: Seed of the sampled stream.
        test_fraction: Fraction of sequences (the last ones) held out.

    Returns:
        Dataset with token inputs (N, T) and next-token targets (N, T).

    Raises:
        ValueError: For non-positive sizes or ``test_fraction`` outside (0, 1).
    """
    if num_sequences < 2 or seq_len < 1:
        raise ValueError(
            f"need num_sequences >= 2 and seq_len >= 1, got {num_sequences}, {seq_len}"
        )
    source = ZipfMarkovSource() if source is None else source
    stream = source.sample(num_sequences * seq_len + 1, np.random.default_rng(seed))
    x, y = _sequences(stream, seq_len)
    vocabulary = tuple(f"t{i}" for i in range(source.vocab_size))
    return _token_dataset("synthetic_text", x, y, test_fraction, vocabulary)


def _token_dataset(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    test_fraction: float,
    vocabulary: tuple[str, ...],
) -> Dataset:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = max(1, round(len(x) * test_fraction))
    if n_test >= len(x):
        raise ValueError(f"{len(x)} sequences are too few to hold out {n_test}")
    spec = DataSpec(InputKind.TOKENS, (x.shape[1],), len(vocabulary))
    return Dataset(
        name, x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:], spec, vocabulary
    )


def load_mnist_idx(
    root: str | os.PathLike[str],
    *,
    name: str = "mnist",
    standardize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """MNIST or Fashion-MNIST from the four standard IDX files in ``root``.

    Expects ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally
    ending in ``.gz``. Fashion-MNIST uses the same names.

    Args:
        root: Directory with the files.
        name: Name recorded in the returned data set.
        standardize: Standardise with training mean and std (else [0, 1]).
        dtype: Input dtype.

    Returns:
        Dataset with inputs (N, 1, 28, 28) and 10 classes.

    Raises:
        DataFileNotFoundError: If ``root`` or a file is missing.
        DataFileError: If a file is malformed or images and labels disagree.
    """
    arrays = {}
    for key, base in IDX_FILES.items():
        path = find_file(root, (base, base + ".gz"), f"the {name} file {base}[.gz]")
        arrays[key] = read_idx(path)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataFileError(
                f"{name} {split} files in {str(root)!r}: expected images (N, H, W) "
                f"and labels (N,), got {images.shape} and {labels.shape}"
            )
        if images.dtype != np.uint8 or labels.min() < 0 or labels.max() >= 10:
            raise DataFileError(
                f"{name} {split} files in {str(root)!r}: expected uint8 images and "
                "labels in [0, 10)"
            )
    return _image_dataset(
        name,
        arrays["train_images"][:, None].astype(np.float64) / 255.0,
        arrays["train_labels"],
        arrays["test_images"][:, None].astype(np.float64) / 255.0,
        arrays["test_labels"],
        standardize,
        dtype,
    )


def load_cifar10(
    root: str | os.PathLike[str],
    *,
    standardize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """CIFAR-10 from the python pickle batches.

    ``root`` is either the ``cifar-10-batches-py`` directory or its parent. It
    must hold ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``.

    Args:
        root: Directory with the files.
        standardize: Standardise per channel with training statistics (else [0, 1]).
        dtype: Input dtype.

    Returns:
        Dataset with inputs (N, 3, 32, 32) and 10 classes.

    Raises:
        DataFileNotFoundError: If ``root`` or a batch file is missing.
        DataFileError: If a batch file is malformed.
    """
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"

    def read(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        parts = [
            read_cifar10_batch(find_file(root, (n,), f"the CIFAR-10 batch {n}"))
            for n in names
        ]
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
        )

    x_train, y_train = read(CIFAR10_TRAIN_FILES)
    x_test, y_test = read((CIFAR10_TEST_FILE,))
    return _image_dataset(
        "cifar10",
        x_train.astype(np.float64) / 255.0,
        y_train,
        x_test.astype(np.float64) / 255.0,
        y_test,
        standardize,
        dtype,
    )


class TokenLevel(StrEnum):
    """How a text file is split into tokens."""

    CHARACTER = "char"
    WORD = "word"


def load_text_file(
    path: str | os.PathLike[str],
    *,
    level: TokenLevel | str = TokenLevel.CHARACTER,
    seq_len: int = 64,
    max_vocab: int | None = None,
    test_fraction: float = 0.1,
) -> Dataset:
    """A UTF-8 text file as next-token sequences.

    The vocabulary is built from the first ``1 - test_fraction`` of the token
    stream, sorted by decreasing count (ties by token). Tokens outside it, or
    beyond ``max_vocab``, map to ``"<unk>"``, which is then the last entry.

    Args:
        path: The text file.
        level: Characters or whitespace-separated words.
        seq_len: Tokens per sequence T.
        max_vocab: Largest vocabulary (including ``<unk>``), or ``None``.
        test_fraction: Fraction of the stream (its end) held out.

    Returns:
        Dataset with token inputs (N, T), next-token targets, and the vocabulary.

    Raises:
        DataFileNotFoundError: If the file does not exist.
        DataFileError: If it is not UTF-8 text or too short for one sequence.
        ValueError: For bad ``level``, ``seq_len``, ``max_vocab``,
            ``test_fraction``.
    """
    level = TokenLevel(level)
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"expected a text file at {str(path)!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise DataFileError(f"{str(path)!r} is not readable UTF-8 text: {err}") from err
    tokens = tokenize_text(text, level is TokenLevel.CHARACTER)
    split = int(len(tokens) * (1.0 - test_fraction))
    if min(split, len(tokens) - split) < seq_len + 1:
        raise DataFileError(
            f"{str(path)!r} has {len(tokens)} {level.value} tokens: too few for a "
            f"train and a test sequence of {seq_len} tokens at test_fraction "
            f"{test_fraction}"
        )
    vocabulary = build_vocabulary(tokens[:split], max_vocab, UNKNOWN_TOKEN)
    index = {t: i for i, t in enumerate(vocabulary)}
    if any(t not in index for t in tokens) and UNKNOWN_TOKEN not in index:
        vocabulary = (*vocabulary, UNKNOWN_TOKEN)
        index[UNKNOWN_TOKEN] = len(vocabulary) - 1
    unknown = index.get(UNKNOWN_TOKEN, -1)
    stream = np.array([index.get(t, unknown) for t in tokens], dtype=np.int64)
    x_train, y_train = _sequences(stream[: split + 1], seq_len)
    x_test, y_test = _sequences(stream[split:], seq_len)
    spec = DataSpec(InputKind.TOKENS, (seq_len,), len(vocabulary))
    return Dataset(path.stem, x_train, y_train, x_test, y_test, spec, vocabulary)


class DatasetName(StrEnum):
    """Registry of data sets (for the CLI)."""

    MNIST1D = "mnist1d"
    DIGITS = "digits"
    SYNTHETIC_TEXT = "synthetic_text"
    MNIST = "mnist"
    FASHION_MNIST = "fashion_mnist"
    CIFAR10 = "cifar10"
    TEXT_FILE = "text_file"


_EMBEDDED: dict[DatasetName, Callable[..., Dataset]] = {
    DatasetName.MNIST1D: load_mnist1d,
    DatasetName.DIGITS: load_digits,
    DatasetName.SYNTHETIC_TEXT: load_synthetic_text,
}

_FROM_PATH: dict[DatasetName, Callable[..., Dataset]] = {
    DatasetName.MNIST: lambda root, **kw: load_mnist_idx(root, name="mnist", **kw),
    DatasetName.FASHION_MNIST: lambda root, **kw: load_mnist_idx(
        root, name="fashion_mnist", **kw
    ),
    DatasetName.CIFAR10: load_cifar10,
    DatasetName.TEXT_FILE: load_text_file,
}


def load_dataset(
    name: DatasetName | str, path: str | os.PathLike[str] | None = None, **options: Any
) -> Dataset:
    """Load a registered data set.

    Args:
        name: A :class:`DatasetName` (or its value).
        path: Directory (MNIST, Fashion-MNIST, CIFAR-10) or file (text) for the
            data sets read from disk; must be ``None`` for the embedded ones.
        **options: Keyword arguments of the specific loader.

    Returns:
        The data set.

    Raises:
        ValueError: For an unknown name, or a ``path`` given to an embedded data
            set or missing for a file-based one.
        DataFileError: If the files are missing or malformed.
    """
    try:
        key = DatasetName(name)
    except ValueError:
        raise ValueError(
            f"name: unknown data set {name!r}; choose from "
            f"{[d.value for d in DatasetName]}"
        ) from None
    if key in _EMBEDDED:
        if path is not None:
            raise ValueError(f"path: data set {key.value} is embedded and takes none")
        return _EMBEDDED[key](**options)
    if path is None:
        raise ValueError(f"path: data set {key.value} is read from disk; name a path")
    return _FROM_PATH[key](path, **options)
