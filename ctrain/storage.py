"""Storage: every file ctrain writes is written whole or not at all.

A file is first written to a temporary file in its own folder (named `.<name>.<random>.tmp`, so a reader or a
glob for `<name>` never sees it), flushed and fsynced, then renamed over the target (atomic on POSIX), and the
folder is fsynced so that the rename survives a power cut. If anything fails on the way (a full disk, a write
error, an interrupt), the temporary file is removed and the previous file, if any, is left as it was.

    from ctrain.storage import write_atomic, write_json, save_figure

    write_atomic("out/table.md", text)                  # str (UTF-8) or bytes
    write_json("out/results.json", obj, indent=1)        # json.dumps keywords pass through
    save_figure(fig, "out/figure.pdf", bbox_inches="tight")  # matplotlib Figure.savefig keywords pass through

Each returns the path it wrote. A failure raises `StorageError` (an OSError with the original errno), whose
message names the file and the cause, e.g. "No space left on device while writing out/results.json; the
previous file is unchanged". `is_temporary(name)` tells a file listing which names are such temporaries.
"""
from __future__ import annotations

import contextlib
import errno as errno_codes
import json
import os
import tempfile
from typing import Callable, Iterator

TEMP_SUFFIX = ".tmp"


class StorageError(OSError):
    """A file could not be written; the previous file (if any) is unchanged. `errno` is the cause's errno."""


def is_temporary(name: str) -> bool:
    """Returns True if the file name (no folder) is one of this module's temporaries (`.<name>.<random>.tmp`)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _fsync_folder(folder: str) -> None:
    # Makes the rename durable; some filesystems (and Windows) cannot open or fsync a folder, which is harmless.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _failure(err: BaseException, path: str, existed: bool) -> StorageError:
    """Returns the StorageError naming `path` and the cause of `err`."""
    code = getattr(err, "errno", None)
    cause = os.strerror(code) if code else (str(err) or type(err).__name__)
    previous = "the previous file is unchanged" if existed else "no file was written"
    return StorageError(code or errno_codes.EIO, f"{cause} while writing {path}; {previous}")


@contextlib.contextmanager
def _replacing(path: str | os.PathLike, *, binary: bool) -> Iterator[tuple]:
    """Yields (open file, temporary path) in path's folder; on a clean exit it is synced and renamed onto `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    existed = os.path.exists(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=TEMP_SUFFIX)
    except OSError as err:
        raise _failure(err, path, existed) from err
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as f:
            # mkstemp makes 0600; a rewritten file keeps its mode, a new one gets the umask's usual mode
            os.chmod(tmp, os.stat(path).st_mode & 0o777 if existed else 0o666 & ~_UMASK)
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, StorageError):
            raise _failure(err, path, existed) from err
        raise
    _fsync_folder(folder)


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


# Read once: os.umask can only be read by setting it, which would race with files other threads create.
_UMASK = _umask()


def write_atomic(path: str | os.PathLike, data: str | bytes) -> str:
    """Returns `path` after replacing the file with `data` (str as UTF-8, or bytes) whole, or raises StorageError."""
    if not isinstance(data, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"write_atomic writes str or bytes, got {type(data).__name__} for {os.fspath(path)}")
    with _replacing(path, binary=not isinstance(data, str)) as (f, _):
        f.write(data)
    return os.fspath(path)


def write_json(path: str | os.PathLike, obj, **json_kwargs) -> str:
    """Returns `path` after replacing it with `json.dumps(obj, **json_kwargs)` whole, or raises StorageError."""
    # Serialised first, so an object that cannot be written as JSON never touches the disk.
    return write_atomic(path, json.dumps(obj, **json_kwargs))


def write_with(path: str | os.PathLike, write: Callable, *, binary: bool = False) -> str:
    """Returns `path` after `write(f)` filled an open temporary file (text, or binary) that then replaces `path`."""
    with _replacing(path, binary=binary) as (f, _):
        write(f)
    return os.fspath(path)


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> str:
    """Returns `path` after `fig.savefig` wrote it whole (via a temporary file in its folder), or raises StorageError.

    The format comes from `path`'s extension (or a `format=` keyword), as matplotlib would choose it for `path`.
    """
    name = os.fspath(path)
    ext = os.path.splitext(name)[1].lstrip(".")
    if "format" not in savefig_kwargs and ext:
        savefig_kwargs["format"] = ext  # the temporary's .tmp suffix must not pick the format
    return write_with(path, lambda f: fig.savefig(f, **savefig_kwargs), binary=True)


def pid_alive(pid: int) -> bool:
    """Returns whether process `pid` exists on this host (the owner of a lock or a temporary file)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists but belongs to another user
        return True
    except (OverflowError, ValueError):
        return False
    return True
