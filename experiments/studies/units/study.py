"""The units study: does counterfactual training's effect depend on the units of the features?

    python -m experiments.studies.units.study          # synthetic sets + German, raw / standardised / x0.1 / x10
    python -m experiments.studies.units.study --datasets circles --copies raw standardized --arms paper units --seeds 0
    python -m experiments.studies.units.study --quick  # circles only, 2 copies, 20 epochs (~2 min, 2-core CPU)
    python -m experiments.studies.units.study --datasets adult --copies raw standardized   # ~8 min, 2-core CPU
    python -m experiments.studies.units.study --datasets linearly_separable --copies raw standardized \\
        --set weights.reg=0.1

For each dataset it trains BL and CT with the same seeds and initial weights on copies of the same data in
different units (`raw`: the units the data comes in; `standardized`: mean 0 and sd 1 per continuous feature;
`x0.1` and `x10`: the raw copy multiplied by a constant), once per configuration ("arm"):

- `paper`: the reference's absolute units: SGD steps of 0.1 on the input gradient, ε = 0.3, L1 cost, all in the
  data's own units; the model sees the data as given (paper parity).
- `units_clipped`: the units-aware walk (`ctrain.search.WALK_PAST_TAU`, training's default before the training-search
  study, experiments/studies/training_search/README.md):
  the model standardises its inputs with the training statistics, the search measures its steps, ε and cost in
  units of each feature's training standard deviation, takes the reference's gradient steps there clipped to L∞
  length η (Δ = −η∇/max(‖∇‖∞, 1), so a steep model walks where the reference's step jumps), and walks all T
  steps, on past τ, keeping its last iterate with p >= τ
  (`SearchConfig(units="std", step_rule="clipped", convergence="max_steps")`).
- `units_linf`: the same walk with fixed-length steps: the steepest feature moves η each step (L∞ length η).
- `units`: the walk with steps of L2 length η, the default before `units_clipped` (a feature's share of an L2
  step shrinks like 1/√D, so on Adult's 104 columns its training counterfactuals barely moved).
- `units_threshold`: the L2 search stopping at τ, as the reference's does (the default before the walk).
- `units_gradient`, `units_gradient_walk`: unclipped gradient steps in standard-deviation units (paper parity's
  step rule made unit-free; on a standardised copy `units_gradient` is paper parity with the model's one-hot
  columns 0/1), stopping at τ or walking on.
Every arm trains one-hot groups with `--categorical` (default: the library's straight-through; paper parity's
own mode is "relaxed", so on German and Adult the `paper` arm is then paper parity in its units, not in its
one-hot mode); `--categorical arm` gives each arm its own configuration's mode (`paper`: the reference's relaxed
groups, every other arm: the library's training default), so `paper` is paper parity in one-hot mode too.
Every arm is scored by the same scale-free evaluator: the paper's protocol (ECCo, T 50, τ 0.95, valid
counterfactuals only, relaxed one-hot groups unless `--eval-categorical`) with its search in standard-deviation
units, IP and cost as L1 reductions CT vs BL (a ratio, so a common rescaling cancels) and IP* with the
median-heuristic length scale. The fixed-ℓ IP* of the paper (ℓ = 5) is reported beside it. Mechanism health
comes from the last training epoch: share of matured counterfactuals, mean steps to reach τ, share of
one-step searches, `ae_moved`, `cf_in_ball`, mean energies.
A second table gives each arm's reductions minus the first arm's (`paper` by default) on the same copy, in
percentage points with a 99% bootstrap CI over the protocol rounds, which pair up across arms (same seeds, same data).

Writes `--out` (default results/units): units.json (every number) and units.md (the tables); expected time
for the default run: about 15 minutes on a 2-core CPU. An --out that holds a finished study (its units.json) is
refused before anything trains, unless --overwrite: its rows are compared with the first arm under one run's
seeds, rounds and settings, so another run's rows cannot join them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time

import jax
import numpy as np

from ctrain.data import load_dataset
from ctrain.evaluate import bootstrap_mean_ci, compare, evaluate_explainability, paired_rounds
from ctrain.search import CATEGORICAL_MODES, TRAINING_SEARCH, SearchConfig
from ctrain.storage import write_atomic, write_json
from experiments.configs import ExperimentConfig, get_config, override, path_in
from experiments.pipeline import (check_distinct, check_flags, check_output_file, command_checks, free_schema,
                                  refuse_overwrite, run_command, train_seeds)
from experiments.results_md import write_section

COPIES = ("raw", "standardized", "x0.1", "x10")
ARMS = {
    "paper": dict(search=dict(units="absolute", step_rule="gradient", convergence="threshold"),
                  normalize_inputs=False),
    # One change at a time, to find which absolute quantity makes the effect depend on the units:
    "inputs": dict(search=dict(units="absolute", step_rule="gradient", convergence="threshold"),
                   normalize_inputs=True),
    "std_search": dict(search=dict(units="std", step_rule="gradient", convergence="threshold"),
                       normalize_inputs=False),
    "normalized": dict(search=dict(units="std", step_rule="normalized", convergence="threshold"),
                       normalize_inputs=False),
    "units_threshold": dict(search=dict(units="std", step_rule="normalized", convergence="threshold"),
                            normalize_inputs=True),
    "units": dict(search=dict(units="std", step_rule="normalized", convergence="max_steps"), normalize_inputs=True),
    "units_linf": dict(search=dict(units="std", step_rule="normalized_linf", convergence="max_steps"),
                       normalize_inputs=True),
    # Gradient steps in standard-deviation units: paper parity's step rule made unit-free (on a standardised copy
    # `units_gradient` is paper parity with the model's one-hot columns 0/1), and the same clipped to L∞ length η
    # (`units_clipped`, the walk past τ that was training's default before the training-search study).
    "units_gradient": dict(search=dict(units="std", step_rule="gradient", convergence="threshold"),
                           normalize_inputs=True),
    "units_gradient_walk": dict(search=dict(units="std", step_rule="gradient", convergence="max_steps"),
                                normalize_inputs=True),
    "units_clipped": dict(search=dict(units="std", step_rule="clipped", convergence="max_steps"),
                          normalize_inputs=True),
}
# The ExperimentConfig paths this study reads (training and the evaluator), as prefixes. A --set anywhere else is
# refused, not ignored, so a field added to the config tree later cannot silently do nothing here.
READS = ("data.kwargs", "model", "learning_rate", "train.", "weights.", "protocol.")
# Paths that would do nothing here, or that a flag or an arm sets: checked before READS.
NOT_READ_BECAUSE = {
    "data.name": "use --datasets", "data.protected": "every feature is free in this study", "seeds": "use --seeds",
    "actionability.": "there is no actionability run", "sensitivity.": "there is no IG run",
    "robustness.": "there is no robustness run", "expected_minutes": "it only documents the reproduction",
    "train.search.units": "each arm sets it (--arms)", "train.search.step_rule": "each arm sets it (--arms)",
    "train.search.convergence": "each arm sets it (--arms)", "train.search.categorical": "use --categorical",
    "protocol.n_rounds": "use --rounds", "protocol.search.units": "the study's evaluator measures in standard deviations",
    "protocol.search.step_rule": "use --eval-step-rule", "protocol.search.categorical": "use --eval-categorical",
}


def unread_reason(path: str) -> str | None:
    """Returns why a --set of `path` would change nothing in this study (or which flag to use), None if it is read."""
    for prefix, why in NOT_READ_BECAUSE.items():
        if path_in(path, [prefix]):
            return why
    if not path_in(path, READS):
        return "the study does not read that field"
    return None


# `--categorical arm`: each arm trains one-hot groups in its own configuration's mode.
ARM_CATEGORICAL = {arm: (SearchConfig.reference().categorical if arm == "paper" else TRAINING_SEARCH.categorical)
                   for arm in ARMS}
HEALTH = ("converged", "search_steps", "one_step", "ae_moved", "cf_in_ball", "energy_cf", "energy_pos", "nonfinite")


def data_copy(config: ExperimentConfig, which: str):
    """Returns the config's dataset in the units `which` (see COPIES), with every feature free (plausibility runs)."""
    base = load_dataset(config.data.name, **dict(config.data.kwargs))
    base = free_schema(base).in_original_units()
    if which == "raw":
        return base
    if which == "standardized":
        return base.standardized()
    if which.startswith("x"):
        return base.affine(float(which[1:]))
    raise ValueError(f"unknown copy {which!r}; choose from {COPIES}")


def train_pair(config: ExperimentConfig, data, arm: str, seeds, epochs: int | None, progress: bool,
               categorical: str = TRAINING_SEARCH.categorical, standardize_onehot: bool = False):
    """Returns ({"BL": [(apply_fn, params)], "CT": [...]}, {"CT": histories}) trained with the arm's settings.

    `categorical` is the training search's one-hot mode (SearchConfig.categorical), the same for every arm.
    `standardize_onehot`: arms whose model standardises its inputs standardise one-hot columns too, instead of
    leaving them 0/1 (`Dataset.input_stats`); the study's tables made before this option existed were made so.
    """
    spec = ARMS[arm]
    model_kwargs = {}
    if spec["normalize_inputs"]:
        # One-hot columns stay 0/1 (Dataset.input_stats) unless the older tables' way is asked for.
        model_kwargs["input_stats"] = ((data.x_train.mean(0), data.x_train.std(0)) if standardize_onehot
                                       else data.input_stats())
    run = config.replace(seeds=tuple(seeds), train=config.train.replace(epochs=epochs or config.train.epochs))
    search = config.train.search.replace(categorical=categorical, **spec["search"])
    models, histories = {}, {}
    for label, objective in (("BL", "vanilla"), ("CT", "full")):
        models[label], histories[label], _ = train_seeds(run, data, objective, progress=progress, search=search,
                                                         model_kwargs=model_kwargs)
    return models, histories


def evaluate_pair(config: ExperimentConfig, data, models, seeds, rounds: int, step_rule: str = "gradient",
                  categorical: str = "relaxed") -> tuple[dict, dict]:
    """Returns (comparisons, ratios): CT-vs-BL comparisons of cost, IP, IP* (median ℓ) and IP* (ℓ = 5) pooled over
    seeds, and per metric the CT / BL ratio of every round ({round: ratio}) for comparing arms.

    `step_rule` is the evaluator's search step: the reference's "gradient" (step length grows with the model's
    input gradient) or "normalized" (steps of fixed length in standard deviations, whatever the model's slope).
    `categorical` is its one-hot mode (the reference's "relaxed", or e.g. "snap_state").
    """
    out, ratios = {}, {}
    for key, scale in (("median", "median"), ("fixed", config.protocol.mmd_length_scale)):
        summaries = []
        for i, seed in enumerate(seeds):
            search = config.protocol.search.replace(units="std", step_rule=step_rule, categorical=categorical)
            protocol = dataclasses.replace(config.protocol, n_rounds=rounds,
                                           n_individuals=min(config.protocol.n_individuals, 100),
                                           mmd_length_scale=scale, seed=seed, search=search)
            res = evaluate_explainability({"BL": models["BL"][i], "CT": models["CT"][i]}, data.x_test, data.y_test,
                                          num_classes=data.num_classes, protocol=protocol,
                                          constraints=data.constraints())
            summaries += [{**row, "round": i * rounds + row["round"]} for row in res["summary"]]
        metrics = ("ip_star",) if key == "fixed" else ("cost", "ip", "ip_star", "validity", "violations")
        for m in metrics:
            name = m if key == "median" else "ip_star_fixed"
            out[name] = compare(summaries, m, seed=0)
            ratios[name] = round_ratios(summaries, m)
    return out, ratios


def round_ratios(summary, metric: str) -> dict[int, float]:
    """Returns {round: CT / BL} of `metric` for every round where both models have a value and BL's is not 0."""
    return {r: ct / bl for r, (ct, bl) in paired_rounds(summary, metric).items() if bl != 0}


def seed_reductions(ratios: dict, rounds: int, n_seeds: int) -> list:
    """Returns each training seed's reduction −(mean r − 1)·100 over its own protocol rounds (None: no round).

    The pooled reduction's CI is over protocol rounds for fixed trained models; this spread is the training seeds'.
    """
    out = []
    for i in range(n_seeds):
        r = [v for k, v in ratios.items() if int(k) // rounds == i]
        out.append(float(-(np.mean(r) - 1) * 100) if r else None)
    return out


def arm_difference(ratios: dict, reference: dict, *, level: float = 0.99) -> dict:
    """Returns one arm's reduction minus the reference arm's, in points, over their common rounds, with its CI.

    A reduction is −(mean_j r_j − 1)·100 with r_j = CT_j / BL_j, so the difference is mean_j 100·(r_ref_j − r_j);
    the rounds pair up because both arms' models are scored with the same protocol seeds on the same data.
    {"difference", "ci_low", "ci_high", "significant", "n_rounds"}; None figures where fewer than two rounds pair.
    """
    common = sorted(set(ratios) & set(reference))
    d = np.array([100.0 * (reference[j] - ratios[j]) for j in common])
    out = {"difference": float(d.mean()) if len(d) else None, "ci_low": None, "ci_high": None, "significant": None,
           "n_rounds": len(d), "level": level}
    if len(d) >= 2:
        lo, hi = bootstrap_mean_ci(d, level=level, seed=0)
        out.update(ci_low=lo, ci_high=hi, significant=bool(lo > 0 or hi < 0))
    return out


def add_differences(results: list[dict], reference: str) -> None:
    """Adds r["differences"][reference] (metric -> arm_difference) to every result with a `reference` twin."""
    ref = {(r["dataset"], r["copy"]): r for r in results if r["arm"] == reference}
    for r in results:
        twin = ref.get((r["dataset"], r["copy"]))
        if twin is not None and r is not twin:
            r["differences"] = {reference: {key: arm_difference(r["ratios"][key], twin["ratios"][key])
                                            for key, _ in DIFF_METRICS}}


def health(histories) -> dict:
    """Returns the last epoch's mechanism figures averaged over seeds (nonfinite: summed over the run)."""
    out = {}
    for key in HEALTH:
        if key == "nonfinite":
            out[key] = int(sum(h[key] for run in histories for h in run))
        else:
            out[key] = float(np.mean([run[-1][key] for run in histories]))
    return out


def _cell(c) -> str:
    if c is None or c.get("reduction_pct") is None:
        return "n/a"
    return f"{c['reduction_pct']:.1f}{'*' if c['significant'] else ''}"


def _ct_over_bl(c) -> str:
    return "n/a" if c is None or c.get("treatment_mean") is None else \
        f"{c['treatment_mean']:.2f} / {c['baseline_mean']:.2f}"


def arm_label(result: dict) -> str:
    """Returns the arm's name for a table, with its one-hot training mode where arms trained in their own modes."""
    return f"{result['arm']} ({result['categorical']})" if result.get("per_arm_categorical") else result["arm"]


def tables(results: list[dict]) -> str:
    """Returns the markdown tables of the study: reductions and mechanism health per dataset, copy and arm."""
    lines = ["| data | copy | arm | cost −% | IP −% | IP* −% (median ℓ) | IP* −% per seed | IP* −% (ℓ = 5) "
             "| validity CT / BL | off-category CT / BL | mature | steps | one-step | ae_moved | cf_in_ball | E(x') "
             "| E(x⁺) |",
             "|" + "---|" * 17]
    for r in results:
        c, h = r["comparisons"], r["health"]
        vtext, btext = _ct_over_bl(c.get("validity")), _ct_over_bl(c.get("violations"))
        per_seed = " / ".join("n/a" if v is None else f"{v:.1f}" for v in
                              seed_reductions(r["ratios"]["ip_star"], r["rounds"], len(r["seeds"])))
        lines.append(f"| {r['dataset']} | {r['copy']} | {arm_label(r)} | {_cell(c.get('cost'))} "
                     f"| {_cell(c.get('ip'))} | {_cell(c.get('ip_star'))} | {per_seed} "
                     f"| {_cell(c.get('ip_star_fixed'))} | {vtext} "
                     f"| {btext} "
                     f"| {h['converged']:.2f} | {h['search_steps']:.1f} | {h['one_step']:.2f} | {h['ae_moved']:.2f} "
                     f"| {h['cf_in_ball']:.2f} | {h['energy_cf']:.1f} | {h['energy_pos']:.1f} |")
    lines += ["", "Reductions are CT vs BL in % (positive = CT better), pooled over seeds; * = the 99% bootstrap CI "
              "of the difference excludes 0. Off-category: broken constraints per counterfactual, which with "
              "every feature free are one-hot groups left between categories (0 where the evaluator snaps them). "
              "Per seed: each training seed's own reduction, in the order of --seeds; the CI behind * is over "
              "protocol rounds for the trained models, so it does not cover this spread. "
              "Health: the CT run's last epoch, mean over seeds."]
    return "\n".join(lines)


DIFF_METRICS = (("cost", "cost"), ("ip", "IP"), ("ip_star", "IP* (median ℓ)"), ("ip_star_fixed", "IP* (ℓ = 5)"))


def difference_table(results: list[dict], reference: str = "paper") -> str:
    """Returns the markdown table of every arm's reductions minus the `reference` arm's on the same data copy."""
    rows = [r for r in results if reference in r.get("differences", {})]
    if not rows:
        return ""
    lines = ["| data | copy | arm | " + " | ".join(f"{label}: arm − {reference}" for _, label in DIFF_METRICS) + " |",
             "|" + "---|" * (3 + len(DIFF_METRICS))]
    for r in rows:
        cells = []
        for key, _ in DIFF_METRICS:
            d = r["differences"][reference][key]
            if d["difference"] is None:
                cells.append("n/a")
            elif d["ci_low"] is None:
                cells.append(f"{d['difference']:+.1f}")
            else:
                cells.append(f"{d['difference']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]"
                             f"{'*' if d['significant'] else ''}")
        lines.append(f"| {r['dataset']} | {r['copy']} | {arm_label(r)} | " + " | ".join(cells) + " |")
    lines += ["", f"Differences of reductions in percentage points (positive = the arm keeps more of CT's gain than "
              f"{reference}), paired by protocol round, with the 99% percentile-bootstrap CI; * = it excludes 0."]
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    """Returns the study's rows, one per dataset, copy and arm (those saved in --out with --tables-only)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 1)[1])
    parser.add_argument("--datasets", nargs="+",
                        default=["linearly_separable", "circles", "moons", "overlapping", "german"],
                        help='datasets of the study (default: %(default)s)')
    parser.add_argument("--copies", nargs="+", default=list(COPIES), choices=COPIES,
                        help='copies of each dataset in other units: raw, standardized, x0.1, x10 (default: all)')
    parser.add_argument("--arms", nargs="+", default=["paper", "units_clipped"], choices=list(ARMS),
                        help="paper and units_clipped (the walk past τ) by default; inputs, std_search, "
                             "normalized and units_threshold change one thing each; the first arm is the one the "
                             "others are compared with")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1],
                        help='training seeds (default: %(default)s)')
    parser.add_argument("--epochs", type=int, default=None, help="override the paper's epochs (default: config)")
    parser.add_argument("--rounds", type=int, default=30, help="bootstrap rounds per seed")
    parser.add_argument("--quick", action="store_true", help="circles, raw and standardized, 20 epochs, 10 rounds")
    parser.add_argument("--out", default=os.path.join("results", "units"),
                        help='folder of units.json and units.md (default: %(default)s)')
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="ExperimentConfig override at a dotted path for every dataset (repeatable), "
                             "e.g. --set weights.reg=0.1")
    parser.add_argument("--eval-step-rule", choices=("gradient", "normalized"), default="gradient",
                        help="the evaluator's search step: the reference's gradient steps, or fixed-length steps")
    parser.add_argument("--categorical", choices=CATEGORICAL_MODES + ("arm",), default=TRAINING_SEARCH.categorical,
                        help="the training search's one-hot mode, every arm (default: the library's training "
                             "default), or `arm`: each arm's own (paper: the reference's relaxed groups)")
    parser.add_argument("--eval-categorical", choices=CATEGORICAL_MODES, default="relaxed",
                        help="the evaluator's one-hot mode (default: the reference protocol's relaxed groups)")
    parser.add_argument("--standardize-onehot", action="store_true",
                        help="models that standardise their inputs standardise one-hot columns too (how the "
                             "tables made before this flag existed were made; default: one-hot columns stay 0/1)")
    parser.add_argument("--progress", action="store_true",
                        help='show the training progress')
    parser.add_argument("--tables-only", action="store_true",
                        help="write the tables of the finished run in --out (its units.json) again, no training")
    parser.add_argument("--results-md", default=None, help="also write the tables into this file (e.g. RESULTS.md)")
    parser.add_argument("--section", default="units", help="the marked section of --results-md to (re)write")
    parser.add_argument("--title", default="Units study: paper-parity vs units-aware search on the same data in "
                                           "other units", help="the section's heading in --results-md")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the finished study in --out (default: refused before training)")
    args = parser.parse_args(argv)
    with command_checks():
        check_output_file("--results-md", args.results_md)
        if args.tables_only:
            return rewrite_tables(args, argv)
        if args.quick:
            args.datasets, args.copies, args.epochs, args.rounds, args.seeds = ["circles"], ["raw", "standardized"], \
                20, 10, [0]
        # Checked before anything trains: a bad argument, --set or dataset name fails at once.
        for flag in ("datasets", "copies", "arms"):  # --seeds: the config's own rule, as for reproduce's seeds=
            check_distinct(f"--{flag}", getattr(args, flag))
        configs = {name: override(get_config(name), args.overrides) for name in args.datasets}  # unknown paths fail
        for item in args.overrides:
            key = item.split("=", 1)[0].strip()
            why = unread_reason(key)
            if why:
                raise ValueError(f"--set {key}=... would change nothing in the units study ({why})")
        for config in configs.values():
            # The config's own rules for its seeds, epochs and rounds (--epochs 0 would otherwise train its default).
            epochs = config.train.epochs if args.epochs is None else args.epochs
            check_flags(config, {"--seeds": ("seeds", tuple(args.seeds)),
                                 "--rounds": ("protocol.n_rounds", args.rounds), "--epochs": ("train.epochs", epochs)})
        if not args.overwrite and os.path.isfile(os.path.join(args.out, "units.json")):
            refuse_overwrite(args.out, ["a units study (units.json)"],
                             "pass --overwrite to replace it, or choose another --out")
    os.makedirs(args.out, exist_ok=True)
    results = []
    t0 = time.perf_counter()
    for name in args.datasets:
        for which in args.copies:
            data = data_copy(configs[name], which)
            for arm in args.arms:
                t1 = time.perf_counter()
                categorical = ARM_CATEGORICAL[arm] if args.categorical == "arm" else args.categorical
                models, histories = train_pair(configs[name], data, arm, args.seeds, args.epochs, args.progress,
                                               categorical, args.standardize_onehot)
                comparisons, ratios = evaluate_pair(configs[name], data, models, args.seeds, args.rounds,
                                                    args.eval_step_rule, args.eval_categorical)
                results.append({"dataset": name, "copy": which, "arm": arm, "categorical": categorical,
                                "per_arm_categorical": args.categorical == "arm", "seeds": args.seeds,
                                "rounds": args.rounds,
                                "comparisons": comparisons, "health": health(histories["CT"]),
                                "ratios": ratios, "wall_s": time.perf_counter() - t1})
                print(tables(results[-1:]).splitlines()[2], flush=True)
    add_differences(results, args.arms[0])
    command = invocation(argv if argv is not None else sys.argv[1:])
    machine = this_machine()
    wall_s = time.perf_counter() - t0
    write_json(os.path.join(args.out, "units.json"), {"args": vars(args), "command": command, "machine": machine,
                                                      "results": results, "wall_s": wall_s}, indent=1, allow_nan=False)
    write_tables(results, args, command, wall_s, machine)
    return results


def this_machine() -> str:
    """Returns the short description of this machine that the tables' "Made by" line gives."""
    return f"{os.cpu_count()} CPUs, JAX {jax.__version__} on {jax.default_backend()}"


def write_tables(results: list[dict], args, command: str, wall_s: float, machine: str, note: str = "") -> str:
    """Returns the study's markdown tables, written to `args.out`/units.md and, with --results-md, its section."""
    text = tables(results)
    differences = difference_table(results, args.arms[0])
    if differences:
        text += "\n\n" + differences
    write_atomic(os.path.join(args.out, "units.md"), f"Command: `{command}`{note}\n\n{text}\n")
    if args.results_md:
        write_section(args.results_md, args.section, f"### {args.title}\n\nMade by `{command}` in "
                                                     f"{wall_s / 60:.0f} min ({machine}){note}.\n\n{text}")
    print(text)
    return text


def rewrite_tables(args, argv) -> list[dict]:
    """Returns the results saved in `args.out`/units.json, with their tables written again by today's code."""
    with open(os.path.join(args.out, "units.json")) as f:
        saved = json.load(f)
    results = saved["results"]
    for r in results:
        r.setdefault("rounds", saved["args"]["rounds"])  # written by runs before the per-seed column
    saved_args = argparse.Namespace(**{**saved["args"], "results_md": args.results_md, "section": args.section,
                                       "title": args.title, "out": args.out})
    note = f"; tables written from its units.json by `{invocation(argv if argv is not None else sys.argv[1:])}`"
    machine = saved.get("machine") or this_machine()
    write_tables(results, saved_args, saved.get("command") or command_of(saved["args"]), saved["wall_s"], machine,
                 note)
    return results


def command_of(a: dict) -> str:
    """Returns a command equivalent to the saved arguments `a` of a run (for units.json files that lack one)."""
    argv = ["--datasets", *a["datasets"], "--copies", *a["copies"], "--arms", *a["arms"],
            "--seeds", *map(str, a["seeds"]), "--rounds", str(a["rounds"]), "--categorical", a["categorical"],
            "--eval-categorical", a["eval_categorical"], "--eval-step-rule", a["eval_step_rule"]]
    argv += ["--epochs", str(a["epochs"])] if a.get("epochs") else []
    argv += ["--standardize-onehot"] if a.get("standardize_onehot") else []
    argv += sum((["--set", item] for item in a.get("overrides", [])), [])
    argv += ["--out", a["out"]] + (["--results-md", a["results_md"], "--section", a["section"], "--title",
                                    a["title"]] if a.get("results_md") else [])
    return invocation(argv)


def invocation(argv: list[str]) -> str:
    """Returns the shell command that runs the study with arguments `argv`."""
    return "python -m experiments.studies.units.study " + shlex.join(argv)


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
