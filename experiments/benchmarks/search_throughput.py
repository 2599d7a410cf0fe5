"""Counterfactuals per second: the vmapped batch search vs a per-sample Python loop (the reference's design).

    python -m experiments.benchmarks.search_throughput [--batch 1000 --steps 30 --json out.json]

Both sides run the same jitted `search_counterfactuals` with exactly T steps (loop="scan", so early
stopping cannot favour either): once on the whole batch, once per sample on batches of one.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from ctrain.models import make_model
from ctrain.search import SearchConfig, search_counterfactuals
from experiments.benchmarks.common import fmt, measure, write_json

search = jax.jit(search_counterfactuals, static_argnames=("apply_fn", "config"))


def run_case(width: int, classes: int, batch: int, steps: int, repeats: int, loop_samples: int) -> dict:
    """Returns timings (seconds) and counterfactuals/second for both designs on one MLP width."""
    apply_fn, params = make_model("mlp", width, classes, jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, width)), jnp.float32)
    target = (jnp.argmax(apply_fn(params, x), -1) + 1) % classes
    cfg = SearchConfig(generator="ecco", max_steps=steps, threshold=0.999, loop="scan")
    key = jax.random.key(1)
    vmapped = measure(lambda: search(apply_fn, params, x, target, key, cfg), repeats=repeats)

    def per_sample():
        # The loop covers `loop_samples` factuals; its time is scaled to the full batch below.
        return [search(apply_fn, params, x[i:i + 1], target[i:i + 1], key, cfg) for i in range(loop_samples)]

    looped = measure(per_sample, repeats=max(1, repeats // 2))
    scale = batch / loop_samples
    looped = {k: v * scale for k, v in looped.items()}
    return {"width": f"{width}->32->{classes}", "batch": batch, "steps": steps, "vmapped_s": vmapped,
            "per_sample_loop_s": looped, "vmapped_cf_per_s": batch / vmapped["median"],
            "loop_cf_per_s": batch / looped["median"], "speedup": looped["median"] / vmapped["median"]}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-samples", type=int, default=200, help="factuals timed in the per-sample loop")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = [run_case(w, k, args.batch, args.steps, args.repeats, min(args.loop_samples, args.batch))
            for w, k in ((2, 2), (784, 10))]
    print("| MLP | batch | T | vmapped ms (median [min–max]) | per-sample loop ms | CF/s vmapped | CF/s loop | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['width']} | {r['batch']} | {r['steps']} | {fmt(r['vmapped_s'])} | {fmt(r['per_sample_loop_s'])} "
              f"| {r['vmapped_cf_per_s']:.0f} | {r['loop_cf_per_s']:.0f} | {r['speedup']:.0f}x |")
    write_json(args.json, {"search_throughput": rows})
    return rows


if __name__ == "__main__":
    main()
