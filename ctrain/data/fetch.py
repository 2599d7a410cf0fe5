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
checksum, a bad or unsafe tarball) raises `DownloadError` and removes both temporaries, so the cache holds either
the complete folder or nothing. The tarball itself is not kept.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

TABULAR_URL = ("https://github.com/JuliaTrustworthyAI/CounterfactualExplanations.jl/releases/download/"
               "artifacts-1.8/data-tabular.tar.gz")
TABULAR_SHA256 = "d8dbfb26ff80f315418f29e4a5d9686c743933614c2ab3a9d0119187c9339bcb"
TABULAR_FOLDER = "data-tabular"  # the archive's top-level folder, as TaijaData's `data_dir` joins it
URL_ENV = "CTRAIN_TABULAR_URL"
SHA256_ENV = "CTRAIN_TABULAR_SHA256"

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


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


def fetch_archive(url: str, sha256: str, dest: str | os.PathLike, folder: str, *, offline_hint: str = "",
                  timeout: float = _TIMEOUT_S) -> Path:
    """Returns dest/folder, first downloading `url` (a .tar.gz holding `folder/`) and extracting it when absent."""
    dest, sha256 = Path(dest).expanduser(), sha256.strip().lower()
    target = dest / folder
    if target.is_dir():
        return target
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest, prefix=".ctrain-download-", suffix=".tar.gz.part")
    tmp_file, tmp_dir, done = Path(tmp_name), None, False
    try:
        with os.fdopen(fd, "wb") as out:
            got = _download(url, out, offline_hint, timeout)
        if got != sha256:
            raise DownloadError(f"{url}: sha256 mismatch, expected {sha256}, got {got}; the file was discarded. "
                                f"{_offline(offline_hint)}")
        tmp_dir = Path(tempfile.mkdtemp(dir=dest, prefix=".ctrain-extract-"))
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


def _download(url: str, out, offline_hint: str, timeout: float) -> str:
    """Streams `url` into `out`; returns the body's sha256 hex digest, raising DownloadError on any failure."""
    print(f"ctrain: downloading {url}", file=sys.stderr, flush=True)
    digest, n = hashlib.sha256(), 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "ctrain"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                n += len(chunk)
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError/HTTPError/timeouts are OSErrors
        reason = e.reason if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError) \
            else e
        raise DownloadError(f"{url}: download failed ({type(reason).__name__}: {reason}) after {n} bytes. "
                            f"{_offline(offline_hint)}") from e
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
