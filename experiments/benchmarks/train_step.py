"""Time of one CT train step vs one vanilla step, against the ratio predicted by counting work.

    python -m experiments.benchmarks.train_step [--batch 1000 --json out.json]

A vanilla step is one forward-backward pass over the batch. A CT step adds, for n_ce factuals,
one forward pass to pick targets, the search (one forward-backward per step), and the loss's
forward-backward over [x', x⁺, x_AE]: predicted ratio = 1 + (n_ce/batch)·(search steps + 3).
The search is a batched loop that runs until its *slowest* sample stops, so the prediction is
given with the mean per-sample steps (the issue's formula) and with the loop's iterations.
Each size is timed with two training searches: one that stops at τ (`SearchConfig()`, `TrainConfig`'s default
and the reference's rule) and the walk past τ (`WALK_PAST_TAU`, the default before the training-search study),
where every sample takes all T steps, so its work per sample is T steps whatever τ.
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ctrain.constraints import unconstrained
from ctrain.models import make_model
from ctrain.objective import make_counterfactual_batch, positive_pool
from ctrain.search import WALK_PAST_TAU, SearchConfig
from ctrain.train import TrainConfig, create_train_state, make_train_step
from experiments.benchmarks.common import check_arguments, fmt, measure, write_json
from experiments.pipeline import run_command

SEARCHES = ("stop at τ", "walk")
CASES = {"adult-sized (104 features, 2 classes)": (104, 2, 192), "mnist (784 features, 10 classes)": (784, 10, 500)}


def run_case(name: str, width: int, classes: int, n_ce: int, batch: int, repeats: int, threshold: float,
             search: str = "stop at τ") -> dict:
    """Returns step timings and measured vs predicted CT/vanilla ratios for one input size and search (SEARCHES)."""
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, width)).astype(np.float32)
    y = rng.integers(0, classes, 20 * batch)
    x = centres[y] + rng.normal(size=(len(y), width)).astype(np.float32)
    apply_fn, params = make_model("mlp", width, classes, jax.random.key(0))
    state = create_train_state(apply_fn, params)
    vanilla = jax.jit(make_train_step(TrainConfig(objective="vanilla")))
    # A few vanilla epochs first, so the search runs on a model that has learnt something.
    for epoch in range(3):
        for i in range(0, len(x), batch):
            state, _ = vanilla(state, {"x": jnp.asarray(x[i:i + batch]), "y": jnp.asarray(y[i:i + batch])})
    pool = positive_pool(x, y, classes)
    walk = search == "walk"
    search_config = (WALK_PAST_TAU if walk else SearchConfig()).replace(threshold=threshold)
    ct = jax.jit(make_train_step(TrainConfig(search=search_config, ce_per_batch=n_ce), unconstrained(width)))
    b = {"x": jnp.asarray(x[:batch]), "y": jnp.asarray(y[:batch])}
    key = jax.random.key(1)
    t_vanilla = measure(lambda: vanilla(state, b), repeats=repeats)
    t_ct = measure(lambda: ct(state, {**b, "pool": pool}, key), repeats=repeats)
    _, metrics = ct(state, {**b, "pool": pool}, key)
    mean_steps = float(metrics["search_steps"])  # steps to reach τ
    if walk:  # every sample takes all T steps (its `steps` count only those before τ)
        work_steps = loop_iters = search_config.max_steps
    else:
        # The loop's iteration count: the batched while_loop runs until its slowest sample stops.
        cf = jax.jit(lambda k: make_counterfactual_batch(apply_fn, state.params, b["x"][:n_ce], b["y"][:n_ce],
                                                         pool, k, search_config, unconstrained(width)))(key)
        work_steps, loop_iters = mean_steps, int(np.max(np.asarray(cf.steps)))
    frac = n_ce / batch
    measured = t_ct["median"] / t_vanilla["median"]
    pred_mean = 1 + frac * (work_steps + 3)
    pred_loop = 1 + frac * (loop_iters + 3)
    return {"case": name, "search": search, "work_steps": work_steps, "batch": batch, "n_ce": n_ce, "tau": threshold,
            "vanilla_s": t_vanilla, "ct_s": t_ct,
            "mean_search_steps": mean_steps, "loop_iterations": loop_iters, "converged": float(metrics["converged"]),
            "measured_ratio": measured, "predicted_ratio_mean_steps": pred_mean,
            "predicted_ratio_loop_iterations": pred_loop, "measured_over_predicted": measured / pred_mean,
            "measured_over_predicted_loop": measured / pred_loop}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000,
                        help='rows per training batch (default: %(default)s)')
    parser.add_argument("--repeats", type=int, default=5,
                        help='timed steps per case (default: %(default)s)')
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="the search's target probability τ (default: %(default)s)")
    parser.add_argument("--json", default=None,
                        help='also write the rows to this JSON file')
    args = parser.parse_args(argv)
    check_arguments(json_path=args.json)
    rows = [run_case(name, w, k, n, args.batch, args.repeats, args.threshold, search)
            for name, (w, k, n) in CASES.items() for search in SEARCHES]
    print("| input | training search | n_ce/batch | vanilla ms | CT ms | steps to τ | steps per sample | loop iters "
          "| measured ratio | predicted (per sample) | measured/predicted | predicted (loop) "
          "| measured/predicted (loop) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['search']} | {r['n_ce']}/{r['batch']} | {fmt(r['vanilla_s'])} | {fmt(r['ct_s'])} "
              f"| {r['mean_search_steps']:.1f} | {r['work_steps']:.1f} | {r['loop_iterations']} "
              f"| {r['measured_ratio']:.1f} "
              f"| {r['predicted_ratio_mean_steps']:.1f} | {r['measured_over_predicted']:.2f} "
              f"| {r['predicted_ratio_loop_iterations']:.1f} | {r['measured_over_predicted_loop']:.2f} |")
    write_json(args.json, {"train_step": rows})
    return rows


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
