import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from ctrain import constraints as cons
from ctrain.energy import energy, marginal_energy
from ctrain.models import make_model, train_vae
from ctrain.search import (GENERATORS, SearchConfig, calibrate_conformal, energy_weight, explain,
                           register_generator, search_counterfactuals, search_counterfactuals_jit)

W = jnp.array([[1.0, -1.0], [2.0, 0.5]])  # logits = x @ W: class-1 minus class-0 direction is (-2, -1.5)


def linear(p, x):
    return x @ p["w"]


PARAMS = {"w": W}
GENERIC = SearchConfig(generator="generic", lambda_cost=0.0, threshold=0.9, max_steps=200, step_size=0.1)


def test_energy_is_negative_target_logit():
    x = jnp.array([[1.0, 2.0]])
    logits = x @ W
    np.testing.assert_allclose(energy(linear, PARAMS, x, jnp.array([1])), -logits[:, 1])
    np.testing.assert_allclose(marginal_energy(linear, PARAMS, x), -jax.nn.logsumexp(logits, -1))


def test_linear_counterfactual_moves_along_weight_direction_and_crosses_boundary():
    x = jnp.array([[1.0, 1.0], [2.0, 0.5], [0.3, 0.1]])  # all predicted class 0
    target = jnp.ones(3, jnp.int32)
    res = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0), GENERIC)
    direction = W[:, 1] - W[:, 0]
    delta = res.x_cf - x
    cos = (delta @ direction) / (jnp.linalg.norm(delta, axis=1) * jnp.linalg.norm(direction))
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)  # CE gradient of a linear model is ∝ the weight difference
    assert bool(jnp.all(jnp.argmax(res.x_cf @ W, -1) == 1))
    assert bool(jnp.all(res.converged)) and bool(jnp.all(res.p_target >= 0.9))


def test_threshold_and_step_budget_are_respected():
    x = jnp.array([[1.0, 1.0], [5.0, 5.0]])
    target = jnp.ones(2, jnp.int32)
    res = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0), GENERIC.replace(max_steps=3))
    assert int(res.steps.max()) <= 3
    assert not bool(res.converged[1])  # far away: 3 steps of 0.1 cannot reach p >= 0.9
    full = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0), GENERIC)
    assert bool(jnp.all(full.converged == (full.p_target >= 0.9)))
    # The first step count at which p >= τ: one step fewer would not have converged.
    less = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0),
                                  GENERIC.replace(max_steps=int(full.steps[0]) - 1))
    assert not bool(less.converged[0])


def test_converged_samples_stop_moving():
    x = jnp.array([[0.1, 0.1], [3.0, 3.0]])
    target = jnp.ones(2, jnp.int32)
    short = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0), GENERIC.replace(max_steps=20))
    long = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0), GENERIC.replace(max_steps=200))
    assert bool(short.converged[0]) and not bool(short.converged[1])
    np.testing.assert_array_equal(short.x_cf[0], long.x_cf[0])  # frozen once converged
    assert int(long.steps[1]) > int(short.steps[1])


def test_scan_and_while_loops_agree():
    x = jnp.array([[0.1, 0.1], [3.0, 3.0], [1.0, -1.0]])
    target = jnp.array([1, 1, 1])
    a = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0), GENERIC.replace(max_steps=40))
    b = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0),
                               GENERIC.replace(max_steps=40, loop="scan"))
    chex.assert_trees_all_close(a, b, atol=1e-6)


def test_adversarial_example_is_the_last_iterate_inside_the_ball():
    x = jnp.array([[1.0, 1.0], [0.05, 0.05]])
    target = jnp.ones(2, jnp.int32)
    eps = 0.2
    res = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0), GENERIC.replace(epsilon=eps))
    assert bool(jnp.all(jnp.max(jnp.abs(res.x_ae - x), -1) <= eps))
    # Row 0 leaves the ball: its AE is on the path, strictly between x and x', and one more step would exit.
    delta_ae, delta_cf = res.x_ae[0] - x[0], res.x_cf[0] - x[0]
    assert 0 < float(jnp.max(jnp.abs(delta_ae))) <= eps < float(jnp.max(jnp.abs(delta_cf)))
    step = 0.1 * float(jnp.max(jnp.abs(W[:, 1] - W[:, 0])))
    assert float(jnp.max(jnp.abs(delta_ae))) > eps - step
    # A counterfactual that converges inside the ball is its own adversarial example.
    near = search_counterfactuals(linear, PARAMS, x[1:], target[1:], jax.random.key(0),
                                  GENERIC.replace(threshold=0.55, epsilon=0.5))
    assert bool(near.converged[0]) and float(jnp.max(jnp.abs(near.x_cf - x[1:]))) <= 0.5
    np.testing.assert_array_equal(near.x_ae, near.x_cf)
    none = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0), GENERIC.replace(epsilon=0.0))
    np.testing.assert_array_equal(none.x_ae, x)  # no iterate inside a zero ball except x itself


def test_nan_gradient_gives_a_zero_step_not_a_nan():
    def sqrt_model(p, x):
        return jnp.stack([jnp.zeros(x.shape[0]), jnp.sqrt(x[:, 0]) + x[:, 1]], -1)

    x = jnp.array([[0.0, -2.0]])  # d sqrt(x0)/dx0 is infinite at 0
    res = search_counterfactuals(sqrt_model, None, x, jnp.array([1]), jax.random.key(0), GENERIC)
    chex.assert_tree_all_finite(res.x_cf)
    assert float(res.x_cf[0, 0]) == 0.0 and float(res.x_cf[0, 1]) > -2.0


def test_ecco_energy_schedule_matches_the_reference():
    cfg = SearchConfig(max_steps=30)
    np.testing.assert_allclose(energy_weight(jnp.array(0), cfg), 0.1 * 2.0 ** -0.9, rtol=1e-6)
    np.testing.assert_allclose(energy_weight(jnp.array(29), cfg), 0.1 * 31.0 ** -0.9, rtol=1e-6)
    cfg50 = SearchConfig(max_steps=50)
    np.testing.assert_allclose(energy_weight(jnp.array(0), cfg50), 0.2 * 3.0 ** -0.9, rtol=1e-6)
    assert float(energy_weight(jnp.array(7), cfg.replace(energy_schedule="constant"))) == 1.0


@pytest.mark.parametrize("generator", ["generic", "ecco", "eccco", "revise"])
def test_every_generator_finds_valid_feasible_counterfactuals(generator, moons):
    apply_fn, params = make_model("linear", 2, 2, jax.random.key(1))
    params = jax.tree.map(lambda a: 3 * a, params)
    aux = None
    if generator == "eccco":
        aux = {"conformal_quantile": calibrate_conformal(apply_fn, params, moons.x_val, moons.y_val, alpha=0.1)}
    if generator == "revise":
        aux = {"vae_params": train_vae(moons.x_train, jax.random.key(0), epochs=20)}
    c = moons.with_mutability(x0="immutable").constraints()
    cfg = SearchConfig(generator=generator, threshold=0.5, max_steps=100, step_size=0.2)
    e = explain(apply_fn, params, moons.x_test[:64], key=jax.random.key(2), config=cfg, constraints=c, aux=aux)
    np.testing.assert_array_equal(e.x_cf[:, 0], e.x[:, 0])  # immutable bit for bit, latent search included
    v = cons.violations(jnp.asarray(e.x_cf), jnp.asarray(e.x), c)
    assert all(int(a.sum()) == 0 for a in v.values())
    assert e.summary()["valid"] > 0.3


def test_a_new_generator_is_a_few_lines():
    @register_generator("l2_wachter")
    def l2_loss(logits, x_cf, x, target, step, config, aux):
        return -jax.nn.log_softmax(logits)[target] + config.lambda_cost * jnp.sum((x_cf - x) ** 2)

    try:
        res = search_counterfactuals(linear, PARAMS, jnp.array([[1.0, 1.0]]), jnp.array([1]), jax.random.key(0),
                                     GENERIC.replace(generator="l2_wachter"))
        assert bool(res.converged[0])
    finally:
        GENERATORS.pop("l2_wachter")


def test_noise_initialisation_is_projected_and_seeded():
    c = cons.make_constraints(2, immutable=[0])
    x = jnp.array([[1.0, 1.0]])
    cfg = GENERIC.replace(init="noise", init_noise=0.5, max_steps=1)
    a = search_counterfactuals(linear, PARAMS, x, jnp.array([1]), jax.random.key(0), cfg, c)
    b = search_counterfactuals(linear, PARAMS, x, jnp.array([1]), jax.random.key(0), cfg, c)
    chex.assert_trees_all_equal(a, b)
    assert float(a.x_cf[0, 0]) == 1.0


# --- constraints, exactly --------------------------------------------------------------------------------

WIDTH = 6


@st.composite
def schemas(draw):
    muts = draw(st.lists(st.sampled_from([0, 1, 2, 3]), min_size=WIDTH, max_size=WIDTH))
    with_group = draw(st.booleans())
    if with_group:
        start = draw(st.integers(0, WIDTH - 3))
        cols = [start, start + 1, start + 2]
        group_mut = draw(st.sampled_from([0, 1]))
        for col in cols:
            muts[col] = group_mut
    lo = np.array(draw(st.lists(st.floats(-3, 0), min_size=WIDTH, max_size=WIDTH)), np.float32)
    hi = lo + np.array(draw(st.lists(st.floats(0, 3), min_size=WIDTH, max_size=WIDTH)), np.float32)
    if with_group:
        lo[cols], hi[cols] = 0.0, 1.0  # a one-hot category lives in [0, 1]
    seed = draw(st.integers(0, 2 ** 16))
    return muts, lo, hi, (cols if with_group else None), seed, draw(st.sampled_from(["box", "simplex"]))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schemas())
def test_random_schemas_never_violate_constraints(spec):
    muts, lo, hi, group, seed, onehot = spec
    muts = np.array(muts)
    c = cons.make_constraints(WIDTH, immutable=np.flatnonzero(muts == 1), increase=np.flatnonzero(muts == 2),
                              decrease=np.flatnonzero(muts == 3), lower=lo, upper=hi,
                              groups=[group] if group else [])
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo - 0.5, hi + 0.5, size=(16, WIDTH)).astype(np.float32)  # some factuals outside the bounds
    if group:
        x[:, group] = np.eye(3)[rng.integers(0, 3, 16)]
    apply_fn, params = make_model("mlp", WIDTH, 3, jax.random.key(seed % 7))
    target = jnp.asarray(rng.integers(0, 3, 16), jnp.int32)
    cfg = SearchConfig(generator="generic", step_size=2.0, max_steps=8, threshold=0.99, lambda_cost=0.0,
                       onehot=onehot)
    res = search_counterfactuals_jit(apply_fn, params, jnp.asarray(x), target, jax.random.key(0), cfg, c, None)
    v = cons.violations(res.x_cf, jnp.asarray(x), c)
    for name, count in v.items():
        assert int(count.sum()) == 0, f"{name}"
    imm = muts == 1
    np.testing.assert_array_equal(np.asarray(res.x_cf)[:, imm], x[:, imm])
    assert bool(jnp.all(jnp.max(jnp.abs(res.x_ae - x), -1) <= cfg.epsilon))


def test_simplex_projection_and_snap_known_values():
    gidx = jnp.array([[0, 1, 2]])
    p = cons.project_simplex_groups(jnp.array([1.0, 0.9, 0.0, 7.0]), gidx)
    np.testing.assert_allclose(p, [0.55, 0.45, 0.0, 7.0], atol=1e-6)
    np.testing.assert_allclose(cons.snap_groups(p, gidx), [1.0, 0.0, 0.0, 7.0])
    padded = jnp.array([[0, 1, -1], [2, 3, 4]])  # groups of different sizes share one padded array
    q = cons.project_simplex_groups(jnp.array([0.2, 0.2, 0.6, 0.6, 0.6, 5.0]), padded)
    np.testing.assert_allclose(q, [0.5, 0.5, 1 / 3, 1 / 3, 1 / 3, 5.0], atol=1e-6)


# --- compile once, clear errors ------------------------------------------------------------------------

def test_search_traces_once_per_shape():
    traced = jax.jit(chex.assert_max_traces(search_counterfactuals, n=1), static_argnames=("apply_fn", "config"))
    x = jnp.array([[1.0, 1.0], [2.0, 2.0]])
    for seed in range(3):
        traced(linear, PARAMS, x + seed, jnp.array([1, 1]), jax.random.key(seed), GENERIC)
    before = search_counterfactuals_jit._cache_size()
    xs = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
    explain(linear, PARAMS, xs, key=jax.random.key(0), config=GENERIC.replace(max_steps=7), chunk_size=4)
    explain(linear, PARAMS, xs + 1, key=jax.random.key(1), config=GENERIC.replace(max_steps=7), chunk_size=4)
    assert search_counterfactuals_jit._cache_size() == before + 1  # 3 chunks (last one padded), 2 calls: one compile


def test_bad_input_raises_clear_errors():
    x = np.array([[1.0, 1.0], [2.0, 2.0]], np.float32)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"target classes must be in \[0, 2\)"):
        explain(linear, PARAMS, x, target=[1, 2], key=key)
    with pytest.raises(ValueError, match="equal the model's predicted class"):
        explain(linear, PARAMS, x, target=0, key=key)
    explain(linear, PARAMS, x, target=0, key=key, allow_same_class=True)
    with pytest.raises(ValueError, match="constraints describe 3 features but x has 2"):
        explain(linear, PARAMS, x, key=key, constraints=cons.unconstrained(3))
    with pytest.raises(ValueError, match="constraints describe 3 features but x has 2"):
        search_counterfactuals(linear, PARAMS, x, jnp.array([1, 1]), key, GENERIC, cons.unconstrained(3))
    with pytest.raises(ValueError, match=r"threshold τ must be in \(0, 1\)"):
        SearchConfig(threshold=1.0)
    with pytest.raises(ValueError, match="max_steps T must be an integer >= 1"):
        SearchConfig(max_steps=0)
    with pytest.raises(ValueError, match="unknown generator 'nope'"):
        search_counterfactuals(linear, PARAMS, x, jnp.array([1, 1]), key, GENERIC.replace(generator="nope"))
    with pytest.raises(ValueError, match="NaN"):
        explain(linear, PARAMS, np.array([[np.nan, 1.0]]), key=key)
    with pytest.raises(ValueError, match=r"target must have shape \(2,\)"):
        search_counterfactuals(linear, PARAMS, x, jnp.array([1]), key, GENERIC)
    with pytest.raises(ValueError, match="lower bound > upper bound"):
        cons.make_constraints(2, lower=[0.0, 1.0], upper=[1.0, 0.0])
    with pytest.raises(ValueError, match="no category is feasible"):
        cons.make_constraints(WIDTH, groups=[[0, 1]], lower=np.full(WIDTH, 0.5, np.float32))


def test_search_path_starts_at_the_factual_and_ends_at_the_counterfactual():
    x = jnp.array([[1.0, 1.0], [0.1, 0.1]])
    res, path = search_counterfactuals(linear, PARAMS, x, jnp.array([1, 1]), jax.random.key(0),
                                       GENERIC.replace(max_steps=25), return_path=True)
    chex.assert_shape(path, (26, 2, 2))
    np.testing.assert_array_equal(path[0], x)
    np.testing.assert_array_equal(path[-1], res.x_cf)
    plain = search_counterfactuals(linear, PARAMS, x, jnp.array([1, 1]), jax.random.key(0),
                                   GENERIC.replace(max_steps=25))
    chex.assert_trees_all_close(res, plain, atol=1e-6)
