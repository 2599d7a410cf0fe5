"""Datasets from a pandas DataFrame: `from_dataframe(df, target=...)` one-hot encodes the categorical columns and
hands the arrays to `from_arrays`.

pandas is an optional extra (`pip install ctrain[pandas]`), imported only when `from_dataframe` is called.
ctrain does not impute: a missing value in any used column raises a ValueError naming the columns and counts.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from ctrain.data.dataset import Dataset, from_arrays

SEPARATOR = "="  # a one-hot column is named "<column>=<category>", e.g. "job=admin"


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("from_dataframe needs pandas, an optional extra: pip install ctrain[pandas]") from None
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
        return sorted(values)
    except TypeError:  # mixed types in an object column (e.g. 1 and "a")
        return sorted(values, key=lambda v: (type(v).__name__, str(v)))


def _check_names(given: Iterable[str], what: str, known: set[str], columns: list[str], target: str) -> None:
    unknown = [n for n in given if n not in known]
    if target in unknown:
        raise ValueError(f"{what} names the target column {target!r}; constraints apply to feature columns only")
    if unknown:
        raise ValueError(f"unknown column name(s) {unknown} in {what}; the feature columns are {columns}")


def from_dataframe(df, target: str, *, immutable: Sequence[str] = (), increase: Sequence[str] = (),
                   decrease: Sequence[str] = (), bounds: Mapping[str, tuple[float, float]] | None = None,
                   categorical: Sequence[str] = (), test_fraction: float = 0.2, val_fraction: float = 0.0,
                   seed: int = 0, standardize: bool = True, n_std: float = 2.0, stratify: bool = True,
                   name: str = "custom") -> Dataset:
    """Returns the Dataset `from_arrays` builds from DataFrame `df` (N rows): column `target` as labels y (N,),
    every other column as features x (N, D), each categorical column as one one-hot group.

    String, object, bool and pandas Categorical columns (and numeric ones listed in `categorical`, e.g. integer
    codes) become one-hot groups named after the column, with one feature per category named "column=category"
    (a Categorical keeps its own categories and their order, bools are [False, True], other columns their sorted
    values); numeric columns stay continuous, in the frame's column order. `immutable` may name any feature column
    (a categorical one: its whole group); `increase`, `decrease` and `bounds` (original units) apply to numeric
    columns. Labels, standardisation and splits are those of `from_arrays`. Missing values
    (NaN, None, pd.NA) raise a ValueError naming the columns: ctrain does not impute, so drop or fill them first.
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

    _check_names(categorical, "categorical", set(features), features, target)
    cat_columns = [c for c in features if c in set(categorical) or _is_categorical(pd, df[c])]
    numeric = [c for c in features if c not in cat_columns]
    bad_types = {c: str(df[c].dtype) for c in numeric
                 if not pd.api.types.is_numeric_dtype(df[c].dtype) or pd.api.types.is_complex_dtype(df[c].dtype)}
    if bad_types:
        raise ValueError(f"column(s) {bad_types} hold neither numbers nor categories; convert them first (e.g. dates "
                         "to numbers with .astype('int64'), or to strings to make them categories)")

    missing = {c: int(n) for c, n in df[features + [target]].isna().sum().items() if n}
    if missing:
        raise ValueError(f"missing values in column(s) {missing} (column: count); ctrain does not impute: drop "
                         "those rows (df.dropna()) or fill them (df.fillna(...)) before from_dataframe")

    blocks, names, groups = [], [], {}
    for c in features:
        if c in cat_columns:
            levels = _levels(pd, df[c])
            if len(levels) < 2:
                raise ValueError(f"categorical column {c!r} holds a single category {levels}; a one-hot group needs "
                                 "at least 2: drop the column, or give it a pandas Categorical with all its categories")
            codes = pd.Categorical(df[c].to_numpy(dtype=object), categories=levels).codes
            groups[c] = [f"{c}{SEPARATOR}{level}" for level in levels]
            names += groups[c]
            blocks.append((codes[:, None] == np.arange(len(levels))).astype(np.float64))
        else:
            names.append(c)
            blocks.append(df[c].to_numpy(dtype=np.float64)[:, None])
    x = np.concatenate(blocks, axis=1)

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
    return from_arrays(x, df[target].to_numpy(), feature_names=names, categorical=groups, immutable=list(immutable),
                       increase=list(increase), decrease=list(decrease), bounds=dict(bounds or {}),
                       test_fraction=test_fraction, val_fraction=val_fraction, seed=seed, standardize=standardize,
                       n_std=n_std, stratify=stratify, name=name)
