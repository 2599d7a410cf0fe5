"""The paper's actionability claim over data draws: does protecting x0 make CT lean less on it, and cost less?

    python -m experiments.studies.actionability.study --out results/actionability      # ~2 min per draw, 2-core CPU
    python -m experiments.studies.actionability.study --datasets circles moons --draws 1 --seeds 0 1 2 3 4

Three arms per draw, all trained with x0 immutable and protected in the divergence (the paper's CT_mut):
BL (cross-entropy), CT (the dataset's full CT loss) and CT_div (the divergence alone: λ_reg = λ_adv = 0, the
setting of Proposition 3.1 and the reference's synthetic mutability configs). Each arm trains all seeds in one
`fit_many`; every arm of a seed starts from the same weights. Per draw and seed it records the cost of valid
counterfactuals with x0 fixed (the paper's protocol at τ = 0.5, fewer rounds), the median IG sensitivity to x0
(Table 2's statistic, fewer rounds), the share of the decision gradient on x0, and the mechanism's health; and
per draw the geometry, each feature's class-mean gap in pooled standard deviations. Rows are written one file
per draw under --out (a finished draw is not trained again), then summarised into tables.md and summary.json.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ctrain.data import load_dataset
from ctrain.data.synthetic import BLOB_STD, blob_bayes_accuracy
from ctrain.evaluate import compare_seeds, evaluate_explainability, seed_interval
from ctrain.search import SearchConfig
from ctrain.storage import write_atomic
from experiments import pipeline
from experiments.configs import ActionabilityConfig, get_config, replace_path
from experiments.results_md import interval_text
from experiments.studies import common

ARMS = ("BL", "CT", "CT_div")
SEARCHES = common.SEARCHES
# Smaller than the paper's protocol (100 rounds × 250 factuals; IG 100 rounds × 2,500 rows) so that 20 draws ×
# 3 seeds × 3 arms fit a 2-core machine in about an hour: ours, for the budget. The per-draw figures are means
# over seeds of these smaller protocols, and the claims below are about draws, each one a different data set.
STUDY_PROTOCOL = {"protocol.n_rounds": 10, "protocol.n_individuals": 50, "sensitivity.rounds": 20,
                  "sensitivity.samples": 500, "sensitivity.steps": 20}


def training_search(name: str, config) -> SearchConfig | None:
    """Returns the training search named by `name` at the config's τ (None: the config's own, paper parity).

    "walk" and "explain" search one-hot groups straight-through (SearchConfig's default) whatever the config's mode.
    """
    return common.training_search(name, config.train.search.threshold)


def gradient_share(apply_fn, params, x, feature: int = 0) -> float:
    """Returns the share of mean |∂(logit₁ − logit₀)/∂x| over rows x (N, D) that falls on `feature`."""
    def margin(row):
        logits = apply_fn(params, row[None])[0]
        return logits[1] - logits[0]


    grads = np.abs(np.asarray(jax.vmap(jax.grad(margin))(jnp.asarray(x)), np.float64)).mean(0)
    return float(grads[feature] / grads.sum()) if grads.sum() > 0 else float("nan")


def study_config(name: str, seeds, epochs: int | None):
    """Returns the dataset's ExperimentConfig with x0 protected, the study's seeds, protocol sizes and epochs."""
    changes = dict(seeds=tuple(seeds), **STUDY_PROTOCOL, **({} if epochs is None else {"train.epochs": epochs}))
    config = get_config(name)
    for path, value in changes.items():
        config = replace_path(config, path, value)
    return config


def run_draw(name: str, draw: int | None, seeds, *, search: str = "parity", epochs: int | None = None,
             progress: bool = False) -> dict:
    """Returns one draw's row: geometry, and per arm and seed the actionability figures and mechanism health."""
    config = study_config(name, seeds, epochs)
    data = load_dataset(name, **({} if draw is None else {"seed": draw}))
    protected = pipeline.protected_names(config, data)
    data = pipeline.free_schema(data).with_mutability(**{p: "immutable" for p in protected})
    index = data.schema.names.index(protected[0])
    override = training_search(search, config)
    weights = {"BL": config, "CT": config.replace(actionability=ActionabilityConfig(adv=None, reg=None)),
               "CT_div": config.replace(actionability=ActionabilityConfig(adv=0.0, reg=0.0))}
    models, health = {}, {}
    for arm in ARMS:
        objective = "vanilla" if arm == "BL" else "full"
        models[arm], histories, _ = pipeline.train_seeds(weights[arm], data, objective, mutability=True,
                                                         progress=progress, search=override)
        if arm != "BL":
            health[arm] = pipeline.mechanism_health({arm: histories})[arm]
        health.setdefault("accuracy", {})[arm] = [h[-1]["test_accuracy"] for h in histories]
    summaries = []
    for i, seed in enumerate(config.seeds):
        res = evaluate_explainability({arm: models[arm][i] for arm in ARMS}, data.x_test, data.y_test,
                                      num_classes=data.num_classes, constraints=data.constraints(), progress=False,
                                      protocol=pipeline.protocol_config(config, seed=seed, actionability=True))
        summaries.append(res["summary"])
    ig, _ = pipeline.ig_sensitivity(config, data, models, data.schema.protected())
    x_test = data.x_test[:1000]
    arms = {}
    for arm in ARMS:
        arms[arm] = {
            "accuracy": health["accuracy"][arm],
            "ig_median": ig[arm]["seed_medians"],
            "gradient_share": [gradient_share(*models[arm][i], x_test, index) for i in range(len(config.seeds))],
            "cost": [pipeline.mean_metric(s, arm, "cost") for s in summaries],
            "validity": [pipeline.mean_metric(s, arm, "validity") for s in summaries],
            **({k: health[arm][k] for k in ("converged", "search_steps", "nonfinite")} if arm in health else {}),
        }
    row = {"dataset": name, "draw": draw, "seeds": list(config.seeds), "search": search, "epochs": config.train.epochs,
           "protected": protected[0], "protected_index": index,
           "class_mean_gap_sigma": data.class_mean_gaps().tolist(), "arms": arms,
           "cost_reduction": {arm: compare_seeds(summaries, "cost", treatment=arm) for arm in ARMS[1:]}}
    if name in BLOB_STD and draw is not None:
        row["bayes_accuracy"] = blob_bayes_accuracy(draw, BLOB_STD[name])
    return pipeline.json_safe(row)


def separable_draws(name: str, count: int) -> list[int | None]:
    """Returns `count` data seeds of a synthetic set (linearly separable: only draws whose blobs can be separated)."""
    if name not in ("linearly_separable", "overlapping", "circles", "moons"):
        return [None]  # a real data set has one draw
    draws, seed = [], 0
    while len(draws) < count:
        if name != "linearly_separable" or blob_bayes_accuracy(seed, BLOB_STD[name]) >= 0.99:
            draws.append(seed)
        seed += 1
    return draws


def draw_verdicts(row: dict) -> dict:
    """Returns, per CT arm, whether the paper's direction holds in this draw (means over seeds) for each figure."""
    bl = row["arms"]["BL"]
    out = {}
    for arm in ARMS[1:]:
        a = row["arms"][arm]
        reduction = common.mean_or_none(row["cost_reduction"][arm]["per_seed_reduction_pct"])
        ig_ct, ig_bl = common.mean_or_none(a["ig_median"]), common.mean_or_none(bl["ig_median"])
        share_ct, share_bl = common.mean_or_none(a["gradient_share"]), common.mean_or_none(bl["gradient_share"])
        out[arm] = {"cost_reduction_pct": reduction,
                    "cost": None if reduction is None else reduction > 0,
                    "ig": None if ig_ct is None or ig_bl is None else ig_ct < ig_bl,
                    "gradient_share": None if share_ct is None or share_bl is None else share_ct < share_bl,
                    "ig_ct": ig_ct, "ig_bl": ig_bl, "share_ct": share_ct, "share_bl": share_bl,
                    "matured": common.mean_or_none(a.get("converged", []))}
    return out


def _count(flags) -> str:
    flags = [f for f in flags if f is not None]
    return f"{sum(flags)}/{len(flags)}" if flags else "–"


def protected_and_mutable_gaps(row: dict) -> tuple[float, float]:
    """Returns (the protected feature's class-mean gap, the largest mutable feature's), in σ, of a draw's row."""
    gaps, index = row["class_mean_gap_sigma"], row.get("protected_index", 0)
    return gaps[index], max(g for i, g in enumerate(gaps) if i != index)


def mutable_feature_leads(row: dict) -> bool:
    """Returns whether some mutable feature's class-mean gap (in σ) exceeds the protected feature's in a draw's row."""
    protected, mutable = protected_and_mutable_gaps(row)
    return mutable > protected


def summarise(rows: list[dict]) -> dict:
    """Returns per dataset, training search and CT arm: the draws where each figure takes the paper's direction."""
    out = {}
    for name, search in dict.fromkeys((r["dataset"], r.get("search", "parity")) for r in rows):
        mine = [r for r in rows if r["dataset"] == name and r.get("search", "parity") == search]
        verdicts = [draw_verdicts(r) for r in mine]
        mutable_leads = [mutable_feature_leads(r) for r in mine]
        for arm in ARMS[1:]:
            v = [d[arm] for d in verdicts]
            reductions = [d["cost_reduction_pct"] for d in v if d["cost_reduction_pct"] is not None]
            entry = {"draws": len(mine), "seeds": len(mine[0]["seeds"]),
                     "cost_reduction_over_draws": seed_interval([d["cost_reduction_pct"] for d in v]),
                     "cost_reduction_median": float(np.median(reductions)) if reductions else None,
                     "matured": common.mean_or_none([d["matured"] for d in v]),
                     "skipped": int(sum(sum(r["arms"][arm].get("nonfinite", [])) for r in mine))}
            for figure in ("cost", "ig", "gradient_share"):
                entry[figure] = {"all": _count(d[figure] for d in v),
                                 "x1_leads": _count(d[figure] for d, m in zip(v, mutable_leads) if m),
                                 "x0_leads": _count(d[figure] for d, m in zip(v, mutable_leads) if not m)}
            out[f"{name}/{search}/{arm}"] = entry
    return out


def tables(rows: list[dict]) -> str:
    """Returns the study's markdown tables: the summary over draws, then one line per draw."""
    summary = summarise(rows)
    lines = ["| Data | Training search | Arm | Draws × seeds | Cost −% over draws: mean [99% t] | median "
             "| Cost lower (draws) | IG lower (draws) | Gradient share lower (draws) "
             "| … where x1 leads: cost / IG / share | … where x0 leads: cost / IG / share | Mature / skipped |",
             "|" + "---|" * 12]
    for key, e in summary.items():
        name, search, arm = key.split("/")
        median = "–" if e["cost_reduction_median"] is None else f"{e['cost_reduction_median']:.1f}"
        c = e["cost_reduction_over_draws"]
        cost = interval_text(c)
        lead = lambda side: " / ".join(e[f][side] for f in ("cost", "ig", "gradient_share"))
        matured = "–" if e["matured"] is None else f"{e['matured']:.2f}"
        lines.append(f"| {name} | {search} | {arm} | {e['draws']} × {e['seeds']} | {cost} | {median} "
                     f"| {e['cost']['all']} | {e['ig']['all']} | {e['gradient_share']['all']} "
                     f"| {lead('x1_leads')} | {lead('x0_leads')} "
                     f"| {matured} / {e['skipped']} |")
    lines += ["", "Each draw is one data set (the generator's seed); its figures are means over the model seeds. Cost "
              "−%: CT's reduction of the cost of valid counterfactuals with x0 fixed against BL's (positive = the "
              "paper's direction), mean over draws [99% Student-t interval over draws] and median over draws. "
              "(draws): in how many draws the paper's direction holds: CT's cost lower, its median IG sensitivity "
              "to x0 lower, its share of the decision gradient on x0 lower. A mutable feature leads: draws where "
              "some mutable feature has a larger class-mean gap (in pooled σ) than the protected one, the condition "
              "of Proposition 3.1 (on the blobs: x1 leads). Mature: share of training counterfactuals that "
              "reached τ in the last epoch (mean over draws and seeds); skipped: non-finite updates, all runs.", "",
              "| Data | Search | Draw | Gap protected / largest mutable (σ) | Arm | Cost −% per seed "
              "| over seeds [99% t] | IG CT / BL | Gradient share CT / BL | Validity CT / BL | Mature |",
              "|" + "---|" * 11]
    for r in rows:
        v = draw_verdicts(r)
        gap = "{:.2f} / {:.2f}".format(*protected_and_mutable_gaps(r))
        show = lambda x, f="{:.2f}": "–" if x is None else f.format(x)
        for arm in ARMS[1:]:
            d = v[arm]
            per_seed = ", ".join(show(x, "{:.0f}") for x in r["cost_reduction"][arm]["per_seed_reduction_pct"])
            validity = " / ".join(show(common.mean_or_none(r["arms"][a]["validity"])) for a in (arm, "BL"))
            over_seeds = interval_text(r["cost_reduction"][arm]["reduction"])
            lines.append(f"| {r['dataset']} | {r.get('search', 'parity')} | {r['draw']} | {gap} | {arm} | {per_seed} "
                         f"| {over_seeds} "
                         f"| {show(d['ig_ct'])} / {show(d['ig_bl'])} | {show(d['share_ct'])} / {show(d['share_bl'])} "
                         f"| {validity} | {show(d['matured'])} |")
    return "\n".join(lines)


def _row_name(row_key: tuple) -> str:
    name, draw, search = row_key
    return f"{name}-draw{'none' if draw is None else draw}-{search}"


def main(argv=None) -> list[dict]:
    """Runs the study (resuming finished draws under --out) and returns its rows; writes tables.md and summary.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["linearly_separable", "overlapping"],
                        help='datasets of the study (default: %(default)s)')
    parser.add_argument("--draws", type=int, default=20, help="data draws per synthetic set (real sets have one)")
    parser.add_argument("--search", choices=SEARCHES, default="parity", help="the CT arms' training search")
    common.add_arguments(parser, out="results/actionability", seeds=[0, 1, 2])
    args = parser.parse_args(argv)
    with pipeline.command_checks():
        if args.tables_only:
            return common.rewrite_outputs(args.out, write_outputs)
        if args.draws < 1:
            parser.error("--draws must be >= 1")
        common.check_arguments(parser, args)
        pipeline.check_distinct("--datasets", args.datasets)
        for name in args.datasets:
            study_config(name, args.seeds, args.epochs)  # unknown names fail here, before any training
        common.check_settings(args.out, {"seeds": args.seeds, "epochs": args.epochs, **STUDY_PROTOCOL})
        plan = [(name, draw, args.search) for name in args.datasets for draw in separable_draws(name, args.draws)]
    run = lambda key: run_draw(key[0], key[1], args.seeds, search=key[2], epochs=args.epochs)
    return common.run_rows(args.out, plan, _row_name, run, write_outputs, progress=not args.quiet)


def write_outputs(out: str, rows: list[dict]) -> None:
    """Writes tables.md and summary.json for `rows` (all draws finished so far) under `out`."""
    write_atomic(os.path.join(out, "tables.md"), tables(rows) + "\n")
    pipeline.write_json(os.path.join(out, "summary.json"), summarise(rows))


if __name__ == "__main__":
    sys.exit(pipeline.run_command(main, sys.argv[1:]))
