"""One-hot search modes on categorical data: do training counterfactuals mature, are test-time ones valid and real?

    python -m experiments.benchmarks.categorical [--datasets adult german] [--epochs 10] [--json out.json]
    python -m experiments.benchmarks.categorical --quick        # German only, 3 epochs (about 1 min on 2 cores)

For each `SearchConfig.categorical` mode ("relaxed", "straight_through", "snap_state") and dataset:
- training: CT from the same initial MLP with the paper's settings for the dataset, only the mode changed;
  the share of the epoch's counterfactuals that reach τ, per epoch, mean search steps and epoch time;
- test time: a baseline (BL) trained once, then the protocol's ECCo search (λ_cost 0, λ_energy 1, T 50,
  τ 0.95) from test factuals to a class ≠ predicted, per mode: share reaching τ, validity (argmax = target),
  share of rows whose one-hot groups are real categories, mean steps, L1 cost and search time.
Full run (Adult 10 epochs + German 10 epochs, three modes): about 6 minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from ctrain import constraints as cons
from ctrain.data import load_dataset
from ctrain.models import make_model
from ctrain.search import CATEGORICAL_MODES, SearchConfig, explain
from ctrain.train import TrainConfig, create_train_state, fit
from experiments.benchmarks.common import check_arguments, write_json
from experiments.configs import get_config
from experiments.pipeline import free_schema, loss_weights, run_command


def _train_search(config, mode: str) -> SearchConfig:
    # The reference's search in everything but the one-hot mode, so the modes are compared on its ground.
    return config.train.search.replace(categorical=mode)


def training_maturity(name: str, mode: str, epochs: int, seed: int = 0) -> dict:
    """Returns per-epoch maturity shares, steps and times of a CT run on `name` with one-hot mode `mode`."""
    config = get_config(name)
    data = free_schema(load_dataset(name, **dict(config.data.kwargs)))
    apply_fn, params = make_model(config.model, data.num_features, data.num_classes, jax.random.key(seed))
    state = create_train_state(apply_fn, params, learning_rate=config.learning_rate,
                               weights=loss_weights(config))
    tc = config.train.replace(search=_train_search(config, mode), epochs=epochs, seed=seed)
    _, history = fit(state, data, tc, progress=False)
    return {"mature": [h["converged"] for h in history], "steps": [h["search_steps"] for h in history],
            "epoch_s": [h["time_s"] for h in history], "test_accuracy": history[-1].get("test_accuracy")}


def test_time(name: str, modes, n: int, bl_epochs: int, seed: int = 0) -> dict[str, dict]:
    """Returns, per mode, the protocol search's outcome on n test factuals of a baseline trained bl_epochs."""
    config = get_config(name)
    data = free_schema(load_dataset(name, **dict(config.data.kwargs)))
    apply_fn, params = make_model(config.model, data.num_features, data.num_classes, jax.random.key(seed))
    state, _ = fit(create_train_state(apply_fn, params), data,
                   TrainConfig(objective="vanilla", epochs=bl_epochs, batch_size=config.train.batch_size), progress=False)
    x = data.x_test[np.random.default_rng(seed).choice(len(data.x_test), min(n, len(data.x_test)), replace=False)]
    c = data.constraints()
    out = {}
    for mode in modes:
        search = SearchConfig.reference(max_steps=50, threshold=0.95, lambda_cost=0.0, lambda_energy=1.0,
                                        categorical=mode)
        explain(state.apply_fn, state.params, x[:8], key=jax.random.key(1), config=search, constraints=c)  # compile
        t0 = time.perf_counter()
        e = explain(state.apply_fn, state.params, x, key=jax.random.key(1), config=search, constraints=c,
                    chunk_size=len(x))
        elapsed = time.perf_counter() - t0
        onehot_ok = np.asarray(cons.violations(e.x_cf, e.x, c)["invalid_onehot"]) == 0
        out[mode] = {"reach_tau": float(e.converged.mean()), "valid": float(e.valid.mean()),
                     "real_categories": float(onehot_ok.mean()), "mean_steps": float(e.steps.mean()),
                     "cost_l1": float(np.abs(e.x_cf - e.x).sum(-1).mean()), "search_s": elapsed}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["adult", "german"],
                        help='datasets with one-hot groups to time (default: %(default)s)')
    parser.add_argument("--modes", nargs="+", default=list(CATEGORICAL_MODES), choices=CATEGORICAL_MODES,
                        help='one-hot search modes to compare (default: all)')
    parser.add_argument("--epochs", type=int, default=10, help="CT epochs per mode (maturity per epoch)")
    parser.add_argument("--bl-epochs", type=int, default=30, help="epochs of the baseline searched at test time")
    parser.add_argument("--n", type=int, default=500, help="test factuals per mode")
    parser.add_argument("--quick", action="store_true", help="German only, 3 CT epochs, 5 BL epochs, 100 factuals")
    parser.add_argument("--json", default=None,
                        help='also write the rows to this JSON file')
    args = parser.parse_args(argv)
    check_arguments(args.datasets, args.json)
    if args.quick:
        args.datasets, args.epochs, args.bl_epochs, args.n = ["german"], 3, 5, 100
    out = {}
    for name in args.datasets:
        tt = test_time(name, args.modes, args.n, args.bl_epochs)
        rows = {}
        for mode in args.modes:
            tr = training_maturity(name, mode, args.epochs)
            rows[mode] = {"training": tr, "test_time": tt[mode]}
        out[name] = rows
        print(f"\n### {name}: CT {args.epochs} epochs per mode; test time: BL {args.bl_epochs} epochs, {args.n} factuals")
        print("| mode | mature CFs per epoch (first → last) | mean mature | train steps (last) | CT epoch (s) "
              "| test: reach τ | valid | real categories | steps | cost L1 | search (s) |")
        print("|" + "---|" * 11)
        for mode, r in rows.items():
            tr, te = r["training"], r["test_time"]
            print(f"| {mode} | {' '.join(f'{m:.2f}' for m in tr['mature'])} | {np.mean(tr['mature']):.2f} "
                  f"| {tr['steps'][-1]:.1f} | {np.median(tr['epoch_s'][1:] or tr['epoch_s']):.2f} "
                  f"| {te['reach_tau']:.2f} | {te['valid']:.2f} | {te['real_categories']:.2f} | {te['mean_steps']:.1f} "
                  f"| {te['cost_l1']:.2f} | {te['search_s']:.2f} |", flush=True)
    write_json(args.json, {"categorical": out, "args": vars(args)})
    return out


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
