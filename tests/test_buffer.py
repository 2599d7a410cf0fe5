"""The persistent counterfactual buffer (TrainConfig.persistent) and the search's warm start (x_init)."""
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctrain import checkpoint
from ctrain import constraints as cons
from ctrain.models import make_model
from ctrain.objective import make_counterfactual_batch, positive_pool
from ctrain.search import SearchConfig, search_counterfactuals
from ctrain.train import (TrainConfig, create_train_state, create_train_states, epoch_order, fit, fit_many,
                          make_train_epoch, make_train_step, with_buffer)

SEARCH = SearchConfig(threshold=0.5, max_steps=20, step_size=0.5)
CFG = TrainConfig(search=SEARCH, epochs=3, batch_size=30, n_ce=60, shuffle=True)
PERSISTENT = CFG.replace(persistent=True)


@pytest.fixture(scope="module")
def small_moons():
    from ctrain.data import load_dataset
    return load_dataset("moons").subsample(240, seed=0)


def _state(seed=0):
    apply_fn, params = make_model("mlp", 2, 2, jax.random.key(seed))
    return create_train_state(apply_fn, params)


def _linear(p, x):
    return x @ p["w"]


# --- the search's warm start ---------------------------------------------------------------------------------

def test_a_warm_start_that_is_already_mature_takes_no_step_and_is_returned_projected():
    # Class 1's logit is 2·x₀ (class 0's is 0); feature 2 is immutable and carries no weight.
    params = {"w": jnp.array([[0.0, 2.0], [0.0, 0.0], [0.0, 0.0]])}
    c = cons.make_constraints(3, immutable=(2,))
    config = SearchConfig(units="absolute", threshold=0.75, max_steps=10)
    x = jnp.array([[-1.0, 0.0, 5.0], [-0.5, 1.0, -2.0]])  # both predicted class 0
    x_init = jnp.array([[3.0, 1.0, -7.0], [2.0, 0.0, 9.0]])  # p(1) = σ(6), σ(4) >= τ; immutable column differs
    target = jnp.ones(2, jnp.int32)
    res = search_counterfactuals(_linear, params, x, target, jax.random.key(0), config, c, x_init=x_init)
    np.testing.assert_array_equal(res.steps, [0, 0])
    assert bool(res.converged.all())
    # Returned as given, with the immutable feature set back to the factual's.
    np.testing.assert_array_equal(res.x_cf, [[3.0, 1.0, 5.0], [2.0, 0.0, -2.0]])
    # The ε-ball of x_AE is the factual's: a start far outside it leaves x_AE at x.
    np.testing.assert_array_equal(res.x_ae, x)

    # From the factual (the default) the same search needs steps; x_init=x is exactly the default.
    cold = search_counterfactuals(_linear, params, x, target, jax.random.key(0), config, c)
    assert bool((cold.steps > 0).all())
    same = search_counterfactuals(_linear, params, x, target, jax.random.key(0), config, c, x_init=x)
    chex.assert_trees_all_equal(cold, same)
    with pytest.raises(ValueError, match="x_init"):
        search_counterfactuals(_linear, params, x, target, jax.random.key(0), config, c, x_init=x[:1])


# --- training with the buffer --------------------------------------------------------------------------------

def test_persistent_off_is_the_unchanged_training(small_moons):
    """fit without the buffer equals the epoch written out from the public pieces it always used."""
    trained, history = fit(_state(), small_moons, CFG, progress=False)
    assert trained.buffer is None and "warm" not in history[-1]

    config = CFG.replace(ce_per_batch=-(-CFG.n_ce // (len(small_moons.x_train) // CFG.batch_size)))
    x, y = jnp.asarray(small_moons.x_train), jnp.asarray(small_moons.y_train)
    pool = positive_pool(small_moons.x_train, small_moons.y_train, 2)
    c = small_moons.constraints()
    step = make_train_step(config, c)

    @jax.jit
    def epoch(state, e):
        order_key, cf_key, _ = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), e), 3)
        idx = epoch_order(order_key, x.shape[0], config.batch_size, config.shuffle)
        nb, m = idx.shape[0], config.ce_per_batch
        f_key, s_key = jax.random.split(cf_key)
        drawn = jax.random.choice(f_key, x.shape[0], (nb * m,), replace=False)
        cf = make_counterfactual_batch(state.apply_fn, state.params, x[drawn], y[drawn], pool, s_key, config.search,
                                       c)
        cf = jax.tree.map(lambda a: a.reshape((nb, m) + a.shape[1:]), cf)
        return jax.lax.scan(lambda s, b: step(s, {"x": b[0], "y": b[1], "cf": b[2]}), state,
                            (x[idx], y[idx], cf))[0]

    state = _state()
    for e in range(CFG.epochs):
        state = epoch(state, e)
    chex.assert_trees_all_close(trained.params, state.params, rtol=1e-6, atol=1e-7)
    # ... and its run identity is the one it had before the buffer's settings existed.
    identity = checkpoint.run_identity(_state(), small_moons, CFG, c)
    assert "persistent" not in identity["config"] and "buffer_reset" not in identity["config"]
    assert checkpoint.run_identity(_state(), small_moons, PERSISTENT, c)["config"]["persistent"] is True


@pytest.fixture(scope="module")
def persistent_run(small_moons):
    return fit(_state(), small_moons, PERSISTENT, progress=False)


def test_persistent_chains_warm_start_the_next_epochs_and_are_deterministic(small_moons, persistent_run):
    trained, history = persistent_run
    assert history[0]["warm"] == 0.0  # no chain exists before the first search
    assert history[1]["warm"] > 0.0 and history[2]["warm"] > 0.0
    b = trained.buffer
    assert b.x.shape == small_moons.x_train.shape and 0 < float(b.filled.mean()) < 1  # n_ce < N: some drawn
    # A filled chain's target is never its own factual's label class drawn at random: it is a class index.
    assert set(np.unique(np.asarray(b.target)[np.asarray(b.filled)])) <= {0, 1}
    again, history2 = fit(_state(), small_moons, PERSISTENT, progress=False)
    chex.assert_trees_all_equal(again.params, trained.params)
    chex.assert_trees_all_equal(again.buffer, trained.buffer)
    assert history2[-1]["warm"] == history[-1]["warm"]
    cold, cold_history = fit(_state(), small_moons, CFG, progress=False)
    # Epoch 1 is the same search (no chain yet), later epochs differ.
    assert cold_history[0]["loss"] == history[0]["loss"]
    assert not np.allclose(jax.tree.leaves(cold.params)[0], jax.tree.leaves(trained.params)[0])


def test_buffer_reset_takes_effect(small_moons, persistent_run):
    # Every chain restarted: exactly the training without warm starts.
    restarted, history = fit(_state(), small_moons, PERSISTENT.replace(buffer_reset=1.0), progress=False)
    cold, _ = fit(_state(), small_moons, CFG, progress=False)
    assert all(h["warm"] == 0.0 for h in history)
    chex.assert_trees_all_equal(restarted.params, cold.params)
    # No resets: more warm chains than with the default 0.05, and other parameters.
    never, never_history = fit(_state(), small_moons, PERSISTENT.replace(buffer_reset=0.0), progress=False)
    assert never_history[-1]["warm"] >= persistent_run[1][-1]["warm"]
    assert not np.allclose(jax.tree.leaves(never.params)[0], jax.tree.leaves(persistent_run[0].params)[0])


def test_chain_steps_caps_every_chains_search(small_moons, persistent_run):
    capped, history = fit(_state(), small_moons, PERSISTENT.replace(chain_steps=2), progress=False)
    assert persistent_run[1][0]["search_steps"] > 2  # uncapped, the first epoch's chains take more than 2 steps
    assert all(h["search_steps"] <= 2 for h in history) and history[-1]["warm"] > 0
    assert not np.allclose(jax.tree.leaves(capped.params)[0], jax.tree.leaves(persistent_run[0].params)[0])


def test_resume_with_the_buffer_is_bit_identical(small_moons, persistent_run, tmp_path):
    config = PERSISTENT.replace(checkpoint_every=1)
    fit(_state(), small_moons, config.replace(epochs=2), workdir=str(tmp_path), progress=False)
    resumed, history = fit(_state(), small_moons, config, workdir=str(tmp_path), progress=False)
    straight = persistent_run[0]
    chex.assert_trees_all_equal(resumed.params, straight.params)
    chex.assert_trees_all_equal(resumed.buffer, straight.buffer)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["persistent"] is True and run["config"]["buffer_reset"] == pytest.approx(0.05)
    # A run without the buffer may not continue it.
    with pytest.raises(checkpoint.RunMismatchError, match="persistent"):
        fit(_state(), small_moons, CFG.replace(checkpoint_every=1), workdir=str(tmp_path), progress=False)


def test_fit_many_with_the_buffer_matches_single_runs(small_moons):
    apply_fn, _ = make_model("mlp", 2, 2, jax.random.key(0))
    inits = [make_model("mlp", 2, 2, jax.random.key(s))[1] for s in (3, 4)]
    states = create_train_states(apply_fn, jax.tree.map(lambda *a: jnp.stack(a), *inits))
    many, histories = fit_many(states, small_moons, PERSISTENT, seeds=[3, 4], progress=False)
    assert many.buffer.x.shape == (2,) + small_moons.x_train.shape  # each run its own chains
    for i, seed in enumerate((3, 4)):
        one, history = fit(create_train_state(apply_fn, inits[i]), small_moons, PERSISTENT.replace(seed=seed),
                           progress=False)
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], many.params), one.params, atol=1e-5)
        np.testing.assert_array_equal(many.buffer.filled[i], one.buffer.filled)
        np.testing.assert_array_equal(many.buffer.target[i], one.buffer.target)
        np.testing.assert_allclose(many.buffer.x[i], one.buffer.x, atol=1e-4)
        assert histories[i][1]["warm"] == pytest.approx(history[1]["warm"]) and history[1]["warm"] > 0


def test_the_persistent_epoch_compiles_once(small_moons):
    config = PERSISTENT.replace(ce_per_batch=8)
    c = small_moons.constraints()
    x, y = jnp.asarray(small_moons.x_train), jnp.asarray(small_moons.y_train)
    pool = positive_pool(small_moons.x_train, small_moons.y_train, 2)
    with pytest.raises(ValueError, match="with_buffer"):
        jax.jit(make_train_epoch(config, c), static_argnums=(6,))(_state(), x, y, pool, jax.random.key(0), 0, True)
    epoch = jax.jit(chex.assert_max_traces(make_train_epoch(config, c), n=1), static_argnums=(6,))
    state = with_buffer(_state(), small_moons.x_train)
    warm = []
    for e in range(3):
        state, metrics = epoch(state, x, y, pool, jax.random.key(0), e, True)
        warm.append(float(metrics["warm"].mean()))
    assert warm[0] == 0.0 and warm[2] > 0.0 and epoch._cache_size() == 1


def test_persistent_with_a_mesh_equals_one_device(small_moons):
    from ctrain.sharding import data_mesh
    config = PERSISTENT.replace(batch_size=40, n_ce=48, epochs=2)  # 6 batches of 40, 8 searches each: 4 devices
    one, history = fit(_state(), small_moons, config, progress=False)
    meshed, mesh_history = fit(_state(), small_moons, config, mesh=data_mesh(), progress=False)
    chex.assert_trees_all_close(meshed.params, one.params, atol=1e-5)
    np.testing.assert_array_equal(meshed.buffer.target, one.buffer.target)
    np.testing.assert_allclose(meshed.buffer.x, one.buffer.x, atol=1e-4)
    assert mesh_history[1]["warm"] == pytest.approx(history[1]["warm"]) and history[1]["warm"] > 0


def test_bad_buffer_settings_are_refused():
    with pytest.raises(ValueError, match="per_epoch"):
        TrainConfig(persistent=True, schedule="per_batch")
    with pytest.raises(ValueError, match="no counterfactual search"):
        TrainConfig(persistent=True, objective="pgd_at")
    for bad in (-0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="buffer_reset"):
            TrainConfig(buffer_reset=bad)
    with pytest.raises(ValueError, match="persistent"):
        TrainConfig(persistent=1)
    with pytest.raises(ValueError, match="needs persistent=True"):
        TrainConfig(chain_steps=5)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="chain_steps"):
            TrainConfig(persistent=True, chain_steps=bad)


# --- the cost benchmark --------------------------------------------------------------------------------------

def test_ct_cost_quick_writes_its_json(tmp_path):
    out = tmp_path / "ct_cost.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # --quick with fewer epochs, rounds and variants still: the smoke run the benchmark suite makes, in < 60 s.
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmarks.ct_cost", "--quick", "--epochs", "2",
                           "--rounds", "1", "--individuals", "10", "--variants", "default", "capped", "fewer",
                           "burnin",
                           "--json", str(out)], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [row["variant"] for row in result["rows"]] == ["default", "capped", "fewer", "burnin"]
    assert result["rows"][1]["warm"] > 0 and result["rows"][0]["warm"] is None
    # fewer searches a quarter of the default's counterfactuals per epoch; it is the default otherwise
    assert result["rows"][2]["n_ce"] == result["rows"][0]["n_ce"] // 4
    # burnin trains the first half of the epochs conventionally: those epochs search nothing
    assert [row["searched_epochs"] for row in result["rows"]] == [2, 2, 2, 1]
    for row in result["rows"]:
        assert row["epoch_ratio"] > 0 and row["wall_s"] > 0 and 0 <= row["mature"] <= 1
        assert set(row["ip"]) >= {"mean", "low", "high"}
        assert len(row["skipped"]) == 2 and all(n == 0 for n in row["skipped"])
    assert "| dataset |" in proc.stdout and "| skipped |" in proc.stdout
    # the stored rows give the same table, and the trade-off figure, without training
    from experiments.benchmarks import ct_cost
    assert ct_cost.main(["--from-json", str(out), "--plot", str(tmp_path / "trade_off.png")]) == result
    assert (tmp_path / "trade_off.png").stat().st_size > 0
