"""The experiment scripts check every argument before anything trains, and never lose a finished run in --out."""
import json
import os

import numpy as np
import pytest

from experiments import pipeline, reproduce
from experiments.studies.grids import tuning
from experiments.studies.units import study as units

# The cheapest reproduce run that trains BL and CT and scores them (tests/test_experiments.py's TINY, one epoch, two
# protocol rounds); SMALL adds small splits of one shape for both synthetic sets, so they share compiled programs,
# and no protected feature (no CT_mut, no IG): the merging of rows is what is tested, not what is in them.
TINY = ["train.epochs=1", "seeds=0", "protocol.n_rounds=2", "protocol.n_individuals=6", "protocol.lambda_energy=1.0",
        "train.n_ce=60", "protocol.search.max_steps=20", "protocol.ip_samples=50", "protocol.mmd_samples=8"]
SMALL = TINY + ["data.kwargs.n_train=300", "data.kwargs.n_test=100", "data.protected="]


def _no_training(*args, **kwargs):
    raise AssertionError("training started before every argument was checked")


def _rows(path) -> list[str]:
    """Returns the row names of Table 1 in a table.md."""
    text = path.read_text().split("## Table 1", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("|")][2:]
    return [r for r in rows if not r.startswith("Avg. over")]  # the average row over the paper rows


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], r"--epochs 0: epochs must be an integer >= 1"),
    (["--seeds", "0", "0"], r"--seeds \(0, 0\): ExperimentConfig\.seeds must be free of duplicates"),
    (["--seeds", "-1"], r"--seeds \(-1,\): ExperimentConfig\.seeds must be"),
    (["--rounds", "0"], r"--rounds 0: ProtocolConfig\.n_rounds must be an integer >= 1"),
    (["--arms", "paper", "paper"], r"--arms gives paper more than once"),
    (["--results-md", "no/such/folder/RESULTS.md"], r"--results-md .* its folder 'no/such/folder' does not exist"),
])
def test_units_refuses_a_bad_argument_before_training(tmp_path, monkeypatch, argv, message):
    monkeypatch.setattr(units, "data_copy", _no_training)
    monkeypatch.setattr(units, "train_pair", _no_training)
    with pytest.raises(ValueError, match=message):
        units.main(["--datasets", "circles", "--copies", "raw", "--out", str(tmp_path / "out"), *argv])
    assert not (tmp_path / "out").exists()


def test_units_refuses_to_replace_a_finished_study_unless_overwrite(tmp_path, monkeypatch):
    class Trained(Exception):
        pass

    def reached_training(*args, **kwargs):
        raise Trained

    monkeypatch.setattr(units, "data_copy", reached_training)
    out = tmp_path / "out"
    out.mkdir()
    (out / "units.json").write_text('{"results": []}')
    argv = ["--datasets", "circles", "--copies", "raw", "--seeds", "0", "--out", str(out)]
    with pytest.raises(ValueError, match=r"already holds finished results for a units study.*--overwrite"):
        units.main(argv)
    with pytest.raises(Trained):
        units.main(argv + ["--overwrite"])


@pytest.mark.parametrize("argv, message", [
    (["--axis", "weights.reg=0.1,0.1"], r"--axis weights\.reg gives 0\.1 more than once"),
    (["--axis", "train.epochs=2,2"], r"--axis train\.epochs gives 2 more than once"),
    (["--axis", "weights.reg=0.1", "--axis", "weights.reg=0.5"], r"--axis weights\.reg=\.\.\. is given twice"),
    (["--axis", "train.epochs="], r"--axis 'train\.epochs=' must look like path=v1,v2"),
    (["--datasets", "circles", "circles"], r"--datasets gives circles more than once"),
    (["--set", "weights.reg=0.2"], r"--set weights\.reg=\.\.\. would change nothing.*--axis weights\.reg"),
    (["--set", "train.search.threshold=0.3"],
     r"--set train\.search\.threshold=\.\.\. would change nothing.*--axis train\.search\.threshold"),
    (["--axis", "epochs=2,3"], r"unknown config key 'epochs': the config tree's root has no field 'epochs'"),
    (["--set", "tau=0.3"], r"unknown config key 'tau': the config tree's root has no field 'tau'"),
    (["--axis", "train.objective=vanilla"], r"ExperimentConfig\.train\.objective is set by the pipeline"),
])
def test_tuning_refuses_a_repeated_value_or_a_setting_it_ignores(tmp_path, monkeypatch, argv, message):
    monkeypatch.setattr(tuning, "load_data", _no_training)
    monkeypatch.setattr(tuning, "train_group", _no_training)
    argv = (["--datasets", "circles"] if "--datasets" not in argv else []) + argv
    with pytest.raises(ValueError, match=message):
        tuning.main(["--grid", "tuning", "--axis", "train.search.threshold=0.5", "--out", str(tmp_path), "--quiet",
                     *argv])


def test_tuning_trains_two_spellings_of_one_setting_once():
    # 0.5 and 0.50 are two axis values but one effective config: one configuration, trained once (grid.py refused
    # them; tuning keys configurations by their whole effective config and keeps one).
    points = tuning.grid_points("custom", ["circles"], axes={"train.search.threshold": ("0.5", "0.50")})
    assert len(points) == 4
    groups = tuning.make_groups(points)
    assert sorted((g.objective, len(g.configs)) for g in groups) == [("full", 1), ("vanilla", 1)]


def test_tuning_adds_configurations_to_a_finished_group_instead_of_replacing_it(tmp_path, monkeypatch):
    # λ_reg is a leaf of the training state: both runs' CT configurations share one group folder. Training and
    # scoring are stand-ins: what is tested is what the folder keeps.
    trained = []

    def fake_train(group, data, *, aux=None, progress=False):
        trained.append((group.objective, [c.weights.reg for c in group.configs]))
        runs = [(c, s) for c in group.configs for s in c.seeds]
        history = [{"test_accuracy": 0.9, "converged": 1.0, "search_steps": 3.0, "nonfinite": 0}]
        return runs, [(None, {"w": np.zeros(1)}) for _ in runs], [history for _ in runs]

    def fake_evaluate(group, data, runs, models, *, progress=False):
        return [[{"round": r, "ip": 1.0 + r, "ip_star": 1.0, "cost": 2.0, "validity": 1.0} for r in range(2)]
                for _ in runs]

    monkeypatch.setattr(tuning, "train_group", fake_train)
    monkeypatch.setattr(tuning, "evaluate_group", fake_evaluate)
    args = ["--grid", "tuning", "--datasets", "circles", "--axis", "train.search.threshold=0.5", "--out", str(tmp_path),
            "--quiet", "--set", "data.kwargs.n_train=300", "--set", "data.kwargs.n_test=60"]
    tuning.main(args + ["--axis", "weights.reg=0.1"])
    res = tuning.main(args + ["--axis", "weights.reg=0.5"])
    # BL trains once (it reads no λ_reg); the second run trains only its new CT configuration.
    assert [o for o, _ in trained] == ["vanilla", "full", "full"] and [r for _, r in trained[1:]] == [[0.1], [0.5]]
    folder = [p for p in res["ran"] if os.sep + "full" + os.sep in p]
    stored = json.loads(open(os.path.join(folder[0], "results.json")).read())
    assert [c["weights"]["reg"] for c in stored["configs"]] == [0.1, 0.5]
    assert sorted((stored["configs"][r["config"]]["weights"]["reg"], r["seed"]) for r in stored["runs"]) == \
        [(0.1, 0), (0.5, 0)]
    assert sorted(float(r["weights.reg"]) for r in res["collected"]["rows"]) == [0.1, 0.5]
    again = tuning.main(args + ["--axis", "weights.reg=0.1,0.5"])
    assert again["ran"] == [] and len(trained) == 3  # both configurations are finished now


@pytest.mark.parametrize("argv, message", [
    (["--datasets", "circles", "circles"], r"--datasets gives circles more than once"),
    (["--datasets", "german", "--categorical-modes", "relaxed", "relaxed"],
     r"--categorical-modes gives relaxed more than once"),
    (["--datasets", "circles", "--results-md", "no/such/folder/RESULTS.md"], r"its folder 'no/such/folder' does"),
])
def test_reproduce_refuses_a_bad_argument_before_training(set_args, tmp_path, monkeypatch, argv, message):
    monkeypatch.setattr(pipeline, "train_seeds", _no_training)
    with pytest.raises(ValueError, match=message):
        reproduce.main(["--quiet", "--no-plots", "--out", str(tmp_path / "out"), *argv, *set_args(TINY)])
    assert not (tmp_path / "out").exists()


def test_reproduce_adds_datasets_to_a_finished_run_and_never_loses_one(set_args, tmp_path, monkeypatch):
    out = tmp_path / "run"
    base = ["--quiet", "--no-plots", "--out", str(out), *set_args(SMALL)]
    reproduce.main(["--datasets", "linearly_separable", *base])
    results = reproduce.main(["--datasets", "circles", *base])
    # The second run's rows are added beside the first run's: results.json, metadata.json and the tables.
    stored = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in stored] == [r["label"] for r in results] == ["linearly_separable", "circles"]
    assert _rows(out / "table.md") == ["linearly_separable", "circles"]
    meta = json.loads((out / "metadata.json").read_text())
    assert [run["rows"] for run in meta["runs"]] == [["linearly_separable"], ["circles"]]
    assert meta["command"].count("python -m experiments.reproduce") == 2 and " && " in meta["command"]
    assert set(meta["per_dataset_wall_s"]) == {"linearly_separable", "circles"}

    # A dataset that is there already, made by another configuration, is refused before anything trains, naming
    # the row and what differs; made by the same one, it is reused with no training.
    monkeypatch.setattr(pipeline, "train_seeds", _no_training)
    with pytest.raises(ValueError, match=r"circles.*made otherwise \(train\.epochs 1 -> 2\).*--overwrite"):
        reproduce.main(["--datasets", "circles", "moons", *base, "--set", "train.epochs=2"])
    assert not (out / "moons").exists() and json.loads((out / "results.json").read_text()) == stored
    assert reproduce.main(["--datasets", "circles", *base]) == stored

    # --tables-only rebuilds both rows, and brings back a row results.json lost (as the code before this did).
    (out / "table.md").unlink()
    assert reproduce.main(["--tables-only", "--out", str(out)]) == stored
    assert _rows(out / "table.md") == ["linearly_separable", "circles"]
    (out / "results.json").write_text(json.dumps(stored[1:]))
    assert [r["label"] for r in reproduce.main(["--tables-only", "--out", str(out)])] == ["circles",
                                                                                         "linearly_separable"]
    assert [r["label"] for r in json.loads((out / "results.json").read_text())] == ["circles", "linearly_separable"]
    assert sorted(_rows(out / "table.md")) == ["circles", "linearly_separable"]

    # --overwrite replaces that row alone, in its place, and its folder with it (a stand-in trains here).
    (out / "results.json").write_text(json.dumps(stored))
    (out / "circles" / "stale.txt").write_text("from the run replaced")

    def fake_run(config, workdir, **kwargs):
        assert not os.path.exists(workdir)  # the replaced row's folder went first
        os.makedirs(workdir)
        res = {**stored[1], "marker": "new"}
        pipeline.write_json(os.path.join(workdir, "results.json"), res)
        return res

    monkeypatch.setattr(reproduce, "train_and_evaluate", fake_run)
    merged = reproduce.main(["--datasets", "circles", "--overwrite", *base])
    assert [(r["label"], r.get("marker")) for r in merged] == [("linearly_separable", None), ("circles", "new")]
    assert json.loads((out / "results.json").read_text()) == merged
    assert not (out / "circles" / "stale.txt").exists()
    assert [run["rows"] for run in json.loads((out / "metadata.json").read_text())["runs"]] == [
        ["linearly_separable"], ["circles"]]  # the first circles run no longer made a row: its command is dropped


# Every experiments script, by module: its main(argv) is the command line's.
SCRIPTS = ["experiments.reproduce", "experiments.studies.units.study", "experiments.studies.grids.tuning",
           "experiments.studies.grids.study", "experiments.studies.actionability.study",
           "experiments.studies.actionability.proposition", "experiments.studies.training_search.study",
           *(f"experiments.benchmarks.{name}" for name in ("categorical", "ct_cost", "device_check", "metrics_memory",
                                                           "run_all", "search_throughput", "step_rules", "train_step",
                                                           "training", "tuning_grid"))]


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def _parser_of(module_name: str, monkeypatch):
    """Returns the argparse parser that the script's main builds (stopped before it parses anything)."""
    import argparse
    import importlib

    def stop(self, *args, **kwargs):
        raise _Parsed(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(_Parsed) as caught:
        importlib.import_module(module_name).main([])
    return caught.value.parser


@pytest.mark.parametrize("module_name", SCRIPTS)
def test_every_flag_has_help_and_the_description_shows_once(module_name, monkeypatch):
    parser = _parser_of(module_name, monkeypatch)
    assert [a.option_strings for a in parser._actions if not a.help] == []
    text, description = (" ".join(t.split()) for t in (parser.format_help(), parser.description or ""))
    assert description and text.count(description) == 1  # not again in the epilog


@pytest.mark.parametrize("module_name, argv, names", [
    ("experiments.reproduce", ["--set", "nonexistent.field=1"], "nonexistent"),
    ("experiments.studies.units.study", ["--set", "nonexistent.field=1"], "nonexistent"),
    ("experiments.studies.grids.tuning", ["--grid", "tuning", "--num-tasks", "0"], "--num-tasks must be >= 1"),
    ("experiments.studies.grids.tuning", ["--grid", "tuning", "--set", "nonexistent.field=1"], "nonexistent"),
    ("experiments.studies.grids.study", ["--out", "{tmp}/nothing"], "no grid.csv"),
    ("experiments.studies.actionability.study", ["--datasets", "no_such_set"], "no_such_set"),
    ("experiments.studies.training_search.study", ["--datasets", "no_such_set"], "no_such_set"),
    ("experiments.benchmarks.categorical", ["--datasets", "no_such_set"], "no_such_set"),
    ("experiments.benchmarks.training", ["--many-dataset", "no_such_set"], "no_such_set"),
    ("experiments.benchmarks.train_step", ["--json", "{tmp}/no/such/folder/x.json"], "--json"),
])
def test_a_configuration_mistake_is_one_line_and_exit_2(module_name, argv, names, tmp_path, monkeypatch, capsys):
    import importlib
    monkeypatch.setattr(pipeline, "train_seeds", _no_training)
    main = importlib.import_module(module_name).main
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert pipeline.run_command(main, [*argv, "--out", str(tmp_path / "out")] if "--out" not in argv and
                                "benchmarks" not in module_name else argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and names in err and "Traceback" not in err, err


def test_an_error_while_running_keeps_its_traceback():
    # Only the checks before training are command mistakes: a bug met later is not hidden as one line.
    def broken(argv):
        raise ValueError("a bug in training")
    with pytest.raises(ValueError, match="a bug in training"):
        pipeline.run_command(broken, [])
