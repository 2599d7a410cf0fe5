"""reproduce forgives: the same command twice succeeds, mistakes are one line (exit 2), faults lose no results.

The top-level results.json is derived from the per-row files: a full disk halfway through any results write
leaves the previous files readable, and a deleted or damaged results.json is rebuilt from the rows.
"""
import contextlib
import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ctrain import storage
from experiments import pipeline, reproduce
from experiments.configs import get_config, override

ROOT = Path(__file__).resolve().parents[1]
# test_script_args' SMALL: one epoch, one seed, two protocol rounds, no protected feature (no CT_mut, no IG).
SMALL = ["train.epochs=1", "seeds=0", "protocol.n_rounds=2", "protocol.n_individuals=6", "protocol.lambda_energy=1.0",
         "train.n_ce=60", "protocol.search.max_steps=20", "protocol.ip_samples=50", "protocol.mmd_samples=8",
         "data.kwargs.n_train=300", "data.kwargs.n_test=100", "data.protected="]


def _args(out) -> list[str]:
    return ["--quiet", "--no-plots", "--out", str(out), *sum((["--set", s] for s in SMALL), [])]


def _no_training(*args, **kwargs):
    raise AssertionError("a finished row was trained again")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """Returns an --out holding one finished row (linearly_separable), made by this commit and SMALL."""
    out = tmp_path_factory.mktemp("finished") / "run"
    reproduce.main(["--datasets", "linearly_separable", *_args(out)])
    return out


@pytest.fixture
def out(finished, tmp_path) -> Path:
    """Returns a copy of the finished --out that a test may change."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def _fake_row(out: Path, label: str):
    """Returns a stand-in for train_and_evaluate that stores a copy of the finished row under `label`."""
    row = json.loads((out / "linearly_separable" / "results.json").read_text())

    def run(config, workdir, **kwargs):
        os.makedirs(workdir, exist_ok=True)
        res = {**row, "dataset": config.data.name, "label": label}
        pipeline.write_json(os.path.join(workdir, "config.json"), config.to_dict())
        pipeline.write_json(os.path.join(workdir, "results.json"), res)
        return res
    return run


def test_the_same_command_twice_succeeds_and_reuses_its_rows(out, monkeypatch, capsys):
    before = (out / "results.json").read_text()
    monkeypatch.setattr(pipeline, "train_seeds", _no_training)
    argv = ["--datasets", "linearly_separable", *_args(out)]
    assert pipeline.run_command(reproduce.main, argv) == 0
    printed = capsys.readouterr().out
    assert "reusing the finished row" in printed and "same configuration and commit" in printed
    assert "## Table 1" in printed and "linearly_separable" in printed.split("## Table 1", 1)[1]
    assert (out / "results.json").read_text() == before
    # --overwrite retrains it (a stand-in here), in its own folder.
    monkeypatch.setattr(reproduce, "train_and_evaluate", _fake_row(out, "linearly_separable"))
    (out / "linearly_separable" / "stale.txt").write_text("from the run replaced")
    assert pipeline.run_command(reproduce.main, argv + ["--overwrite"]) == 0
    assert not (out / "linearly_separable" / "stale.txt").exists()


def test_a_row_made_by_another_commit_is_not_reused(out, monkeypatch, capsys):
    made = json.loads((out / "linearly_separable" / reproduce.MADE_BY).read_text())
    storage.write_json(out / "linearly_separable" / reproduce.MADE_BY, {**made, "git_commit": "0" * 40})
    monkeypatch.setattr(pipeline, "train_seeds", _no_training)
    assert pipeline.run_command(reproduce.main, ["--datasets", "linearly_separable", *_args(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "commit 0000000000 ->" in err and "--overwrite" in err


@pytest.mark.parametrize("argv, message", [
    (["--set", "nonexistent.field=1"], "nonexistent"),
    (["--datasets", "no_such_set"], "no_such_set"),
    (["--set", "train.epochs=zero"], "train.epochs"),
])
def test_a_configuration_mistake_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setattr(pipeline, "train_seeds", _no_training)
    assert pipeline.run_command(reproduce.main, ["--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_the_command_line_prints_a_mistake_as_one_line_with_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "experiments.reproduce", "--set", "nonexistent.field=1", "--out",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "nonexistent" in done.stderr, done.stderr


def test_help_gives_every_flag_a_text_and_the_description_once():
    text = reproduce.build_parser().format_help()
    assert text.count(reproduce.__doc__.splitlines()[0]) == 1
    for action in reproduce.build_parser()._actions:
        assert action.help, action.option_strings


class _DiskFull:
    """A file that takes half of what is written to it, then fails as a full disk does."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)


def _disk_full_on(monkeypatch, target: Path) -> None:
    """Makes every ctrain.storage write of `target` fail halfway with ENOSPC."""
    real = storage._replacing

    @contextlib.contextmanager
    def replacing(path, *, binary):
        with real(path, binary=binary) as (f, tmp):
            yield (_DiskFull(f) if os.path.abspath(path) == os.path.abspath(target) else f), tmp
    monkeypatch.setattr(storage, "_replacing", replacing)


@pytest.mark.parametrize("target", ["results.json", "metadata.json", "table.md", "circles/results.json"])
def test_a_full_disk_during_a_results_write_loses_nothing(out, monkeypatch, capsys, target):
    before = {name: (out / name).read_bytes() for name in ("results.json", "metadata.json", "table.md")}
    monkeypatch.setattr(reproduce, "train_and_evaluate", _fake_row(out, "circles"))
    _disk_full_on(monkeypatch, out / target)
    assert pipeline.run_command(reproduce.main, ["--datasets", "circles", *_args(out)]) == 1
    printed, err = capsys.readouterr()
    minutes = get_config("circles").expected_minutes
    assert f"1 row(s) to train into {out.resolve()}: expected ~{minutes:g} min" in printed
    assert "No space left on device" in err and target in err and len(err.strip().splitlines()) == 1
    # The file that failed is the previous one, whole (or, new, not there); every other is whole too.
    assert (out / target).read_bytes() == before[target] if target in before else not (out / target).exists()
    for name in ("results.json", "metadata.json"):
        json.loads((out / name).read_text())
    assert not [p for p in out.rglob("*") if storage.is_temporary(p.name)]
    monkeypatch.undo()
    # The rows survive in their own files; --tables-only makes results.json from them.
    rows = [r["label"] for r in reproduce.main(["--tables-only", "--out", str(out)])]
    assert rows == (["linearly_separable"] if target == "circles/results.json" else ["linearly_separable", "circles"])
    assert [r["label"] for r in json.loads((out / "results.json").read_text())] == rows


@pytest.mark.parametrize("damage", ["deleted", "cut short", "empty", "not JSON", "a dict"])
def test_tables_only_rebuilds_a_lost_or_damaged_results_json_from_the_rows(out, capsys, damage):
    path, table, results = out / "results.json", (out / "table.md").read_text(), (out / "results.json").read_text()
    spoilt = {"cut short": results[:len(results) // 2], "empty": "", "not JSON": "<html>", "a dict": '{"a": 1}'}
    if damage == "deleted":
        path.unlink()
    else:
        path.write_text(spoilt[damage])
    (out / "table.md").unlink()
    stored = reproduce.main(["--tables-only", "--out", str(out)])
    assert (out / "table.md").read_text() == table and json.loads(path.read_text()) == json.loads(results) == stored
    if damage != "deleted":  # named, and kept
        assert f"{path} was damaged" in capsys.readouterr().out
        assert (out / "results.json.damaged").read_text() == spoilt[damage]


@pytest.mark.parametrize("spoilt", ["", '{"results": tr', "[1, 2]"])
def test_a_damaged_row_file_is_named_with_how_to_recover_and_left_as_it_is(out, capsys, spoilt):
    row = out / "linearly_separable" / "results.json"
    row.write_text(spoilt)
    assert pipeline.run_command(reproduce.main, ["--tables-only", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(row) in err and "--overwrite" in err
    assert row.read_text() == spoilt


def test_progress_names_the_dataset_the_model_the_seeds_and_the_stage():
    config = override(get_config("linearly_separable"), SMALL + ["seeds=0,1,2"])
    data = pipeline.load_data(config)
    for label, expected in ((None, "[linearly_separable BL seeds 0-2 train] "),
                            ("CT_mut", "[linearly_separable CT_mut seeds 0-2 train] ")):
        log = io.StringIO()
        pipeline.train_seeds(config, data, "vanilla", progress=log, label=label)
        lines = log.getvalue().splitlines()
        assert lines and all(line.startswith(expected) for line in lines), lines
    log = io.StringIO()
    shown = pipeline.stage_progress(log, "moons seed 3 BL/CT evaluate")
    shown.write("evaluate search 1/10")
    shown.write(" ok\nevaluate search 2/10\n")
    assert log.getvalue() == ("[moons seed 3 BL/CT evaluate] evaluate search 1/10 ok\n"
                              "[moons seed 3 BL/CT evaluate] evaluate search 2/10\n")
    assert pipeline.stage_progress(False, "any") is False
    assert pipeline.seeds_text([3]) == "seed 3" and pipeline.seeds_text([0, 2]) == "seeds 0,2"
