import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctrain import constraints as cons
from ctrain.models import make_model
from ctrain.objective import (CounterfactualBatch, LossWeights, composite_loss, make_counterfactual_batch,
                              positive_pool, sample_positives)
from ctrain.search import SearchConfig
from ctrain.train import (TrainConfig, create_train_state, data_mesh, fit, make_train_step, replicate,
                          shard_batch)

SEARCH = SearchConfig(threshold=0.5, max_steps=20, step_size=0.5)


def linear(p, x):
    return x @ p["w"] + p["b"]


def _state(seed=0, width=2, classes=2, weights=None):
    apply_fn, params = make_model("mlp", width, classes, jax.random.key(seed))
    return create_train_state(apply_fn, params, weights=weights)


def _batch(data, n=32, start=0):
    return {"x": jnp.asarray(data.x_train[start:start + n]), "y": jnp.asarray(data.y_train[start:start + n])}


def test_zero_ct_weights_equal_the_vanilla_step_exactly(moons):
    zero = LossWeights(clf=1.0, div=0.0, reg=0.0, adv=0.0)
    c = moons.constraints()
    ct = jax.jit(make_train_step(TrainConfig(objective="full", search=SEARCH), c))
    vanilla = jax.jit(make_train_step(TrainConfig(objective="vanilla")))
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    s_ct, s_bl, s_pb = _state(weights=zero), _state(weights=zero), _state(weights=zero)
    for i in range(3):
        batch = _batch(moons, start=32 * i)
        cf = make_counterfactual_batch(s_ct.apply_fn, s_ct.params, batch["x"], batch["y"], pool,
                                       jax.random.key(i), SEARCH, c)
        assert float(cf.converged.mean()) > 0  # there are counterfactual terms to ignore
        s_ct, m_ct = ct(s_ct, {**batch, "cf": cf}, None)
        s_bl, m_bl = vanilla(s_bl, batch)
        s_pb, m_pb = ct(s_pb, {**batch, "pool": pool}, jax.random.key(i))
        assert float(m_ct["loss"]) == float(m_bl["loss"]) == float(m_pb["loss"])
    # The losses are equal bit for bit; the parameters up to float32 rounding, because XLA orders the
    # bias-gradient sums differently when the program also holds the counterfactual forward pass.
    chex.assert_trees_all_close(s_ct.params, s_bl.params, rtol=1e-6, atol=1e-9)
    chex.assert_trees_all_close(s_pb.params, s_bl.params, rtol=1e-6, atol=1e-9)


def test_loss_terms_match_a_hand_computation():
    w = np.array([[1.0, -0.5], [0.25, 2.0]], np.float32)
    b = np.array([0.1, -0.2], np.float32)
    params = {"w": jnp.asarray(w), "b": jnp.asarray(b)}
    x, y = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.array([0, 1])
    cf = CounterfactualBatch(
        x_cf=jnp.array([[0.5, 0.5], [1.0, 1.0]]), x_pos=jnp.array([[0.0, 2.0], [2.0, 0.0]]), target=jnp.array([1, 0]),
        x_ae=jnp.array([[0.9, 0.1], [0.1, 0.8]]), y=jnp.array([0, 1]), converged=jnp.ones(2, bool),
        steps=jnp.ones(2, jnp.int32), ae_moved=jnp.ones(2, bool), cf_in_ball=jnp.zeros(2, bool))
    weights = LossWeights(clf=1.0, div=0.5, reg=0.1, adv=0.25)
    loss, terms = composite_loss(params, linear, jnp.asarray(x), jnp.asarray(y), cf, weights)

    def logits(v):
        return np.asarray(v) @ w + b

    def ce(lg, labels):
        lg = lg - lg.max(1, keepdims=True)
        return np.mean(np.log(np.exp(lg).sum(1)) - lg[np.arange(len(labels)), labels])

    t = np.array([1, 0])
    e_cf = -logits(cf.x_cf)[np.arange(2), t]
    e_pos = -logits(cf.x_pos)[np.arange(2), t]
    expected = {"clf": ce(logits(x), y), "div": np.mean(e_pos - e_cf), "reg": np.mean(e_pos ** 2 + e_cf ** 2),
                "adv": ce(logits(cf.x_ae), np.array([0, 1]))}
    for name, value in expected.items():
        np.testing.assert_allclose(terms[name], value, rtol=1e-5)
    total = expected["clf"] + 0.5 * expected["div"] + 0.1 * expected["reg"] + 0.25 * expected["adv"]
    np.testing.assert_allclose(loss, total, rtol=1e-5)


def test_protection_zeroes_the_divergence_gradient_on_protected_features():
    c = cons.make_constraints(3, immutable=[0], increase=[1])
    params = {"w": jnp.array([[1.0, -1.0], [0.5, 0.5], [2.0, 0.0]]), "b": jnp.zeros(2)}
    x_cf = jnp.array([[0.3, 1.0, 0.0], [0.2, 1.0, 1.0]])
    x_pos = cons.protect(jnp.array([[2.0, 3.0, 1.0], [-1.0, -2.0, 0.5]]), x_cf, c)
    np.testing.assert_array_equal(x_pos[:, 0], x_cf[:, 0])
    np.testing.assert_array_equal(x_pos[:, 1], [3.0, 1.0])  # increase-only: x⁺ := max(x', x⁺)
    cf = CounterfactualBatch(x_cf=x_cf, x_pos=x_pos, target=jnp.array([1, 1]), x_ae=x_cf, y=jnp.array([0, 0]),
                             converged=jnp.ones(2, bool), steps=jnp.ones(2, jnp.int32), ae_moved=jnp.ones(2, bool),
                             cf_in_ball=jnp.ones(2, bool))
    div_only = LossWeights(clf=0.0, div=1.0, reg=0.0, adv=0.0)
    div_grad = lambda batch: jax.grad(
        lambda p: composite_loss(p, linear, x_cf, jnp.array([0, 0]), batch, div_only)[0])(params)["w"]
    grads = div_grad(cf)
    np.testing.assert_allclose(grads[0], 0.0, atol=1e-7)  # immutable feature: no pull (up to float rounding)
    assert float(jnp.abs(grads[2]).max()) > 0.1  # a free feature still carries the energy gap
    unprotected = div_grad(cf.replace(x_pos=jnp.array([[2.0, 3.0, 1.0], [-1.0, -2.0, 0.5]])))
    assert float(jnp.abs(unprotected[0]).max()) > 0.1  # without protection the immutable feature is pulled


def test_no_gradient_flows_through_the_search(moons):
    state = _state()
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    batch = _batch(moons)
    scan_search = SEARCH.replace(loop="scan")  # differentiable loop, so a leak would change the gradient
    c = moons.constraints()
    key = jax.random.key(3)

    def loss_with_search_inside(params):
        cf = make_counterfactual_batch(state.apply_fn, params, batch["x"], batch["y"], pool, key, scan_search, c)
        return composite_loss(params, state.apply_fn, batch["x"], batch["y"], cf, state.weights)[0]

    cf_const = make_counterfactual_batch(state.apply_fn, state.params, batch["x"], batch["y"], pool, key,
                                         scan_search, c)
    inside = jax.grad(loss_with_search_inside)(state.params)
    constant = jax.grad(lambda p: composite_loss(p, state.apply_fn, batch["x"], batch["y"], cf_const,
                                                 state.weights)[0])(state.params)
    chex.assert_trees_all_close(inside, constant, atol=0, rtol=0)


def test_same_seed_gives_identical_parameters_and_the_step_compiles_once(moons):
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    step = make_train_step(TrainConfig(search=SEARCH), moons.constraints())
    runs = []
    jitted = jax.jit(chex.assert_max_traces(step, n=1))
    init = _state()
    for _ in range(2):
        state = init
        for i in range(5):
            state, _ = jitted(state, {**_batch(moons, start=32 * i), "pool": pool}, jax.random.fold_in(
                jax.random.key(7), i))
        runs.append(state.params)
    chex.assert_trees_all_equal(*runs)
    other = _state()
    jitted = jax.jit(step)
    for i in range(5):
        other, _ = jitted(other, {**_batch(moons, start=32 * i), "pool": pool}, jax.random.fold_in(jax.random.key(8), i))
    assert not np.allclose(jax.tree.leaves(other.params)[0], jax.tree.leaves(runs[0])[0])


def test_sharded_step_on_four_devices_matches_one_device(moons):
    assert jax.device_count() == 4, "conftest forces 4 CPU devices"
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    step = jax.jit(make_train_step(TrainConfig(search=SEARCH, ce_per_batch=16), moons.constraints()),
                   donate_argnums=(0,))
    mesh = data_mesh()
    single, sharded = _state(), replicate(_state(), mesh)
    pool_r = replicate(pool, mesh)
    for i in range(3):
        batch = _batch(moons, start=32 * i)
        key = jax.random.key(i)
        single, m1 = step(single, {**batch, "pool": pool}, key)
        sharded, m4 = step(sharded, {**shard_batch(batch, mesh), "pool": pool_r}, key)
    assert len(jax.tree.leaves(sharded.params)[0].sharding.device_set) == 4
    chex.assert_trees_all_close(jax.device_get(sharded.params), jax.device_get(single.params), atol=1e-5)
    np.testing.assert_allclose(m4["loss"], m1["loss"], atol=1e-5)
    with pytest.raises(ValueError, match="does not split evenly over 4 devices"):
        shard_batch(_batch(moons, n=30), mesh)


def test_fit_sharded_matches_single_device(moons):
    small = moons.subsample(256, seed=0)
    cfg = TrainConfig(search=SEARCH, epochs=2, batch_size=32, n_ce=64)
    single, _ = fit(_state(), small, cfg, progress=False)
    sharded, _ = fit(_state(), small, cfg, progress=False, mesh=data_mesh())
    chex.assert_trees_all_close(jax.device_get(sharded.params), jax.device_get(single.params), atol=1e-5)


def test_resume_from_checkpoint_is_bit_identical(moons, tmp_path):
    small = moons.subsample(300, seed=0)
    cfg = TrainConfig(search=SEARCH, epochs=4, n_ce=100, checkpoint_every=1, shuffle=True)
    straight, hist = fit(_state(), small, cfg, progress=False)
    fit(_state(), small, cfg.replace(epochs=2), workdir=str(tmp_path), progress=False)
    resumed, hist2 = fit(_state(), small, cfg, workdir=str(tmp_path), progress=False)
    chex.assert_trees_all_equal(resumed.params, straight.params)
    chex.assert_trees_all_equal(resumed.opt_state, straight.opt_state)
    assert [h["epoch"] for h in hist2] == [1, 2, 3, 4]
    assert (tmp_path / "history.jsonl").read_text().count("\n") == 4


def test_nan_input_is_reported_and_not_trained_on(moons):
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    step = jax.jit(make_train_step(TrainConfig(search=SEARCH), moons.constraints()))
    state = _state()
    batch = _batch(moons)
    batch["x"] = batch["x"].at[3, 1].set(jnp.nan)
    new, metrics = step(state, {**batch, "pool": pool}, jax.random.key(0))
    assert int(metrics["nonfinite"]) == 1 and int(new.skipped) == 1
    chex.assert_trees_all_equal(new.params, state.params)
    import dataclasses
    bad = dataclasses.replace(moons, x_train=moons.x_train.copy())
    object.__setattr__(bad, "x_train", np.where(np.arange(len(bad.x_train))[:, None] == 5, np.nan, bad.x_train))
    with pytest.raises(ValueError, match="NaN"):
        fit(_state(), bad, TrainConfig(epochs=1), progress=False)


def test_positives_are_drawn_from_the_target_class(moons):
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    target = jnp.array([0, 1] * 200)
    xp = sample_positives(jax.random.key(0), pool, target)
    members = {k: {tuple(r) for r in moons.x_train[moons.y_train == k]} for k in (0, 1)}
    assert all(tuple(np.asarray(r)) in members[int(t)] for r, t in zip(xp, target))
    assert len({tuple(np.asarray(r)) for r in xp}) > 300  # drawn with spread, not one fixed sample
    with pytest.raises(ValueError, match=r"classes \[2\] have no training samples"):
        positive_pool(moons.x_train, moons.y_train, 3)


def test_ablation_objectives_drop_their_terms(moons):
    from ctrain.objective import objective_weights
    w = LossWeights()
    assert float(objective_weights("energy", w).adv) == 0.0 and float(objective_weights("energy", w).div) == 0.5
    assert float(objective_weights("adversarial", w).div) == 0.0 and float(objective_weights("adversarial", w).reg) == 0
    assert float(objective_weights("adversarial", w).adv) == 0.25
    with pytest.raises(ValueError, match="unknown objective"):
        TrainConfig(objective="jem")


@pytest.mark.parametrize("schedule", ["per_epoch", "per_batch"])
def test_ct_on_circles_keeps_accuracy_within_two_points(schedule):
    from ctrain.data import load_dataset
    data = load_dataset("circles")
    base = TrainConfig(epochs=40, shuffle=True, search=SearchConfig(threshold=0.5), lambda_reg=0.5)
    _, bl = fit(_state(), data, base.replace(objective="vanilla"), progress=False)
    _, ct = fit(_state(), data, base.replace(schedule=schedule), progress=False)
    assert ct[-1]["converged"] > 0.2 and ct[-1]["nonfinite"] == 0
    assert ct[-1]["test_accuracy"] >= bl[-1]["test_accuracy"] - 0.02


def test_many_runs_in_one_vmapped_program_match_single_runs(moons):
    from ctrain.train import create_train_states, fit_many
    small = moons.subsample(600, seed=1)
    cfg = TrainConfig(epochs=2, search=SEARCH, n_ce=200, shuffle=True)
    apply_fn, _ = make_model("mlp", 2, 2, jax.random.key(0))
    inits = [make_model("mlp", 2, 2, jax.random.key(s))[1] for s in (3, 4)]
    lambda_reg = jnp.array([0.1, 0.5])  # a hyperparameter grid rides along as a vmapped leaf
    states = create_train_states(apply_fn, jax.tree.map(lambda *a: jnp.stack(a), *inits),
                                 weights=LossWeights(reg=lambda_reg))
    many, histories = fit_many(states, small, cfg, seeds=[3, 4], progress=False)
    for i, seed in enumerate((3, 4)):
        one, history = fit(create_train_state(apply_fn, inits[i], weights=LossWeights(reg=float(lambda_reg[i]))),
                           small, cfg.replace(seed=seed), progress=False)
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], many.params), one.params, atol=1e-5)
        assert abs(histories[i][-1]["loss"] - history[-1]["loss"]) < 1e-5
        assert histories[i][-1]["test_accuracy"] == pytest.approx(history[-1]["test_accuracy"], abs=1e-6)
    assert not np.allclose(jax.tree.leaves(many.params)[0][0], jax.tree.leaves(many.params)[0][1])
    with pytest.raises(ValueError, match="3 seeds given for 2 stacked states"):
        fit_many(states, small, cfg, seeds=[1, 2, 3], progress=False)
