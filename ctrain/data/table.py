"""The columns of a user's table and their encoding: a `Layout` of numeric and categorical columns, and the maps
between a DataFrame's rows and the (N, D) feature matrix (`encode_frame`, `decode_frame`), before standardisation.

It knows nothing of Dataset, so `ctrain.data.dataset` (encode/decode) and `ctrain.data.frame` (from_dataframe)
both import it at module level.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

SEPARATOR = "="  # a one-hot column is named "<column>=<category>", e.g. "job=admin"


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of the user's frame: numeric (one feature) or categorical (one one-hot group over `levels`)."""

    name: str
    categorical: bool
    dtype: Any  # the frame's dtype, restored by `decode`
    levels: tuple = ()  # the categories, in the order of the group's columns
    integer: bool = False  # numeric with whole-number values: decoded to an integer dtype


@dataclasses.dataclass(frozen=True)
class Layout:
    """The feature columns of a frame in order, and the name of its target column (None: not from a frame)."""

    columns: tuple[Column, ...]
    target: str | None = None

    @classmethod
    def from_schema(cls, schema) -> "Layout":
        """Returns the Layout of a Dataset built from arrays: a column per continuous feature and per one-hot group,
        whose levels are the members' names without the "<group>=" prefix."""
        columns, seen = [], set()
        for f in schema.features:
            if f.group is None:
                columns.append(Column(f.name, False, np.dtype(np.int64 if f.integer else np.float64),
                                      integer=f.integer))
            elif f.group not in seen:
                seen.add(f.group)
                names = [schema.names[i] for i in schema.groups[f.group]]
                prefix = f.group + SEPARATOR
                levels = tuple(n[len(prefix):] if n.startswith(prefix) else n for n in names)
                columns.append(Column(f.group, True, np.dtype(object), levels))
        return cls(tuple(columns))


def _pandas():
    try:  # pandas is an optional extra, imported only when a frame is read or made
        import pandas
    except ImportError:
        raise ImportError("reading or making a DataFrame needs pandas, an optional extra: "
                          "pip install ctrain[pandas]") from None
    return pandas


def feature_names(column: Column) -> list[str]:
    """Returns the feature names of one column: its own name, or "column=level" for each level of a category."""
    return [f"{column.name}{SEPARATOR}{level}" for level in column.levels] if column.categorical else [column.name]


def encode_frame(df, layout: Layout, *, what: str = "the frame") -> np.ndarray:
    """Returns the (N, D) float64 features of frame `df` (N rows) in `layout`'s encoding, before standardisation.

    Raises a ValueError naming the column and the value for a missing column, an unknown column (other than the
    target), a missing value, a category outside the layout's levels, a non-number in a numeric column or a
    fraction in an integer column.
    """
    pd = _pandas()
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"encode takes a pandas DataFrame, got {type(df).__name__}")
    df = df.set_axis([str(c) for c in df.columns], axis=1)
    expected = [col.name for col in layout.columns]
    absent = [c for c in expected if c not in df.columns]
    if absent:
        raise ValueError(f"{what} lacks column(s) {absent}; the feature columns are {expected}")
    extra = [c for c in df.columns if c not in expected and c != layout.target]
    if extra:
        raise ValueError(f"{what} has column(s) {extra} that the Dataset was not built with; the feature columns "
                         f"are {expected}" + (f" (and the target {layout.target!r})" if layout.target else ""))
    missing = {c: int(n) for c, n in df[expected].isna().sum().items() if n}
    if missing:
        raise ValueError(f"{what} has missing values in column(s) {missing} (column: count); ctrain does not impute")
    blocks = []
    for col in layout.columns:
        values = df[col.name].to_numpy(dtype=object)
        if col.categorical:
            codes = pd.Index(list(col.levels), dtype=object).get_indexer(values)
            if (codes < 0).any():
                row = int(np.flatnonzero(codes < 0)[0])
                raise ValueError(f"{what}: column {col.name!r} holds the category {values[row]!r} (row {row}), which "
                                 f"the training data does not have; its categories are {list(col.levels)}")
            blocks.append((codes[:, None] == np.arange(len(col.levels))).astype(np.float64))
            continue
        series = df[col.name]
        if not pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
            row = next((i for i, v in enumerate(values) if isinstance(v, (bool, np.bool_))
                        or not isinstance(v, (int, float, np.integer, np.floating))), 0)
            raise ValueError(f"{what}: column {col.name!r} must hold numbers (dtype {series.dtype}), got "
                             f"{values[row]!r} at row {row}")
        v = series.to_numpy(dtype=np.float64)
        if col.integer:
            frac = np.flatnonzero(v != np.round(v))
            if len(frac):
                raise ValueError(f"{what}: column {col.name!r} holds whole numbers, got {values[frac[0]]!r} at row "
                                 f"{int(frac[0])}")
        blocks.append(v[:, None])
    return np.concatenate(blocks, axis=1)


def decode_frame(x: np.ndarray, layout: Layout):
    """Returns a DataFrame (N rows) in `layout`'s columns and dtypes from features x (N, D) in the original units.

    A category is its group's largest entry (argmax); integer columns are rounded to whole numbers and keep the
    frame's integer dtype where the values fit it (else int64); other numeric columns keep the frame's dtype.
    """
    pd = _pandas()
    out, at = {}, 0
    for col in layout.columns:
        if col.categorical:
            block = x[:, at:at + len(col.levels)]
            at += len(col.levels)
            labels = np.empty(len(col.levels), dtype=object)
            labels[:] = list(col.levels)
            out[col.name] = pd.Series(labels[block.argmax(1)], dtype=object).astype(col.dtype)
            continue
        v = x[:, at]
        at += 1
        if col.integer:
            v = np.rint(v)
            dtype = np.dtype(col.dtype) if isinstance(col.dtype, np.dtype) else None
            fits = dtype is not None and dtype.kind in "iu" and (
                not len(v) or (v.min() >= np.iinfo(dtype).min and v.max() <= np.iinfo(dtype).max))
            out[col.name] = pd.Series(v.astype(dtype if fits else np.int64))
        else:
            out[col.name] = pd.Series(v).astype(col.dtype if pd.api.types.is_float_dtype(col.dtype) else np.float64)
    return pd.DataFrame(out)
