"""Datasets from a pandas DataFrame and back: `from_dataframe(df, target=...)` one-hot encodes the categorical
columns and hands the arrays to `from_arrays`; the Dataset keeps the frame's `Layout`, so `Dataset.encode(frame)`
encodes new rows the way the training rows were and `Dataset.decode(x)` returns rows in the frame's own columns.

pandas is an optional extra (`pip install ctrain[pandas]`), imported only when a frame is read or made.
ctrain does not impute: a missing value in any used column raises a ValueError naming the columns and counts.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence


from ctrain.data.dataset import Dataset, from_arrays
from ctrain.data.table import SEPARATOR, Column, Layout, _pandas, decode_frame, encode_frame, feature_names  # noqa: F401 (re-exported)

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
