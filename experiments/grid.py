"""Grid searches and ablations over any config keys: resumable, runnable as one process or as job arrays.

    python -m experiments.grid --datasets circles moons --grid tau=0.5,0.75,0.9 --grid lambda_reg=0.1,0.25,0.5
    python -m experiments.grid ... --task-index $SLURM_ARRAY_TASK_ID --num-tasks $SLURM_ARRAY_TASK_COUNT
    python -m experiments.grid ... --collect          # one CSV of every finished run

Each grid point is one `train_and_evaluate` run in its own folder, named by its settings; a folder
with results.json is finished and skipped, so an interrupted grid resumes where it stopped. Task i
of n runs the points i, i + n, i + 2n, … of the deterministic grid order.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os

from experiments.configs import get_config, override
from experiments.pipeline import train_and_evaluate


def grid_points(datasets, grid: dict[str, list[str]]) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Returns every (dataset, ((key, value), ...)) combination, in a fixed order."""
    keys = sorted(grid)
    return [(d, tuple(zip(keys, values))) for d in datasets for values in itertools.product(*(grid[k] for k in keys))]


def point_name(dataset: str, assignment) -> str:
    """Returns the folder name of a grid point, e.g. "circles/lambda_reg=0.5,tau=0.9"."""
    return os.path.join(dataset, ",".join(f"{k}={v}" for k, v in assignment) or "default")


def parse_grid(items) -> dict[str, list[str]]:
    """Returns {key: [values]} from "key=v1,v2" strings."""
    grid = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid {item!r} must look like key=v1,v2,...")
        key, values = item.split("=", 1)
        grid[key.strip()] = [v for v in values.split(",") if v]
    return grid


def run(args) -> list[str]:
    """Runs this task's unfinished grid points; returns their folders."""
    grid = parse_grid(args.grid)
    points = grid_points(args.datasets, grid)
    done = []
    for i, (dataset, assignment) in enumerate(points):
        if i % args.num_tasks != args.task_index:
            continue
        workdir = os.path.join(args.out, point_name(dataset, assignment))
        if os.path.exists(os.path.join(workdir, "results.json")):
            print(f"[{i + 1}/{len(points)}] {workdir}: finished, skipped", flush=True)
            continue
        config = override(get_config(dataset), list(args.overrides) + [f"{k}={v}" for k, v in assignment])
        print(f"[{i + 1}/{len(points)}] {workdir}", flush=True)
        train_and_evaluate(config, workdir, ablation=args.ablation, progress=not args.quiet, plots=args.plots)
        done.append(workdir)
    return done


def collect(out: str) -> str:
    """Writes out/grid.csv with one row per finished run (settings + headline comparisons); returns its path."""
    rows = []
    for root, _, files in os.walk(out):
        if "results.json" not in files or "config.json" not in files:
            continue
        with open(os.path.join(root, "results.json")) as f:
            res = json.load(f)
        row = {"run": os.path.relpath(root, out), "dataset": res["dataset"]}
        for model, comps in res["comparisons"].items():
            for metric, c in comps.items():
                row[f"{model}_{metric}_reduction_pct"] = c["reduction_pct"]
                row[f"{model}_{metric}_significant"] = c["significant"]
        for model, accs in res["accuracy"].items():
            row[f"{model}_accuracy"] = sum(accs) / len(accs)
        rows.append(row)
    path = os.path.join(out, "grid.csv")
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["run"]))
    return path


def main(argv=None):
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
