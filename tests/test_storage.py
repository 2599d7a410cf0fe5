"""Atomic writes (ctrain.storage) and the library writes that use them: a fault injected halfway through a write
(a full disk) leaves the previous file byte-identical, leaves no temporary file, and raises an OSError naming
the file and the cause."""
import errno
import json
import os

import numpy as np
import pytest

from ctrain import checkpoint, storage
from ctrain.evaluate import write_records

PREVIOUS = b'[{"dataset": "moons", "accuracy": 0.9}]\n'


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _HalfThenFull:
    """A file object whose write stores half the data, then fails as a full disk does."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: max(1, len(data) // 2)])
        self._f.flush()
        raise _disk_full()

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def _half_written(monkeypatch):
    """Makes every file ctrain.storage opens from now on fail halfway through its first write with ENOSPC."""
    real = os.fdopen
    monkeypatch.setattr(storage.os, "fdopen", lambda *a, **k: _HalfThenFull(real(*a, **k)))


@pytest.fixture
def half_written(monkeypatch):
    _half_written(monkeypatch)


def _failing(monkeypatch, name: str):
    def fail(*args, **kwargs):
        raise _disk_full()

    monkeypatch.setattr(storage.os, name, fail)


def _assert_kept(path, previous: bytes, err: pytest.ExceptionInfo):
    assert path.read_bytes() == previous
    assert sorted(os.listdir(path.parent)) == [path.name], "a temporary file was left behind"
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    message = str(err.value)
    assert str(path) in message and os.strerror(errno.ENOSPC) in message and "unchanged" in message


def test_write_atomic_replaces_the_whole_file_and_returns_its_path(tmp_path):
    path = tmp_path / "sub" / "results.json"
    assert storage.write_atomic(path, "first") == str(path)
    assert storage.write_atomic(path, b"\x00second") == str(path)
    assert path.read_bytes() == b"\x00second"
    assert os.listdir(path.parent) == ["results.json"]


def test_write_json_passes_its_keywords_to_json(tmp_path):
    path = tmp_path / "results.json"
    storage.write_json(path, {"b": 1, "a": [1, 2]}, indent=2, sort_keys=True)
    assert path.read_text() == json.dumps({"b": 1, "a": [1, 2]}, indent=2, sort_keys=True)


def test_a_rewritten_file_keeps_its_mode(tmp_path):
    path = tmp_path / "table.md"
    path.write_text("old")
    os.chmod(path, 0o640)
    storage.write_atomic(path, "new")
    assert os.stat(path).st_mode & 0o777 == 0o640


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_a_full_disk_leaves_the_previous_file_whole(tmp_path, monkeypatch, where):
    path = tmp_path / "results.json"
    path.write_bytes(PREVIOUS)
    _half_written(monkeypatch) if where == "write" else _failing(monkeypatch, where)
    with pytest.raises(storage.StorageError) as err:
        storage.write_json(path, [{"dataset": "moons", "accuracy": 0.5}] * 1000, indent=1)
    _assert_kept(path, PREVIOUS, err)


def test_a_failed_first_write_leaves_no_file(tmp_path, half_written):
    path = tmp_path / "results.json"
    with pytest.raises(OSError, match="no file was written"):
        storage.write_atomic(path, "x" * 100)
    assert os.listdir(tmp_path) == []


def test_an_object_json_cannot_write_touches_nothing(tmp_path):
    path = tmp_path / "results.json"
    path.write_bytes(PREVIOUS)
    with pytest.raises(TypeError):
        storage.write_json(path, {"x": object()})
    assert path.read_bytes() == PREVIOUS and os.listdir(tmp_path) == ["results.json"]


def test_save_figure_writes_the_format_of_its_extension(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    png, pdf = tmp_path / "figure.png", tmp_path / "figure.pdf"
    storage.save_figure(fig, png, dpi=20)
    storage.save_figure(fig, pdf)
    assert png.read_bytes().startswith(b"\x89PNG") and pdf.read_bytes().startswith(b"%PDF")
    previous = png.read_bytes()
    monkeypatch.setattr(fig, "savefig", lambda f, **kw: (f.write(b"\x89PN"), (_ for _ in ()).throw(_disk_full())))
    with pytest.raises(OSError) as err:
        storage.save_figure(fig, png, dpi=20)
    plt.close(fig)
    assert png.read_bytes() == previous
    assert sorted(os.listdir(tmp_path)) == ["figure.pdf", "figure.png"]
    assert str(png) in str(err.value)


@pytest.mark.parametrize("name", ["results.csv", "results.json"])
def test_write_records_keeps_the_previous_records_on_a_full_disk(tmp_path, monkeypatch, name):
    path = tmp_path / name
    write_records(str(path), [{"dataset": "moons", "accuracy": np.float32(0.5), "ip": None}])
    previous = path.read_bytes()
    _half_written(monkeypatch)
    with pytest.raises(OSError) as err:
        write_records(str(path), [{"dataset": "circles", "accuracy": 0.25, "ip": 1.0}] * 100)
    _assert_kept(path, previous, err)


def test_write_records_writes_what_it_wrote_before(tmp_path):
    records = [{"dataset": "moons", "accuracy": np.float32(0.5), "ip": None}, {"dataset": "circles", "extra": 2}]
    write_records(str(tmp_path / "r.csv"), records)
    write_records(str(tmp_path / "r.json"), records)
    assert (tmp_path / "r.csv").read_text() == "dataset,accuracy,ip,extra\nmoons,0.5,n/a,\ncircles,,,2\n"
    assert json.loads((tmp_path / "r.json").read_text()) == [
        {"dataset": "moons", "accuracy": 0.5, "ip": None}, {"dataset": "circles", "extra": 2}]


def test_run_identity_file_survives_a_full_disk(tmp_path, monkeypatch):
    pytest.importorskip("orbax.checkpoint")
    manager = checkpoint.Manager(str(tmp_path))
    manager.write_identity({"config": {"epochs": 2}})
    previous = (tmp_path / checkpoint.RUN_FILE).read_bytes()
    _failing(monkeypatch, "fsync")
    with pytest.raises(OSError) as err:
        manager.write_identity({"config": {"epochs": 3}})
    manager.close()
    assert (tmp_path / checkpoint.RUN_FILE).read_bytes() == previous
    assert not [n for n in os.listdir(tmp_path) if storage.is_temporary(n)]
    assert checkpoint.RUN_FILE in str(err.value)


def test_history_file_survives_a_full_disk(tmp_path, monkeypatch):
    pytest.importorskip("orbax.checkpoint")
    manager = checkpoint.Manager(str(tmp_path))
    manager.write_history([{"epoch": 1, "loss": 0.5}])
    previous = (tmp_path / checkpoint.HISTORY_FILE).read_bytes()
    assert previous == b'{"epoch": 1, "loss": 0.5}\n'  # one JSON log a line, as fit has always written it
    _half_written(monkeypatch)
    with pytest.raises(OSError) as err:
        manager.write_history([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}])
    manager.close()
    assert (tmp_path / checkpoint.HISTORY_FILE).read_bytes() == previous
    assert not [n for n in os.listdir(tmp_path) if storage.is_temporary(n)]
    assert checkpoint.HISTORY_FILE in str(err.value)
