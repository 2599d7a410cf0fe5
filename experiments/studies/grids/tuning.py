"""The one grid driver: the paper's tuning grids (App. C–D) or any axes, as programs that compile once per static group.

    python -m experiments.studies.grids.tuning --grid generator --datasets moons   # the reference's 270-config grid
    python -m experiments.studies.grids.tuning --grid penalties --datasets circles # 270 configs, 6 compiled programs
    python -m experiments.studies.grids.tuning --grid tuning --datasets adult german --set seeds=0,1,2
    python -m experiments.studies.grids.tuning --grid generator --datasets moons --task-index $SLURM_ARRAY_TASK_ID \\
        --num-tasks $SLURM_ARRAY_TASK_COUNT                              # fan out; then:
    python -m experiments.studies.grids.tuning --grid generator --datasets moons --collect  # one CSV + markdown
    python -m experiments.studies.grids.tuning --grid generator --datasets moons --axis train.search.generator=ecco \\
        --axis train.search.max_steps=5,50                               # a grid's axis replaced
    python -m experiments.studies.grids.tuning --grid custom --datasets circles --axis weights.reg=0.1,0.5 \\
        --axis train.epochs=50,100

Expected time on a 2-core CPU (measured, `experiments/benchmarks/tuning_grid.py`): docs/performance.md; the
generator grid of one synthetic dataset is the reference's 270-configuration grid (49 min–3 h 52 min on
34 CPUs there). A tiny run (`--axis ... --set train.epochs=1 ...`, as in the tests) takes well under a minute.

Grids (paper App. C–D, Notes 3–9; each crosses its axes with the objective ∈ {full, vanilla}):

- generator (synthetic sets): generator {ecco, generic, revise} × T {5, 25, 50} × λ_energy {0.1, 0.5, 5, 10, 20}
  × τ {0.75, 0.9, 0.95} = 135 CT configurations (+ 135 BL) = 270;
- penalties (synthetic): generator × λ_adv {0.1, 0.25, 1} × λ_div {0.01, 0.1, 1} × λ_reg {0, 0.01, 0.1, 0.25, 0.5}
  = 135 (+ 135 BL);
- other (synthetic): generator × burn-in {0, 0.5} × n_ce {100, 1000} × epochs {50, 100} = 24 (+ 24 BL);
- tuning (every dataset): τ {0.5, 0.75, 0.9} × λ_reg {0.1, 0.25, 0.5} = 9 (+ 9 BL);
- custom (every dataset): no axes of its own; the --axis options are the grid (any dotted config path);
- tune_lr (every dataset): the search's step size {0.1, 0.5, 1} × λ_reg {0.01, 0.1, 0.5} at τ 0.5 = 9 (+ 9 BL). The
  reference's counterfactual learning rate was a no-op (its optimiser ignored the setting); here it is the
  search's SGD step, so this grid measures what the reference meant to.

Everything not on an axis takes the appendix's training defaults (τ 0.75, λ_reg 0.1, T 30, λ_energy 5, λ_div
0.5, λ_adv 0.25, 100 epochs; `GRID_DEFAULTS`) with each dataset's data, model, batch size and n_ce, and one seed
(the reference's single run); `--set` overrides any of them, `--axis dotted.path=v1,v2` replaces (or adds) an axis.
Every configuration is scored by the tuning protocol (App. Note 2; `TUNING_PROTOCOL`): factuals drawn from the
*training* data, τ 0.95, T 50, 100 individuals, 5 rounds, test-time λ_energy {0.1, 0.5, 1, 5, 10}.

How it runs. Settings either change the compiled program (static: generator, T, τ, λ_energy, step size, n_ce,
burn-in, epochs, objective, ...) or are leaves of the training state (vmappable: λ_clf, λ_div, λ_reg, λ_adv,
the learning rate; and the seed). Configurations that share every static setting form a *group*: one
`fit_many` program trains all their runs (their λ's and learning rates as (K,) arrays, times the seeds), and
one evaluation per seed scores them. The vanilla objective reads none of the counterfactual settings, so its
configurations collapse onto one model per (dataset, epochs, batch size, ...), trained and evaluated once.

Files: <out>/<grid>/<dataset>/<objective>/<static settings>@<hash>/results.json (strict JSON): the group's
configurations and, per run, its per-round protocol summary, accuracy and mechanism health. A group whose
folder holds results for all its configurations is skipped (resumable; another --set makes other groups); one
whose folder holds some of them (another --axis of a vmappable setting, say) trains only the others and adds
them to that folder's results, so a finished configuration is never lost. An axis value given twice, an axis
given twice, a dataset given twice or a --set of an axis's key (the axis would replace it) is refused.
Task i of n runs the groups i, i + n, … (fan-out). `--collect`, and the end of a single-task run, write
<out>/<grid>/grid.csv and grid.md: one row per CT configuration with IP, IP* and cost reductions against the
BL of the same seeds and settings, validity, accuracy and mechanism health (share of matured training
counterfactuals, search steps, skipped updates).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ctrain.evaluate import evaluate_explainability
from ctrain.models import make_model
from ctrain.objective import LossWeights
from ctrain.storage import write_atomic
from ctrain.train import create_train_states, fit_many
from experiments.configs import (OFFLINE_NAMES, SYNTHETIC_NAMES, ExperimentConfig, flat_dict, from_dict, get_config,
                                 get_path, leaf_paths, override, path_in, replace_path)
from experiments.pipeline import (check_distinct, command_checks, compared_over_rounds_and_seeds, free_schema, json_safe,
                                  load_data, protocol_config, run_command, skipped_updates, train_config, train_vae_aux,
                                  write_json)
from experiments.results_md import interval_text


@dataclasses.dataclass(frozen=True)
class Grid:
    """One of the paper's grids: axes (config key -> values as --set strings), default datasets, what it is for."""

    axes: tuple[tuple[str, tuple[str, ...]], ...]
    datasets: tuple[str, ...]
    fixed: tuple[str, ...] = ()
    about: str = ""


GENERATORS = ("ecco", "generic", "revise")
SEARCH = "train.search."
GRIDS = {
    "generator": Grid(((SEARCH + "generator", GENERATORS), (SEARCH + "max_steps", ("5", "25", "50")),
                       (SEARCH + "lambda_energy", ("0.1", "0.5", "5.0", "10.0", "20.0")),
                       (SEARCH + "threshold", ("0.75", "0.9", "0.95"))),
                      SYNTHETIC_NAMES, about="App. C, Note 3: the training generator and its search"),
    "penalties": Grid(((SEARCH + "generator", GENERATORS), ("weights.adv", ("0.1", "0.25", "1.0")),
                       ("weights.div", ("0.01", "0.1", "1.0")), ("weights.reg", ("0.0", "0.01", "0.1", "0.25", "0.5"))),
                      SYNTHETIC_NAMES, about="App. C, Note 5: the loss weights"),
    "other": Grid(((SEARCH + "generator", GENERATORS), ("train.burnin", ("0.0", "0.5")), ("train.n_ce", ("100", "1000")),
                   ("train.epochs", ("50", "100"))), SYNTHETIC_NAMES, about="App. C, Note 7: burn-in, n_ce and epochs"),
    "tuning": Grid(((SEARCH + "threshold", ("0.5", "0.75", "0.9")), ("weights.reg", ("0.1", "0.25", "0.5"))),
                   OFFLINE_NAMES, about="App. D, Note 9: τ and λ_reg per dataset"),
    "custom": Grid((), OFFLINE_NAMES, about="the --axis options alone"),
    "tune_lr": Grid(((SEARCH + "step_size", ("0.1", "0.5", "1.0")), ("weights.reg", ("0.01", "0.1", "0.5"))),
                    OFFLINE_NAMES, fixed=(SEARCH + "threshold=0.5",),
                    about="App. D: the search's step size and λ_reg at τ 0.5"),
}
OBJECTIVES = ("full", "vanilla")
# The appendix's training defaults (Note 1) for every setting a grid does not vary; data settings stay per dataset.
GRID_DEFAULTS = (SEARCH + "threshold=0.75", "weights.reg=0.1", "seeds=0")
# The tuning protocol (App. Note 2); factuals come from the training split (`evaluate_group`).
TUNING_PROTOCOL = ("protocol.n_rounds=5", "protocol.n_individuals=100", "protocol.search.threshold=0.95",
                   "protocol.search.max_steps=50")
# Leaves of the TrainState: configurations differing only here train in one vmapped program.
VMAPPABLE = ("weights.clf", "weights.div", "weights.reg", "weights.adv", "learning_rate")
# Settings (dotted paths; a trailing "." is a whole branch) the vanilla objective never reads: its configurations
# that differ only here are one model.
CT_ONLY = ("train.search.", "train.n_ce", "train.schedule", "train.burnin", "train.protect", "weights.div",
           "weights.reg", "weights.adv", "actionability.")
# Settings that change nothing a grid run computes (no actionability runs, IG or robustness in a grid).
UNUSED = ("expected_minutes", "data.protected", "actionability.", "sensitivity.", "robustness.")



@dataclasses.dataclass(frozen=True)
class Point:
    """One configuration of a grid: its dataset, objective, axis values and effective ExperimentConfig."""

    dataset: str
    objective: str
    assignment: tuple[tuple[str, str], ...]
    config: ExperimentConfig


@dataclasses.dataclass(frozen=True)
class Group:
    """Configurations sharing every static setting: trained by one `fit_many` program, evaluated together."""

    dataset: str
    objective: str
    name: str
    key: str
    configs: tuple[ExperimentConfig, ...]


def _settings(config: ExperimentConfig, drop=()) -> dict:
    settings = json.loads(json.dumps(flat_dict(config)))
    return {k: v for k, v in settings.items() if not path_in(k, UNUSED + tuple(drop))}


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def parse_axes(items) -> dict[str, tuple[str, ...]]:
    """Returns {key: values} from "key=v1,v2" strings (the --axis option)."""
    axes = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[1].strip(", "):
            raise ValueError(f"--axis {item!r} must look like path=v1,v2,... (e.g. train.search.max_steps=5,50)")
        key, values = item.split("=", 1)
        if key.strip() in axes:
            raise ValueError(f"--axis {key.strip()}=... is given twice; give every value of an axis in one --axis")
        axes[key.strip()] = tuple(v.strip() for v in values.split(",") if v.strip())
        check_distinct(f"--axis {key.strip()}", axes[key.strip()])
    return axes


def grid_axes(grid: str, replace=None) -> dict[str, tuple[str, ...]]:
    """Returns the axes of a named grid, with `replace` ({key: values}) replacing or adding axes."""
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; choose from {sorted(GRIDS)}")
    return {**dict(GRIDS[grid].axes), **(replace or {})}


def canonical(config: ExperimentConfig, objective: str) -> ExperimentConfig:
    """Returns the config as its objective reads it: for vanilla, every CT-only setting reset to the dataset's base."""
    if objective != "vanilla":
        return config
    base = get_config(config.data.name)
    for path in leaf_paths():
        if path_in(path, CT_ONLY):
            config = replace_path(config, path, get_path(base, path))
    return config


def grid_points(grid: str, datasets, *, overrides=(), axes=None) -> list[Point]:
    """Returns every configuration of the grid (datasets × objectives × axis values), checked, in a fixed order."""
    axes = grid_axes(grid, axes)
    check_distinct("--datasets", datasets)
    shadowed = [item.split("=", 1)[0].strip() for item in overrides if item.split("=", 1)[0].strip() in axes]
    if shadowed:
        raise ValueError(f"--set {shadowed[0]}=... would change nothing: the grid's axis {shadowed[0]} sets it in "
                         f"every configuration; use --axis {shadowed[0]}=v1,v2 instead")
    keys = sorted(axes)
    base = list(GRID_DEFAULTS) + list(GRIDS[grid].fixed) + list(TUNING_PROTOCOL) + list(overrides)
    points = []
    for dataset in datasets:
        for objective in OBJECTIVES:
            for values in itertools.product(*(axes[k] for k in keys)):
                assignment = tuple(zip(keys, values))
                config = override(get_config(dataset), base + [f"{k}={v}" for k, v in assignment])
                points.append(Point(dataset, objective, assignment, canonical(config, objective)))
    return points


def static_key(config: ExperimentConfig, objective: str) -> str:
    """Returns the hash of what one compiled program fixes: every setting but the vmappable ones, and the objective."""
    return _hash({**_settings(config, drop=VMAPPABLE), "objective": objective})


def make_groups(points: list[Point]) -> list[Group]:
    """Returns the points' distinct configurations grouped by static settings, in a fixed order."""
    grouped: dict[tuple, dict] = {}
    for p in points:
        key = static_key(p.config, p.objective)
        entry = grouped.setdefault((p.dataset, p.objective, key), {"configs": {}, "assignment": p.assignment})
        entry["configs"].setdefault(_hash(_settings(p.config)), p.config)
    groups = []
    for (dataset, objective, key), entry in grouped.items():
        # Name a group by its static axis values (the vanilla ones: only those vanilla reads).
        shown = [(k, v) for k, v in entry["assignment"] if k not in VMAPPABLE
                 and (objective != "vanilla" or k not in CT_ONLY)]
        name = ",".join(f"{k}={v}" for k, v in shown) or "default"
        groups.append(Group(dataset, objective, f"{name}@{key}", key, tuple(entry["configs"].values())))
    return sorted(groups, key=lambda g: (g.dataset, g.objective != "vanilla", g.name))


def group_dir(out: str, grid: str, group: Group) -> str:
    """Returns the folder of a group's results."""
    return os.path.join(out, grid, group.dataset, group.objective, group.name)


def _stored_configs(group: Group) -> list[dict]:
    return [json.loads(json.dumps(c.to_dict())) for c in group.configs]


def _stored_results(workdir: str, objective: str) -> dict | None:
    try:
        with open(os.path.join(workdir, "results.json")) as f:
            stored = json.load(f)
    except (OSError, ValueError):  # missing or half-written: nothing finished there
        return None
    return stored if isinstance(stored, dict) and stored.get("objective") == objective else None


def missing_configs(workdir: str, group: Group) -> tuple[ExperimentConfig, ...]:
    """Returns the group's configurations whose results workdir does not hold (all of them if it holds none)."""
    stored = _stored_results(workdir, group.objective)
    have = (stored or {}).get("configs") or []
    return tuple(c for c, plain in zip(group.configs, _stored_configs(group)) if plain not in have)


def is_finished(workdir: str, group: Group) -> bool:
    """Returns whether workdir holds the results of every one of this group's configurations, for its objective."""
    return not missing_configs(workdir, group)


def merge_group_results(earlier: dict | None, new: dict) -> dict:
    """Returns `new` (a group's results) with the earlier results of its folder kept: their configurations first, each
    run's "config" index into the merged list; a configuration in both keeps the new runs."""
    if not earlier:
        return new
    configs = list(earlier["configs"])
    index = []
    for config in new["configs"]:
        if config not in configs:
            configs.append(config)
        index.append(configs.index(config))
    kept = [r for r in earlier["runs"] if r["config"] not in set(index)]
    runs = kept + [{**r, "config": index[r["config"]]} for r in new["runs"]]
    return {**new, "configs": configs, "n_runs": len(runs), "runs": runs,
            "earlier_timings": earlier.get("earlier_timings", []) + [earlier.get("timings")]}


def _stack(trees):
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def train_group(group: Group, data, *, aux=None, progress: bool = False):
    """Returns ([(config, seed)] runs, [(apply_fn, params)] models, histories): the group as one vmapped program.

    Run k trains config k // S with seed k % S (S seeds per config); its λ's and learning rate are the k-th
    entries of (K,) arrays on the stacked TrainState, so every configuration of the group shares one compile.
    """
    c0 = group.configs[0]
    runs = [(c, s) for c in group.configs for s in c.seeds]
    extra = {"image_shape": data.image_shape} if c0.model == "lenet5" and data.image_shape else {}
    apply_fn, _ = make_model(c0.model, data.num_features, data.num_classes, jax.random.key(0), **extra)
    inits = {s: make_model(c0.model, data.num_features, data.num_classes, jax.random.key(s), **extra)[1]
             for s in c0.seeds}
    column = lambda path: np.array([get_path(c, path) for c, _ in runs], np.float32)
    weights = LossWeights(clf=column("weights.clf"), div=column("weights.div"), reg=column("weights.reg"),
                          adv=column("weights.adv"))
    states = create_train_states(apply_fn, _stack([inits[s] for _, s in runs]), weights=weights,
                                 learning_rate=column("learning_rate"))
    tc = train_config(c0, group.objective, data.num_features)
    states, histories = fit_many(states, data, tc, seeds=[s for _, s in runs], constraints=data.constraints(),
                                 progress=progress, aux=aux if tc.needs_counterfactuals else None)
    models = [(apply_fn, jax.tree.map(lambda a, i=i: a[i], states.params)) for i in range(len(runs))]
    return runs, models, histories


def evaluate_group(group: Group, data, runs, models, *, progress: bool = False) -> list[list[dict]]:
    """Returns, per run, its per-round protocol summary: the tuning protocol on factuals from the training data."""
    c0 = group.configs[0]
    summaries: list[list[dict]] = [[] for _ in runs]
    for seed in c0.seeds:
        chosen = {f"run{i}": model for i, ((_, s), model) in enumerate(zip(runs, models)) if s == seed}
        res = evaluate_explainability(chosen, data.x_train, data.y_train, num_classes=data.num_classes,
                                      protocol=protocol_config(c0, seed=seed),
                                      constraints=data.constraints(), progress=progress)
        for row in res["summary"]:
            summaries[int(row["model"][3:])].append({k: v for k, v in row.items() if k != "model"})
    return summaries


def _health(history: list[dict]) -> dict:
    last = history[-1]
    return {"converged": last.get("converged"), "search_steps": last.get("search_steps"),
            "nonfinite": skipped_updates([history])[0]}


def run_group(group: Group, data, workdir: str, *, aux=None, progress: bool = False) -> dict:
    """Returns the group's results, with those workdir held already (`merge_group_results`), after writing them to
    workdir/results.json: per run its config, seed, rounds and health."""
    t0 = time.perf_counter()
    runs, models, histories = train_group(group, data, aux=aux, progress=progress)
    jax.block_until_ready(models[-1][1])
    t1 = time.perf_counter()
    summaries = evaluate_group(group, data, runs, models, progress=progress)
    t2 = time.perf_counter()
    results = {"dataset": group.dataset, "objective": group.objective, "group": group.name,
               "configs": _stored_configs(group), "n_runs": len(runs),
               "runs": [{"config": group.configs.index(c), "seed": s, "summary": summary,
                         "accuracy": history[-1].get("test_accuracy"), "mechanism": _health(history)}
                        for (c, s), summary, history in zip(runs, summaries, histories)],
               "timings": {"train_s": t1 - t0, "evaluate_s": t2 - t1}}
    # The folder is the group's static settings: configurations an earlier run stored there stay beside these.
    results = merge_group_results(_stored_results(workdir, group.objective), results)
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "results.json"), results)
    return results


def check_tasks(task_index: int, num_tasks: int) -> None:
    """Returns None; raises ValueError naming --num-tasks below 1, or a --task-index outside [0, --num-tasks)."""
    if num_tasks < 1:
        raise ValueError(f"--num-tasks must be >= 1 (the number of tasks the grid's groups are split into), "
                         f"got {num_tasks}")
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"--task-index must be in [0, {num_tasks}) for --num-tasks {num_tasks}, got {task_index}")


def run(grid: str, datasets, *, out: str, overrides=(), axes=None, task_index: int = 0, num_tasks: int = 1,
        progress: bool = False, log=print) -> dict:
    """Returns {"groups", "ran", "skipped", "points", "timings"} after running this task's unfinished groups.

    Every configuration is checked, and every dataset loaded and checked, before the first group trains.
    """
    with command_checks():
        check_tasks(task_index, num_tasks)
        points = grid_points(grid, datasets, overrides=overrides, axes=axes)
        groups = make_groups(points)
        mine = groups[task_index::num_tasks]
        loaded, vaes = {}, {}
        for group in mine:
            for config in group.configs:
                source = (config.data.name, config.data.kwargs)
                if source not in loaded:
                    loaded[source] = free_schema(load_data(config))
    t0 = time.perf_counter()
    ran, skipped, timings = [], [], {"train_s": 0.0, "evaluate_s": 0.0, "vae_s": 0.0, "groups": {}}
    for i, group in enumerate(mine):
        workdir = group_dir(out, grid, group)
        missing = missing_configs(workdir, group)
        if not missing:
            skipped.append(workdir)
            log(f"[{i + 1}/{len(mine)}] {workdir}: finished, skipped")
            continue
        if len(missing) < len(group.configs):
            log(f"[{i + 1}/{len(mine)}] {workdir}: {len(group.configs) - len(missing)} configuration(s) finished "
                "there, kept")
            group = dataclasses.replace(group, configs=missing)
        c0 = group.configs[0]
        data = loaded[(c0.data.name, c0.data.kwargs)]
        aux = None
        if c0.train.search.generator == "revise" and group.objective != "vanilla":
            vae_key = (c0.data.name, c0.data.kwargs, c0.seeds[0])
            if vae_key not in vaes:  # one VAE per dataset serves every REVISE configuration, as in the reference
                t_vae = time.perf_counter()
                vaes[vae_key] = train_vae_aux(c0, data)
                timings["vae_s"] += time.perf_counter() - t_vae
            aux = vaes[vae_key]
        log(f"[{i + 1}/{len(mine)}] {workdir}: {len(group.configs)} config(s) x {len(c0.seeds)} seed(s)")
        res = run_group(group, data, workdir, aux=aux, progress=progress)
        timings["train_s"] += res["timings"]["train_s"]
        timings["evaluate_s"] += res["timings"]["evaluate_s"]
        timings["groups"][os.path.relpath(workdir, out)] = res["timings"]
        ran.append(workdir)
    timings["total_s"] = time.perf_counter() - t0
    return {"groups": len(mine), "ran": ran, "skipped": skipped, "points": len(points), "timings": timings,
            "distinct_configs": sum(len(g.configs) for g in groups), "all_groups": len(groups)}


def _load_groups(out: str, grid: str) -> list[dict]:
    found = []
    for root, _, files in os.walk(os.path.join(out, grid)):
        if "results.json" in files:
            with open(os.path.join(root, "results.json")) as f:
                found.append(json.load(f))
    return found


def _bl_key(stored: dict) -> str:
    """Returns the key of the BL a stored configuration is compared with: its canonical vanilla settings."""
    return _hash(_settings(canonical(from_dict(stored), "vanilla")))


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def collect(out: str, grid: str) -> dict:
    """Returns {"csv", "md", "rows"} after writing out/grid/grid.csv and grid.md: one row per CT configuration."""
    groups = _load_groups(out, grid)
    baselines: dict[tuple, dict] = {}
    for g in groups:
        if g["objective"] == "vanilla":
            for run in g["runs"]:
                baselines[(_bl_key(g["configs"][run["config"]]), run["seed"])] = run
    rows = []
    for g in groups:
        if g["objective"] != "full":
            continue
        for index, config in enumerate(g["configs"]):
            runs = [r for r in g["runs"] if r["config"] == index]
            bl = [baselines.get((_bl_key(config), r["seed"])) for r in runs]
            row = {"dataset": config["data"]["name"], "group": g["group"], "config": _hash(config),
                   "n_seeds": len(runs)}
            row.update({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flat_dict(config).items()
                        if k != "data.name"})
            if all(b is not None for b in bl):
                per_seed = [[{**x, "model": "CT"} for x in r["summary"]] + [{**x, "model": "BL"} for x in b["summary"]]
                            for r, b in zip(runs, bl)]
                for metric in ("ip", "ip_star", "cost"):
                    c = compared_over_rounds_and_seeds(per_seed, config["protocol"]["n_rounds"], metric,
                                                       treatment="CT")
                    seeds = c["seeds"]["reduction"]
                    # The reduction and its mark are over seeds; the paper's round s.e. is kept beside them.
                    row[f"{metric}_reduction_pct"] = seeds["mean"]
                    row[f"{metric}_low"], row[f"{metric}_high"] = seeds["low"], seeds["high"]
                    row[f"{metric}_significant"] = seeds["significant"]
                    row[f"{metric}_round_se_pct"] = c["se_pct"]
                    if c["note"] or seeds["note"]:
                        row[f"{metric}_note"] = "; ".join(n for n in (c["note"], seeds["note"]) if n)
                row["validity_bl"] = _mean([x["validity"] for b in bl for x in b["summary"]])
                row["accuracy_bl"] = _mean([b["accuracy"] for b in bl])
            else:
                row["note"] = "no BL results for these settings yet (its group has not run): reductions left out"
            row["validity_ct"] = _mean([x["validity"] for r in runs for x in r["summary"]])
            row["accuracy_ct"] = _mean([r["accuracy"] for r in runs])
            row["mature"] = _mean([r["mechanism"]["converged"] for r in runs])
            row["search_steps"] = _mean([r["mechanism"]["search_steps"] for r in runs])
            row["skipped_updates"] = int(sum(r["mechanism"]["nonfinite"] for r in runs))
            rows.append(json_safe(row))
    folder = os.path.join(out, grid)
    os.makedirs(folder, exist_ok=True)
    csv_path, md_path = os.path.join(folder, "grid.csv"), os.path.join(folder, "grid.md")
    fields = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: (r["dataset"], r["group"], r["config"])))
    write_atomic(csv_path, text.getvalue())
    write_atomic(md_path, grid_markdown(grid, rows) + "\n")
    return {"csv": csv_path, "md": md_path, "rows": rows}


def _varying(rows: list[dict]) -> list[str]:
    # The rows' settings are dotted paths of the config tree (flat_dict), loader keywords as data.kwargs.NAME.
    paths = set(leaf_paths())
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k in paths or k.startswith("data.kwargs.")]
    return [k for k in keys if len({json.dumps(r.get(k)) for r in rows}) > 1]


def _sort_key(value) -> tuple:
    # Numbers in numeric order (5 before 10), everything else after them as text.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, json.dumps(value))


def grid_markdown(grid: str, rows: list[dict]) -> str:
    """Returns a markdown table of a collected grid: one row per CT configuration, the settings that vary first."""
    varying = _varying(rows)
    show = lambda v, fmt="{:.2f}": "n/a" if v is None else fmt.format(v)
    head = ["dataset", *varying, "IP −%", "IP* −%", "cost −%", "validity CT / BL", "accuracy CT / BL",
            "mature / steps / skipped"]
    lines = [f"Grid `{grid}`: {len(rows)} CT configurations ({GRIDS[grid].about if grid in GRIDS else ''}); "
             "reductions vs the BL of the same seeds and settings (positive = CT better): mean over seeds [99% Student-t "
             "interval over seeds], * = it excludes 0 (grid.csv keeps the paper's round s.e. beside it), "
             "scored by the tuning protocol (factuals from the training data; protocol.* settings in grid.csv).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: list[str] = []
    for r in sorted(rows, key=lambda r: (r["dataset"], *[_sort_key(r.get(k)) for k in varying])):
        cells = [r["dataset"], *[str(r.get(k)) for k in varying]]
        for metric in ("ip", "ip_star", "cost"):
            value = r.get(f"{metric}_reduction_pct")
            if value is None:  # "n/a" always comes with its reason, under the table
                notes.append(f"{r['dataset']} {r['config']}, {metric}: "
                             f"{r.get(f'{metric}_note') or r.get('note') or 'not computed'}")
                cells.append(f"n/a [{len(notes)}]")
            else:
                cells.append(interval_text({"mean": value, "low": r.get(f"{metric}_low"),
                                            "high": r.get(f"{metric}_high"),
                                            "significant": r.get(f"{metric}_significant")}))
        cells += [f"{show(r.get('validity_ct'))} / {show(r.get('validity_bl'))}",
                  f"{show(r.get('accuracy_ct'), '{:.3f}')} / {show(r.get('accuracy_bl'), '{:.3f}')}",
                  f"{show(r.get('mature'))} / {show(r.get('search_steps'), '{:.1f}')} / {r.get('skipped_updates')}"]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Notes:", *(f"[{i}] {note}" for i, note in enumerate(notes, 1))]
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Returns `run`'s summary (with the collected tables of a single-task run), or `collect`'s with --collect."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 1)[1])
    parser.add_argument("--grid", required=True, choices=sorted(GRIDS),
                        help='the grid to run (see above)')
    parser.add_argument("--datasets", nargs="+", default=None, help="default: the grid's datasets (see above)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every configuration (repeatable), e.g. --set seeds=0,1,2")
    parser.add_argument("--axis", dest="axes", action="append", default=[], metavar="KEY=V1,V2",
                        help="replace (or add) a grid axis, e.g. --axis train.search.generator=ecco")
    parser.add_argument("--task-index", type=int, default=0,
                        help="this task's index, 0 to --num-tasks - 1: it runs every num-tasks-th group from it")
    parser.add_argument("--num-tasks", type=int, default=1,
                        help="the number of tasks (machines, jobs) the grid's groups are split into, >= 1")
    parser.add_argument("--out", default=os.path.join("results", "tuning"),
                        help="folder of the grids' groups (default: %(default)s)")
    parser.add_argument("--collect", action="store_true", help="only gather finished groups into grid.csv / grid.md")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    with command_checks():
        check_tasks(args.task_index, args.num_tasks)
        if args.collect:
            out = collect(args.out, args.grid)
            print(out["md"])
            return out
    datasets = args.datasets or list(GRIDS[args.grid].datasets)
    res = run(args.grid, datasets, out=args.out, overrides=args.overrides, axes=parse_axes(args.axes),
              task_index=args.task_index, num_tasks=args.num_tasks, progress=not args.quiet)
    print(f"{res['points']} configurations, {res['distinct_configs']} distinct trainings in {res['all_groups']} "
          f"compiled programs; this task: ran {len(res['ran'])}, skipped {len(res['skipped'])} "
          f"({res['timings']['total_s']:.1f} s)")
    if args.num_tasks == 1:
        res["collected"] = collect(args.out, args.grid)
        print(open(res["collected"]["md"]).read())
    return res


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
