"""Fetching the reference implementation's tabular data archive: download, sha256 check, safe extraction.

The reference (CounterfactualTraining.jl, via TaijaData.jl) reads its preprocessed CSVs from the lazy artifact
`data-tabular` of CounterfactualExplanations.jl: one tarball, `data-tabular.tar.gz` of the release tag
`artifacts-1.8`, holding a folder `data-tabular/` with `cal_housing.csv`, `credit_default.csv`, `gmsc.csv`
(and `adult.csv`, `german_credit.csv`, which ctrain reads from their UCI originals instead). URL and sha256 are
those bound in TaijaData.jl's Artifacts.toml (the same entry as CounterfactualExplanations.jl's Artifacts.toml
from commit 669b765f "change artifacts sha in CORRECT place" until the entry moved to TaijaData.jl).

Where the archive comes from, for each of the URL and the expected sha256 separately, first match wins:
  1. the loader's keyword (`url=`, `sha256=`), when not None;
  2. the environment variable `CTRAIN_TABULAR_URL` / `CTRAIN_TABULAR_SHA256`, when set and not empty;
  3. the built-in `TABULAR_URL` / `TABULAR_SHA256` below.
A mirror of the same archive needs only the URL; a different archive (a test's) needs its sha256 too. The
checksum is always verified: there is no way to switch it off.

Every fetch is all-or-nothing: the body is streamed into a temporary file inside the cache folder, hashed while
it is written, checked, extracted into a temporary folder there, and only then is the extracted folder renamed
into place. Any failure (connection refused, HTTP error, a body shorter than its Content-Length, a wrong
checksum, a bad or unsafe tarball, a download past its deadline) raises `DownloadError` and removes both
temporaries, so the cache holds either the complete folder or nothing. The tarball itself is not kept. The
temporaries' names carry the pid of the process that made them; those of a process that is gone (a fetch killed
before it could clean up) are removed by the next fetch into the same folder.

Two limits bound a download: `timeout` (seconds, default 60) for each socket operation, and `deadline_s` (seconds,
the whole download from the request to the last byte; default: the environment variable
`CTRAIN_DOWNLOAD_DEADLINE_S` when set and not empty, else 600). A server that trickles bytes (of its headers or
its body) keeps every read within the timeout, so only the deadline stops it: a watchdog thread shuts the
connection down when the deadline passes.
"""
from __future__ import annotations

import hashlib
import http.client
import math
import os
import re
import shutil
import socket
import sys
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from ctrain import storage

TABULAR_URL = ("https://github.com/JuliaTrustworthyAI/CounterfactualExplanations.jl/releases/download/"
               "artifacts-1.8/data-tabular.tar.gz")
TABULAR_SHA256 = "d8dbfb26ff80f315418f29e4a5d9686c743933614c2ab3a9d0119187c9339bcb"
TABULAR_FOLDER = "data-tabular"  # the archive's top-level folder, as TaijaData's `data_dir` joins it
URL_ENV = "CTRAIN_TABULAR_URL"
SHA256_ENV = "CTRAIN_TABULAR_SHA256"

DEADLINE_ENV = "CTRAIN_DOWNLOAD_DEADLINE_S"
DEADLINE_S = 600.0  # default overall deadline of one download, in seconds

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_DOWNLOAD_PREFIX, _EXTRACT_PREFIX = ".ctrain-download-", ".ctrain-extract-"
_TEMPORARY = re.compile(rf"^(?:{re.escape(_DOWNLOAD_PREFIX)}|{re.escape(_EXTRACT_PREFIX)})(?:(\d+)-)?")


class DownloadError(FileNotFoundError):
    """The data could not be fetched (network, checksum or archive problem); the message says what to do offline.

    A FileNotFoundError (so an OSError), like `DataNotFoundError`: code that skips datasets whose files are
    missing (e.g. `experiments/reproduce.py --full`) skips one that cannot be downloaded as well.
    """


def tabular_source(url: str | None = None, sha256: str | None = None) -> tuple[str, str]:
    """Returns (url, sha256) of the tabular archive: keyword, else environment variable, else the built-in value."""
    url = url if url is not None else (os.environ.get(URL_ENV) or TABULAR_URL)
    sha256 = sha256 if sha256 is not None else (os.environ.get(SHA256_ENV) or TABULAR_SHA256)
    sha256 = sha256.strip().lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return url, sha256


def resolve_deadline(deadline_s: float | None = None) -> float:
    """Returns the download deadline in seconds: the argument, else $CTRAIN_DOWNLOAD_DEADLINE_S, else 600."""
    if deadline_s is None:
        raw = os.environ.get(DEADLINE_ENV, "").strip()
        try:
            deadline_s = float(raw) if raw else DEADLINE_S
        except ValueError:
            raise ValueError(f"{DEADLINE_ENV}={raw!r} is not a number of seconds") from None
    if isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float)) or not (
            math.isfinite(deadline_s) and deadline_s > 0):
        raise ValueError(f"deadline_s must be a positive number of seconds, got {deadline_s!r}")
    return float(deadline_s)


def remove_stale_temporaries(dest: Path) -> list[str]:
    """Returns the names of the download/extraction temporaries in `dest` it removed: those of processes now gone.

    A temporary named without a pid was left by an earlier ctrain version, and is removed as well.
    """
    removed = []
    try:
        entries = list(os.scandir(dest))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None:
            continue
        pid = int(match.group(1)) if match.group(1) else None
        if pid is not None and (pid == os.getpid() or storage.pid_alive(pid)):
            continue  # another live fetch's, or one of ours in progress
        try:
            shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
            removed.append(entry.name)
        except FileNotFoundError:
            pass
    return removed


def fetch_archive(url: str, sha256: str, dest: str | os.PathLike, folder: str, *, offline_hint: str = "",
                  timeout: float = _TIMEOUT_S, deadline_s: float | None = None) -> Path:
    """Returns dest/folder, first downloading `url` (a .tar.gz holding `folder/`) and extracting it when absent.

    `timeout` bounds each socket operation, `deadline_s` the whole download (see the module docstring).
    """
    dest, sha256 = Path(dest).expanduser(), sha256.strip().lower()
    deadline_s = resolve_deadline(deadline_s)
    target = dest / folder
    if target.is_dir():
        return target
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest)
    fd, tmp_name = tempfile.mkstemp(dir=dest, prefix=f"{_DOWNLOAD_PREFIX}{os.getpid()}-", suffix=".tar.gz.part")
    tmp_file, tmp_dir, done = Path(tmp_name), None, False
    try:
        with os.fdopen(fd, "wb") as out:
            got = _download(url, out, offline_hint, timeout, deadline_s)
        if got != sha256:
            raise DownloadError(f"{url}: sha256 mismatch, expected {sha256}, got {got}; the file was discarded. "
                                f"{_offline(offline_hint)}")
        tmp_dir = Path(tempfile.mkdtemp(dir=dest, prefix=f"{_EXTRACT_PREFIX}{os.getpid()}-"))
        _extract(tmp_file, tmp_dir, url, offline_hint)
        if not (tmp_dir / folder).is_dir():
            raise DownloadError(f"{url}: the archive has no top-level folder {folder}/. {_offline(offline_hint)}")
        try:
            os.rename(tmp_dir / folder, target)  # atomic: readers see the whole folder or none
        except OSError:
            if not target.is_dir():  # an existing target means another process finished the same fetch first
                raise
        done = True
    finally:
        tmp_file.unlink(missing_ok=True)
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if created and not done:
            try:
                dest.rmdir()  # a failed first fetch leaves no trace, not even an empty cache folder
            except OSError:
                pass  # not empty: someone else is using it
    return target


def _offline(hint: str) -> str:
    return hint or "To work offline, put the file in the data folder yourself."


class _Watchdog:
    """Shuts down the download's sockets when the deadline passes, ending any read still waiting for bytes.

    A server that trickles its headers or its body keeps every single read within the per-read timeout; only
    closing the connection from outside ends such a read. `opener` records each socket it connects (redirects
    open new ones) so that the timer can reach it.
    """

    def __init__(self, deadline_s: float):
        self.fired, self._sockets, self._lock = False, [], threading.Lock()
        self._timer = threading.Timer(deadline_s, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _track(self, sock) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.fired:  # connected after the deadline: give up at once
                self._fire()

    def opener(self) -> urllib.request.OpenerDirector:
        """Returns a urllib opener whose HTTP(S) connections are registered with this watchdog."""
        track = self._track

        class Connection(http.client.HTTPConnection):
            def connect(self):
                super().connect()
                track(self.sock)

        class SecureConnection(http.client.HTTPSConnection):
            def connect(self):
                super().connect()
                track(self.sock)

        class Handler(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(Connection, req)

        class SecureHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(SecureConnection, req, context=self._context)

        return urllib.request.build_opener(Handler, SecureHandler)

    def __enter__(self) -> "_Watchdog":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


def _download(url: str, out, offline_hint: str, timeout: float, deadline_s: float = DEADLINE_S) -> str:
    """Streams `url` into `out`; returns the body's sha256 hex digest, raising DownloadError on any failure.

    Each socket operation may take `timeout` s, and the whole download, from the request to the last byte,
    `deadline_s` s (a watchdog shuts the connection down when it passes).
    """
    print(f"ctrain: downloading {url}", file=sys.stderr, flush=True)
    digest, n, length = hashlib.sha256(), 0, None
    with _Watchdog(deadline_s) as watchdog:
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "ctrain"})
            with watchdog.opener().open(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                while chunk := response.read1(_CHUNK):  # what has arrived, so a slow body is hashed as it comes
                    digest.update(chunk)
                    out.write(chunk)
                    n += len(chunk)
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError/HTTPError/timeouts: OSErrors
            if not watchdog.fired:
                reason = e.reason if isinstance(e, urllib.error.URLError) and not isinstance(
                    e, urllib.error.HTTPError) else e
                raise DownloadError(f"{url}: download failed ({type(reason).__name__}: {reason}) after {n} bytes. "
                                    f"{_offline(offline_hint)}") from e
        if watchdog.fired:  # a read the shutdown ended may look like a clean end of the body
            raise DownloadError(f"{url}: download passed its deadline of {deadline_s:g} s (deadline_s=, or "
                                f"{DEADLINE_ENV}) after {n} bytes; the partial file was removed. "
                                f"{_offline(offline_hint)}")
    # http.client ends a body cut short by the server without an error, so the length is checked here
    if length is not None and length.isdigit() and n != int(length):
        raise DownloadError(f"{url}: download truncated, got {n} of {length} bytes (Content-Length). "
                            f"{_offline(offline_hint)}")
    return digest.hexdigest()


def _extract(archive: Path, into: Path, url: str, offline_hint: str) -> None:
    """Extracts a .tar.gz into `into`, refusing absolute paths, '..' and anything but plain files and folders."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                parts = PurePosixPath(m.name).parts
                if m.name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise DownloadError(f"{url}: unsafe path {m.name!r} in the archive; nothing was extracted. "
                                        f"{_offline(offline_hint)}")
                if not (m.isfile() or m.isdir()):
                    raise DownloadError(f"{url}: the archive member {m.name!r} is not a plain file or folder; "
                                        f"nothing was extracted. {_offline(offline_hint)}")
            # the "data" filter repeats the checks above and drops permission bits that could surprise a user
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(into, members=members, **kwargs)
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, DownloadError):
            raise
        raise DownloadError(f"{url}: not a readable .tar.gz archive ({type(e).__name__}: {e}). "
                            f"{_offline(offline_hint)}") from e
