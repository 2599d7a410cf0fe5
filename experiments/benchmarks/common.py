"""Timing helpers shared by the benchmark scripts: repeated wall-clock measurements and a machine description."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import jax

from ctrain import storage


def block(tree):
    """Returns `tree` after waiting for every array in it (JAX dispatch is asynchronous)."""
    return jax.block_until_ready(tree)


def measure(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Returns {"min", "median", "max"} seconds of `fn()` over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - t0)
    return {"min": min(times), "median": statistics.median(times), "max": max(times)}


def machine() -> dict[str, str]:
    """Returns a short description of the host and JAX backend the figures were measured on."""
    dev = jax.devices()[0]
    return {"platform": platform.platform(), "cpu_count": str(os.cpu_count()), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(), "device": getattr(dev, "device_kind", str(dev)),
            "device_count": str(jax.device_count())}


def check_arguments(datasets=(), json_path: str | None = None) -> None:
    """Returns None; raises ValueError for a dataset without a config or an unwritable --json (run_command: one
    line, exit 2)."""
    from experiments.configs import get_config
    from experiments.pipeline import check_output_file, command_checks
    with command_checks():
        for name in datasets:
            get_config(name)
        check_output_file("--json", json_path)


def write_json(path: str | None, payload: dict) -> None:
    """Writes `payload` (plus the machine description) as JSON to `path` when a path is given."""
    if path:
        storage.write_json(path, {"machine": machine(), **payload}, indent=2)


def fmt(stats: dict[str, float], scale: float = 1e3) -> str:
    """Returns "median [min–max]" of a measure() dict in milliseconds (or `scale` units)."""
    return f"{stats['median'] * scale:.2f} [{stats['min'] * scale:.2f}–{stats['max'] * scale:.2f}]"
