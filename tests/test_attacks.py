"""Known-answer tests for ctrain.attacks."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ctrain import attacks, metrics

D, N = 5, 24


@pytest.fixture(scope="module")
def problem(linear_apply):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    params = {"w": jax.random.normal(keys[0], (D, 3)), "b": jax.random.normal(keys[1], (3,))}
    x = jax.random.uniform(keys[2], (N, D), minval=-1.0, maxval=1.0)
    # The model's own predictions with every fourth label wrong: clean accuracy 0.75, not a trivial 1 or chance.
    y = jnp.argmax(linear_apply(params, x), axis=1)
    y = jnp.where(jnp.arange(N) % 4 == 0, (y + 1) % 3, y)
    return params, x, y


def mean_ce(apply_fn, params, x, y):
    return float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, x), y)))


def test_fgsm_on_a_binary_linear_model_moves_by_epsilon_along_the_sign_of_w(linear_apply):
    w = jnp.array([[0.5, -1.0], [-2.0, 1.0], [0.0, 3.0], [1.0, 1.5]])
    params = {"w": w, "b": jnp.array([0.2, -0.1])}
    x = jnp.array([[0.1, 0.2, -0.3, 0.4], [1.0, -1.0, 0.5, 0.0]])
    y = jnp.array([1, 0])
    x_adv = attacks.fgsm(linear_apply, params, x, y, epsilon=0.1)
    chex.assert_shape(x_adv, x.shape)
    # ∇_x CE = (w_other − w_y)·p_other, so the step is +ε·sign(w_other − w_y): away from the true class.
    direction = jnp.sign(w[:, 1] - w[:, 0])
    expected = x + 0.1 * jnp.stack([-direction, direction])
    chex.assert_trees_all_close(x_adv, expected, atol=1e-7)
    chex.assert_trees_all_close(jnp.abs(x_adv - x), jnp.full_like(x, 0.1), atol=1e-6)
    per_row_ce = optax.softmax_cross_entropy_with_integer_labels
    assert bool(jnp.all(per_row_ce(linear_apply(params, x_adv), y) > per_row_ce(linear_apply(params, x), y)))


def test_fgsm_clamps_to_bounds_when_given(linear_apply, problem):
    params, x, y = problem
    x_adv = attacks.fgsm(linear_apply, params, x, y, epsilon=0.5, lower=-1.0, upper=1.0)
    assert float(jnp.min(x_adv)) >= -1.0 and float(jnp.max(x_adv)) <= 1.0
    unclamped = attacks.fgsm(linear_apply, params, x, y, epsilon=0.5)
    assert float(jnp.max(jnp.abs(unclamped))) > 1.0  # so the clamp above did something


def test_pgd_never_leaves_the_epsilon_ball_and_raises_the_loss(linear_apply, problem):
    params, x, y = problem
    x_adv = attacks.pgd(linear_apply, params, x, y, jax.random.PRNGKey(1), epsilon=0.05, step_size=0.02,
                        n_steps=10)
    chex.assert_shape(x_adv, x.shape)
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.05 + 1e-6
    assert mean_ce(linear_apply, params, x_adv, y) > mean_ce(linear_apply, params, x, y)
    # For a binary linear model sign(∇_x CE) is constant, so enough sign-steps reach FGSM's corner of the ball.
    binary = {"w": params["w"][:, :2], "b": params["b"][:2]}
    y_binary = y % 2
    corner = attacks.pgd(linear_apply, binary, x, y_binary, jax.random.PRNGKey(1), epsilon=0.05, step_size=0.02,
                         n_steps=10)
    chex.assert_trees_all_close(corner, attacks.fgsm(linear_apply, binary, x, y_binary, epsilon=0.05), atol=1e-6)


def test_pgd_respects_bounds_and_is_the_identity_at_epsilon_zero(linear_apply, problem):
    params, x, y = problem
    key = jax.random.PRNGKey(2)
    x_adv = attacks.pgd(linear_apply, params, x, y, key, epsilon=0.3, n_steps=10, step_size=0.1,
                        lower=-0.9, upper=0.9)
    inside = jnp.clip(x, -0.9, 0.9)
    x_adv_inside = attacks.pgd(linear_apply, params, inside, y, key, epsilon=0.3, n_steps=10, step_size=0.1,
                               lower=-0.9, upper=0.9)
    for adv, origin in ((x_adv, x), (x_adv_inside, inside)):
        assert float(jnp.min(adv)) >= -0.9 and float(jnp.max(adv)) <= 0.9
    assert float(jnp.max(jnp.abs(x_adv_inside - inside))) <= 0.3 + 1e-6
    assert bool(jnp.any(jnp.abs(x_adv_inside) == 0.9))  # the bound was active somewhere
    at_zero = attacks.pgd(linear_apply, params, x, y, key, epsilon=0.0, n_steps=5)
    assert bool(jnp.all(at_zero == x))


def test_pgd_random_start_fills_the_ball_and_no_start_no_steps_is_the_identity(linear_apply, problem):
    params, x, y = problem
    start = attacks.pgd(linear_apply, params, x, y, jax.random.PRNGKey(5), epsilon=0.2, n_steps=0)
    offsets = jnp.abs(start - x)
    assert float(jnp.max(offsets)) <= 0.2 + 1e-6 and float(jnp.max(offsets)) > 0.19
    assert float(jnp.mean(offsets)) == pytest.approx(0.1, abs=0.03)  # |U(−ε, ε)| has mean ε/2
    still = attacks.pgd(linear_apply, params, x, y, jax.random.PRNGKey(5), epsilon=0.2, n_steps=0,
                        random_start=False)
    assert bool(jnp.all(still == x))


@pytest.mark.parametrize("attack", attacks.ATTACKS)
def test_robust_accuracy_scores_clean_inputs_at_epsilon_zero_even_next_to_the_boundary(linear_apply, attack):
    # One feature, logits (0, x): every point sits 1e-3 from the boundary, so any perturbation flips it.
    params = {"w": jnp.array([[0.0, 1.0]]), "b": jnp.zeros(2)}
    x = jnp.array([[1e-3], [-1e-3], [1e-3], [-1e-3], [1e-3]])
    y = (x[:, 0] > 0).astype(jnp.int32)
    result = attacks.robust_accuracy(linear_apply, params, x, y, jax.random.PRNGKey(0), epsilons=(0.0, 0.01),
                                     attack=attack, batch_size=2, n_steps=2, random_start=False)
    assert result["accuracy"] == [1.0, 0.0]
    assert result["f1"][0] == 1.0


def test_robust_accuracy_at_epsilon_zero_is_clean_accuracy_and_compiles_once(linear_apply, problem):
    params, x, y = problem
    traces = []

    def counting_apply(p, z):
        traces.append(z.shape)
        return linear_apply(p, z)

    clean = float(metrics.accuracy(linear_apply, params, x, y))
    for attack in attacks.ATTACKS:
        traces.clear()
        result = attacks.robust_accuracy(counting_apply, params, x, y, jax.random.PRNGKey(3),
                                         epsilons=(0.0, 0.05, 0.1, 0.5), attack=attack, batch_size=10, n_steps=3)
        calls_for_grid = len(traces)
        traces.clear()
        attacks.robust_accuracy(counting_apply, params, x, y, jax.random.PRNGKey(3), epsilons=(0.1,),
                                attack=attack, batch_size=N, n_steps=3)
        # 3 padded batches × 4 ε run through one trace, no more apply_fn calls than one batch at one ε.
        assert calls_for_grid == len(traces), attack
        assert result["epsilon"] == [0.0, 0.05, 0.1, 0.5]
        assert result["accuracy"][0] == clean == result["clean_accuracy"]
        assert all(type(a) is float for a in result["accuracy"] + result["f1"])
        assert result["accuracy"][-1] < clean
        assert result["n"] == N


def test_robust_accuracy_default_grid_and_bad_input(linear_apply, problem):
    params, x, y = problem
    result = attacks.robust_accuracy(linear_apply, params, x, y, jax.random.PRNGKey(4))
    np.testing.assert_allclose(result["epsilon"], np.linspace(0, 0.1, 10))
    assert result["accuracy"][0] == result["clean_accuracy"]
    with pytest.raises(ValueError, match="attack"):
        attacks.robust_accuracy(linear_apply, params, x, y, jax.random.PRNGKey(4), attack="cw")
    with pytest.raises(ValueError, match="non-negative"):
        attacks.robust_accuracy(linear_apply, params, x, y, jax.random.PRNGKey(4), epsilons=(0.1, -0.1))
    with pytest.raises(ValueError, match="non-negative"):
        attacks.fgsm(linear_apply, params, x, y, epsilon=-0.1)


# Binary logits (0, z) with z = w·x and w = (1, −2), ‖w‖₁ = 3. The worst L∞ perturbation of radius ε moves z by
# exactly 3ε towards the other class (every coordinate at ∓ε, the sign of w), so a correctly classified
# point flips iff |z| < 3ε. With |z| ∈ {0.03, 0.09, 0.3, 0.6} (one per class each) and 3ε ∈ {0.15, 0.45, 0.75},
# 4, 6 and 8 of the 8 points flip: robust accuracy 1, 1/2, 1/4, 0. No point lies within 0.06 of a flip.
MARGIN_Z = np.array([0.03, -0.03, 0.09, -0.09, 0.3, -0.3, 0.6, -0.6], np.float32)
MARGIN_X = np.stack([MARGIN_Z, np.zeros_like(MARGIN_Z)], axis=1)  # w·x = z
MARGIN_Y = (MARGIN_Z > 0).astype(np.int32)
MARGIN_PARAMS = {"w": jnp.array([[0.0, 1.0], [0.0, -2.0]]), "b": jnp.zeros(2)}
MARGIN_EPSILONS = (0.0, 0.05, 0.15, 0.25)
MARGIN_ACCURACY = [1.0, 4 / 8, 2 / 8, 0 / 8]


@pytest.mark.parametrize("attack, random_start", [("fgsm", False), ("pgd", False), ("pgd", True)])
def test_attacks_flip_exactly_the_points_within_reach_of_a_linear_boundary(linear_apply, attack, random_start):
    # PGD needs n·α ≥ 2ε to reach the corner of the ball from any random start: 40·0.02 = 0.8 ≥ 0.5.
    result = attacks.robust_accuracy(linear_apply, MARGIN_PARAMS, MARGIN_X, MARGIN_Y, jax.random.PRNGKey(0),
                                     epsilons=MARGIN_EPSILONS, attack=attack, step_size=0.02, n_steps=40,
                                     random_start=random_start, batch_size=3)
    assert result["clean_accuracy"] == 1.0
    assert result["accuracy"] == MARGIN_ACCURACY
    # The attacked points themselves: the corner x − ε·sign(w)·(2y − 1) of the ball, on the wrong side.
    x_adv = (attacks.fgsm(linear_apply, MARGIN_PARAMS, MARGIN_X, MARGIN_Y, epsilon=0.15) if attack == "fgsm" else
             attacks.pgd(linear_apply, MARGIN_PARAMS, MARGIN_X, MARGIN_Y, jax.random.PRNGKey(1), epsilon=0.15,
                         step_size=0.02, n_steps=40, random_start=random_start))
    corner = MARGIN_X - 0.15 * np.sign([1.0, -2.0])[None, :] * (2 * MARGIN_Y - 1)[:, None]
    np.testing.assert_allclose(np.asarray(x_adv), corner, atol=1e-6)
    np.testing.assert_allclose(np.asarray(x_adv) @ np.array([1.0, -2.0]), MARGIN_Z - 0.45 * np.sign(MARGIN_Z),
                               atol=1e-6)
