"""Table 2's integrated-gradients protocol: ctrain.metrics.round_sensitivity / ig_sensitivity_rounds and its summary."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctrain import metrics
from experiments.pipeline import median_ci


def test_round_sensitivity_is_the_references_standardisation():
    g = np.array([[1.0, -3.0], [2.0, 2.0], [0.0, 0.0]])  # three rounds' mean attributions, 2-D
    protected = np.array([True, False])
    # range: |g_0| / (max g − min g); a zero spread gives +inf unless g_0 is 0 as well.
    np.testing.assert_allclose(metrics.round_sensitivity(g, protected), [1 / 4, np.inf, 0.0])
    wide = np.array([[1.0, -3.0, 5.0], [4.0, 4.0, 4.0]])
    # minmax of the signed mean (not of |g|): (g_d − min g) / (max g − min g), 0 for a zero spread.
    np.testing.assert_allclose(metrics.round_sensitivity(wide, np.array([True, True, False])), [(0.5 + 0.0) / 2, 0.0])
    np.testing.assert_allclose(metrics.round_sensitivity(wide, np.array([True, False, False]), standardise="none"),
                               [1.0, 4.0])
    with pytest.raises(ValueError, match="protected_mask selects no feature"):
        metrics.round_sensitivity(g, np.array([False, False]))
    with pytest.raises(ValueError, match="standardise must be one of"):
        metrics.round_sensitivity(g, protected, standardise="zscore")


class _Linear:
    """A hashable linear model whose class-1 logit reads only x1 (weight 3): IG on x0 is exactly 0."""

    def __hash__(self):
        return 1

    def __eq__(self, other):
        return isinstance(other, _Linear)

    def __call__(self, params, x):
        return x @ params


def test_ig_sensitivity_rounds_known_answer_on_a_linear_model():
    w = jnp.array([[1.0, 0.0], [0.0, 3.0]])  # logit_0 = x0, logit_1 = 3·x1
    x = np.full((50, 2), 2.0, np.float32)
    y = np.ones(50, np.int32)  # every row is attributed to class 1: IG = (0, 3·(2 − b1))
    mean_ig, sens = metrics.ig_sensitivity_rounds(_Linear(), w, x, y, np.array([True, False]), jax.random.key(0),
                                                  n_rounds=7, n_samples=400, n_steps=4)
    assert mean_ig.shape == (7, 2) and sens.shape == (7,)
    np.testing.assert_allclose(mean_ig[:, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(mean_ig[:, 1], 6.0, atol=0.3)  # baselines ~ U(−1, 1) average to about 0
    np.testing.assert_allclose(sens, 0.0, atol=1e-6)  # the protected x0 carries none of the decision
    _, other = metrics.ig_sensitivity_rounds(_Linear(), w, x, y, np.array([False, True]), jax.random.key(0),
                                             n_rounds=7, n_samples=400, n_steps=4)
    np.testing.assert_allclose(other, 1.0, atol=1e-6)  # x1 carries all of it: |g1| / (g1 − 0) = 1
    again = metrics.ig_sensitivity_rounds(_Linear(), w, x, y, np.array([True, False]), jax.random.key(0),
                                          n_rounds=7, n_samples=400, n_steps=4)[0]
    np.testing.assert_array_equal(mean_ig, again)  # the key fixes the rounds and baselines
    with pytest.raises(ValueError, match="n_samples must be an integer >= 1"):
        metrics.ig_sensitivity_rounds(_Linear(), w, x, y, np.array([True, False]), jax.random.key(0), n_samples=0)
    with pytest.raises(ValueError, match="y must lie in"):
        metrics.ig_sensitivity_rounds(_Linear(), w, x, y + 5, np.array([True, False]), jax.random.key(0))
    with pytest.raises(ValueError, match="baseline_range"):
        metrics.ig_sensitivity_rounds(_Linear(), w, x, y, np.array([True, False]), jax.random.key(0),
                                      baseline_range=(1.0, -1.0))


def test_ig_rounds_attribute_each_rows_own_label_and_resample_rows():
    # Class-0 rows only move logit_0 through x0, class-1 rows only logit_1 through x1 (same shapes as above: one
    # compile). Attributing a fixed class instead of each row's label would leave one column at 0.
    w = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    x = np.array([[1.0, 0.0], [0.0, 1.0]] * 25, np.float32)
    y = np.array([0, 1] * 25, np.int32)
    mean_ig, _ = metrics.ig_sensitivity_rounds(_Linear(), w, x, y, np.array([True, False]), jax.random.key(3),
                                               n_rounds=7, n_samples=400, n_steps=4)
    np.testing.assert_allclose(mean_ig.mean(0), [0.5, 0.5], atol=0.06)  # half the draws of each kind, on average
    assert float(jnp.std(mean_ig[:, 0])) > 0.005  # rows are drawn with replacement: rounds differ


def test_median_ci_summarises_rounds_and_says_why_a_bound_is_infinite():
    out = median_ci(np.arange(101, dtype=float))
    assert (out["median"], out["ci_low"], out["ci_high"], out["n_rounds"]) == (50.0, 2.5, 97.5, 101)
    assert "note" not in out
    inf = median_ci([0.1, 0.2, 0.3, np.inf])
    assert inf["n_infinite"] == 1 and inf["ci_high"] == np.inf and "zero spread" in inf["note"]
    assert median_ci([])["median"] is None
