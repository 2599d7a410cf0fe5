"""Smoke tests for experiments/plots.py: every figure is written as a valid, non-trivial PNG."""
import jax
import jax.numpy as jnp
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


def test_decision_surfaces_with_panels_constraints_boundary_and_a_target(small_moons, trained, tmp_path):
    model, _ = trained
    held = small_moons.with_mutability(x0="immutable")
    panels = {"free": model, "x0 held": model}
    seen = []
    real = plots.search_counterfactuals_jit

    def spy(apply_fn, params, x, target, key, config, constraints, **kwargs):
        seen.append((np.asarray(target), np.asarray(constraints.mutability)))
        return real(apply_fn, params, x, target, key, config, constraints, **kwargs)

    plots.search_counterfactuals_jit = spy
    try:
        path = plots.plot_decision_surfaces(tmp_path / "panels.png", small_moons, panels, key=jax.random.key(0),
                                            search_config=SearchConfig(max_steps=5, threshold=0.6),
                                            constraints={"free": small_moons.constraints(),
                                                         "x0 held": held.constraints()},
                                            ncols=1, boundary=True, target_class=1, show="train", n_factuals=4,
                                            grid_size=40)
    finally:
        plots.search_counterfactuals_jit = real
    assert_png(path)
    assert all((t == 1).all() for t, _ in seen)  # every factual searched towards class 1
    assert not np.array_equal(seen[0][1], seen[1][1])  # each panel searched under its own constraints
    with pytest.raises(ValueError, match=r"no entry for the panel\(s\) \['x0 held'\]"):
        plots.plot_decision_surfaces(tmp_path / "x.png", small_moons, panels, key=jax.random.key(0),
                                     search_config=SearchConfig(max_steps=2), constraints={"free": held.constraints()})


def test_robust_accuracy_with_spread_over_seeds(tmp_path):
    eps = [0.0, 0.05, 0.1]
    curves = {"BL": {"fgsm": {"epsilon": eps, "mean": [0.9, 0.5, 0.2], "min": [0.88, 0.4, 0.1],
                              "max": [0.92, 0.6, 0.3]}},
              "CT": {"fgsm": {"epsilon": eps, "accuracy": [0.9, 0.8, 0.7]}}}
    assert_png(plots.plot_robust_accuracy(tmp_path / "spread.png", curves, title="spread"))
    with pytest.raises(ValueError, match="holds neither 'accuracy' nor 'mean'"):
        plots.plot_robust_accuracy(tmp_path / "bad.png", {"BL": {"fgsm": {"epsilon": eps}}}, title="bad")


def test_ig_maps(tmp_path):
    rng = np.random.default_rng(0)
    maps = {"BL": rng.uniform(0, 1, (3, 64)), "CT": rng.uniform(0, 1, (3, 64))}
    protected = np.zeros(64, bool)
    protected[:8] = protected[-8:] = True
    assert_png(plots.plot_ig_maps(tmp_path / "ig.png", maps, image_shape=(8, 8), protected_mask=protected,
                                  class_names=["a", "b", "c"], title="IG"))
    with pytest.raises(ValueError, match=r"expected maps of shape \(3, 64\)"):
        plots.plot_ig_maps(tmp_path / "bad.png", {"BL": maps["BL"][:, :10]}, image_shape=(8, 8))


def test_class_ig_maps_and_linear_sensitivities_known_answers():
    from experiments import figures
    apply_fn, params = make_model("linear", 2, 2, jax.random.key(0))
    zero = jax.tree.map(jnp.zeros_like, params)
    params = {"params": {"Dense_0": {"kernel": zero["params"]["Dense_0"]["kernel"].at[:, 1].set(jnp.array([1.0, 3.0])),
                                     "bias": zero["params"]["Dense_0"]["bias"]}}}
    # logit_1 − logit_0 = x0 + 3·x1: a quarter of the decision gradient falls on x0.
    np.testing.assert_allclose(figures.linear_sensitivities(apply_fn, params, 2), [0.25, 0.75], rtol=1e-6)
    x = np.array([[2.0, 2.0]] * 6, np.float32)
    maps = figures.class_ig_maps(apply_fn, params, x, np.ones(6, np.int32), num_classes=2, key=jax.random.key(1),
                                 n_steps=4)
    assert maps.shape == (2, 2) and (maps[0] == 0).all()  # no rows of class 0: a map of zeros
    np.testing.assert_allclose(maps[1], [0.0, 1.0])  # min–max of the class-1 mean IG (x0 attributed less than x1)
