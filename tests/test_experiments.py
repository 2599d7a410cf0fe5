import dataclasses
import json
import math
import os
import re

import numpy as np
import pytest

from ctrain.data import load_dataset
from experiments import grid, pipeline, reproduce
from experiments.configs import CONFIGS, ExperimentConfig, get_config, override

TINY = ["epochs=2", "seeds=0", "eval_rounds=3", "eval_individuals=6", "eval_lambda_energy=1.0", "n_ce=60",
        "eval_max_steps=20", "ip_samples=50", "mmd_samples=8"]


def _sets(items) -> list[str]:
    return sum((["--set", s] for s in items), [])


def _strict_json(path):
    """Parses a file as strict JSON: NaN, Infinity and -Infinity raise."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def _table(path) -> tuple[list[dict], dict[int, str]]:
    """Returns the table rows as {header: cell} and the notes {k: reason} printed under it."""
    lines = path.read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    notes = {int(m.group(1)): m.group(2) for m in (re.fullmatch(r"\[(\d+)\] (.*)", l) for l in lines) if m}
    return rows, notes


def _reduction_or_reason(cell: str, notes: dict[int, str]) -> float | str:
    """Returns the cell's finite reduction, or the stated reason of an "n/a [k]" cell; fails on anything else."""
    number = re.fullmatch(r"(-?\d+\.\d+)(±\d+\.\d+)?\*?", cell)
    if number:
        value = float(number.group(1))
        assert math.isfinite(value), cell
        return value
    missing = re.fullmatch(r"n/a \[(\d+)\]", cell)
    assert missing, f"cell {cell!r} is neither a finite reduction nor n/a with a reason"
    reason = notes.get(int(missing.group(1)), "")
    assert len(reason.split(":", 1)[-1].strip()) > 10, f"note {missing.group(1)} states no reason: {reason!r}"
    return reason


def test_cells_that_are_nan_or_unexplained_fail_the_table_check():
    with pytest.raises(AssertionError):
        _reduction_or_reason("nan", {})
    with pytest.raises(AssertionError):
        _reduction_or_reason("nan±nan", {})
    with pytest.raises(AssertionError):
        _reduction_or_reason("n/a", {})
    with pytest.raises(AssertionError):
        _reduction_or_reason("n/a [1]", {1: "x, IP*: "})
    assert _reduction_or_reason("-6.32±10.68*", {}) == -6.32


def test_reproduce_end_to_end_on_a_tiny_config(tmp_path):
    out = tmp_path / "run"
    results = reproduce.main(["--datasets", "linearly_separable", "--quiet", "--out", str(out),
                              "--results-md", str(tmp_path / "RESULTS.md"), *_sets(TINY)])
    assert len(results) == 1
    for name in ("table.md", "results.json", "metadata.json"):
        assert (out / name).is_file()
    ds = out / "linearly_separable"
    for name in ("config.json", "histories.json", "results.json", "decision_surfaces.png", "training_curves.png",
                 "seed_0/plausibility_rounds.csv", "seed_0/plausibility_summary.csv",
                 "seed_0/actionability_summary.csv"):
        assert (ds / name).is_file(), name
    for path in (out / "results.json", out / "metadata.json", ds / "results.json", ds / "histories.json",
                 ds / "config.json"):
        _strict_json(path)
    rows, notes = _table(out / "table.md")
    assert list(rows[0])[:4] == ["Data", "IP −% (ours)", "IP −% (paper)", "IP* −% (ours)"]
    assert "Accuracy CT / BL (ours)" in rows[0] and "Cost, protected −% (ours)" in rows[0]
    ours = rows[0]
    assert ours["Data"] == "linearly_separable" and ours["IP −% (paper)"] == "26.26*"  # the paper beside ours
    # IP, IP* and cost are finite reductions, or n/a with the reason under the table: never NaN.
    for column, metric in (("IP −% (ours)", "ip"), ("IP* −% (ours)", "ip_star"),
                           ("Cost, protected −% (ours)", "cost_protected")):
        shown = _reduction_or_reason(ours[column], notes)
        stored = results[0]["comparisons"]["CT"][metric]
        if isinstance(shown, float):
            assert stored["reduction_pct"] == pytest.approx(shown, abs=0.006)
        else:
            assert stored["reduction_pct"] is None and stored["note"] and stored["note"] in shown
    for column in ("Accuracy CT / BL (ours)", "Validity CT / BL (ours)"):
        values = [float(v) for v in re.findall(r"-?\d+\.\d+", ours[column])]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), column
    # Mechanism health: last-epoch share of matured CFs and search steps per CT-like model, skipped updates.
    mechanism = results[0]["mechanism"]
    assert set(mechanism) == {"CT", "CT_mut"}
    history = json.loads((ds / "histories.json").read_text())
    for label, health in mechanism.items():
        assert health["converged"] == [h[-1]["converged"] for h in history[label]]
        assert health["search_steps"] == [h[-1]["search_steps"] for h in history[label]]
        assert all(0 <= v <= 1 for key in ("converged", "ae_moved", "cf_in_ball") for v in health[key])
        assert all(0 <= s <= 30 for s in health["search_steps"])
        assert health["nonfinite"] == [sum(e["nonfinite"] for e in h) for h in history[label]]
    converged, steps = (float(v) for v in ours["Mature CFs / steps, CT (last epoch)"].split(" / "))
    assert converged == pytest.approx(mechanism["CT"]["converged"][0], abs=0.006)
    assert steps == pytest.approx(mechanism["CT"]["search_steps"][0], abs=0.06)
    meta = json.loads((out / "metadata.json").read_text())
    assert {"versions", "git_commit", "device", "wall_time_s", "command"} <= set(meta)
    config = json.loads((ds / "config.json").read_text())
    assert config["epochs"] == 2 and config["seeds"] == [0]
    md = (tmp_path / "RESULTS.md").read_text()
    assert "python -m experiments.reproduce" in md and "differs from the paper" in md
    assert "search steps" in md


def test_a_metric_that_cannot_be_computed_is_null_with_its_reason(tmp_path, monkeypatch):
    # One individual per round: IP* (an MMD over >= 2 counterfactuals) cannot be computed in any round.
    # And a broken metric: CT's cost comes out NaN in every round, and one training loss is NaN.
    real_evaluate, real_fit = pipeline.evaluate_explainability, pipeline.fit_many

    def evaluate_with_nan_cost(*args, **kwargs):
        res = real_evaluate(*args, **kwargs)
        res["summary"] = [{**r, "cost": float("nan")} if r["model"] == "CT" else r for r in res["summary"]]
        return res

    def fit_with_nan_loss(*args, **kwargs):
        states, histories = real_fit(*args, **kwargs)
        histories[0][0]["loss"] = float("nan")
        return states, histories

    monkeypatch.setattr(pipeline, "evaluate_explainability", evaluate_with_nan_cost)
    monkeypatch.setattr(pipeline, "fit_many", fit_with_nan_loss)
    out = tmp_path / "run"
    reproduce.main(["--datasets", "linearly_separable", "--quiet", "--no-plots", "--out", str(out),
                    "--results-md", str(tmp_path / "RESULTS.md"),
                    *_sets(TINY + ["epochs=1", "eval_rounds=2", "eval_individuals=1"])])
    ds = out / "linearly_separable"
    results = _strict_json(ds / "results.json")
    assert _strict_json(out / "results.json") == [results]
    assert _strict_json(ds / "histories.json")["BL"][0][0]["loss"] is None
    assert any("histories.json" in n and "loss" in n for n in results["notes"])
    ct = results["comparisons"]["CT"]
    assert ct["ip_star"]["reduction_pct"] is None and "fewer than 2 valid counterfactuals" in ct["ip_star"]["note"]
    assert ct["cost"]["reduction_pct"] is None and "not finite" in ct["cost"]["note"]
    assert ct["cost_protected"]["reduction_pct"] is None and "not finite" in ct["cost_protected"]["note"]
    rows, notes = _table(out / "table.md")
    assert "fewer than 2 valid counterfactuals" in _reduction_or_reason(rows[0]["IP* −% (ours)"], notes)
    assert "not finite" in _reduction_or_reason(rows[0]["Cost, protected −% (ours)"], notes)
    for text in ((out / "table.md").read_text(), (tmp_path / "RESULTS.md").read_text()):
        assert not re.search(r"\bnan\b|\binf\b", text, re.IGNORECASE)
    assert "IP* n/a — undefined" in (tmp_path / "RESULTS.md").read_text()


# One bad value (or more) per ExperimentConfig field; the test below fails if a field has none.
BAD_VALUES = {
    "dataset": ["nope", 3], "dataset_kwargs": [(("standardize", "false"),), (("nope", 1),), (("n_train", 1.5),)],
    "protected": [("x0", "x0"), (3,)], "model": ["cnn"], "epochs": [0, 1.5, True], "batch_size": [0],
    "learning_rate": [0.0, float("nan"), float("inf"), -1e-3], "shuffle": ["false", 1], "schedule": ["weird"],
    "burnin": [1.0, -0.1, float("nan")], "tau": [1.0, 0.0, float("nan")], "n_ce": [0],
    "lambda_clf": [-1.0, float("nan")], "lambda_div": [float("inf")], "lambda_reg": [-0.1],
    "lambda_adv": [float("nan")], "epsilon": [-1.0], "generator": ["nope", "revise", "eccco"], "max_steps": [0],
    "step_size": [0.0, float("inf")], "lambda_cost": [float("nan")], "lambda_energy": [-1.0],
    "mutability_lambda_adv": [float("nan"), -1.0], "mutability_lambda_reg": [-1.0, "0"], "eval_rounds": [0],
    "eval_individuals": [0], "eval_lambda_energy": [(), (float("nan"),), (-1.0,)], "eval_max_steps": [0],
    "eval_tau": [0.0], "eval_cost_tau": [1.0], "ip_samples": [0], "mmd_samples": [1],
    "mmd_length_scale": [0.0, float("nan"), float("inf"), -5.0], "robustness": ["yes"], "robust_samples": [0],
    "seeds": [(), (-1,), (0, 0), (1.5,)], "expected_minutes": [-1.0, float("nan")],
}


def test_every_config_field_is_checked_when_the_config_is_built():
    fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    assert set(BAD_VALUES) == fields, "every ExperimentConfig field needs a bad value here"
    base = get_config("circles")
    for name, values in BAD_VALUES.items():
        for value in values:
            with pytest.raises(ValueError, match=rf"ExperimentConfig\.{name}\b"):
                dataclasses.replace(base, **{name: value})
    ok = dataclasses.replace(base, mutability_lambda_reg=None, seeds=[3, 1], dataset_kwargs={"standardize": True})
    assert (ok.seeds, ok.dataset_kwargs) == ((3, 1), (("standardize", True),))


def test_config_building_runs_the_library_configs_checks(monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("mmd_length_scale refused by the library")
    monkeypatch.setattr(pipeline, "ProtocolConfig", refuse)
    with pytest.raises(ValueError, match="ProtocolConfig.*refused by the library"):
        dataclasses.replace(get_config("circles"), epochs=3)


def test_check_run_refuses_settings_that_do_not_fit_the_data():
    data = load_dataset("circles", n_train=100, n_val=20, n_test=20)
    pipeline.check_run(get_config("circles"), data)
    with pytest.raises(ValueError, match=r"ExperimentConfig\.protected.*\['age'\].*x0"):
        pipeline.check_run(override(get_config("circles"), ["protected=age"]), data)
    with pytest.raises(ValueError, match=r"ExperimentConfig\.model 'lenet5'"):
        pipeline.check_run(override(get_config("circles"), ["model=lenet5"]), data)
    with pytest.raises(ValueError, match=r"ExperimentConfig\.batch_size 200 exceeds the 100"):
        pipeline.check_run(override(get_config("circles"), ["batch_size=200"]), data)


@pytest.mark.parametrize("bad, message", [
    (["protected=x0"], r"ExperimentConfig\.protected.*digits"),  # only digits lacks x0: found before training
    (["dataset_kwargs.standardize=false"], r"digits loader's keywords are \[.*'seed'"),
    (["mmd_length_scale=0"], r"ExperimentConfig\.mmd_length_scale must be a finite number > 0"),
    (["generator=nope"], r"ExperimentConfig\.generator.*one of \[.*'ecco'"),
    (["eval_lambda_energy="], r"ExperimentConfig\.eval_lambda_energy must be a non-empty"),
])
def test_reproduce_checks_every_dataset_before_training_any(tmp_path, monkeypatch, bad, message):
    def no_training(*args, **kwargs):
        raise AssertionError("training started before every config was checked")
    monkeypatch.setattr(pipeline, "train_seeds", no_training)
    with pytest.raises(ValueError, match=message):
        reproduce.main(["--datasets", "linearly_separable", "digits", "--quiet", "--out", str(tmp_path),
                        *_sets(TINY + bad)])
    assert not (tmp_path / "linearly_separable").exists()


def test_dataset_kwargs_are_parsed_by_the_loaders_signature():
    c = get_config("circles")
    off, on = (override(c, [f"dataset_kwargs.standardize={v}", "dataset_kwargs.n_train=200"])
               for v in ("false", "TRUE"))
    assert dict(off.dataset_kwargs) == {"standardize": False, "n_train": 200}
    assert dict(on.dataset_kwargs) == {"standardize": True, "n_train": 200}
    x_off = load_dataset(off.dataset, **dict(off.dataset_kwargs)).x_train
    x_on = load_dataset(on.dataset, **dict(on.dataset_kwargs)).x_train
    assert x_off.shape == x_on.shape == (200, 2) and not np.allclose(x_off, x_on)  # the setting reaches the loader
    assert abs(float(x_on.mean())) < 0.1 and float(x_on.std()) == pytest.approx(1.0, abs=0.1)
    adult = override(get_config("adult"), ["dataset_kwargs.n_train=none", "dataset_kwargs.seed=3"])
    assert dict(adult.dataset_kwargs) == {"n_train": None, "seed": 3}
    with pytest.raises(ValueError, match=r"unknown key dataset_kwargs\.standardise.*'n_train'.*'standardize'"):
        override(c, ["dataset_kwargs.standardise=true"])
    with pytest.raises(ValueError, match=r"bad value for dataset_kwargs\.standardize: expected true or false"):
        override(c, ["dataset_kwargs.standardize=maybe"])
    with pytest.raises(ValueError, match=r"bad value for dataset_kwargs\.n_train: expected an integer"):
        override(c, ["dataset_kwargs.n_train=lots"])


def test_grid_is_resumable_splits_into_tasks_and_keys_points_by_the_whole_config(tmp_path, capsys, monkeypatch):
    args = ["--datasets", "linearly_separable", "--grid", "lambda_reg=0.1,0.5", "--out", str(tmp_path), "--quiet",
            *_sets(TINY + ["eval_rounds=2"])]
    first = grid.main(args + ["--task-index", "0", "--num-tasks", "2"])
    second = grid.main(args + ["--task-index", "1", "--num-tasks", "2"])
    assert len(first) == 1 and len(second) == 1 and first != second
    assert grid.main(args) == []  # everything finished: nothing is rerun
    assert "finished, skipped" in capsys.readouterr().out

    # Another effective config (here epochs) is another point: it runs in its own folder, beside the old one.
    # (A stand-in for train_and_evaluate writes what a finished run writes: the keying is what is tested here.)
    ran = []

    def fake_run(config, workdir, *, ablation, **kwargs):
        ran.append(config)
        os.makedirs(workdir)
        pipeline.write_json(os.path.join(workdir, "config.json"), config.to_dict())
        pipeline.write_json(os.path.join(workdir, "results.json"), {"dataset": config.dataset, "ablation": ablation,
                                                                   "comparisons": {}, "accuracy": {}})
    monkeypatch.setattr(grid, "train_and_evaluate", fake_run)
    one_point = args[:3] + ["lambda_reg=0.1"] + args[4:]
    rerun = grid.main(one_point + ["--set", "epochs=1"])
    assert len(rerun) == 1 and rerun[0] not in first + second and [c.epochs for c in ran] == [1]
    assert rerun[0].rsplit("@", 1)[0] == first[0].rsplit("@", 1)[0]  # same grid settings, another config hash
    assert grid.main(one_point + ["--set", "epochs=1"]) == []
    assert len(grid.main(one_point + ["--ablation"])) == 1  # --ablation changes what runs: another point too
    lines = open(grid.collect(str(tmp_path))).read().splitlines()
    header = lines[0].split(",")
    assert len(lines) == 5 and "CT_ip_reduction_pct" in header
    assert {"epochs", "lambda_reg", "ablation"} <= set(header) and "seeds" not in header  # the keys that differ

    # A finished folder whose stored config differs from the one asked for does not count as finished.
    config = override(get_config("linearly_separable"), TINY + ["eval_rounds=2", "lambda_reg=0.1"])
    assert grid.is_finished(first[0], config)
    assert not grid.is_finished(first[0], config, ablation=True)
    stored = json.loads(open(f"{first[0]}/config.json").read())
    assert stored["epochs"] == 2
    with open(f"{first[0]}/config.json", "w") as f:
        json.dump({**stored, "n_ce": 61}, f)
    assert not grid.is_finished(first[0], config)


def test_every_paper_dataset_has_a_config_with_the_papers_values():
    for name in ("linearly_separable", "circles", "moons", "overlapping", "adult", "california_housing",
                 "credit_default", "gmsc", "mnist", "german", "digits"):
        assert name in CONFIGS
    assert (get_config("moons").tau, get_config("moons").lambda_reg, get_config("moons").n_ce) == (0.9, 0.25, 1000)
    assert (get_config("adult").tau, get_config("adult").n_ce) == (0.75, 5000)
    assert get_config("mnist").lambda_reg == 0.01


def test_overrides_are_typed_and_errors_name_the_key_and_the_allowed_values():
    c = override(get_config("circles"), ["epochs=5", "seeds=1,2", "shuffle=true", "dataset_kwargs.n_train=500",
                                         "mutability_lambda_reg=none"])
    assert (c.epochs, c.seeds, c.shuffle, dict(c.dataset_kwargs)) == (5, (1, 2), True, {"n_train": 500})
    assert c.mutability_lambda_reg is None
    with pytest.raises(ValueError, match="unknown config key 'epoch'; known keys: .*'epochs'"):
        override(c, ["epoch=3"])
    with pytest.raises(ValueError, match="bad value for tau: expected a number, got 'high'"):
        override(c, ["tau=high"])
    with pytest.raises(ValueError, match=r"tau must be in \(0, 1\)"):
        override(c, ["tau=1.5"])
    with pytest.raises(ValueError, match="bad value for shuffle: expected true or false"):
        override(c, ["shuffle=maybe"])
    with pytest.raises(ValueError, match=r"bad value for epochs: expected an integer"):
        override(c, ["epochs=2.5"])
    with pytest.raises(ValueError, match=r"ExperimentConfig\.schedule must be one of \('per_epoch', 'per_batch'"):
        override(c, ["schedule=weird"])
    with pytest.raises(ValueError, match=r"ExperimentConfig\.model must be one of \('mlp', 'linear', 'lenet5'\)"):
        override(c, ["model=cnn"])
    with pytest.raises(ValueError, match=r"must look like key=value"):
        override(c, ["epochs"])
    with pytest.raises(ValueError, match=r"--set dataset_kwargs\.NAME=VALUE"):
        override(c, ["dataset_kwargs=n_train"])
