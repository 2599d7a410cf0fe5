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
import os
import shlex
import shutil
import sys
import time

from ctrain.search import CATEGORICAL_MODES
from experiments import paper_results
from experiments.configs import (CONFIGS, OFFLINE_NAMES, SYNTHETIC_NAMES, get_config, override,
                                 replace_path)
from experiments.pipeline import (check_distinct, check_output_file, command_checks, load_data, run_command,
                                  run_label, run_metadata, train_and_evaluate, train_figure1, write_json)
from experiments.runs import (MADE_BY, made_by, merge_metadata, merge_results, read_json, reusable_rows,
                             row_label, stored_rows, write_outputs)
from experiments.tables import make_headline, write_readme_headline, write_results_md


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
    folders = {folder: row_label(row) for folder, row in stored.rows.items()}
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
                sensitivity = read_json(path).get("sensitivity")
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


if __name__ == "__main__":
    sys.exit(run_command(main))
