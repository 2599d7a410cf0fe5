"""Models with state and randomness: a BatchNorm + dropout CNN trained with CT on the 8×8 digits.

The loss runs the model in training mode and its batch statistics travel on the TrainState; the search runs it in
inference mode (running statistics, no dropout), so it stays deterministic; resume, seeds, vmapped runs and data
parallelism carry the statistics along.
"""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ctrain import sharding
from ctrain.models import StatefulModuleApply, is_stateful, make_model
from ctrain.objective import positive_pool
from ctrain.search import SearchConfig
from ctrain.train import (
    TrainConfig,
    create_train_state,
    create_train_states,
    epoch_counterfactuals,
    fit,
    fit_many,
    inference_model,
    make_train_step,
)

SEARCH = SearchConfig(threshold=0.5, max_steps=10, step_size=0.5)
CFG = TrainConfig(search=SEARCH, epochs=2, batch_size=30, n_ce=40, shuffle=True, checkpoint_every=1)
TINY = {"features": (4, 8), "hidden": 16, "dropout": 0.3}  # small enough to compile fast on two CPU cores


@pytest.fixture(scope="module")
def digits():
    from ctrain.data import load_dataset
    return load_dataset("digits").subsample(240, seed=0)


def _model(seed=0):
    return make_model("cnn_bn", 64, 10, jax.random.key(seed), **TINY)


def _state(seed=0, rng=0):
    apply_fn, variables = _model(seed)
    return create_train_state(apply_fn, variables, rng=rng)


@pytest.fixture(scope="module")
def straight(digits):
    return fit(_state(), digits, CFG, progress=False)


def test_the_cnn_is_stateful_and_its_state_goes_on_the_train_state():
    apply_fn, variables = _model()
    assert is_stateful(apply_fn) and isinstance(apply_fn, StatefulModuleApply)
    assert set(variables) == {"params", "batch_stats"}
    state = create_train_state(apply_fn, variables, rng=3)
    assert set(state.params) == {"params"} and set(state.model_state) == {"batch_stats"}
    chex.assert_trees_all_equal(state.rng, jax.random.key_data(jax.random.key(3)))
    # The optimiser sees only the trainable params.
    assert not any("batch_stats" in jax.tree_util.keystr(p) for p, _ in
                   jax.tree_util.tree_leaves_with_path(state.opt_state))
    apply, params = inference_model(state)
    logits = apply(params, jnp.ones((5, 64)))
    chex.assert_shape(logits, (5, 10))
    # Called with the params alone, the model says what it lacks instead of failing inside flax.
    with pytest.raises(ValueError, match="batch_stats"):
        apply_fn(state.params, jnp.ones((5, 64)))
    # A pure model keeps the state it always had.
    pure = create_train_state(*make_model("mlp", 2, 2, jax.random.key(0)))
    assert pure.model_state is None and pure.rng is None
    with pytest.raises(ValueError, match="stateful"):
        create_train_state(*make_model("mlp", 2, 2, jax.random.key(0)), rng=1)


def test_a_batchnorm_dropout_cnn_trains_with_ct_and_its_statistics_change(straight, digits):
    state, history = straight
    init = _state()
    assert [h["epoch"] for h in history] == [1, 2] and "converged" in history[0]
    assert all(np.isfinite(h["loss"]) and h["nonfinite"] == 0 for h in history)
    assert int(state.step) == 2 * (len(digits.x_train) // CFG.batch_size)
    chex.assert_trees_all_equal_structs(state.model_state, init.model_state)
    # Training mode updated the running statistics; the params moved too.
    for new, old in zip(jax.tree.leaves(state.model_state), jax.tree.leaves(init.model_state)):
        assert not np.allclose(new, old)
    assert not np.allclose(jax.tree.leaves(state.params)[0], jax.tree.leaves(init.params)[0])
    chex.assert_tree_all_finite((state.params, state.model_state))
    chex.assert_trees_all_equal(state.rng, init.rng)  # the base key stays; each step folds its count in
    # The reported accuracies are the inference-mode model's.
    apply, params = inference_model(state)
    acc = float(jnp.mean(jnp.argmax(apply(params, jnp.asarray(digits.x_test)), -1) == jnp.asarray(digits.y_test)))
    assert history[-1]["test_accuracy"] == pytest.approx(acc, abs=1e-6)


def test_the_search_uses_the_inference_mode_model_and_is_deterministic(straight, digits):
    state, _ = straight
    pool = positive_pool(digits.x_train, digits.y_train, digits.num_classes)
    c = digits.constraints()
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    config = CFG.replace(ce_per_batch=8)
    # What the per-epoch schedule runs inside the train epoch.
    search = jax.jit(lambda s, k: epoch_counterfactuals(s, x, y, pool, k, config, 2, c))
    a, b = search(state, jax.random.key(5)), search(state, jax.random.key(5))
    chex.assert_trees_all_equal(a, b)  # no dropout in the search: one key, one result
    # The same search written out with the inference-mode closure the issue suggests gives the same batch.
    infer = lambda p, xx: state.apply_fn.apply(p, state.model_state, xx, train=False)[0]
    apply, variables = inference_model(state)
    chex.assert_trees_all_close(infer(state.params, x[:50]), apply(variables, x[:50]), rtol=0, atol=0)
    # Every converged counterfactual is valid for the inference-mode model (p(t | x') >= τ).
    flat = jax.tree.map(lambda v: v.reshape((-1,) + v.shape[2:]), a)
    p = jax.nn.softmax(apply(variables, flat.x_cf))[jnp.arange(flat.target.shape[0]), flat.target]
    conv = np.asarray(flat.converged)
    assert np.all(np.asarray(p)[conv] >= SEARCH.threshold - 1e-5)
    # A search on the training-mode model (dropout on) would depend on the dropout key.
    train_mode = lambda k: (lambda p, xx: state.apply_fn.apply(p, state.model_state, xx, train=True, rng=k)[0])
    logits = [train_mode(jax.random.key(i))(state.params, x[:50]) for i in (0, 1)]
    assert not np.allclose(logits[0], logits[1])


def test_resume_from_a_checkpoint_mid_run_is_bit_identical(straight, digits, tmp_path):
    done, hist = straight
    fit(_state(), digits, CFG.replace(epochs=1), workdir=str(tmp_path), progress=False)
    run = json.loads((tmp_path / "run.json").read_text())
    assert "['batch_stats']['BatchNorm_0']['mean']" in run["model_state"]
    resumed, hist2 = fit(_state(), digits, CFG, workdir=str(tmp_path), progress=False)
    assert [h["epoch"] for h in hist2] == [1, 2]
    chex.assert_trees_all_equal(resumed.params, done.params)
    chex.assert_trees_all_equal(resumed.model_state, done.model_state)
    chex.assert_trees_all_equal(resumed.opt_state, done.opt_state)
    chex.assert_trees_all_equal((resumed.step, resumed.rng), (done.step, done.rng))
    assert [h["loss"] for h in hist2] == [h["loss"] for h in hist]


def test_same_seed_same_result_other_dropout_key_other_result_and_the_step_compiles_once(train_batch, digits):
    pool = positive_pool(digits.x_train, digits.y_train, digits.num_classes)
    step = jax.jit(chex.assert_max_traces(make_train_step(TrainConfig(search=SEARCH, ce_per_batch=8),
                                                          digits.constraints()), n=1))

    def run(state):
        for i in range(3):
            state, metrics = step(state, {**train_batch(digits, n=30, start=30 * i), "pool": pool},
                                  jax.random.fold_in(jax.random.key(7), i))
        return state, metrics

    first, m = run(_state())
    second, _ = run(_state())
    chex.assert_trees_all_equal((first.params, first.model_state), (second.params, second.model_state))
    assert np.isfinite(float(m["loss"])) and float(m["search_steps"]) > 0
    other, _ = run(_state(rng=1))  # same weights and data, other dropout masks; the same compiled step
    assert not np.allclose(jax.tree.leaves(other.params)[0], jax.tree.leaves(first.params)[0])


def test_fit_many_stacks_the_model_state_and_matches_single_runs(straight, digits):
    apply_fn, variables = _model()
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), variables)
    states = create_train_states(apply_fn, stacked, rng=jnp.stack([jax.random.key(0), jax.random.key(1)]))
    assert jax.tree.leaves(states.model_state)[0].shape[0] == 2 and states.rng.shape == (2, 2)
    cfg = CFG.replace(checkpoint_every=0)
    trained, _ = fit_many(states, digits, cfg, seeds=[0, 1], progress=False)
    chex.assert_tree_all_finite((trained.params, trained.model_state))
    single, _ = straight  # run 0: weights of seed 0, dropout key 0, data seed 0
    for got, want in zip(jax.tree.leaves((trained.params, trained.model_state)),
                         jax.tree.leaves((single.params, single.model_state))):
        np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(jax.tree.leaves(trained.model_state)[0][0], jax.tree.leaves(trained.model_state)[0][1])


def test_data_parallel_steps_average_the_batch_statistics_over_the_devices(train_batch, digits):
    assert jax.device_count() == 4, "tests/conftest.py forces 4 CPU devices"
    pool = positive_pool(digits.x_train, digits.y_train, digits.num_classes)
    config = TrainConfig(search=SEARCH, ce_per_batch=8)
    batch = {**train_batch(digits, n=32), "pool": pool}
    # pmap (a vanilla step: the statistics are synchronised in the update, whatever the objective): every
    # replica ends with the same params and statistics (pmean over the axis), and the statistics moved.
    step = jax.pmap(make_train_step(TrainConfig(objective="vanilla"), axis_name="d"), axis_name="d")
    state = sharding.replicate_for_pmap(_state(), 4)
    new, metrics = step(state, sharding.split_for_pmap({"x": batch["x"], "y": batch["y"]}, 4))
    for leaf in jax.tree.leaves((new.params, new.model_state)):
        chex.assert_trees_all_equal(*list(leaf))
    assert not np.allclose(jax.tree.leaves(new.model_state)[0][0], jax.tree.leaves(state.model_state)[0][0])
    assert np.all(np.isfinite(np.asarray(metrics["loss"])))
    # The same step under jax.shard_map (its type checks on) agrees with pmap: same shards, same dropout keys.
    mesh = sharding.data_mesh()
    smap = jax.jit(jax.shard_map(make_train_step(TrainConfig(objective="vanilla"), axis_name="data"), mesh=mesh,
                                 in_specs=(P(), P("data")), out_specs=P()))
    got, _ = smap(_state(), {"x": batch["x"], "y": batch["y"]})
    chex.assert_trees_all_close((got.params, got.model_state), sharding.unreplicate((new.params, new.model_state)),
                                rtol=1e-5, atol=1e-6)
    # jit on a sharded batch (what fit(..., mesh=...) runs): the search runs per device on the inference-mode
    # model and the statistics come back replicated.
    mstep = jax.jit(make_train_step(config, digits.constraints(), mesh=mesh))
    out, m = mstep(sharding.replicate(_state(), mesh), {**sharding.shard_batch({"x": batch["x"], "y": batch["y"]},
                                                                               mesh), "pool": pool},
                   jax.random.key(1))
    chex.assert_tree_all_finite((out.params, out.model_state))
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(out.model_state))
    assert np.isfinite(float(m["loss"]))


def test_checkpoints_of_pure_models_written_before_model_state_existed_still_restore(tmp_path, monkeypatch):
    from typing import Any

    import flax.struct

    from ctrain import checkpoint

    @flax.struct.dataclass
    class OldTrainState:  # the TrainState's array fields before model_state and rng, saved as that dataclass
        step: Any
        params: Any
        opt_state: Any
        weights: Any
        skipped: Any

    pure = create_train_state(*make_model("mlp", 2, 2, jax.random.key(0)))
    saved = pure.replace(step=pure.step + 3)
    old = OldTrainState(saved.step, saved.params, saved.opt_state, saved.weights, saved.skipped)
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "_saved_fields", lambda state: old)
        manager = checkpoint.Manager(str(tmp_path))
        manager.save(saved, 1, [{"epoch": 1}])
        manager.close()
    manager = checkpoint.Manager(str(tmp_path))
    restored, epoch, _ = manager.restore(pure)
    manager.close()
    assert epoch == 1 and restored.model_state is None and restored.rng is None
    chex.assert_trees_all_equal((restored.step, restored.params, restored.opt_state),
                                (saved.step, saved.params, saved.opt_state))
