import dataclasses
import functools
import logging

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
from ctrain.search import (EXPLAIN_SEARCH, GENERATORS, PAPER_PARITY, PRESETS, REFERENCE_SEARCH, TRAINING_SEARCH,
                           WALK_PAST_TAU, SearchConfig, calibrate_conformal, energy_weight, explain,
                           register_generator, search_counterfactuals, search_counterfactuals_jit)

W = jnp.array([[1.0, -1.0], [2.0, 0.5]])  # logits = x @ W: class-1 minus class-0 direction is (-2, -1.5)


PARAMS = {"w": W}
# The reference's absolute gradient steps, whose recursion the known answers below replay.
GENERIC = SearchConfig(generator="generic", lambda_cost=0.0, threshold=0.9, max_steps=200, step_size=0.1,
                       units="absolute", step_rule="gradient")


def test_energy_is_negative_target_logit(linear):
    x = jnp.array([[1.0, 2.0]])
    logits = x @ W
    np.testing.assert_allclose(energy(linear, PARAMS, x, jnp.array([1])), -logits[:, 1])
    np.testing.assert_allclose(marginal_energy(linear, PARAMS, x), -jax.nn.logsumexp(logits, -1))


def test_linear_counterfactual_moves_along_weight_direction_and_crosses_boundary(linear):
    x = jnp.array([[1.0, 1.0], [2.0, 0.5], [0.3, 0.1]])  # all predicted class 0
    target = jnp.ones(3, jnp.int32)
    res = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0), GENERIC)
    direction = W[:, 1] - W[:, 0]
    delta = res.x_cf - x
    cos = (delta @ direction) / (jnp.linalg.norm(delta, axis=1) * jnp.linalg.norm(direction))
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)  # CE gradient of a linear model is ∝ the weight difference
    assert bool(jnp.all(jnp.argmax(res.x_cf @ W, -1) == 1))
    assert bool(jnp.all(res.converged)) and bool(jnp.all(res.p_target >= 0.9))


def test_threshold_and_step_budget_are_respected(linear):
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


def test_converged_samples_stop_moving(linear):
    x = jnp.array([[0.1, 0.1], [3.0, 3.0]])
    target = jnp.ones(2, jnp.int32)
    short = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0), GENERIC.replace(max_steps=20))
    long = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0), GENERIC.replace(max_steps=200))
    assert bool(short.converged[0]) and not bool(short.converged[1])
    np.testing.assert_array_equal(short.x_cf[0], long.x_cf[0])  # frozen once converged
    assert int(long.steps[1]) > int(short.steps[1])


def test_scan_and_while_loops_agree(linear):
    x = jnp.array([[0.1, 0.1], [3.0, 3.0], [1.0, -1.0]])
    target = jnp.array([1, 1, 1])
    a = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0), GENERIC.replace(max_steps=40))
    b = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0),
                               GENERIC.replace(max_steps=40, loop="scan"))
    chex.assert_trees_all_close(a, b, atol=1e-6)


def test_adversarial_example_is_the_last_iterate_inside_the_ball(linear):
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


# --- known step counts: problems that need many steps --------------------------------------------------
# For logits = x @ W and λ_cost = 0, SGD moves x by −η·∇CE with ∇CE = W·softmax(x W) − W[:, t], so the search is
# a recursion that numpy replays in float64; `steps` must be the first k with p_t(x_k) ≥ τ. Small steps from
# far-away factuals make k large. Each replay also returns how close p came to τ around the crossing, so the
# known answer cannot hinge on float32 rounding.

FAR = np.array([[1.0, 1.0], [2.0, 0.5], [0.3, 0.1], [3.0, 3.0], [-0.5, 1.0]], np.float32)  # all class 0 under W
SLOW = GENERIC.replace(threshold=0.9, max_steps=400, step_size=0.02)


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def ce_gradient(w, x, t):
    return w @ softmax(x @ w) - w[:, t]


def replay(state, prob, grad, *, config):
    """Returns (first k with prob(state_k) ≥ τ or None, distance of p from τ on both sides of that step)."""
    state, previous = np.asarray(state, np.float64), None
    for k in range(config.max_steps + 1):
        p = prob(state)
        if p >= config.threshold:
            return k, min(p - config.threshold, config.threshold - previous if previous is not None else 1.0)
        previous = p
        state = state - config.step_size * grad(state, k)
    return None, None


def ecco_gradient(w, x, t, k, config):
    # E = −logit_t, so ∇[λ·φ_k·(E + reg·E²)] = −λ·φ_k·(1 + 2·reg·E)·W[:, t], φ_k = (b/10)(b + k + 1)^−0.9.
    b = max(1, round(config.max_steps / 25))
    phi = b / 10 * (b + k + 1) ** -0.9
    energy_t = -(x @ w)[t]
    return ce_gradient(w, x, t) - config.lambda_energy * phi * (1 + 2 * config.energy_reg * energy_t) * w[:, t]


def conformal_gradient(w, x, quantile, config):
    # size = max(0, Σ_y σ(u_y) − κ), u_y = (q̂ − 1 + p_y)/T; ∇p_y = p_y·(W[:, y] − W p) for linear logits.
    p = softmax(x @ w)
    sig = 1 / (1 + np.exp(-(quantile - 1 + p) / config.conformal_temperature))
    if sig.sum() - config.conformal_kappa <= 0:
        return np.zeros_like(x)
    grad_p = p[None, :] * (w - (w @ p)[:, None])  # (D, K): column y is ∇p_y
    return config.lambda_conformal * grad_p @ (sig * (1 - sig)) / config.conformal_temperature


def assert_known_steps(result, expected, threshold):
    steps, margins = zip(*expected)
    assert None not in steps, "the replay must converge for the known answer to be a step count"
    assert min(margins) > 2e-5  # p crosses τ clearly, not within float32 rounding
    assert np.asarray(result.steps).tolist() == list(steps)
    assert min(steps) > 1
    assert bool(jnp.all(result.converged)) and bool(jnp.all(result.p_target >= threshold))


@pytest.mark.parametrize("w, target", [(np.asarray(W), 1),
                                       (np.array([[1.0, -1.0, 0.5], [2.0, 0.5, -1.0]]), 2)])
def test_generic_search_takes_exactly_the_steps_of_the_gradient_recursion(linear, w, target):
    t = jnp.full(len(FAR), target, jnp.int32)
    res = search_counterfactuals_jit(linear, {"w": jnp.asarray(w, jnp.float32)}, FAR, t, jax.random.key(0), SLOW)
    expected = [replay(x, lambda z: softmax(z @ w)[target], lambda z, k: ce_gradient(w, z, target), config=SLOW)
                for x in FAR]
    assert_known_steps(res, expected, SLOW.threshold)
    assert min(res.steps) > 30


def test_ecco_energy_term_lengthens_every_step_by_the_known_amount(linear):
    w, cfg = np.asarray(W, np.float64), SLOW.replace(generator="ecco", lambda_energy=5.0)
    t = jnp.ones(len(FAR), jnp.int32)
    res = search_counterfactuals_jit(linear, PARAMS, FAR, t, jax.random.key(0), cfg)
    expected = [replay(x, lambda z: softmax(z @ w)[1], lambda z, k: ecco_gradient(w, z, 1, k, cfg), config=cfg)
                for x in FAR]
    assert_known_steps(res, expected, cfg.threshold)
    # The energy term pulls along W[:, 1], which has a positive component along W[:, 1] − W[:, 0]: fewer steps.
    generic = search_counterfactuals_jit(linear, PARAMS, FAR, t, jax.random.key(0), SLOW)
    assert bool(jnp.all(res.steps < generic.steps))


def test_eccco_conformal_term_gives_the_known_step_count(linear):
    w, quantile = np.asarray(W, np.float64), 0.8
    cfg = SLOW.replace(generator="eccco", lambda_energy=1.0)
    t = jnp.ones(len(FAR), jnp.int32)
    res = search_counterfactuals_jit(linear, PARAMS, FAR, t, jax.random.key(0), cfg,
                                     aux={"conformal_quantile": jnp.float32(quantile)})
    expected = [replay(x, lambda z: softmax(z @ w)[1],
                       lambda z, k: ecco_gradient(w, z, 1, k, cfg) + conformal_gradient(w, z, quantile, cfg),
                       config=cfg) for x in FAR]
    assert_known_steps(res, expected, cfg.threshold)
    ecco = search_counterfactuals_jit(linear, PARAMS, FAR, t, jax.random.key(0), cfg.replace(generator="ecco"))
    assert np.asarray(res.steps).tolist() != np.asarray(ecco.steps).tolist()  # the conformal term took part


# A VAE whose decoder is exactly x = A z + c and whose encoder mean is exactly A⁻¹(x − c): each ReLU pair
# relu(u) − relu(−u) = u passes one coordinate through. REVISE then searches z with ∇_z = Aᵀ ∇_x CE(A z + c).
VAE_A = np.array([[2.0, 0.5], [-0.5, 1.0]])
VAE_C = np.array([0.1, -0.2])
REVISE = SLOW.replace(generator="revise", vae_hidden=4, vae_latent=2)


def linear_vae_params(a, c):
    b = np.linalg.inv(a)
    pair = np.array([[1, -1, 0, 0], [0, 0, 1, -1]], np.float32)
    through = lambda m: np.stack([m[:, 0], -m[:, 0], m[:, 1], -m[:, 1]]).astype(np.float32)  # (4, 2): h → m z
    params = {"encoder_hidden": {"kernel": pair, "bias": np.zeros(4, np.float32)},
              "encoder_mean": {"kernel": through(b), "bias": (-b @ c).astype(np.float32)},
              "encoder_logvar": {"kernel": np.zeros((4, 2), np.float32), "bias": np.zeros(2, np.float32)},
              "decoder_hidden": {"kernel": pair, "bias": np.zeros(4, np.float32)},
              "decoder_out": {"kernel": through(a), "bias": c.astype(np.float32)}}
    return {"params": jax.tree.map(jnp.asarray, params)}


def test_revise_with_a_linear_vae_takes_the_known_steps_in_latent_space(linear):
    w = np.asarray(W, np.float64)
    aux = {"vae_params": linear_vae_params(VAE_A, VAE_C)}
    res = search_counterfactuals_jit(linear, PARAMS, FAR, jnp.ones(len(FAR), jnp.int32), jax.random.key(0), REVISE,
                                     aux=aux)
    decode = lambda z: VAE_A @ z + VAE_C
    expected = [replay(np.linalg.solve(VAE_A, x - VAE_C), lambda z: softmax(decode(z) @ w)[1],
                       lambda z, k: VAE_A.T @ ce_gradient(w, decode(z), 1), config=REVISE) for x in FAR]
    assert_known_steps(res, expected, REVISE.threshold)
    assert min(res.steps) > 30


def test_revise_with_an_immutable_feature_follows_the_gradient_at_the_feasible_point(linear):
    # x0 immutable: the counterfactual is (x0, (A z + c)_1), so the loss there has ∇_z = A[1, :]ᵀ·∂CE/∂x1. Taking
    # the loss at the raw decoded point instead lets (A z + c)_0 drift to the target and saturate p there, so the
    # gradient vanishes while p at the counterfactual stays below τ.
    w = np.asarray(W, np.float64)
    c = cons.make_constraints(2, immutable=[0], lower=np.array([-50.0, -50.0]), upper=np.array([50.0, 50.0]))
    aux = {"vae_params": linear_vae_params(VAE_A, VAE_C)}
    cfg = REVISE.replace(threshold=0.85)
    res = search_counterfactuals_jit(linear, PARAMS, FAR, jnp.ones(len(FAR), jnp.int32), jax.random.key(0), cfg,
                                     c, aux)
    np.testing.assert_array_equal(res.x_cf[:, 0], FAR[:, 0])  # holds today: the immutable is exact
    mask = np.array([0.0, 1.0])
    feasible = lambda z, x: np.where(mask > 0, VAE_A @ z + VAE_C, x)
    expected = [replay(np.linalg.solve(VAE_A, x - VAE_C), lambda z, x=x: softmax(feasible(z, x) @ w)[1],
                       lambda z, k, x=x: VAE_A.T @ (mask * ce_gradient(w, feasible(z, x), 1)), config=cfg)
                for x in FAR]
    # The float32 search starts from the VAE's encoding, the replay from an exact float64 solve: over ~200 steps a
    # crossing of τ by less than 1e-4 may land one step later or earlier, so the step counts agree to ±1.
    steps = np.array([e[0] for e in expected])
    assert np.all(np.abs(np.asarray(res.steps) - steps) <= 1) and min(steps) > 100
    assert bool(jnp.all(res.converged)) and bool(jnp.all(res.p_target >= cfg.threshold))


def test_a_new_generator_is_a_few_lines(linear):
    @register_generator("l2_wachter")
    def l2_loss(logits, x_cf, x, target, step, config, aux):
        return -jax.nn.log_softmax(logits)[target] + config.lambda_cost * jnp.sum((x_cf - x) ** 2)

    try:
        res = search_counterfactuals(linear, PARAMS, jnp.array([[1.0, 1.0]]), jnp.array([1]), jax.random.key(0),
                                     GENERIC.replace(generator="l2_wachter"))
        assert bool(res.converged[0])
    finally:
        GENERATORS.pop("l2_wachter")


def test_the_search_starts_at_the_factual_and_draws_no_randomness(linear):
    # Column 0 immutable, column 1 free and unbounded, column 2 boxed to x ± 0.1: path[0] is the initial point.
    c = cons.make_constraints(3, immutable=[0], lower=np.array([-np.inf, -np.inf, 0.9]),
                              upper=np.array([np.inf, np.inf, 1.1]))
    x = np.tile(np.array([[1.0, 1.0, 1.0]], np.float32), (8, 1))
    model = {"w": jnp.array([[1.0, -1.0], [2.0, 0.5], [0.0, 0.0]])}
    target = jnp.ones(8, jnp.int32)

    def run(key):
        return search_counterfactuals_jit(linear, model, x, target, key, GENERIC.replace(max_steps=5), c,
                                          return_path=True)

    (a, path_a), (b, path_b) = run(jax.random.key(0)), run(jax.random.key(1))
    np.testing.assert_array_equal(path_a[0], x)
    chex.assert_trees_all_equal((a, path_a), (b, path_b))  # the key changes nothing


# --- constraints, exactly --------------------------------------------------------------------------------
# A profile fixes everything static under jit (generator, loop, one-hot mode, width and group-index shape), so the
# property test compiles once per profile; hypothesis varies all the rest: which columns form the groups,
# mutabilities, bounds, factuals, model weights and targets.

LAYOUTS = {"plain": (4, ()), "one_group": (6, (3,)), "two_groups": (9, (3, 3))}  # width, group sizes
PROFILES = [  # generator, loop, categorical, layout; REVISE shares one width, so one VAE is trained
    ("generic", "while", "straight_through", "plain"),
    ("generic", "scan", "snap_state", "two_groups"),
    ("ecco", "scan", "straight_through", "one_group"),
    ("eccco", "while", "snap_state", "one_group"),
    ("revise", "scan", "straight_through", "two_groups"),
    ("revise", "while", "snap_state", "two_groups"),
]
N_FACTUALS, N_CLASSES, MODEL_SEEDS = 16, 3, 2
FREE, IMMUTABLE, INCREASE, DECREASE = cons.FREE, cons.IMMUTABLE, cons.INCREASE, cons.DECREASE


@pytest.fixture(scope="module")
def property_models():
    """Per width: the jitted apply_fn of an MLP, MODEL_SEEDS params with conformal quantiles, and a VAE if needed."""
    out = {}
    for layout, (width, _) in LAYOUTS.items():
        rng = np.random.default_rng(width)
        models = [make_model("mlp", width, N_CLASSES, jax.random.key(s)) for s in range(MODEL_SEEDS)]
        quantiles = vae = None
        if any(p[0] == "eccco" and p[-1] == layout for p in PROFILES):
            x_cal = jnp.asarray(rng.normal(size=(64, width)), jnp.float32)
            y_cal = jnp.asarray(rng.integers(0, N_CLASSES, 64), jnp.int32)
            quantiles = [calibrate_conformal(apply_fn, params, x_cal, y_cal, alpha=0.1) for apply_fn, params in models]
        if any(p[0] == "revise" and p[-1] == layout for p in PROFILES):
            vae = train_vae(rng.uniform(-2, 2, size=(128, width)), jax.random.key(width), epochs=2, batch_size=64)
        out[width] = (models[0][0], [params for _, params in models], quantiles, vae)
    return Quiet(out)


class Quiet(dict):
    """A dict that hypothesis prints as one word when it reports a failing example."""

    def __repr__(self):
        return "<property models>"


@st.composite
def constrained_problems(draw):
    profile = draw(st.integers(0, len(PROFILES) - 1))
    width, sizes = LAYOUTS[PROFILES[profile][-1]]
    if len(sizes) == 2:
        sizes = (3, draw(st.sampled_from([2, 3])))  # the index stays (2, 3): the shorter group is padded
    order = draw(st.permutations(range(width)))  # groups need not be contiguous
    groups, used = [], 0
    for size in sizes:
        groups.append(sorted(order[used:used + size]))
        used += size
    muts = np.array(draw(st.lists(st.sampled_from([FREE, IMMUTABLE, INCREASE, DECREASE]),
                                  min_size=width, max_size=width)))
    for g in groups:
        muts[g] = draw(st.sampled_from([FREE, IMMUTABLE]))
    lo = np.array(draw(st.lists(st.floats(-3, 0), min_size=width, max_size=width)), np.float32)
    hi = lo + np.array(draw(st.lists(st.floats(0, 3), min_size=width, max_size=width)), np.float32)
    # XLA on CPU flushes subnormal floats to zero, so a bound of −1.7e-44 is enforced as −0.0: keep bounds normal.
    lo, hi = (np.where(np.abs(b) < np.finfo(np.float32).tiny, 0.0, b).astype(np.float32) for b in (lo, hi))
    unbounded = np.array(draw(st.lists(st.sampled_from(["none", "lower", "upper"]), min_size=width,
                                       max_size=width)))
    lo[unbounded == "lower"], hi[unbounded == "upper"] = -np.inf, np.inf
    for g in groups:
        lo[g], hi[g] = 0.0, 1.0  # a one-hot category lives in [0, 1]
    return profile, muts, lo, hi, groups, draw(st.integers(0, 2 ** 16))


def draw_factuals(rng, lo, hi, groups):
    """Returns (N_FACTUALS, D) factuals: some outside the bounds, and groups that are one-hot or are not."""
    finite_lo, finite_hi = np.where(np.isfinite(lo), lo, -3.0), np.where(np.isfinite(hi), hi, 3.0)
    x = rng.uniform(finite_lo - 0.5, finite_hi + 0.5, size=(N_FACTUALS, len(lo)))
    for g in groups:
        for row in range(N_FACTUALS):
            kind = rng.integers(4)
            if kind == 0:
                x[row, g] = np.eye(len(g))[rng.integers(len(g))]   # a valid category
            elif kind == 1:
                x[row, g] = 0.0                                    # no category at all
            elif kind == 2:
                x[row, g] = rng.uniform(0, 1, len(g))              # fractional
            else:
                x[row, g] = rng.uniform(-0.5, 1.7, len(g))         # outside [0, 1]
    return x.astype(np.float32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(constrained_problems())
def test_random_schemas_never_violate_constraints(property_models, problem):
    profile, muts, lo, hi, groups, seed = problem
    generator, loop, categorical, _ = PROFILES[profile]
    width = len(muts)
    c = cons.make_constraints(width, immutable=np.flatnonzero(muts == IMMUTABLE),
                              increase=np.flatnonzero(muts == INCREASE), decrease=np.flatnonzero(muts == DECREASE),
                              lower=lo, upper=hi, groups=groups)
    rng = np.random.default_rng(seed)
    x = draw_factuals(rng, lo, hi, groups)
    apply_fn, param_sets, quantiles, vae = property_models[width]
    params = param_sets[seed % MODEL_SEEDS]
    aux = ({"conformal_quantile": quantiles[seed % MODEL_SEEDS]} if generator == "eccco" else
           {"vae_params": vae} if generator == "revise" else None)
    target = jnp.asarray(rng.integers(0, N_CLASSES, N_FACTUALS), jnp.int32)
    cfg = SearchConfig(generator=generator, loop=loop, categorical=categorical, step_size=1.0, max_steps=8,
                       threshold=0.99, lambda_cost=0.0)
    res = search_counterfactuals_jit(apply_fn, params, jnp.asarray(x), target, jax.random.key(seed), cfg, c, aux)
    x_cf = np.asarray(res.x_cf)
    assert np.isfinite(x_cf).all()
    # The constraints, checked here in numpy rather than by cons.violations, bit for bit.
    imm = muts == IMMUTABLE
    np.testing.assert_array_equal(x_cf[:, imm], x[:, imm])  # immutable groups too, one-hot or not
    assert (x_cf[:, muts == INCREASE] >= x[:, muts == INCREASE]).all()
    assert (x_cf[:, muts == DECREASE] <= x[:, muts == DECREASE]).all()
    assert (x_cf >= np.minimum(lo, x)).all() and (x_cf <= np.maximum(hi, x)).all()  # the factual is in bounds
    for g in groups:
        if muts[g[0]] == FREE:  # whatever the factual held, the counterfactual is a category
            block = x_cf[:, g]
            assert np.isin(block, [0.0, 1.0]).all() and (block.sum(1) == 1.0).all(), block
    assert (np.abs(np.asarray(res.x_ae) - x).max(-1) <= cfg.epsilon).all()
    logits = np.asarray(jitted_apply(apply_fn)(params, res.x_cf), np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True))[np.arange(N_FACTUALS), np.asarray(target)]
    np.testing.assert_allclose(np.asarray(res.p_target), p, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(res.converged), np.asarray(res.p_target) >= cfg.threshold)
    assert int(res.steps.max()) <= cfg.max_steps


@functools.lru_cache(maxsize=None)
def jitted_apply(apply_fn):
    return jax.jit(apply_fn)


def test_violations_never_count_the_factual_itself():
    # The factual is always feasible for bounds (documented); it must be for an immutable group as well, since the
    # search may not change it: its only admissible counterfactual value is the factual's own, one-hot or not.
    c = cons.make_constraints(5, immutable=[0, 1, 2], groups=[[0, 1, 2]], lower=np.array([0, 0, 0, -1, -1.0]),
                              upper=np.array([1, 1, 1, 1, 1.0]))
    x = jnp.array([[0.0, 0.0, 0.0, 5.0, 0.0], [0.2, 0.3, 0.5, 0.0, -3.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    counts = cons.violations(x, x, c)
    assert counts["out_of_bounds"].tolist() == [0, 0, 0]  # holds: outside-bounds factuals are feasible
    assert counts["total"].tolist() == [0, 0, 0]


def test_projection_and_snap_known_values():
    gidx = jnp.array([[0, 1, 2]])
    np.testing.assert_allclose(cons.snap_groups(jnp.array([0.55, 0.45, 0.0, 7.0]), gidx), [1.0, 0.0, 0.0, 7.0])
    padded = jnp.array([[0, 1, -1], [2, 3, 4]])  # groups of different sizes share one padded array
    q = cons.snap_groups(jnp.array([0.2, 0.3, 0.1, 0.7, 0.6, 5.0]), padded)
    np.testing.assert_array_equal(q, [0.0, 1.0, 0.0, 1.0, 0.0, 5.0])
    # One-hot groups are relaxed to their box during the search: the projection only clips (immutables = x).
    c = cons.make_constraints(4, immutable=[3], groups=[[0, 1, 2]], lower=np.array([0, 0, 0, -1.0]),
                              upper=np.array([1, 1, 1, 1.0]))
    x = jnp.array([1.0, 0.0, 0.0, 0.5])
    np.testing.assert_array_equal(cons.project(jnp.array([1.5, 0.25, -0.2, 0.8]), x, c), [1.0, 0.25, 0.0, 0.5])


# --- compile once, clear errors ------------------------------------------------------------------------

def test_search_traces_once_per_shape(linear, caplog):
    traced = jax.jit(chex.assert_max_traces(search_counterfactuals, n=1), static_argnames=("apply_fn", "config"))
    x = jnp.array([[1.0, 1.0], [2.0, 2.0]])
    for seed in range(3):
        traced(linear, PARAMS, x + seed, jnp.array([1, 1]), jax.random.key(seed), GENERIC)
    xs = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
    # JAX's own compile log counts the programs: 3 chunks (the last one padded) and 2 calls make one compile.
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        explain(linear, PARAMS, xs, key=jax.random.key(0), config=GENERIC.replace(max_steps=7), chunk_size=4)
        explain(linear, PARAMS, xs + 1, key=jax.random.key(1), config=GENERIC.replace(max_steps=7), chunk_size=4)
    compiles = [r for r in caplog.records if "Compiling jit(search_counterfactuals)" in r.getMessage()]
    assert len(compiles) == 1


def test_bad_input_raises_clear_errors(linear):
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
        cons.make_constraints(6, groups=[[0, 1]], lower=np.full(6, 0.5, np.float32))


def test_search_path_starts_at_the_factual_and_ends_at_the_counterfactual(linear):
    x = jnp.array([[1.0, 1.0], [0.1, 0.1]])
    res, path = search_counterfactuals(linear, PARAMS, x, jnp.array([1, 1]), jax.random.key(0),
                                       GENERIC.replace(max_steps=25), return_path=True)
    chex.assert_shape(path, (26, 2, 2))
    np.testing.assert_array_equal(path[0], x)
    np.testing.assert_array_equal(path[-1], res.x_cf)
    plain = search_counterfactuals(linear, PARAMS, x, jnp.array([1, 1]), jax.random.key(0),
                                   GENERIC.replace(max_steps=25))
    chex.assert_trees_all_close(res, plain, atol=1e-6)


# --- one-hot search modes --------------------------------------------------------------------------------

def _categorical_problem():
    # Columns: x0 (continuous), then one-hot group {A, B, C}. Class-1 logit minus class-0 logit is
    # 0.1·x0 − 1.5·A + 2·B + 2·C: from category A with x0 = 0 (p₁ ≈ 0.18), any real category reaches τ = 0.9
    # only once x0 ≥ 1.97, while the relaxed point with B = C = 1 is already at p₁ ≈ 0.98, where the
    # gradient is small: SGD steps of 10 move x0 by about 0.8, then 0.1 (at a real category) or 0.017 (relaxed).
    w = jnp.array([[0.0, 0.1], [0.0, -1.5], [0.0, 2.0], [0.0, 2.0]])
    c = cons.make_constraints(4, groups=[[1, 2, 3]], lower=np.array([-50.0, 0, 0, 0]),
                              upper=np.array([50.0, 1, 1, 1]))
    x = jnp.array([[0.0, 1.0, 0.0, 0.0]] * 4)
    return w, c, x


def test_straight_through_reaches_tau_with_real_categories_where_the_relaxed_search_returns_none(linear):
    w, c, x = _categorical_problem()
    base = SearchConfig(generator="generic", lambda_cost=0.0, threshold=0.9, max_steps=20, step_size=10.0,
                        units="absolute", step_rule="gradient")
    st, relaxed = (search_counterfactuals(linear, {"w": w}, x, jnp.ones(4, jnp.int32), jax.random.key(0),
                                          base.replace(categorical=mode), c)
                   for mode in ("straight_through", "relaxed"))
    assert bool(jnp.all(st.converged)) and bool(jnp.all(st.p_target >= 0.9))
    assert int(jnp.sum(cons.violations(st.x_cf, x, c)["invalid_onehot"])) == 0  # exact one-hot rows
    np.testing.assert_array_equal(np.sort(np.asarray(st.x_cf[:, 1:]), -1), np.tile([0.0, 0.0, 1.0], (4, 1)))
    assert float(st.x_cf[0, 0]) >= 1.97 - 1e-4  # the continuous feature did the rest of the work
    assert 1 < int(st.steps[0]) < 20
    # Reference parity converges on the relaxed point, which is no real category.
    assert bool(jnp.all(relaxed.converged))
    assert int(jnp.sum(cons.violations(relaxed.x_cf, x, c)["invalid_onehot"])) == 4


def test_snap_state_flips_a_category_only_when_one_step_carries_it_past_the_others(linear):
    # Columns: x0 (no weight), one-hot {A, B}; logit₁ − logit₀ = B − A. From A the cross-entropy gradient toward
    # class 1 is (1 − p)·(+1, −1) on (A, B) with 1 − p = σ(1) ≈ 0.731: one SGD step of size η puts B past A
    # iff η · 2 · 0.731 > 1, i.e. η > 0.684 (the reference's test-time search, where the state is re-snapped).
    w = jnp.array([[0.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
    c = cons.make_constraints(3, groups=[[1, 2]], lower=np.array([-5.0, 0, 0]), upper=np.array([5.0, 1, 1]))
    x = jnp.array([[0.0, 1.0, 0.0]] * 2)
    base = SearchConfig(generator="generic", lambda_cost=0.0, threshold=0.6, max_steps=10, units="absolute",
                        step_rule="gradient", categorical="snap_state")
    run = lambda cfg: search_counterfactuals(linear, {"w": w}, x, jnp.ones(2, jnp.int32), jax.random.key(0),
                                             cfg, c, return_path=True)
    stuck, path = run(base.replace(step_size=0.6))
    onehot_rows = np.asarray(path[..., 1:]).reshape(-1, 2)
    assert set(map(tuple, onehot_rows)) == {(1.0, 0.0)}  # every iterate is the factual's category, exactly
    assert not bool(jnp.any(stuck.converged)) and int(stuck.steps[0]) == 10
    flipped, path = run(base.replace(step_size=0.7))
    np.testing.assert_array_equal(np.asarray(flipped.x_cf), np.tile([0.0, 0.0, 1.0], (2, 1)))
    assert bool(jnp.all(flipped.converged)) and int(flipped.steps[0]) == 1
    # The relaxed search moves A and B gradually at the smaller step and reaches τ with a fractional category.
    relaxed = search_counterfactuals(linear, {"w": w}, x, jnp.ones(2, jnp.int32), jax.random.key(0),
                                     base.replace(step_size=0.6, categorical="relaxed"), c)
    assert bool(jnp.all(relaxed.converged)) and 0 < float(relaxed.x_cf[0, 2]) < 1


def test_max_steps_convergence_walks_on_past_tau_with_clipped_steps_and_counts_the_steps_to_reach_it(linear):
    # Normalised steps on a linear model: steps of η along Δw/‖Δw‖ until p >= τ, then Δ = −η·g/max(‖g‖, 1) with
    # g = −(1 − p)·Δw, the CE gradient (‖g‖ <= 2.5·0.1 past τ = 0.9, so those are plain gradient steps).
    x = jnp.array([[0.1, 0.1], [1.0, 1.0], [3.0, 3.0]])
    target = jnp.ones(3, jnp.int32)
    walk = GENERIC.replace(step_rule="normalized", max_steps=25)
    stop = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0), walk)
    on = search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0), walk.replace(convergence="max_steps"))
    dw = np.asarray(W[:, 1] - W[:, 0], np.float64)
    expected = []
    for row in np.asarray(x, np.float64):
        reached = False
        for _ in range(25):
            p = 1 / (1 + np.exp(-row @ dw))
            reached |= p >= 0.9
            g = -(1 - p) * dw
            row = row - 0.1 * g / max(np.linalg.norm(g), 1.0 if reached else 1e-12)
        expected.append(row)
    np.testing.assert_allclose(on.x_cf, np.array(expected), atol=1e-5)
    assert bool(stop.converged[0]) and not bool(stop.converged[2])  # row 2 is too far for 25 steps
    np.testing.assert_array_equal(on.steps, stop.steps)  # steps to τ, the same under either rule
    np.testing.assert_array_equal(on.converged, on.p_target >= 0.9)
    assert float(on.p_target[0]) > float(stop.p_target[0])  # it went on past τ
    # The scan loop (used for paths) agrees.
    chex.assert_trees_all_close(on, search_counterfactuals(linear, PARAMS, x, target, jax.random.key(0),
                                                           walk.replace(convergence="max_steps", loop="scan")),
                                atol=1e-6)
    with pytest.raises(ValueError, match="convergence"):
        SearchConfig(convergence="gradient")


def test_max_steps_keeps_the_last_iterate_at_or_above_tau_when_the_walk_drifts_below_it():
    # logits (2·x0, 1.5·x0): the energy term pulls x0 up while p(1 | x) = σ(−x0/2) falls, so a walk that starts
    # mature at x0 = −3 leaves τ = 0.75 at x0 = −2 ln 3 ≈ −2.197; its last mature iterate is x0 = −3 + 8·0.1.
    # λ_energy = 1000 keeps the energy gradient, 1.5·λ_energy·φ_k >= 6.8 even at k = T − 1, far above the CE's
    # (< 0.5), so every step is clipped to length η.
    def drifting(p, x):
        return jnp.stack([2.0 * x[:, 0], 1.5 * x[:, 0]], -1)

    config = SearchConfig(generator="ecco", lambda_cost=0.0, lambda_energy=1000.0, energy_reg=0.0, threshold=0.75,
                          max_steps=30, units="absolute", step_rule="normalized", convergence="max_steps")
    x = jnp.array([[-3.0, 0.0]])
    res = search_counterfactuals(drifting, None, x, jnp.array([1]), jax.random.key(0), config)
    np.testing.assert_allclose(res.x_cf, [[-2.2, 0.0]], atol=1e-5)
    assert bool(res.converged[0]) and int(res.steps[0]) == 0 and float(res.p_target[0]) >= 0.75
    np.testing.assert_allclose(res.p_target, jax.nn.sigmoid(-0.5 * res.x_cf[:, 0]), rtol=1e-6)


# --- presets ---------------------------------------------------------------------------------------------

def test_presets_are_named_in_one_place_and_keep_their_identities():
    # The trap of issue 24 stays closed: a bare SearchConfig(...) is training's search, so a TrainConfig given one
    # trains with the training default's step rule and convergence; explanations search the same way.
    default = SearchConfig()
    assert TRAINING_SEARCH == default and EXPLAIN_SEARCH == TRAINING_SEARCH
    assert (default.step_rule, default.convergence) == (TRAINING_SEARCH.step_rule, TRAINING_SEARCH.convergence)
    assert PRESETS == {"training": TRAINING_SEARCH, "explain": EXPLAIN_SEARCH, "reference": REFERENCE_SEARCH,
                       "walk_past_tau": WALK_PAST_TAU}
    assert SearchConfig.preset("explain", threshold=0.9) == EXPLAIN_SEARCH.replace(threshold=0.9)
    with pytest.raises(ValueError, match="unknown search preset 'paper'"):
        SearchConfig.preset("paper")
    # Paper parity is SearchConfig() changed in exactly PAPER_PARITY's fields, and each of those it names matters
    # except convergence, which the default shares.
    assert SearchConfig.reference() == REFERENCE_SEARCH == default.replace(**PAPER_PARITY)
    assert SearchConfig.reference(max_steps=50) == REFERENCE_SEARCH.replace(max_steps=50)
    differ = {f.name for f in dataclasses.fields(SearchConfig)
              if getattr(REFERENCE_SEARCH, f.name) != getattr(default, f.name)}
    assert differ == set(PAPER_PARITY) - {"convergence"} == {"categorical", "units", "step_rule"}
    assert (REFERENCE_SEARCH.categorical, REFERENCE_SEARCH.units, REFERENCE_SEARCH.step_rule) == (
        "relaxed", "absolute", "gradient")
    # The walk past τ differs from the default in its convergence and step rule only.
    assert WALK_PAST_TAU == default.replace(convergence="max_steps", step_rule="clipped")
