"""Bad input to the search and explanation API gets a clear error from ctrain itself, before any compiled work."""
import jax.numpy as jnp
import numpy as np
import pytest

from ctrain.models import check_model, make_model
from ctrain.search import SearchConfig, explain, search_counterfactuals, search_counterfactuals_jit

W = jnp.array([[1.0, -1.0], [2.0, 0.5]])
PARAMS = {"w": W}
X = np.array([[1.0, 1.0], [2.0, 2.0], [0.5, -1.0]], np.float32)
CFG = SearchConfig(generator="generic", max_steps=5)


@pytest.mark.parametrize("search", [search_counterfactuals, search_counterfactuals_jit])
@pytest.mark.parametrize("target,error,match", [
    (np.array([5, 1, 1]), ValueError, r"target classes must be in \[0, 2\) for a model with 2 logits"),
    (np.array([-1, 1, 1]), ValueError, r"target classes must be in \[0, 2\)"),
    (np.array([1.0, 1.0, 1.0]), TypeError, "integer class indices"),
    (np.array([[1], [1], [1]]), ValueError, r"target must have shape \(3,\)"),
    (np.array([1, 1]), ValueError, r"target must have shape \(3,\)"),
])
def test_search_rejects_bad_targets(key, linear, search, target, error, match):
    with pytest.raises(error, match=match):
        search(linear, PARAMS, X, target, key, CFG)


@pytest.mark.parametrize("target,error,match", [
    (1.7, TypeError, "integer class indices.*not rounded"),
    (np.array([1.7, 1.0, 1.0]), TypeError, "integer class indices"),
    ("1", TypeError, "integer class indices"),
    (np.array([[1], [1], [1]]), ValueError, r"one class for all rows or shape \(3,\)"),
    (np.array([1, 1]), ValueError, r"one class for all rows or shape \(3,\)"),
    (5, ValueError, r"target classes must be in \[0, 2\)"),
    (True, TypeError, "integer class indices"),
])
def test_explain_rejects_bad_targets(key, linear, target, error, match):
    with pytest.raises(error, match=match):
        explain(linear, PARAMS, X, target, key=key, config=CFG, allow_same_class=True)


def test_bad_keys_rows_widths_and_dtypes_are_named(key, linear):
    with pytest.raises(TypeError, match=r"key must be a JAX PRNG key such as jax.random.key\(0\), got int"):
        explain(linear, PARAMS, X, key=0, config=CFG)
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        search_counterfactuals(linear, PARAMS, X, jnp.ones(3, jnp.int32), 0, CFG)
    with pytest.raises(ValueError, match="x has no rows"):
        explain(linear, PARAMS, X[:0], key=key, config=CFG)
    with pytest.raises(ValueError, match="x has no rows"):
        search_counterfactuals(linear, PARAMS, X[:0], jnp.ones(0, jnp.int32), key, CFG)
    with pytest.raises(ValueError, match="cannot take inputs of 3 features"):
        explain(linear, PARAMS, np.ones((2, 3), np.float32), key=key, config=CFG)
    apply_fn, params = make_model("mlp", 2, 2, key)
    with pytest.raises(ValueError, match="cannot take inputs of 5 features"):
        explain(apply_fn, params, np.ones((2, 5), np.float32), key=key, config=CFG)
    with pytest.raises(TypeError, match=r"x must be floating point, got dtype int32.*astype"):
        search_counterfactuals(linear, PARAMS, jnp.ones((3, 2), jnp.int32), jnp.ones(3, jnp.int32), key, CFG)
    # explain takes arrays as a user has them: integers are converted, as documented
    e = explain(linear, PARAMS, np.array([[1, 1], [2, 2]]), key=key, config=CFG)
    assert e.x.dtype == np.float32


def test_params_of_another_model_or_none_are_named(key, linear):
    with pytest.raises(ValueError, match="the model failed on params=None: pass the model's parameters"):
        explain(linear, None, X, key=key, config=CFG)
    with pytest.raises(ValueError, match="failed on params=None"):
        search_counterfactuals(linear, None, X, jnp.ones(3, jnp.int32), key, CFG)
    # a plain function: the shapes the parameters have, beside the width of x
    with pytest.raises(ValueError, match=r"cannot take inputs of 2 features.*params belong to another model: "
                                         r"their shapes are \['w'\] \(3, 2\)"):
        explain(linear, {"w": jnp.ones((3, 2))}, X, key=key, config=CFG)
    # a Flax model: the parameters' shapes against the model's own for x's width
    apply_fn, _ = make_model("mlp", 2, 2, key)
    _, other = make_model("mlp", 3, 2, key)
    for search in (lambda p: explain(apply_fn, p, X, key=key, config=CFG),
                   lambda p: search_counterfactuals(apply_fn, p, X, jnp.ones(3, jnp.int32), key, CFG)):
        with pytest.raises(ValueError, match=r"cannot take inputs of 2 features with these params: "
                                             r".*kernel'\] \(3, 32\) \(one for 2 features: \(2, 32\)\)"):
            search(other)


def test_models_with_the_wrong_output_are_named(key, linear):
    with pytest.raises(ValueError, match=r"must return logits of shape \(N, K\).*returned \(2,\)"):
        explain(lambda p, x: x @ p["w"][:, 0], PARAMS, X, key=key, config=CFG)
    with pytest.raises(ValueError, match="returns 1 logit per row"):
        explain(lambda p, x: x @ p["w"][:, :1], PARAMS, X, key=key, config=CFG)
    with pytest.raises(ValueError, match="returns 1 logit per row"):
        search_counterfactuals(lambda p, x: x @ p["w"][:, :1], PARAMS, X, jnp.zeros(3, jnp.int32), key, CFG)
    with pytest.raises(ValueError, match="floating-point logits"):
        check_model(lambda p, x: jnp.argmax(x @ p["w"], -1)[:, None].repeat(2, 1), PARAMS, 2)
    assert check_model(linear, PARAMS, 2, num_classes=2) == 2
    with pytest.raises(ValueError, match="2 logits per row but the data has 3 classes"):
        check_model(linear, PARAMS, 2, num_classes=3)


@pytest.mark.parametrize("field", ["epsilon", "lambda_cost", "step_size", "lambda_energy", "threshold",
                                   "energy_reg"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_search_config_rejects_meaningless_numbers(field, value):
    with pytest.raises(ValueError, match=field if field != "threshold" else "threshold"):
        SearchConfig(**{field: value})


def test_search_config_rejects_bad_choices(key, linear):
    with pytest.raises(ValueError, match="max_steps T must be an integer"):
        SearchConfig(max_steps=2.5)
    with pytest.raises(ValueError, match="categorical must be one of"):
        SearchConfig(categorical="snap")  # the stalled first design, removed (docs/defaults.md)
    with pytest.raises(ValueError, match="unknown generator 'nope'"):
        search_counterfactuals(linear, PARAMS, X, jnp.ones(3, jnp.int32), key, CFG.replace(generator="nope"))
