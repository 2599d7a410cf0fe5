"""Integer features on a lattice (issue 33 item 1): the model sees, τ and validity are judged at, and the search
returns, points whose lattice features are lattice points origin + k·step inside their constraints."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctrain import constraints as cons
from ctrain.search import SearchConfig, explain, search_counterfactuals

# logits (0, x0 − B): p(class 1) = σ(x0 − B), so p >= τ needs x0 >= B + logit(τ)
B, TAU = 2.3, 0.9
ORIGIN, STEP = 0.1, 0.5  # feature 0 takes the values 0.1 + 0.5·k


def threshold_model(params, x):
    return jnp.stack([jnp.zeros(x.shape[0]), x[:, 0] * params["a"] - B], -1)


PARAMS = {"a": jnp.float32(1.0)}
GENERIC = SearchConfig(generator="generic", lambda_cost=0.0, threshold=TAU, max_steps=60, step_size=0.37,
                       units="absolute", step_rule="normalized_linf")


def on_lattice(v, origin, step, tol=1e-3):
    """Returns whether each entry of v is within tol steps of a lattice point."""
    k = (np.asarray(v, np.float64) - origin) / step
    return np.abs(k - np.round(k)) <= tol


def test_a_linear_counterfactual_lands_on_the_first_lattice_point_past_the_boundary():
    c = cons.make_constraints(2, immutable=[1], grid_origin=[ORIGIN, 0.0], grid_step=[STEP, 0.0])
    x = jnp.array([[ORIGIN, 0.7], [ORIGIN + 2 * STEP, -1.0]], jnp.float32)
    target = jnp.ones(2, jnp.int32)
    res = search_counterfactuals(threshold_model, PARAMS, x, target, jax.random.key(0), GENERIC, c)
    # the smallest lattice point with σ(x0 − B) >= τ
    k = np.ceil((B + np.log(TAU / (1 - TAU)) - ORIGIN) / STEP)
    np.testing.assert_allclose(res.x_cf[:, 0], [ORIGIN + k * STEP] * 2, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(res.x_cf[:, 1], x[:, 1])
    assert bool(jnp.all(res.converged))
    np.testing.assert_allclose(res.p_target, jax.nn.sigmoid(res.x_cf[:, 0] - B), rtol=1e-6)
    # without the lattice the search stops at the first relaxed iterate past the boundary, between lattice points
    plain = search_counterfactuals(threshold_model, PARAMS, x, target, jax.random.key(0), GENERIC,
                                   cons.make_constraints(2, immutable=[1]))
    assert not np.any(on_lattice(plain.x_cf[:, 0], ORIGIN, STEP))
    assert bool(jnp.all(plain.converged))


def standardised_integers(rng, n, m, s):
    """Returns integer-valued columns standardised as ctrain.data does: (a − m)/s in float64, then float32."""
    a = rng.integers(18, 70, size=(n, len(m)))
    return ((a - m) / s).astype(np.float32)


@pytest.mark.parametrize("categorical", ["straight_through", "snap_state"])
def test_increase_only_lattice_features_move_by_whole_steps_and_are_judged_where_returned(key, categorical):
    rng = np.random.default_rng(0)
    m, s = np.array([38.6, 40.4]), np.array([13.6, 12.3])
    n, width = 64, 4
    x = np.concatenate([standardised_integers(rng, n, m, s), rng.normal(size=(n, 2)).astype(np.float32)], 1)
    origin = np.array([*(-m / s), 0, 0], np.float32)
    step = np.array([*(1 / s), 0, 0], np.float32)
    lower = np.array([*((17 - m) / s), -np.inf, -np.inf], np.float32)
    upper = np.array([*((90 - m) / s), np.inf, np.inf], np.float32)
    c = cons.make_constraints(width, increase=[0], lower=lower, upper=upper, grid_origin=origin, grid_step=step)
    w = np.array([[0.0, 0.0, 0.0, 0.0], [1.5, -2.0, 0.8, 0.3]], np.float32).T  # age pulls towards class 1
    params = {"w": jnp.asarray(w)}
    model = lambda p, x: x @ p["w"]
    config = SearchConfig(generator="generic", categorical=categorical, step_size=0.3)
    e = explain(model, params, x, np.where(x @ w[:, 1] > 0, 0, 1), key=key, config=config, constraints=c,
                allow_same_class=True)
    assert np.all(e.x_cf[:, 0] >= e.x[:, 0])  # exactly, not to rounding
    assert np.all(on_lattice(e.x_cf[:, :2], origin[:2], step[:2]))
    assert np.all((e.x_cf[:, :2] >= lower[:2]) & (e.x_cf[:, :2] <= upper[:2]))
    # some rows moved their lattice features, by whole steps
    moved = np.round((e.x_cf[:, :2] - e.x[:, :2]) / step[:2])
    assert np.any(moved != 0)
    np.testing.assert_allclose((e.x_cf[:, :2] - e.x[:, :2]) / step[:2], moved, atol=1e-3)
    logits = np.asarray(model(params, e.x_cf))
    np.testing.assert_array_equal(e.valid, logits.argmax(-1) == e.target)
    p = np.asarray(jax.nn.softmax(logits, -1))[np.arange(n), e.target]
    np.testing.assert_allclose(e.p_target, p, rtol=1e-5)
    assert e.valid.mean() > 0.5


def test_rounding_respects_bounds_immutables_and_off_lattice_factuals():
    c = cons.make_constraints(4, immutable=[1], decrease=[2], lower=[-np.inf, -np.inf, -np.inf, 0.0],
                              upper=[np.inf, np.inf, np.inf, 1.2], grid_origin=[0.0, 0.0, 0.0, 0.0],
                              grid_step=[0.5, 0.5, 0.5, 0.5])
    x = jnp.array([[1.0, 0.3, 1.5, 0.5]])  # feature 1 is off the lattice (and immutable)
    box = cons.feasible_box(x, c)
    got = cons.round_to_lattice(jnp.array([[1.2, 0.9, 1.3, 7.0]]), x, c, box)
    # 1.2 -> 1.0 (nearest); the immutable off-lattice 0.3 stays 0.3 bit for bit; decrease-only 1.3 -> 1.5 (= x, the
    # nearest point); 7.0 -> 1.0, the last lattice point <= the upper bound 1.2
    np.testing.assert_array_equal(got, np.float32([[1.0, 0.3, 1.5, 1.0]]))
    got = cons.round_to_lattice(jnp.array([[1.2, 0.9, 0.6, -3.0]]), x, c, box)
    np.testing.assert_array_equal(got, np.float32([[1.0, 0.3, 0.5, 0.0]]))
    # an unchanged lattice feature keeps the factual's own bits, even where origin + k·step rounds differently
    c3 = cons.make_constraints(1, grid_origin=[-38.6 / 13.6], grid_step=[1 / 13.6])
    xs = jnp.asarray(((np.arange(17, 91) - 38.6) / 13.6).astype(np.float32))[:, None]
    np.testing.assert_array_equal(cons.snap(xs, xs, c3), xs)


def test_make_constraints_checks_the_lattice():
    assert not cons.make_constraints(3).has_lattice
    no_lattice = cons.make_constraints(3, grid_step=[0.0, 0.0, 0.0])
    assert not no_lattice.has_lattice  # all steps 0: the same pytree as no lattice at all
    assert jax.tree.structure(no_lattice) == jax.tree.structure(cons.make_constraints(3))
    assert cons.make_constraints(3, grid_step=[0.0, 1.0, 0.0]).has_lattice
    with pytest.raises(ValueError, match="without grid_step"):
        cons.make_constraints(3, grid_origin=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        cons.make_constraints(3, grid_step=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"grid_step must be finite and >= 0.*columns \[1\]"):
        cons.make_constraints(3, grid_step=[0.0, -1.0, 0.0])
    with pytest.raises(ValueError, match=r"columns \[2\] are in one-hot groups"):
        cons.make_constraints(3, groups=[[1, 2]], grid_step=[0.0, 0.0, 1.0], lower=[-1, 0, 0], upper=[1, 1, 1])
    with pytest.raises(ValueError, match=r"columns \[0\] have no lattice point within their bounds"):
        cons.make_constraints(3, lower=[0.2, -1, -1], upper=[0.4, 1, 1], grid_step=[0.5, 0.0, 0.0])


def test_relaxed_search_ignores_the_lattice_as_it_ignores_groups():
    c = cons.make_constraints(2, grid_origin=[ORIGIN, 0.0], grid_step=[STEP, 0.0])
    x = jnp.array([[ORIGIN, 0.7]], jnp.float32)
    target = jnp.ones(1, jnp.int32)
    relaxed = GENERIC.replace(categorical="relaxed")
    got = search_counterfactuals(threshold_model, PARAMS, x, target, jax.random.key(0), relaxed, c)
    plain = search_counterfactuals(threshold_model, PARAMS, x, target, jax.random.key(0), relaxed,
                                   cons.make_constraints(2))
    np.testing.assert_array_equal(got.x_cf, plain.x_cf)
