"""Wall time of the reference's full 270-configuration generator grid for one synthetic dataset, on this machine.

    python -m experiments.benchmarks.tuning_grid                       # overlapping: the whole grid, train + evaluate
    python -m experiments.benchmarks.tuning_grid --dataset moons --json results/tuning_grid.json
    python -m experiments.benchmarks.tuning_grid --quick               # 2 generators, T 5, one λ and τ, 2 epochs

Runs `experiments.studies.grids.tuning`'s generator grid (generator × T × λ_energy × τ × objective = 3·3·5·3·2 = 270
configurations; App. C's settings, 100 epochs, the tuning protocol: 5 rounds × 100 training factuals × 5
test-time λ_energy, T 50, τ 0.95) from an empty folder and reports the wall time, split into training,
evaluation and the VAE of REVISE, beside the reference's figure: 49 min (moons) to 3 h 52 min (overlapping) on
34 CPUs for the same 270 configurations (28–132 CPU-hours). It also reports the process's CPU time, which
other processes sharing the cores do not inflate as they inflate the wall time, and the load average. The 135
BL configurations are one model here (the vanilla objective reads none of the generator settings), trained and
evaluated once; the 135 CT configurations are 135 compiled programs, since every axis of this grid is a static
setting of the search.
Default dataset: overlapping, the reference's slowest (its counterfactuals rarely mature, so every search runs
all T steps). Expected time: about 25–35 minutes on a 2-core CPU (measured; see the README).
"""
from __future__ import annotations

import argparse
import os
import sys
import resource
import shutil
import tempfile
import time

from experiments.studies.grids import tuning
from experiments.benchmarks.common import check_arguments, write_json
from experiments.pipeline import run_command

# reference-implementation.md §6: 270 configurations on 34 CPUs (2 GB each), per synthetic dataset.
REFERENCE_MINUTES = {"moons": 49, "linearly_separable": 64, "circles": 109, "overlapping": 232}
REFERENCE_CPUS = 34
QUICK_AXES = {"train.search.generator": ("ecco", "generic"), "train.search.max_steps": ("5",),
              "train.search.lambda_energy": ("5.0",), "train.search.threshold": ("0.75",)}
QUICK_SET = ("train.epochs=2", "protocol.n_rounds=2", "protocol.n_individuals=20", "protocol.lambda_energy=1.0")


def benchmark(dataset: str, *, out: str, axes=None, overrides=(), progress: bool = False) -> dict:
    """Returns the timed run of the generator grid on one dataset (wall time, its split, counts, reference figures)."""
    load_before = os.getloadavg()
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    res = tuning.run("generator", [dataset], out=out, axes=axes, overrides=overrides, progress=progress,
                     log=lambda line: print(line, flush=True))
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    collected = tuning.collect(out, "generator")
    minutes = REFERENCE_MINUTES.get(dataset)
    return {"dataset": dataset, "configurations": res["points"], "distinct_trainings": res["distinct_configs"],
            "compiled_programs": res["all_groups"], "wall_s": wall, "cpu_s": cpu, "timings": res["timings"],
            # Other processes share the cores: the load average says how contended the wall time was.
            "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
            "ct_rows": len(collected["rows"]),
            "reference": {"minutes": minutes, "cpus": REFERENCE_CPUS,
                          "cpu_hours": None if minutes is None else minutes * REFERENCE_CPUS / 60,
                          "range_minutes": [min(REFERENCE_MINUTES.values()), max(REFERENCE_MINUTES.values())]},
            "axes": axes, "overrides": list(overrides)}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process (XLA's included)
    return usage.ru_utime + usage.ru_stime


def report(result: dict) -> str:
    """Returns the benchmark's result as a markdown table beside the reference's figure."""
    t, ref = result["timings"], result["reference"]
    cpus = os.cpu_count()
    ref_cell = (f"{ref['minutes']} min on {ref['cpus']} CPUs ({ref['cpu_hours']:.0f} CPU-h)" if ref["minutes"]
                else f"{ref['range_minutes'][0]}–{ref['range_minutes'][1]} min on {ref['cpus']} CPUs")
    return "\n".join([
        "| dataset | configurations | trainings / programs | wall (min) | training (min) | evaluation (min) "
        "| REVISE VAE (s) | CPU time (CPU-h) | load average (1 min, start → end) | reference |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {result['dataset']} | {result['configurations']} | {result['distinct_trainings']} / "
        f"{result['compiled_programs']} | {result['wall_s'] / 60:.1f} | {t['train_s'] / 60:.1f} "
        f"| {t['evaluate_s'] / 60:.1f} | {t['vae_s']:.1f} | {result['cpu_s'] / 3600:.2f} on {cpus} CPUs "
        f"| {result['load_average']['before'][0]:.1f} → {result['load_average']['after'][0]:.1f} | {ref_cell} |"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 1)[1])
    parser.add_argument("--dataset", default="overlapping", choices=sorted(REFERENCE_MINUTES),
                        help='dataset of the grid that is timed (default: %(default)s)')
    parser.add_argument("--out", default=None, help="grid folder to keep (default: a temporary one, deleted)")
    parser.add_argument("--quick", action="store_true", help="a 4-configuration slice with 2 epochs (about a minute)")
    parser.add_argument("--json", default=None,
                        help='also write the timings to this JSON file')
    parser.add_argument("--quiet", action="store_true",
                        help='no progress bars')
    args = parser.parse_args(argv)
    check_arguments([args.dataset], args.json)
    out = args.out or tempfile.mkdtemp(prefix="tuning_grid_")
    try:
        result = benchmark(args.dataset, out=out, axes=QUICK_AXES if args.quick else None,
                           overrides=QUICK_SET if args.quick else (), progress=not args.quiet)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    result["quick"] = args.quick
    print(report(result))
    write_json(args.json, {"tuning_grid": result})
    return result


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
