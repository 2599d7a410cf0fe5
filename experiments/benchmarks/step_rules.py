"""Search step rules at explanation time: how often does `explain` reach τ, for a baseline and a CT model?

    python -m experiments.benchmarks.step_rules [--datasets adult] [--epochs 20] [--n 500] [--json out.json]
    python -m experiments.benchmarks.step_rules --quick        # circles, 2 epochs, 100 factuals (under 1 min)

For each dataset: an MLP that standardises its inputs (`Dataset.input_stats()`), every feature free, trained as BL
and as CT (the library's training default, the config's τ and λ's) from the same initial weights; then `explain`
with `SearchConfig()` (T = 30, η = 0.1, τ = 0.75, straight-through one-hot groups) and each step rule
(`ctrain.search.STEP_RULES`) on the same n test factuals: share reaching τ, validity (argmax = target), mean
steps and L1 cost in feature standard deviations. Adult, 20 epochs, 500 factuals: about 4 minutes on a 2-core
CPU.
"""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from ctrain.data import load_dataset
from ctrain.models import make_model
from ctrain.search import STEP_RULES, TRAINING_SEARCH, SearchConfig, explain
from ctrain.train import TrainConfig, create_train_state, fit
from experiments.benchmarks.common import check_arguments, write_json
from experiments.configs import get_config
from experiments.pipeline import free_schema, loss_weights, run_command


def trained_models(name: str, epochs: int, seed: int = 0):
    """Returns (data, {"BL": (apply_fn, params), "CT": ...}) trained `epochs` on `name` with every feature free."""
    config = get_config(name)
    data = free_schema(load_dataset(name, **dict(config.data.kwargs)))
    apply_fn, params = make_model(config.model, data.num_features, data.num_classes, jax.random.key(seed),
                                  input_stats=data.input_stats())
    weights = loss_weights(config)
    search = TRAINING_SEARCH.replace(threshold=config.train.search.threshold)
    models = {}
    for label, objective in (("BL", "vanilla"), ("CT", "full")):
        state = create_train_state(apply_fn, params, weights=weights, learning_rate=config.learning_rate)
        tc = TrainConfig(objective=objective, search=search, n_ce=config.train.n_ce, epochs=epochs,
                         batch_size=config.train.batch_size, seed=seed)
        state, _ = fit(state, data, tc, progress=False)
        models[label] = (state.apply_fn, state.params)
    return data, models


def explain_outcomes(data, model, rules, n: int, seed: int = 0) -> dict[str, dict]:
    """Returns, per step rule, `explain`'s share reaching τ, validity, mean steps and cost (σ units) on n factuals."""
    rows = np.random.default_rng(seed).choice(len(data.x_test), min(n, len(data.x_test)), replace=False)
    x = data.x_test[rows]
    scale = data.schema.scale_array()
    out = {}
    for rule in rules:
        e = explain(*model, x, key=jax.random.key(seed + 1), config=SearchConfig(step_rule=rule),
                    constraints=data.constraints())
        out[rule] = {"reach_tau": float(np.mean(e.converged)), "valid": float(np.mean(e.valid)),
                     "mean_steps": float(np.mean(e.steps)),
                     "cost_sd": float(np.mean(np.abs(np.asarray(e.x_cf) - np.asarray(e.x)) / scale, 0).sum())}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["adult"],
                        help='datasets to compare the step rules on (default: %(default)s)')
    parser.add_argument("--rules", nargs="+", default=list(STEP_RULES), choices=STEP_RULES,
                        help='search step rules to compare (default: all)')
    parser.add_argument("--epochs", type=int, default=20, help="BL and CT epochs")
    parser.add_argument("--n", type=int, default=500, help="test factuals per model and rule")
    parser.add_argument("--quick", action="store_true", help="circles, 2 epochs, 100 factuals")
    parser.add_argument("--json", default=None,
                        help='also write the rows to this JSON file')
    args = parser.parse_args(argv)
    check_arguments(args.datasets, args.json)
    if args.quick:
        args.datasets, args.epochs, args.n = ["circles"], 2, 100
    out = {}
    for name in args.datasets:
        data, models = trained_models(name, args.epochs)
        out[name] = {label: explain_outcomes(data, model, args.rules, args.n) for label, model in models.items()}
        print(f"\n### {name}: BL and CT {args.epochs} epochs, `explain` on {args.n} test factuals, "
              f"{data.num_features} columns")
        print("| model | step rule | reach τ | valid | mean steps | cost (σ) |")
        print("|---|---|---|---|---|---|")
        for label, rows in out[name].items():
            for rule, r in rows.items():
                print(f"| {label} | {rule} | {r['reach_tau']:.2f} | {r['valid']:.2f} | {r['mean_steps']:.1f} "
                      f"| {r['cost_sd']:.2f} |", flush=True)
    write_json(args.json, {"step_rules": out, "args": vars(args)})
    return out


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
