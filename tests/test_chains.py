"""Amortised CT (TrainConfig.chain_steps, ctrain.chains): a fixed pool of chains, every one advanced every epoch."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctrain import checkpoint
from ctrain.chains import empty_chains
from ctrain.models import make_model
from ctrain.objective import positive_pool
from ctrain.search import SearchConfig
from ctrain.train import (TrainConfig, chain_pool_size, create_train_state, fit, fit_many, make_train_epoch,
                          stack_states, unstack_state, with_chains)

SEARCH = SearchConfig(threshold=0.5, max_steps=20, step_size=0.5)
CFG = TrainConfig(search=SEARCH, epochs=3, batch_size=30, n_ce=60, shuffle=True)
STEPS = 3  # c: a chain's search steps per epoch, well below T = 20, so chains need several epochs to mature
CHAINS = CFG.replace(chain_steps=STEPS)


@pytest.fixture(scope="module")
def small_moons():
    from ctrain.data import load_dataset
    return load_dataset("moons").subsample(240, seed=0)


def _state(seed=0):
    apply_fn, params = make_model("mlp", 2, 2, jax.random.key(seed))
    return create_train_state(apply_fn, params)


@pytest.fixture(scope="module")
def fresh_run(small_moons):
    return fit(_state(), small_moons, CFG, progress=False)


@pytest.fixture(scope="module")
def chain_run(small_moons):
    return fit(_state(), small_moons, CHAINS, progress=False)


def _epochs(small_moons, config, n):
    """Returns the chains after each of n epochs run by hand around make_train_epoch, and each epoch's metrics."""
    config = config.replace(ce_per_batch=8)
    x, y = jnp.asarray(small_moons.x_train), jnp.asarray(small_moons.y_train)
    pool = positive_pool(small_moons.x_train, small_moons.y_train, 2)
    epoch = jax.jit(chex.assert_max_traces(make_train_epoch(config, small_moons.constraints()), n=1),
                    static_argnums=(6,))
    state = with_chains(_state(), config, small_moons.x_train)
    out = []
    for e in range(n):
        state, metrics = epoch(state, x, y, pool, jax.random.key(0), e, True)
        out.append((jax.device_get(state.chains), jax.device_get(metrics)))
    return out


def test_every_chain_advances_every_epoch_and_reset_zero_keeps_its_factual_and_target(small_moons):
    after = _epochs(small_moons, CHAINS.replace(chain_reset=0.0), 4)
    size = chain_pool_size(CHAINS.replace(ce_per_batch=8), len(small_moons.x_train))
    assert after[0][0].age.shape == (size,) == (8 * (240 // 30),)
    previous_steps = np.zeros(size, np.int32)
    for e, (chains, metrics) in enumerate(after):
        np.testing.assert_array_equal(chains.age, e + 1)  # every chain moved in every epoch, none restarted
        taken = chains.steps - previous_steps
        # An immature chain took all its c steps this epoch; a mature one stopped on reaching τ (or took none).
        assert np.all(taken <= STEPS) and np.all(taken[~chains.mature] == STEPS), taken
        previous_steps = chains.steps
        np.testing.assert_array_equal(chains.factual, after[0][0].factual)
        np.testing.assert_array_equal(chains.target, after[0][0].target)
        assert float(metrics["restarted"].mean()) == (1.0 if e == 0 else 0.0)
        assert float(metrics["chain_age"].mean()) == e + 1
    # The chains mature over the epochs: more than the first epoch's c steps could reach.
    assert after[0][0].mature.mean() < after[-1][0].mature.mean()
    assert 0 < after[0][0].mature.mean() < 1 and np.any(after[-1][0].steps > STEPS)


def test_reset_one_restarts_every_chain_and_is_the_fresh_search(small_moons, fresh_run):
    after = _epochs(small_moons, CHAINS.replace(chain_reset=1.0), 2)
    assert np.all(after[1][0].age == 1) and float(after[1][1]["restarted"].mean()) == 1.0
    assert not np.array_equal(after[0][0].factual, after[1][0].factual)
    # With c = T and every chain restarted, an epoch is the fresh search's: the same parameters as the default.
    fresh, fresh_history = fresh_run
    restarted, history = fit(_state(), small_moons, CFG.replace(chain_steps=SEARCH.max_steps, chain_reset=1.0),
                             progress=False)
    chex.assert_trees_all_close(restarted.params, fresh.params, rtol=1e-6, atol=1e-7)
    assert [h["converged"] for h in history] == pytest.approx([h["converged"] for h in fresh_history])


def test_chain_settings_change_the_training(small_moons, chain_run, fresh_run):
    trained, history = chain_run
    assert trained.chains.age.shape == (chain_pool_size(CHAINS.replace(ce_per_batch=8), 240),)
    assert [h["chain_age"] for h in history][1:] > [1.0, 1.0] and history[0]["restarted"] == 1.0
    assert all(h["search_steps"] <= STEPS for h in history)
    fresh = fresh_run[0]
    more, _ = fit(_state(), small_moons, CHAINS.replace(chain_steps=STEPS + 2), progress=False)
    never, never_history = fit(_state(), small_moons, CHAINS.replace(chain_reset=0.0), progress=False)
    leaf = lambda s: jax.tree.leaves(s.params)[0]
    for other in (fresh, more, never):
        assert not np.allclose(leaf(other), leaf(trained))
    assert never_history[-1]["chain_age"] == CFG.epochs and never_history[-1]["restarted"] == 0.0
    again, _ = fit(_state(), small_moons, CHAINS, progress=False)  # deterministic
    chex.assert_trees_all_equal(again.params, trained.params)
    chex.assert_trees_all_equal(again.chains, trained.chains)


def test_resume_with_chains_is_bit_identical(small_moons, chain_run, tmp_path):
    config = CHAINS.replace(checkpoint_every=1)
    fit(_state(), small_moons, config.replace(epochs=2), workdir=str(tmp_path), progress=False)
    resumed, history = fit(_state(), small_moons, config, workdir=str(tmp_path), progress=False)
    chex.assert_trees_all_equal(resumed.params, chain_run[0].params)
    chex.assert_trees_all_equal(resumed.chains, chain_run[0].chains)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["chain_steps"] == STEPS and run["config"]["chain_reset"] is None
    with pytest.raises(checkpoint.RunMismatchError, match="chain_steps"):  # a fresh-search run may not continue it
        fit(_state(), small_moons, CFG.replace(checkpoint_every=1), workdir=str(tmp_path), progress=False)


def test_a_run_without_chains_keeps_its_identity(small_moons):
    identity = checkpoint.run_identity(_state(), small_moons, CFG, small_moons.constraints())
    old = {**identity, "config": {k: v for k, v in identity["config"].items() if k not in ("chain_steps",
                                                                                            "chain_reset")}}
    assert identity["config"]["chain_steps"] is None
    assert checkpoint.identity_differences(old, identity) == {}  # an identity written before the option resumes


def test_fit_many_with_chains_matches_single_runs(small_moons):
    states = stack_states([_state(3), _state(4)])
    many, histories = fit_many(states, small_moons, CHAINS, seeds=[3, 4], progress=False)
    assert many.chains.x.shape[:2] == (2, chain_pool_size(CHAINS.replace(ce_per_batch=8), 240))
    for i, seed in enumerate((3, 4)):
        one, history = fit(_state(seed), small_moons, CHAINS.replace(seed=seed), progress=False)
        run = unstack_state(many, i)
        chex.assert_trees_all_close(run.params, one.params, atol=1e-5)
        np.testing.assert_array_equal(run.chains.factual, one.chains.factual)
        np.testing.assert_array_equal(run.chains.target, one.chains.target)
        assert histories[i][-1]["chain_age"] == pytest.approx(history[-1]["chain_age"])


def test_bad_chain_settings_are_refused(small_moons):
    with pytest.raises(ValueError, match="per_epoch"):
        TrainConfig(chain_steps=2, schedule="per_batch")
    with pytest.raises(ValueError, match="no counterfactual search"):
        TrainConfig(chain_steps=2, objective="pgd_at")
    for bad in (0, 2.5, True, "3"):
        with pytest.raises(ValueError, match="chain_steps"):
            TrainConfig(chain_steps=bad)
    for bad in (-0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="chain_reset"):
            TrainConfig(chain_steps=2, chain_reset=bad)
    with pytest.raises(ValueError, match="needs chain_steps"):
        TrainConfig(chain_reset=0.1)
    for gone in ("persistent", "buffer_reset"):
        with pytest.raises(TypeError, match="chain_steps=c"):
            TrainConfig(**{gone: True})
    x, y = jnp.asarray(small_moons.x_train), jnp.asarray(small_moons.y_train)
    pool = positive_pool(small_moons.x_train, small_moons.y_train, 2)
    epoch = make_train_epoch(CHAINS.replace(ce_per_batch=8), small_moons.constraints())
    with pytest.raises(ValueError, match="with_chains"):
        epoch(_state(), x, y, pool, jax.random.key(0), 0, True)
    with pytest.raises(ValueError, match="64 chains"):  # a pool of another size
        epoch(_state().replace(chains=empty_chains(5, 2)), x, y, pool, jax.random.key(0), 0, True)
