import dataclasses
import json
import math
import re
import types

import numpy as np
import pytest

from ctrain.data import load_dataset
from ctrain import metrics
from experiments import paper_results, pipeline, reproduce, tables
from experiments.configs import (CONFIGS, ExperimentConfig, flat_dict, from_dict, get_config, leaf_paths,
                                 override, replace_path)
from test_configs import old_flat_names

TINY = ["train.epochs=2", "seeds=0", "protocol.n_rounds=3", "protocol.n_individuals=6", "protocol.lambda_energy=1.0",
        "train.n_ce=60", "protocol.search.max_steps=20", "protocol.ip_samples=50", "protocol.mmd_samples=8",
        "sensitivity.rounds=6", "sensitivity.samples=40", "sensitivity.steps=4"]


def _strict_json(path):
    """Parses a file as strict JSON: NaN, Infinity and -Infinity raise."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def _table(path, section: str | None = None) -> tuple[list[dict], dict[int, str]]:
    """Returns the rows as {header: cell} and the notes {k: reason} of the first table (of the "## section" given)."""
    text = path.read_text()
    if section is not None:
        assert f"## {section}" in text, f"no section {section!r} in {path}"
        text = text.split(f"## {section}", 1)[1]
    lines = text.split("\n## ", 1)[0].splitlines()  # this section only: notes are numbered per table
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("|")):]
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
    # "mean [low, high]* (±s.e.)": the seed-level mean, its interval over seeds and the paper's round s.e.
    number = re.fullmatch(r"(-?\d+\.\d+)( \[-?\d+\.\d+, -?\d+\.\d+\]\*?)?( \(±\d+\.\d+\))?", cell)
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
        _reduction_or_reason("nan [nan, nan] (±nan)", {})
    with pytest.raises(AssertionError):
        _reduction_or_reason("n/a", {})
    with pytest.raises(AssertionError):
        _reduction_or_reason("n/a [1]", {1: "x, IP*: "})
    assert _reduction_or_reason("-6.3 [-9.1, -3.5]* (±10.7)", {}) == -6.3
    assert _reduction_or_reason("-6.3 (±10.7)", {}) == -6.3  # one seed: no interval


def test_reproduce_end_to_end_on_a_tiny_config(set_args, tmp_path, monkeypatch):
    # Linearly separable, and German once per one-hot search mode; spies record the mode that reaches the training
    # search (TrainConfig.search) and the test-time protocol (ProtocolConfig) of every run.
    trained_with, evaluated_with = [], []
    real_fit, real_evaluate = pipeline.fit_many, pipeline.evaluate_explainability

    def fit_spy(states, data, config, **kwargs):
        trained_with.append((data.name, config.objective, config.search.categorical))
        return real_fit(states, data, config, **kwargs)

    def evaluate_spy(models, x, y, **kwargs):
        evaluated_with.append((x.shape[1], kwargs["protocol"].search.categorical))
        return real_evaluate(models, x, y, **kwargs)

    monkeypatch.setattr(pipeline, "fit_many", fit_spy)
    monkeypatch.setattr(pipeline, "evaluate_explainability", evaluate_spy)
    out = tmp_path / "run"
    results = reproduce.main(["--datasets", "linearly_separable", "german", "--quiet", "--out", str(out),
                              "--categorical-modes", "relaxed", "straight_through",
                              "--results-md", str(tmp_path / "RESULTS.md"),
                              *set_args(TINY)])
    assert [r["label"] for r in results] == ["linearly_separable", "german (relaxed, tested snap-state)",
                                             "german (straight-through)"]
    german_width = load_dataset("german").num_features
    assert {m for name, _, m in trained_with if name == "german"} == {"relaxed", "straight_through"}
    # relaxed training is tested as the reference tests it (state snapped every step); straight-through as trained
    assert {m for width, m in evaluated_with if width == german_width} == {"snap_state", "straight_through"}
    assert {m for name, _, m in trained_with if name != "german"} == {"relaxed"}  # the paper's default
    for name in ("table.md", "results.json", "metadata.json", "figures/figure1_linear.png"):
        assert (out / name).is_file(), name
    ds = out / "linearly_separable"
    for name in ("config.json", "histories.json", "results.json", "decision_surfaces.png", "training_curves.png",
                 "ig_rounds.json", "seed_0/plausibility_rounds.csv", "seed_0/plausibility_summary.csv",
                 "seed_0/actionability_summary.csv"):
        assert (ds / name).is_file(), name
    assert (out / "german-straight_through" / "robust_accuracy.png").is_file()
    for path in (out / "results.json", out / "metadata.json", ds / "results.json", ds / "histories.json",
                 ds / "config.json", ds / "ig_rounds.json"):
        _strict_json(path)
    rows, notes = _table(out / "table.md", "Table 1")
    rows = [r for r in rows if not r["Data"].startswith("Avg. over")]  # the average row (reproduce's own)
    assert list(rows[0])[:5] == ["Data", "Seeds", "IP −% (ours)", "IP −% (paper)", "IP* −% (ours)"]
    assert rows[0]["Seeds"] == str(len(results[0]["seeds"]))
    assert "Accuracy CT / BL (ours)" in rows[0] and "Cost, protected −% (ours)" in rows[0]
    assert [r["Data"] for r in rows] == ["linearly_separable", "german (relaxed, tested snap-state)",
                                         "german (straight-through)"]
    ours = rows[0]
    assert ours["IP −% (paper)"] == "26.26*"  # the paper beside ours
    # IP, IP* and cost are finite reductions, or n/a with the reason under the table: never NaN.
    for column, metric in (("IP −% (ours)", "ip"), ("IP* −% (ours)", "ip_star"),
                           ("Cost, protected −% (ours)", "cost_protected")):
        shown = _reduction_or_reason(ours[column], notes)
        stored = results[0]["comparisons"]["CT"][metric]
        if isinstance(shown, float):  # the paper's estimator: the mean over seeds of each seed's round reductions
            assert stored["seeds"]["round_reduction"]["mean"] == pytest.approx(shown, abs=0.06)
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
    for column, label in (("Mature / steps / skipped, CT", "CT"), ("Mature / steps / skipped, CT_mut", "CT_mut")):
        converged, steps, skipped = ours[column].split(" / ")
        assert float(converged) == pytest.approx(mechanism[label]["converged"][0], abs=0.006)
        assert float(steps) == pytest.approx(mechanism[label]["search_steps"][0], abs=0.06)
        assert int(skipped) == mechanism[label]["nonfinite"][0]
    # Table 2: IG sensitivity of BL and the protected-feature CT, with the paper's beside it.
    ig_rows, ig_notes = _table(out / "table.md", "Table 2")
    assert [r["Data"] for r in ig_rows] == [r["Data"] for r in rows]
    assert ig_rows[0]["Protected"] == "x0" and ig_rows[0]["CT (paper)"] == "0.21 [0.20, 0.22]"
    ig = results[0]["ig"]
    assert set(ig) == {"CT", "BL"} and ig["CT"]["n_rounds"] == 6
    assert ig_rows[0]["CT (ours)"].startswith(f"{ig['CT']['median']:.2f} [")
    stored_rounds = _strict_json(ds / "ig_rounds.json")
    assert np.median(stored_rounds["BL"]) == pytest.approx(ig["BL"]["median"])
    # Tables 7 and 8a: raw means with the CI of the difference, and cost without constraints.
    t7, t7_notes = _table(out / "table.md", "Table 7")
    for row, res in zip(t7, results):
        for column, metric in (("Cost, protected (ours)", "cost_protected"), ("IP* (ours)", "ip_star")):
            c = res["comparisons"]["CT"][metric]
            if c["treatment_mean"] is None:  # no valid counterfactual in a tiny run: n/a with the reason
                assert re.fullmatch(r"n/a \[\d+\]", row[column]) and c["note"] in t7_notes[int(row[column][5:-1])]
            else:
                assert row[column].startswith(f"{c['treatment_mean']:.2f} / {c['baseline_mean']:.2f}")
                assert f"; Δ {c['seeds']['difference']['mean']:.2f}" in row[column]  # the difference over seeds
    assert t7[0]["Cost, protected (paper)"] == "3.75 / 4.48 [-0.80, -0.67]"
    t8, t8_notes = _table(out / "table.md", "Table 8a")
    assert t8[0]["Cost −% (paper)"] == "-27.11±0.75*"
    for row, res in zip(t8, results):
        shown, stored = _reduction_or_reason(row["Cost −% (ours)"], t8_notes), res["comparisons"]["CT"]["cost"]
        if isinstance(shown, float):
            assert stored["seeds"]["round_reduction"]["mean"] == pytest.approx(shown, abs=0.06)
        else:
            assert stored["reduction_pct"] is None and stored["note"] in shown
    assert "## Robust accuracy over seeds" in (out / "table.md").read_text()  # German's robustness curves
    meta = json.loads((out / "metadata.json").read_text())
    assert {"versions", "git_commit", "device", "wall_time_s", "command"} <= set(meta)
    assert meta["figure1"]["protected"] == "x0" and set(meta["figure1"]["sensitivity"]) == {"BL", "CT", "CT_mut"}
    config = json.loads((ds / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["seeds"] == [0]
    assert config["train"]["search"]["categorical"] == "relaxed"
    # config.json is the whole tree: it reads back as the config that ran.
    assert from_dict(config) == override(get_config("linearly_separable"), TINY)
    md = (tmp_path / "RESULTS.md").read_text()
    assert "python -m experiments.reproduce" in md and "differs from the paper" in md
    assert "search steps" in md and "german (straight-through)" in md
    links = re.findall(r"\]\(([^)]+\.png)\)", md)
    assert "experiments/results_figures/figure1_linear.png" in links
    for link in links:  # the figures are copied where RESULTS.md links them
        assert (tmp_path / link).is_file(), link


def test_a_metric_that_cannot_be_computed_is_null_with_its_reason(set_args, tmp_path, monkeypatch):
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
                    *set_args(TINY + ["train.epochs=1", "protocol.n_rounds=2", "protocol.n_individuals=1"])])
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


def test_baselines_run_beside_ct_with_the_same_protocol_and_say_whether_ct_beats_them(set_args, tmp_path, monkeypatch):
    trained = []
    real_fit = pipeline.fit_many

    def fit_spy(states, data, config, **kwargs):
        trained.append(config.objective)
        return real_fit(states, data, config, **kwargs)

    monkeypatch.setattr(pipeline, "fit_many", fit_spy)
    md = tmp_path / "RESULTS.md"
    md.write_text("old text\n\n<!-- units:start -->\nunits study table\n<!-- units:end -->\n")
    out = tmp_path / "run"
    results = reproduce.main(["--datasets", "linearly_separable", "--quiet", "--no-plots", "--out", str(out),
                              "--baselines", "--results-md", str(md), *set_args(TINY)])
    assert sorted(trained) == sorted(["vanilla", "full", "pgd_at", "jem", "full"])  # the last: CT_mut
    res = _strict_json(out / "linearly_separable" / "results.json")
    assert res == results[0]
    # The same protocol rounds score every model; CT is compared with each baseline on them.
    summary = (out / "linearly_separable" / "seed_0" / "plausibility_summary.csv").read_text()
    for model in ("BL", "CT", "PGD-AT", "JEM"):
        assert summary.count(f"\n{model},") == 3, model  # protocol.n_rounds=3
    assert set(res["versus"]) == {"PGD-AT", "JEM"}
    for baseline, cmps in res["versus"].items():
        assert set(cmps) == {"ip", "ip_star", "cost", "validity"}
        for metric, c in cmps.items():
            assert c["treatment"] == "CT" and c["baseline"] == baseline
            if c["ci_low"] is not None:  # the CI is of CT's mean paired difference
                assert c["ci_low"] <= c["treatment_mean"] - c["baseline_mean"] + 1e-9
                assert c["treatment_mean"] - c["baseline_mean"] <= c["ci_high"] + 1e-9
    # Robustness for every model although the synthetic config does not ask for it; no mechanism health for
    # models that search no counterfactuals.
    assert set(res["robustness"]) == {"BL", "CT", "PGD-AT", "JEM"}
    assert all("fgsm" in r and "pgd" in r for r in res["robustness"].values())
    assert set(res["mechanism"]) == {"CT", "CT_mut"}
    assert set(res["skipped_updates"]) == {"BL", "CT", "PGD-AT", "JEM", "CT_mut"}
    rows, _ = _table(out / "table.md", "Baselines beyond the paper")
    assert [r["Model"] for r in rows] == ["BL", "CT", "PGD-AT", "JEM"]
    for row in rows:
        model = row["Model"]
        assert row["Accuracy"] == f"{res['accuracy'][model][0]:.2f}"
        curve = res["robustness"][model]["pgd"]
        assert row["PGD"] == f"{curve['mean'][-1]:.2f}±{curve['std'][-1]:.2f}"
    text = md.read_text()
    # The baselines are beyond the paper: RESULTS.md links their own study file, which holds the verdicts.
    study = tmp_path / "experiments" / "studies" / "baselines" / "README.md"
    assert "(experiments/studies/baselines/README.md)" in text and "CT vs PGD-AT**" not in text
    verdicts = study.read_text()
    assert verdicts.index("## Conclusion") < verdicts.index("## How to run") < verdicts.index("## Tables")
    assert "- CT against PGD-AT, over 1 rows:" in verdicts
    for baseline in ("PGD-AT", "JEM"):
        sentence = next(line for line in verdicts.splitlines()
                        if f"linearly_separable, CT vs {baseline}**" in line)
        assert ("CT beats" in sentence or "CT does not beat" in sentence) and "IP*" in sentence
        for metric, name in (("ip", "IP"), ("validity", "validity")):
            diff = res["versus"][baseline][metric]["seeds"]["difference"]
            if diff["low"] is not None:
                assert f"99% interval over {diff['n']} seeds [{diff['low']:+.3g}, {diff['high']:+.3g}]" in sentence
            else:  # one seed: no interval, so no verdict
                assert f"{name}: not computable" in sentence
    assert text.count("<!-- units:start -->\nunits study table\n<!-- units:end -->") == 1  # another command's
    assert "old text" not in text and "# Reproduced results" in text
    # The tables can be rebuilt from the stored results alone, to the same text, with no training.
    table = (out / "table.md").read_text()
    (out / "table.md").unlink()
    trained.clear()
    assert reproduce.main(["--tables-only", "--out", str(out), "--results-md", str(md)]) == results
    assert trained == [] and (out / "table.md").read_text() == table
    rebuilt = md.read_text()
    assert "--tables-only" in rebuilt and rebuilt.count("<!-- units:start -->") == 1
    with pytest.raises(FileNotFoundError, match="needs a finished run"):
        reproduce.main(["--tables-only", "--out", str(tmp_path / "nothing")])


def test_a_verdict_needs_a_confidence_interval_that_excludes_zero():
    def verdict(low, high, metric, note=""):
        # The verdict reads the interval over seeds only, never the pooled rounds' CI.
        return tables._verdict({"ci_low": -5.0, "ci_high": -4.0, "note": "",
                                   "seeds": {"difference": {"low": low, "high": high, "note": note}}}, metric)
    assert verdict(-2.0, -1.0, "ip") == "CT better"  # CT's IP lower
    assert verdict(-2.0, -1.0, "validity") == "CT worse"  # CT's validity lower
    assert verdict(0.5, 1.0, "cost") == "CT worse"
    assert verdict(-1.0, 1.0, "ip_star") == "no significant difference"
    assert verdict(None, None, "ip", "one seed").startswith("not computable (one seed")


# One bad value (or more) per setting of the config tree that the old flat config had (docs/experiments.md) and per
# top-level leaf; the test below fails if one has none.
BAD_VALUES = {
    "data.name": ["nope", 3],
    "data.kwargs": [(("standardize", "false"),), (("nope", 1),), (("n_train", 1.5),)],
    "data.protected": [("x0", "x0"), (3,)], "model": ["cnn"], "train.epochs": [0, 1.5, True],
    "train.batch_size": [0], "learning_rate": [0.0, float("nan"), float("inf"), -1e-3],
    "train.shuffle": ["false", 1], "train.schedule": ["weird"], "train.burnin": [1.0, -0.1, float("nan")],
    "train.search.threshold": [1.0, 0.0, float("nan")], "train.n_ce": [0],
    "weights.clf": [-1.0, float("nan")], "weights.div": [float("inf")], "weights.reg": [-0.1],
    "weights.adv": [float("nan")], "train.search.epsilon": [-1.0], "train.search.generator": ["nope", "eccco"],
    "train.search.max_steps": [0], "train.search.step_size": [0.0, float("inf")],
    "train.search.lambda_cost": [float("nan")], "train.search.lambda_energy": [-1.0],
    "actionability.adv": [float("nan"), -1.0], "actionability.reg": [-1.0, "0"], "protocol.n_rounds": [0],
    "protocol.n_individuals": [0], "protocol.lambda_energy": [(), (float("nan"),), (-1.0,)],
    "protocol.search.max_steps": [0], "protocol.search.threshold": [0.0], "actionability.threshold": [1.0],
    "protocol.ip_samples": [0], "protocol.mmd_samples": [1],
    "protocol.mmd_length_scale": [0.0, float("nan"), float("inf"), -5.0, "mean", True],
    "robustness.enabled": ["yes"], "robustness.samples": [0], "train.search.categorical": ["nope", 1, "box"],
    "protocol.search.categorical": ["nope", 1], "sensitivity.rounds": [0, 1.5], "sensitivity.samples": [0],
    "sensitivity.steps": [0, True],
    "seeds": [(), (-1,), (0, 0), (1.5,)], "expected_minutes": [-1.0, float("nan")],
}


def test_every_config_setting_is_checked_when_the_config_is_built():
    top = {f.name for f in dataclasses.fields(ExperimentConfig)} & set(leaf_paths())  # the top-level leaves
    moved = {path.removesuffix(".NAME") for path in old_flat_names().values()}
    assert set(BAD_VALUES) == moved | top, "every setting needs a bad value here"
    base = get_config("circles")
    for path, values in BAD_VALUES.items():
        leaf = path.rsplit(".", 1)[-1]
        for value in values:
            # Named by the tree's path (the experiment's own branches) or by the library config's field.
            with pytest.raises(ValueError, match=rf"ExperimentConfig\.{re.escape(path)}\b|\b{leaf}\b|λ_{leaf}\b"):
                replace_path(base, path, value)
    ok = replace_path(replace_path(replace_path(base, "actionability.reg", None), "seeds", [3, 1]), "data.kwargs",
                      {"standardize": True})
    assert (ok.seeds, ok.data.kwargs, ok.actionability.reg) == ((3, 1), (("standardize", True),), None)


def test_config_building_runs_the_library_configs_checks():
    # The branches are the library's own configs: building the tree runs their checks, named by the library.
    with pytest.raises(ValueError, match=r"ProtocolConfig\.mmd_length_scale must be a finite number > 0"):
        replace_path(get_config("circles"), "protocol.mmd_length_scale", "mean")
    with pytest.raises(ValueError, match=r"schedule must be 'per_epoch' or 'per_batch'"):
        replace_path(get_config("circles"), "train.schedule", "weird")
    with pytest.raises(TypeError, match=r"ExperimentConfig\.protocol must be a ProtocolConfig"):
        get_config("circles").replace(protocol={"n_rounds": 3})


def test_check_run_refuses_settings_that_do_not_fit_the_data():
    data = load_dataset("circles", n_train=100, n_val=20, n_test=20)
    pipeline.check_run(get_config("circles"), data)
    with pytest.raises(ValueError, match=r"ExperimentConfig\.data\.protected.*\['age'\].*x0"):
        pipeline.check_run(override(get_config("circles"), ["data.protected=age"]), data)
    with pytest.raises(ValueError, match=r"ExperimentConfig\.model 'lenet5'"):
        pipeline.check_run(override(get_config("circles"), ["model=lenet5"]), data)
    with pytest.raises(ValueError, match=r"ExperimentConfig\.train\.batch_size 200 exceeds the 100"):
        pipeline.check_run(override(get_config("circles"), ["train.batch_size=200"]), data)


@pytest.mark.parametrize("bad, message", [
    (["data.protected=x0"], r"ExperimentConfig\.data\.protected.*digits"),  # only digits lacks x0: before training
    (["data.kwargs.standardize=false"], r"digits loader's keywords are \[.*'seed'"),
    (["protocol.mmd_length_scale=0"], r"protocol\.mmd_length_scale=0: ProtocolConfig\.mmd_length_scale must be a "
                                      r"finite number > 0"),
    (["train.search.generator=nope"], r"ExperimentConfig\.train\.search\.generator.*one of \[.*'ecco'"),
    (["protocol.lambda_energy="], r"protocol\.lambda_energy=: ProtocolConfig\.lambda_energy must be a non-empty"),
    (["tau=0.9"], r"unknown config key 'tau': the config tree's root has no field 'tau'"),
])
def test_reproduce_checks_every_dataset_before_training_any(set_args, tmp_path, monkeypatch, bad, message):
    def no_training(*args, **kwargs):
        raise AssertionError("training started before every config was checked")
    monkeypatch.setattr(pipeline, "train_seeds", no_training)
    with pytest.raises(ValueError, match=message):
        reproduce.main(["--datasets", "linearly_separable", "digits", "--quiet", "--out", str(tmp_path),
                        *set_args(TINY + bad)])
    assert not (tmp_path / "linearly_separable").exists()


def test_dataset_kwargs_are_parsed_by_the_loaders_signature():
    c = get_config("circles")
    off, on = (override(c, [f"data.kwargs.standardize={v}", "data.kwargs.n_train=200"])
               for v in ("false", "TRUE"))
    assert dict(off.data.kwargs) == {"standardize": False, "n_train": 200}
    assert dict(on.data.kwargs) == {"standardize": True, "n_train": 200}
    x_off = load_dataset(off.data.name, **dict(off.data.kwargs)).x_train
    x_on = load_dataset(on.data.name, **dict(on.data.kwargs)).x_train
    assert x_off.shape == x_on.shape == (200, 2) and not np.allclose(x_off, x_on)  # the setting reaches the loader
    assert abs(float(x_on.mean())) < 0.1 and float(x_on.std()) == pytest.approx(1.0, abs=0.1)
    adult = override(get_config("adult"), ["data.kwargs.n_train=none", "data.kwargs.seed=3"])
    assert dict(adult.data.kwargs) == {"n_train": None, "seed": 3, "onehot_bounds": "inferred"}
    with pytest.raises(ValueError, match=r"unknown key data\.kwargs\.standardise.*'n_train'.*'standardize'"):
        override(c, ["data.kwargs.standardise=true"])
    with pytest.raises(ValueError, match=r"bad value for data\.kwargs\.standardize: expected true or false"):
        override(c, ["data.kwargs.standardize=maybe"])
    with pytest.raises(ValueError, match=r"bad value for data\.kwargs\.n_train: expected an integer"):
        override(c, ["data.kwargs.n_train=lots"])


def test_every_paper_dataset_has_a_config_with_the_papers_values():
    for name in ("linearly_separable", "circles", "moons", "overlapping", "adult", "california_housing",
                 "credit_default", "gmsc", "mnist", "german", "digits"):
        assert name in CONFIGS
    moons, adult = get_config("moons"), get_config("adult")
    assert (moons.train.search.threshold, moons.weights.reg, moons.train.n_ce) == (0.9, 0.25, 1000)
    assert (adult.train.search.threshold, adult.train.n_ce) == (0.75, 5000)
    assert get_config("mnist").weights.reg == 0.01
    # The synthetic actionability runs train with λ_adv = λ_reg = 0, the reference's recorded mutability configs;
    # the real sets' keep CT's λ's (their recorded configs do).
    from experiments import pipeline
    for name in ("linearly_separable", "circles", "moons", "overlapping"):
        c = get_config(name)
        mut = pipeline.loss_weights(c, mutability=True)
        assert (mut.adv, mut.reg, mut.div) == (0.0, 0.0, 0.5) and pipeline.loss_weights(c).reg == c.weights.reg > 0
    assert pipeline.loss_weights(get_config("adult"), mutability=True) == pipeline.loss_weights(get_config("adult"))
    own = override(get_config("circles"), ["actionability.adv=none", "actionability.reg=none"])
    assert (pipeline.loss_weights(own, mutability=True).adv, pipeline.loss_weights(own, mutability=True).reg) == \
        (0.25, 0.5)


def test_overrides_are_typed_and_errors_name_the_key_and_the_allowed_values():
    c = override(get_config("circles"), ["train.epochs=5", "seeds=1,2", "train.shuffle=true",
                                         "data.kwargs.n_train=500", "actionability.reg=none"])
    assert (c.train.epochs, c.seeds, c.train.shuffle, dict(c.data.kwargs)) == (5, (1, 2), True, {"n_train": 500})
    assert c.actionability.reg is None
    with pytest.raises(ValueError, match=r"unknown config key 'train\.epoch': train has no field 'epoch'; its fields: \[.*'epochs'"):
        override(c, ["train.epoch=3"])
    with pytest.raises(ValueError, match="bad value for train.search.threshold: expected a number, got 'high'"):
        override(c, ["train.search.threshold=high"])
    with pytest.raises(ValueError, match=r"train\.search\.threshold=1\.5: threshold τ must be in \(0, 1\)"):
        override(c, ["train.search.threshold=1.5"])
    with pytest.raises(ValueError, match="bad value for train.shuffle: expected true or false"):
        override(c, ["train.shuffle=maybe"])
    with pytest.raises(ValueError, match=r"bad value for train\.epochs: expected an integer"):
        override(c, ["train.epochs=2.5"])
    with pytest.raises(ValueError, match=r"train\.schedule=weird: schedule must be 'per_epoch' or 'per_batch'"):
        override(c, ["train.schedule=weird"])
    with pytest.raises(ValueError, match=r"ExperimentConfig\.model must be one of \('mlp', 'linear', 'lenet5'\)"):
        override(c, ["model=cnn"])
    with pytest.raises(ValueError, match=r"must look like path=value"):
        override(c, ["train.epochs"])
    with pytest.raises(ValueError, match=r"--set data\.kwargs\.NAME=VALUE"):
        override(c, ["data.kwargs=n_train"])
    with pytest.raises(ValueError, match=r"'train\.search' is a whole branch; set its fields"):
        override(c, ["train.search=x"])


def test_categorical_mode_reaches_the_training_search_and_the_protocol():
    c = get_config("adult")
    assert c.train.search.categorical == "relaxed"  # the paper reproduction runs at the reference's parity
    for mode in ("relaxed", "straight_through"):
        changed = override(c, [f"train.search.categorical={mode}", f"protocol.search.categorical={mode}"])  # tested as trained
        search = pipeline.train_config(changed, "full").search
        assert search.categorical == mode
        assert (search.units, search.step_rule) == ("absolute", "gradient")  # else the reference's search
        for actionability in (False, True):  # the plausibility protocol and the cost experiment's
            protocol = pipeline.protocol_config(changed, seed=0, actionability=actionability)
            assert protocol.search.categorical == mode
            assert protocol.search.threshold == (changed.actionability.threshold if actionability
                                          else changed.protocol.search.threshold)
    with pytest.raises(ValueError, match=r"train\.search\.categorical=box: categorical must be one of \('relaxed', "):
        override(c, ["train.search.categorical=box"])
    german = load_dataset("german")
    plan = reproduce.run_plan([get_config("german"), get_config("circles")],
                              {"german": german, "circles": load_dataset("circles", n_train=50, n_val=0, n_test=20)},
                              ["relaxed", "straight_through"])
    assert [(c.data.name, c.train.search.categorical, c.protocol.search.categorical, folder) for c, _, folder in plan] == [
        ("german", "relaxed", "snap_state", "german-relaxed"),
        ("german", "straight_through", "straight_through", "german-straight_through"),
        ("circles", "relaxed", "relaxed", "circles")]  # data without one-hot groups runs once: the mode changes nothing
    assert pipeline.run_label(plan[1][0], german) == "german (straight-through)"
    assert pipeline.run_label(plan[2][0], plan[2][1]) == "circles"


def test_mmd_length_scale_defaults_to_the_librarys_and_takes_the_median_heuristic():
    assert get_config("circles").protocol.mmd_length_scale == metrics.DEFAULT_LENGTH_SCALE
    c = override(get_config("circles"), ["protocol.mmd_length_scale=median"])
    assert c.protocol.mmd_length_scale == "median"
    assert pipeline.protocol_config(c, seed=0).mmd_length_scale == "median"
    assert override(c, ["protocol.mmd_length_scale=0.5"]).protocol.mmd_length_scale == 0.5
    with pytest.raises(ValueError, match=r"mmd_length_scale must be a finite number > 0 or 'median'"):
        override(c, ["protocol.mmd_length_scale=mean"])


def test_mnist_runs_offline_on_the_5k_subset_with_the_papers_settings_and_row():
    from experiments.configs import OFFLINE_NAMES
    c = get_config("mnist_5k")
    assert "mnist_5k" in OFFLINE_NAMES  # so --full runs it without network
    full = get_config("mnist")
    # scaled to the subset's size (see its config)
    scaled = ("data.name", "expected_minutes", "train.n_ce", "sensitivity.samples")
    mine, theirs = flat_dict(c), flat_dict(full)
    assert set(mine) == set(theirs)
    assert {k: v for k, v in mine.items() if k not in scaled} == {k: v for k, v in theirs.items() if k not in scaled}
    # The reference's 500 counterfactuals per batch of 1,000: 5,000 over MNIST's 10 batches, 2,000 over the subset's 4.
    assert c.train.n_ce / (4000 // c.train.batch_size) == full.train.n_ce / (10000 // full.train.batch_size) == 500
    assert c.sensitivity.samples == 1000 and full.sensitivity.samples == 2500
    # the reference's MNIST protocol
    assert c.protocol.n_rounds == full.protocol.n_rounds == 100 and c.protocol.n_individuals == 25
    data = pipeline.load_data(c)
    assert data.x_train.shape == (4000, 784) and data.x_test.shape == (1000, 784)
    assert paper_results.reduction("mnist_5k", 0) == "6.36*"  # compared with the paper's MNIST row
    result = {"dataset": "mnist_5k", "label": "mnist_5k", "comparisons": {"CT": {}}, "validity": {}, "accuracy": {}}
    row = _table_text(tables.make_table([result]))[0]
    assert row["IP* −% (paper)"] == "-70.31" and row["Validity (paper)"] == "1.00 / 1.00"


def _table_text(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_revise_from_configs_trains_the_references_vae_and_searches_with_it(tmp_path, monkeypatch):
    vae_calls, aux_seen = [], []
    real_vae, real_fit = pipeline.train_vae, pipeline.fit_many

    def vae_spy(x, key, **kwargs):
        vae_calls.append({"rows": len(x), **kwargs})
        return real_vae(x, key, **kwargs)

    def fit_spy(states, data, config, **kwargs):
        aux_seen.append((config.objective, config.search.generator, config.search.vae_latent,
                         config.search.vae_hidden, kwargs.get("aux")))
        return real_fit(states, data, config, **kwargs)

    monkeypatch.setattr(pipeline, "train_vae", vae_spy)
    monkeypatch.setattr(pipeline, "fit_many", fit_spy)
    # No protected feature (`protected=` and the loader marks none), so only BL and CT train: a cheaper test.
    config = override(get_config("linearly_separable"), TINY + ["train.search.generator=revise", "data.protected=",
                                                                "data.kwargs.n_train=300", "data.kwargs.n_test=100"])
    results = pipeline.train_and_evaluate(config, str(tmp_path / "revise"), progress=False, plots=False)
    # One VAE per dataset, of the reference's architecture for 2-D data (latent 2, hidden 16), on the training rows.
    assert vae_calls == [{"rows": 300, "latent": 2, "hidden": 16, "batch_size": 64}]
    ct_runs = [a for a in aux_seen if a[0] == "full"]
    assert len(ct_runs) == 1
    for _, generator, latent, hidden, aux in ct_runs:
        assert (generator, latent, hidden) == ("revise", 2, 16)
        # The training search decodes through exactly these parameters (it raises without them).
        assert aux["vae_params"]["params"]["decoder_out"]["kernel"].shape == (16, 2)
    assert [a[4] for a in aux_seen if a[0] == "vanilla"] == [None]
    assert results["generator"] == "revise" and results["timings"]["train_vae_s"] > 0
    assert all(h["search_steps"] and h["search_steps"][0] > 0 for h in results["mechanism"].values())
    assert pipeline.vae_architecture(2) == (2, 16) and pipeline.vae_architecture(104) == (4, 32)


def test_robustness_curves_cover_every_seed_with_their_spread():
    import jax
    from ctrain.models import make_model
    config = override(get_config("circles"), ["seeds=0,1", "robustness.samples=40"])
    data = load_dataset("circles", n_train=50, n_val=0, n_test=40)
    trained = {"BL": [make_model("mlp", 2, 2, jax.random.key(s)) for s in (0, 1)]}
    out = pipeline.robustness_over_seeds(config, data, trained, ["BL"])["BL"]
    assert out["n_seeds"] == 2 and len(out["per_seed"]) == 2
    per_seed = np.array([r["fgsm"]["accuracy"] for r in out["per_seed"]])
    np.testing.assert_allclose(out["fgsm"]["mean"], per_seed.mean(0))
    np.testing.assert_allclose(out["fgsm"]["min"], per_seed.min(0))
    np.testing.assert_allclose(out["fgsm"]["max"], per_seed.max(0))
    assert out["accuracy"]["mean"] == pytest.approx(np.mean([r["accuracy"] for r in out["per_seed"]]))


def test_tabular_configs_use_the_references_onehot_domain_and_the_override_reaches_the_data():
    from experiments import pipeline
    config = get_config("german")
    assert dict(config.data.kwargs)["onehot_bounds"] == "inferred"
    unit = override(config, ["data.kwargs.onehot_bounds=unit"])
    wide, narrow = pipeline.load_data(config), pipeline.load_data(unit)
    cat = np.array([f.kind == "categorical" for f in wide.schema.features])
    (lo_w, hi_w), (lo_n, hi_n) = wide.schema.bounds_array(), narrow.schema.bounds_array()
    assert (lo_n[cat] == 0).all() and (hi_n[cat] == 1).all()
    assert (lo_w[cat] < 0).sum() > cat.sum() // 2 and (hi_w[cat] > 1).any()
    np.testing.assert_array_equal(np.asarray(wide.constraints().lower), lo_w)  # the bounds the search clips to
    with pytest.raises(ValueError, match="onehot_bounds"):
        pipeline.load_data(override(config, ["data.kwargs.onehot_bounds=wide"]))


def test_eval_categorical_sets_the_test_time_search_and_labels_the_row():
    from experiments import pipeline
    german = load_dataset("german")
    config = get_config("german")
    assert pipeline.protocol_config(config, seed=0).search.categorical == "snap_state"  # the reference's
    assert pipeline.protocol_config(config, seed=0, actionability=True).search.categorical == "snap_state"
    relaxed = override(config, ["protocol.search.categorical=relaxed"])  # tested as trained
    assert pipeline.protocol_config(relaxed, seed=0).search.categorical == "relaxed"
    assert pipeline.run_label(relaxed, german) == "german (relaxed)"
    tested = override(config, ["protocol.search.categorical=snap_state"])
    protocol = pipeline.protocol_config(tested, seed=0)
    assert protocol.search_config(1.0).categorical == "snap_state"
    assert pipeline.search_config(tested).categorical == "relaxed"  # training keeps its own mode
    assert pipeline.run_label(tested, german) == "german (relaxed, tested snap-state)"


def test_table2_and_figure1_say_where_ct_agrees_with_proposition_3_1():
    results = [{"dataset": "a", "ig_difference_over_seeds": {"mean": -0.3, "significant": True}},
               {"dataset": "b", "ig_difference_over_seeds": {"mean": 0.4, "significant": True}},
               {"dataset": "c", "ig_difference_over_seeds": {"mean": -0.1, "significant": False}},
               {"dataset": "d", "ig_difference_over_seeds": None}]
    text = tables.table2_verdict(results)
    assert "less sensitive on a, more sensitive on b, and not distinguishable on c." in text
    assert tables.table2_verdict([{"dataset": "d"}]) == ""
    agrees = tables.proposition_sentence(0.1, 0.2, [1.0, 2.0])
    assert agrees.startswith("This agrees with Proposition 3.1") and "x1 is the more discriminative" in agrees
    against = tables.proposition_sentence(0.3, 0.2, [2.0, 1.0])
    assert against.startswith("This contradicts Proposition 3.1") and "does not hold" in against


def test_another_models_row_sits_beside_the_mlps_without_the_papers_numbers(set_args, tmp_path):
    # The LeNet row's mechanism on the cheapest data: the same dataset run again with another model into the same
    # --out gets its own folder and label, keeps the MLP row, and borrows none of the paper's (MLP) figures.
    out, md = tmp_path / "run", tmp_path / "RESULTS.md"
    tiny = set_args(TINY + ["train.epochs=1", "protocol.n_rounds=2"])
    reproduce.main(["--datasets", "linearly_separable", "--quiet", "--no-plots", "--out", str(out), *tiny])
    results = reproduce.main(["--datasets", "linearly_separable", "--quiet", "--no-plots", "--out", str(out),
                              "--results-md", str(md), *tiny, *set_args(["model=linear"])])
    assert [(r["label"], r["model"]) for r in results] == [("linearly_separable", "mlp"),
                                                          ("linearly_separable (linear)", "linear")]
    assert (out / "linearly_separable-linear" / "results.json").is_file()
    assert results[0]["paper_row"] == "linearly_separable" and results[1]["paper_row"] is None
    rows = {r["Data"]: r for r in _table(out / "table.md")[0]}
    assert rows["linearly_separable"]["IP −% (paper)"] == paper_results.reduction("linearly_separable", 0) != "–"
    assert rows["linearly_separable (linear)"]["IP −% (paper)"] == "–"
    assert "- linearly_separable (linear): not in the paper." in md.read_text()
    # The same model's row asked for again is reused as it is, as the MLP's would be; made otherwise, it is refused.
    assert reproduce.main(["--datasets", "linearly_separable", "--quiet", "--no-plots", "--out", str(out), *tiny,
                           *set_args(["model=linear"])]) == results
    with pytest.raises(ValueError, match=r"linearly_separable-linear holds .* made otherwise \(seeds"):
        reproduce.main(["--datasets", "linearly_separable", "--quiet", "--no-plots", "--out", str(out), *tiny,
                        *set_args(["model=linear", "seeds=1"])])


def test_run_label_names_a_model_other_than_the_papers():
    plain = types.SimpleNamespace(schema=types.SimpleNamespace(groups=()))
    onehot = types.SimpleNamespace(schema=types.SimpleNamespace(groups=((0, 1),)))
    assert pipeline.run_label(get_config("mnist_5k"), plain) == "mnist_5k"
    assert pipeline.run_label(override(get_config("mnist_5k"), ["model=lenet5"]), plain) == "mnist_5k (LeNet-5)"
    assert pipeline.run_label(override(get_config("adult"), ["model=linear"]), onehot) == "adult (relaxed, " \
        "tested snap-state, linear)"
    assert paper_results.row({"dataset": "mnist_5k"}) == "mnist"  # stored results carry no model: the MLP's
    assert paper_results.row({"dataset": "mnist_5k", "model": "lenet5"}) is None
    assert paper_results.reduction({"dataset": "mnist_5k", "model": "lenet5"}, 0) == "–"
