"""Fetching the reference's tabular archive (ctrain.data.fetch) from a loopback HTTP server: one download serves
California housing, credit default and GMSC; a wrong checksum, a refused connection, a body cut short or an
unsafe/broken tarball, or a server trickling bytes past the download's deadline raise DownloadError and leave
nothing in the cache (a killed fetch's leftovers are removed by the next); download=False stays offline."""
import csv
import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from ctrain.data import Dataset, load_dataset, tabular
from ctrain.data import fetch
from ctrain.data.fetch import SHA256_ENV, TABULAR_FOLDER, URL_ENV, DownloadError, fetch_archive, tabular_source
from ctrain.data.tabular import DataNotFoundError

N, POSITIVES = 40, 25  # rows per CSV, and rows whose reference `target` is 1 (the positive outcome)
# the reference's CSVs are shuffled: class 1 at random rows (seed 0 puts both classes among the last 8, the test rows)
TARGET = np.random.default_rng(0).permutation(np.arange(N) < POSITIVES).astype(int)
N_VAL = 4  # validation rows held out of the 32 training rows (the reference's 1,000 need more than 40 rows)


def _csv_bytes(header, rows):
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue().encode()


def reference_csvs(seed=0):
    """The three CSVs of the reference archive, with its column layout, as {file name: bytes}."""
    rng = np.random.default_rng(seed)
    target = TARGET
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
    """$CTRAIN_DATA_DIR in tmp_path (not created yet), an empty HOME, no URL/checksum overrides, and no installed
    data packages (an empty $CTRAIN_PACKAGE_PATH: the venv's pinned packages would be read before the archive)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "no_packages").mkdir()
    monkeypatch.setenv(tabular.PACKAGE_PATH_ENV, str(tmp_path / "no_packages"))
    monkeypatch.setenv("CTRAIN_DATA_DIR", str(tmp_path / "cache"))
    for var in (URL_ENV, SHA256_ENV, "SCIKIT_LEARN_DATA"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "cache"


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- a good download ----------------------------------------------------------------------------------------

def test_one_download_serves_all_three_datasets(cache, serve, archive):
    url, requests = serve(archive)
    ds = load_dataset("credit_default", url=url, sha256=sha(archive), balance=None, n_val=N_VAL)
    assert isinstance(ds, Dataset) and requests == ["/data-tabular.tar.gz"]
    assert leftovers(cache) == [TABULAR_FOLDER]  # the extracted folder only: no tarball, no temporaries
    assert leftovers(cache / TABULAR_FOLDER) == ["cal_housing.csv", "credit_default.csv", "gmsc.csv"]
    # the reference's target (1 = no default) is ctrain's label too
    assert np.bincount(np.r_[ds.y_train, ds.y_val, ds.y_test]).tolist() == [N - POSITIVES, POSITIVES]
    assert ds.class_names == ("default", "no default") and "SEX=1" in ds.schema.names
    # the reference's rows in the reference's order: its split by position is reproduced exactly
    np.testing.assert_array_equal(ds.y_test, TARGET[32:])
    assert set(ds.y_test.tolist()) == {0, 1}
    assert ds.provenance["source"] == "reference" and not ds.provenance["shuffled"]

    again = load_dataset("credit_default", url=url, sha256=sha(archive), balance=None, n_val=N_VAL)
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    gmsc = load_dataset("gmsc", url=url, sha256=sha(archive), n_val=N_VAL)
    cal = load_dataset("california_housing", url=url, sha256=sha(archive), n_val=N_VAL)
    assert requests == ["/data-tabular.tar.gz"]  # the cached folder answers every later call
    gmsc_labels = np.r_[gmsc.y_train, gmsc.y_val, gmsc.y_test]
    assert np.bincount(gmsc_labels).tolist() == [N - POSITIVES] * 2  # undersampled to 50/50 by default
    assert gmsc.num_features == 10 and cal.num_features == 8
    cal_labels = np.r_[cal.y_train, cal.y_val, cal.y_test]
    assert np.bincount(cal_labels).tolist() == [N - POSITIVES] * 2  # target as is, undersampled


def test_environment_variables_override_url_and_checksum(cache, serve, archive, monkeypatch):
    url, requests = serve(archive)
    monkeypatch.setenv(URL_ENV, url)
    monkeypatch.setenv(SHA256_ENV, sha(archive).upper())
    assert tabular_source() == (url, sha(archive))
    assert tabular_source(url="http://elsewhere/x.tar.gz")[0] == "http://elsewhere/x.tar.gz"  # keyword first
    ds = tabular.load_gmsc(n_val=N_VAL)
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


# --- deadlines and leftovers ------------------------------------------------------------------------------------

TRICKLE_BYTES, TRICKLE_EVERY_S = 16, 0.25  # the trickling server's whole answer takes 4 s, then it stops


@pytest.fixture
def trickle():
    """trickle(headers=False) -> (url, finished): a loopback server sending one byte every TRICKLE_EVERY_S.

    It sends TRICKLE_BYTES bytes of its body (it promises 1000, so a fetch that waited fails as truncated), or,
    with headers=True, of a header line that never ends; `finished` is set once it has sent them all.
    """
    servers = []

    def start(headers=False):
        finished = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if headers:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                self.wfile.flush()
                try:
                    for _ in range(TRICKLE_BYTES):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(TRICKLE_EVERY_S)
                except OSError:  # the client gave up
                    return
                finished.set()
                self.close_connection = True

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/data-tabular.tar.gz", finished

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_trickling_server_cannot_hold_a_fetch_past_its_deadline(cache, trickle):
    url, finished = trickle()
    # Every read gets a byte well within the 2 s timeout: only the deadline can end this fetch early.
    with pytest.raises(DownloadError) as err:
        fetch_archive(url, "0" * 64, cache, TABULAR_FOLDER, timeout=2, deadline_s=1)
    assert not finished.is_set(), "the fetch waited for the server to finish"
    assert url in str(err.value) and "deadline of 1 s" in str(err.value)
    assert not cache.exists()  # no partial file, not even the cache folder


def test_a_server_trickling_its_headers_is_stopped_at_the_deadline_too(cache, trickle):
    url, finished = trickle(headers=True)
    with pytest.raises(DownloadError, match="deadline of 1 s") as err:
        fetch_archive(url, "0" * 64, cache, TABULAR_FOLDER, timeout=2, deadline_s=1)
    assert not finished.is_set() and url in str(err.value) and not cache.exists()


def test_the_deadline_defaults_to_its_environment_variable(cache, trickle, monkeypatch):
    url, finished = trickle()
    monkeypatch.setenv(fetch.DEADLINE_ENV, "0.5")
    assert fetch.resolve_deadline() == 0.5 and fetch.resolve_deadline(3) == 3.0
    with pytest.raises(DownloadError, match="deadline of 0.5 s"):
        fetch_archive(url, "0" * 64, cache, TABULAR_FOLDER, timeout=2)
    assert not finished.is_set() and not cache.exists()
    monkeypatch.delenv(fetch.DEADLINE_ENV)
    assert fetch.resolve_deadline() == fetch.DEADLINE_S
    for bad in (0, -1, float("inf"), "5"):
        with pytest.raises(ValueError, match="deadline_s"):
            fetch.resolve_deadline(bad)


def test_without_the_deadline_the_trickle_ends_as_truncated(cache, trickle):
    url, finished = trickle()  # the same server, given time: the deadline above is what stopped those fetches
    with pytest.raises(DownloadError, match=f"truncated, got {TRICKLE_BYTES} of 1000 bytes"):
        fetch_archive(url, "0" * 64, cache, TABULAR_FOLDER, timeout=2, deadline_s=60)
    assert finished.is_set() and not cache.exists()


def _dead_pid() -> int:
    """Returns the pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_fetchs_leftovers_are_removed_by_the_next(cache, serve, archive):
    cache.mkdir()
    dead = _dead_pid()
    stale = [f".ctrain-download-{dead}-k1ll3d.tar.gz.part", ".ctrain-download-oldname.tar.gz.part"]
    for name in stale:
        (cache / name).write_bytes(b"half an archive")
    (cache / f".ctrain-extract-{dead}-k1ll3d" / TABULAR_FOLDER).mkdir(parents=True)
    live = f".ctrain-download-{os.getppid()}-busy.tar.gz.part"  # a fetch still running in a live process
    (cache / live).write_bytes(b"in progress")
    (cache / "mine.txt").write_text("a user's own file stays")
    url, _ = serve(archive)
    fetch_archive(url, sha(archive), cache, TABULAR_FOLDER)
    assert leftovers(cache) == sorted([live, TABULAR_FOLDER, "mine.txt"])


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
    ds = load_dataset("credit_default", download=False, balance=None, n_val=N_VAL)
    # the UCI label (1 = default) flipped to the reference's coding: 1 = no default
    assert np.bincount(np.r_[ds.y_train, ds.y_val, ds.y_test]).tolist() == [10, N - 10]
    assert leftovers(cache) == ["credit_default"]


def test_download_false_reads_the_reference_csv_in_the_data_folder(cache, no_network):
    (cache / "gmsc").mkdir(parents=True)
    (cache / "gmsc" / "gmsc.csv").write_bytes(reference_csvs()["gmsc.csv"])
    ds = tabular.load_gmsc(download=False, balance=None, n_val=N_VAL)
    assert np.bincount(np.r_[ds.y_train, ds.y_val, ds.y_test]).tolist() == [N - POSITIVES, POSITIVES]


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
            "robustness.enabled=false", f"data.kwargs.n_val={N_VAL}"]
    out = tmp_path / "run"
    [result] = reproduce.main(["--datasets", "credit_default", "--quiet", "--no-plots", "--out", str(out),
                               *set_args(tiny)])
    assert len(requests) == 1 and (cache / TABULAR_FOLDER / "gmsc.csv").is_file()  # the one download serves all
    assert result["paper_row"] == "credit_default" and result["protected"] == ["AGE"]
    assert result["comparisons"]["CT"]["ip"] is not None
    table = (out / "table.md").read_text()
    assert f"| {result['label']} | 1 |" in table and paper_results.reduction(result, 0) in table
