"""What every study shares: a resumable loop of rows, one JSON file per row under --out, and its settings file."""
from __future__ import annotations

import argparse
import json
import os
from typing import Callable, Sequence

from ctrain.progress import progress as progress_bar
from ctrain.search import WALK_PAST_TAU, SearchConfig
from experiments import pipeline


# The training searches the studies compare: the reproduction's (the reference's raw gradient steps in the data's
# units, stop at τ), the walk past τ (clipped steps in σ units, all T of them; training's default before the
# training-search study) and explain's (L∞-normalised steps in σ units, stop at τ; training's default since).
SEARCHES = ("parity", "walk", "explain")


def training_search(name: str, tau: float, categorical: str | None = None) -> SearchConfig | None:
    """Returns the training search `name` at τ (None for "parity": the config's own search, the reference's).

    `categorical` sets the one-hot mode of "walk" and "explain" (None: SearchConfig's default, straight-through).
    """
    onehot = {} if categorical is None else {"categorical": categorical}
    if name == "parity":
        return None
    if name == "walk":
        return WALK_PAST_TAU.replace(threshold=tau, **onehot)
    if name == "explain":
        return SearchConfig(threshold=tau, **onehot)
    raise ValueError(f"unknown training search {name!r}; choose from {SEARCHES}")


def check_settings(out: str, settings: dict) -> None:
    """Records `settings` in out/settings.json, or raises if --out holds rows run with other settings."""
    os.makedirs(os.path.join(out, "rows"), exist_ok=True)
    path = os.path.join(out, "settings.json")
    if os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)
        if recorded != json.loads(json.dumps(settings)):
            raise ValueError(f"{out} holds rows run with {recorded}, not {settings}: use another --out")
    pipeline.write_json(path, settings)


def run_rows(out: str, plan: Sequence[tuple], row_name: Callable[[tuple], str], run: Callable[[tuple], dict],
             write_outputs: Callable[[str, list[dict]], None], *, progress: bool = True) -> list[dict]:
    """Returns the rows of `plan`, running each one not yet stored under out/rows (one JSON file per row).

    After every row the study's outputs are rewritten from all rows so far, so a long run can be read as it goes.
    """
    rows = []
    bar = progress_bar(progress, len(plan), "rows", unit="row")
    for done, item in enumerate(plan, 1):
        path = os.path.join(out, "rows", row_name(item) + ".json")
        if not os.path.exists(path):
            pipeline.write_json(path, run(item))
        with open(path) as f:
            rows.append(json.load(f))
        write_outputs(out, rows)
        if bar:
            bar.update(done, {"row": row_name(item)})
    if bar:
        bar.close()
    return rows


def mean_or_none(values) -> float | None:
    """Returns the mean of the finite values, or None if there is none."""
    values = [v for v in values if v is not None and v == v and abs(v) != float("inf")]
    return sum(values) / len(values) if values else None


def rewrite_outputs(out: str, write_outputs: Callable[[str, list[dict]], None]) -> list[dict]:
    """Returns the rows stored under out/rows (sorted by file name) after rewriting the study's outputs from them."""
    folder = os.path.join(out, "rows")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{out} holds no rows folder: nothing to rebuild the tables from")
    rows = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                rows.append(json.load(f))
    write_outputs(out, rows)
    return rows


def add_arguments(parser: argparse.ArgumentParser, *, out: str, seeds: Sequence[int]) -> None:
    """Adds the arguments every study takes: --seeds, --epochs, --out, --quiet and --tables-only."""
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds),
                        help="the training seeds, at least two (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, help="default: each dataset config's")
    parser.add_argument("--out", default=out, help="folder of the rows (rows/*.json) and tables (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--tables-only", action="store_true", help="rewrite the study's tables from --out's rows")


def check_arguments(parser: argparse.ArgumentParser, args) -> None:
    """Returns None; exits through `parser.error` on repeated or too few seeds, or --epochs below 1."""
    if len(set(args.seeds)) != len(args.seeds) or len(args.seeds) < 2:
        parser.error("--seeds must be at least two distinct seeds (the intervals are over seeds)")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
