"""Proposition 3.1 (paper §3.4, App. B.2) as a known answer, and what the code does outside its assumptions.

Set-up of the proposition: a linear softmax model, two Gaussian classes with a shared diagonal covariance (σ = 1),
x0 immutable, x1 mutable. CT is trained with the divergence term only (λ_reg = λ_adv = 0), so the only force on
the coefficients besides cross-entropy is ∂div/∂θ_t = x' − x⁺. "Relative sensitivity" is |Δθ₀| / |Δθ₁|, with
Δθ_d = θ_{1,d} − θ_{0,d} the decision gradient's component along feature d (for LDA it is μ-gap_d / σ_d²).

Three arms share data, seeds and initial weights: BL (cross-entropy only), CT protected (x⁺[0] := x'[0], the
paper's masking) and CT unprotected (x0 still immutable in the search, but x⁺[0] stays as drawn).

Run these tests alone with `pytest -k proposition`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctrain.data import from_arrays
from ctrain.models import make_model
from ctrain.objective import LossWeights, make_counterfactual_batch, positive_pool
from ctrain.search import TRAINING_SEARCH, SearchConfig
from ctrain.train import TrainConfig, create_train_states, fit_many

SEEDS = (0, 1, 2)
DIVERGENCE_ONLY = LossWeights(clf=1.0, div=0.5, reg=0.0, adv=0.0)
# The proposition reasons about a counterfactual that reaches the target class: the search stops at τ.
STOP_AT_TAU = SearchConfig(threshold=0.5)
ARMS = {"BL": ("vanilla", True), "protected": ("full", True), "unprotected": ("full", False)}


def gaussian_classes(mean_gap, n_per_class=600, seed=0):
    """Returns a Dataset of two N(∓mean_gap, I) classes in 2-D, x0 immutable, in its own units."""
    rng = np.random.default_rng(seed)
    mu = np.asarray(mean_gap, np.float64)
    x = np.concatenate([rng.normal(-mu, 1.0, (n_per_class, 2)), rng.normal(mu, 1.0, (n_per_class, 2))])
    y = np.repeat([0, 1], n_per_class)
    return from_arrays(x, y, immutable=["x0"], standardize=False, seed=0)


def relative_sensitivity(states) -> np.ndarray:
    """Returns (S,) |Δθ₀| / |Δθ₁| of S stacked linear models' kernels (S, 2, 2)."""
    (kernel,) = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(states.params)
                 if "kernel" in jax.tree_util.keystr(path)]
    gap = np.abs(np.asarray(kernel)[:, :, 1] - np.asarray(kernel)[:, :, 0])
    return gap[:, 0] / gap[:, 1]


_CACHE = {}


def train_arm(mean_gap, arm: str, search: SearchConfig = STOP_AT_TAU):
    """Returns ((S,) relative sensitivities, (S,) share of matured counterfactuals in the last epoch) of one arm."""
    cache_key = (tuple(mean_gap), arm, search if ARMS[arm][0] != "vanilla" else None)
    if cache_key not in _CACHE:
        data = gaussian_classes(mean_gap)
        objective, protect = ARMS[arm]
        apply_fn, _ = make_model("linear", 2, 2, jax.random.key(0))
        inits = [make_model("linear", 2, 2, jax.random.key(s))[1] for s in SEEDS]
        states = create_train_states(apply_fn, jax.tree.map(lambda *a: jnp.stack(a), *inits), learning_rate=1e-2,
                                     weights=DIVERGENCE_ONLY)
        config = TrainConfig(objective=objective, search=search, epochs=10, batch_size=30, n_ce=300,
                             protect=protect)
        states, histories = fit_many(states, data, config, seeds=SEEDS, constraints=data.constraints(),
                                     progress=False)
        matured = np.array([h[-1].get("converged", np.nan) for h in histories])
        _CACHE[cache_key] = (relative_sensitivity(states), matured)
    return _CACHE[cache_key]


def test_proposition_protect_flag_changes_x_pos_only_on_protected_features():
    data = gaussian_classes((1.0, 2.0), n_per_class=50)
    apply_fn, params = make_model("linear", 2, 2, jax.random.key(0))
    pool = positive_pool(data.x_train, data.y_train, data.num_classes)
    x, y = jnp.asarray(data.x_train[:40]), jnp.asarray(data.y_train[:40])
    batches = {protect: make_counterfactual_batch(apply_fn, params, x, y, pool, jax.random.key(1), STOP_AT_TAU,
                                                  data.constraints(), protect=protect) for protect in (True, False)}
    on, off = batches[True], batches[False]
    np.testing.assert_array_equal(on.x_cf, off.x_cf)
    np.testing.assert_array_equal(on.x_pos[:, 1], off.x_pos[:, 1])  # the mutable feature is untouched
    np.testing.assert_array_equal(on.x_pos[:, 0], on.x_cf[:, 0])  # protected: x⁺[0] := x'[0]
    mature = np.asarray(off.converged)
    assert mature.sum() >= 10, "too few mature counterfactuals to compare"
    # Unprotected: x⁺ as drawn (an immature x' is x⁺ itself, so only mature rows can differ).
    assert np.mean(np.asarray(off.x_pos[mature, 0]) != np.asarray(off.x_cf[mature, 0])) > 0.9


def test_proposition_holds_when_the_mutable_feature_is_more_discriminative():
    """Means ∓(1, 2): the protected run leans less on x0 than BL and than the unprotected run, in every seed."""
    gap = (1.0, 2.0)
    bl, _ = train_arm(gap, "BL")
    protected, matured = train_arm(gap, "protected")
    unprotected, _ = train_arm(gap, "unprotected")
    assert np.all(matured >= 0.5), f"the mechanism must engage for the test to mean anything: matured {matured}"
    np.testing.assert_array_less(protected, bl)
    np.testing.assert_array_less(protected, unprotected)


def test_proposition_reverses_when_the_immutable_feature_is_more_discriminative():
    """Means ∓(2, 1): the proposition's condition fails, and the protected run leans *more* on x0 than BL.

    Why: with x0 frozen at the factual's side, only x1 can carry the factual across, and x1 is the weaker
    feature, so the few counterfactuals that mature must push x1 past the target class's own x1 values. Then
    x'[1] > x⁺[1] on the target's side, and the divergence step θ_t[1] −= λ(x'[1] − x⁺[1]) shrinks the mutable
    coefficient: x0's relative weight grows. The proposition assumes the counterfactual lands short of x⁺.
    """
    gap = (2.0, 1.0)
    bl, _ = train_arm(gap, "BL")
    protected, matured = train_arm(gap, "protected")
    assert np.all(matured < 0.5), f"x0 frozen: few factuals can reach the other class, matured {matured}"
    np.testing.assert_array_less(bl, protected)


def test_proposition_reverses_with_the_default_training_walk_past_tau():
    """Means ∓(1, 2) again, but trained with TRAINING_SEARCH, which walks on past τ for all T steps.

    The walk overshoots along x1 just as above (x'[1] ends beyond x⁺[1]), so the protected run leans more on x0
    than BL even where the proposition's condition holds. The actionability study
    (experiments/studies/actionability/README.md) measures this over data draws.
    """
    gap = (1.0, 2.0)
    bl, _ = train_arm(gap, "BL")
    protected_walk, matured = train_arm(gap, "protected", TRAINING_SEARCH.replace(threshold=0.5))
    assert np.all(matured >= 0.5), f"matured {matured}"
    np.testing.assert_array_less(bl, protected_walk)
