"""Smoke tests for experiments/plots.py: every figure is written as a valid, non-trivial PNG."""
import jax
import numpy as np
import pytest

from ctrain.data import from_arrays, load_dataset
from ctrain.models import make_model
from ctrain.search import SearchConfig
from ctrain.train import TrainConfig, create_train_state, fit
from experiments import plots


def assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(b"\x89PNG")
    assert len(data) > 5_000


@pytest.fixture(scope="module")
def small_moons():
    return load_dataset("moons", n_train=200, n_val=0, n_test=100)


@pytest.fixture(scope="module")
def trained(small_moons):
    apply_fn, params = make_model("mlp", 2, 2, jax.random.key(0))
    state, history = fit(create_train_state(apply_fn, params, learning_rate=1e-2), small_moons,
                         TrainConfig(objective="vanilla", epochs=3), progress=False)
    return (apply_fn, state.params), history


def test_decision_surfaces(small_moons, trained, tmp_path):
    model, _ = trained
    random_model = make_model("mlp", 2, 2, jax.random.key(1))
    path = tmp_path / "sub" / "surfaces.png"
    out = plots.plot_decision_surfaces(path, small_moons, {"BL": random_model, "CT": model}, key=jax.random.key(2),
                                       search_config=SearchConfig(max_steps=10, threshold=0.6), n_factuals=6,
                                       grid_size=60)
    assert out == path
    assert_png(path)


def test_decision_surfaces_multiclass(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    data = from_arrays(rng.normal(size=(90, 2)) + np.array([[0, 0], [3, 0], [0, 3]])[y], y)
    path = plots.plot_decision_surfaces(tmp_path / "k3.png", data, {"MLP": make_model("mlp", 2, 3, jax.random.key(0))},
                                        key=jax.random.key(1), search_config=SearchConfig(max_steps=10, threshold=0.6),
                                        grid_size=60)
    assert_png(path)


def test_decision_surfaces_rejects_non_2d(tmp_path):
    rng = np.random.default_rng(0)
    wide = from_arrays(rng.normal(size=(40, 3)), np.arange(40) % 2)
    with pytest.raises(ValueError, match="2-D"):
        plots.plot_decision_surfaces(tmp_path / "x.png", wide, {"m": make_model("mlp", 3, 2, jax.random.key(0))},
                                     key=jax.random.key(0), search_config=SearchConfig(max_steps=2))


def test_robust_accuracy(tmp_path):
    eps = [0.0, 0.05, 0.1, 0.2]
    curves = {"BL": {"fgsm": {"epsilon": eps, "accuracy": [0.95, 0.7, 0.4, 0.1]},
                     "pgd": {"epsilon": eps, "accuracy": [0.95, 0.6, 0.3, 0.05]}},
              "CT": {"fgsm": {"epsilon": eps, "accuracy": [0.94, 0.85, 0.7, 0.5]}}}
    path = plots.plot_robust_accuracy(tmp_path / "robust.png", curves, title="moons")
    assert_png(path)


def test_counterfactual_grid(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (5, 64))
    cfs = {"BL": rng.uniform(-1, 1, (5, 64)), "CT": rng.uniform(-1, 1, (5, 64))}
    path = plots.plot_counterfactual_grid(tmp_path / "grid.png", x, cfs, image_shape=(8, 8),
                                          targets=[1, 2, 3, 4, 0], factual_labels=[0, 1, 2, 3, 4])
    assert_png(path)
    with pytest.raises(ValueError, match="shape"):
        plots.plot_counterfactual_grid(tmp_path / "bad.png", x, {"BL": x[:, :10]}, image_shape=(8, 8))


def test_training_curves(trained, tmp_path):
    _, history = trained
    other = [{**log, "loss": log["loss"] * 1.2} for log in history]
    path = plots.plot_training_curves(tmp_path / "curves.png", {"BL": history, "CT": other})
    assert_png(path)
