"""Test setup: four fake CPU devices (set before JAX is imported) so data parallelism is tested on CPU."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), "_no_tfds_data"))

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
