"""The appendix grids (App. C–D) as a study: per grid and dataset, the best configuration beside the paper's choice.

    python -m experiments.studies.grids.tuning --grid tuning --datasets linearly_separable circles moons overlapping \\
        --set seeds=0,1,2 --out results/grids                  # and likewise tune_lr, penalties, other, generator
    python -m experiments.studies.grids.study --out results/grids      # tables.md and summary.json here

It reads each grid's `grid.csv` (written by `experiments.studies.grids.tuning`), and the group folders' results.json for the
training and evaluation time, and writes experiments/studies/grids/tables.md: per grid and dataset the
configuration with the largest mean IP reduction and the one with the largest mean IP* reduction, each with its
99% interval over seeds, and the row of the paper's own choice where the grid holds it (the dataset's
`experiments.configs.get_config` values at the grid's axes). "Best" here is a ranking of means; whether it is
better than the paper's choice is read from the intervals, which the table prints beside it.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

from ctrain.storage import write_atomic, write_json
from experiments.configs import get_config, get_path
from experiments.pipeline import command_checks, run_command
from experiments.studies.grids.tuning import GRIDS

HERE = os.path.dirname(os.path.abspath(__file__))
# The columns of grid.csv that the study reports (besides the grid's axes).
SHOWN = tuple(f"{m}_{part}" for m in ("ip", "ip_star", "cost") for part in ("reduction_pct", "low", "high",
                                                                          "significant")) \
    + ("validity_ct", "validity_bl", "accuracy_ct", "accuracy_bl", "mature", "search_steps", "skipped_updates",
       "n_seeds")


def read_rows(out: str, grid: str) -> list[dict]:
    """Returns the rows of out/<grid>/grid.csv with numbers parsed (empty cells as None)."""
    with open(os.path.join(out, grid, "grid.csv")) as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            if value in ("True", "False"):  # csv.DictWriter wrote Python booleans
                row[key] = value == "True"
                continue
            try:
                row[key] = None if value == "" else json.loads(value)
            except (ValueError, TypeError):
                pass
    return rows


def grid_seconds(out: str, grid: str) -> float:
    """Returns the training and evaluation seconds recorded in the grid's group folders (results.json timings)."""
    total = 0.0
    for root, _, files in os.walk(os.path.join(out, grid)):
        if "results.json" in files:
            with open(os.path.join(root, "results.json")) as f:
                stored = json.load(f)
            for timing in [stored.get("timings")] + list(stored.get("earlier_timings") or []):
                total += sum(v for k, v in (timing or {}).items() if k.endswith("_s") and v)
    return total


def paper_choice(grid: str, dataset: str) -> dict[str, object]:
    """Returns {axis path: the dataset's own config value} of the grid's axes (the paper's choice for that dataset)."""
    config = get_config(dataset)
    return {path: get_path(config, path) for path, _ in GRIDS[grid].axes}


def _same(a, b) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-9
    except (TypeError, ValueError):
        return str(a) == str(b)


def _cell(row: dict, metric: str) -> str:
    mean, low, high = row.get(f"{metric}_reduction_pct"), row.get(f"{metric}_low"), row.get(f"{metric}_high")
    if mean is None:
        return "–"
    if low is None or high is None:
        return f"{mean:.1f}"
    return f"{mean:.1f} [{low:.1f}, {high:.1f}]{'*' if row.get(f'{metric}_significant') else ''}"


def summarise(out: str, grids) -> dict:
    """Returns per grid: its seconds and, per dataset, the best rows by IP and IP* and the paper's choice's row."""
    summary = {}
    for grid in grids:
        rows = read_rows(out, grid)
        axes = [path for path, _ in GRIDS[grid].axes]
        per_dataset = {}
        for dataset in sorted({r["dataset"] for r in rows}):
            mine = [r for r in rows if r["dataset"] == dataset]
            choice = paper_choice(grid, dataset)
            paper = [r for r in mine if all(_same(r.get(p), v) for p, v in choice.items())]
            best = {m: max((r for r in mine if r.get(f"{m}_reduction_pct") is not None),
                           key=lambda r, m=m: r[f"{m}_reduction_pct"], default=None) for m in ("ip", "ip_star")}
            keep = lambda row: None if row is None else {k: v for k, v in row.items() if k in axes or k in SHOWN}
            per_dataset[dataset] = {"axes": axes, "paper_choice": choice,
                                    "paper_row": keep(paper[0] if paper else None),
                                    "best": {m: keep(r) for m, r in best.items()}, "n_configs": len(mine)}
        summary[grid] = {"seconds": grid_seconds(out, grid), "datasets": per_dataset}
    return summary


def tables(summary: dict) -> str:
    """Returns the markdown tables of a `summarise` result."""
    parts = []
    for grid, entry in summary.items():
        parts += [f"## Grid `{grid}`: {GRIDS[grid].about}", "",
                  f"Training and evaluation time recorded in its groups: {entry['seconds'] / 60:.1f} min (2-core "
                  "CPU, with another job running beside it).", "",
                  "| dataset | row | " + " | ".join(entry_axes(entry)) + " | IP −% | IP* −% | cost −% "
                  "| mature / steps / skipped |", "|" + "---|" * (len(entry_axes(entry)) + 6)]
        for dataset, d in entry["datasets"].items():
            shown = [("best IP", d["best"]["ip"]), ("best IP*", d["best"]["ip_star"]),
                     ("paper's choice", d["paper_row"])]
            for name, row in shown:
                if row is None:
                    values = [str(d["paper_choice"][p]) for p in d["axes"]]
                    parts.append(f"| {dataset} | {name} | " + " | ".join(values)
                                 + " | not in the grid | | | |")
                    continue
                values = [str(row.get(p)) for p in d["axes"]]
                health = (f"{row['mature']:.2f} / {row['search_steps']:.1f} / {row['skipped_updates']}"
                          if row.get("mature") is not None else "–")
                parts.append(f"| {dataset} | {name} | " + " | ".join(values) + f" | {_cell(row, 'ip')} "
                             f"| {_cell(row, 'ip_star')} | {_cell(row, 'cost')} | {health} |")
        parts.append("")
    parts.append("Reductions: CT vs the BL of the same seeds and settings, in % (positive = CT better), the mean over "
                 "seeds [99% Student-t interval over seeds], * = it excludes 0; scored by the tuning protocol "
                 "(factuals from the training data, 5 rounds). Cost is without mutability constraints. "
                 "Mature / steps / skipped: the share of the last epoch's training counterfactuals that reached τ, "
                 "their mean search steps, and the updates skipped for a non-finite loss or gradient (sum over "
                 "seeds). The full grids: grid_<name>.md beside this file.")
    return "\n".join(parts)


def entry_axes(entry: dict) -> list[str]:
    """Returns the axis paths of a grid's summary entry."""
    return next(iter(entry["datasets"].values()))["axes"] if entry["datasets"] else []


def main(argv=None) -> dict:
    """Returns the summary after writing tables.md, summary.json and each grid's grid_<name>.md beside this file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the --out folder the grids were run into")
    parser.add_argument("--grids", nargs="+", default=["tuning", "tune_lr", "penalties", "other", "generator"],
                        choices=sorted(GRIDS),
                        help='grids to gather (default: %(default)s)')
    parser.add_argument("--dest", default=HERE, help="where tables.md and the grids' markdown go")
    args = parser.parse_args(argv)
    with command_checks():
        grids = [g for g in args.grids if os.path.isfile(os.path.join(args.out, g, "grid.csv"))]
        if not grids:
            raise FileNotFoundError(f"no grid.csv under {args.out!r} for {args.grids}: run "
                                    "experiments.studies.grids.tuning first")
        summary = summarise(args.out, grids)
    write_atomic(os.path.join(args.dest, "tables.md"), tables(summary) + "\n")
    for grid in grids:
        with open(os.path.join(args.out, grid, "grid.md")) as src:
            write_atomic(os.path.join(args.dest, f"grid_{grid}.md"), src.read())
    write_json(os.path.join(args.dest, "summary.json"), summary, indent=1, default=str)
    print(tables(summary))
    return summary


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
