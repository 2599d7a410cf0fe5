import chex
import jax
import jax.numpy as jnp
import pytest

from ctrain.models import make_model


@pytest.mark.parametrize("name,width,classes", [("mlp", 2, 2), ("linear", 7, 3), ("lenet5", 784, 10)])
def test_models_map_features_to_logits(name, width, classes):
    apply_fn, params = make_model(name, width, classes, jax.random.key(0))
    logits = apply_fn(params, jnp.ones((5, width)))
    chex.assert_shape(logits, (5, classes))
    chex.assert_tree_all_finite(logits)


def test_default_mlp_is_one_hidden_layer_of_32():
    _, params = make_model("mlp", 4, 2, jax.random.key(0))
    shapes = jax.tree.map(lambda a: a.shape, params["params"])
    assert shapes == {"Dense_0": {"kernel": (4, 32), "bias": (32,)}, "Dense_1": {"kernel": (32, 2), "bias": (2,)}}


def test_plain_function_models_plug_in():
    from ctrain.search import explain
    params = {"w": jnp.array([[1.0, -1.0], [0.0, 0.0]]), "b": jnp.zeros(2)}
    apply_fn = lambda p, x: x @ p["w"] + p["b"]
    e = explain(apply_fn, params, jnp.array([[1.0, 0.0]]), key=jax.random.key(0))
    assert e.x_cf.shape == (1, 2)


def test_bad_model_arguments_raise():
    with pytest.raises(ValueError, match="unknown model"):
        make_model("resnet", 2, 2, jax.random.key(0))
    with pytest.raises(ValueError, match="lenet5 needs 28x28=784 features"):
        make_model("lenet5", 100, 10, jax.random.key(0))
