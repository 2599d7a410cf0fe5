"""Datasets from a pandas DataFrame and back: `from_dataframe(df, target=...)` one-hot encodes the categorical
columns and hands the arrays to `from_arrays`; the Dataset keeps the frame's `Layout`, so `Dataset.encode(frame)`
encodes new rows the way the training rows were and `Dataset.decode(x)` returns rows in the frame's own columns.

pandas is an optional extra (`pip install ctrain[pandas]`), imported only when a frame is read or made.
ctrain does not impute: a missing value in any used column raises a ValueError naming the columns and counts.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ctrain.data.dataset import Dataset, from_arrays

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
    try:
        import pandas
    except ImportError:
        raise ImportError("reading or making a DataFrame needs pandas, an optional extra: "
                          "pip install ctrain[pandas]") from None
    return pandas


def _is_categorical(pd, series) -> bool:
    dtype = series.dtype
    t = pd.api.types
    return (isinstance(dtype, pd.CategoricalDtype) or t.is_bool_dtype(dtype) or t.is_object_dtype(dtype)
            or t.is_string_dtype(dtype))


def _levels(pd, series) -> list:
    """Returns the categories of a categorical column: a Categorical's own (in its order), else the sorted values."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        return list(series.cat.categories)
    if pd.api.types.is_bool_dtype(series.dtype):
        return [False, True]  # both, so a column that happens to hold one value still forms a valid group
    values = list(pd.unique(series.to_numpy(dtype=object)))
    try:
        values = sorted(values)
    except TypeError:  # mixed types in an object column (e.g. 1 and "a")
        values = sorted(values, key=lambda v: (type(v).__name__, str(v)))
    by_text: dict[str, Any] = {}
    for v in values:
        if str(v) in by_text:
            # two levels would become the same feature name "column=1"
            raise ValueError(f"column {series.name!r} has ambiguous levels {by_text[str(v)]!r} and {v!r}, which "
                             f"print alike; convert the column to one type first, e.g. df[{series.name!r}].astype(str)")
        by_text[str(v)] = v
    return values


def _is_integer(pd, series) -> bool:
    t = pd.api.types
    return t.is_integer_dtype(series.dtype) and not t.is_bool_dtype(series.dtype)


def _check_names(given: Iterable[str], what: str, known: set[str], columns: list[str], target: str) -> None:
    unknown = [n for n in given if n not in known]
    if target in unknown:
        raise ValueError(f"{what} names the target column {target!r}; constraints apply to feature columns only")
    if unknown:
        raise ValueError(f"unknown column name(s) {unknown} in {what}; the feature columns are {columns}")


def from_dataframe(df, target: str, *, immutable: Sequence[str] = (), increase: Sequence[str] = (),
                   decrease: Sequence[str] = (), bounds: Mapping[str, tuple[float, float]] | None = None,
                   categorical: Sequence[str] = (), integer: Sequence[str] = (), test_fraction: float = 0.2,
                   val_fraction: float = 0.0, seed: int = 0, standardize: bool = True, n_std: float = 2.0,
                   stratify: bool = True, name: str = "custom") -> Dataset:
    """Returns the Dataset `from_arrays` builds from DataFrame `df` (N rows): column `target` as labels y (N,),
    every other column as features x (N, D), each categorical column as one one-hot group.

    String, object, bool and pandas Categorical columns (and numeric ones listed in `categorical`, e.g. integer
    codes) become one-hot groups named after the column, with one feature per category named "column=category"
    (a Categorical keeps its own categories and their order, bools are [False, True], other columns their sorted
    values); numeric columns stay continuous, in the frame's column order. Integer-dtype columns, and float columns
    listed in `integer` (whose values must be whole numbers), are integer features (`Feature.integer`): the search
    keeps them on whole numbers and `Dataset.decode` returns them as integers. `immutable` may name any feature
    column (a categorical one: its whole group); `increase`, `decrease` and `bounds` (original units) apply to
    numeric columns. Labels, standardisation and splits are those of `from_arrays`. Missing values
    (NaN, None, pd.NA) raise a ValueError naming the columns: ctrain does not impute, so drop or fill them first.
    The Dataset keeps the frame's layout (`Dataset.table`) for `Dataset.encode` and `Dataset.decode`.
    """
    pd = _pandas()
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"from_dataframe takes a pandas DataFrame, got {type(df).__name__}")
    columns = [str(c) for c in df.columns]
    if len(set(columns)) != len(columns):
        raise ValueError(f"duplicate column names: {sorted({c for c in columns if columns.count(c) > 1})}")
    df = df.set_axis(columns, axis=1)
    if not isinstance(target, str) or target not in columns:
        raise ValueError(f"target {target!r} is not a column; the columns are {columns}")
    features = [c for c in columns if c != target]
    if not features:
        raise ValueError(f"the frame has no feature columns besides the target {target!r}")
    if len(df) == 0:
        raise ValueError(f"the DataFrame is empty (0 rows, columns {columns}); from_dataframe needs rows to train on")

    for what, given in (("categorical", categorical), ("integer", integer)):
        if isinstance(given, str):
            raise TypeError(f"{what} must be a list of column names, got the string {given!r}; write [{given!r}]")
        _check_names(given, what, set(features), features, target)
    cat_columns = [c for c in features if c in set(categorical) or _is_categorical(pd, df[c])]
    numeric = [c for c in features if c not in cat_columns]
    bad_types = {c: str(df[c].dtype) for c in numeric
                 if not pd.api.types.is_numeric_dtype(df[c].dtype) or pd.api.types.is_complex_dtype(df[c].dtype)}
    if bad_types:
        raise ValueError(f"column(s) {bad_types} hold neither numbers nor categories; convert them first (e.g. dates "
                         "to numbers with .astype('int64'), or to strings to make them categories)")
    on_categories = [c for c in integer if c in cat_columns]
    if on_categories:
        raise ValueError(f"integer names categorical column(s) {on_categories}; integer applies to numeric columns "
                         f"{numeric}")

    missing = {c: int(n) for c, n in df[features + [target]].isna().sum().items() if n}
    if missing:
        raise ValueError(f"missing values in column(s) {missing} (column: count); ctrain does not impute: drop "
                         "those rows (df.dropna()) or fill them (df.fillna(...)) before from_dataframe")

    layout = []
    for c in features:
        if c in cat_columns:
            levels = _levels(pd, df[c])
            if len(levels) < 2:
                raise ValueError(f"categorical column {c!r} holds a single category {levels}; a one-hot group needs "
                                 "at least 2: drop the column, or give it a pandas Categorical with all its categories")
            layout.append(Column(c, True, df[c].dtype, tuple(levels)))
        else:
            layout.append(Column(c, False, df[c].dtype, integer=c in set(integer) or _is_integer(pd, df[c])))
    layout = Layout(tuple(layout), target)
    x = encode_frame(df, layout)
    names = [n for col in layout.columns for n in feature_names(col)]
    groups = {col.name: feature_names(col) for col in layout.columns if col.categorical}

    for what, given in (("immutable", immutable), ("increase", increase), ("decrease", decrease),
                        ("bounds", list(bounds or {}))):
        if isinstance(given, str):
            raise TypeError(f"{what} must be a list of column names, got the string {given!r}; write [{given!r}]")
        _check_names(given, what, set(features), features, target)
        if what != "immutable":
            on_categories = [n for n in given if n not in numeric]
            if on_categories:
                raise ValueError(f"{what} names categorical column(s) or categories {on_categories}; a one-hot "
                                 f"group can only be immutable or free, {what} applies to numeric columns "
                                 f"{numeric}")
    data = from_arrays(x, df[target].to_numpy(), feature_names=names, categorical=groups, immutable=list(immutable),
                       increase=list(increase), decrease=list(decrease), bounds=dict(bounds or {}),
                       integer=[col.name for col in layout.columns if col.integer], test_fraction=test_fraction,
                       val_fraction=val_fraction, seed=seed, standardize=standardize, n_std=n_std,
                       stratify=stratify, name=name)
    return dataclasses.replace(data, table=layout)


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
