"""Test setup: four fake CPU devices (set before JAX is imported) so data parallelism is tested on CPU.

The suite compiles the same XLA programs many times over (each test builds its own step for the same shapes),
so it shares one persistent compilation cache, fresh for every session and removed at its end: compilation is
most of the suite's time on a 2-core CPU (tests/test_train_ct.py: 310 s without it, 166 s with it). Tracing
still happens in every test, so `chex.assert_max_traces` and jit cache sizes see exactly what they did before.
"""
import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), "_no_tfds_data"))
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="ctrain-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    # Environment variables, so the subprocesses some tests start (experiment CLIs) share the cache too.
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def moons():
    from ctrain.data import load_dataset
    return load_dataset("moons")


@pytest.fixture(scope="session")
def linearly_separable():
    from ctrain.data import load_dataset
    return load_dataset("linearly_separable")


@pytest.fixture
def key():
    return jax.random.key(0)
