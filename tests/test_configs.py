"""The experiments' config tree (experiments/configs.py): one dotted path per setting, reaching what runs."""
import ast
import dataclasses
import importlib
import json
import pathlib
import re
import subprocess
import sys

import pytest

from ctrain.evaluate import ProtocolConfig
from ctrain.search import SearchConfig
from ctrain.train import TrainConfig
from experiments import MOVED_MODULES, pipeline
from experiments.configs import (CONFIGS, PIPELINE_OWNED, ExperimentConfig, flat_dict, from_dict, get_config,
                                 get_path, leaf_paths, override, replace_path)

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"


# (assignment, what the pipeline builds from the config, the value that must reach it)
REACHES = [
    ("train.search.threshold=0.9", lambda c: pipeline.train_config(c, "full").search.threshold, 0.9),
    ("train.search.max_steps=7", lambda c: pipeline.train_config(c, "full").search.max_steps, 7),
    ("train.epochs=3", lambda c: pipeline.train_config(c, "vanilla").epochs, 3),
    ("train.n_ce=77", lambda c: pipeline.train_config(c, "full").n_ce, 77),
    ("protocol.search.threshold=0.8", lambda c: pipeline.protocol_config(c, seed=0).search.threshold, 0.8),
    ("protocol.n_rounds=4", lambda c: pipeline.protocol_config(c, seed=0, actionability=True).n_rounds, 4),
    ("actionability.threshold=0.6", lambda c: pipeline.protocol_config(c, seed=0, actionability=True).search.threshold, 0.6),
    ("weights.reg=0.3", lambda c: pipeline.loss_weights(c).reg, 0.3),
    ("weights.adv=0.7", lambda c: pipeline.loss_weights(c).adv, 0.7),
    ("actionability.reg=0.2", lambda c: pipeline.loss_weights(c, mutability=True).reg, 0.2),
    ("actionability.adv=0.1", lambda c: pipeline.loss_weights(c, mutability=True).adv, 0.1),
]


@pytest.mark.parametrize("assignment, built, value", REACHES, ids=[r[0] for r in REACHES])
def test_a_dotted_override_reaches_the_config_that_runs(assignment, built, value):
    base = get_config("circles")
    assert built(base) != value  # else the test would pass without the override
    changed = override(base, [assignment])
    assert built(changed) == value
    path = assignment.split("=")[0]
    assert get_path(changed, path) == value and flat_dict(changed)[path] == value
    # Only that leaf changed.
    assert {k: v for k, v in flat_dict(changed).items() if k != path} == \
        {k: v for k, v in flat_dict(base).items() if k != path}


def test_each_threshold_has_its_own_role():
    c = override(get_config("circles"), ["train.search.threshold=0.6", "protocol.search.threshold=0.85",
                                         "actionability.threshold=0.55"])
    assert pipeline.train_config(c, "full").search.threshold == 0.6
    assert pipeline.protocol_config(c, seed=3).search.threshold == 0.85
    assert pipeline.protocol_config(c, seed=3, actionability=True).search.threshold == 0.55
    assert pipeline.protocol_config(c, seed=3).seed == 3  # the protocol is seeded by the training seed
    # The CT_mut λ's default to the CT runs' own (None), and each is replaced alone.
    plain = override(get_config("adult"), ["weights.reg=0.4", "weights.adv=0.3"])
    assert (plain.actionability.reg, plain.actionability.adv) == (None, None)
    assert pipeline.loss_weights(plain, mutability=True) == pipeline.loss_weights(plain)
    mixed = override(plain, ["actionability.reg=0.0"])
    assert (pipeline.loss_weights(mixed, mutability=True).reg, pipeline.loss_weights(mixed, mutability=True).adv) == \
        (0.0, 0.3)


DOCS = EXPERIMENTS.parent / "docs" / "experiments.md"


def old_flat_names() -> dict[str, str]:
    """Returns {old flat name: its path} from docs/experiments.md's table of the old flat config's names."""
    rows = re.findall(r"^\| `(\w+)` \| `([\w.]+)`", DOCS.read_text(), re.M)
    return dict(rows)


@pytest.mark.parametrize("old, new", sorted(old_flat_names().items()))
def test_every_old_flat_name_fails_naming_the_tree_and_its_documented_path_exists(old, new):
    key = f"{old}.n_train" if old == "dataset_kwargs" else old
    with pytest.raises(ValueError) as err:
        override(get_config("circles"), [f"{key}=1"])
    if old != "robustness":  # the one old name that is now a branch: it asks for the branch's field instead
        assert f"unknown config key {key!r}" in str(err.value) and "docs/experiments.md" in str(err.value)
    # The path docs/experiments.md names exists in the tree (data.kwargs.NAME: any keyword of the loader).
    assert new.removesuffix(".NAME") in leaf_paths()


def test_the_documented_old_names_cover_the_old_config_and_name_no_current_path():
    moved = old_flat_names()
    assert len(moved) == 42 - 4  # the old 42 fields less model, learning_rate, seeds and expected_minutes (kept)
    top = {f.name for f in dataclasses.fields(ExperimentConfig)}
    assert not set(moved) & set(leaf_paths()) and not set(moved) & (top - {"robustness"})


@pytest.mark.parametrize("key, node, child, fields", [
    ("tau", "the config tree's root", "tau", ExperimentConfig),
    ("train.epoch", "train", "epoch", TrainConfig),
    ("protocol.threshold", "protocol", "threshold", ProtocolConfig),
    ("protocol.search.tau", "protocol.search", "tau", SearchConfig),
])
def test_an_unknown_path_names_its_nearest_known_node_and_that_nodes_fields(key, node, child, fields):
    with pytest.raises(ValueError) as err:
        override(get_config("circles"), [f"{key}=1"])
    names = sorted(f.name for f in dataclasses.fields(fields))
    assert f"unknown config key {key!r}: {node} has no field {child!r}; its fields: {names}" in str(err.value)


def _another(value):
    if value is None:
        return 5
    if isinstance(value, str):
        return "vanilla"
    return value + 1


@pytest.mark.parametrize("path", sorted(PIPELINE_OWNED))
def test_every_pipeline_owned_field_is_refused_naming_its_path(path):
    value, why = PIPELINE_OWNED[path]
    base = get_config("circles")
    assert get_path(base, path) == value
    other = _another(value)
    with pytest.raises(ValueError, match=rf"ExperimentConfig\.{re.escape(path)} is set by the pipeline"):
        override(base, [f"{path}={other}"])
    with pytest.raises(ValueError, match=rf"ExperimentConfig\.{re.escape(path)} is set by the pipeline.*"
                                         rf"{re.escape(why[:20])}"):
        replace_path(base, path, other)
    assert get_path(replace_path(base, path, value), path) == value  # its own value is accepted


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_round_trips_through_json(name):
    c = CONFIGS[name]
    assert from_dict(json.loads(json.dumps(c.to_dict()))) == c
    changed = override(c, ["seeds=4,2", "actionability.reg=none", "protocol.lambda_energy=0.5,1",
                           "data.kwargs.seed=3"])
    assert from_dict(json.loads(json.dumps(changed.to_dict()))) == changed


def test_no_top_level_field_shadows_a_library_configs_field():
    # The "done when": a top-level name never repeats a field of the training, search or protocol config,
    # so `tau` / `threshold` and the like have one place each.
    top = {f.name for f in dataclasses.fields(ExperimentConfig)}
    for kind in (SearchConfig, TrainConfig, ProtocolConfig):
        shared = top & {f.name for f in dataclasses.fields(kind)}
        assert not shared, f"ExperimentConfig and {kind.__name__} both have {sorted(shared)}"


def test_every_leaf_path_can_be_read_and_set_to_its_own_value():
    base = get_config("adult")
    for path in leaf_paths():
        value = get_path(base, path)
        assert replace_path(base, path, value) == base, path
    assert set(flat_dict(base)) == {p for p in leaf_paths() if p != "data.kwargs"} | \
        {f"data.kwargs.{k}" for k, _ in base.data.kwargs}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(EXPERIMENTS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """Returns the experiments.* modules a file imports, at module level or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the file's package
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from experiments import pipeline` imports the module experiments.pipeline
            targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != name and target != "experiments":
                found.add(target)
    return found


def test_experiments_has_no_import_cycle():
    files = sorted(EXPERIMENTS.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    graph = {_module_name(f): _imports(f, modules) for f in files}
    assert graph["experiments.studies.grids.tuning"] >= {"experiments.configs", "experiments.pipeline"}  # the parse finds imports
    assert "experiments.grid" not in modules  # tuning is the one grid driver
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


# What the top level of experiments/ may hold: what several studies share (a study's code is in studies/<name>/).
SHARED_MODULES = {"__init__", "configs", "figures", "paper_results", "pipeline", "plots", "reproduce",
                  "results_md", "runs", "tables"}


def test_experiments_top_level_holds_only_shared_modules():
    assert {p.stem for p in EXPERIMENTS.glob("*.py")} == SHARED_MODULES


@pytest.mark.parametrize("old, new", sorted(MOVED_MODULES.items()))
def test_a_moved_study_module_fails_naming_its_new_command(old, new):
    importlib.import_module(new)  # the new path imports
    with pytest.raises(ModuleNotFoundError, match=re.escape(f"python -m {new}")):
        importlib.import_module(old)
    with pytest.raises(ModuleNotFoundError, match=re.escape(f"python -m {new}")):
        exec(f"from experiments import {old.rsplit('.', 1)[1]}", {})
    run = subprocess.run([sys.executable, "-m", old, "--help"], capture_output=True, text=True,
                         cwd=EXPERIMENTS.parent)
    assert run.returncode != 0 and f"python -m {new}" in run.stderr


# ProtocolConfig's own test-time-search fields before issue 31 (d535aaf: `ProtocolConfig.search_config` built
# SearchConfig(generator, max_steps, step_size, threshold, lambda_cost, lambda_energy, categorical, units, step_rule,
# convergence="threshold") from them); the configs with one-hot groups tested "snap_state", the others "relaxed".
FLAT_PROTOCOL = dict(generator="ecco", max_steps=50, step_size=0.1, threshold=0.95, lambda_cost=0.0, units="absolute",
                     step_rule="gradient")
SNAPPED = {"adult", "credit_default", "german"}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("actionability", [False, True])
def test_the_nested_test_time_search_is_the_one_the_flat_protocol_built(name, actionability):
    config = get_config(name)
    flat = {**FLAT_PROTOCOL, "categorical": "snap_state" if name in SNAPPED else "relaxed"}
    if actionability:
        flat["threshold"] = config.actionability.threshold
    protocol = pipeline.protocol_config(config, seed=config.seeds[0], actionability=actionability)
    for lam in config.protocol.lambda_energy:
        assert protocol.search_config(lam) == SearchConfig(**flat, lambda_energy=lam, convergence="threshold")
