"""Amortised counterfactual training: a fixed pool of counterfactual chains, every chain advanced every epoch.

CT searches its n_ce counterfactuals afresh every epoch, T steps each. The amortised variant
(`TrainConfig(chain_steps=c)`) keeps them instead, as persistent contrastive divergence keeps its sampler
chains and JEM its replay buffer: the pool holds one chain per counterfactual an epoch uses (n_batches ·
ce_per_batch of them, the count the per-epoch schedule searches, so the loss reads exactly as many x' as
without chains). Each chain keeps its factual (an index into the training rows), its target and its current
point. Every epoch every chain is advanced by up to c search steps (`search_counterfactuals` from its current
point, `x_init`, with max_steps = c) on the parameters as they stand at the epoch's start; the loss reads the
chains' new points as x', with the same handling of immature points as the fresh search (an x' that has not
reached τ is replaced by x⁺ and adds no divergence). A chain restarts, from a fresh factual and target drawn
as the fresh search draws them, with probability `reset` per epoch (JEM's 0.05), and always before its
first advance.

Why a fixed pool rather than one chain per training sample: with one chain per sample an epoch either
advances all N chains (N/n_ce times the fresh search's rows) or only the n_ce it draws, and then each chain
moves a fraction of a step per epoch and almost none mature (the measured failure of the earlier
`persistent` option). A pool of the epoch's size moves every chain every epoch at c/T of the fresh search's
steps.

The pool lives on `TrainState.chains`; `ctrain.train.fit` and `fit_many` create it (`empty_chains`) and
checkpoint it with the rest of the state.
"""
from __future__ import annotations

from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp

from ctrain import constraints as cons
from ctrain.objective import CounterfactualBatch, PositivePool, counterfactual_batch_from_search
from ctrain.search import SearchConfig, sample_targets, search_counterfactuals

DEFAULT_RESET = 0.05  # JEM's replay-buffer reinitialisation probability (Grathwohl et al. 2020)


@flax.struct.dataclass
class Chains:
    """A pool of P counterfactual chains (leading axis P; a leading run axis K before it for stacked states)."""

    factual: jax.Array  # (P,) int32: the training row the chain explains
    target: jax.Array  # (P,) int32: the class it is searched for
    x: jax.Array  # (P, D) float32: its current point (the last advance's returned x', projected and snapped)
    mature: jax.Array  # (P,) bool: the current point reached τ at its last advance
    age: jax.Array  # (P,) int32: advances since the chain (re)started; 0 = never started
    steps: jax.Array  # (P,) int32: search steps taken since the chain (re)started


def empty_chains(size: int, width: int) -> Chains:
    """Returns a pool of `size` chains over `width` features that have not started (age 0): shapes (P,), (P, D)."""
    return Chains(factual=jnp.zeros(size, jnp.int32), target=jnp.zeros(size, jnp.int32),
                  x=jnp.zeros((size, width), jnp.float32), mature=jnp.zeros(size, bool),
                  age=jnp.zeros(size, jnp.int32), steps=jnp.zeros(size, jnp.int32))


def advance_chains(apply_fn, params, x_train, y_train, pool: PositivePool, chains: Chains, fresh: jax.Array,
                   key: jax.Array, config: SearchConfig, constraints: cons.Constraints | None = None, aux=None, *,
                   reset: float = DEFAULT_RESET, search: Callable = search_counterfactuals, protect: bool = True
                   ) -> tuple[CounterfactualBatch, Chains]:
    """Returns (CounterfactualBatch (P rows), the chains' new state): every chain advanced by config.max_steps steps.

    Chain i restarts when it has never started or with probability `reset`: its factual becomes the training
    row fresh[i] (P,) and its target is drawn uniformly among the classes other than the one the model
    predicts for that row (as the fresh search draws it), and it starts at the factual. Otherwise it keeps its
    factual and target and continues from its current point. Either way it then runs one search of at most
    `config.max_steps` steps (a point that already has p(t) >= τ takes none), whose result is the chain's new
    point and the x' the loss reads. Cost, the ε-ball of x_AE and the constraints are measured from the factual
    (`search_counterfactuals(..., x_init=...)`). With reset 1 every chain restarts, and the batch equals
    `objective.make_counterfactual_batch` on the rows x_train[fresh] with the same key. `search` has
    `search_counterfactuals`'s signature (e.g. `ctrain.sharding.per_device_search(mesh)`).
    """
    t_key, s_key, p_key = jax.random.split(key, 3)
    r_key = jax.random.fold_in(key, 3)  # not a split, so the three keys above are those of the fresh search
    params = jax.lax.stop_gradient(params)
    restart = (chains.age == 0) | jax.random.bernoulli(r_key, reset, chains.age.shape)
    factual = jnp.where(restart, fresh, chains.factual).astype(jnp.int32)
    x, y = x_train[factual], y_train[factual]
    constraints = cons.unconstrained(x.shape[-1]) if constraints is None else constraints
    predicted = jnp.argmax(apply_fn(params, x), -1)
    target = jnp.where(restart, sample_targets(t_key, predicted, pool.count.shape[0]), chains.target)
    target = target.astype(jnp.int32)
    x_init = jnp.where(restart[:, None], x, chains.x.astype(x.dtype))
    res = search(apply_fn, params, x, target, s_key, config, constraints, aux, x_init=x_init)
    age = jnp.where(restart, 0, chains.age) + 1
    batch = counterfactual_batch_from_search(res, x, y, target, pool, p_key, config, constraints, protect,
                                             chain_age=age)
    new = Chains(factual=factual, target=target, x=res.x_cf.astype(chains.x.dtype), mature=res.converged,
                 age=age, steps=jnp.where(restart, 0, chains.steps) + res.steps.astype(jnp.int32))
    return batch, new
