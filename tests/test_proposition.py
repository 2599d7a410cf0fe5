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

from ctrain.models import make_model
from ctrain.objective import make_counterfactual_batch, positive_pool
from experiments.studies.actionability.proposition import SEARCHES, gaussian_classes, train_linear_arm

SEEDS = (0, 1, 2)
# The proposition reasons about a counterfactual that reaches the target class: explain's search, stopping at τ.
STOP_AT_TAU = SEARCHES["explain"]
_CACHE = {}


def train_arm(mean_gap, arm: str, search=STOP_AT_TAU):
    """Returns ((S,) relative sensitivities, (S,) matured shares) of one arm, trained once per module."""
    key = (tuple(mean_gap), arm, search if arm != "BL" else None)
    if key not in _CACHE:
        _CACHE[key] = train_linear_arm(mean_gap, arm, search, SEEDS, epochs=10)
    return _CACHE[key]


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


def test_proposition_reverses_with_a_training_walk_past_tau():
    """Means ∓(1, 2) again, but trained with a search that walks on past τ for all T steps (clipped steps).

    The walk overshoots along x1 just as above (x'[1] ends beyond x⁺[1]), so the protected run leans more on x0
    than BL even where the proposition's condition holds. The actionability study
    (experiments/studies/actionability/README.md) measures this over data draws.
    """
    gap = (1.0, 2.0)
    bl, _ = train_arm(gap, "BL")
    protected_walk, matured = train_arm(gap, "protected", SEARCHES["walk"])
    assert np.all(matured >= 0.5), f"matured {matured}"
    np.testing.assert_array_less(bl, protected_walk)
