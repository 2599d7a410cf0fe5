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


# --- helpers shared by several test files (issue 24: fixtures were copied across files) --------------------------
# Module scope for the model functions: each test module gets its own function object, as it had with its own copy,
# so jit caches keyed on the function are shared within a module and never across modules.

@pytest.fixture(scope="module")
def linear():
    """Bias-free linear logits x @ p["w"] (test_search, test_input_checks, test_evaluate)."""
    def apply(p, x):
        return x @ p["w"]
    return apply


@pytest.fixture(scope="module")
def linear_apply():
    """Affine logits x @ p["w"] + p["b"] (test_attacks, test_metrics, test_train_ct)."""
    def apply(params, x):
        return x @ params["w"] + params["b"]
    return apply


@pytest.fixture(scope="module")
def mlp_state():
    """A factory: mlp_state(seed=0, width=2, classes=2, **kwargs) is a fresh TrainState of an MLP seeded with `seed`;
    kwargs go to create_train_state (test_train_ct, test_sharding, test_robustness)."""
    from ctrain.models import make_model
    from ctrain.train import create_train_state

    def make(seed=0, width=2, classes=2, **kwargs):
        apply_fn, params = make_model("mlp", width, classes, jax.random.key(seed))
        return create_train_state(apply_fn, params, **kwargs)
    return make


@pytest.fixture(scope="session")
def train_batch():
    """A factory: train_batch(data, n=32, start=0) is rows start:start+n of data's training split as a {"x", "y"} batch
    (test_train_ct, test_sharding, test_stateful)."""
    import jax.numpy as jnp

    def take(data, n=32, start=0):
        return {"x": jnp.asarray(data.x_train[start:start + n]), "y": jnp.asarray(data.y_train[start:start + n])}
    return take


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails the test (test_fetch's download=False tests, every test in test_real_data)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a data loader tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture(scope="session")
def set_args():
    """set_args(["a=1", "b=2"]) == ["--set", "a=1", "--set", "b=2"]: config overrides as CLI arguments
    (test_experiments, test_script_args, test_fetch)."""
    def to_args(items) -> list[str]:
        return sum((["--set", s] for s in items), [])
    return to_args


@pytest.fixture(scope="session")
def naive_mmd2():
    """The unbiased MMD² with an RBF kernel, written out in float64 numpy (test_metrics, test_evaluate)."""
    import numpy as np

    def mmd2(x, y, length_scale):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

        def gram(a, b):
            return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * length_scale ** 2))

        m, n = len(x), len(y)
        k_xx, k_yy = gram(x, x), gram(y, y)
        return ((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
                - 2 * gram(x, y).mean())
    return mmd2
