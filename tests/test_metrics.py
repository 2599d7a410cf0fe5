"""Known-answer tests for ctrain.metrics."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctrain import constraints as cons
from ctrain import metrics
from ctrain.energy import energy


def tanh_mlp_apply(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def naive_ip(x_cf, samples):
    x_cf, samples = np.asarray(x_cf, np.float64), np.asarray(samples, np.float64)
    return np.abs(x_cf[:, None, :] - samples[None, :, :]).sum(-1).mean(1)


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


# --- MMD² -------------------------------------------------------------------------------------------

def test_mmd2_of_a_sample_against_itself_is_the_small_negative_bias_and_clamps_to_zero(naive_mmd2, rng):
    x = rng.normal(size=(40, 3)).astype(np.float32)
    value = float(metrics.mmd2_unbiased(x, x, length_scale=1.0))
    # With y = x the cross term includes the n diagonal ones, so the estimate is 2/n·(mean_offdiag − 1) < 0.
    assert -2.0 / 40 <= value < 0.0
    np.testing.assert_allclose(value, naive_mmd2(x, x, 1.0), atol=1e-6)
    assert float(metrics.mmd2_unbiased(x, x, length_scale=1.0, clamp=True)) == 0.0


def test_mmd2_grows_monotonically_with_a_mean_shift(rng):
    x = rng.normal(size=(200, 2)).astype(np.float32)
    y = rng.normal(size=(200, 2)).astype(np.float32)
    values = [float(metrics.mmd2_unbiased(x, y + shift, length_scale=1.0)) for shift in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert abs(values[0]) < 0.02
    assert all(a < b for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("chunk_size", [5, 8, 1024])
@pytest.mark.parametrize("length_scale", [0.5, 5.0])
def test_mmd2_matches_naive_numpy_including_chunks_that_do_not_divide_n(naive_mmd2, rng, chunk_size, length_scale):
    x = rng.normal(size=(37, 4)).astype(np.float32)
    y = (rng.normal(size=(23, 4)) + 0.3).astype(np.float32)
    value = metrics.mmd2_unbiased(x, y, length_scale=length_scale, chunk_size=chunk_size)
    chex.assert_shape(value, ())
    np.testing.assert_allclose(float(value), naive_mmd2(x, y, length_scale), rtol=1e-4, atol=1e-6)


def test_mmd2_is_shift_invariant_far_from_the_origin(rng):
    # The ‖a‖² + ‖b‖² − 2a·b expansion cancels catastrophically unless the data are centred first.
    x = rng.normal(size=(30, 5)).astype(np.float32)
    y = (rng.normal(size=(30, 5)) + 0.5).astype(np.float32)
    near = float(metrics.mmd2_unbiased(x, y, length_scale=1.0))
    far = float(metrics.mmd2_unbiased(x + 1000.0, y + 1000.0, length_scale=1.0))
    np.testing.assert_allclose(far, near, atol=1e-4)


def test_mmd2_rejects_bad_input():
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match="at least 2 rows"):
        metrics.mmd2_unbiased(x[:1], x)
    with pytest.raises(ValueError, match="features"):
        metrics.mmd2_unbiased(x, np.zeros((5, 4), np.float32))
    with_nan = x.copy()
    with_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.mmd2_unbiased(with_nan, x)
    with pytest.raises(ValueError, match="length_scale"):
        metrics.mmd2_unbiased(x, x, length_scale=0.0)


# Hand case for IP*: x = {(0,0), (3,4), (0,4)}, y = {(0,0), (3,0)}. Squared distances: within x 25, 16, 9;
# within y 9; across 0, 9, 25, 16, 16, 25. With k(d²) = exp(−d²/(2ℓ²)):
#   MMD² = (k25 + k16 + k9)/3 + k9 − 2·(1 + k9 + 2·k25 + 2·k16)/6 = k9 − (1 + k16 + k25)/3.
MMD_X = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]], np.float32)
MMD_Y = np.array([[0.0, 0.0], [3.0, 0.0]], np.float32)


def hand_mmd2(length_scale):
    k = lambda d2: math.exp(-d2 / (2 * length_scale ** 2))
    return k(9) - (1 + k(16) + k(25)) / 3


def test_mmd2_known_answer_in_one_dimension():
    # x = {0, 1}, y = {0, 2}: K_xx = e1, K_yy = e4, cross mean = (1 + e4 + 2·e1)/4, so MMD² = (e4 − 1)/2,
    # where e1 = exp(−1/(2ℓ²)) and e4 = exp(−4/(2ℓ²)).
    x, y = np.array([[0.0], [1.0]], np.float32), np.array([[0.0], [2.0]], np.float32)
    for length_scale in (1.0, 0.5, 5.0):
        expected = (math.exp(-4 / (2 * length_scale ** 2)) - 1) / 2
        np.testing.assert_allclose(float(metrics.mmd2_unbiased(x, y, length_scale=length_scale)), expected,
                                   rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(metrics.mmd2_unbiased(x, y, length_scale=length_scale, clamp=True)),
                                   max(expected, 0.0), atol=1e-7)


@pytest.mark.parametrize("length_scale", [5.0, 0.5, 2.0])
def test_mmd2_known_answer_in_two_dimensions(length_scale):
    value = metrics.mmd2_unbiased(MMD_X, MMD_Y, length_scale=length_scale, chunk_size=2)
    np.testing.assert_allclose(float(value), hand_mmd2(length_scale), rtol=1e-5, atol=1e-7)
    # Symmetric in its two samples.
    np.testing.assert_allclose(float(metrics.mmd2_unbiased(MMD_Y, MMD_X, length_scale=length_scale)),
                               hand_mmd2(length_scale), rtol=1e-5, atol=1e-7)


def test_masked_mmd2_known_answer_ignores_the_masked_rows():
    # The hand case with two decoy rows (one far away) interleaved: masked out, they must change nothing.
    x = np.array([[50.0, -50.0], [0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [0.0, 4.0]], np.float32)
    mask = np.array([False, True, True, False, True])
    for length_scale in (5.0, 2.0):
        value = metrics.mmd2_unbiased_masked(x, mask, MMD_Y, length_scale=length_scale)
        chex.assert_shape(value, ())
        np.testing.assert_allclose(float(value), hand_mmd2(length_scale), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="length_scale"):
        metrics.mmd2_unbiased_masked(x, mask, MMD_Y, length_scale=0.0)


def test_one_default_length_scale_the_reference_codes_across_the_api():
    from ctrain.evaluate import ProtocolConfig
    assert metrics.DEFAULT_LENGTH_SCALE == metrics.REFERENCE_CODE_LENGTH_SCALE == 5.0
    assert metrics.PAPER_TEXT_LENGTH_SCALE == 0.5
    assert ProtocolConfig().mmd_length_scale == metrics.DEFAULT_LENGTH_SCALE
    # The defaults in use, not only the constants: both estimators give the ℓ = 5 hand value when ℓ is omitted.
    np.testing.assert_allclose(float(metrics.mmd2_unbiased(MMD_X, MMD_Y)), hand_mmd2(5.0), rtol=1e-5)
    np.testing.assert_allclose(float(metrics.mmd2_unbiased_masked(MMD_X, np.ones(3, bool), MMD_Y)), hand_mmd2(5.0),
                               rtol=1e-5)


def test_median_heuristic_length_scale_on_hand_cases():
    # 1-D {0, 1, 3, 7}: distances 1, 3, 7, 2, 6, 4; six of them, so the median is (3 + 4) / 2.
    value = metrics.median_heuristic_length_scale(np.array([[0.0], [1.0], [3.0], [7.0]]))
    chex.assert_shape(value, ())
    assert float(value) == pytest.approx(3.5)
    # x and y are pooled: (0,0), (3,4) and (0,4) are 5, 4 and 3 apart, median 4.
    pooled = metrics.median_heuristic_length_scale(np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[0.0, 4.0]]))
    assert float(pooled) == pytest.approx(4.0)
    # A point is never paired with itself, but duplicates are distinct rows: 4 copies of a point and one other
    # give 6 zero distances out of 10, a median of 0 (no usable ℓ); 3 copies give 3 zeros and 3 of √2.
    assert float(metrics.median_heuristic_length_scale(np.array([[1.0, 1.0]] * 4 + [[2.0, 2.0]]))) == 0.0
    assert float(metrics.median_heuristic_length_scale(np.array([[1.0, 1.0]] * 3 + [[2.0, 2.0]]))) == pytest.approx(
        math.sqrt(2) / 2)
    # Far from the origin the distances stay exact (differences, no norm expansion).
    far = metrics.median_heuristic_length_scale(np.array([[1e4], [1e4 + 1.0], [1e4 + 3.0]], np.float32))
    assert float(far) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        metrics.median_heuristic_length_scale(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="features"):
        metrics.median_heuristic_length_scale(np.zeros((2, 3)), np.zeros((2, 4)))


# --- IP ---------------------------------------------------------------------------------------------

def test_ip_known_answer_on_hand_cases():
    # ℓ1 distances from (0,0) to (1,0), (0,2), (−1,−1): 1, 2, 2; from (1,1): 0+1, 1+1, 2+2.
    samples = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]], np.float32)
    value = metrics.implausibility(np.array([[0.0, 0.0], [1.0, 1.0]], np.float32), samples, chunk_size=1)
    chex.assert_shape(value, (2,))
    np.testing.assert_allclose(np.asarray(value), [(1 + 2 + 2) / 3, (1 + 2 + 4) / 3], rtol=1e-6)
    # 1-D, the query between samples: |0.5 − 0| + |0.5 − 1| + |0.5 − 3| over 3.
    one_d = metrics.implausibility(np.array([[0.5]], np.float32), np.array([[0.0], [1.0], [3.0]], np.float32))
    np.testing.assert_allclose(np.asarray(one_d), [(0.5 + 0.5 + 2.5) / 3], rtol=1e-6)


def test_ip_of_a_point_equal_to_every_target_sample_is_zero(rng):
    point = rng.normal(size=(1, 6)).astype(np.float32)
    samples = np.repeat(point, 50, axis=0)
    value = metrics.implausibility(point, samples)
    chex.assert_shape(value, (1,))
    assert float(value[0]) == 0.0


@pytest.mark.parametrize("n, m, chunk_size", [(13, 29, 4), (13, 1, 1024), (64, 100, 64), (7, 2, 3)])
def test_ip_matches_naive_computation(rng, n, m, chunk_size):
    x_cf = rng.normal(size=(n, 5)).astype(np.float32)
    samples = (rng.normal(size=(m, 5)) * 2 + 1).astype(np.float32)
    samples[: m // 2, 0] = samples[0, 0]  # ties in a feature
    value = metrics.implausibility(x_cf, samples, chunk_size=chunk_size)
    chex.assert_shape(value, (n,))
    np.testing.assert_allclose(np.asarray(value), naive_ip(x_cf, samples), rtol=1e-5, atol=1e-5)


def test_ip_is_exact_for_queries_equal_to_samples_and_offset_data(rng):
    samples = (rng.normal(size=(20, 3)) + 500.0).astype(np.float32)
    x_cf = samples[:5]
    np.testing.assert_allclose(np.asarray(metrics.implausibility(x_cf, samples)), naive_ip(x_cf, samples),
                               rtol=1e-5)


def test_ip_rejects_empty_target_samples_and_nan():
    with pytest.raises(ValueError, match="empty"):
        metrics.implausibility(np.zeros((3, 2), np.float32), np.zeros((0, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        metrics.implausibility(np.array([[np.nan, 0.0]], np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="features"):
        metrics.implausibility(np.zeros((3, 2), np.float32), np.zeros((3, 4), np.float32))


# --- validity, cost, redundancy -----------------------------------------------------------------------

IDENTITY = {"w": jnp.eye(3), "b": jnp.zeros(3)}  # logits = x


def test_validity_and_strict_validity_on_hand_cases(linear_apply):
    x_cf = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.9], [0.0, 0.0, 5.0]])
    target = jnp.array([0, 1, 1])
    valid = metrics.validity(linear_apply, IDENTITY, x_cf, target)
    chex.assert_shape(valid, (3,))
    assert valid.tolist() == [True, True, False]
    # Row 1: p_1 = e / (1 + e + e^0.9) ≈ 0.45, valid by argmax but not at τ = 0.5.
    strict = metrics.strict_validity(linear_apply, IDENTITY, x_cf, target, threshold=0.5)
    assert strict.tolist() == [True, False, False]
    assert metrics.strict_validity(linear_apply, IDENTITY, x_cf, target, threshold=0.4).tolist() == [True, True, False]
    assert metrics.validity(linear_apply, IDENTITY, x_cf, 0).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="target must lie in"):
        metrics.validity(linear_apply, IDENTITY, x_cf, jnp.array([0, 1, 3]))
    with pytest.raises(ValueError, match="integer"):
        metrics.validity(linear_apply, IDENTITY, x_cf, jnp.array([0.0, 1.0, 1.0]))


def test_cost_redundancy_and_fraction_changed_on_hand_cases():
    x = jnp.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    x_cf = jnp.array([[1.0, -2.0, 0.0, 0.0], [1.0, 1.0 + 1e-7, 1.5, 1.0]])
    chex.assert_trees_all_close(metrics.cost(x_cf, x), jnp.array([3.0, 0.5 + 1e-7]), atol=1e-6)
    chex.assert_trees_all_close(metrics.redundancy(x_cf, x), jnp.array([0.5, 0.75]))
    chex.assert_trees_all_close(metrics.fraction_changed(x_cf, x), jnp.array([0.5, 0.25]))
    # tol = 0 is bit-exact: the 1e-7 change counts.
    chex.assert_trees_all_close(metrics.redundancy(x_cf, x, tol=0.0), jnp.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="shape"):
        metrics.cost(x_cf, x[:1])


# --- constraint violations ------------------------------------------------------------------------

CONSTRAINTS = cons.make_constraints(
    7, immutable=[0], increase=[1], decrease=[2],
    lower=np.array([-np.inf, -np.inf, -np.inf, 0.0, 0.0, 0.0, -1.0], np.float32),
    upper=np.array([np.inf, np.inf, np.inf, 1.0, 1.0, 1.0, 1.0], np.float32))
# A lone column cannot be a one-hot group through make_constraints; build the padded index directly.
CONSTRAINTS = CONSTRAINTS.replace(group_index=jnp.array([[3, 4, 5], [6, -1, -1]], jnp.int32))


def test_constraint_violations_are_zero_for_a_clean_case():
    x = jnp.array([[5.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]])
    x_cf = jnp.array([[5.0, 2.0, 0.5, 0.0, 1.0, 0.0, 1.0]])
    counts = cons.violations(x_cf, x, CONSTRAINTS)
    assert set(counts) == {"immutable_changed", "increase_violated", "decrease_violated", "out_of_bounds",
                           "invalid_onehot", "total"}
    for name, value in counts.items():
        chex.assert_shape(value, (1,))
        assert int(value[0]) == 0, name


def test_constraint_violations_count_hand_made_violations_exactly():
    x = jnp.array([[5.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]] * 3)
    x_cf = jnp.array([
        [5.0 + 1e-6, 0.5, 1.5, 1.0, 1.0, 0.0, 1.0],   # immutable moved a hair, both directions wrong, 2 hot
        [5.0, 1.0, 1.0, 0.5, 0.5, 0.0, 2.0],          # group not binary, feature 6 out of bounds and not 1
        [5.0, 1.0, 1.0, -0.5, 0.0, 0.0, 1.0],         # out of bounds and a group with no 1
    ])
    counts = cons.violations(x_cf, x, CONSTRAINTS)
    assert counts["immutable_changed"].tolist() == [1, 0, 0]
    assert counts["increase_violated"].tolist() == [1, 0, 0]
    assert counts["decrease_violated"].tolist() == [1, 0, 0]
    assert counts["out_of_bounds"].tolist() == [0, 1, 1]
    assert counts["invalid_onehot"].tolist() == [1, 2, 1]
    assert counts["total"].tolist() == [4, 3, 2]
    # With slack the hair-width change of the immutable feature passes.
    assert cons.violations(x_cf, x, CONSTRAINTS, tol=1e-4)["immutable_changed"].tolist() == [0, 0, 0]


def test_constraint_violations_without_groups_or_constraints():
    x = jnp.zeros((2, 3))
    x_cf = jnp.ones((2, 3))
    counts = cons.violations(x_cf, x, cons.unconstrained(3))
    assert all(v.tolist() == [0, 0] for v in counts.values())
    with pytest.raises(ValueError, match="constraints describe 2 features but x has 3"):
        cons.violations(x_cf, x, cons.unconstrained(2))
    with pytest.raises(ValueError, match="same shape"):
        cons.violations(x_cf[:1], x, cons.unconstrained(3))


# --- energy, SGLD, unfaithfulness -------------------------------------------------------------------

LINEAR_2 = {"w": jnp.array([[1.0, -1.0], [2.0, 0.5]]), "b": jnp.array([0.1, -0.2])}


def test_energy_differential_on_a_hand_case(linear_apply):
    x_cf = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    samples = jnp.array([[1.0, 1.0], [3.0, 1.0]])
    diff = metrics.energy_differential(linear_apply, LINEAR_2, x_cf, jnp.array([0, 1]), samples)
    chex.assert_shape(diff, (2,))
    # logit_0: CFs 1.1, 2.1; samples 3.1, 5.1 (mean 4.1). logit_1: CF 0.3; samples -0.7, -2.7 (mean -1.7).
    chex.assert_trees_all_close(diff, jnp.array([-1.1 + 4.1, -0.3 - 1.7]), atol=1e-6)
    chex.assert_trees_all_close(energy(linear_apply, LINEAR_2, x_cf, 0), jnp.array([-1.1, -2.1]), atol=1e-6)


def test_sgld_returns_finite_samples_that_lower_the_energy_of_a_linear_model(linear_apply):
    key = jax.random.PRNGKey(0)
    init = jax.random.uniform(jax.random.PRNGKey(1), (64, 2), minval=-1.0, maxval=1.0)
    samples = metrics.sgld_sample(linear_apply, LINEAR_2, 1, key, init=init, n_steps=20)
    chex.assert_shape(samples, (64, 2))
    assert bool(jnp.all(jnp.isfinite(samples)))
    before = energy(linear_apply, LINEAR_2, init, 1)
    after = energy(linear_apply, LINEAR_2, samples, 1)
    # Each step lowers E by (φ/2)‖w_1‖² = 1.25 in expectation: 25 over 20 steps.
    np.testing.assert_allclose(float(jnp.mean(before - after)), 25.0, rtol=0.02)
    fresh = metrics.sgld_sample(linear_apply, LINEAR_2, jnp.zeros(8, jnp.int32), key, n_samples=8, n_features=2,
                                n_steps=5)
    chex.assert_shape(fresh, (8, 2))


def test_unfaithfulness_keeps_the_lowest_energy_samples_and_scores_each_cf_against_its_own_class(linear_apply):
    key = jax.random.PRNGKey(4)
    x_cf = jnp.array([[0.0, 0.0], [1.0, 1.0], [2.0, -1.0]])
    targets = jnp.array([0, 1, 1])
    init = jax.random.uniform(jax.random.PRNGKey(6), (6, 2), minval=-1.0, maxval=1.0)
    settings = dict(n_samples=6, n_steps=3, noise=0.0, init=init)  # noise-free chains are deterministic
    per_cf = metrics.unfaithfulness(linear_apply, LINEAR_2, x_cf, targets, key, **settings)
    chex.assert_shape(per_cf, (3,))
    for t in (0, 1):
        alone = metrics.unfaithfulness(linear_apply, LINEAR_2, x_cf, t, key, **settings)
        chex.assert_trees_all_close(jnp.where(targets == t, per_cf, 0.0), jnp.where(targets == t, alone, 0.0),
                                    rtol=1e-6)
    kept = metrics.unfaithfulness(linear_apply, LINEAR_2, x_cf, 1, key, n_keep=2, **settings)
    samples = metrics.sgld_sample(linear_apply, LINEAR_2, 1, key, init=init, n_steps=3, noise=0.0)
    lowest = samples[jnp.argsort(energy(linear_apply, LINEAR_2, samples, 1))[:2]]
    chex.assert_trees_all_close(kept, metrics.implausibility(x_cf, lowest), rtol=1e-5)
    noisy = metrics.unfaithfulness(linear_apply, LINEAR_2, x_cf, targets, key, n_samples=4, n_steps=5)
    assert bool(jnp.all(jnp.isfinite(noisy)))
    with pytest.raises(ValueError, match="n_keep"):
        metrics.unfaithfulness(linear_apply, LINEAR_2, x_cf, 1, key, n_samples=4, n_keep=5)


# --- model metrics ------------------------------------------------------------------------------------

def test_accuracy_and_binary_f1_on_hand_cases(linear_apply):
    # Identity logits in 2-D: the prediction is the larger coordinate.
    params = {"w": jnp.eye(2), "b": jnp.zeros(2)}
    x = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # predicts 0 1 1 0 1
    y = jnp.array([0, 1, 0, 1, 1])
    assert float(metrics.accuracy(linear_apply, params, x, y)) == pytest.approx(0.6)
    # class 1: TP 2, FP 1, FN 1 → F1 = 4 / 6.
    assert float(metrics.f1_score(linear_apply, params, x, y)) == pytest.approx(2 / 3)


def test_macro_f1_skips_absent_classes_and_binary_without_positives_is_zero():
    y_true = jnp.array([0, 0, 1, 1, 3])
    y_pred = jnp.array([0, 1, 1, 1, 0])
    # class 0: TP1 FP1 FN1 → 0.5; class 1: TP2 FP1 FN0 → 0.8; class 3: TP0 FN1 → 0; class 2 absent.
    f1 = metrics.f1_from_predictions(y_pred, y_true, num_classes=4)
    assert float(f1) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert float(metrics.f1_from_predictions(jnp.zeros(3, int), jnp.zeros(3, int), num_classes=2)) == 0.0


# --- integrated gradients -------------------------------------------------------------------------------

def test_integrated_gradients_satisfy_completeness_for_a_smooth_model():
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    params = {"w1": jax.random.normal(keys[0], (4, 16)), "b1": jax.random.normal(keys[1], (16,)),
              "w2": jax.random.normal(keys[2], (16, 3)), "b2": jnp.zeros(3)}
    x = jax.random.normal(keys[3], (5, 4))
    baseline = jax.random.uniform(jax.random.PRNGKey(8), (4,), minval=-1.0, maxval=1.0)
    target = jnp.array([0, 1, 2, 0, 1])
    ig = metrics.integrated_gradients(tanh_mlp_apply, params, x, target, baseline, n_steps=100)
    chex.assert_shape(ig, (5, 4))
    gap = (jnp.take_along_axis(tanh_mlp_apply(params, x), target[:, None], 1)[:, 0]
           - tanh_mlp_apply(params, baseline[None])[0, target])
    chex.assert_trees_all_close(jnp.sum(ig, axis=1), gap, atol=2e-3 * float(jnp.max(jnp.abs(gap))) + 1e-4)


def test_integrated_gradients_of_a_linear_model_are_exact(linear_apply):
    x = jnp.array([[1.0, 2.0], [-1.0, 0.5]])
    baseline = jnp.array([0.5, -0.5])
    ig = metrics.integrated_gradients(linear_apply, LINEAR_2, x, 1, baseline, n_steps=1)
    chex.assert_trees_all_close(ig, (x - baseline) * LINEAR_2["w"][:, 1], atol=1e-6)


def test_protected_sensitivity_standardisations():
    ig = jnp.array([[1.0, -3.0, 2.0], [0.0, 0.0, 0.0]])
    mask = jnp.array([True, False, False])
    # range: |1| / (2 − (−3)) = 0.2; minmax over |g| = (1, 3, 2): (1 − 1) / 2 = 0; all-zero row → 0.
    chex.assert_trees_all_close(metrics.protected_sensitivity(ig, mask, standardise="range"), jnp.array([0.2, 0.0]))
    chex.assert_trees_all_close(metrics.protected_sensitivity(ig, mask, standardise="minmax"), jnp.array([0.0, 0.0]))
    chex.assert_trees_all_close(metrics.protected_sensitivity(ig, jnp.array([False, True, True]), standardise="minmax"),
                                jnp.array([0.75, 0.0]))
    two_d = jnp.array([[3.0, 1.0]])
    chex.assert_trees_all_close(metrics.protected_sensitivity(two_d, jnp.array([True, False])), jnp.array([1.5]))
    with pytest.raises(ValueError, match="no feature"):
        metrics.protected_sensitivity(ig, jnp.zeros(3, bool))


# --- aggregation ----------------------------------------------------------------------------------------

def test_summarise_means_over_valid_only_and_returns_none_without_valid_rows():
    per_cf = {"cost": jnp.array([1.0, 3.0, 100.0]), "ip": np.array([2.0, 4.0, np.nan])}
    summary = metrics.summarise(per_cf, valid=jnp.array([True, True, False]))
    assert summary == {"n": 3, "n_valid": 2, "validity": 2 / 3, "cost": 2.0, "ip": 3.0}
    assert all(type(v) in (int, float) for v in summary.values())
    empty = metrics.summarise(per_cf, valid=np.zeros(3, bool))
    assert empty["cost"] is None and empty["ip"] is None and empty["validity"] == 0.0
    with pytest.raises(ValueError, match="'ip'.*NaN"):
        metrics.summarise(per_cf)
    with pytest.raises(ValueError, match="same length"):
        metrics.summarise({"a": np.zeros(2), "b": np.zeros(3)})


def test_masked_mmd2_equals_mmd2_on_the_kept_rows(rng):
    x = rng.normal(size=(12, 3)).astype(np.float32)
    y = rng.normal(0.5, 1.0, size=(9, 3)).astype(np.float32)
    mask = np.zeros(12, bool)
    mask[[0, 3, 4, 7, 10]] = True
    masked = metrics.mmd2_unbiased_masked(x, mask, y, length_scale=1.5)
    np.testing.assert_allclose(masked, metrics.mmd2_unbiased(x[mask], y, length_scale=1.5), rtol=1e-4, atol=1e-6)
    assert bool(jnp.isnan(metrics.mmd2_unbiased_masked(x, np.eye(12, dtype=bool)[0], y, length_scale=1.5)))
