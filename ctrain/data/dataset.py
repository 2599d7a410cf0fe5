"""The `Dataset` container: train/validation/test arrays, their schema, and the shared preparation steps.

Every loader (synthetic, tabular, images, the user's own arrays) ends in `prepare`, so splitting,
standardisation (fitted on train only), bound inference and validation happen in one place.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from ctrain.data.schema import Schema, check_features


@dataclasses.dataclass(frozen=True)
class Standardizer:
    """Per-feature affine map x -> (x - mean) / scale; one-hot columns keep mean 0, scale 1."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, schema: Schema) -> "Standardizer":
        """Returns a Standardizer fitted on x (N, D); categorical columns are left untouched."""
        mean = x.mean(0).astype(np.float64)
        scale = x.std(0).astype(np.float64)
        scale[scale == 0] = 1.0  # a constant column stays constant instead of becoming NaN
        cat = np.array([f.kind == "categorical" for f in schema.features])
        mean[cat], scale[cat] = 0.0, 1.0
        return cls(mean.astype(np.float32), scale.astype(np.float32))

    @classmethod
    def identity(cls, width: int) -> "Standardizer":
        return cls(np.zeros(width, np.float32), np.ones(width, np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Returns (x - mean) / scale, same shape as x."""
        return ((x - self.mean) / self.scale).astype(np.float32)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """Returns x * scale + mean, same shape as x (back to the original units)."""
        return (x * self.scale + self.mean).astype(np.float32)

    def transform_schema(self, schema: Schema) -> Schema:
        """Returns the schema with its user-given (finite) bounds mapped into standardised units."""
        feats = []
        for f, m, s in zip(schema.features, self.mean, self.scale):
            feats.append(dataclasses.replace(f, lower=(f.lower - m) / s, upper=(f.upper - m) / s))
        return Schema(tuple(feats))


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train/validation/test splits (x: (N, D) float32, y: (N,) int32) with their feature schema."""

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

    def __post_init__(self):
        if self.num_classes < 2:
            raise ValueError(f"dataset {self.name!r}: need at least 2 classes, got {self.num_classes}")
        for split in ("train", "val", "test"):
            x = check_features(getattr(self, f"x_{split}"), self.schema, what=f"{self.name}: x_{split}")
            y = np.asarray(getattr(self, f"y_{split}"))
            if y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise ValueError(f"{self.name}: y_{split} must have shape ({x.shape[0]},), got {y.shape}")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(f"{self.name}: y_{split} has labels outside [0, {self.num_classes})")
            object.__setattr__(self, f"x_{split}", x)
            object.__setattr__(self, f"y_{split}", y.astype(np.int32))
        if len(self.x_train) == 0:
            raise ValueError(f"{self.name}: the training split is empty")

    @property
    def num_features(self) -> int:
        return self.schema.width

    def constraints(self):
        """Returns the `ctrain.constraints.Constraints` arrays for this dataset's schema."""
        from ctrain.constraints import from_schema
        return from_schema(self.schema)

    def with_mutability(self, **by_name: str) -> "Dataset":
        """Returns a copy whose schema marks the named features or groups with a new mutability."""
        return dataclasses.replace(self, schema=self.schema.with_mutability(**by_name))

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self.x_train) // batch_size)

    def batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                drop_remainder: bool = True) -> Iterator[dict[str, np.ndarray]]:
        """Yields {"x": (B, D), "y": (B,)} training batches; the order depends only on (seed, epoch)."""
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
            n_std: float = 2.0, class_names: Sequence[str] = (), image_shape=None) -> Dataset:
    """Returns a validated Dataset: standardiser fitted on train only, unset bounds inferred from train (+val)."""
    x_train = check_features(x_train, schema, what=f"{name}: x_train")
    schema = schema or Schema.default(x_train.shape[1])
    x_test = check_features(x_test, schema, what=f"{name}: x_test")
    if x_val is None:
        x_val, y_val = np.zeros((0, schema.width), np.float32), np.zeros((0,), np.int32)
    x_val = check_features(x_val, schema, what=f"{name}: x_val")
    y_all = [np.asarray(v) for v in (y_train, y_val, y_test)]
    for y in y_all:
        if y.ndim != 1:
            raise ValueError(f"{name}: labels must be 1-D, got shape {y.shape}")
        if y.size and not np.issubdtype(y.dtype, np.integer):
            if not np.all(np.equal(np.mod(y, 1), 0)):
                raise ValueError(f"{name}: labels must be integers 0..K-1")
    if num_classes is None:
        num_classes = int(max(int(y.max()) for y in y_all if y.size)) + 1
    std = Standardizer.fit(x_train, schema) if standardize else Standardizer.identity(schema.width)
    schema = std.transform_schema(schema)
    x_train, x_val, x_test = (std.transform(x) for x in (x_train, x_val, x_test))
    schema = schema.infer_bounds(np.concatenate([x_train, x_val]), n_std=n_std)
    return Dataset(name=name, x_train=x_train, y_train=y_all[0], x_val=x_val, y_val=y_all[1], x_test=x_test,
                   y_test=y_all[2], schema=schema, num_classes=num_classes, standardizer=std,
                   class_names=tuple(class_names), image_shape=image_shape)


def from_arrays(x, y, *, schema: Schema | None = None, feature_names: Sequence[str] | None = None,
                test_fraction: float = 0.2, val_fraction: float = 0.0, seed: int = 0, standardize: bool = True,
                n_std: float = 2.0, stratify: bool = True, name: str = "custom", **schema_kwargs) -> Dataset:
    """Returns a Dataset built from the user's arrays x (N, D) and integer labels y (N,), split by `seed`.

    Either pass a `Schema`, or `feature_names` plus `Schema.build` keywords (immutable=..., increase=...,
    decrease=..., categorical={group: [names]}, bounds={name: (lo, hi)}) in the original units.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D array (samples, features), got shape {x.shape}")
    y = np.asarray(y)
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {y.shape}")
    if schema is None:
        names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(x.shape[1])]
        if len(names) != x.shape[1]:
            raise ValueError(f"{len(names)} feature names given for {x.shape[1]} columns")
        schema = Schema.build(names, **schema_kwargs)
    elif schema_kwargs or feature_names is not None:
        raise ValueError("pass either a Schema or feature_names/schema keywords, not both")
    x = check_features(x, schema, what="x")
    if not (0 < test_fraction < 1) or not (0 <= val_fraction < 1 - test_fraction):
        raise ValueError(f"need 0 < test_fraction < 1 and 0 <= val_fraction < 1 - test_fraction, "
                         f"got {test_fraction}, {val_fraction}")
    _, labels = np.unique(y, return_inverse=True) if not np.issubdtype(y.dtype, np.integer) else (None, y)
    test_idx, val_idx, train_idx = split_indices(labels, [test_fraction, val_fraction], seed=seed, stratify=stratify)
    return prepare(name, x[train_idx], labels[train_idx], x[test_idx], labels[test_idx], schema=schema,
                   x_val=x[val_idx], y_val=labels[val_idx], standardize=standardize, n_std=n_std)
