"""The figures that matter on an accelerator, in one command (79 s on one NVIDIA H200).

    python -m experiments.benchmarks.device_check [--quick] [--out results/device_check]

Sections, each timed after compilation unless it says otherwise:
1. CT step vs vanilla step at Adult and MNIST sizes, against the work-counting prediction (`train_step`);
2. counterfactual search throughput at 2, 104 and 784 features, in counterfactuals/s and counted FLOP/s,
   against the device's float32 matmul rate (`search_throughput`);
3. `fit_many` with K = 1, 10, 100, 1000 seeds of a 100-epoch synthetic CT run (circles, the paper's
   settings): first epoch (with compilation), later epochs, whole call and the projected 100-epoch call; a K
   that would overrun the section's budget (--many-budget-s, 240 s) runs fewer epochs;
4. one 100-epoch CT run with `fit`, compilation included;
5. the collectives in the compiled HLO of a search and a CT epoch sharded over 4 CPU devices, left to XLA's
   partitioner vs run per device (`jax.shard_map`): counts of ops, not times (a subprocess forces the 4 CPU
   devices when this process has fewer).

Writes <out>/device_check.json and <out>/device_check.md (tables naming the device) and prints the tables.
`--quick` (CPU, CI) shrinks every size and finishes in about a minute on 2 cores. Nothing is asserted;
the goals from issue 13 are reported beside the figures they concern.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from ctrain.storage import write_atomic, write_json
from experiments.benchmarks import search_throughput, train_step, training
from experiments.benchmarks.common import fmt, machine
from experiments.pipeline import run_command

FULL = dict(step_batch=1000, search_batch=10_000, loop_samples=50, widths=[2, 104, 784], ks=[1, 10, 100, 1000],
            many_epochs=100, long_epochs=100, repeats=5, matmul_n=4096, many_budget_s=240)
QUICK = dict(step_batch=200, search_batch=500, loop_samples=10, widths=[2, 104, 784], ks=[1, 4, 16],
             many_epochs=3, long_epochs=10, repeats=3, matmul_n=1024, many_budget_s=120)
SYNTHETIC = "circles"
COLLECTIVE_DEVICES = 4


def device_description() -> dict:
    """Returns the device the figures are measured on: kind, platform, count and the JAX version."""
    dev = jax.devices()[0]
    return {"device_kind": dev.device_kind, "platform": dev.platform, "device_count": jax.device_count(),
            "jax": jax.__version__}


# --------------------------------------------------------------------------------------------------
# Collectives (counts in compiled HLO, on forced CPU devices)


PROGRAMS = ("search", "epoch_per_epoch", "epoch_per_batch")


def collective_report(programs=PROGRAMS, n_devices: int = COLLECTIVE_DEVICES) -> dict:
    """Returns collective counts and per-device FLOP of a sharded search and CT epochs, partitioner vs per device.

    Needs `n_devices` CPU devices in this process (XLA_FLAGS=--xla_force_host_platform_device_count=N).
    """
    import jax.numpy as jnp

    from ctrain import sharding
    from ctrain.data import load_dataset
    from ctrain.models import make_model
    from ctrain.objective import positive_pool
    from ctrain.search import SearchConfig, search_counterfactuals
    from ctrain.train import TrainConfig, create_train_state, make_train_epoch

    devices = jax.devices("cpu")[:n_devices]
    mesh = sharding.data_mesh(devices)

    def summary(compiled) -> dict:
        cost = compiled.cost_analysis() or {}
        cost = cost[0] if isinstance(cost, list) else cost
        return {**sharding.collective_counts(compiled.as_text()), "flops_per_device_static": cost.get("flops")}

    apply_fn, params = make_model("mlp", 8, 2, jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 8)), jnp.float32)
    target = ((jnp.argmax(apply_fn(params, x), -1) + 1) % 2).astype(jnp.int32)
    config = SearchConfig(threshold=0.55, max_steps=60, step_size=0.5)
    args = (sharding.replicate(params, mesh), *sharding.shard_batch((x, target), mesh), jax.random.key(0))
    per_device = sharding.per_device_search(mesh)
    out = {"devices": n_devices}
    if "search" in programs:
        out["search"] = {
            "partitioner": summary(jax.jit(lambda p, x, t, k: search_counterfactuals(apply_fn, p, x, t, k, config))
                                   .lower(*args).compile()),
            "per_device": summary(jax.jit(lambda p, x, t, k: per_device(apply_fn, p, x, t, k, config))
                                  .lower(*args).compile())}

    data = load_dataset("moons").subsample(256, seed=0)
    apply_fn, params = make_model("mlp", 2, 2, jax.random.key(0))
    state, pool, x_dev, y_dev = sharding.replicate(
        (create_train_state(apply_fn, params), positive_pool(data.x_train, data.y_train, 2),
         jnp.asarray(data.x_train), jnp.asarray(data.y_train)), mesh)
    for schedule in [p.removeprefix("epoch_") for p in programs if p.startswith("epoch_")]:
        cfg = TrainConfig(search=SearchConfig(threshold=0.5, max_steps=20, step_size=0.5), batch_size=32,
                          ce_per_batch=8, schedule=schedule)
        epochs = {"partitioner": make_train_epoch(cfg, data.constraints(),
                                                  batch_sharding=sharding.batch_sharding(mesh, 1)),
                  "per_device": make_train_epoch(cfg, data.constraints(), mesh=mesh)}
        out[f"epoch_{schedule}"] = {
            name: summary(jax.jit(epoch, static_argnums=(6,)).lower(state, x_dev, y_dev, pool, jax.random.key(0), 0,
                                                                    True).compile())
            for name, epoch in epochs.items()}
    return out


def collectives(programs=PROGRAMS, n_devices: int = COLLECTIVE_DEVICES) -> dict:
    """Returns `collective_report(programs)`, run here when this process has the CPU devices, else in a subprocess."""
    if jax.default_backend() == "cpu" and jax.device_count() >= n_devices:
        return collective_report(programs, n_devices)
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n_devices}"}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "collectives.json")
        subprocess.run([sys.executable, "-m", "experiments.benchmarks.device_check", "--collectives-only", path,
                        "--collective-programs", *programs], env=env, check=True)
        with open(path) as f:
            return json.load(f)


# --------------------------------------------------------------------------------------------------
# The report


def _num(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _nonzero(counts: dict) -> str:
    shown = [f"{n} {op}" for op, n in counts.items() if n]
    return ", ".join(shown) or "none"


def markdown(report: dict) -> str:
    """Returns the report's figures as markdown tables, headed by the device they were measured on."""
    d = report["device"]
    lines = [f"## Device check: {d['device_kind']} ({d['platform']}, {d['device_count']} device(s)), "
             f"JAX {d['jax']}{' — quick sizes' if report['args']['quick'] else ''}", ""]
    lines += ["CT step vs vanilla step (ms, median [min–max]); prediction 1 + (n_ce/batch)·(steps per sample + 3):",
              "", "| input | training search | n_ce/batch | vanilla | CT | steps per sample | measured ratio | predicted "
              "| measured / predicted |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["train_step"]:
        lines.append(f"| {r['case']} | {r['search']} | {r['n_ce']}/{r['batch']} | {fmt(r['vanilla_s'])} "
                     f"| {fmt(r['ct_s'])} | {r['work_steps']:.1f} | {r['measured_ratio']:.1f} "
                     f"| {r['predicted_ratio_mean_steps']:.1f} | {r['measured_over_predicted']:.2f} |")
    mm = report["matmul"]
    lines += ["", f"Counterfactual search, T = {report['search'][0]['steps'] if report['search'] else '-'} steps "
              f"(ms); device float32 matmul ({mm['n']}²): {mm['flops_per_s'] / 1e9:,.1f} GFLOP/s:", "",
              "| MLP | batch | vmapped | CF/s vmapped | CF/s per-sample loop | speed-up | counted GFLOP/s "
              "| matmul / search |", "|---|---|---|---|---|---|---|---|"]
    for r in report["search"]:
        lines.append(f"| {r['width']} | {r['batch']} | {fmt(r['vmapped_s'])} | {r['vmapped_cf_per_s']:,.0f} "
                     f"| {r['loop_cf_per_s']:,.0f} | {r['speedup']:.0f}× | {r['vmapped_flops_per_s'] / 1e9:,.2f} "
                     f"| {mm['flops_per_s'] / r['vmapped_flops_per_s']:.1f}× |")
    lines += ["", f"`fit_many` on {SYNTHETIC} (CT, the paper's settings), whole calls with compilation (s):", "",
              "| fit_many K | epochs | first epoch (compile) | later epoch | per run per epoch (ms) | total "
              "| projected 100 epochs |", "|---|---|---|---|---|---|---|"]
    for r in report["fit_many"]:
        if "skipped" in r:
            lines.append(f"| {r['k']} | skipped: {r['skipped']} | | | | | |")
            continue
        lines.append(f"| {r['k']} | {r['epochs']} | {r['first_epoch_s']:.2f} | {_num(r['epoch_s'], '.3f')} "
                     f"| {_num(r['epoch_ms_per_run'], '.2f')} | {r['total_s']:.1f} "
                     f"| {_num(r['projected_100_epochs_s'], '.1f')} |")
    lr = report["long_run"]
    later = "" if lr["epoch_s"] is None else f", then {1e3 * lr['epoch_s']:.1f} ms/epoch"
    lines += ["", f"One CT run with `fit` on {lr['dataset']}, {lr['epochs']} epochs: {lr['total_s']:.1f} s in all "
              f"(first epoch {lr['first_epoch_s']:.2f} s with compilation{later}).", ""]
    col = report.get("collectives")
    if col:
        lines += [f"Collectives in compiled HLO, sharded over {col['devices']} CPU devices (ops in the program; "
                  "a loop-condition op runs at every iteration):", "",
                  "| program | search runs | in loop conditions | in loop bodies | total | FLOP/device (static) |",
                  "|---|---|---|---|---|---|"]
        for program in [p for p in PROGRAMS if p in col]:
            for how, label in (("partitioner", "XLA partitioner"), ("per_device", "per device (shard_map)")):
                c = col[program][how]
                lines.append(f"| {program} | {label} | {_nonzero(c['in_loop_conditions'])} "
                             f"| {_nonzero(c['in_loop_bodies'])} | {_nonzero(c['total'])} "
                             f"| {c['flops_per_device_static'] or 0:,.0f} |")
        lines.append("")
    lines += ["Goals (issue 13):", ""] + [f"- {g}" for g in report["goals"]]
    lines += ["", "Seconds per section (compilation included): "
              + ", ".join(f"{name} {s:.0f}" for name, s in report.get("section_s", {}).items())]
    return "\n".join(lines) + "\n"


def goals(report: dict) -> list[str]:
    """Returns the issue's goals, each with the measured figure it is judged by."""
    out = []
    for r in report["train_step"]:
        out.append(f"CT step within 1.25× of its work-counting prediction ({r['case']}, {r['search']}): "
                   f"measured/predicted {r['measured_over_predicted']:.2f}")
    k100 = [r for r in report["fit_many"] if r.get("k") == 100 and "skipped" not in r]
    if k100 and (k100[0]["epochs"] == 100 or k100[0]["projected_100_epochs_s"] is not None):
        r = k100[0]
        figure = (f"{r['total_s']:.1f} s measured, compilation included" if r["epochs"] == 100 else
                  f"{r['projected_100_epochs_s']:.1f} s projected from {r['epochs']} epochs")
        out.append(f"100 seeds of a 100-epoch synthetic CT run in under 60 s: {figure}")
    wide = [r for r in report["search"] if r["width"].startswith("784")]
    if wide:
        ratio = report["matmul"]["flops_per_s"] / wide[0]["vmapped_flops_per_s"]
        out.append(f"search at 784 features within 2× of the device's matmul throughput: {ratio:.1f}×")
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU/CI sizes (about a minute on 2 cores)")
    parser.add_argument("--out", default=os.path.join("results", "device_check"),
                        help='folder of device_check.json and device_check.md (default: %(default)s)')
    parser.add_argument("--step-batch", type=int, help="batch of the CT/vanilla step comparison")
    parser.add_argument("--step-cases", nargs="+", choices=("adult", "mnist"), default=["adult", "mnist"],
                        help="input sizes of the step comparison")
    parser.add_argument("--search-batch", type=int, help="factuals per search")
    parser.add_argument("--loop-samples", type=int, help="factuals timed in the per-sample search loop")
    parser.add_argument("--widths", type=int, nargs="+", help="search input widths")
    parser.add_argument("--ks", type=int, nargs="+", help="numbers of seeds for fit_many")
    parser.add_argument("--many-epochs", type=int, help="epochs per fit_many call")
    parser.add_argument("--long-epochs", type=int, help="epochs of the single fit run")
    parser.add_argument("--repeats", type=int,
                        help="timed calls per measurement (default: --quick's or the full check's)")
    parser.add_argument("--matmul-n", type=int,
                        help="size n of the n x n matmul that measures FLOP/s (default: --quick's or the full check's)")
    parser.add_argument("--subsample", type=int, default=None, help="training samples of the synthetic set")
    parser.add_argument("--many-budget-s", type=float,
                        help="seconds for the fit_many section: a larger K runs fewer epochs, or none, to stay inside")
    parser.add_argument("--collective-programs", nargs="+", choices=PROGRAMS, default=list(PROGRAMS),
                        help="sharded programs whose collectives are counted")
    parser.add_argument("--collectives-only", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.collectives_only:  # the subprocess of `collectives()`
        write_json(args.collectives_only, collective_report(args.collective_programs))
        return {}
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    start = time.perf_counter()
    report = {"device": device_description(), "machine": machine(), "args": vars(args)}
    print(f"device: {report['device']}", flush=True)

    scale = args.step_batch / 1000  # the cases' n_ce are per 1000 rows
    sections = {
        "train_step": lambda: [train_step.run_case(name, w, k, max(1, round(n * scale)), args.step_batch,
                                                   args.repeats, 0.5, search)
                               for name, (w, k, n) in train_step.CASES.items() if name.startswith(tuple(args.step_cases))
                               for search in train_step.SEARCHES],
        "matmul": lambda: search_throughput.matmul_flops_per_s(args.matmul_n, args.repeats),
        "search": lambda: [search_throughput.run_case(w, search_throughput.classes_for(w), args.search_batch, 30,
                                                      args.repeats, min(args.loop_samples, args.search_batch))
                           for w in args.widths],
        "fit_many": lambda: training.fit_many_scaling(SYNTHETIC, args.ks, args.many_epochs, args.subsample,
                                                      deadline=time.perf_counter() + args.many_budget_s),
        "long_run": lambda: training.long_run(SYNTHETIC, args.long_epochs, args.subsample),
        "collectives": lambda: collectives(args.collective_programs),
    }
    report["section_s"] = {}
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "device_check.json")
    for name, run in sections.items():
        t0 = time.perf_counter()
        try:
            report[name] = run()
        except Exception as err:  # a lease is short: one broken section must not cost the others' figures
            report.setdefault("failed", {})[name] = f"{type(err).__name__}: {err}"
            print(f"{name} FAILED: {report['failed'][name]}", flush=True)
        report["section_s"][name] = time.perf_counter() - t0
        report["wall_s"] = time.perf_counter() - start
        print(f"{name}: {report['section_s'][name]:.1f} s", flush=True)
        # written after every section so a run cut off by its limit keeps them
        write_json(json_path, report, indent=2, default=str)
    if report.get("failed"):
        raise SystemExit(f"device check: sections failed: {report['failed']}")
    report["goals"] = goals(report)

    table = markdown(report) + f"\nWall time of the check: {report['wall_s']:.0f} s.\n"
    write_json(json_path, report, indent=2, default=str)
    write_atomic(os.path.join(args.out, "device_check.md"), table)
    print(table)
    print(f"written: {os.path.join(args.out, 'device_check.json')} and device_check.md")
    return report


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
