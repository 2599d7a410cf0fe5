r"""The counterfactual-training objective.

.. math::
   λ_{clf}\,CE(f(x), y) + λ_{div}\,\overline{E(x^+, t) − E(x', t)}
   + λ_{reg}\,\overline{E(x^+, t)^2 + E(x', t)^2} + λ_{adv}\,CE(f(x_{AE}), y)

with E(x, t) = −f(x)[t]. The counterfactual quantities (x', x⁺, t, x_AE) come from
`make_counterfactual_batch` and are constants for the parameter update.

Two baselines beyond the paper reuse the same loss with other batches (`make_training_batch`):
"pgd_at" (Madry et al.'s PGD adversarial training: x_AE is a PGD attack in the same ε-ball, with T steps,
and only the classification and adversarial terms count) and "jem" (JEM-style contrastive energy training:
x' is a sample of p_θ(x | t) drawn by conditional SGLD instead of a counterfactual, without the adversarial term).
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ctrain import attacks, metrics
from ctrain import constraints as cons
from ctrain.energy import energy_from_logits
from ctrain.search import SearchConfig, sample_targets, search_counterfactuals, search_units, within_ball

# BL, CT, CD (no adversarial term), AR (no div/reg); then the baselines PGD adversarial training and JEM-style.
OBJECTIVES = ("vanilla", "full", "energy", "adversarial", "pgd_at", "jem")
# SGLD of the "jem" objective: JEM's step size and noise (Grathwohl et al. 2020), T = SearchConfig.max_steps steps.
SGLD_STEP_SIZE, SGLD_NOISE = 1.0, 0.01


@flax.struct.dataclass
class LossWeights:
    """The λ's of the composite loss (pytree leaves, so they can be vmapped over in a grid)."""

    clf: float = 1.0
    div: float = 0.5
    reg: float = 0.1
    adv: float = 0.25


def check_loss_weights(weights: LossWeights) -> LossWeights:
    """Returns `weights` with float32 leaves after checking that every λ is finite and >= 0 (scalars or (K,) grids)."""
    if not isinstance(weights, LossWeights):
        raise TypeError(f"weights must be a ctrain.objective.LossWeights, got {type(weights).__name__}; "
                        "e.g. LossWeights(reg=0.5)")
    out = {}
    for name in ("clf", "div", "reg", "adv"):
        value = np.asarray(getattr(weights, name), dtype=np.float64)
        if value.ndim > 1:
            raise ValueError(f"λ_{name} must be a scalar or a 1-D grid (one value per run), got shape {value.shape}")
        if not np.all(np.isfinite(value)) or np.any(value < 0):
            raise ValueError(f"λ_{name} must be finite and >= 0, got {value.tolist()}")
        out[name] = jnp.asarray(value, jnp.float32)
    return LossWeights(**out)


def objective_weights(objective: str, weights: LossWeights) -> LossWeights:
    """Returns the weights with the terms that `objective` leaves out set to zero."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {OBJECTIVES}")
    zero = jnp.zeros_like(jnp.asarray(weights.div))
    if objective == "vanilla":
        return weights.replace(div=zero, reg=zero, adv=zero)
    if objective in ("energy", "jem"):
        return weights.replace(adv=zero)
    if objective in ("adversarial", "pgd_at"):
        return weights.replace(div=zero, reg=zero)
    return weights


@flax.struct.dataclass
class PositivePool:
    """Training samples grouped by class, padded: x (K, M, D) and the real count per class (K,)."""

    x: jax.Array
    count: jax.Array


def positive_pool(x, y, num_classes: int) -> PositivePool:
    """Returns the PositivePool of x (N, D) by label y (N,); raises if a class has no samples."""
    x, y = np.asarray(x, np.float32), np.asarray(y)
    members = [np.flatnonzero(y == k) for k in range(num_classes)]
    empty = [k for k, m in enumerate(members) if len(m) == 0]
    if empty:
        raise ValueError(f"classes {empty} have no training samples to draw x⁺ from")
    size = max(len(m) for m in members)
    pool = np.stack([x[np.resize(m, size)] for m in members])
    return PositivePool(jnp.asarray(pool), jnp.asarray([len(m) for m in members], jnp.int32))


def sample_positives(key: jax.Array, pool: PositivePool, target: jax.Array) -> jax.Array:
    """Returns one uniformly drawn training sample of class target[i] per row, shape (N, D)."""
    u = jax.random.uniform(key, target.shape)
    idx = jnp.minimum((u * pool.count[target]).astype(jnp.int32), pool.count[target] - 1)
    return pool.x[target, idx]


@flax.struct.dataclass
class CounterfactualBatch:
    """What the loss needs from the search, per factual (leading axis n_ce); all constants for the update."""

    x_cf: jax.Array  # (n, D) mature counterfactual, or x⁺ where the search did not converge
    x_pos: jax.Array  # (n, D) x⁺ with protected features pulled to x_cf
    target: jax.Array  # (n,)
    x_ae: jax.Array  # (n, D) adversarial example (last iterate inside the ε-ball)
    y: jax.Array  # (n,) the factual's true label, used for the adversarial term
    converged: jax.Array  # (n,) bool
    steps: jax.Array  # (n,) int32
    ae_moved: jax.Array  # (n,) bool: x_ae differs from the factual
    cf_in_ball: jax.Array  # (n,) bool: the returned counterfactual itself lies in the ε-ball
    # (n,) int32: how many epochs the amortised chain (ctrain.chains) behind x' has advanced since it (re)started,
    # 1 = restarted this epoch; None for a fresh search
    chain_age: jax.Array | None = None


def make_counterfactual_batch(apply_fn, params, x, y, pool: PositivePool, key: jax.Array, config: SearchConfig,
                              constraints: cons.Constraints | None = None, aux=None, *,
                              search=search_counterfactuals, protect: bool = True) -> CounterfactualBatch:
    """Returns the CounterfactualBatch for factuals x (n, D) with labels y (n,): targets ≠ predicted class.

    `search` has the signature of `search_counterfactuals` (e.g. `ctrain.sharding.per_device_search(mesh)`).
    `protect=False` leaves x⁺ as drawn, so constrained features still enter the divergence (the search still
    respects them): the unprotected arm that Proposition 3.1 compares against.
    """
    t_key, s_key, p_key = jax.random.split(key, 3)
    params = jax.lax.stop_gradient(params)
    constraints = cons.unconstrained(x.shape[-1]) if constraints is None else constraints
    predicted = jnp.argmax(apply_fn(params, x), -1)
    target = sample_targets(t_key, predicted, pool.count.shape[0])
    res = search(apply_fn, params, x, target, s_key, config, constraints, aux)
    return counterfactual_batch_from_search(res, x, y, target, pool, p_key, config, constraints, protect)


def counterfactual_batch_from_search(res, x, y, target, pool: PositivePool, key: jax.Array, config: SearchConfig,
                                     constraints: cons.Constraints, protect: bool = True, *, chain_age=None
                                     ) -> CounterfactualBatch:
    """Returns the CounterfactualBatch (n rows) of a SearchResult `res` for factuals x (n, D), labels y, targets (n,).

    x⁺ is drawn with `key`; an x' that did not reach τ is replaced by x⁺, so it adds no divergence.
    """
    x_pos = sample_positives(key, pool, target)
    x_cf = jnp.where(res.converged[:, None], res.x_cf, x_pos)  # an immature x' adds no divergence
    if protect:
        x_pos = cons.protect(x_pos, x_cf, constraints)
    return CounterfactualBatch(
        x_cf=x_cf, x_pos=x_pos, target=target, x_ae=res.x_ae, y=y.astype(jnp.int32), converged=res.converged,
        steps=res.steps, ae_moved=jnp.any(res.x_ae != x, -1),
        cf_in_ball=within_ball(res.x_cf, x, search_units(config, constraints), config.epsilon),
        chain_age=chain_age)


def make_adversarial_batch(apply_fn, params, x, y, key: jax.Array, config: SearchConfig,
                           constraints: cons.Constraints | None = None) -> CounterfactualBatch:
    """Returns the "pgd_at" batch for x (n, D), y (n,): x_AE = PGD in CT's ε-ball with T steps, no counterfactuals.

    PGD (random start, step 2.5·ε/T as Madry et al.) ascends the cross-entropy of the true label inside the
    L∞ ball of radius `config.epsilon` (in search units), then the point is made feasible (immutables, bounds).
    """
    constraints = cons.unconstrained(x.shape[-1]) if constraints is None else constraints
    params = jax.lax.stop_gradient(params)
    radius = config.epsilon * search_units(config, constraints)
    x_adv = attacks.pgd(apply_fn, params, x, y, key, epsilon=radius, step_size=2.5 * radius / config.max_steps,
                        n_steps=config.max_steps, random_start=True)
    # Clipping into the feasible box keeps the point in the ball, since the box contains x.
    x_adv = cons.project(x_adv, x, constraints)
    n = x.shape[0]
    return CounterfactualBatch(
        x_cf=x, x_pos=x, target=y.astype(jnp.int32), x_ae=x_adv, y=y.astype(jnp.int32), converged=jnp.zeros(n, bool),
        steps=jnp.full(n, config.max_steps, jnp.int32), ae_moved=jnp.any(x_adv != x, -1), cf_in_ball=jnp.ones(n, bool))


def make_sgld_batch(apply_fn, params, x, y, pool: PositivePool, key: jax.Array, config: SearchConfig,
                    constraints: cons.Constraints | None = None) -> CounterfactualBatch:
    """Returns the "jem" batch for n factuals: x' = conditional-SGLD samples of p_θ(x | t), x⁺ real samples of t.

    t is uniform over all classes; chains start uniformly in the range of the training data and take
    T = config.max_steps steps x ← x − (φ/2)·∇E(x, t) + σ·ξ with JEM's φ = 1, σ = 0.01 (no replay buffer).
    """
    t_key, init_key, sgld_key, p_key = jax.random.split(key, 4)
    params = jax.lax.stop_gradient(params)
    n, width = x.shape
    target = jax.random.randint(t_key, (n,), 0, pool.count.shape[0]).astype(jnp.int32)
    lower, upper = jnp.min(pool.x, axis=(0, 1)), jnp.max(pool.x, axis=(0, 1))
    x0 = jax.random.uniform(init_key, (n, width), x.dtype, minval=lower, maxval=upper)
    x_neg = metrics.sgld_chains(apply_fn, params, target, sgld_key, x0, config.max_steps, SGLD_STEP_SIZE,
                                 SGLD_NOISE)
    x_neg = jnp.where(jnp.isfinite(x_neg), x_neg, x0)  # a diverged chain adds no term rather than a NaN
    x_pos = sample_positives(p_key, pool, target)
    return CounterfactualBatch(
        x_cf=x_neg, x_pos=x_pos, target=target, x_ae=x, y=y.astype(jnp.int32), converged=jnp.ones(n, bool),
        steps=jnp.full(n, config.max_steps, jnp.int32), ae_moved=jnp.zeros(n, bool), cf_in_ball=jnp.zeros(n, bool))


def make_training_batch(objective: str, apply_fn, params, x, y, pool: PositivePool, key: jax.Array,
                        config: SearchConfig, constraints: cons.Constraints | None = None, aux=None, *,
                        protect: bool = True) -> CounterfactualBatch:
    """Returns the batch of constants that `objective`'s loss needs for factuals x (n, D) with labels y (n,)."""
    if objective == "pgd_at":
        return make_adversarial_batch(apply_fn, params, x, y, key, config, constraints)
    if objective == "jem":
        return make_sgld_batch(apply_fn, params, x, y, pool, key, config, constraints)
    return make_counterfactual_batch(apply_fn, params, x, y, pool, key, config, constraints, aux, protect=protect)


def composite_loss(params, apply_fn, x, y, cf: CounterfactualBatch | None, weights: LossWeights):
    """Returns (loss scalar, dict of the unweighted terms and accuracy) for a batch x (B, D), y (B,)."""
    return _loss_from_logits(apply_fn(params, x), lambda xs: apply_fn(params, xs), y, cf, weights)


def stateful_composite_loss(params, model, model_state, rng: jax.Array, x, y, cf: CounterfactualBatch | None,
                            weights: LossWeights):
    """Returns (loss scalar, (terms dict, new model_state)): `composite_loss` of a stateful model in training mode.

    `model` is a `ctrain.models.StatefulModuleApply` (or alike). Every loss term – CE on x, the energies of
    x⁺ and x', CE on x_AE – is computed in training mode (dropout on, BatchNorm on the statistics of the batch),
    as Flax's examples compute the loss of BatchNorm models, and as JEM does: its SGLD sampler runs the model
    in eval mode (`sample_q`: f.eval() … f.train()) and its loss on real and sampled points in train mode.
    Here likewise the points x', x_AE (the search) and the targets come from the inference-mode model (the
    one deployed and explained, deterministic), while the gradient acts on the function being trained.
    Only the pass over the data x updates the running statistics (the new model_state returned): they
    normalise real inputs at inference, so they should estimate the data's distribution, not that of the
    synthetic x' and x_AE. The pass over [x', x⁺, x_AE] is normalised with that batch's own statistics, so
    E(x⁺) and E(x') share one normalisation. The two passes draw independent dropout masks from `rng`.
    """
    logits, new_state = model.apply(params, model_state, x, train=True, rng=jax.random.fold_in(rng, 0))
    forward = lambda xs: model.apply(params, model_state, xs, train=True, rng=jax.random.fold_in(rng, 1))[0]
    loss, terms = _loss_from_logits(logits, forward, y, cf, weights)
    return loss, (terms, new_state)


def _loss_from_logits(logits, forward, y, cf: CounterfactualBatch | None, weights: LossWeights):
    """Returns (loss, terms) from the logits of x (B, K); `forward` maps stacked [x', x⁺, x_AE] (3n, D) to logits."""
    clf = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    terms = {"clf": clf, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
    if cf is None:
        return weights.clf * clf, terms
    n = cf.x_cf.shape[0]
    # One forward pass over [x', x⁺, x_AE] instead of three.
    out = forward(jnp.concatenate([cf.x_cf, cf.x_pos, cf.x_ae]))
    e_cf = energy_from_logits(out[:n], cf.target)
    e_pos = energy_from_logits(out[n:2 * n], cf.target)
    terms["div"] = jnp.mean(e_pos - e_cf)
    terms["reg"] = jnp.mean(e_pos ** 2 + e_cf ** 2)
    terms["energy_cf"], terms["energy_pos"] = jnp.mean(e_cf), jnp.mean(e_pos)
    terms["adv"] = optax.softmax_cross_entropy_with_integer_labels(out[2 * n:], cf.y).mean()
    loss = weights.clf * clf + weights.div * terms["div"] + weights.reg * terms["reg"] + weights.adv * terms["adv"]
    return loss, terms
