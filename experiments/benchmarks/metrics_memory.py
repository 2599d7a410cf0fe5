"""Wall time and peak memory of IP and MMD² (IP*) at MNIST scale: 10,000 CFs × 784 features vs 10,000 targets.

    python -m experiments.benchmarks.metrics_memory [--n 10000 --m 10000 --d 784 --chunk-size 1024 --json out.json]

The reference could not afford MMD during its grid searches ("simply too much memory"): the naive IP
tensor is N×M×D (31 GB in float32 here) and each MMD Gram matrix is 400 MB. `ctrain.metrics` computes
both in bounded memory. Memory is reported three ways: the process peak RSS from `getrusage` (all time,
including the JAX import and the inputs), the RSS before each call, and the highest RSS sampled every
few milliseconds during the call. Nothing about time is asserted; the script exits 1 if the process
peak exceeds --limit-gb.
"""
from __future__ import annotations

import argparse
import resource
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from ctrain import metrics
from experiments.benchmarks.common import machine, write_json
from experiments.pipeline import run_command

_PAGE_BYTES = resource.getpagesize()
_MB = 1024 ** 2


def current_rss_bytes() -> int:
    """Returns the resident set size of this process now (Linux /proc; falls back to the all-time peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE_BYTES
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Returns the all-time peak RSS of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class RssSampler:
    """Context manager recording the highest RSS seen while its body runs, sampled every `interval_s`."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self):
        self.peak = current_rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())


def profile(name: str, fn, repeats: int) -> dict:
    """Returns wall times and RSS figures of `fn()`: the first call (with compilation) and the best later call."""
    calls, result = [], None
    for _ in range(repeats):
        before = current_rss_bytes()
        with RssSampler() as sampler:
            t0 = time.perf_counter()
            result = jax.block_until_ready(fn())
            elapsed = time.perf_counter() - t0
        calls.append({"s": elapsed, "rss_before_mb": before / _MB, "rss_peak_mb": sampler.peak / _MB,
                      "rss_increase_mb": (sampler.peak - before) / _MB})
    warm = min(calls[1:], key=lambda c: c["s"]) if repeats > 1 else None
    return {"metric": name, "first_call": calls[0], "warm_call": warm, "result": result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="counterfactuals")
    parser.add_argument("--m", type=int, default=None, help="target samples (default: --n)")
    parser.add_argument("--d", type=int, default=784, help="features")
    parser.add_argument("--chunk-size", type=int, default=1024,
                        help='rows per chunk of the chunked metrics (default: %(default)s)')
    parser.add_argument("--length-scales", type=float, nargs="+",
                        default=[metrics.DEFAULT_LENGTH_SCALE, metrics.REFERENCE_CODE_LENGTH_SCALE],
                        help="MMD kernel length scales (default: the paper's 0.5 and the reference code's 5.0)")
    parser.add_argument("--repeats", type=int, default=2, help="calls per metric; the first includes compilation")
    parser.add_argument("--limit-gb", type=float, default=2.0, help="fail if the process peak RSS exceeds this")
    parser.add_argument("--json", default=None, help="optional path for the figures as JSON")
    args = parser.parse_args(argv)
    m = args.m or args.n

    rng = np.random.default_rng(0)
    # MNIST-like ranges: pixels in [-1, 1]; the targets are shifted so MMD² is clearly positive.
    x_cf = jnp.asarray(np.clip(rng.normal(0.0, 0.5, size=(args.n, args.d)), -1, 1), jnp.float32)
    x_target = jnp.asarray(np.clip(rng.normal(0.2, 0.5, size=(m, args.d)), -1, 1), jnp.float32)
    input_mb = (x_cf.nbytes + x_target.nbytes) / _MB

    ip = profile("IP", lambda: metrics.implausibility(x_cf, x_target, chunk_size=args.chunk_size), args.repeats)
    mmds = [profile(f"MMD2 l={ell:g}",
                    lambda ell=ell: metrics.mmd2_unbiased(x_cf, x_target, length_scale=ell, chunk_size=args.chunk_size),
                    args.repeats)
            for ell in args.length_scales]

    # Spot check of IP against the direct formula on a few rows (float64 NumPy).
    rows = np.asarray(x_cf[:4], np.float64)
    direct = np.stack([np.abs(r - np.asarray(x_target, np.float64)).sum(1).mean() for r in rows])
    ip_error = float(np.max(np.abs(direct - np.asarray(ip["result"][:4]))))
    process_peak_mb = peak_rss_bytes() / _MB

    host = machine()
    print(f"device: {host['device']} ({host['backend']}), {host['cpu_count']} CPUs; jax {jax.__version__}")
    print(f"inputs: {args.n} CFs x {args.d} vs {m} targets x {args.d} (float32, {input_mb:.0f} MB together); "
          f"chunk_size={args.chunk_size}")
    print(f"{'metric':<12} {'call':<6} {'wall s':>8} {'RSS before MB':>14} {'peak during MB':>15} {'increase MB':>12}")
    for r in (ip, *mmds):
        for label, call in (("first", r["first_call"]), ("warm", r["warm_call"])):
            if call is not None:
                print(f"{r['metric']:<12} {label:<6} {call['s']:>8.2f} {call['rss_before_mb']:>14.0f} "
                      f"{call['rss_peak_mb']:>15.0f} {call['rss_increase_mb']:>12.0f}")
    print(f"IP mean {float(jnp.mean(ip['result'])):.4f} (max |error| vs direct float64 on 4 rows: {ip_error:.2e})")
    for r in mmds:
        print(f"{r['metric']}: {float(r['result']):.6g}")
    within = process_peak_mb <= args.limit_gb * 1024
    print(f"process peak RSS (getrusage): {process_peak_mb:.0f} MB "
          f"({'within' if within else 'OVER'} the {args.limit_gb:g} GB limit)")

    write_json(args.json, {"n": args.n, "m": m, "d": args.d, "chunk_size": args.chunk_size,
                           "process_peak_rss_mb": process_peak_mb, "ip_max_abs_error_4_rows": ip_error,
                           "results": [{**{k: v for k, v in r.items() if k != "result"},
                                        "value_mean": float(jnp.mean(r["result"]))} for r in (ip, *mmds)]})
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
