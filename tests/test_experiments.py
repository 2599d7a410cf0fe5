import json
import math

import pytest

from experiments import grid, reproduce
from experiments.configs import CONFIGS, get_config, override

TINY = ["epochs=2", "seeds=0", "eval_rounds=3", "eval_individuals=6", "eval_lambda_energy=1.0", "n_ce=60",
        "eval_max_steps=20", "ip_samples=50", "mmd_samples=8"]


def _finite_numbers(cell: str) -> list[float]:
    import re
    return [float(v) for v in re.findall(r"-?\d+\.\d+", cell)]


def test_reproduce_end_to_end_on_a_tiny_config(tmp_path):
    out = tmp_path / "run"
    results = reproduce.main(["--datasets", "linearly_separable", "--quiet", "--out", str(out),
                              "--results-md", str(tmp_path / "RESULTS.md"), *sum((["--set", s] for s in TINY), [])])
    assert len(results) == 1
    for name in ("table.md", "results.json", "metadata.json"):
        assert (out / name).is_file()
    ds = out / "linearly_separable"
    for name in ("config.json", "histories.json", "results.json", "decision_surfaces.png", "training_curves.png",
                 "seed_0/plausibility_rounds.csv", "seed_0/plausibility_summary.csv",
                 "seed_0/actionability_summary.csv"):
        assert (ds / name).is_file(), name
    table = (out / "table.md").read_text().splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:4] == ["Data", "IP −% (ours)", "IP −% (paper)", "IP* −% (ours)"]
    assert "Accuracy CT / BL (ours)" in header and "Cost, protected −% (ours)" in header
    row = [c.strip() for c in table[2].strip("|").split("|")]
    assert row[0] == "linearly_separable" and row[2] == "26.26*"  # the paper's number beside ours
    ours = {h: row[i] for i, h in enumerate(header)}
    for column in ("IP −% (ours)", "Accuracy CT / BL (ours)", "Validity CT / BL (ours)"):
        values = _finite_numbers(ours[column])
        assert values and all(math.isfinite(v) for v in values), column
    meta = json.loads((out / "metadata.json").read_text())
    assert {"versions", "git_commit", "device", "wall_time_s", "command"} <= set(meta)
    config = json.loads((ds / "config.json").read_text())
    assert config["epochs"] == 2 and config["seeds"] == [0]
    md = (tmp_path / "RESULTS.md").read_text()
    assert "python -m experiments.reproduce" in md and "differs from the paper" in md


def test_grid_is_resumable_and_splits_into_tasks(tmp_path, capsys):
    args = ["--datasets", "linearly_separable", "--grid", "lambda_reg=0.1,0.5", "--out", str(tmp_path), "--quiet",
            *sum((["--set", s] for s in TINY + ["eval_rounds=2"]), [])]
    first = grid.main(args + ["--task-index", "0", "--num-tasks", "2"])
    second = grid.main(args + ["--task-index", "1", "--num-tasks", "2"])
    assert len(first) == 1 and len(second) == 1 and first != second
    assert grid.main(args) == []  # everything finished: nothing is rerun
    assert "finished, skipped" in capsys.readouterr().out
    lines = open(grid.collect(str(tmp_path))).read().splitlines()
    assert len(lines) == 3 and "CT_ip_reduction_pct" in lines[0]


def test_every_paper_dataset_has_a_config_with_the_papers_values():
    for name in ("linearly_separable", "circles", "moons", "overlapping", "adult", "california_housing",
                 "credit_default", "gmsc", "mnist", "german", "digits"):
        assert name in CONFIGS
    assert (get_config("moons").tau, get_config("moons").lambda_reg, get_config("moons").n_ce) == (0.9, 0.25, 1000)
    assert (get_config("adult").tau, get_config("adult").n_ce) == (0.75, 5000)
    assert get_config("mnist").lambda_reg == 0.01


def test_overrides_are_typed_and_unknown_keys_fail():
    c = override(get_config("circles"), ["epochs=5", "seeds=1,2", "shuffle=true", "dataset_kwargs.n_train=500"])
    assert (c.epochs, c.seeds, c.shuffle, dict(c.dataset_kwargs)) == (5, (1, 2), True, {"n_train": 500})
    with pytest.raises(ValueError, match="unknown config key 'epoch'"):
        override(c, ["epoch=3"])
    with pytest.raises(ValueError, match="bad value for tau"):
        override(c, ["tau=high"])
    with pytest.raises(ValueError, match=r"tau must be in \(0, 1\)"):
        override(c, ["tau=1.5"])
