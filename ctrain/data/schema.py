"""Per-feature actionability schema: kind, one-hot group, mutability and bounds.

A `Schema` is plain, hashable Python data describing the columns of a dataset. The search engine
never reads it directly: `ctrain.constraints.from_schema` turns it into arrays once.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Mapping, Sequence

import numpy as np

MUTABILITIES = ("free", "immutable", "increase", "decrease")
KINDS = ("continuous", "categorical")
# Bounds of one-hot columns: "unit" [0, 1], or "inferred" from the data like a continuous feature (the reference).
ONEHOT_BOUNDS = ("unit", "inferred")


@dataclasses.dataclass(frozen=True)
class Feature:
    """One input column. `lower`/`upper` of ±inf mean "infer from the training data".

    `scale` is the feature's typical size of change, its training standard deviation (1 for one-hot
    categories): the unit of a units-aware search (`SearchConfig(units="std")`). `integer` marks a continuous
    feature whose original values are whole numbers (an age, a count): `Dataset.lattice()` keeps its
    counterfactuals on those numbers and `Dataset.decode` returns it as integers.
    """

    name: str
    kind: str = "continuous"
    group: str | None = None
    mutability: str = "free"
    lower: float = -math.inf
    upper: float = math.inf
    scale: float = 1.0
    integer: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"feature {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.mutability not in MUTABILITIES:
            raise ValueError(
                f"feature {self.name!r}: mutability must be one of {MUTABILITIES}, got {self.mutability!r}")
        if self.kind == "categorical" and self.group is None:
            raise ValueError(f"feature {self.name!r}: a categorical feature needs the name of its one-hot group")
        if self.kind == "continuous" and self.group is not None:
            raise ValueError(f"feature {self.name!r}: only categorical features belong to a one-hot group")
        if self.kind == "categorical" and self.mutability in ("increase", "decrease"):
            raise ValueError(
                f"feature {self.name!r}: a one-hot category can be 'free' or 'immutable', not {self.mutability!r}")
        if math.isnan(self.lower) or math.isnan(self.upper):
            raise ValueError(f"feature {self.name!r}: bounds must not be NaN")
        if self.lower > self.upper:
            raise ValueError(
                f"feature {self.name!r}: lower bound {self.lower} is greater than upper bound {self.upper}")
        if self.integer and self.kind != "continuous":
            raise ValueError(f"feature {self.name!r}: only a continuous feature can be integer; a one-hot category "
                             "is 0/1 already")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"feature {self.name!r}: scale must be finite and > 0, got {self.scale}")


@dataclasses.dataclass(frozen=True)
class Schema:
    """The ordered features of a dataset; `width` equals the number of input columns."""

    features: tuple[Feature, ...]

    def __post_init__(self):
        object.__setattr__(self, "features", tuple(self.features))
        wrong = [f for f in self.features if not isinstance(f, Feature)]
        if wrong:
            raise TypeError(f"Schema takes Feature objects, got {type(wrong[0]).__name__} {wrong[0]!r}; "
                            "use Schema.build(names, ...) to build one from feature names")
        names = [f.name for f in self.features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate feature names in schema: {dup}")
        for group, idx in self.groups.items():
            if len(idx) < 2:
                raise ValueError(f"one-hot group {group!r} has {len(idx)} column; a group needs at least 2")
            muts = {self.features[i].mutability for i in idx}
            if len(muts) > 1:
                raise ValueError(f"one-hot group {group!r} mixes mutabilities {sorted(muts)}; "
                                 "set the mutability of the whole group")
            if group in names:
                raise ValueError(f"one-hot group {group!r} has the same name as a feature")

    @property
    def width(self) -> int:
        return len(self.features)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def groups(self) -> dict[str, tuple[int, ...]]:
        """Returns {group name: column indices} for the one-hot categorical groups, in column order."""
        out: dict[str, list[int]] = {}
        for i, f in enumerate(self.features):
            if f.group is not None:
                out.setdefault(f.group, []).append(i)
        return {g: tuple(v) for g, v in out.items()}

    def resolve(self, names: Iterable[str]) -> list[int]:
        """Returns the column indices for feature or group names; unknown names raise a KeyError-like ValueError."""
        groups = self.groups
        lookup = {f.name: i for i, f in enumerate(self.features)}
        out: list[int] = []
        for n in names:
            if n in lookup:
                out.append(lookup[n])
            elif n in groups:
                out.extend(groups[n])
            else:
                raise ValueError(f"unknown feature name {n!r}; the schema has features {list(self.names)}"
                                 + (f" and one-hot groups {list(groups)}" if groups else ""))
        return out

    def index(self, name: str) -> int:
        """Returns the column index of one feature name."""
        if name in self.groups:
            raise ValueError(f"{name!r} is a one-hot group, not a single feature")
        return self.resolve([name])[0]

    def with_mutability(self, **by_name: str) -> "Schema":
        """Returns a copy with the mutability of the named features or groups replaced."""
        feats = list(self.features)
        for name, mut in by_name.items():
            for i in self.resolve([name]):
                feats[i] = dataclasses.replace(feats[i], mutability=mut)
        return Schema(tuple(feats))

    def with_bounds(self, bounds: Mapping[str, tuple[float, float]]) -> "Schema":
        """Returns a copy with the bounds of the named features replaced."""
        feats = list(self.features)
        for name, pair in bounds.items():
            if isinstance(pair, (str, bytes)) or np.ndim(pair) != 1 or len(pair) != 2:
                raise ValueError(f"bounds[{name!r}] must be a (lower, upper) pair, got {pair!r}")
            lo, hi = pair
            for i in self.resolve([name]):
                feats[i] = dataclasses.replace(feats[i], lower=float(lo), upper=float(hi))
        return Schema(tuple(feats))

    def integer_mask(self) -> np.ndarray:
        """Returns a (width,) bool mask of the integer features."""
        return np.array([f.integer for f in self.features], dtype=bool)

    def protected(self) -> np.ndarray:
        """Returns a (width,) bool mask of features with any mutability constraint."""
        return np.array([f.mutability != "free" for f in self.features], dtype=bool)

    def bounds_array(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns (lower, upper), each (width,) float32."""
        lo = np.array([f.lower for f in self.features], dtype=np.float64)
        hi = np.array([f.upper for f in self.features], dtype=np.float64)
        return lo.astype(np.float32), hi.astype(np.float32)

    def scale_array(self) -> np.ndarray:
        """Returns the (width,) float32 per-feature scales (training standard deviations; 1 for categories)."""
        return np.array([f.scale for f in self.features], dtype=np.float32)

    def infer_bounds(self, x: np.ndarray, n_std: float = 2.0, onehot_bounds: str = "unit") -> "Schema":
        """Returns a copy whose unset bounds are `min(μ−nσ, min x)` / `max(μ+nσ, max x)` of x (N, width).

        One-hot columns get [0, 1] with `onehot_bounds="unit"`; with "inferred" they get the same rule as
        continuous features, which is the reference's domain (it infers every column's bounds this way, so a
        relaxed one-hot column may leave [0, 1], e.g. [−0.5, 1] for a category held by 10% of rows). Bounds
        already set are kept. Every continuous feature's `scale` becomes σ, its standard deviation in x (1
        where σ is 0); categories keep scale 1.
        """
        x = check_features(x, self, what="x")
        if n_std < 0:
            raise ValueError(f"n_std must be >= 0, got {n_std}")
        if onehot_bounds not in ONEHOT_BOUNDS:
            raise ValueError(f"onehot_bounds must be one of {ONEHOT_BOUNDS}, got {onehot_bounds!r}")
        mu, sd = x.mean(0), x.std(0)
        lo = np.minimum(mu - n_std * sd, x.min(0))
        hi = np.maximum(mu + n_std * sd, x.max(0))
        feats = []
        for i, f in enumerate(self.features):
            if f.kind == "categorical":
                unit = onehot_bounds == "unit"
                lower = (0.0 if unit else float(lo[i])) if math.isinf(f.lower) else f.lower
                upper = (1.0 if unit else float(hi[i])) if math.isinf(f.upper) else f.upper
                scale = 1.0
            else:
                lower = float(lo[i]) if math.isinf(f.lower) else f.lower
                upper = float(hi[i]) if math.isinf(f.upper) else f.upper
                scale = float(sd[i]) if sd[i] > 0 else 1.0
            feats.append(dataclasses.replace(f, lower=lower, upper=upper, scale=scale))
        return Schema(tuple(feats))

    @classmethod
    def build(cls, names: Sequence[str], *, immutable: Iterable[str] = (), increase: Iterable[str] = (),
              decrease: Iterable[str] = (), categorical: Mapping[str, Sequence[str]] | None = None,
              bounds: Mapping[str, tuple[float, float]] | None = None, integer: Iterable[str] = ()) -> "Schema":
        """Returns a Schema over `names` with the given one-hot groups, mutabilities, bounds and integer features
        (unknown names raise)."""
        names = [str(n) for n in names]
        feats = {n: Feature(n) for n in names}
        if len(feats) != len(names):
            raise ValueError(f"duplicate feature names: {sorted({n for n in names if names.count(n) > 1})}")
        member_of: dict[str, str] = {}
        for group, members in (categorical or {}).items():
            _check_name_list(members, f"categorical[{group!r}]")
            for m in members:
                if m not in feats:
                    raise ValueError(f"unknown feature name {m!r} in one-hot group {group!r}; "
                                     f"the features are {names}")
                if m in member_of:
                    where = (f"twice in one-hot group {group!r}" if member_of[m] == group else
                             f"in two one-hot groups, {member_of[m]!r} and {group!r}")
                    raise ValueError(f"feature {m!r} is listed {where}; a column belongs to at most one group")
                member_of[m] = group
                feats[m] = dataclasses.replace(feats[m], kind="categorical", group=group)
        schema = cls(tuple(feats[n] for n in names))
        muts = {}
        for mut, which in (("immutable", immutable), ("increase", increase), ("decrease", decrease)):
            _check_name_list(which, mut)
            for n in which:
                if n in muts:
                    raise ValueError(f"feature {n!r} is given two mutabilities: {muts[n]!r} and {mut!r}")
                muts[n] = mut
        schema.resolve(muts)  # raises on unknown names before any replacement
        schema = schema.with_mutability(**muts)
        _check_name_list(integer, "integer")
        feats = list(schema.features)
        for i in schema.resolve(integer):
            feats[i] = dataclasses.replace(feats[i], integer=True)  # a one-hot member raises in Feature
        return Schema(tuple(feats)).with_bounds(bounds or {})

    @classmethod
    def default(cls, width: int) -> "Schema":
        """Returns a schema of `width` free continuous features named x0, x1, …."""
        return cls(tuple(Feature(f"x{i}") for i in range(width)))


def _check_name_list(names, what: str) -> None:
    # a bare string would otherwise be iterated as one-letter feature names ("age" -> 'a', 'g', 'e')
    if isinstance(names, (str, bytes)):
        raise TypeError(f"{what} must be a list of feature names, got the string {names!r}; write [{names!r}]")


def _precise_dtype(dtype: np.dtype) -> type:
    # float32 holds integers exactly only up to 2^24 and keeps ~7 digits: wider inputs (timestamps, large ids,
    # float64 data) stay float64 until standardisation has removed their offset.
    return np.float32 if np.can_cast(dtype, np.float32) else np.float64


def as_matrix(x, *, what: str = "x", dtype=np.float32) -> np.ndarray:
    """Returns x as a (N, D) array of `dtype` (None: float32, or float64 where float32 would lose precision) after
    checking that it is a 2-D array of real numbers (bools count)."""
    try:
        x = np.asarray(x)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{what} must be a 2-D array (samples, features) with equal-length rows: {e}") from None
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (samples, features), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
        raise ValueError(f"{what} must be real numbers, got dtype {x.dtype}; encode text columns as numbers "
                         "(e.g. one-hot groups) first")
    return x.astype(_precise_dtype(x.dtype) if dtype is None else dtype)


def check_features(x, schema: Schema | None = None, *, what: str = "x", dtype=np.float32) -> np.ndarray:
    """Returns x as a (N, D) array of `dtype` (None: as in `as_matrix`) after checking its shape, finiteness,
    range (every value must fit in float32, in which datasets are stored) and width against `schema`."""
    x = as_matrix(x, what=what, dtype=None)  # checked before any cast, so 1e39 is not mistaken for inf
    if schema is not None and x.shape[1] != schema.width:
        raise ValueError(f"{what} has {x.shape[1]} features but the schema describes {schema.width}")
    names = schema.names if schema is not None else [f"column {c}" for c in range(x.shape[1])]
    bad = ~np.isfinite(x)
    if bad.any():
        rows, cols = np.nonzero(bad)
        cols_named = sorted({names[c] for c in cols})
        raise ValueError(f"{what} contains {bad.sum()} NaN/inf values (first at row {rows[0]}), "
                         f"in features {cols_named[:10]}")
    if x.dtype == np.float64:
        over = np.abs(x) > np.finfo(np.float32).max
        if over.any():
            rows, cols = np.nonzero(over)
            cols_named = sorted({names[c] for c in cols})
            raise ValueError(f"{what} has {over.sum()} value(s) whose magnitude overflows float32 (> "
                             f"{np.finfo(np.float32).max:.3g}; first at row {rows[0]}: {x[rows[0], cols[0]]:.3g}), "
                             f"in features {cols_named[:10]}; rescale those columns (e.g. change their units) first")
    return x if dtype is None else x.astype(dtype, copy=False)


def check_one_hot(x: np.ndarray, schema: Schema, *, what: str = "x") -> None:
    """Returns None; raises a ValueError unless every one-hot group has exactly one 1 (rest 0) in each row of x (N, D)."""
    for group, idx in schema.groups.items():
        block = x[:, idx]
        ok = np.all((block == 0) | (block == 1), axis=1) & (block.sum(1) == 1)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            raise ValueError(
                f"{what}: one-hot group {group!r} must hold exactly one 1 and otherwise 0 in every row; "
                f"{len(bad)} row(s) do not, the first is row {bad[0]} with values {block[bad[0]].tolist()} "
                f"in columns {[schema.names[i] for i in idx]}. Fix the encoding, or leave these columns out of "
                "categorical= if they are not one-hot")
