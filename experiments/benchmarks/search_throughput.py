"""Counterfactuals per second: the vmapped batch search vs a per-sample Python loop (the reference's design).

    python -m experiments.benchmarks.search_throughput [--batch 1000 --steps 30 --widths 2 784 --json out.json]
    python -m experiments.benchmarks.search_throughput --step-rules --batch 10000 --widths 104 784

Both sides run the same jitted `search_counterfactuals` with exactly T steps (loop="scan", so early
stopping cannot favour either): once on the whole batch, once per sample on batches of one. The
vmapped search's rate is also given in counted FLOP/s (`search_flops`), to hold against the device's
matmul throughput (`matmul_flops_per_s`).

`--step-rules` times instead the search's default step rule beside plain gradient steps on the whole batch:
exactly T steps (the cost of a step), and `explain`'s search as it runs (stopping at τ; the mean steps taken),
with the ratio default / gradient (issue 35 asks for at most 1.2x at batch 10,000, 104 and 784 features).
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ctrain.models import make_model
from ctrain.search import EXPLAIN_SEARCH, SearchConfig, search_counterfactuals
from experiments.benchmarks.common import check_arguments, fmt, measure, write_json
from experiments.pipeline import run_command

search = jax.jit(search_counterfactuals, static_argnames=("apply_fn", "config"))


HIDDEN = 32  # make_model("mlp")'s hidden width


def search_flops(width: int, classes: int, batch: int, steps: int, hidden: int = HIDDEN) -> float:
    """Returns the counted FLOP of a T-step search: per sample and step, a forward pass and the input gradient,
    each 2·(D·H + H·K) multiply-adds' worth (the parameters get no gradient)."""
    return 2 * 2 * (width * hidden + hidden * classes) * batch * steps


def matmul_flops_per_s(n: int, repeats: int) -> dict[str, float]:
    """Returns {"flops_per_s", "seconds"}: the best float32 (n, n) @ (n, n) rate on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    t = measure(lambda: matmul(a), repeats=repeats)
    return {"n": n, "flops_per_s": 2 * n ** 3 / t["min"], "seconds": t}


def run_case(width: int, classes: int, batch: int, steps: int, repeats: int, loop_samples: int) -> dict:
    """Returns timings (seconds), counterfactuals/second and counted FLOP/s for both designs on one MLP width."""
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
            "vmapped_flops_per_s": search_flops(width, classes, batch, steps) / vmapped["median"],
            "loop_cf_per_s": batch / looped["median"], "speedup": looped["median"] / vmapped["median"]}


def step_rule_case(width: int, classes: int, batch: int, steps: int, repeats: int) -> dict:
    """Returns seconds of the default step rule's search and of plain gradient steps, T steps and run to τ."""
    apply_fn, params = make_model("mlp", width, classes, jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, width)), jnp.float32)
    target = (jnp.argmax(apply_fn(params, x), -1) + 1) % classes
    key = jax.random.key(1)
    row = {"width": f"{width}->32->{classes}", "batch": batch, "steps": steps,
           "default_step_rule": EXPLAIN_SEARCH.step_rule}
    for loop in ("scan", "while"):
        for rule in (EXPLAIN_SEARCH.step_rule, "gradient"):
            cfg = EXPLAIN_SEARCH.replace(max_steps=steps, loop=loop, step_rule=rule)
            name = f"{loop}_{'default' if rule == EXPLAIN_SEARCH.step_rule else 'gradient'}"
            row[f"{name}_s"] = measure(lambda: search(apply_fn, params, x, target, key, cfg), repeats=repeats)
            row[f"{name}_mean_steps"] = float(search(apply_fn, params, x, target, key, cfg).steps.mean())
        row[f"{loop}_ratio"] = row[f"{loop}_default_s"]["median"] / row[f"{loop}_gradient_s"]["median"]
    return row


def print_step_rules(rows: list[dict]) -> None:
    """Prints the step-rule rows as a markdown table."""
    print("| MLP | batch | T | loop | default step rule ms (mean steps) | gradient steps ms (mean steps) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for loop, label in (("scan", "T steps"), ("while", "to τ")):
            print(f"| {r['width']} | {r['batch']} | {r['steps']} | {label} "
                  f"| {fmt(r[f'{loop}_default_s'])} ({r[f'{loop}_default_mean_steps']:.1f}) "
                  f"| {fmt(r[f'{loop}_gradient_s'])} ({r[f'{loop}_gradient_mean_steps']:.1f}) "
                  f"| {r[f'{loop}_ratio']:.2f}x |")


def classes_for(width: int) -> int:
    """Returns the classes of the benchmark's MLP for an input width: 10 for MNIST-sized inputs, else 2."""
    return 10 if width >= 784 else 2


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000, help="factuals searched at once (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=30, help="search steps T (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (default: %(default)s)")
    parser.add_argument("--loop-samples", type=int, default=200, help="factuals timed in the per-sample loop")
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 784],
                        help="input widths (2 classes below 784 features, 10 at 784 and above)")
    parser.add_argument("--step-rules", action="store_true",
                        help="time the default step rule beside plain gradient steps, not the per-sample loop")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    check_arguments(json_path=args.json)
    if args.step_rules:
        rows = [step_rule_case(w, classes_for(w), args.batch, args.steps, args.repeats) for w in args.widths]
        print_step_rules(rows)
        write_json(args.json, {"search_step_rules": rows})
        return rows
    rows = [run_case(w, classes_for(w), args.batch, args.steps, args.repeats, min(args.loop_samples, args.batch))
            for w in args.widths]
    print("| MLP | batch | T | vmapped ms (median [min–max]) | per-sample loop ms | CF/s vmapped | CF/s loop | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['width']} | {r['batch']} | {r['steps']} | {fmt(r['vmapped_s'])} | {fmt(r['per_sample_loop_s'])} "
              f"| {r['vmapped_cf_per_s']:.0f} | {r['loop_cf_per_s']:.0f} | {r['speedup']:.0f}x |")
    write_json(args.json, {"search_throughput": rows})
    return rows


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
