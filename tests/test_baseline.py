import jax
import numpy as np
import pytest

from ctrain.models import make_model
from ctrain.train import TrainConfig, create_train_state, fit, train_step


@pytest.mark.parametrize("name,target", [("linearly_separable", 0.99), ("moons", 0.95)])
def test_mlp_baseline_accuracy(name, target, request):
    d = request.getfixturevalue(name)
    apply_fn, params = make_model("mlp", 2, 2, jax.random.key(0))
    state, history = fit(create_train_state(apply_fn, params), d,
                         TrainConfig(objective="vanilla", epochs=30, shuffle=True), progress=False)
    assert history[-1]["test_accuracy"] >= target
    assert history[-1]["loss"] < history[0]["loss"]
    assert {"loss", "train_accuracy", "test_accuracy", "time_s", "epoch"} <= set(history[-1])


def test_jitted_vanilla_train_step_in_a_user_loop(moons):
    apply_fn, params = make_model("mlp", 2, 2, jax.random.key(0))
    state = create_train_state(apply_fn, params)
    losses = []
    for batch in moons.batches(100, seed=0, epoch=0):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == len(moons.x_train) // 100
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
