"""A reproduction's results folder: its per-row `<row>/results.json` files and who made them (`made_by.json`),
the top-level results.json and metadata.json derived from them, damaged files named and set aside, and the merging
of a new run's rows into an earlier run's. `experiments.reproduce` plans and runs; this module reads and writes.
"""
from __future__ import annotations

import dataclasses
import json
import os

from ctrain.storage import write_atomic
from experiments.configs import flat_dict
from experiments.pipeline import json_safe, write_json
from experiments.tables import all_tables


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
    by_label = {row_label(row): folder for folder, row in stored.rows.items()}
    reused = []
    for (config, _, folder), label in zip(plan, labels):
        there = folder if folder in stored.rows else by_label.get(label)
        if there is None:
            continue
        where = os.path.join(out, there)
        row = stored.rows[there]
        why = []
        try:
            old_config = read_json(os.path.join(where, "config.json"))
            # as config.json holds it: strict JSON, a non-finite value as null
            why += _differences(old_config, json.loads(json.dumps(json_safe(config.to_dict()))))
        except (OSError, ValueError):
            why.append("its config.json is missing or damaged")
        for flag, was in (("--ablation", bool(row.get("ablation"))), ("--baselines", bool(row.get("versus")))):
            if was != getattr(args, flag[2:]):
                why.append(f"{flag} {'on' if was else 'off'} -> {'on' if not was else 'off'}")
        try:
            commit = read_json(os.path.join(where, MADE_BY)).get("git_commit")
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


def row_label(result: dict) -> str:
    """Returns a row's label: its own, else its dataset's name."""
    return result.get("label", result["dataset"])


def read_json(path: str):
    """Returns the JSON value stored in `path`."""
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
            order = [row_label(r) for r in listed if isinstance(r, dict) and "dataset" in r]
            lost = [label for label in order if label not in {row_label(r) for r in rows.values()}]
            if lost:
                print(f"== rows in {top} without their folder's results.json are dropped: {', '.join(lost)}",
                      flush=True)
    position = {label: i for i, label in enumerate(order)}
    results = sorted(rows.values(), key=lambda r: position.get(row_label(r), len(position)))
    return StoredRows(rows, results, metadata)


def merge_results(earlier: list[dict], new: list[dict], replaced=()) -> list[dict]:
    """Returns earlier's rows, each with the new row of its label in its place (so the table keeps its order), less
    the other `replaced` labels, then the new rows that are not there yet."""
    fresh = {row_label(r): r for r in new}
    merged = []
    for r in earlier:
        if row_label(r) in fresh:
            merged.append(fresh.pop(row_label(r)))
        elif row_label(r) not in replaced:
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

