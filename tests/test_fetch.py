"""Fetching the reference's tabular archive (ctrain.data.fetch) from a loopback HTTP server: one download serves
California housing, credit default and GMSC; a wrong checksum, a refused connection, a body cut short or an
unsafe/broken tarball raise DownloadError and leave nothing in the cache; download=False stays offline."""
import csv
import hashlib
import io
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from ctrain.data import Dataset, load_dataset, tabular
from ctrain.data.fetch import SHA256_ENV, TABULAR_FOLDER, URL_ENV, DownloadError, fetch_archive, tabular_source
from ctrain.data.tabular import DataNotFoundError

N, POSITIVES = 40, 25  # rows per CSV, and rows whose reference `target` is 1 (the positive outcome)


def _csv_bytes(header, rows):
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue().encode()


def reference_csvs(seed=0):
    """The three CSVs of the reference archive, with its column layout, as {file name: bytes}."""
    rng = np.random.default_rng(seed)
    target = (np.arange(N) < POSITIVES).astype(int)
    credit = {"LIMIT_BAL": rng.integers(10, 500, N) * 1000, "SEX": rng.integers(1, 3, N),
              "EDUCATION": rng.integers(1, 5, N), "MARRIAGE": rng.integers(1, 4, N), "AGE": rng.integers(21, 70, N)}
    for c in tabular.CREDIT_FEATURES[5:]:
        credit[c] = rng.integers(-2, 9, N) if c.startswith("PAY_") and "AMT" not in c else rng.integers(0, 9000, N)
    gmsc = np.c_[target, rng.uniform(0, 1, N), rng.integers(21, 90, N), rng.integers(0, 5, (N, 1)),
                 rng.uniform(0, 2, N), rng.integers(1000, 9000, N), rng.integers(0, 20, (N, 5)), ]
    cal = np.c_[rng.normal(5, 1, (N, 8)), target.astype(float)]
    return {
        "credit_default.csv": _csv_bytes([*credit, "target"], np.c_[np.stack(list(credit.values()), 1), target]),
        "gmsc.csv": _csv_bytes(["target", *tabular.GMSC_FEATURES], gmsc.tolist()),
        "cal_housing.csv": _csv_bytes([*tabular.CALIFORNIA_FEATURES, "target"], cal.tolist()),
    }


def tarball(files, folder=TABULAR_FOLDER):
    """Returns the bytes of a .tar.gz holding `files` ({name: bytes}) under `folder/`, as the reference's does."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if folder:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}" if folder else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def archive():
    return tarball(reference_csvs())


@pytest.fixture
def serve():
    """serve(body, truncate=False) -> (url, requests): a loopback server answering every GET with `body`."""
    servers = []

    def start(body, truncate=False, status=200):
        requests = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                self.send_response(status)
                # a truncated answer promises the whole body but sends half of it, then closes the connection
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if truncate else body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/data-tabular.tar.gz", requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """$CTRAIN_DATA_DIR in tmp_path (not created yet), an empty HOME, and no URL/checksum overrides."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CTRAIN_DATA_DIR", str(tmp_path / "cache"))
    for var in (URL_ENV, SHA256_ENV, "SCIKIT_LEARN_DATA"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "cache"


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- a good download ----------------------------------------------------------------------------------------

def test_one_download_serves_all_three_datasets(cache, serve, archive):
    url, requests = serve(archive)
    ds = load_dataset("credit_default", url=url, sha256=sha(archive), balance=None)
    assert isinstance(ds, Dataset) and requests == ["/data-tabular.tar.gz"]
    assert leftovers(cache) == [TABULAR_FOLDER]  # the extracted folder only: no tarball, no temporaries
    assert leftovers(cache / TABULAR_FOLDER) == ["cal_housing.csv", "credit_default.csv", "gmsc.csv"]
    # the reference's target (1 = no default) is flipped to ctrain's label (1 = default)
    assert np.bincount(np.r_[ds.y_train, ds.y_test]).tolist() == [POSITIVES, N - POSITIVES]
    assert ds.class_names == ("no default", "default") and "SEX=1" in ds.schema.names

    again = load_dataset("credit_default", url=url, sha256=sha(archive), balance=None)
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    gmsc = load_dataset("gmsc", url=url, sha256=sha(archive))
    cal = load_dataset("california_housing", url=url, sha256=sha(archive))
    assert requests == ["/data-tabular.tar.gz"]  # the cached folder answers every later call
    assert len(gmsc.y_train) + len(gmsc.y_test) == 2 * (N - POSITIVES)  # undersampled to 50/50 by default
    assert gmsc.num_features == 10 and cal.num_features == 8
    assert np.bincount(np.r_[cal.y_train, cal.y_test]).tolist() == [N - POSITIVES, POSITIVES]  # target as is


def test_environment_variables_override_url_and_checksum(cache, serve, archive, monkeypatch):
    url, requests = serve(archive)
    monkeypatch.setenv(URL_ENV, url)
    monkeypatch.setenv(SHA256_ENV, sha(archive).upper())
    assert tabular_source() == (url, sha(archive))
    assert tabular_source(url="http://elsewhere/x.tar.gz")[0] == "http://elsewhere/x.tar.gz"  # keyword first
    ds = tabular.load_gmsc()
    assert requests == ["/data-tabular.tar.gz"] and ds.num_features == 10


def test_default_source_is_the_reference_artifact(monkeypatch):
    for var in (URL_ENV, SHA256_ENV):
        monkeypatch.delenv(var, raising=False)
    url, digest = tabular_source()
    assert url.endswith("/releases/download/artifacts-1.8/data-tabular.tar.gz")
    assert digest == "d8dbfb26ff80f315418f29e4a5d9686c743933614c2ab3a9d0119187c9339bcb"
    with pytest.raises(ValueError, match="64 hexadecimal"):
        tabular_source(sha256="abc")


# --- failures leave nothing behind ---------------------------------------------------------------------------

def test_wrong_checksum_names_both_hashes_and_keeps_nothing(cache, serve, archive):
    cache.mkdir()
    (cache / "mine.txt").write_text("a user's own file stays")
    url, requests = serve(archive)
    expected = "0" * 64
    with pytest.raises(DownloadError) as err:
        load_dataset("credit_default", url=url, sha256=expected)
    msg = str(err.value)
    assert url in msg and expected in msg and sha(archive) in msg
    assert "CTRAIN_DATA_DIR/credit_default/" in msg and "download=False" in msg  # what to do offline
    assert isinstance(err.value, OSError) and requests == ["/data-tabular.tar.gz"]
    assert leftovers(cache) == ["mine.txt"]


def test_refused_connection_raises_and_keeps_nothing(cache):
    with socket.socket() as s:  # a port that was free a moment ago and has nobody listening now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data-tabular.tar.gz"
    with pytest.raises(DownloadError, match="download failed") as err:
        tabular.load_credit_default(url=url, sha256="0" * 64)
    assert url in str(err.value) and "Connection" in str(err.value)
    assert not cache.exists()  # not even an empty cache folder


def test_body_cut_short_raises_and_keeps_nothing(cache, serve, archive):
    url, _ = serve(archive, truncate=True)
    with pytest.raises(DownloadError, match=rf"truncated, got {len(archive) // 2} of {len(archive)} bytes"):
        tabular.load_gmsc(url=url, sha256=sha(archive))
    assert not cache.exists()


def test_http_error_raises(cache, serve):
    url, _ = serve(b"not here", status=404)
    with pytest.raises(DownloadError, match="404"):
        tabular.load_california_housing(url=url, sha256="0" * 64)
    assert not cache.exists()


@pytest.mark.parametrize("bad", ["dotdot", "absolute", "symlink", "not_a_tarball", "no_folder"])
def test_unsafe_or_broken_archives_are_refused(cache, serve, tmp_path, bad):
    files = reference_csvs()
    if bad == "dotdot":
        body = tarball({**files, "../../evil.csv": b"x"})
    elif bad == "absolute":
        body = tarball({"/tmp/evil.csv": b"x"}, folder="")
    elif bad == "symlink":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo(f"{TABULAR_FOLDER}/gmsc.csv")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        body = buf.getvalue()
    elif bad == "not_a_tarball":
        body = b"<html>a login page, not an archive</html>"
    else:
        body = tarball(files, folder="other")
    url, _ = serve(body)
    match = {"dotdot": "unsafe path", "absolute": "unsafe path", "symlink": "not a plain file",
             "not_a_tarball": "not a readable .tar.gz", "no_folder": f"no top-level folder {TABULAR_FOLDER}/"}[bad]
    with pytest.raises(DownloadError, match=match):
        fetch_archive(url, sha(body), cache, TABULAR_FOLDER)
    assert not cache.exists() and not (tmp_path / "evil.csv").exists()


# --- offline -------------------------------------------------------------------------------------------------

def test_an_explicit_data_dir_is_never_downloaded_into(cache, serve, archive, tmp_path):
    url, requests = serve(archive)
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(DataNotFoundError, match="data_dir was given, so nothing is downloaded"):
        tabular.load_credit_default(mine, url=url, sha256=sha(archive))
    assert requests == [] and leftovers(mine) == [] and not cache.exists()


def test_download_false_reads_a_local_csv_as_before(cache, no_network):
    rng = np.random.default_rng(1)
    cols = {c: rng.integers(1, 3, N) for c in tabular.CREDIT_FEATURES}
    y = (np.arange(N) < 10).astype(int)
    (cache / "credit_default").mkdir(parents=True)
    (cache / "credit_default" / "UCI_Credit_Card.csv").write_bytes(_csv_bytes(
        ["ID", *cols, "default.payment.next.month"], np.c_[np.arange(N), np.stack(list(cols.values()), 1), y]))
    ds = load_dataset("credit_default", download=False, balance=None)
    assert np.bincount(np.r_[ds.y_train, ds.y_test]).tolist() == [N - 10, 10]  # the UCI label, not flipped
    assert leftovers(cache) == ["credit_default"]


def test_download_false_reads_the_reference_csv_in_the_data_folder(cache, no_network):
    (cache / "gmsc").mkdir(parents=True)
    (cache / "gmsc" / "gmsc.csv").write_bytes(reference_csvs()["gmsc.csv"])
    ds = tabular.load_gmsc(download=False, balance=None)
    assert np.bincount(np.r_[ds.y_train, ds.y_test]).tolist() == [POSITIVES, N - POSITIVES]


@pytest.mark.parametrize("name", ["california_housing", "credit_default", "gmsc"])
def test_download_false_without_files_raises_data_not_found(cache, no_network, name):
    with pytest.raises(DataNotFoundError, match="download=False") as err:
        load_dataset(name, download=False)
    assert not isinstance(err.value, DownloadError) and "CTRAIN_DATA_DIR" in str(err.value)
    assert not cache.exists()


# --- the rows of the paper that need the archive --------------------------------------------------------------

def test_reproduce_makes_a_paper_row_from_the_fetched_archive(cache, serve, archive, monkeypatch, tmp_path,
                                                             set_args):
    # The archive's layout, as served, is all reproduce needs for the rows of California housing, credit default and
    # GMSC; one row is run (credit default: one-hot groups and a protected feature, the richest of the three; tiny
    # settings, 40 rows per CSV), and `--full` lists all three (it skips them only when their data cannot be had).
    from experiments import paper_results, reproduce
    from experiments.configs import CONFIGS, OFFLINE_NAMES
    assert {"california_housing", "credit_default", "gmsc"} <= set(CONFIGS) - set(OFFLINE_NAMES)
    url, requests = serve(archive)
    monkeypatch.setenv(URL_ENV, url)
    monkeypatch.setenv(SHA256_ENV, sha(archive))
    tiny = ["seeds=0", "train.epochs=1", "train.batch_size=8", "train.n_ce=8", "protocol.n_rounds=2",
            "protocol.n_individuals=3", "protocol.lambda_energy=1.0", "protocol.search.max_steps=5", "protocol.ip_samples=10",
            "protocol.mmd_samples=4", "sensitivity.rounds=2", "sensitivity.samples=4", "sensitivity.steps=2",
            "robustness.enabled=false"]
    out = tmp_path / "run"
    [result] = reproduce.main(["--datasets", "credit_default", "--quiet", "--no-plots", "--out", str(out),
                               *set_args(tiny)])
    assert len(requests) == 1 and (cache / TABULAR_FOLDER / "gmsc.csv").is_file()  # the one download serves all
    assert result["paper_row"] == "credit_default" and result["protected"] == ["AGE"]
    assert result["comparisons"]["CT"]["ip"] is not None
    table = (out / "table.md").read_text()
    assert f"| {result['label']} | 1 |" in table and paper_results.reduction(result, 0) in table
