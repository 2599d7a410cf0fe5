"""What counterfactual training costs, and what its cheaper options give up: per dataset and training variant.

    python -m experiments.benchmarks.ct_cost [--datasets circles moons adult mnist_5k] [--seeds 0 1 2 3 4]
    python -m experiments.benchmarks.ct_cost --quick --json results/ct_cost_quick.json   # about 2 min, 2-core CPU
    python -m experiments.benchmarks.ct_cost --from-json results/ct_cost.json --plot results/ct_cost.png  # no training

CT's price is its search: every epoch searches n_ce counterfactuals of up to T forward-backward steps each.
Per dataset, BL and one CT model per variant are trained on the same seeds and initial weights (all seeds as one
vmapped program, `experiments.pipeline.train_seeds`; plausibility runs: every feature mutable). Variants:
  default     the library's defaults: the training search `SearchConfig()` (ctrain.search.TRAINING_SEARCH) at the
              dataset's τ, the dataset's paper settings otherwise (n_ce, batch size, epochs, λ's);
  paper       the paper's settings, `experiments.configs.get_config(name).train` (the reference's search);
  amortised   default + `train.chain_steps=CHAIN_STEPS` (5): amortised CT (`ctrain.chains`), a fixed pool of
              the epoch's n_ce counterfactual chains, every chain advanced at most 5 search steps every epoch (a
              sixth of T = 30) from where it stood, each keeping its factual and target, restarted with JEM's
              probability 0.05;
  fewer       default + `train.n_ce` divided by FEWER (4): a quarter of the counterfactuals per epoch, each searched
              in full, so the search's share of an epoch falls about fourfold (the lever of a smaller n_ce per step);
  burnin      default + `train.burnin=0.5`: conventional training for the first half of the epochs, CT after, the
              reference's own lever (its `burnin` keyword, default 0.0; 0.5 is the value of its App. C grid, and the
              paper's RQ5 reads burn-in as CT for fine-tuning): half the epochs search nothing.
Measured per variant:
  R*            the floor 1 + (m/B)·(s̄ + 4) (`floor_ratio`) from the row's counts: m counterfactuals per batch of B,
                s̄ its mean search steps (amortised: steps taken per chain and epoch); `--floor` measures the
                default's CT/BL epoch against it (seed 0, best of two interleaved runs);
  CT/BL epoch   steady-state epoch time ratio: median epoch time after the first (the fit history's `time_s`) of
                CT over BL's; for burnin the CT epochs only (after the first of them);
  CT/BL run     the whole training run's wall time (compilation included) of CT over BL's: what a burn-in saves;
  wall s        the whole training run of all seeds (one vmapped program, compilation included);
  IP −%, IP* −% reductions against BL under the paper's protocol (`pipeline.protocol_config(config, seed=s)`,
                `ctrain.evaluate.evaluate_explainability`), mean over seeds [99% Student-t interval over seeds]
                (`ctrain.evaluate.compare_seeds`); * = the interval excludes 0;
  cost Δ        on datasets with protected features: the variant retrained with them protected (the actionability
                runs) against BL, cost difference (variant − BL) under the actionability protocol, same interval;
  mature, steps share of training counterfactuals that reached τ and their mean search steps, mean over all CT
                epochs and seeds; age: the chains' mean age in epochs (amortised only);
  skipped       updates skipped for a non-finite loss or gradient, summed over the run and seeds
                (`pipeline.skipped_updates`).

Decision rule (issue 26). A cheaper option becomes the library default only if its IP and IP* reductions stay
within the default's seed-level interval on every dataset of this benchmark (circles, moons, adult, mnist_5k, ≥ 5
seeds, the paper's protocol); otherwise it stays an option. docs/performance.md holds the measured run (4fd7ef2,
47 min on the 2-core CPU) and its verdict: `fewer` and `burnin` pass that rule; the `persistent` and `capped`
variants measured there (a buffer of one chain per training sample, drawn at random each epoch) failed it on Adult
and MNIST-5k and were replaced by `amortised`, whose 5-seed study (experiments/studies/amortised_ct/) loses IP
and IP* on Adult and IP on MNIST-5k at 4× / 12× BL's run, so it fails that rule too; the defaults stay:
`TrainConfig.chain_steps` None, `burnin` 0.0 and n_ce the dataset's.
"""
from __future__ import annotations

import argparse
import sys
import json
import math
import os
import statistics
import time

import numpy as np

from ctrain.evaluate import compare_seeds, evaluate_explainability
from ctrain.search import TRAINING_SEARCH
from experiments import pipeline
from ctrain import storage
from experiments.benchmarks.common import check_arguments, machine
from experiments.configs import get_config, override, replace_path
from experiments.plots import plot_cost_trade_off
from experiments.results_md import interval_text

DATASETS = ("circles", "moons", "adult", "mnist_5k")
VARIANTS = ("default", "paper", "amortised", "fewer", "burnin")
CHAIN_STEPS = 5  # the amortised variant's search steps per chain and epoch
FEWER = 4  # the fewer variant divides the dataset's n_ce by this
BURNIN = 0.5  # the burnin variant's share of conventional epochs (the reference's App. C grid value)
FLOOR = dict(datasets=["adult", "mnist_5k"], epochs=12, repeats=2)  # --floor: issue 35's done-when measurement
QUICK = dict(datasets=["circles"], seeds=[0, 1], epochs=4, rounds=2, individuals=20)


def variant_config(name: str, config):
    """Returns the ExperimentConfig of training variant `name` for a dataset's paper config."""
    if name == "paper":
        return config
    search = TRAINING_SEARCH.replace(threshold=config.train.search.threshold)
    default = config.replace(train=config.train.replace(search=search))
    if name == "default":
        return default
    if name == "amortised":
        return override(default, [f"train.chain_steps={CHAIN_STEPS}"])
    if name == "fewer":
        return replace_path(default, "train.n_ce", max(1, config.train.n_ce // FEWER))
    if name == "burnin":
        return replace_path(default, "train.burnin", BURNIN)
    raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")


def floor_ratio(ce_per_batch: int, batch_size: int, mean_steps: float) -> float:
    """Returns R* = 1 + (m/B)·(s̄ + 4), the CT/BL epoch ratio at its arithmetic (issue 35), a float.

    One row's forward-backward pass through the model is one unit: a BL epoch costs B per batch, a CT epoch adds
    m counterfactuals per batch, each of s̄ search steps and four loss passes (x⁺, x', x_AE and the regulariser's).
    """
    return 1.0 + ce_per_batch / batch_size * (mean_steps + 4.0)


def _epoch_median(histories: list[list[dict]], first: int = 0) -> float:
    """Returns the median epoch time after epoch `first` (the first one searching) over all seeds' histories."""
    times = ([h["time_s"] for run in histories for h in run[first + 1:]]
             or [h["time_s"] for run in histories for h in run[first:]])
    return float(statistics.median(times))


def _mean_log(histories, key: str) -> float | None:
    values = [h[key] for run in histories for h in run if key in h]
    return float(np.mean(values)) if values else None


def _per_epoch(histories, key: str) -> list[float | None]:
    """Returns the mean over seeds of `key` in every epoch (None for an epoch that did not log it)."""
    return [float(np.mean([run[e][key] for run in histories])) if key in histories[0][e] else None
            for e in range(len(histories[0]))]


def run_dataset(name: str, variants, seeds, *, epochs: int | None = None, rounds: int | None = None,
                individuals: int | None = None, progress: bool = False) -> list[dict]:
    """Returns one row per variant of dataset `name`: its cost against BL and its reductions against BL."""
    config = replace_path(get_config(name), "seeds", tuple(seeds))
    for path, value in (("train.epochs", epochs), ("protocol.n_rounds", rounds),
                        ("protocol.n_individuals", individuals)):
        if value is not None:
            config = replace_path(config, path, value)
    loaded = pipeline.load_data(config)
    data = pipeline.free_schema(loaded)
    protected = pipeline.protected_names(config, loaded)
    data_protected = data.with_mutability(**{p: "immutable" for p in protected})

    bl, bl_hist, bl_wall = pipeline.train_seeds(config, data, "vanilla", progress=progress)
    bl_epoch = _epoch_median(bl_hist)
    trained, histories, walls, trained_mut = {}, {}, {}, {}
    configs = {v: variant_config(v, config) for v in variants}
    for v, vc in configs.items():
        trained[v], histories[v], walls[v] = pipeline.train_seeds(vc, data, "full", progress=progress)
        if protected:
            trained_mut[v] = pipeline.train_seeds(vc, data_protected, "full", mutability=True, progress=progress)[0]

    plaus = []
    cost = {v: [] for v in trained_mut}
    for i, seed in enumerate(config.seeds):
        models = {"BL": bl[i], **{v: trained[v][i] for v in variants}}
        plaus.append(evaluate_explainability(models, data.x_test, data.y_test, num_classes=data.num_classes,
                                             protocol=pipeline.protocol_config(config, seed=seed),
                                             constraints=data.constraints())["summary"])
        for v in trained_mut:
            res = evaluate_explainability({"BL": bl[i], v: trained_mut[v][i]}, data.x_test, data.y_test,
                                          num_classes=data.num_classes,
                                          protocol=pipeline.protocol_config(config, seed=seed, actionability=True),
                                          constraints=data_protected.constraints())
            cost[v].append(res["summary"])
    rows = []
    for v in variants:
        ct_epoch = _epoch_median(histories[v], configs[v].train.burnin_epochs)
        cost_cmp = compare_seeds(cost[v], "cost", treatment=v)["difference"] if v in cost else None
        # the counts fit uses (ctrain.train._prepare_run): whole batches only, ceil(n_ce / batches) per batch
        batch_size = configs[v].train.batch_size
        ce_per_batch = math.ceil(configs[v].train.n_ce / (len(data.x_train) // batch_size))
        steps = _mean_log(histories[v], "search_steps")
        mature = _per_epoch(histories[v], "converged")
        rows.append(pipeline.json_safe({
            "dataset": name, "variant": v, "seeds": list(config.seeds), "epochs": config.train.epochs,
            "ct_epoch_s": ct_epoch, "bl_epoch_s": bl_epoch, "epoch_ratio": ct_epoch / bl_epoch,
            "wall_s": walls[v], "bl_wall_s": bl_wall, "run_ratio": walls[v] / bl_wall,
            "ip": compare_seeds(plaus, "ip", treatment=v)["reduction"],
            "ip_star": compare_seeds(plaus, "ip_star", treatment=v)["reduction"],
            "cost_protected": cost_cmp, "protected": list(protected),
            "mature": _mean_log(histories[v], "converged"), "steps": steps,
            "mature_last": mature[-1], "mature_epochs": mature,
            "batch_size": batch_size, "ce_per_batch": ce_per_batch,
            "floor_ratio": None if steps is None else floor_ratio(ce_per_batch, batch_size, steps),
            "chain_age": _mean_log(histories[v], "chain_age"), "n_ce": configs[v].train.n_ce,
            "chain_steps": configs[v].train.chain_steps or configs[v].train.search.max_steps,
            "searched_epochs": sum("search_steps" in h for h in histories[v][0]),
            "skipped": pipeline.skipped_updates(histories[v]),
            "accuracy": [run[-1]["test_accuracy"] for run in histories[v]],
            "bl_accuracy": [run[-1]["test_accuracy"] for run in bl_hist]}))
    return rows


def floor_check(name: str, variants, *, epochs: int = FLOOR["epochs"], repeats: int = FLOOR["repeats"],
                seed: int = 0) -> list[dict]:
    """Returns one row per variant of dataset `name`: its CT/BL epoch ratio (best of `repeats` interleaved runs) and R*.

    The issue's done-when measurement: one seed, `epochs` epochs, BL and every variant trained in turn `repeats`
    times (so a burst of load hits all of them alike); each run's median epoch after the first (compilation), the
    best run of each, CT over BL.
    """
    config = replace_path(replace_path(get_config(name), "seeds", (seed,)), "train.epochs", epochs)
    data = pipeline.free_schema(pipeline.load_data(config))
    configs = {"BL": config, **{v: variant_config(v, config) for v in variants}}
    times = {k: [] for k in configs}
    steps = {v: [] for v in variants}
    load = []
    for _ in range(repeats):
        for k, c in configs.items():
            load.append(os.getloadavg()[0])
            hist = pipeline.train_seeds(c, data, "vanilla" if k == "BL" else "full")[1]
            times[k].append(_epoch_median(hist, c.train.burnin_epochs if k != "BL" else 0))
            if k != "BL":
                steps[k].append(_mean_log(hist, "search_steps"))
    rows = []
    for v in variants:
        batch_size = configs[v].train.batch_size
        ce_per_batch = math.ceil(configs[v].train.n_ce / (len(data.x_train) // batch_size))
        ratio = min(times[v]) / min(times["BL"])
        r_star = floor_ratio(ce_per_batch, batch_size, float(np.mean(steps[v])))
        rows.append({"dataset": name, "variant": v, "seed": seed, "epochs": epochs, "repeats": repeats,
                     "ct_epoch_s": times[v], "bl_epoch_s": times["BL"], "epoch_ratio": ratio, "steps": steps[v],
                     "batch_size": batch_size, "ce_per_batch": ce_per_batch, "floor_ratio": r_star,
                     "over_floor": ratio / r_star, "load": load})
    return rows


def floor_table(rows: list[dict]) -> str:
    """Returns the markdown table of floor_check's rows."""
    lines = ["| dataset | variant | BL epoch ms | CT epoch ms | CT/BL epoch | steps | m/B | R* | CT/BL ÷ R* | load |",
             "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['variant']} | {min(r['bl_epoch_s']) * 1e3:.1f} "
                     f"| {min(r['ct_epoch_s']) * 1e3:.1f} | {r['epoch_ratio']:.1f} | {np.mean(r['steps']):.1f} "
                     f"| {r['ce_per_batch']}/{r['batch_size']} | {r['floor_ratio']:.1f} | {r['over_floor']:.2f} "
                     f"| {min(r['load']):.1f}–{max(r['load']):.1f} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    """Returns the markdown table of the rows."""
    show = lambda v, f="{:.2f}": "–" if v is None else f.format(v)
    lines = ["| dataset | variant | seeds | CT/BL epoch | R* | CT/BL run | wall s | IP −% | IP* −% | cost Δ protected "
             "| mature | last | steps | age | skipped |", "|" + "---|" * 15]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['variant']} | {len(r['seeds'])} | {r['epoch_ratio']:.1f} "
                     f"| {show(r.get('floor_ratio'), '{:.1f}')} "
                     f"| {show(r.get('run_ratio'), '{:.1f}')} | {r['wall_s']:.1f} | {interval_text(r['ip'])} "
                     f"| {interval_text(r['ip_star'])} "
                     f"| {'–' if r['cost_protected'] is None else interval_text(r['cost_protected'], 3)} "
                     f"| {show(r['mature'])} | {show(r.get('mature_last'))} | {show(r['steps'], '{:.1f}')} | {show(r.get('chain_age'), '{:.1f}')} "
                     f"| {'–' if r.get('skipped') is None else sum(r['skipped'])} |")  # rows stored before the count: –
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: {QUICK['datasets']}, seeds {QUICK['seeds']}, {QUICK['epochs']} epochs, "
                             f"{QUICK['rounds']} protocol rounds of {QUICK['individuals']} individuals")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=None,
                        help="datasets to time (default: the script's list)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help='training variants to time (default: all)')
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="training seeds (default 0 1 2 3 4)")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: the config's)")
    parser.add_argument("--rounds", type=int, default=None, help="override protocol.n_rounds")
    parser.add_argument("--individuals", type=int, default=None, help="override protocol.n_individuals")
    parser.add_argument("--progress", action="store_true",
                        help='show the training progress')
    parser.add_argument("--json", default=None,
                        help='also write the rows to this JSON file')
    parser.add_argument("--plot", default=None, help="write the trade-off (IP / IP* against the CT/BL run-time ratio, "
                                                     "per dataset) as a PNG here")
    parser.add_argument("--from-json", default=None, metavar="FILE",
                        help="train nothing: print the table (and --plot) of the rows a finished run wrote to FILE")
    parser.add_argument("--floor", action="store_true",
                        help=f"measure only the CT/BL epoch ratio against R* (issue 35): seed 0, {FLOOR['epochs']} "
                             f"epochs (--epochs), BL and the variants in turn, best of {FLOOR['repeats']}; datasets "
                             f"default {FLOOR['datasets']}; no protocol")
    args = parser.parse_args(argv)
    check_arguments(args.datasets or (), args.json)
    if args.from_json:
        with open(args.from_json) as f:
            stored = json.load(f)
        print(table(stored["rows"]))
        if args.plot:
            print(f"\nwritten: {plot_cost_trade_off(args.plot, stored['rows'])}")
        return stored
    quick = QUICK if args.quick else dict(datasets=list(DATASETS), seeds=[0, 1, 2, 3, 4], epochs=None, rounds=None,
                                          individuals=None)
    datasets = args.datasets or quick["datasets"]
    seeds = args.seeds or quick["seeds"]
    with pipeline.command_checks():
        pipeline.check_distinct("--datasets", datasets)
        pipeline.check_distinct("--variants", args.variants)
        pipeline.check_distinct("--seeds", seeds)
    if "default" not in args.variants:
        parser.error("--variants must include 'default': the decision rule compares the others against it")
    settings = {"datasets": datasets, "variants": args.variants, "seeds": seeds,
                **{k: getattr(args, k) if getattr(args, k) is not None else quick[k]
                   for k in ("epochs", "rounds", "individuals")}}
    if args.floor:
        return _floor_main(args, datasets=args.datasets or FLOOR["datasets"])
    t0 = time.perf_counter()
    rows, load = [], []
    for name in datasets:
        # the host's 1-minute load average before and after each dataset: timings on a shared machine need it beside
        before = os.getloadavg()[0]
        rows += run_dataset(name, args.variants, seeds, epochs=settings["epochs"], rounds=settings["rounds"],
                            individuals=settings["individuals"], progress=args.progress)
        load.append({"dataset": name, "load_before": before, "load_after": os.getloadavg()[0],
                     "seconds": time.perf_counter() - t0})
        print(f"{name}: done after {time.perf_counter() - t0:.0f} s (load {before:.1f} → {load[-1]['load_after']:.1f})",
              flush=True)
    print()
    print(table(rows))
    print("\nCT/BL epoch: median epoch time after the first (CT epochs only for burnin), CT over BL; R*: its floor "
          "1 + (m/B)(steps + 4) from the row's own counts (m counterfactuals per batch of B, steps the mean search "
          "steps); CT/BL run: the training runs' wall times, CT over BL; wall s: all seeds' training (one program, "
          "compile included); IP / IP* −%: reduction against BL, mean over seeds [99% interval over seeds], * "
          "excludes 0; cost Δ: protected-feature runs, cost − BL's; mature / steps / age: training searches (age: "
          "amortised chains' epochs since restart), mean over epochs and seeds; last: mature in the last epoch, mean "
          "over seeds; skipped: non-finite updates skipped, all seeds.")
    out = {"rows": rows, "settings": settings, "seconds": time.perf_counter() - t0, "load": load,
           "run": pipeline.run_metadata()}
    _write(args.json, out)
    for path in (args.json, args.plot and plot_cost_trade_off(args.plot, rows)):
        if path:
            print(f"\nwritten: {path}")
    return out


def _write(path: str | None, out: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        storage.write_json(path, {"machine": machine(), **out}, indent=2)


def _floor_main(args, datasets) -> dict:
    t0 = time.perf_counter()
    rows = [row for name in datasets for row in floor_check(name, args.variants, epochs=args.epochs or FLOOR["epochs"])]
    print(floor_table(rows))
    print("\nBL / CT epoch: the best of the interleaved runs' median epoch after the first; steps: the CT runs' mean "
          "search steps; R* = 1 + (m/B)(steps + 4); load: the 1-minute load average before each run.")
    out = {"floor": rows, "seconds": time.perf_counter() - t0, "run": pipeline.run_metadata()}
    _write(args.json, out)
    if args.json:
        print(f"\nwritten: {args.json}")
    return out


if __name__ == "__main__":
    sys.exit(pipeline.run_command(main, sys.argv[1:]))
