"""Grid searches and ablations over any config keys: resumable, runnable as one process or as job arrays.

    python -m experiments.grid --datasets circles moons --grid tau=0.5,0.75,0.9 --grid lambda_reg=0.1,0.25,0.5
    python -m experiments.grid ... --task-index $SLURM_ARRAY_TASK_ID --num-tasks $SLURM_ARRAY_TASK_COUNT
    python -m experiments.grid ... --collect          # one CSV of every finished run

Each grid point is one `train_and_evaluate` run in its own folder, named by its grid settings and a
short hash of its whole effective config (every config field after --set and --grid, and --ablation):

    <out>/<dataset>/<key=value,...>@<hash>/      e.g. results/grid/circles/lambda_reg=0.5,tau=0.9@3fa0c2d81b

A point is finished, and skipped, only if its folder holds results.json and a config.json equal to the
effective config asked for now, so an interrupted grid resumes where it stopped, while a grid asked for
with other settings (say --set epochs=3 after epochs=2) runs in new folders beside the old ones instead
of reusing their results. Only `expected_minutes`, a runtime estimate that changes nothing that runs,
is left out of the hash. Every point's config is checked, and its data loaded and checked, before the
first one trains; so is the grid itself: a value given twice on an axis, an axis given twice, a --set of an
axis's key (the axis would replace it) or two points with the same effective config (tau=0.5,0.50) is refused,
because each would train one point twice. Task i of n runs the points i, i + n, i + 2n, … of the
deterministic grid order.
`--collect` writes one CSV row per finished run, with a column for each config key whose value differs
between the runs.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import os

from experiments.configs import ExperimentConfig, get_config, override
from ctrain.data import load_dataset
from experiments.pipeline import check_distinct, check_run, train_and_evaluate


def grid_points(datasets, grid: dict[str, list[str]]) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Returns every (dataset, ((key, value), ...)) combination, in a fixed order."""
    keys = sorted(grid)
    return [(d, tuple(zip(keys, values))) for d in datasets for values in itertools.product(*(grid[k] for k in keys))]


def effective_settings(config: ExperimentConfig, ablation: bool) -> dict:
    """Returns what a grid point's results depend on: the config as JSON data (less expected_minutes) and --ablation."""
    settings = json.loads(json.dumps(config.to_dict()))
    settings.pop("expected_minutes")  # a runtime estimate: changes nothing that runs
    return {**settings, "ablation": ablation}


def config_key(config: ExperimentConfig, ablation: bool = False) -> str:
    """Returns the 10-hex-digit hash of a point's effective settings that its folder name ends with."""
    text = json.dumps(effective_settings(config, ablation), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def point_name(dataset: str, assignment, key: str | None = None) -> str:
    """Returns the folder name of a grid point, e.g. "circles/lambda_reg=0.5,tau=0.9@3fa0c2d81b"."""
    name = ",".join(f"{k}={v}" for k, v in assignment) or "default"
    return os.path.join(dataset, f"{name}@{key}" if key else name)


def is_finished(workdir: str, config: ExperimentConfig, ablation: bool = False) -> bool:
    """Returns whether workdir holds the results of exactly this effective config (config.json and --ablation)."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            stored = json.load(f)
        with open(os.path.join(workdir, "results.json")) as f:
            stored_ablation = json.load(f).get("ablation", False)
    except (OSError, ValueError):  # missing or half-written files: the point has to run
        return False
    stored.pop("expected_minutes", None)
    return {**stored, "ablation": stored_ablation} == effective_settings(config, ablation)


def parse_grid(items) -> dict[str, list[str]]:
    """Returns {key: [values]} from "key=v1,v2" strings."""
    grid = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid {item!r} must look like key=v1,v2,...")
        key, values = item.split("=", 1)
        key, values = key.strip(), [v.strip() for v in values.split(",") if v.strip()]
        if not values:  # an empty axis makes an empty grid: nothing would run, silently
            raise ValueError(f"--grid {item!r} gives no values; it must look like key=v1,v2,...")
        if key in grid:
            raise ValueError(f"--grid {key}=... is given twice; give every value of an axis in one --grid")
        check_distinct(f"--grid {key}", values)
        grid[key] = values
    return grid


def run(args) -> list[str]:
    """Runs this task's unfinished grid points, after checking all of them; returns their folders."""
    grid = parse_grid(args.grid)
    check_distinct("--datasets", args.datasets)
    shadowed = [item.split("=", 1)[0].strip() for item in args.overrides
                if item.split("=", 1)[0].strip() in grid]
    if shadowed:
        raise ValueError(f"--set {shadowed[0]}=... would change nothing: the --grid axis {shadowed[0]} sets it in "
                         "every point; put the value on the axis instead")
    points = grid_points(args.datasets, grid)
    # Every point of every task is built (and so checked) here, so that all tasks refuse the same bad grid.
    configs = [override(get_config(dataset), list(args.overrides) + [f"{k}={v}" for k, v in assignment])
               for dataset, assignment in points]
    keys = [config_key(config, args.ablation) for config in configs]
    same = {}  # by the config's hash alone, which holds its dataset: an alias of a dataset is that dataset
    for (dataset, assignment), key in zip(points, keys):
        same.setdefault(key, []).append(f"{dataset}: " + (",".join(f"{k}={v}" for k, v in assignment) or "default"))
    twice = [" and ".join(names) for names in same.values() if len(names) > 1]
    if twice:
        raise ValueError(f"grid points with the same effective config would train it twice ({'; '.join(twice)}); "
                         "give each setting once")
    todo = []
    for i, ((dataset, assignment), config, key) in enumerate(zip(points, configs, keys)):
        if i % args.num_tasks != args.task_index:
            continue
        workdir = os.path.join(args.out, point_name(dataset, assignment, key))
        if is_finished(workdir, config, args.ablation):
            print(f"[{i + 1}/{len(points)}] {workdir}: finished, skipped", flush=True)
            continue
        todo.append((i, config, workdir))
    loaded = {}
    for _, config, _ in todo:  # every point's data is loaded and checked before the first one trains
        source = (config.dataset, config.dataset_kwargs)
        if source not in loaded:
            loaded[source] = load_dataset(config.dataset, **dict(config.dataset_kwargs))
        check_run(config, loaded[source])
    done = []
    for i, config, workdir in todo:
        print(f"[{i + 1}/{len(points)}] {workdir}", flush=True)
        train_and_evaluate(config, workdir, data=loaded[(config.dataset, config.dataset_kwargs)],
                           ablation=args.ablation, progress=not args.quiet, plots=args.plots)
        done.append(workdir)
    return done


def collect(out: str) -> str:
    """Writes out/grid.csv with one row per finished run (settings + headline comparisons); returns its path."""
    rows, configs = [], []
    for root, _, files in os.walk(out):
        if "results.json" not in files or "config.json" not in files:
            continue
        with open(os.path.join(root, "results.json")) as f:
            res = json.load(f)
        with open(os.path.join(root, "config.json")) as f:
            configs.append({**json.load(f), "ablation": res.get("ablation", False)})
        row = {"run": os.path.relpath(root, out), "dataset": res["dataset"]}
        for model, comps in res["comparisons"].items():
            for metric, c in comps.items():
                seeds = (c.get("seeds") or {}).get("reduction") or {}
                # The claim about training: the mean over seeds and its interval; the paper's round figure beside.
                row[f"{model}_{metric}_reduction_pct"] = seeds.get("mean")
                row[f"{model}_{metric}_low"], row[f"{model}_{metric}_high"] = seeds.get("low"), seeds.get("high")
                row[f"{model}_{metric}_significant"] = seeds.get("significant")
                row[f"{model}_{metric}_round_reduction_pct"] = c["reduction_pct"]
                if c.get("note"):
                    row[f"{model}_{metric}_note"] = c["note"]
        for model, accs in res["accuracy"].items():
            accs = [a for a in accs if a is not None]
            row[f"{model}_accuracy"] = sum(accs) / len(accs) if accs else None
        rows.append(row)
    # Only the config keys that differ between runs: they are what tells the rows apart.
    varying = [k for k in dict.fromkeys(k for c in configs for k in c)
               if k not in ("dataset", "expected_minutes") and len({json.dumps(c.get(k)) for c in configs}) > 1]
    for row, config in zip(rows, configs):
        row.update({k: json.dumps(config.get(k)) if isinstance(config.get(k), (list, dict)) else config.get(k)
                    for k in varying})
    path = os.path.join(out, "grid.csv")
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["run"]))
    return path


def main(argv=None) -> list[str]:
    """Returns the folders of the grid points this call trained (none with --collect)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--datasets", nargs="+", default=["circles"])
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a grid axis (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ablation", action="store_true")
    parser.add_argument("--task-index", type=int, default=0)
    parser.add_argument("--num-tasks", type=int, default=1)
    parser.add_argument("--out", default=os.path.join("results", "grid"))
    parser.add_argument("--plots", action="store_true", help="write each run's plots (off by default)")
    parser.add_argument("--collect", action="store_true", help="only gather finished runs into grid.csv")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if not 0 <= args.task_index < args.num_tasks:
        parser.error(f"--task-index must be in [0, {args.num_tasks})")
    if args.collect:
        print(collect(args.out))
        return []
    return run(args)


if __name__ == "__main__":
    main()
