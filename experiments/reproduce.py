"""Reproduce the paper's tables and figures: train BL and CT per dataset and seed, evaluate, print the comparison.

    python -m experiments.reproduce                      # four synthetic sets, 5 seeds (a few minutes, 2-core CPU)
    python -m experiments.reproduce --full               # every dataset whose data is available offline or locally
    python -m experiments.reproduce --datasets adult --set seeds=0 --set train.epochs=50 --ablation
    python -m experiments.reproduce --datasets adult german --categorical-modes relaxed straight_through
    python -m experiments.reproduce --full --categorical-modes relaxed straight_through --results-md RESULTS.md
    python -m experiments.reproduce --datasets moons digits --baselines   # + PGD-AT and JEM rows, CT vs each
    python -m experiments.reproduce --datasets mnist_5k --set model=lenet5 --out results/reproduce  # the LeNet row

Produces Table 1 (IP, IP*, cost with protected features, validity, accuracy, mechanism health), Table 2
(IG sensitivity to the protected features), Tables 7 and 8a (raw means with CIs; cost without
constraints), validity under constraints, robust accuracy over all seeds, Figure 1 (linear models, when
linearly_separable runs) and Figure 3 (IG maps, for the image sets). `--full` runs every dataset whose
data is available, the MNIST row on the offline 5,000-image subset (`mnist_5k`). `--categorical-modes`
runs the datasets with one-hot groups (Adult, German) once per one-hot search mode; each such row is
labelled with its mode ("adult (relaxed)"), and a dataset without one-hot groups runs once (the mode
changes nothing there). `--baselines` adds two baselines the paper discusses but does not run, PGD
adversarial training and JEM-style training, with the same seeds and protocol, robust accuracy for every
model, and one sentence per dataset and baseline saying whether CT beats it, with the 99% CI.

Every dataset's config is checked, and its data loaded and checked against it, before the first model
is trained, so a bad --set fails at once. Writes to --out (default results/reproduce): metadata.json
(versions, commit, device, wall times, command), one folder per run (config, histories, per-seed
protocol records, IG rounds, robustness per seed, plots, results.json), figures/, table.md and
results.json (strict JSON: a figure that cannot be computed is null with a note saying why; the table
shows it as "n/a [k]" with the reason in note k), and prints the tables beside the paper's published
numbers. With --results-md the figures it links are copied to experiments/results_figures/ beside that file.
The text of every table is experiments/tables.py's; this module runs the rows and stores them.

A model other than the paper's MLP (`--set model=lenet5`, or `linear`) makes its own row, labelled by the model
("mnist_5k (LeNet-5)") in its own folder, beside the MLP's row when run into the same --out; the paper tabulates
its MLP only, so such a row has no paper figures beside it and stays out of Table 1 and its average. The LeNet row
needs a GPU: on a 2-core CPU one LeNet CT epoch of mnist_5k takes about 40 s per seed against the MLP's fraction
of a second, so the row would take about 8 hours there (extrapolated from 3 measured epochs, not run).

A run into an --out that already holds finished runs adds its rows beside theirs: results.json, metadata.json
and the tables then cover every row there, and metadata.json's `runs` lists the commands that made them. A
row that is there already (same dataset and one-hot mode, or same folder) is refused before anything trains,
unless --overwrite, which replaces that row (and its folder) alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import sys
import time

from ctrain.search import CATEGORICAL_MODES
from ctrain.storage import write_atomic
from experiments import paper_results
from experiments.configs import CONFIGS, OFFLINE_NAMES, SYNTHETIC_NAMES, get_config, override, replace_path
from experiments.pipeline import (train_figure1, check_distinct, check_output_file, load_data, refuse_overwrite, run_label,
                                 run_metadata, train_and_evaluate, write_json)
from experiments.tables import all_tables, make_headline, write_readme_headline, write_results_md


def run_plan(configs, loaded: dict, modes) -> list[tuple]:
    """Returns [(config, data, folder name)]: each config once, or once per one-hot mode if its data has one-hot groups."""
    plan = []
    for config in configs:
        data = loaded[config.data.name]
        # Another model's rows live beside the MLP's: their own folder, as their own label (pipeline.run_label).
        name = config.data.name if config.model == paper_results.PAPER_MODEL else f"{config.data.name}-{config.model}"
        if modes and data.schema.groups:
            for mode in modes:
                # A mode other than the config's own is tested in that mode (protocol.search.categorical belongs to
                # the config's own training mode: the reference's snapped test-time search for its relaxed training).
                tested = config.protocol.search.categorical if mode == config.train.search.categorical else mode
                moded = replace_path(replace_path(config, "train.search.categorical", mode),
                                     "protocol.search.categorical", tested)
                plan.append((moded, data, f"{name}-{mode}"))
        else:
            plan.append((config, data, name))
    return plan


def main(argv=None) -> list[dict]:
    """Returns the results of every row in --out after this run: its own rows and the earlier ones kept."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--datasets", nargs="+", default=None, help=f"any of {sorted(CONFIGS)}")
    parser.add_argument("--full", action="store_true", help="every dataset whose data can be loaded")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override at a dotted path, applied to every dataset (repeatable), e.g. "
                             "--set seeds=0,1 --set train.epochs=50 (experiments/configs.py lists the tree)")
    parser.add_argument("--categorical-modes", nargs="+", default=None, choices=CATEGORICAL_MODES, metavar="MODE",
                        help="run the datasets with one-hot groups once per mode (rows labelled by mode), e.g. "
                             "relaxed straight_through; default: each config's own train.search.categorical")
    parser.add_argument("--ablation", action="store_true", help="also train CD (no adversarial) and AR (no div/reg)")
    parser.add_argument("--baselines", action="store_true",
                        help="also train PGD adversarial training and JEM-style training, compared with CT")
    parser.add_argument("--out", default=os.path.join("results", "reproduce"))
    parser.add_argument("--results-md", default=None, help="also write this RESULTS.md (and copy the figures beside it)")
    parser.add_argument("--readme", default=None,
                        help="also fill this README's headline table (between <!-- headline:start/end --> markers)")
    parser.add_argument("--no-plots", action="store_true", help="no figures (Figure 1 and the per-dataset plots)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--tables-only", action="store_true",
                        help="train nothing: rebuild table.md (and --results-md) from the results in --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="rerun rows that --out already holds, replacing them (default: refused before training)")
    args = parser.parse_args(argv)
    check_output_file("--results-md", args.results_md)
    if args.readme is not None and not os.path.isfile(args.readme):
        raise ValueError(f"--readme {args.readme!r} is not a file: the headline table is written into an existing "
                         "README between <!-- headline:start --> and <!-- headline:end -->")
    if args.tables_only:
        return rebuild_tables(args.out, args.results_md, args.readme)

    names = args.datasets or (list(CONFIGS) if args.full else list(SYNTHETIC_NAMES))
    t0 = time.perf_counter()
    # Every config is checked, and its data loaded and checked, before the first training: a typo fails at once.
    configs = [override(get_config(n), args.overrides) for n in names]
    check_distinct("--datasets", [c.data.name for c in configs])  # by config name: an alias repeats its dataset too
    if args.categorical_modes:
        check_distinct("--categorical-modes", args.categorical_modes)
        for mode in args.categorical_modes:
            replace_path(configs[0], "train.search.categorical", mode)  # the configs' own check of the mode
    loaded, skipped = {}, {}
    for config in configs:
        try:
            loaded[config.data.name] = load_data(config)
        except FileNotFoundError as err:
            if not (args.full and config.data.name not in OFFLINE_NAMES):
                raise
            skipped[config.data.name] = str(err).splitlines()[0]
            print(f"== {config.data.name}: skipped: {skipped[config.data.name]}", flush=True)
    plan = run_plan([c for c in configs if c.data.name in loaded], loaded, args.categorical_modes)
    # The rows --out holds already stay; one asked for again is refused now, before anything trains.
    earlier, folders, _ = stored_runs(args.out)
    labels = [run_label(config, data) for config, data, _ in plan]
    there = {_label(r) for r in earlier}
    clashes = [label for (_, _, folder), label in zip(plan, labels) if label in there or folder in folders]
    if not args.overwrite:
        refuse_overwrite(args.out, clashes, "pass --overwrite to replace them, or leave them out of --datasets "
                                            "(rows already there stay beside the new ones), or choose another --out")
    # Replaced: the rows run again, and the rows of the folders rewritten (another row label in the same folder).
    replaced = set(labels) | {folders[folder] for _, _, folder in plan if folder in folders}
    meta_path = os.path.join(args.out, "metadata.json")
    earlier_meta = _read_json(meta_path) if earlier and os.path.isfile(meta_path) else None
    os.makedirs(args.out, exist_ok=True)
    command = "python -m experiments.reproduce " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    meta = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S"), **run_metadata()}
    new = []
    for (config, data, folder), label in zip(plan, labels):
        mode = f", one-hot mode {config.train.search.categorical}" if data.schema.groups else ""
        print(f"== {folder}: seeds {list(config.seeds)}, {config.train.epochs} epochs{mode} "
              f"(expected ~{config.expected_minutes:g} min on a 2-core CPU)", flush=True)
        # --overwrite: the replaced row's folder goes (files of the old run, e.g. a seed it had and this run has
        # not, would otherwise sit beside the new ones), only now, so a failure before this row keeps it.
        for old in [f for f, old_label in folders.items() if f == folder or old_label == label]:
            shutil.rmtree(os.path.join(args.out, old), ignore_errors=True)
        new.append(train_and_evaluate(config, os.path.join(args.out, folder), data=data,
                                      ablation=args.ablation, baselines=args.baselines, progress=not args.quiet,
                                      plots=not args.no_plots))
    figure1 = None
    ls = [(c, d) for c, d, _ in plan if c.data.name == "linearly_separable"]
    if ls and not args.no_plots:
        t1 = time.perf_counter()
        figure1 = train_figure1(os.path.join(args.out, "figures", "figure1_linear.png"), *ls[0],
                                  progress=not args.quiet)
        figure1["wall_s"] = time.perf_counter() - t1
    meta.update(wall_time_s=time.perf_counter() - t0, skipped=skipped, figure1=figure1,
                per_dataset_wall_s={r["label"]: r["timings"]["total_s"] for r in new})
    results = merge_results(earlier, new, replaced)
    meta = merge_metadata(earlier_meta, meta, replaced, ran={c.data.name for c in configs})
    table = all_tables(results, ablation=any(r.get("ablation") for r in results), figure1=meta["figure1"])
    write_atomic(os.path.join(args.out, "table.md"), table + "\n")
    write_json(os.path.join(args.out, "results.json"), results)
    write_json(os.path.join(args.out, "metadata.json"), meta)
    print(table)
    if skipped:
        print("\nSkipped (data not available): " + ", ".join(sorted(skipped)))
    if args.results_md:
        write_results_md(args.results_md, meta, results,
                         sensitivity=dataclasses.asdict(plan[0][0].sensitivity) if plan else None)
    if args.readme:
        write_readme_headline(args.readme, make_headline(results), meta)
    return results


def rebuild_tables(out: str, results_md: str | None = None, readme: str | None = None) -> list[dict]:
    """Returns the results stored in `out` after rewriting its table.md (and results_md) from them; trains nothing.

    A finished dataset folder whose row results.json lacks (dropped by a version that replaced the file on every
    run, or left by an interrupted run) is added back to results.json and the tables.
    """
    paths = {name: os.path.join(out, name) for name in ("results.json", "metadata.json")}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"--tables-only needs a finished run in {out!r}; missing {missing}")
    results, _, recovered = stored_runs(out)
    if recovered:
        print(f"Rows recovered from their folders (not in results.json): {', '.join(recovered)}", flush=True)
        write_json(paths["results.json"], results)
    now = run_metadata()
    meta = {**_read_json(paths["metadata.json"]), "tables_commit": now["git_commit"], "tables_dirty": now["git_dirty"]}
    table = all_tables(results, ablation=any(r.get("ablation") for r in results), figure1=meta.get("figure1"))
    write_atomic(os.path.join(out, "table.md"), table + "\n")
    print(table)
    if results_md:
        sensitivity = None
        for name in sorted(os.listdir(out)):  # the runs' own configs (IG settings for the notes)
            path = os.path.join(out, name, "config.json")
            if os.path.isfile(path) and sensitivity is None:
                sensitivity = _read_json(path).get("sensitivity")
        meta = {**meta, "tables_command": "python -m experiments.reproduce --tables-only --out "
                                          f"{shlex.quote(out)} --results-md {shlex.quote(results_md)}"}
        write_results_md(results_md, meta, results, sensitivity=sensitivity)
    if readme:
        meta = {**meta, "tables_command": "python -m experiments.reproduce --tables-only --out "
                                          f"{shlex.quote(out)} --readme {shlex.quote(readme)}"}
        write_readme_headline(readme, make_headline(results), meta)
    return results


def _label(result: dict) -> str:
    return result.get("label", result["dataset"])


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def stored_runs(out: str) -> tuple[list[dict], dict[str, str], list[str]]:
    """Returns (results, {folder: row label}, recovered folders) of the finished runs in `out`: results.json's rows,
    then those of any finished dataset folder whose row results.json lacks (the recovered folders)."""
    path = os.path.join(out, "results.json")
    results = _read_json(path) if os.path.isfile(path) else []
    labels = {_label(r) for r in results}
    folders, recovered = {}, []
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        try:
            res = _read_json(os.path.join(out, name, "results.json"))
        except (OSError, ValueError):  # no results.json, or half-written: not a finished row
            continue
        if not isinstance(res, dict) or "dataset" not in res:
            continue
        folders[name] = _label(res)
        if folders[name] not in labels:
            results.append(res)
            labels.add(folders[name])
            recovered.append(name)
    return results, folders, recovered


def merge_results(earlier: list[dict], new: list[dict], replaced=()) -> list[dict]:
    """Returns earlier's rows, each with the new row of its label in its place (so the table keeps its order), less
    the other `replaced` labels, then the new rows that are not there yet."""
    fresh = {_label(r): r for r in new}
    merged = []
    for r in earlier:
        if _label(r) in fresh:
            merged.append(fresh.pop(_label(r)))
        elif _label(r) not in replaced:
            merged.append(r)
    return merged + list(fresh.values())


# What metadata.json records of each command whose rows are in the folder (its `runs`).
RUN_KEYS = ("command", "started", "wall_time_s", "git_commit", "git_dirty", "device")


def merge_metadata(earlier: dict | None, meta: dict, replaced=(), ran=()) -> dict:
    """Returns this run's metadata over the earlier one of the same --out: `runs` holds every command with a row still
    there (with its rows), `command` chains them (run in order, they remake the folder), `started`, `wall_time_s`,
    per-row wall times, skipped datasets and Figure 1 cover the rows of every run; versions and machine are this run's.

    `replaced`: the row labels this run replaced; `ran`: the datasets it was asked for."""
    this = {**{k: meta.get(k) for k in RUN_KEYS}, "rows": list(meta["per_dataset_wall_s"])}
    if not earlier:
        return {**meta, "runs": [this]}
    runs = []
    for run in earlier.get("runs") or [{**{k: earlier.get(k) for k in RUN_KEYS},
                                        "rows": list(earlier.get("per_dataset_wall_s", {}))}]:
        rows = [r for r in run["rows"] if r not in replaced]
        if rows:
            runs.append({**run, "rows": rows})
    runs.append(this)
    figure1 = meta.get("figure1") or earlier.get("figure1")
    if not meta.get("figure1") and figure1 and figure1.get("dataset") in replaced:
        figure1 = None  # drawn from the models this run replaced
    return {**meta, "runs": runs, "command": " && ".join(r["command"] for r in runs), "started": runs[0]["started"],
            "wall_time_s": sum(r.get("wall_time_s") or 0.0 for r in runs), "figure1": figure1,
            "per_dataset_wall_s": {**{k: v for k, v in earlier.get("per_dataset_wall_s", {}).items()
                                      if k not in replaced}, **meta["per_dataset_wall_s"]},
            "skipped": {**{k: v for k, v in (earlier.get("skipped") or {}).items() if k not in ran},
                        **(meta.get("skipped") or {})}}


if __name__ == "__main__":
    main()
