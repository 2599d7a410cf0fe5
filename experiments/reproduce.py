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
row asked for again (same dataset and one-hot mode, or same folder) is reused, with no training, when the
same configuration, flags and commit made it (its config.json and made_by.json say so), so the same command
run twice succeeds and prints the table; one made otherwise is refused before anything trains, naming what
differs; --overwrite retrains it and replaces that row (and its folder) alone.

Every file is written atomically (ctrain.storage), and the top-level results.json is derived from the
per-row <row>/results.json files: a run or --tables-only rebuilds it when it is missing or damaged (a damaged
one is kept as results.json.damaged). A damaged row file is named, with how to recover, and never overwritten.
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
from experiments.configs import (CONFIGS, OFFLINE_NAMES, SYNTHETIC_NAMES, flat_dict, get_config, override,
                                 replace_path)
from experiments.pipeline import (check_distinct, check_output_file, command_checks, json_safe, load_data, run_command,
                                  run_label, run_metadata, train_and_evaluate, train_figure1, write_json)
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


def build_parser() -> argparse.ArgumentParser:
    """Returns reproduce's argument parser (every flag with its help; the module docstring as the epilog)."""
    parser = argparse.ArgumentParser(prog="python -m experiments.reproduce", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 1)[1])
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
    parser.add_argument("--out", default=os.path.join("results", "reproduce"),
                        help="folder of the results: one folder per row, results.json, metadata.json, table.md "
                             "(default: %(default)s)")
    parser.add_argument("--results-md", default=None, help="also write this RESULTS.md (and copy the figures beside it)")
    parser.add_argument("--readme", default=None,
                        help="also fill this README's headline table (between <!-- headline:start/end --> markers)")
    parser.add_argument("--no-plots", action="store_true", help="no figures (Figure 1 and the per-dataset plots)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--tables-only", action="store_true",
                        help="train nothing: rebuild results.json and table.md (and --results-md) from the rows in "
                             "--out")
    parser.add_argument("--overwrite", action="store_true",
                        help="retrain rows that --out already holds, replacing them (default: a row made by the same "
                             "configuration and commit is reused, one made otherwise is refused)")
    return parser


def main(argv=None) -> list[dict]:
    """Returns the results of every row in --out after this run: its own rows, the reused and the earlier ones."""
    args = build_parser().parse_args(argv)
    with command_checks():
        check_output_file("--results-md", args.results_md)
        if args.readme is not None and not os.path.isfile(args.readme):
            raise ValueError(f"--readme {args.readme!r} is not a file: the headline table is written into an "
                             "existing README between <!-- headline:start --> and <!-- headline:end -->")
        if args.tables_only:
            return rebuild_tables(args.out, args.results_md, args.readme)
        names = args.datasets or (list(CONFIGS) if args.full else list(SYNTHETIC_NAMES))
        t0 = time.perf_counter()
        # Every config is checked, and its data loaded and checked, before the first training: a typo fails at once.
        configs = [override(get_config(n), args.overrides) for n in names]
        check_distinct("--datasets", [c.data.name for c in configs])  # by config name: an alias repeats its dataset
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
        labels = [run_label(config, data) for config, data, _ in plan]
        now = run_metadata()
        # The rows --out holds already stay; one asked for again is reused if the same configuration and commit
        # made it, retrained with --overwrite, and refused otherwise, all decided now, before anything trains.
        stored = stored_rows(args.out, replaceable=[f for _, _, f in plan] if args.overwrite else ())
        reused = [] if args.overwrite else reusable_rows(args.out, plan, labels, stored, args, now)
    todo = [(entry, label) for entry, label in zip(plan, labels) if label not in reused]
    folders = {folder: _label(row) for folder, row in stored.rows.items()}
    # Replaced: the rows run again, and the rows of the folders rewritten (another row label in the same folder).
    replaced = {label for _, label in todo} | {folders[f] for (_, _, f), _ in todo if f in folders}
    minutes = sum(config.expected_minutes for (config, _, _), _ in todo)
    print(f"== {len(todo)} row(s) to train into {os.path.abspath(args.out)}"
          + (f", {len(reused)} reused" if reused else "")
          + (f": expected ~{minutes:g} min on a 2-core CPU" if todo else ""), flush=True)
    os.makedirs(args.out, exist_ok=True)
    command = "python -m experiments.reproduce " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    meta = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S"), **now}
    new = []
    for (config, data, folder), label in todo:
        mode = f", one-hot mode {config.train.search.categorical}" if data.schema.groups else ""
        print(f"== {folder}: seeds {list(config.seeds)}, {config.train.epochs} epochs{mode} "
              f"(expected ~{config.expected_minutes:g} min on a 2-core CPU)", flush=True)
        # The row's folder goes (with --overwrite the replaced row's files, e.g. of a seed it had and this run has
        # not; else an unfinished row's), only now, so a failure before this row keeps it.
        for old in [folder] + [f for f, old_label in folders.items() if old_label == label and f != folder]:
            shutil.rmtree(os.path.join(args.out, old), ignore_errors=True)
        row = train_and_evaluate(config, os.path.join(args.out, folder), data=data, ablation=args.ablation,
                                 baselines=args.baselines, progress=not args.quiet, plots=not args.no_plots)
        write_json(os.path.join(args.out, folder, MADE_BY), made_by(now, command))
        new.append(row)
    earlier_meta = stored.metadata
    figure1 = None
    ls = [(c, d) for ((c, d, _), _) in todo if c.data.name == "linearly_separable"]
    if ls and not args.no_plots:
        t1 = time.perf_counter()
        figure1 = train_figure1(os.path.join(args.out, "figures", "figure1_linear.png"), *ls[0],
                                progress=not args.quiet)
        figure1["wall_s"] = time.perf_counter() - t1
    results = merge_results(stored.results, new, replaced)
    if new or not earlier_meta:
        meta.update(wall_time_s=time.perf_counter() - t0, skipped=skipped, figure1=figure1,
                    per_dataset_wall_s={r["label"]: r["timings"]["total_s"] for r in new})
        meta = merge_metadata(earlier_meta, meta, replaced, ran={c.data.name for c in configs})
    else:
        meta = earlier_meta  # nothing trained: the record of the commands that made the rows stays as it was
    write_outputs(args.out, results, meta)
    if skipped:
        print("\nSkipped (data not available): " + ", ".join(sorted(skipped)))
    if args.results_md:
        write_results_md(args.results_md, meta, results,
                         sensitivity=dataclasses.asdict(plan[0][0].sensitivity) if plan else None)
    if args.readme:
        write_readme_headline(args.readme, make_headline(results), meta)
    return results


# Beside each row's results.json: the commit and command that made it, so that a later run knows whether to reuse it.
MADE_BY = "made_by.json"


def made_by(now: dict, command: str) -> dict:
    """Returns the record of who made a row: {"git_commit", "git_dirty", "command"}."""
    return {"git_commit": now.get("git_commit"), "git_dirty": now.get("git_dirty"), "command": command}


def write_outputs(out: str, results: list[dict], meta: dict) -> str:
    """Returns the tables' text after writing table.md, results.json and metadata.json of `out` and printing it."""
    table = all_tables(results, ablation=any(r.get("ablation") for r in results), figure1=meta.get("figure1"))
    # table.md first, results.json (the rows' record) last: a failed write leaves the earlier record whole.
    write_atomic(os.path.join(out, "table.md"), table + "\n")
    write_json(os.path.join(out, "metadata.json"), meta)
    write_json(os.path.join(out, "results.json"), results)
    print(table)
    return table


def _differences(old: dict, new: dict) -> list[str]:
    """Returns "path old -> new" for every dotted setting that differs between two config trees."""
    a, b = flat_dict(old), flat_dict(new)
    return [f"{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def reusable_rows(out: str, plan, labels, stored: "StoredRows", args, now: dict) -> list[str]:
    """Returns the labels of the planned rows that `out` holds made by the same configuration, flags and commit.

    Raises ValueError naming the first such row made otherwise (what differs, and how to go on)."""
    by_label = {_label(row): folder for folder, row in stored.rows.items()}
    reused = []
    for (config, _, folder), label in zip(plan, labels):
        there = folder if folder in stored.rows else by_label.get(label)
        if there is None:
            continue
        where = os.path.join(out, there)
        row = stored.rows[there]
        why = []
        try:
            old_config = _read_json(os.path.join(where, "config.json"))
            # as config.json holds it: strict JSON, a non-finite value as null
            why += _differences(old_config, json.loads(json.dumps(json_safe(config.to_dict()))))
        except (OSError, ValueError):
            why.append("its config.json is missing or damaged")
        for flag, was in (("--ablation", bool(row.get("ablation"))), ("--baselines", bool(row.get("versus")))):
            if was != getattr(args, flag[2:]):
                why.append(f"{flag} {'on' if was else 'off'} -> {'on' if not was else 'off'}")
        try:
            commit = _read_json(os.path.join(where, MADE_BY)).get("git_commit")
        except (OSError, ValueError, AttributeError):
            commit = None
        if commit != now.get("git_commit") or commit is None:
            why.append(f"commit {str(commit)[:10] if commit else 'unknown'} -> {str(now.get('git_commit'))[:10]}")
        if why:
            raise ValueError(f"{where} holds a finished row for {label} made otherwise ({'; '.join(why[:4])}"
                             f"{'; ...' if len(why) > 4 else ''}); nothing was trained: pass --overwrite to retrain "
                             "it, leave it out of --datasets, or choose another --out")
        dirty = " (uncommitted changes in the working tree)" if now.get("git_dirty") else ""
        print(f"== {there}: reusing the finished row in {where}, made by the same configuration and commit "
              f"{str(commit)[:10]}{dirty}; pass --overwrite to retrain it", flush=True)
        reused.append(label)
    return reused


def rebuild_tables(out: str, results_md: str | None = None, readme: str | None = None) -> list[dict]:
    """Returns the rows stored in `out` after rewriting its results.json and table.md (and results_md) from the
    per-row results; trains nothing. A row results.json lacks (lost, or the file damaged) is brought back."""
    stored = stored_rows(out)
    if not stored.results:
        raise FileNotFoundError(f"--tables-only needs a finished run in {out!r}: it holds no <row>/results.json")
    now = run_metadata()
    meta = stored.metadata or {**now, "command": "(not recorded: metadata.json was missing)", "figure1": None}
    meta = {**meta, "tables_commit": now["git_commit"], "tables_dirty": now["git_dirty"]}
    write_outputs(out, stored.results, meta)
    results = stored.results
    if results_md:
        sensitivity = None
        for name in sorted(os.listdir(out)):  # the runs' own configs (IG settings for the notes)
            path = os.path.join(out, name, "config.json")
            if os.path.isfile(path) and sensitivity is None:
                sensitivity = _read_json(path).get("sensitivity")
        if sensitivity is None and stored.results:
            # A stored run kept without its row folders' config.json: the IG settings of the first row's dataset
            # as its config gives them now, and the notes say where they came from.
            first = min(stored.rows, key=lambda folder: folder)
            sensitivity = {**dataclasses.asdict(get_config(stored.rows[first]["dataset"]).sensitivity),
                           "source": f"experiments/configs.py ({first}): the stored rows hold no config.json"}
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


def damage(path: str, kind: type = list):
    """Returns (the file's JSON value, None) if `path` holds a JSON `kind`, else (None, what is wrong with it)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        return None, f"unreadable: {err.strerror or err}"
    if not raw.strip():
        return None, "empty"
    try:
        value = json.loads(raw)
    except ValueError as err:
        return None, f"not JSON, e.g. cut short: {err}"
    if not isinstance(value, kind):
        return None, f"a JSON {type(value).__name__}, not a {kind.__name__}"
    return value, None


def set_aside(path: str) -> str:
    """Returns the name the damaged file `path` was renamed to (`<path>.damaged`, numbered if that is taken)."""
    aside, n = f"{path}.damaged", 1
    while os.path.exists(aside):
        n += 1
        aside = f"{path}.damaged{n}"
    os.replace(path, aside)
    return aside


@dataclasses.dataclass
class StoredRows:
    """What an --out holds: `rows` {folder: its results.json row}, `results` (the rows in the stored order) and
    `metadata` (metadata.json, or None)."""
    rows: dict
    results: list
    metadata: dict | None


def stored_rows(out: str, replaceable=()) -> StoredRows:
    """Returns the finished rows of `out`, read from the per-row `<folder>/results.json` files (the top-level
    results.json only gives their order); a folder without results.json is an unfinished row and is left out.

    A damaged top-level results.json is renamed to results.json.damaged, and said so; it is rebuilt by the caller.
    A damaged row file, or metadata.json, raises ValueError naming it and how to recover, unless the row's folder is
    in `replaceable` (it is about to be retrained).
    """
    rows, damaged = {}, []
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        path = os.path.join(out, name, "results.json")
        if not os.path.isfile(path):
            continue
        row, why = damage(path, dict)
        if why is None and "dataset" not in row:
            why = "a dict without a dataset"
        if why is None:
            rows[name] = row
        elif name not in replaceable:
            damaged.append((path, why))
    if damaged:
        path, why = damaged[0]
        raise ValueError(f"{path} is damaged ({why}): its row cannot be read; retrain it with --overwrite "
                         f"(with its dataset in --datasets), or move {os.path.dirname(path)!r} out of {out!r} to drop "
                         "it"
                         + (f" ({len(damaged) - 1} more damaged row file(s))" if len(damaged) > 1 else ""))
    meta_path, metadata = os.path.join(out, "metadata.json"), None
    if os.path.exists(meta_path):
        metadata, why = damage(meta_path, dict)
        if why:
            raise ValueError(f"{meta_path} is damaged ({why}): the record of the commands that made the rows is lost; "
                             "move it away (e.g. to metadata.json.damaged) and run again to record this run alone")
    order = []
    top = os.path.join(out, "results.json")
    if os.path.exists(top):
        listed, why = damage(top, list)
        if why:
            aside = set_aside(top)
            print(f"== {top} was damaged ({why}): kept as {aside}; results.json is rebuilt from the per-row "
                  "files", flush=True)
        else:
            order = [_label(r) for r in listed if isinstance(r, dict) and "dataset" in r]
            lost = [label for label in order if label not in {_label(r) for r in rows.values()}]
            if lost:
                print(f"== rows in {top} without their folder's results.json are dropped: {', '.join(lost)}",
                      flush=True)
    position = {label: i for i, label in enumerate(order)}
    results = sorted(rows.values(), key=lambda r: position.get(_label(r), len(position)))
    return StoredRows(rows, results, metadata)


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
    sys.exit(run_command(main))
