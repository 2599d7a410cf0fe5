"""The `Dataset` container: train/validation/test arrays, their schema, and the shared preparation steps.

Every loader (synthetic, tabular, images, the user's own arrays) ends in `prepare`, so splitting,
standardisation (fitted on train only), bound inference and validation happen in one place.
"""
from __future__ import annotations

import dataclasses
import sys
import warnings
from typing import Iterator, Sequence

import numpy as np

from ctrain import constraints as cons
from ctrain.data.schema import Schema, as_matrix, check_features, check_one_hot
from ctrain.data.table import Layout, decode_frame, encode_frame


BALANCE_MODES = (None, "oversample", "undersample")


@dataclasses.dataclass(frozen=True)
class Standardizer:
    """Per-feature affine map x -> (x - mean) / scale; one-hot columns keep mean 0, scale 1.

    `mean` and `scale` are float64 and the map is computed in float64, rounding only its float32 result: a
    column far from 0 relative to its spread (a timestamp, 1.7e9 ± 30) has no distinct values left in float32
    before its offset is removed.
    """

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, schema: Schema) -> "Standardizer":
        """Returns a Standardizer fitted on x (N, D) in float64; categorical columns are left untouched."""
        x = np.asarray(x, np.float64)
        mean = x.mean(0)
        scale = x.std(0)
        scale[scale == 0] = 1.0  # a constant column stays constant instead of becoming NaN
        cat = np.array([f.kind == "categorical" for f in schema.features])
        mean[cat], scale[cat] = 0.0, 1.0
        return cls(mean, scale)

    @classmethod
    def identity(cls, width: int) -> "Standardizer":
        """Returns the Standardizer that leaves every one of `width` columns as it is (mean 0, scale 1)."""
        return cls(np.zeros(width, np.float64), np.ones(width, np.float64))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Returns (x - mean) / scale as float32, same shape as x (computed in float64)."""
        if not np.any(self.mean) and np.all(self.scale == 1):  # e.g. images: no float64 copy of a large array
            return np.array(x, np.float32)
        return ((np.asarray(x, np.float64) - self.mean) / self.scale).astype(np.float32)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """Returns x * scale + mean as float64, same shape as x (back to the original units).

        float64, because in float32 a column far from 0 relative to its spread loses its distinct values.
        """
        return np.asarray(x, np.float64) * self.scale + self.mean

    def transform_schema(self, schema: Schema) -> Schema:
        """Returns the schema with its user-given (finite) bounds mapped into standardised units."""
        feats = []
        for f, m, s in zip(schema.features, self.mean, self.scale):
            feats.append(dataclasses.replace(f, lower=(f.lower - m) / s, upper=(f.upper - m) / s, scale=f.scale / s))
        return Schema(tuple(feats))


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train/validation/test splits (x: (N, D) float32, y: (N,) int32) with their feature schema.

    Construction checks every split: width and finiteness against the schema, labels in [0, num_classes),
    exactly one 1 per row in each one-hot group, one class name per class (or none). The training split must
    not be empty. The validation and test splits may be: an empty validation split is what most loaders
    return, and an empty test split is allowed for a Dataset built on purpose (e.g. `prepare` with a 0-row
    test array to train on everything; `fit` then has no test metrics). The loaders and `from_arrays` never
    return an empty test split: they raise instead.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    schema: Schema
    num_classes: int
    standardizer: Standardizer
    class_names: tuple[str, ...] = ()
    image_shape: tuple[int, ...] | None = None  # e.g. (28, 28) to un-flatten rows for plots and CNNs
    # The columns of the DataFrame it was built from (`ctrain.data.table.Layout`), for encode/decode; None: arrays.
    table: Layout | None = None

    def __post_init__(self):
        if self.num_classes < 2:
            raise ValueError(f"dataset {self.name!r}: need at least 2 classes, got {self.num_classes}")
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class names {list(self.class_names)} for "
                             f"{self.num_classes} classes; give one name per class, or none")
        for split in ("train", "val", "test"):
            x = check_features(getattr(self, f"x_{split}"), self.schema, what=f"{self.name}: x_{split}")
            y = check_labels(getattr(self, f"y_{split}"), what=f"{self.name}: y_{split}")
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"{self.name}: y_{split} must have shape ({x.shape[0]},), got {y.shape}")
            if y.size and y.max() >= self.num_classes:
                raise ValueError(f"{self.name}: y_{split} has labels outside [0, {self.num_classes})")
            check_one_hot(x, self.schema, what=f"{self.name}: x_{split}")
            object.__setattr__(self, f"x_{split}", x)
            object.__setattr__(self, f"y_{split}", y)
        if len(self.x_train) == 0:
            raise ValueError(f"{self.name}: the training split is empty")

    @property
    def num_features(self) -> int:
        return self.schema.width

    def input_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns (mean, std), each (D,) float32, for `make_model(..., input_stats=...)`: the training split's
        for continuous columns, (0, 1) for one-hot columns.

        One-hot columns have no units to remove (the loaders and `standardized()` leave them 0/1, as the paper
        does); dividing them by their standard deviation would weight a rare category's column several times
        more than a common one's in the model's input.
        """
        onehot = np.array([f.kind == "categorical" for f in self.schema.features])
        mean, std = self.x_train.mean(0), self.x_train.std(0)
        return (np.where(onehot, 0.0, mean).astype(np.float32), np.where(onehot, 1.0, std).astype(np.float32))

    def class_mean_gaps(self) -> np.ndarray:
        """Returns (D,) |μ₁ − μ₀| / σ of a binary dataset's training split, σ the pooled within-class std per feature.

        The per-feature separation of the two classes in σ units: for Gaussian classes with a shared diagonal
        covariance, the features' weights in the Bayes decision are these gaps over σ (Proposition 3.1's geometry).
        """
        if self.num_classes != 2:
            raise ValueError(f"class_mean_gaps needs 2 classes, {self.name!r} has {self.num_classes}")
        x, y = np.asarray(self.x_train, np.float64), np.asarray(self.y_train)
        a, b = x[y == 0], x[y == 1]
        if len(a) < 2 or len(b) < 2:
            raise ValueError("class_mean_gaps needs at least two training rows of each class")
        pooled = np.sqrt(((len(a) - 1) * a.var(0, ddof=1) + (len(b) - 1) * b.var(0, ddof=1)) / (len(x) - 2))
        return np.abs(a.mean(0) - b.mean(0)) / np.where(pooled > 0, pooled, 1.0)

    def lattice(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns (origin, step), each (D,) float64: integer feature j takes the values origin[j] + k·step[j] (k whole)
        in this Dataset's units; step 0 marks a feature without a lattice (continuous values, one-hot columns).

        An integer feature with standardiser mean m and scale s has step 1/s and origin (round(m) − m)/s, the
        lattice point nearest 0: the same points as −m/s + k/s, with an origin small enough for float32.
        """
        integer = self.schema.integer_mask()
        m, s = self.standardizer.mean, self.standardizer.scale
        origin = np.where(integer, (np.round(m) - m) / s, 0.0)
        step = np.where(integer, 1.0 / s, 0.0)
        return origin, step

    def constraints(self):
        """Returns the `ctrain.constraints.Constraints` arrays for this dataset's schema, with the integer features'
        lattice (`lattice()`) when there are any."""
        return cons.from_schema(self.schema, *self.lattice())

    def _layout(self):
        return self.table if self.table is not None else Layout.from_schema(self.schema)

    def encode(self, frame) -> np.ndarray:
        """Returns the (N, D) float32 features of a DataFrame's N rows, encoded and scaled as the training rows were.

        The training split's categories and standardiser are used, never the new rows' own statistics. A missing or
        unknown column, a missing value, an unseen category, a non-number or a fraction in an integer column raises
        a ValueError naming the column and the value. A Dataset built from arrays takes one column per continuous
        feature and per one-hot group (its levels are the members' names after "<group>=").
        """
        x = encode_frame(frame, self._layout(), what=f"{self.name}: the frame")
        x = check_features(x, self.schema, what=f"{self.name}: the encoded frame", dtype=None)
        return self.standardizer.transform(x)

    def decode(self, x):
        """Returns a pandas DataFrame (N rows) of features x (N, D) in the original columns, units and categories.

        Standardisation is undone in float64, each one-hot group becomes its largest entry's category (argmax) and
        integer features are rounded to whole numbers with an integer dtype; a frame's own dtypes are kept.
        """
        x = check_features(x, self.schema, what=f"{self.name}: x to decode", dtype=None)
        return decode_frame(self.standardizer.inverse(x), self._layout())

    def affine(self, multiply, add=0.0, *, name: str | None = None) -> "Dataset":
        """Returns a copy whose continuous columns are x·multiply + add in every split (one-hot columns unchanged).

        `multiply` (> 0) and `add` are scalars or (D,) arrays. Bounds and per-feature scales move with the
        data and the standardiser is updated, so `standardizer.inverse` still returns the original units.
        """
        d = self.num_features
        a = np.broadcast_to(np.asarray(multiply, np.float64), (d,)).copy()
        b = np.broadcast_to(np.asarray(add, np.float64), (d,)).copy()
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.all(a > 0)):
            raise ValueError("affine needs finite multipliers > 0 and finite offsets")
        categorical = np.array([f.kind == "categorical" for f in self.schema.features])
        a[categorical], b[categorical] = 1.0, 0.0
        feats = [dataclasses.replace(f, lower=f.lower * ai + bi, upper=f.upper * ai + bi, scale=f.scale * ai)
                 for f, ai, bi in zip(self.schema.features, a, b)]
        # x = (u − m)/s in original units u, so x·a + b = (u − (m − b·s/a)) / (s/a).
        std = Standardizer(np.asarray(self.standardizer.mean - b * self.standardizer.scale / a, np.float64),
                           np.asarray(self.standardizer.scale / a, np.float64))
        move = lambda x: (x * a + b).astype(np.float32)
        return dataclasses.replace(self, name=name or self.name, x_train=move(self.x_train), x_val=move(self.x_val),
                                   x_test=move(self.x_test), schema=Schema(tuple(feats)), standardizer=std)

    def standardized(self, *, name: str | None = None) -> "Dataset":
        """Returns a copy with every continuous column at mean 0 and standard deviation 1 on the training split."""
        mean, sd = self.x_train.mean(0).astype(np.float64), self.x_train.std(0).astype(np.float64)
        sd[sd == 0] = 1.0
        return self.affine(1.0 / sd, -mean / sd, name=name)

    def in_original_units(self, *, name: str | None = None) -> "Dataset":
        """Returns a copy in the units the data came in (undoing the loader's standardisation).

        A Dataset holds float32, in which a column far from 0 relative to its spread (a timestamp, 1.7e9 ± 30)
        cannot keep its distinct values: such columns are named in a warning. `decode(x)` gives the original
        units in float64 without that loss.
        """
        out = self.affine(self.standardizer.scale, self.standardizer.mean, name=name)
        lost = []
        for j, f in enumerate(self.schema.features):
            if f.kind == "categorical" or (self.standardizer.mean[j] == 0 and self.standardizer.scale[j] == 1):
                continue
            exact = np.asarray(self.x_train[:, j], np.float64) * self.standardizer.scale[j] + self.standardizer.mean[j]
            kept = np.unique(out.x_train[:, j]).size
            if kept < np.unique(exact).size:
                lost.append(f"{f.name!r} keeps {kept} of {np.unique(exact).size} distinct training values")
        if lost:
            warnings.warn(f"{self.name}: in the original units, in float32, {'; '.join(lost)}: their values are "
                          "large against their spread. Train on the standardised Dataset, and use "
                          "Dataset.decode(x) for float64 values in the original units", RuntimeWarning,
                          stacklevel=2)
        return out

    def with_mutability(self, **by_name: str) -> "Dataset":
        """Returns a copy whose schema marks the named features or groups with a new mutability."""
        return dataclasses.replace(self, schema=self.schema.with_mutability(**by_name))

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self.x_train) // batch_size)

    def batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = False,
                drop_remainder: bool = True) -> Iterator[dict[str, np.ndarray]]:
        """Yields {"x": (B, D), "y": (B,)} training batches, in the training split's order unless `shuffle`, then in
        an order that depends only on (seed, epoch). Unshuffled by default, as `TrainConfig.shuffle` is."""
        n = len(self.x_train)
        if batch_size < 1 or batch_size > n:
            raise ValueError(f"batch_size must be in [1, {n}], got {batch_size}")
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_remainder else n
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]
            yield {"x": self.x_train[idx], "y": self.y_train[idx]}

    def subsample(self, n: int, *, seed: int = 0, balanced: bool = True) -> "Dataset":
        """Returns a copy with n training samples, drawn class-balanced (with replacement only if a class is short)."""
        return dataclasses.replace(self, **dict(zip(("x_train", "y_train"), subsample_arrays(
            self.x_train, self.y_train, n, self.num_classes, seed=seed, balanced=balanced))))


def subsample_arrays(x: np.ndarray, y: np.ndarray, n: int, num_classes: int, *, seed: int = 0,
                     balanced: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Returns (x[idx], y[idx]) for n indices, equal per class if `balanced`, in a seed-determined order."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
        raise TypeError(f"subsample size must be an integer, got {n!r}")
    if n < 1:
        raise ValueError(f"subsample size must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    if not balanced:
        idx = rng.choice(len(x), size=n, replace=n > len(x))
    else:
        per = np.full(num_classes, n // num_classes)
        per[: n % num_classes] += 1
        parts = []
        for k in range(num_classes):
            pool = np.flatnonzero(y == k)
            if len(pool) == 0:
                raise ValueError(f"cannot balance: class {k} has no samples")
            parts.append(rng.choice(pool, size=per[k], replace=per[k] > len(pool)))
        idx = rng.permutation(np.concatenate(parts))
    return x[idx], y[idx]


def undersample_arrays(x: np.ndarray, y: np.ndarray, num_classes: int, *, n_max: int | None = None,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Returns (x[idx], y[idx]) with every class cut to the rarest class's count (at most n_max // num_classes each).

    Rows are drawn without replacement, so nothing is repeated; the order is seed-determined.
    """
    counts = np.bincount(np.asarray(y, np.int64), minlength=num_classes)
    if counts.min() == 0:
        raise ValueError(f"cannot undersample: class {int(np.argmin(counts))} has no rows")
    per = int(counts.min())
    if n_max is not None:
        if not isinstance(n_max, (int, np.integer)) or isinstance(n_max, bool):
            raise TypeError(f"n_max must be an integer number of rows or None, got {n_max!r}")
        if n_max < num_classes:
            raise ValueError(f"n_max must be at least the number of classes ({num_classes}), got {n_max}")
        per = min(per, n_max // num_classes)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(np.concatenate([rng.choice(np.flatnonzero(y == k), per, replace=False)
                                          for k in range(num_classes)]))
    return x[idx], y[idx]


def split_and_balance(name: str, x: np.ndarray, y: np.ndarray, num_classes: int, *, seed: int,
                      test_fraction: float, n_train: int | None = None, balance: str | None = None,
                      n_max: int | None = None, test: tuple[np.ndarray, np.ndarray] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (x_train (N, D), y_train (N,), x_test (M, D), y_test (M,)): split by `seed` unless `test` is given.

    `balance`: None keeps the class proportions (`n_train`, if given, is drawn uniformly from the training
    split). "oversample" redraws the training split to equal class counts (`n_train` rows, default the split's
    size), with replacement only for classes that are short, so the minority is repeated; the test split is
    left as it is. "undersample" (the reference's treatment of credit default and GMSC) first cuts every class
    of the whole data to the rarest class's count, at most `n_max` rows in total, then splits stratified, so
    train and test are both balanced and no row repeats; `n_train`, if given, is then drawn class-balanced.
    With a given `test` set, train and test are undersampled separately and `n_max` is not used.
    """
    if balance not in BALANCE_MODES:
        hint = " (balanced=True is now balance='oversample')" if isinstance(balance, bool) else ""
        raise ValueError(f"{name}: balance must be one of {BALANCE_MODES}, got {balance!r}{hint}")
    if test is None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"{name}: test_fraction must be in (0, 1), got {test_fraction}")
        if balance == "undersample":
            x, y = undersample_arrays(x, y, num_classes, n_max=n_max, seed=seed)
        test_idx, train_idx = split_indices(y, [test_fraction], seed=seed)
        x_train, y_train, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    else:
        (x_train, y_train), (x_test, y_test) = (x, y), test
        if balance == "undersample":
            x_train, y_train = undersample_arrays(x_train, y_train, num_classes, seed=seed)
            x_test, y_test = undersample_arrays(x_test, y_test, num_classes, seed=seed)
    for split, rows in (("training", len(y_train)), ("test", len(y_test))):
        if rows == 0:
            why = ("the given data is empty" if test is not None else
                   f"{len(y)} rows before splitting, test_fraction {test_fraction}; provide more rows or change "
                   "test_fraction")
            raise ValueError(f"{name}: the {split} split is empty ({why})")
    if n_train is not None or balance == "oversample":
        x_train, y_train = subsample_arrays(x_train, y_train, len(x_train) if n_train is None else n_train,
                                            num_classes, seed=seed, balanced=balance is not None)
    return x_train, y_train, x_test, y_test


def split_indices(y: np.ndarray, fractions: Sequence[float], *, seed: int, stratify: bool = True) -> list[np.ndarray]:
    """Returns index arrays for consecutive splits of the given fractions (the last takes the rest), per class if stratify."""
    if any(f < 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"split fractions must be >= 0 and sum to at most 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == k) for k in np.unique(y)] if stratify else [np.arange(len(y))]
    out: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for members in groups:
        members = rng.permutation(members)
        cuts = np.round(np.cumsum(fractions) * len(members)).astype(int)
        for i, part in enumerate(np.split(members, cuts)):
            out[i].append(part)
    return [rng.permutation(np.concatenate(p)) for p in out]


def prepare(name: str, x_train, y_train, x_test, y_test, *, schema: Schema | None = None,
            x_val=None, y_val=None, num_classes: int | None = None, standardize: bool = True,
            n_std: float = 2.0, class_names: Sequence[str] = (), image_shape=None,
            onehot_bounds: str = "unit") -> Dataset:
    """Returns a validated Dataset: standardiser fitted on train only, unset bounds inferred from train (+val).

    `onehot_bounds`: "unit" keeps one-hot columns in [0, 1]; "inferred" bounds them like continuous features,
    as the reference does (`Schema.infer_bounds`).
    """
    # dtype None keeps float64 input in float64 until it is standardised (see Standardizer).
    x_train = check_features(x_train, schema, what=f"{name}: x_train", dtype=None)
    if len(x_train) == 0:
        raise ValueError(f"{name}: the training split is empty")
    schema = schema or Schema.default(x_train.shape[1])
    x_test = check_features(x_test, schema, what=f"{name}: x_test", dtype=None)
    if x_val is None:
        x_val, y_val = np.zeros((0, schema.width), np.float32), np.zeros((0,), np.int32)
    x_val = check_features(x_val, schema, what=f"{name}: x_val", dtype=None)
    check_bounds_hold_data(schema, (x_train, x_val, x_test), what=name)
    y_all = [check_labels(v, what=f"{name}: y_{split}") for v, split in
             zip((y_train, y_val, y_test), ("train", "val", "test"))]
    if num_classes is None:
        num_classes = int(max(int(y.max()) for y in y_all if y.size)) + 1
    std = Standardizer.fit(x_train, schema) if standardize else Standardizer.identity(schema.width)
    schema = std.transform_schema(schema)
    x_train, x_val, x_test = (std.transform(x) for x in (x_train, x_val, x_test))
    schema = schema.infer_bounds(np.concatenate([x_train, x_val]), n_std=n_std, onehot_bounds=onehot_bounds)
    return Dataset(name=name, x_train=x_train, y_train=y_all[0], x_val=x_val, y_val=y_all[1], x_test=x_test,
                   y_test=y_all[2], schema=schema, num_classes=num_classes, standardizer=std,
                   class_names=tuple(class_names), image_shape=image_shape)


def check_bounds_hold_data(schema: Schema, xs: Sequence[np.ndarray], *, what: str = "data") -> None:
    """Returns None; raises a ValueError naming each feature whose given bounds exclude every one of its values in xs.

    Such bounds leave every factual outside the feasible box, where the search's projection can only push it
    towards the box: the feature would silently become increase- or decrease-only.
    """
    lo, hi = (np.array([getattr(f, side) for f in schema.features], np.float64) for side in ("lower", "upper"))
    given = np.flatnonzero(np.isfinite(lo) | np.isfinite(hi))
    xs = [np.asarray(a)[:, given] for a in xs if len(a)]
    if not len(given) or not xs:
        return
    inside = np.zeros(len(given), bool)
    for a in xs:
        inside |= ((a >= lo[given]) & (a <= hi[given])).any(0)
    bad = []
    for j in np.flatnonzero(~inside):
        i = given[j]
        values = [v for a in xs for v in (a[:, j].min(), a[:, j].max())]
        bad.append(f"{schema.features[i].name!r} (bounds [{lo[i]:.6g}, {hi[i]:.6g}], values in "
                   f"[{min(values):.6g}, {max(values):.6g}])")
    if bad:
        raise ValueError(f"{what}: the given bounds exclude every value of feature(s) {'; '.join(bad)}; bounds are "
                         "in the data's original units and must contain its values. Fix or drop them")


def check_labels(y, *, what: str = "y") -> np.ndarray:
    """Returns y as int32 (N,) after checking that it holds integer class indices >= 0 (bool counts as 0/1)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{what}: labels must be 1-D, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == bool):
        raise TypeError(f"{what}: labels must be integer class indices 0..K-1, got dtype {y.dtype}; "
                        "from_arrays(x, y) maps any labels (strings, {1, 2}, ...) to 0..K-1 and keeps their names")
    if y.size and np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ValueError(f"{what}: {len(rows)} label(s) are not integers (NaN, inf or fractions), the first "
                             f"at row {rows[0]} ({y[rows[0]]}); labels must be class indices 0..K-1")
    if y.size and y.min() < 0:
        raise ValueError(f"{what}: labels must be class indices 0..K-1, found {y.min()} at row "
                         f"{int(np.argmin(y))}; from_arrays(x, y) maps any label set to 0..K-1")
    return y.astype(np.int32)


def encode_labels(y, *, what: str = "y") -> tuple[np.ndarray, tuple[str, ...]]:
    """Returns (codes (N,) int32 in 0..K-1, the K class names) for labels y (N,) of any type, classes sorted.

    Integers and integer-valued floats are classes by value ({1, 2} -> names "1", "2"); strings and bools
    keep their text. Missing labels (NaN, None) and fractional or infinite floats raise a ValueError.
    """
    y = np.asarray(y)
    if y.dtype == object:
        missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in y], dtype=bool)
    elif np.issubdtype(y.dtype, np.floating):
        missing = np.isnan(y)
    else:
        missing = np.zeros(len(y), dtype=bool)
    if missing.any():
        rows = np.flatnonzero(missing)
        raise ValueError(f"{what} has {len(rows)} missing label(s) (NaN/None), at rows {rows[:10].tolist()}"
                         f"{' ...' if len(rows) > 10 else ''}; drop those rows or give them a class")
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{what} holds {int(bad.sum())} non-integer number(s), e.g. {y[r]} at row {r}; class "
                             "labels must be integers or strings: round or bin them, or pass y.astype(str) to make "
                             "each distinct value its own class")
        y = y.astype(np.int64)  # so that the class 1.0 is named "1", as its integer twin is
    try:
        classes, codes = np.unique(y, return_inverse=True)
    except TypeError as e:  # e.g. ints and strings mixed in an object array
        raise TypeError(f"{what} mixes label types that cannot be sorted ({e}); convert them to one type, "
                        "e.g. y.astype(str)") from None
    return codes.reshape(-1).astype(np.int32), tuple(str(c) for c in classes)


def from_arrays(x, y, *, schema: Schema | None = None, feature_names: Sequence[str] | None = None,
                test_fraction: float = 0.2, val_fraction: float = 0.0, seed: int = 0, standardize: bool = True,
                n_std: float = 2.0, stratify: bool = True, name: str = "custom", **schema_kwargs) -> Dataset:
    """Returns a Dataset built from the user's arrays x (N, D) and labels y (N,) of any type, split by `seed`.

    Labels are mapped to 0..K-1 in sorted order and their names kept in `Dataset.class_names` (e.g. {1, 2} ->
    classes 0, 1 named "1", "2"; ["no", "yes"] -> 0, 1). NaN/None labels and fractional float labels raise.
    Either pass a `Schema`, or `feature_names` plus `Schema.build` keywords (immutable=..., increase=...,
    decrease=..., categorical={group: [names]}, bounds={name: (lo, hi)}, integer=[names]) in the original units.
    One-hot groups must hold exactly one 1 per row; integer features whole numbers. An increase-only (decrease-only)
    feature without an upper (lower) bound warns once, naming the bound inferred from the data that counterfactuals
    may then reach. The splits are stratified by class when `stratify`; a split that would come out empty, or a
    class left without training rows, raises.
    """
    x = as_matrix(x, what="x", dtype=None)  # finiteness is checked once the schema can name the columns
    if x.shape[0] == 0:
        raise ValueError("x has 0 rows; from_arrays needs samples to split into train and test")
    if x.shape[1] == 0:
        raise ValueError("x has 0 feature columns")
    y = np.asarray(y)
    if y.shape != (x.shape[0],):
        hint = " (flatten it with y.ravel(); for one-hot labels use y.argmax(1))" if y.ndim == 2 else ""
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {y.shape}{hint}")
    if schema is None:
        names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(x.shape[1])]
        if len(names) != x.shape[1]:
            raise ValueError(f"{len(names)} feature names given for {x.shape[1]} columns")
        schema = Schema.build(names, **schema_kwargs)
    elif schema_kwargs or feature_names is not None:
        raise ValueError("pass either a Schema or feature_names/schema keywords, not both")
    x = check_features(x, schema, what="x", dtype=None)
    check_one_hot(x, schema, what="x")  # here rather than after splitting, so the row numbers are the user's
    check_integers(x, schema, what="x")
    if not (0 < test_fraction < 1) or not (0 <= val_fraction < 1 - test_fraction):
        raise ValueError(f"need 0 < test_fraction < 1 and 0 <= val_fraction < 1 - test_fraction, "
                         f"got {test_fraction}, {val_fraction}")
    labels, class_names = encode_labels(y)
    if len(class_names) < 2:
        raise ValueError(f"y has only one class ({class_names[0]!r}); a classifier needs at least 2")
    test_idx, val_idx, train_idx = split_indices(labels, [test_fraction, val_fraction], seed=seed, stratify=stratify)
    in_train = np.bincount(labels[train_idx], minlength=len(class_names))
    if (in_train == 0).any():
        absent = [class_names[k] for k in np.flatnonzero(in_train == 0)]
        sizes = np.bincount(labels, minlength=len(class_names))[in_train == 0].tolist()
        raise ValueError(f"classes {absent} (with {sizes} rows in all) get no training rows from this split; "
                         "add rows for them, lower test_fraction/val_fraction, or drop those classes")
    per = " per class" if stratify else ""
    for split, idx, fraction in (("test", test_idx, test_fraction), ("validation", val_idx, val_fraction)):
        if fraction > 0 and len(idx) == 0:
            raise ValueError(f"the {split} split is empty: {x.shape[0]} rows at {split} fraction {fraction}{per} "
                             f"round to 0 rows; provide more rows or raise the {split} fraction")
    data = prepare(name, x[train_idx], labels[train_idx], x[test_idx], labels[test_idx], schema=schema,
                   x_val=x[val_idx], y_val=labels[val_idx], num_classes=len(class_names), standardize=standardize,
                   n_std=n_std, class_names=class_names)
    warn_one_way_unbounded(schema, data)
    return data


def check_integers(x: np.ndarray, schema: Schema, *, what: str = "x") -> None:
    """Returns None; raises a ValueError naming the feature, row and value where an integer feature of x (N, D)
    holds a fraction."""
    for j in np.flatnonzero(schema.integer_mask()):
        frac = np.flatnonzero(x[:, j] != np.round(x[:, j]))
        if len(frac):
            raise ValueError(f"{what}: integer feature {schema.names[j]!r} holds {float(x[frac[0], j])!r} at row "
                             f"{int(frac[0])}; integer features take whole numbers (round them, or drop the "
                             "feature from integer=)")


def warn_one_way_unbounded(given: Schema, data: Dataset) -> None:
    """Returns None; warns once, naming each increase-only (decrease-only) feature of the user's schema `given` that
    has no upper (lower) bound, and the bound inferred from the data that its counterfactuals may reach instead."""
    found, names = [], []
    for j, f in enumerate(given.features):
        side = {"increase": "upper", "decrease": "lower"}.get(f.mutability)
        if side is None or np.isfinite(getattr(f, side)):
            continue
        inferred = getattr(data.schema.features[j], side) * data.standardizer.scale[j] + data.standardizer.mean[j]
        found.append(f"{f.name!r} is {f.mutability}-only with no {side} bound: its counterfactuals may move it as "
                     f"far as {inferred:.6g}, the bound inferred from the training data")
        names.append(f.name)
    if found:
        warnings.warn(f"{data.name}: {'; '.join(found)}. Pass bounds={{{names[0]!r}: (lower, upper)}} (original "
                      f"units) for {names} to cap how far a counterfactual may go", UserWarning,
                      stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    # the warning points at the user's call, however many ctrain.data functions (from_dataframe → from_arrays) lie
    # between
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("ctrain.data"):
        frame, level = frame.f_back, level + 1
    return level
