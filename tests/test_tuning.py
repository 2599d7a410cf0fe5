"""The paper's tuning grids as programs (experiments/studies/grids/tuning.py) and the 270-configuration benchmark, on tiny slices."""
import csv
import json
import os
import shutil

import numpy as np
import pytest

from experiments.studies.grids import tuning
from experiments.benchmarks import tuning_grid

# Tiny everything: 1 epoch, few counterfactuals, 2 protocol rounds of 6 training factuals, one test-time λ.
TINY = ["train.epochs=1", "train.n_ce=40", "protocol.n_rounds=2", "protocol.n_individuals=6",
        "protocol.lambda_energy=1.0", "protocol.search.max_steps=10", "protocol.ip_samples=40", "protocol.mmd_samples=4",
        "data.kwargs.n_train=300", "data.kwargs.n_test=60"]


def test_the_papers_grids_have_their_sizes_and_compile_once_per_static_setting():
    generator = tuning.grid_points("generator", ["moons"])
    assert len(generator) == 270  # the reference's grid: 3 generators x 3 T x 5 λ_energy x 3 τ x 2 objectives
    groups = tuning.make_groups(generator)
    # Every axis of the generator grid is static: 135 CT programs; the 135 BL points are one model.
    assert sum(g.objective == "full" for g in groups) == 135
    assert [len(g.configs) for g in groups if g.objective == "vanilla"] == [1]
    penalties = tuning.make_groups(tuning.grid_points("penalties", ["moons"]))
    # λ_adv x λ_div x λ_reg are leaves of the TrainState: one program per generator holds all 45 of them.
    assert sorted(len(g.configs) for g in penalties if g.objective == "full") == [45, 45, 45]
    assert sum(g.objective == "vanilla" for g in penalties) == 1
    other = tuning.make_groups(tuning.grid_points("other", ["moons"]))
    # burn-in and n_ce are CT settings, epochs is not: BL trains once per epoch count.
    assert sorted(g.configs[0].train.epochs for g in other if g.objective == "vanilla") == [50, 100]
    point = generator[0]
    protocol = point.config.protocol
    assert (protocol.n_rounds, protocol.n_individuals, protocol.search.threshold, protocol.search.max_steps, point.config.seeds) == \
        (5, 100, 0.95, 50, (0,))  # the tuning protocol
    lr = [p for p in tuning.grid_points("tune_lr", ["moons"]) if p.objective == "full"]
    assert {p.config.train.search.threshold for p in lr} == {0.5}
    assert {p.config.train.search.step_size for p in lr} == {0.1, 0.5, 1.0}
    # The custom grid is the --axis options alone, over any dotted path.
    custom = tuning.grid_points("custom", ["moons"], axes={"train.epochs": ("2", "3"), "weights.reg": ("0.1",)})
    # (vanilla reads no λ_reg: its configurations keep the dataset's own)
    assert sorted((p.objective, p.config.train.epochs, p.config.weights.reg) for p in custom) == [
        ("full", 2, 0.1), ("full", 3, 0.1), ("vanilla", 2, 0.25), ("vanilla", 3, 0.25)]


def test_axes_and_sets_are_checked():
    assert tuning.parse_axes(["train.search.max_steps=5,50", "train.search.generator=ecco"]) == {
        "train.search.max_steps": ("5", "50"), "train.search.generator": ("ecco",)}
    with pytest.raises(ValueError, match=r"--axis 'train\.search\.max_steps' must look like path=v1,v2"):
        tuning.parse_axes(["train.search.max_steps"])
    with pytest.raises(ValueError, match="unknown grid 'nope'; choose from"):
        tuning.grid_axes("nope")
    with pytest.raises(ValueError, match=r"ExperimentConfig\.train\.search\.generator 'eccco' needs a conformal"):
        tuning.grid_points("tuning", ["moons"], axes={"train.search.generator": ("eccco",)})
    # Axis and --set keys are dotted paths: an old flat name fails as an unknown path, in either place.
    with pytest.raises(ValueError, match=r"unknown config key 'max_steps': the config tree's root has no field"):
        tuning.grid_points("custom", ["moons"], axes={"max_steps": ("5",)})
    with pytest.raises(ValueError, match=r"unknown config key 'eval_rounds': the config tree's root"):
        tuning.grid_points("custom", ["moons"], overrides=["eval_rounds=2"])


@pytest.fixture(scope="module")
def penalties_run(tmp_path_factory):
    """A tiny penalties grid: λ_reg {0, 0.5} with REVISE, run as two tasks, with fit_many spied on."""
    out = str(tmp_path_factory.mktemp("tuning"))
    calls = []
    real = tuning.fit_many

    def spy(states, data, config, **kwargs):
        calls.append({"k": len(kwargs["seeds"]), "reg": np.asarray(states.weights.reg).tolist(),
                      "objective": config.objective, "aux": kwargs.get("aux")})
        return real(states, data, config, **kwargs)

    tuning.fit_many = spy
    try:
        args = ["--grid", "penalties", "--datasets", "linearly_separable", "--out", out, "--quiet",
                "--axis", "train.search.generator=revise", "--axis", "weights.adv=0.25", "--axis", "weights.div=0.5",
                "--axis", "weights.reg=0.0,0.5", *sum((["--set", s] for s in TINY), [])]
        first = tuning.main(args + ["--task-index", "0", "--num-tasks", "2"])
        second = tuning.main(args + ["--task-index", "1", "--num-tasks", "2"])
        again = tuning.main(args)
    finally:
        tuning.fit_many = real
    return {"out": out, "calls": calls, "first": first, "second": second, "again": again, "args": args}


def test_grid_runs_each_static_group_as_one_vmapped_program(penalties_run):
    calls = penalties_run["calls"]
    # 2 programs: BL once, and one program for both λ_reg values (a (2,) λ_reg on the stacked state).
    assert sorted((c["objective"], c["k"]) for c in calls) == [("full", 2), ("vanilla", 1)]
    ct = next(c for c in calls if c["objective"] == "full")
    assert ct["reg"] == [0.0, 0.5]
    assert "vae_params" in ct["aux"]  # REVISE trains with the VAE of the dataset
    assert next(c for c in calls if c["objective"] == "vanilla")["aux"] is None


def test_grid_fans_out_resumes_and_collects_one_row_per_ct_config(penalties_run):
    first, second, again = penalties_run["first"], penalties_run["second"], penalties_run["again"]
    assert first["ran"] and second["ran"] and not set(first["ran"]) & set(second["ran"])
    assert len(first["ran"]) + len(second["ran"]) == 2
    assert again["ran"] == [] and len(again["skipped"]) == 2  # everything finished: nothing reruns
    rows = list(csv.DictReader(open(again["collected"]["csv"])))
    assert len(rows) == 2 and {r["weights.reg"] for r in rows} == {"0.0", "0.5"}
    assert {r["train.search.generator"] for r in rows} == {"revise"}
    for r in rows:  # a reduction or the reason it has none, and mechanism health beside every CT row
        assert r["ip_reduction_pct"] or r["ip_note"]
        # The reduction is the mean over seeds (its interval beside it); the paper's round s.e. is a column apart.
        assert {"ip_low", "ip_high", "ip_round_se_pct"} <= set(r)
        assert 0 <= float(r["mature"]) <= 1 and float(r["search_steps"]) <= 30 and r["skipped_updates"] == "0"
    md = open(again["collected"]["md"]).read()
    assert "mature / steps / skipped" in md and "interval over seeds" in md
    # The markdown shows the settings that differ between configurations, and only those.
    header = next(line for line in md.splitlines() if line.startswith("| dataset"))
    assert "| weights.reg |" in header and "seeds" not in header and "train.search.generator" not in header
    stored = json.loads(open(f"{first['ran'][0]}/results.json").read(), parse_constant=lambda c: 1 / 0)
    assert stored["configs"] and stored["runs"][0]["summary"]


def test_another_setting_is_another_group_not_a_finished_one(penalties_run, monkeypatch):
    ran = []
    monkeypatch.setattr(tuning, "run_group", lambda group, data, workdir, **kw: ran.append(workdir) or
                        {"timings": {"train_s": 0.0, "evaluate_s": 0.0}})
    res = tuning.main(penalties_run["args"] + ["--set", "protocol.n_rounds=3"])
    earlier = penalties_run["first"]["ran"] + penalties_run["second"]["ran"]
    assert len(ran) == 2 and not set(ran) & set(earlier)
    assert res["skipped"] == []
    # Same grid settings, another hash of the whole config: the new groups run beside the old ones.
    assert sorted(w.rsplit("@", 1)[0] for w in ran) == sorted(w.rsplit("@", 1)[0] for w in earlier)


def test_a_folder_whose_stored_configs_differ_from_the_asked_ones_is_not_finished(penalties_run, tmp_path):
    args = penalties_run["args"]
    axes = tuning.parse_axes([args[i + 1] for i, a in enumerate(args) if a == "--axis"])
    groups = tuning.make_groups(tuning.grid_points("penalties", ["linearly_separable"], overrides=TINY, axes=axes))
    ct = next(g for g in groups if g.objective == "full")
    workdir = tuning.group_dir(penalties_run["out"], "penalties", ct)
    assert tuning.is_finished(workdir, ct) and tuning.missing_configs(workdir, ct) == ()
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    stored = json.loads(open(os.path.join(copy, "results.json")).read())
    assert [c["train"]["epochs"] for c in stored["configs"]] == [1, 1]  # config.json's tree, per configuration
    stored["configs"][0]["train"]["n_ce"] = 41
    with open(os.path.join(copy, "results.json"), "w") as f:
        json.dump(stored, f)
    assert not tuning.is_finished(copy, ct) and tuning.missing_configs(copy, ct) == ct.configs[:1]
    # Results of the other objective in the folder do not count either.
    bl = next(g for g in groups if g.objective == "vanilla")
    assert tuning.is_finished(tuning.group_dir(penalties_run["out"], "penalties", bl), bl)
    assert not tuning.is_finished(workdir, bl)


def test_the_generator_grid_benchmark_reports_beside_the_reference(tmp_path):
    axes = {"train.search.generator": ("ecco",), "train.search.max_steps": ("5",),
            "train.search.lambda_energy": ("5.0",), "train.search.threshold": ("0.75",)}
    result = tuning_grid.benchmark("moons", out=str(tmp_path), axes=axes, overrides=TINY)
    assert (result["configurations"], result["distinct_trainings"], result["compiled_programs"]) == (2, 2, 2)
    assert result["ct_rows"] == 1 and result["wall_s"] > 0
    assert result["reference"]["minutes"] == 49 and result["reference"]["cpus"] == 34
    table = tuning_grid.report(result)
    # The --quick benchmark's axes and settings are paths of the config tree (its grid is built, not run, here).
    quick = tuning.grid_points("generator", ["moons"], axes=tuning_grid.QUICK_AXES, overrides=tuning_grid.QUICK_SET)
    assert len(quick) == 4 and {p.config.train.epochs for p in quick} == {2}
    assert "49 min on 34 CPUs" in table and "| moons | 2 | 2 / 2 |" in table
