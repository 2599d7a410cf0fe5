"""The benchmark suite: one command, one table, one JSON file.

    python -m experiments.benchmarks.run_all [--quick] [--with-reproduce] [--json results/benchmarks.json]

Runs: CT vs vanilla step time against the work-counting prediction (train_step), counterfactual
search throughput vmapped vs per-sample loop (search_throughput), compiled epoch times and full
100-epoch CT runs per dataset plus K vmapped runs vs K sequential ones (training), peak memory of
IP / MMD² scoring (metrics_memory), what CT costs against BL and what its cheaper options (amortised
chains, fewer counterfactuals, burn-in) give up (ct_cost: its --quick smoke run with --quick, the full run only with
--with-ct-cost, hours on a CPU), and optionally the wall time of the default reproduce run.
Figures are median [min–max] over repeats; nothing is asserted. On a GPU or TPU, run
`python -m experiments.benchmarks.device_check` instead: the figures that matter there, in under 8 minutes.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from experiments.benchmarks import ct_cost, search_throughput, train_step, training
from experiments.benchmarks.common import check_arguments, machine, write_json
from experiments.pipeline import run_command


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and datasets (a smoke run)")
    parser.add_argument("--with-ct-cost", action="store_true",
                        help="also run the full ct_cost benchmark (4 datasets x 5 seeds; hours on a CPU)")
    parser.add_argument("--with-reproduce", action="store_true", help="also time `python -m experiments.reproduce`")
    parser.add_argument("--json", default=os.path.join("results", "benchmarks.json"),
                        help="file of every benchmark's rows (default: %(default)s)")
    args = parser.parse_args(argv)
    check_arguments(json_path=args.json)
    repeats = 2 if args.quick else 5
    print(f"machine: {machine()}\n")
    out = {}
    print("## CT step vs vanilla step (batch 1000)")
    out["train_step"] = train_step.main(["--repeats", str(repeats)])
    print("\n## Counterfactual search throughput (batch 1000, T = 30)")
    out["search_throughput"] = search_throughput.main(["--repeats", str(repeats)])
    print("\n## Epochs, full runs, K runs in one program")
    datasets = ["circles"] if args.quick else ["linearly_separable", "circles", "moons", "overlapping", "adult",
                                               "german", "digits"]
    out["training"] = training.main(["--repeats", str(max(1, repeats // 2)), "--datasets", *datasets,
                                     "--seeds", "3" if args.quick else "10"])
    print("\n## Peak memory of IP and MMD² (10,000 x 784 vs 10,000 x 784)")
    n = "2000" if args.quick else "10000"
    mem = subprocess.run([sys.executable, "-m", "experiments.benchmarks.metrics_memory", "--n", n],
                         capture_output=True, text=True)
    print(mem.stdout[-2000:])
    out["metrics_memory_stdout"] = mem.stdout
    if args.quick or args.with_ct_cost:
        print("\n## What CT costs, and its cheaper options (ct_cost)")
        out["ct_cost"] = ct_cost.main(["--quick"] if args.quick and not args.with_ct_cost else [])
    if args.with_reproduce:
        print("\n## Default reproduce run")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "experiments.reproduce", "--quiet", "--no-plots", "--out",
                        os.path.join("results", "bench_reproduce")], check=True, stdout=subprocess.DEVNULL)
        out["reproduce_default_s"] = time.perf_counter() - t0
        print(f"python -m experiments.reproduce: {out['reproduce_default_s'] / 60:.1f} min")
    write_json(args.json, out)
    print(f"\nwritten: {args.json}")
    return out


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
