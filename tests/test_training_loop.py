"""One training loop: fit reproduces the stored outputs of the code before the loop was shared, fit equals fit_many of
one run, and a hand-written loop with fit's public key schedule reproduces fit."""
import pathlib

import chex
import jax
import numpy as np
import pytest

from ctrain.models import make_model
from ctrain.search import SearchConfig
from ctrain.train import TrainConfig, create_train_state, fit, fit_many, stack_states, unstack_state

# tests/data/fit_reference.npz: params and epoch losses written by tests/data/make_fit_reference.py on d535aaf, the
# commit before fit and fit_many shared one epoch loop and the persistent buffer was replaced.
REFERENCE = pathlib.Path(__file__).parent / "data" / "fit_reference.npz"
SEARCH = SearchConfig(threshold=0.5, max_steps=20, step_size=0.5)
CONFIGS = {
    "per_epoch": TrainConfig(search=SEARCH, epochs=3, batch_size=30, n_ce=60, shuffle=True),
    "per_batch": TrainConfig(search=SEARCH, epochs=2, batch_size=30, n_ce=60, schedule="per_batch", seed=3),
    "vanilla": TrainConfig(objective="vanilla", epochs=3, batch_size=30, shuffle=True),
    "burnin": TrainConfig(search=SEARCH, epochs=4, batch_size=40, n_ce=40, burnin=0.5),
}


@pytest.fixture(scope="module")
def small_moons():
    from ctrain.data import load_dataset
    return load_dataset("moons").subsample(240, seed=0)


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


def _state(seed=0):
    apply_fn, params = make_model("mlp", 2, 2, jax.random.key(seed))
    return create_train_state(apply_fn, params)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fit_reproduces_the_stored_outputs(small_moons, reference, name):
    state, history = fit(_state(), small_moons, CONFIGS[name], progress=False)
    stored = [reference[f"fit/{name}/{i}"] for i in range(len(jax.tree.leaves(state.params)))]
    # Bit for bit on the machine that stored them; another CPU may order float sums differently.
    chex.assert_trees_all_close([np.asarray(a) for a in jax.tree.leaves(state.params)], stored, rtol=1e-6,
                                atol=1e-7)
    np.testing.assert_allclose([h["loss"] for h in history], reference[f"fit/{name}/loss"], rtol=1e-6)


def test_fit_many_reproduces_the_stored_outputs_and_equals_fit_of_one_run(small_moons, reference):
    many, histories = fit_many(stack_states([_state(3), _state(4)]), small_moons, CONFIGS["per_epoch"], seeds=[3, 4],
                               progress=False)
    stored = [reference[f"fit_many/per_epoch/{i}"] for i in range(len(jax.tree.leaves(many.params)))]
    chex.assert_trees_all_close([np.asarray(a) for a in jax.tree.leaves(many.params)], stored, rtol=1e-6, atol=1e-7)
    config = CONFIGS["per_epoch"].replace(seed=4)
    one, history = fit(_state(4), small_moons, config, progress=False)
    alone, alone_history = fit_many(stack_states([_state(4)]), small_moons, config, seeds=[4], progress=False)
    chex.assert_trees_all_close(unstack_state(alone, 0).params, one.params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(unstack_state(many, 1).params, one.params, rtol=1e-6, atol=1e-7)
    # One log format: the same fields, and the same values up to float32 rounding.
    assert [set(h) for h in alone_history[0]] == [set(h) for h in history] == [set(h) for h in histories[1]]
    for a, b in zip(alone_history[0], history):
        assert {k: v for k, v in a.items() if k != "time_s"} == pytest.approx(
            {k: v for k, v in b.items() if k != "time_s"}, rel=1e-5, abs=1e-6)


def test_stack_states_refuses_runs_that_cannot_share_a_program():
    apply_fn, params = make_model("linear", 2, 2, jax.random.key(0))
    with pytest.raises(ValueError, match="another model"):
        stack_states([_state(0), create_train_state(apply_fn, params)])
    with pytest.raises(TypeError, match="non-empty"):
        stack_states([])
    with pytest.raises(ValueError, match="stacked already"):
        stack_states([stack_states([_state(0)])])
