"""Training: the `TrainState` pytree, one jit-compiled `train_step`, whole-epoch scans and the `fit` loop.

`make_train_step(config, constraints)` returns a pure `step(state, batch, key) -> (state, metrics)`:
for objective "vanilla" it is plain cross-entropy training (the baseline, BL); otherwise the same
step also draws factuals, searches their counterfactuals and applies the composite loss (CT and its
ablations), all inside one `jax.jit`. Researchers can call the step in their own loops, also data-parallel
(`axis_name=` under `jax.pmap`/`jax.shard_map`, or `mesh=` under `jax.jit` on a sharded batch; helpers in
`ctrain.sharding`); `fit` is the ready loop with progress, per-epoch logs, checkpoints and resume, and
`fit_many` trains K runs as one vmapped program.

Models with state and randomness (BatchNorm statistics, dropout; `ctrain.models.stateful_model`) plug into all
of these: `create_train_state(apply_fn, variables)` puts their statistics on the state (`model_state`) with a
dropout key (`rng`); the loss runs them in training mode and the searches in inference mode, and
`inference_model(state)` gives the (apply_fn, params) pair to evaluate or explain them with.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, TextIO

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from ctrain import chains as amortised
from ctrain import checkpoint
from ctrain import constraints as cons
from ctrain.chains import Chains
from ctrain.models import check_model, is_stateful
from ctrain.objective import (OBJECTIVES, CounterfactualBatch, LossWeights, PositivePool, check_loss_weights,
                              composite_loss, make_training_batch, objective_weights, positive_pool,
                              stateful_composite_loss)
from ctrain.search import TRAINING_SEARCH, SearchConfig, search_counterfactuals
from ctrain import sharding
from ctrain.progress import progress as progress_display


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; `apply_fn` and `tx` are static (not pytree leaves).

    The state is the one home of the loss weights and the optimiser (with its learning rate): the step
    reads them from here, so what a run trains with is what its state says.

    A model with state and randomness (`ctrain.models.is_stateful(apply_fn)`, e.g. BatchNorm and dropout)
    also carries `model_state` (its mutable collections, e.g. {"batch_stats": ...}, updated by every step
    and never seen by the optimiser) and `rng` (the (2,) uint32 key data its dropout masks derive from: step
    s uses `fold_in(rng, s)`). Both are None for a pure `apply_fn(params, x)`.

    With `TrainConfig.chain_steps` (amortised CT) it also carries `chains`, the pool of counterfactual chains
    (`ctrain.chains.Chains`) that every epoch advances; `fit`/`fit_many` add it (`with_chains`). None when the
    option is off, so such states and their checkpoints are what they were without it.
    """

    step: jax.Array  # () int32, number of steps taken (skipped ones included)
    params: Any
    opt_state: Any
    weights: LossWeights  # λ's as leaves, so K runs with different λ can be vmapped
    skipped: jax.Array  # () int32, updates skipped because the loss or a gradient was not finite
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    model_state: Any = None  # mutable collections of a stateful model (e.g. {"batch_stats": ...}), else None
    rng: jax.Array | None = None  # (2,) uint32 key data of a stateful model's RNG streams (dropout), else None
    chains: Chains | None = None  # the amortised CT's counterfactual chains (TrainConfig.chain_steps), else None


DEFAULT_LEARNING_RATE = 1e-3  # the reference's Adam()
# One shared Adam whose learning rate is injected into its state: the rate is a leaf (fit_many can vary it
# per run), and every state built here shares one static `tx`, so jitted steps are reused across states.
ADAM = optax.inject_hyperparams(optax.adam)(learning_rate=DEFAULT_LEARNING_RATE)


def _optimizer(tx, learning_rate) -> tuple[optax.GradientTransformation, float | None]:
    if tx is not None and learning_rate is not None:
        raise ValueError("pass either tx (an optax optimiser, which holds its own learning rate) or learning_rate, "
                         "not both")
    if tx is not None:
        if not isinstance(tx, optax.GradientTransformation):
            raise TypeError(f"tx must be an optax.GradientTransformation, got {type(tx).__name__}")
        return tx, None
    lr = DEFAULT_LEARNING_RATE if learning_rate is None else learning_rate
    return ADAM, lr


def _check_learning_rate(lr, k: int | None = None) -> np.ndarray:
    value = np.asarray(lr, np.float64)
    if value.ndim > (0 if k is None else 1) or (k is not None and value.ndim == 1 and value.shape != (k,)):
        want = "a scalar" if k is None else f"a scalar or one value per run ({k},)"
        raise ValueError(f"learning_rate must be {want}, got shape {value.shape}")
    if not np.all(np.isfinite(value)) or np.any(value <= 0):
        raise ValueError(f"learning_rate must be finite and > 0, got {value.tolist()}")
    return value


def _set_learning_rate(opt_state, lr: jax.Array):
    # The injected hyperparameter is replaced in place of the one tx.init wrote.
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})


def _split_model(apply_fn, params, rng, k: int | None = None) -> tuple[Any, Any, jax.Array | None]:
    """Returns (params, model_state, rng key data (2,) or (k, 2)) of a stateful model; (params, None, None) else.

    Without `rng` a stateful model's key is `jax.random.key(0)`, with the run index folded in for k stacked runs.
    """
    if not is_stateful(apply_fn):
        if rng is not None:
            raise ValueError("rng is the key of a stateful model's RNG streams (dropout); this apply_fn has none")
        return params, None, None
    if not isinstance(params, Mapping):
        raise TypeError(f"a stateful model takes its full variables dict (params and {list(apply_fn.mutable)}), "
                        f"got {type(params).__name__}")
    params, model_state = apply_fn.split(params)
    missing = [c for c in apply_fn.mutable if c not in model_state]
    if missing:
        raise ValueError(f"the variables lack the model's mutable collection(s) {missing}: pass the full variables "
                         "that ctrain.models.stateful_model (or module.init) returned")
    if rng is None:
        rng = jax.random.key(0)
    if isinstance(rng, (int, np.integer)):
        rng = jax.random.key(int(rng))
    rng = jnp.asarray(rng)
    rng = jnp.asarray(jax.random.key_data(rng) if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng,
                      jnp.uint32)
    if k is not None and rng.ndim == 1:
        rng = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(rng), i)))(
            jnp.arange(k))
    want = (2,) if k is None else (k, 2)
    if rng.shape != want:
        raise ValueError(f"rng must be one key{'' if k is None else f' or {k} keys (one per run)'}, got key data of "
                         f"shape {rng.shape}")
    return params, model_state, rng


def create_train_state(apply_fn, params, *, weights: LossWeights | None = None, learning_rate: float | None = None,
                       tx: optax.GradientTransformation | None = None, rng: jax.Array | int | None = None
                       ) -> TrainState:
    """Returns a fresh TrainState: Adam(learning_rate, default 1e-3) unless an optax `tx` is given, and λ's `weights`.

    The loss weights default to `LossWeights()` (λ_clf 1, λ_div 0.5, λ_reg 0.1, λ_adv 0.25). For a stateful
    model (`ctrain.models.stateful_model`, `make_model("cnn_bn", ...)`) `params` are its full variables: they
    are split into the trainable params and the `model_state` (e.g. batch_stats), and `rng` (a key or an int
    seed, default 0) seeds its dropout.
    """
    weights = check_loss_weights(LossWeights() if weights is None else weights)
    if any(np.ndim(w) for w in jax.tree.leaves(weights)):
        raise ValueError("create_train_state takes scalar λ's; for a grid of λ's use create_train_states")
    params, model_state, rng = _split_model(apply_fn, params, rng)
    tx, lr = _optimizer(tx, learning_rate)
    opt_state = tx.init(params)
    if lr is not None:
        opt_state = _set_learning_rate(opt_state, jnp.asarray(_check_learning_rate(lr), jnp.float32))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, weights=weights,
                      skipped=jnp.zeros((), jnp.int32), apply_fn=apply_fn, tx=tx, model_state=model_state, rng=rng)


def inference_model(state: TrainState) -> tuple[Callable, Any]:
    """Returns (apply_fn, params) of the state's model in inference mode: apply_fn(params, x (N, D)) -> (N, K) logits.

    For a pure model these are the state's own; for a stateful one, params are the full variables (params and
    running statistics) and apply_fn uses the running statistics without dropout. Stacked states give stacked
    params (leading run axis). This is the pair to evaluate or explain a trained model with.
    """
    return state.apply_fn, _inference_params(state)


def _inference_params(state: TrainState):
    if state.model_state is None:
        return state.params
    return state.apply_fn.variables(state.params, state.model_state)


def _step_rng(state: TrainState, axis_name: str | None) -> jax.Array:
    """Returns this step's key for the model's RNG streams: fold_in(state.rng, step), and the device index if mapped."""
    return sharding.device_key(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step), axis_name)


def learning_rate_of(state: TrainState) -> jax.Array | None:
    """Returns the learning rate held in the state's optimiser ((), or (K,) for stacked runs), or None if not injected."""
    hyper = getattr(state.opt_state, "hyperparams", None)
    return None if hyper is None else hyper.get("learning_rate")


# Settings that belong to the TrainState, with where to set them instead.
_STATE_OWNED = {"lambda_clf": "weights=LossWeights(clf=...)", "lambda_div": "weights=LossWeights(div=...)",
                "lambda_reg": "weights=LossWeights(reg=...)", "lambda_adv": "weights=LossWeights(adv=...)",
                "learning_rate": "learning_rate=... (or tx=...)", "weights": "weights=LossWeights(...)",
                "tx": "tx=..."}

# Settings that were removed, with what replaces them.
_REMOVED = {name: "the persistent buffer (persistent, buffer_reset) drew its chains at random and almost none matured; "
                  "amortised CT replaces it: TrainConfig(chain_steps=c, chain_reset=p) (ctrain.chains)"
            for name in ("persistent", "buffer_reset")}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Static settings of a training run (hashable). Defaults: the paper's CT with the reference's choices.

    The loss weights (λ's) and the optimiser are not here: they live on the TrainState
    (`create_train_state(apply_fn, params, weights=LossWeights(reg=0.5), learning_rate=1e-3)`), so a
    run cannot be configured one way and trained another.

    n_ce is the number of counterfactuals per epoch; each step uses ceil(n_ce / batches) of them.
    schedule "per_epoch" (reference) searches them all at the start of the epoch with frozen
    parameters; "per_batch" searches fresh ones from each batch inside the step.

    chain_steps (default None: off) turns on amortised CT (`ctrain.chains`): instead of searching its
    counterfactuals afresh every epoch, the per-epoch schedule keeps a fixed pool of chains, one per
    counterfactual an epoch uses, and advances every chain by at most chain_steps search steps every epoch from
    where it stood (a chain whose point is mature takes none). Each chain keeps its factual and target and
    restarts from a fresh factual and target with probability chain_reset per epoch (None: JEM's 0.05).
    Per-epoch schedule and counterfactual objectives ("full", "energy", "adversarial") only. The epoch log's
    `chain_age` is the chains' mean age in epochs and `restarted` the share restarted that epoch.
    """

    objective: str = "full"
    search: SearchConfig = TRAINING_SEARCH  # explain's search, stopping at τ (ctrain.search.TRAINING_SEARCH says why)
    n_ce: int = 1000
    ce_per_batch: int | None = None  # set by `fit`; None inside a bare step means "the whole batch"
    schedule: str = "per_epoch"
    burnin: float = 0.0
    epochs: int = 100
    batch_size: int = 30
    shuffle: bool = False  # the reference iterates batches in a fixed order
    seed: int = 0
    checkpoint_every: int = 0  # epochs; 0 = only at the end (when a workdir is given)
    # Protected features (immutable, or the forbidden direction of increase/decrease-only ones) are pulled to x' in
    # x⁺, so they add nothing to the divergence (paper §3.4). False keeps them in it while the search still respects
    # them: the unprotected arm of Proposition 3.1 (tests/test_proposition.py).
    protect: bool = True
    # Amortised CT (see above); off by default. None, not a default value, while off, so that a run without chains
    # has the run identity (ctrain.checkpoint.run_identity) it had before these settings existed.
    chain_steps: int | None = None
    chain_reset: float | None = None

    def __new__(cls, *args, **kwargs):
        # Runs before the dataclass's __init__ sees the keywords, so a λ or learning rate passed here is refused
        # with where it belongs instead of "unexpected keyword argument".
        gone = [k for k in kwargs if k in _REMOVED]
        if gone:
            raise TypeError(f"TrainConfig no longer takes {gone}: " + "; ".join(_REMOVED[k] for k in gone))
        moved = [k for k in kwargs if k in _STATE_OWNED]
        if moved:
            where = ", ".join(f"{k} → create_train_state(..., {_STATE_OWNED[k]})" for k in moved)
            raise TypeError(f"TrainConfig does not take {moved}: the loss weights and the optimiser live on the "
                            f"TrainState so that they cannot disagree with it ({where})")
        return super().__new__(cls)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose from {OBJECTIVES}")
        if not isinstance(self.search, SearchConfig):
            raise TypeError(f"search must be a SearchConfig, got {type(self.search).__name__}")
        if self.schedule not in ("per_epoch", "per_batch"):
            raise ValueError(f"schedule must be 'per_epoch' or 'per_batch', got {self.schedule!r}")
        if isinstance(self.burnin, bool) or not isinstance(self.burnin, (int, float)) or not 0.0 <= self.burnin < 1.0:
            raise ValueError(f"burnin must be a fraction of the epochs in [0, 1), got {self.burnin!r}")
        for name, least in (("epochs", 1), ("batch_size", 1), ("n_ce", 1), ("seed", 0), ("checkpoint_every", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if self.ce_per_batch is not None and (not isinstance(self.ce_per_batch, (int, np.integer))
                                              or self.ce_per_batch < 1):
            raise ValueError(f"ce_per_batch must be an integer >= 1 or None, got {self.ce_per_batch!r}")
        for name in ("shuffle", "protect"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.chain_steps is not None and (isinstance(self.chain_steps, bool) or not isinstance(
                self.chain_steps, (int, np.integer)) or self.chain_steps < 1):
            raise ValueError(f"chain_steps must be an integer >= 1 (search steps per chain and epoch) or None (off), "
                             f"got {self.chain_steps!r}")
        if self.chain_reset is not None:
            if self.chain_steps is None:
                raise ValueError("chain_reset is the restart probability of amortised chains: it needs chain_steps")
            if isinstance(self.chain_reset, bool) or not isinstance(
                    self.chain_reset, (int, float, np.integer, np.floating)) or not 0.0 <= self.chain_reset <= 1.0:
                raise ValueError(f"chain_reset must be a probability in [0, 1] or None, got {self.chain_reset!r}")
        if self.chain_steps is not None:
            if self.schedule != "per_epoch":
                raise ValueError("chain_steps (amortised chains) needs schedule='per_epoch': the chains are advanced "
                                 "by the epoch's one search; the per-batch schedule searches fresh factuals per step")
            if self.objective in _NO_SEARCH:  # ("vanilla" searches nothing, so the chains just stay unstarted)
                raise ValueError(f"chain_steps keeps counterfactual search chains; objective {self.objective!r} runs "
                                 "no counterfactual search")

    @property
    def needs_counterfactuals(self) -> bool:
        return self.objective != "vanilla"

    @property
    def burnin_epochs(self) -> int:
        """Returns the number of leading epochs trained without counterfactuals."""
        return round(self.burnin * self.epochs)

    @property
    def amortised(self) -> bool:
        """Returns whether the run keeps amortised counterfactual chains (chain_steps set)."""
        return self.chain_steps is not None

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def chain_pool_size(config: TrainConfig, n_train: int) -> int:
    """Returns the number of amortised chains of a run: the epoch's counterfactuals, n_batches · ce_per_batch."""
    if config.ce_per_batch is None:
        raise ValueError("chain_pool_size needs config.ce_per_batch (fit sets it from n_ce)")
    return (n_train // config.batch_size) * config.ce_per_batch


def with_chains(state: TrainState, config: TrainConfig, x_train) -> TrainState:
    """Returns `state` with an unstarted pool of chain_pool_size(config, N) chains for x_train (N, D) (stacked: per run).

    `fit` and `fit_many` call it for `TrainConfig(chain_steps=c)`; a hand-written loop around `make_train_epoch`
    calls it once before the first epoch, with config.ce_per_batch set.
    """
    n, width = np.shape(x_train)
    pool = amortised.empty_chains(chain_pool_size(config, n), width)
    if np.ndim(state.step):  # K stacked runs: each its own chains, on the leading run axis
        k = np.shape(state.step)[0]
        pool = jax.tree.map(lambda a: jnp.broadcast_to(a, (k,) + a.shape), pool)
    return state.replace(chains=pool)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]))


# Objectives whose training batch comes from no counterfactual search (PGD attacks, SGLD chains of fixed length).
_NO_SEARCH = ("pgd_at", "jem")


def _training_batch(config: TrainConfig, mesh: Mesh | None) -> Callable:
    """Returns make(apply_fn, params, x, y, pool, key, search, constraints, aux) -> the objective's batch of constants.

    With a mesh, a counterfactual search runs per device (`ctrain.sharding.per_device_counterfactual_batch`).
    """
    if mesh is not None and config.objective not in _NO_SEARCH:
        return sharding.per_device_counterfactual_batch(mesh, protect=config.protect)
    return functools.partial(make_training_batch, config.objective, protect=config.protect)


def apply_loss(state: TrainState, x, y, cf: CounterfactualBatch | None, objective: str,
               axis_name: str | None = None):
    """Returns (new state, metrics) after one optax update on the composite loss; non-finite updates are skipped.

    With `axis_name` (inside `jax.pmap`/`jax.shard_map`), the gradients and metrics are averaged over that axis
    first, so every replica applies the same update, and an update is skipped on all replicas when any of them
    saw a non-finite loss or gradient. A stateful model's loss runs in training mode with the dropout key
    fold_in(state.rng, state.step) (and the device index), and its new batch statistics, averaged over the
    axis, go on the new state.
    """
    weights = objective_weights(objective, state.weights)
    params = sharding.as_device_local(state.params, x, axis_name)
    if state.model_state is None:
        grad_fn = jax.value_and_grad(composite_loss, has_aux=True)
        (loss, terms), grads = grad_fn(params, state.apply_fn, x, y, cf, weights)
        model_state = None
    else:
        # Training mode for every loss term, and new batch statistics from the pass over x
        # (`objective.stateful_composite_loss` says why); the dropout key is fold_in(rng, step).
        grad_fn = jax.value_and_grad(stateful_composite_loss, has_aux=True)
        (loss, (terms, model_state)), grads = grad_fn(params, state.apply_fn, state.model_state,
                                                       _step_rng(state, axis_name), x, y, cf, weights)
        finite_state = _all_finite(model_state)
    finite = jnp.isfinite(loss) & _all_finite(grads)
    if model_state is not None:
        finite = finite & finite_state
    searched = {} if cf is None else dict(
        converged=cf.converged.mean(), search_steps=cf.steps.mean(), ae_moved=cf.ae_moved.mean(),
        cf_in_ball=cf.cf_in_ball.mean(), one_step=jnp.mean(cf.steps <= 1))
    if cf is not None and cf.chain_age is not None:
        searched.update(chain_age=cf.chain_age.mean(), restarted=jnp.mean(cf.chain_age == 1))
    # One all-reduce for everything. Each term is a mean over equally sized shards, so the mean of the shard
    # means is the whole batch's; the finite flags' mean is exactly 1 only if every device's update is finite,
    # so every replica takes the same skip decision. A stateful model's new batch statistics are averaged
    # the same way (as Flax's ImageNet example syncs them with a cross-replica mean), so replicas stay equal.
    loss, terms, grads, searched, finite_share, model_state = sharding.mean_over(
        (loss, terms, grads, searched, finite.astype(jnp.float32), model_state), axis_name)
    finite = finite_share == 1.0
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jnp.where(finite, new, old)
    state = state.replace(step=state.step + 1, params=jax.tree.map(keep, params, state.params),
                          opt_state=jax.tree.map(keep, opt_state, state.opt_state),
                          skipped=state.skipped + (~finite).astype(jnp.int32),
                          model_state=jax.tree.map(keep, model_state, state.model_state))
    metrics = {"loss": loss, **terms, "nonfinite": (~finite).astype(jnp.int32), **searched}
    return state, metrics


def make_train_step(config: TrainConfig = TrainConfig(), constraints: cons.Constraints | None = None, aux=None,
                    axis_name: str | None = None, *, mesh: Mesh | None = None):
    """Returns the pure `step(state, batch, key) -> (state, metrics)` for `config.objective`.

    The step trains with the λ's and the optimiser of the state it is given (`create_train_state`).

    Args:
      config: the objective, the search and, for the per-batch schedule, `ce_per_batch` (counterfactuals
        searched per step; None means the whole batch).
      constraints: the actionability constraints the search respects (None: unconstrained).
      aux: extra inputs of the generator (e.g. {"vae_params": ...} for REVISE).
      axis_name: for `jax.pmap(step, axis_name=...)` or `jax.shard_map`: gradients and metrics are averaged
        over this axis (every replica applies the same update), and the key gets the device index folded in,
        so that with the per-batch schedule each device draws its own factuals, targets and positives.
      mesh: for `jax.jit` with the batch split across `mesh` (`ctrain.sharding.shard_batch`): the search and
        the loss run per device under `jax.shard_map` (the search's early exit then does not synchronise the
        devices at every iteration) and the gradient and metrics are averaged over the mesh; the draws stay
        those of one device, so results equal the one-device step. B and ce_per_batch must be multiples of
        the device count.

    The returned step takes batch {"x": (B, D) float, "y": (B,) int} plus, for the CT objectives, either
    "cf" (a precomputed CounterfactualBatch, per-epoch schedule) or "pool" (a PositivePool to draw x⁺
    from; factuals are then drawn from the batch and searched inside the step, with `key`).

    Example, a hand-written loop (README.md's "A loop of your own" uses `epoch_keys` and reproduces `fit`)::

      state = create_train_state(apply_fn, params, weights=LossWeights(reg=0.5), learning_rate=1e-3)
      step = jax.jit(make_train_step(TrainConfig(ce_per_batch=16), data.constraints()), donate_argnums=0)
      pool = positive_pool(data.x_train, data.y_train, data.num_classes)
      for i, batch in enumerate(data.batches(32)):
          state, metrics = step(state, {**batch, "pool": pool}, jax.random.fold_in(key, i))
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if axis_name is not None and mesh is not None:
        raise ValueError("pass axis_name (for jax.pmap / jax.shard_map around the step) or mesh (for jax.jit on a "
                         "sharded batch), not both")
    if mesh is not None and not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh such as ctrain.sharding.data_mesh(), got "
                        f"{type(mesh).__name__}")
    counterfactual_batch = _training_batch(config, mesh)
    update = lambda state, x, y, cf: apply_loss(state, x, y, cf, config.objective, axis_name)
    if mesh is not None:
        # Everything after the factual draw runs per device: the search (each device stops on its own) and the
        # loss, whose gradient and metrics are then averaged over the mesh. Left to XLA's partitioner, the
        # search would run whole on every device, and the loss's concatenation of the sharded counterfactual
        # batch would gather and permute rows at every step.
        update = sharding.data_parallel(
            lambda state, x, y, cf: apply_loss(state, x, y, cf, config.objective, sharding.DATA_AXIS), mesh,
            replicated_args=1)

    def step(state: TrainState, batch: dict, key: jax.Array | None = None):
        if not isinstance(batch, dict) or "x" not in batch or "y" not in batch:
            raise ValueError("batch must be a dict with 'x' (B, D) and 'y' (B,)")
        x, y = batch["x"], batch["y"]
        if x.ndim != 2 or y.shape != x.shape[:1]:
            raise ValueError(f"batch x must be (B, D) and y (B,), got {x.shape} and {y.shape}")
        if not jnp.issubdtype(y.dtype, jnp.integer):
            raise TypeError(f"batch['y'] must hold integer class labels, got dtype {y.dtype}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"batch['x'] must be floating point, got dtype {x.dtype}")
        cf = None
        if config.needs_counterfactuals:
            cf = batch.get("cf")
            if cf is None:
                if "pool" not in batch or key is None:
                    raise ValueError(f"objective {config.objective!r} needs batch['cf'], or batch['pool'] and a key")
                m = min(config.ce_per_batch or x.shape[0], x.shape[0])
                f_key, s_key = jax.random.split(sharding.device_key(key, axis_name))
                idx = jax.random.choice(f_key, x.shape[0], (m,), replace=False)
                # The search (and x_AE, x⁺'s targets) uses the inference-mode model: running statistics, no
                # dropout, so a counterfactual is valid for the model that will be deployed and explained.
                cf = counterfactual_batch(state.apply_fn, _inference_params(state), x[idx], y[idx], batch["pool"],
                                          s_key, config.search, constraints, aux)
        return update(state, x, y, cf)

    return step


train_step = jax.jit(make_train_step(TrainConfig(objective="vanilla")), donate_argnums=(0,))
train_step.__doc__ = "Returns (state, metrics) after one jitted vanilla cross-entropy step on batch {'x', 'y'}."


# --------------------------------------------------------------------------------------------------
# Whole epochs


class EpochKeys(NamedTuple):
    """The keys of one epoch of `fit`: `epoch_keys` derives them."""

    order: jax.Array  # the batch order (`epoch_order`; used when shuffling)
    counterfactuals: jax.Array  # the per-epoch schedule's factual draw, targets, search and positives
    steps: jax.Array  # (n_batches,) one key per step: the per-batch schedule's draws inside `make_train_step`


def epoch_keys(key: jax.Array, epoch, n_batches: int) -> EpochKeys:
    """Returns fit's keys for epoch `epoch` (0-based) of a run seeded with `key`: order, counterfactuals, (n_batches,) steps.

    The schedule: fold_in(key, epoch) split in three (order, counterfactuals, steps), and the steps key split
    once per batch. `fit` and `fit_many` use `key = jax.random.key(config.seed)`; a hand-written loop that uses
    the same keys (`epoch_order`, `epoch_counterfactuals`, `make_train_step`) reproduces fit's parameters.
    """
    order, counterfactuals, steps = jax.random.split(jax.random.fold_in(key, epoch), 3)
    return EpochKeys(order=order, counterfactuals=counterfactuals, steps=jax.random.split(steps, n_batches))


def epoch_order(key: jax.Array, n: int, batch_size: int, shuffle: bool) -> jax.Array:
    """Returns (n // batch_size, batch_size) training indices for one epoch; the remainder is dropped."""
    order = jax.random.permutation(key, n) if shuffle else jnp.arange(n)
    nb = n // batch_size  # every step has the same shape, so the epoch compiles once
    return order[: nb * batch_size].reshape(nb, batch_size)


def epoch_counterfactuals(state: TrainState, x_train, y_train, pool: PositivePool, key: jax.Array,
                          config: TrainConfig, n_batches: int, constraints=None, aux=None, *,
                          mesh: Mesh | None = None) -> CounterfactualBatch:
    """Returns a CounterfactualBatch with leading axes (n_batches, m): the epoch's searches, with frozen params.

    With a `mesh`, the n_batches·m searches are split across its devices, each looping on its own
    (`ctrain.sharding.per_device_search`); the draws are the same as on one device. With amortised chains
    (`config.chain_steps`) the batch is the chains' advance (`epoch_search` also returns their new state).
    """
    return epoch_search(state, x_train, y_train, pool, key, config, n_batches, constraints, aux, mesh=mesh)[0]


def epoch_search(state: TrainState, x_train, y_train, pool: PositivePool, key: jax.Array, config: TrainConfig,
                 n_batches: int, constraints=None, aux=None, *, mesh: Mesh | None = None
                 ) -> tuple[CounterfactualBatch, Chains | None]:
    """Returns (the epoch's CounterfactualBatch as `epoch_counterfactuals`, the chains' new state or None).

    The epoch draws n_batches·m factuals from the training rows. Without amortised chains they are searched
    afresh and the chains are None. With `config.chain_steps` the state's chains (`with_chains`) are advanced
    (`ctrain.chains.advance_chains`, chain_steps search steps each) and a chain that restarts takes its drawn
    factual; with chain_reset 1 and chain_steps = search.max_steps that is the fresh search.
    """
    m = config.ce_per_batch
    f_key, s_key = jax.random.split(key)
    n = x_train.shape[0]
    idx = jax.random.choice(f_key, n, (n_batches * m,), replace=n_batches * m > n)
    chains = None
    if config.amortised:
        if state.chains is None or state.chains.age.shape[-1] != n_batches * m:
            have = None if state.chains is None else state.chains.age.shape[-1]
            raise ValueError(f"TrainConfig(chain_steps=...) needs the state's pool of {n_batches * m} chains (the "
                             f"epoch's counterfactuals), the state has {have}: state = ctrain.train.with_chains("
                             "state, config, x_train) before the first epoch (fit and fit_many add it themselves)")
        search = sharding.per_device_search(mesh) if mesh is not None else search_counterfactuals
        reset = amortised.DEFAULT_RESET if config.chain_reset is None else config.chain_reset
        cf, chains = amortised.advance_chains(
            state.apply_fn, _inference_params(state), x_train, y_train, pool, state.chains, idx, s_key,
            config.search.replace(max_steps=config.chain_steps), constraints, aux, reset=reset, search=search,
            protect=config.protect)
    else:
        cf = _training_batch(config, mesh)(state.apply_fn, _inference_params(state), x_train[idx], y_train[idx],
                                           pool, s_key, config.search, constraints, aux)
    return jax.tree.map(lambda a: a.reshape((n_batches, m) + a.shape[1:]), cf), chains


def make_train_epoch(config: TrainConfig, constraints: cons.Constraints | None = None, aux=None,
                     batch_sharding: NamedSharding | None = None, *, mesh: Mesh | None = None):
    """Returns pure `epoch(state, x_train, y_train, pool, key, epoch, use_ct) -> (state, stacked metrics)`.

    One epoch is one `lax.scan` over its steps, with the batches gathered on device from the full
    training arrays (no host round-trip). Its keys are `epoch_keys(key, epoch, n_batches)`. `use_ct` is
    static: False runs the vanilla step (burn-in epochs), True the configured objective. With a `mesh`
    (`ctrain.sharding.data_mesh()`), every step's batch and counterfactual batch is split across its
    devices and every search runs per device (no cross-device synchronisation inside the search loop).
    `batch_sharding` alone (e.g. NamedSharding(mesh, P(None, "data"))) only splits the batches and
    leaves the search to XLA's partitioner, whose early-exit test then all-reduces at every iteration.
    """
    if mesh is not None and batch_sharding is None:
        batch_sharding = sharding.batch_sharding(mesh, axis=1)
    ct_step = make_train_step(config, constraints, aux, mesh=mesh)
    vanilla_step = make_train_step(config.replace(objective="vanilla"), mesh=mesh)
    constrain = (lambda a: jax.lax.with_sharding_constraint(a, batch_sharding)) if batch_sharding else (lambda a: a)

    def epoch(state: TrainState, x_train, y_train, pool: PositivePool, key: jax.Array, epoch_index, use_ct: bool):
        nb = x_train.shape[0] // config.batch_size
        keys = epoch_keys(key, epoch_index, nb)
        idx = epoch_order(keys.order, x_train.shape[0], config.batch_size, config.shuffle)
        xs, ys = constrain(x_train[idx]), constrain(y_train[idx])
        if not use_ct:
            return jax.lax.scan(lambda s, b: vanilla_step(s, {"x": b[0], "y": b[1]}), state, (xs, ys))
        if config.schedule == "per_batch":
            body = lambda s, b: ct_step(s, {"x": b[0], "y": b[1], "pool": pool}, b[2])
            return jax.lax.scan(body, state, (xs, ys, keys.steps))
        # One search for the whole epoch on the parameters as they stand at its start (reference schedule).
        cfs, chains = epoch_search(state, x_train, y_train, pool, keys.counterfactuals, config, nb, constraints, aux,
                                   mesh=mesh)
        cfs = jax.tree.map(constrain, cfs)
        if chains is not None:  # the chains' new state, advanced again next epoch
            state = state.replace(chains=chains)
        body = lambda s, b: ct_step(s, {"x": b[0], "y": b[1], "cf": b[2]})
        return jax.lax.scan(body, state, (xs, ys, cfs))

    return epoch


# --------------------------------------------------------------------------------------------------
# The ready loop


def _epoch_logs(metrics: dict, accuracies: dict, epoch: int, seconds: float) -> list[dict]:
    """Returns one epoch log per run from metrics {name: (k, steps)} and accuracies {name: (k,)}.

    Skipped updates (`nonfinite`) are summed over the steps, every other metric averaged; `time_s` is the
    epoch's wall time shared out over the k runs. `fit` (k = 1) and `fit_many` write this one format.
    """
    k = len(next(iter(accuracies.values()))) if accuracies else np.shape(next(iter(metrics.values())))[0]
    per_run = {}
    for name, v in metrics.items():
        v = np.asarray(v).reshape(k, -1)
        per_run[name] = v.sum(1) if name == "nonfinite" else v.mean(1)
    per_run.update({name: np.asarray(v) for name, v in accuracies.items()})
    return [{"epoch": epoch + 1, **{name: (int(v[i]) if name == "nonfinite" else float(v[i]))
                                    for name, v in per_run.items()}, "time_s": seconds / k} for i in range(k)]


def _prepare_run(state: TrainState, dataset, config: TrainConfig, constraints):
    """Returns (config with ce_per_batch set, constraints, PositivePool) after checking model, data and config agree."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not np.all(np.isfinite(dataset.x_train)):
        raise ValueError(f"{dataset.name}: training inputs contain NaN/inf; clean them before training")
    # Abstract shapes only: a model that does not fit the data fails here, before anything compiles.
    params = _inference_params(state)
    check_model(state.apply_fn, jax.tree.map(lambda a: a[0], params) if np.ndim(state.step) else params,
                dataset.num_features, dataset.num_classes)
    n_batches = len(dataset.x_train) // config.batch_size
    if n_batches < 1:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(dataset.x_train)} training samples")
    if config.needs_counterfactuals:
        constraints = dataset.constraints() if constraints is None else constraints
        cons.check_width(constraints, dataset.num_features)
        if config.ce_per_batch is None:
            config = config.replace(ce_per_batch=math.ceil(config.n_ce / n_batches))
    return config, constraints, positive_pool(dataset.x_train, dataset.y_train, dataset.num_classes)


def _device_splits(dataset) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Returns {split: (x, y)} on device for the non-empty splits, copied once per run rather than every epoch."""
    return {split: (jnp.asarray(getattr(dataset, f"x_{split}")), jnp.asarray(getattr(dataset, f"y_{split}")))
            for split in ("train", "val", "test") if len(getattr(dataset, f"x_{split}"))}


def _accuracies(accuracy_fn, params, splits) -> dict[str, jax.Array]:
    """Returns {"<split>_accuracy": accuracy_fn(params, x, y)} for the given device splits."""
    return {f"{split}_accuracy": accuracy_fn(params, x, y) for split, (x, y) in splits.items()}


def _accuracy_fn(apply_fn):
    return lambda p, x, y: jnp.mean(jnp.argmax(apply_fn(p, x), -1) == y)


class DivergenceWarning(RuntimeWarning):
    """A training run's loss says it diverges (non-finite, or far beyond any healthy run's); once per run."""


DIVERGENCE_FACTOR = 1e3  # an epoch loss this many times the first epoch's is reported as diverging
# An epoch loss beyond DIVERGENCE_LOG_K · log K · max(1, Σλ) is diverging whatever the first epoch did (epoch 1
# included). log K is the cross-entropy of a constant predictor, where every freshly initialised classifier starts
# and which training only lowers. Each term of the composite loss is at that scale in a healthy run: the two
# cross-entropies (clf, adv) are at most a few log K, and the energy terms are logits (div) and squared logits
# (reg), which λ_reg keeps at O(1–10). A loss of 1e3 · log K per unit of λ needs mean logit margins or energies in
# the hundreds or thousands: the run has left training (learning_rate=1e6 gives ~1e26 in every epoch). Scaling by
# the λ's sum keeps the bound above a healthy run whose λ's are large.
DIVERGENCE_LOG_K = 1e3


def divergence_bound(num_classes: int, weights: LossWeights) -> np.ndarray:
    """Returns the epoch-loss magnitude beyond which a run is diverging: () or (K,) for per-run λ's."""
    total = sum(np.asarray(w, np.float64) for w in jax.tree.leaves(weights))
    return DIVERGENCE_LOG_K * math.log(max(int(num_classes), 2)) * np.maximum(1.0, total)


def _divergence(loss: float, first: float, bound: float = math.inf) -> str | None:
    """Returns why epoch loss `loss` says the run diverges (non-finite, |loss| > bound, or > 1e3× the first epoch's)."""
    if not math.isfinite(loss):
        return f"the training loss is {loss}"
    if abs(loss) > bound:
        return (f"the training loss {loss:.4g} exceeds {bound:.4g} ({DIVERGENCE_LOG_K:g}·log K·max(1, Σλ), far "
                "beyond the loss of a constant predictor, log K)")
    if math.isfinite(first) and first != 0 and abs(loss) > DIVERGENCE_FACTOR * abs(first):
        return f"the training loss {loss:.4g} is {abs(loss / first):.3g}× the first epoch's ({first:.4g})"
    return None


def _warn_divergence(what: str, epoch: int, why: str) -> None:
    # Once per run, not per epoch: a diverged run would otherwise bury everything else in the same warning.
    warnings.warn(f"{what}: epoch {epoch}: {why}; the run is diverging (lower the learning rate or the λ's); "
                  "this is reported once per run", DivergenceWarning, stacklevel=4)


def _postfix(log: dict) -> dict:
    shown = {"loss": f"{log['loss']:.3f}"}
    for name in ("test_accuracy", "val_accuracy", "train_accuracy"):
        if name in log:
            shown[name.replace("_accuracy", "_acc")] = f"{log[name]:.3f}"
            break
    if "converged" in log:
        shown["mature"] = f"{log['converged']:.2f}"
    return shown


def _run_epochs(run_epoch: Callable, config: TrainConfig, histories: list[list[dict]], start_epoch: int, *,
                names: list[str], bounds, shown, on_epoch: Callable | None = None) -> None:
    """Returns None after epochs start_epoch … config.epochs − 1 of k runs: the one epoch loop of fit and fit_many.

    `run_epoch(epoch, use_ct)` trains one epoch of every run and returns (metrics {name: (k, steps)},
    accuracies {name: (k,)}). Each run's log (`_epoch_logs`) is appended to histories[i]; skipped updates warn,
    and divergence (`_divergence` with bounds[i]) warns once per run; then `on_epoch(epoch, logs)` (checkpoints)
    and the progress display.
    """
    diverged: set[int] = set()
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        use_ct = config.needs_counterfactuals and epoch >= config.burnin_epochs
        metrics, accuracies = jax.device_get(run_epoch(epoch, use_ct))
        elapsed = time.perf_counter() - t0
        logs = _epoch_logs(metrics, accuracies, epoch, elapsed)
        for i, log in enumerate(logs):
            histories[i].append(log)
            if log["nonfinite"]:
                warnings.warn(f"{names[i]}: epoch {epoch + 1}: {log['nonfinite']} updates skipped because the loss "
                              "was not finite", RuntimeWarning, stacklevel=3)
            why = None if i in diverged else _divergence(log["loss"], histories[i][0]["loss"], float(bounds[i]))
            if why is not None:
                _warn_divergence(names[i], epoch + 1, why)
                diverged.add(i)
        if on_epoch is not None:
            on_epoch(epoch, logs)
        if shown is not None:
            mean = {name: float(np.mean([log[name] for log in logs])) for name in logs[0]}
            shown.update(epoch + 1, _postfix(mean), f"{elapsed:.2f} s/epoch")
    if shown is not None:
        shown.close()


def fit(state: TrainState, dataset, config: TrainConfig, *, constraints: cons.Constraints | None = None,
        workdir: str | None = None, mesh: Mesh | None = None, progress: bool | TextIO = True, aux=None,
        log_fn: Callable[[dict], None] | None = None) -> tuple[TrainState, list[dict]]:
    """Returns (trained state, per-epoch logs) after `config.epochs` epochs on `dataset`.

    The λ's and the optimiser are the state's (`create_train_state`). Each epoch is one compiled
    `lax.scan`. With a `workdir`, the run's identity goes to workdir/run.json, logs to
    workdir/history.jsonl and an orbax checkpoint is written every `config.checkpoint_every` epochs
    and at the end; a later call with the same workdir resumes from the newest intact checkpoint and
    continues bit-identically, and a call for a different run (other config, λ's, optimiser, model,
    data or seed) is refused with the fields that differ. While a run holds a workdir it is locked
    (workdir/ctrain.lock): another process asking for it is refused with `checkpoint.WorkdirLockedError`,
    and a lock left by a process that died is taken over with a warning. With a `mesh`, batches are split
    across its devices and the state is replicated (data parallel); each device runs its own searches.
    `progress`: True shows it on stderr, a text stream shows it there, False hides it; on a terminal it is a
    tqdm bar, elsewhere (a log file, a pipe) about `ctrain.progress.PLAIN_LINES` plain lines per run.
    """
    config, constraints, pool = _prepare_run(state, dataset, config, constraints)
    if config.amortised and state.chains is None:
        state = with_chains(state, config, dataset.x_train)
    key = jax.random.key(config.seed)

    start_epoch, history = 0, []
    manager = lock = None
    try:
        if workdir:
            workdir = checkpoint.resolve_workdir(workdir)
            # Multi-host runs share one workdir: process 0 claims it for all of them.
            if jax.process_index() == 0:
                lock = checkpoint.WorkdirLock(workdir).acquire()
            manager = checkpoint.Manager(workdir)
            identity = checkpoint.run_identity(state, dataset, config, constraints, aux)
            latest = manager.latest_epoch()
            if latest is not None:
                recorded = manager.recorded_identity()
                if recorded is None:
                    raise checkpoint.RunMismatchError(
                        f"{workdir} holds checkpoints but no {checkpoint.RUN_FILE}, so it cannot tell which run "
                        f"wrote them; use another workdir, or delete {workdir} to start over")
                checkpoint.check_same_run(recorded, identity, workdir)
                state, start_epoch, history = manager.restore(state)
                checkpoint.check_continuation(recorded, identity, start_epoch, workdir)
            manager.write_identity(identity)
        return _fit_loop(state, dataset, config, constraints, pool, key, start_epoch, history, manager, mesh,
                         progress, aux, log_fn)
    finally:  # also on KeyboardInterrupt: a workdir left locked would refuse the next run until it is found stale
        try:
            if manager is not None:
                manager.close()
        finally:
            if lock is not None:
                lock.release()


def _fit_loop(state, dataset, config, constraints, pool, key, start_epoch, history, manager, mesh, progress, aux,
              log_fn):
    state = jax.tree.map(jnp.copy, state)  # the epoch donates its input: never consume the caller's arrays
    splits = _device_splits(dataset)
    x_dev, y_dev = splits["train"]
    if mesh is not None:
        sharding.check_divisible({"batch_size": config.batch_size, "ce_per_batch": config.ce_per_batch or 0}, mesh)
        state, pool, x_dev, y_dev = sharding.replicate((state, pool, x_dev, y_dev), mesh)
    epoch_fn = jax.jit(make_train_epoch(config, constraints, aux, mesh=mesh), static_argnums=(6,),
                       donate_argnums=(0,))
    accuracy = jax.jit(_accuracy_fn(state.apply_fn))

    def run_epoch(epoch, use_ct):
        nonlocal state
        state, metrics = epoch_fn(state, x_dev, y_dev, pool, key, epoch, use_ct)
        accuracies = _accuracies(accuracy, _inference_params(state), splits)
        return jax.tree.map(lambda a: a[None], (metrics, accuracies))  # one run: a run axis of 1

    def on_epoch(epoch, logs):
        if log_fn is not None:
            log_fn(logs[0])
        if manager is not None:
            if jax.process_index() == 0:  # multi-host: one writer; orbax coordinates the checkpoint itself
                manager.write_history(history)  # rewritten whole, atomically: resume-safe
            last = epoch + 1 == config.epochs
            if last or (config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0):
                manager.save(state, epoch + 1, history)

    shown = progress_display(progress, config.epochs, f"{dataset.name}/{config.objective}", initial=start_epoch)
    _run_epochs(run_epoch, config, [history], start_epoch, names=[f"{dataset.name}/{config.objective}"],
                bounds=[divergence_bound(dataset.num_classes, state.weights)], shown=shown, on_epoch=on_epoch)
    return state, history


# --------------------------------------------------------------------------------------------------
# Many runs in one program


def create_train_states(apply_fn, params, *, weights: LossWeights | None = None, learning_rate=None,
                        tx: optax.GradientTransformation | None = None, rng=None) -> TrainState:
    """Returns K TrainStates stacked on a leading axis, for params whose leaves have a leading axis K.

    `weights` may hold per-run λ's as (K,) arrays (e.g. a λ_reg grid) and `learning_rate` may be a (K,)
    array (Adam only); scalars apply to every run. For a stateful model `params` are its stacked full
    variables; `model_state` and `rng` get the leading run axis too (`rng`: one key, whose run index is
    folded in per run, or K keys; default key 0).
    """
    k = jax.tree.leaves(params)[0].shape[0]
    params, model_state, rng = _split_model(apply_fn, params, rng, k)
    weights = check_loss_weights(LossWeights() if weights is None else weights)
    for name, w in dataclasses.asdict(weights).items():
        if np.ndim(w) == 1 and np.shape(w)[0] != k:
            raise ValueError(f"λ_{name} has {np.shape(w)[0]} values for {k} stacked runs")
    weights = jax.tree.map(lambda w: jnp.broadcast_to(w, (k,)), weights)
    tx, lr = _optimizer(tx, learning_rate)
    opt_state = jax.vmap(tx.init)(params)
    if lr is not None:
        lr = jnp.broadcast_to(jnp.asarray(_check_learning_rate(lr, k), jnp.float32), (k,))
        opt_state = _set_learning_rate(opt_state, lr)
    return TrainState(step=jnp.zeros((k,), jnp.int32), params=params, opt_state=opt_state,
                      weights=weights, skipped=jnp.zeros((k,), jnp.int32), apply_fn=apply_fn, tx=tx,
                      model_state=model_state, rng=rng)


def stack_states(states) -> TrainState:
    """Returns the K TrainStates of a sequence stacked on a leading run axis (K, ...), the input of `fit_many`.

    They must share one model (`apply_fn`) and optimiser (`tx`) and have equal shapes, e.g. one
    `create_train_state` per seed's initial parameters, each with its own λ's and learning rate. `unstack_state`
    gives run i back.
    """
    states = list(states)
    if not states or not all(isinstance(s, TrainState) for s in states):
        raise TypeError("stack_states takes a non-empty sequence of TrainStates (one per run)")
    if any(np.ndim(s.step) for s in states):
        raise ValueError("stack_states takes single-run states; these are stacked already")
    first = states[0]
    for i, s in enumerate(states[1:], 1):
        if s.apply_fn != first.apply_fn or s.tx != first.tx:
            raise ValueError(f"state {i} has another model or optimiser than state 0: fit_many trains one program, "
                             "so every run must share apply_fn and tx (build each with the same ones)")
        if jax.tree.structure(s) != jax.tree.structure(first) or any(
                np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(first))):
            raise ValueError(f"state {i} differs from state 0 in its tree or shapes: stacked runs must have the same "
                             "parameter shapes and state fields")
    return jax.tree.map(lambda *a: jnp.stack(a), *states)


def unstack_state(states: TrainState, i: int) -> TrainState:
    """Returns run i of K stacked TrainStates (the leading run axis dropped)."""
    return jax.tree.map(lambda a: a[i], states)


def _split_runs(tree, size: int) -> list:
    """Returns `tree` (leading run axis K) as fresh chunks of `size` runs, the last padded by repeating run K − 1."""
    k = jax.tree.leaves(tree)[0].shape[0]
    n = -(-k // size)
    pad = n * size - k

    def chunk(a, i):
        part = a[i * size: min((i + 1) * size, k)]
        if i == n - 1 and pad:  # every chunk has one shape, so the program compiles once
            part = jnp.concatenate([part, jnp.repeat(a[-1:], pad, axis=0)])
        return jnp.copy(part)  # fresh buffers: the epoch donates its chunk, never the caller's arrays

    return [jax.tree.map(lambda a, i=i: chunk(a, i), tree) for i in range(n)]


def _join_runs(chunks: list, k: int):
    """Returns the chunks of `_split_runs` joined back along the run axis, padding dropped: leading axis k."""
    return jax.tree.map(lambda *parts: jnp.concatenate(parts)[:k], *chunks)


def _free_device_bytes() -> int | None:
    """Returns the bytes still free on the first local device, or None where the backend does not say (CPU)."""
    stats = jax.local_devices()[0].memory_stats()
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))


def _program_bytes(compiled) -> int:
    """Returns the device bytes a compiled program needs: arguments, outputs (less donated ones) and scratch."""
    m = compiled.memory_analysis()
    if m is None:
        return 0
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def runs_per_program(k: int, program_bytes: Callable[[int], int], free_bytes: int | None,
                     margin: float = 0.9) -> int:
    """Returns how many of k runs one program takes: k, halved (rounded up) until program_bytes(c) fits.

    A program fits in margin·free_bytes; with free_bytes None (the backend reports no memory limit, e.g. CPU)
    all k runs go in one program.
    """
    c = k
    if free_bytes is None:
        return c
    while c > 1 and program_bytes(c) > margin * free_bytes:
        c = -(-c // 2)
    return c


def fit_many(states: TrainState, dataset, config: TrainConfig, *, seeds, constraints: cons.Constraints | None = None,
             progress: bool | TextIO = True, aux=None,
             max_runs_per_program: int | None = None) -> tuple[TrainState, list[list[dict]]]:
    """Returns (K trained states, K per-epoch log lists): K runs trained as one vmapped, compiled program.

    Run k uses data/search seed `seeds[k]` and the k-th slice of `states` (its params, λ's and learning
    rate); its result equals `fit(state_k, dataset, config.replace(seed=seeds[k]))` up to float rounding.

    `max_runs_per_program` caps the runs one compiled program trains at once: the K runs are split into chunks
    of that many (the last padded), and every epoch runs each chunk in turn, so progress and logs stay per
    epoch. None (default) puts all K in one program unless the device reports a memory limit (GPU, TPU) and the
    compiled program would not fit in 90% of its free memory (read from XLA's memory analysis of the program);
    then K is halved until it fits. `progress` is as in `fit`.
    """
    seeds = [int(s) for s in seeds]
    k = len(seeds)
    if k == 0:
        raise ValueError("fit_many needs at least one run: seeds is empty (give one seed per stacked state)")
    if np.ndim(states.step) != 1:
        raise ValueError("fit_many needs stacked states with a leading run axis: build them with create_train_states or "
                         "stack_states")
    if jax.tree.leaves(states.params)[0].shape[0] != k:
        raise ValueError(f"{k} seeds given for {jax.tree.leaves(states.params)[0].shape[0]} stacked states")
    if max_runs_per_program is not None and (isinstance(max_runs_per_program, bool) or not isinstance(
            max_runs_per_program, (int, np.integer)) or max_runs_per_program < 1):
        raise ValueError(f"max_runs_per_program must be an integer >= 1 or None, got {max_runs_per_program!r}")
    config, constraints, pool = _prepare_run(states, dataset, config, constraints)
    if config.amortised and states.chains is None:
        states = with_chains(states, config, dataset.x_train)  # each run its own chains, on the leading run axis
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    splits = _device_splits(dataset)
    x_dev, y_dev = splits["train"]
    epoch = make_train_epoch(config, constraints, aux)
    jitted = {use_ct: jax.jit(jax.vmap(lambda s, kk, e, u=use_ct: epoch(s, x_dev, y_dev, pool, kk, e, u),
                                       in_axes=(0, 0, None)), donate_argnums=(0,)) for use_ct in (False, True)}
    compiled: dict[tuple[bool, int], Any] = {}

    def program(use_ct: bool, c: int):
        # Compiled ahead of time, so the memory estimate and the training share one compilation.
        if (use_ct, c) not in compiled:
            shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct((c,) + a.shape[1:], a.dtype,
                                                                 weak_type=getattr(a, "weak_type", False)),
                                  (states, keys))
            compiled[use_ct, c] = jitted[use_ct].lower(*shapes, 0).compile()
        return compiled[use_ct, c]

    # The CT program is the larger one: if any epoch trains CT, it is the one that must fit.
    largest = config.needs_counterfactuals and config.burnin_epochs < config.epochs
    size = max_runs_per_program or runs_per_program(k, lambda c: _program_bytes(program(largest, c)),
                                                    _free_device_bytes())
    size = min(size, k)
    chunks, chunk_keys = _split_runs(states, size), _split_runs(keys, size)
    accuracy = jax.jit(jax.vmap(_accuracy_fn(states.apply_fn), in_axes=(0, None, None)))

    def run_epoch(e, use_ct):
        parts, accs = [], []
        for i, chunk in enumerate(chunks):
            chunks[i], metrics = program(use_ct, size)(chunk, chunk_keys[i], e)
            parts.append(metrics)
            accs.append(_accuracies(accuracy, _inference_params(chunks[i]), splits))
        join = lambda *a: jnp.concatenate(a)[:k]  # the last chunk's padding runs dropped
        return jax.tree.map(join, *parts), jax.tree.map(join, *accs)

    histories: list[list[dict]] = [[] for _ in range(k)]
    desc = f"{dataset.name}/{config.objective} x{k}" + (f" ({len(chunks)} programs of {size})" if len(chunks) > 1
                                                        else "")
    shown = progress_display(progress, config.epochs, desc)
    bounds = np.broadcast_to(divergence_bound(dataset.num_classes, states.weights), (k,))
    _run_epochs(run_epoch, config, histories, 0, shown=shown, bounds=bounds,
                names=[f"{dataset.name}/{config.objective} run {i} (seed {seeds[i]})" for i in range(k)])
    return _join_runs(chunks, k), histories
