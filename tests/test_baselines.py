"""The baselines beyond the paper: PGD adversarial training ("pgd_at") and JEM-style energy training ("jem")."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctrain import constraints as cons
from ctrain.energy import energy
from ctrain.objective import (LossWeights, make_adversarial_batch, make_sgld_batch, make_training_batch,
                              objective_weights, positive_pool)
from ctrain.search import SearchConfig
from ctrain.train import TrainConfig, create_train_state, fit

W = jnp.array([[2.0, -2.0], [1.0, 1.0]])


def linear(p, x):
    return x @ p


def test_pgd_batch_attacks_inside_the_ball_and_respects_constraints():
    x = jnp.array([[0.2, 0.5], [-0.3, 1.0], [0.05, -0.2]])
    y = jnp.array([0, 1, 0])
    c = cons.make_constraints(2, immutable=[1])
    cfg = SearchConfig(epsilon=0.3, max_steps=10, units="absolute")
    b = make_adversarial_batch(linear, W, x, y, jax.random.key(0), cfg, c)
    assert float(jnp.max(jnp.abs(b.x_ae - x))) <= 0.3 + 1e-6
    np.testing.assert_array_equal(b.x_ae[:, 1], x[:, 1])  # immutable
    # logit₀ − logit₁ = 4·x0: the attack on the true label moves x0 against it by the whole radius.
    np.testing.assert_allclose(b.x_ae[:, 0], x[:, 0] + jnp.array([-0.3, 0.3, -0.3]), atol=1e-5)
    assert not bool(jnp.any(b.converged)) and bool(jnp.all(b.ae_moved))
    w = objective_weights("pgd_at", LossWeights())
    assert (float(w.div), float(w.reg), float(w.adv)) == (0.0, 0.0, 0.25)


def test_sgld_batch_draws_low_energy_negatives_and_real_positives(moons):
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    cfg = SearchConfig(max_steps=30)
    x = jnp.asarray(moons.x_train[:64])
    b = make_sgld_batch(linear, W, x, jnp.asarray(moons.y_train[:64]), pool, jax.random.key(0), cfg)
    chex.assert_shape(b.x_cf, x.shape)
    assert bool(jnp.all(jnp.isfinite(b.x_cf))) and bool(jnp.all(b.converged))
    members = {k: {tuple(r) for r in moons.x_train[moons.y_train == k]} for k in (0, 1)}
    assert all(tuple(np.asarray(r)) in members[int(t)] for r, t in zip(b.x_pos, b.target))
    # SGLD descends the target energy: the chains end lower than where uniform starts would be.
    again = make_sgld_batch(linear, W, x, jnp.asarray(moons.y_train[:64]), pool, jax.random.key(0),
                            cfg.replace(max_steps=1))
    assert float(jnp.mean(energy(linear, W, b.x_cf, b.target))) < float(jnp.mean(energy(linear, W, again.x_cf,
                                                                                        again.target)))
    w = objective_weights("jem", LossWeights())
    assert float(w.adv) == 0.0 and float(w.div) == 0.5
    same = make_training_batch("jem", linear, W, x, jnp.asarray(moons.y_train[:64]), pool, jax.random.key(0), cfg)
    chex.assert_trees_all_equal(same, b)


@pytest.mark.parametrize("objective", ["pgd_at", "jem"])
def test_baselines_train_end_to_end_and_differ_from_the_plain_baseline(objective, moons):
    from ctrain.models import make_model
    data = moons.subsample(240, seed=0)
    apply_fn, params = make_model("mlp", 2, 2, jax.random.key(0))
    cfg = TrainConfig(objective=objective, search=SearchConfig(max_steps=10), epochs=2, n_ce=60)
    state, history = fit(create_train_state(apply_fn, params), data, cfg, progress=False)
    plain, _ = fit(create_train_state(apply_fn, params), data, cfg.replace(objective="vanilla"), progress=False)
    assert history[-1]["nonfinite"] == 0
    assert not np.allclose(jax.tree.leaves(state.params)[0], jax.tree.leaves(plain.params)[0])
    if objective == "pgd_at":
        assert history[-1]["ae_moved"] > 0.9 and history[-1]["converged"] == 0.0
    else:
        assert history[-1]["converged"] == 1.0 and history[-1]["div"] != 0.0
