"""Training: the `TrainState` pytree, one jit-compiled `train_step`, whole-epoch scans and the `fit` loop.

`make_train_step(config, constraints)` returns a pure `step(state, batch, key) -> (state, metrics)`:
for objective "vanilla" it is plain cross-entropy training (the baseline, BL); otherwise the same
step also draws factuals, searches their counterfactuals and applies the composite loss (CT and its
ablations), all inside one `jax.jit`. Researchers can call the step in their own loops; `fit` is the
ready loop with progress bar, per-epoch logs, checkpoints and resume.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ctrain import constraints as cons
from ctrain.objective import (CounterfactualBatch, LossWeights, PositivePool, composite_loss,
                              make_counterfactual_batch, objective_weights, positive_pool)
from ctrain.search import SearchConfig


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; `apply_fn` and `tx` are static (not pytree leaves)."""

    step: jax.Array  # () int32, number of steps taken (skipped ones included)
    params: Any
    opt_state: Any
    weights: LossWeights  # λ's as leaves, so K runs with different λ can be vmapped
    skipped: jax.Array  # () int32, updates skipped because the loss or a gradient was not finite
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def create_train_state(apply_fn, params, *, tx: optax.GradientTransformation | None = None,
                       learning_rate: float = 1e-3, weights: LossWeights | None = None) -> TrainState:
    """Returns a fresh TrainState (Adam(learning_rate) unless `tx` is given)."""
    tx = optax.adam(learning_rate) if tx is None else tx
    weights = LossWeights() if weights is None else weights
    weights = jax.tree.map(lambda w: jnp.asarray(w, jnp.float32), weights)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), weights=weights,
                      skipped=jnp.zeros((), jnp.int32), apply_fn=apply_fn, tx=tx)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Static settings of a training run (hashable). Defaults: the paper's CT with the reference's choices.

    n_ce is the number of counterfactuals per epoch; each step uses ceil(n_ce / batches) of them.
    schedule "per_epoch" (reference) searches them all at the start of the epoch with frozen
    parameters; "per_batch" searches fresh ones from each batch inside the step.
    """

    objective: str = "full"
    search: SearchConfig = SearchConfig()
    lambda_clf: float = 1.0
    lambda_div: float = 0.5
    lambda_reg: float = 0.1
    lambda_adv: float = 0.25
    n_ce: int = 1000
    ce_per_batch: int | None = None  # set by `fit`; None inside a bare step means "the whole batch"
    schedule: str = "per_epoch"
    burnin: float = 0.0
    epochs: int = 100
    batch_size: int = 30
    learning_rate: float = 1e-3
    shuffle: bool = False  # the reference iterates batches in a fixed order
    seed: int = 0
    checkpoint_every: int = 0  # epochs; 0 = only at the end (when a workdir is given)

    def __post_init__(self):
        from ctrain.objective import OBJECTIVES
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose from {OBJECTIVES}")
        if self.schedule not in ("per_epoch", "per_batch"):
            raise ValueError(f"schedule must be 'per_epoch' or 'per_batch', got {self.schedule!r}")
        if not 0.0 <= self.burnin < 1.0:
            raise ValueError(f"burnin must be in [0, 1), got {self.burnin}")
        for name in ("epochs", "batch_size", "n_ce"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ce_per_batch is not None and self.ce_per_batch < 1:
            raise ValueError(f"ce_per_batch must be >= 1, got {self.ce_per_batch}")

    @property
    def needs_counterfactuals(self) -> bool:
        return self.objective != "vanilla"

    def loss_weights(self) -> LossWeights:
        return LossWeights(clf=self.lambda_clf, div=self.lambda_div, reg=self.lambda_reg, adv=self.lambda_adv)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]))


def apply_loss(state: TrainState, x, y, cf: CounterfactualBatch | None, objective: str):
    """Returns (new state, metrics) after one optax update on the composite loss; non-finite updates are skipped."""
    weights = objective_weights(objective, state.weights)
    grad_fn = jax.value_and_grad(composite_loss, has_aux=True)
    (loss, terms), grads = grad_fn(state.params, state.apply_fn, x, y, cf, weights)
    finite = jnp.isfinite(loss) & _all_finite(grads)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jnp.where(finite, new, old)
    state = state.replace(step=state.step + 1, params=jax.tree.map(keep, params, state.params),
                          opt_state=jax.tree.map(keep, opt_state, state.opt_state),
                          skipped=state.skipped + (~finite).astype(jnp.int32))
    metrics = {"loss": loss, **terms, "nonfinite": (~finite).astype(jnp.int32)}
    if cf is not None:
        metrics.update(converged=cf.converged.mean(), search_steps=cf.steps.mean(), ae_moved=cf.ae_moved.mean(),
                       cf_in_ball=cf.cf_in_ball.mean())
    return state, metrics


def make_train_step(config: TrainConfig = TrainConfig(), constraints: cons.Constraints | None = None, aux=None):
    """Returns the pure `step(state, batch, key) -> (state, metrics)` for `config.objective`.

    batch: {"x": (B, D), "y": (B,)} plus, for the CT objectives, either "cf" (a precomputed
    CounterfactualBatch, per-epoch schedule) or "pool" (a PositivePool to draw x⁺ from, per-batch
    schedule: factuals are drawn from the batch and searched inside the step).
    """

    def step(state: TrainState, batch: dict, key: jax.Array | None = None):
        x, y = batch["x"], batch["y"]
        if x.ndim != 2 or y.shape != x.shape[:1]:
            raise ValueError(f"batch x must be (B, D) and y (B,), got {x.shape} and {y.shape}")
        cf = None
        if config.needs_counterfactuals:
            cf = batch.get("cf")
            if cf is None:
                if "pool" not in batch or key is None:
                    raise ValueError(f"objective {config.objective!r} needs batch['cf'], or batch['pool'] and a key")
                m = min(config.ce_per_batch or x.shape[0], x.shape[0])
                f_key, s_key = jax.random.split(key)
                idx = jax.random.choice(f_key, x.shape[0], (m,), replace=False)
                cf = make_counterfactual_batch(state.apply_fn, state.params, x[idx], y[idx], batch["pool"], s_key,
                                               config.search, constraints, aux)
        return apply_loss(state, x, y, cf, config.objective)

    return step


train_step = jax.jit(make_train_step(TrainConfig(objective="vanilla")), donate_argnums=(0,))
train_step.__doc__ = "Returns (state, metrics) after one jitted vanilla cross-entropy step on batch {'x', 'y'}."


# --------------------------------------------------------------------------------------------------
# Whole epochs


def epoch_order(key: jax.Array, n: int, batch_size: int, shuffle: bool) -> jax.Array:
    """Returns (n // batch_size, batch_size) training indices for one epoch; the remainder is dropped."""
    order = jax.random.permutation(key, n) if shuffle else jnp.arange(n)
    nb = n // batch_size  # every step has the same shape, so the epoch compiles once
    return order[: nb * batch_size].reshape(nb, batch_size)


def epoch_counterfactuals(state: TrainState, x_train, y_train, pool: PositivePool, key: jax.Array,
                          config: TrainConfig, n_batches: int, constraints=None, aux=None) -> CounterfactualBatch:
    """Returns a CounterfactualBatch with leading axes (n_batches, m): the epoch's searches, with frozen params."""
    m = config.ce_per_batch
    f_key, s_key = jax.random.split(key)
    n = x_train.shape[0]
    idx = jax.random.choice(f_key, n, (n_batches * m,), replace=n_batches * m > n)
    cf = make_counterfactual_batch(state.apply_fn, state.params, x_train[idx], y_train[idx], pool, s_key,
                                   config.search, constraints, aux)
    return jax.tree.map(lambda a: a.reshape((n_batches, m) + a.shape[1:]), cf)


def make_train_epoch(config: TrainConfig, constraints: cons.Constraints | None = None, aux=None,
                     batch_sharding: NamedSharding | None = None):
    """Returns pure `epoch(state, x_train, y_train, pool, key, epoch, use_ct) -> (state, stacked metrics)`.

    One epoch is one `lax.scan` over its steps, with the batches gathered on device from the full
    training arrays (no host round-trip). The batch order depends only on (key, epoch). `use_ct` is
    static: False runs the vanilla step (burn-in epochs), True the configured objective. With
    `batch_sharding` (e.g. NamedSharding(mesh, P(None, "data"))) every step's batch is split across devices.
    """
    ct_step = make_train_step(config, constraints, aux)
    vanilla_step = make_train_step(config.replace(objective="vanilla"))
    constrain = (lambda a: jax.lax.with_sharding_constraint(a, batch_sharding)) if batch_sharding else (lambda a: a)

    def epoch(state: TrainState, x_train, y_train, pool: PositivePool, key: jax.Array, epoch_index, use_ct: bool):
        epoch_key = jax.random.fold_in(key, epoch_index)
        order_key, cf_key, step_key = jax.random.split(epoch_key, 3)
        idx = epoch_order(order_key, x_train.shape[0], config.batch_size, config.shuffle)
        xs, ys = constrain(x_train[idx]), constrain(y_train[idx])
        nb = xs.shape[0]
        if not use_ct:
            return jax.lax.scan(lambda s, b: vanilla_step(s, {"x": b[0], "y": b[1]}), state, (xs, ys))
        if config.schedule == "per_batch":
            keys = jax.random.split(step_key, nb)
            body = lambda s, b: ct_step(s, {"x": b[0], "y": b[1], "pool": pool}, b[2])
            return jax.lax.scan(body, state, (xs, ys, keys))
        # One search for the whole epoch on the parameters as they stand at its start (reference schedule).
        cfs = jax.tree.map(constrain, epoch_counterfactuals(state, x_train, y_train, pool, cf_key, config, nb,
                                                            constraints, aux))
        body = lambda s, b: ct_step(s, {"x": b[0], "y": b[1], "cf": b[2]})
        return jax.lax.scan(body, state, (xs, ys, cfs))

    return epoch


# --------------------------------------------------------------------------------------------------
# Data parallelism


def data_mesh(devices=None) -> Mesh:
    """Returns a 1-D Mesh named "data" over the given (default: all local) devices, with Auto axis semantics."""
    # Mesh(...) defaults to Auto axes; jax.make_mesh defaults to Explicit ones, which break a
    # data-parallel step whose params are not sharded ("Contracting dimensions are sharded").
    return Mesh(np.array(jax.devices() if devices is None else devices), ("data",))


def replicate(tree, mesh: Mesh):
    """Returns `tree` with every array placed on every device of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch, mesh: Mesh, axis: int = 0):
    """Returns `batch` with every array split along `axis` across the mesh's "data" devices."""
    n = mesh.devices.size

    def put(a):
        if a.shape[axis] % n:
            raise ValueError(f"a batch dimension of {a.shape[axis]} does not split evenly over {n} devices; "
                             f"choose batch_size and ce_per_batch as multiples of {n}")
        spec = P(*([None] * axis + ["data"]))
        return jax.device_put(a, NamedSharding(mesh, spec))

    return jax.tree.map(put, batch)


# --------------------------------------------------------------------------------------------------
# The ready loop


def _epoch_log(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        v = np.asarray(v)
        out[k] = int(v.sum()) if k == "nonfinite" else float(v.mean())
    return out


def _prepare_run(dataset, config: TrainConfig, constraints):
    """Returns (config with ce_per_batch set, constraints, PositivePool) after checking the training data."""
    if not np.all(np.isfinite(dataset.x_train)):
        raise ValueError(f"{dataset.name}: training inputs contain NaN/inf; clean them before training")
    n_batches = len(dataset.x_train) // config.batch_size
    if n_batches < 1:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(dataset.x_train)} training samples")
    if config.needs_counterfactuals:
        constraints = dataset.constraints() if constraints is None else constraints
        if config.ce_per_batch is None:
            config = config.replace(ce_per_batch=math.ceil(config.n_ce / n_batches))
    return config, constraints, positive_pool(dataset.x_train, dataset.y_train, dataset.num_classes)


def _accuracies(accuracy_fn, params, dataset) -> dict[str, jax.Array]:
    """Returns {"<split>_accuracy": accuracy_fn(params, x, y)} for the non-empty splits."""
    return {f"{split}_accuracy": accuracy_fn(params, getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}"))
            for split in ("train", "val", "test") if len(getattr(dataset, f"x_{split}"))}


def _accuracy_fn(apply_fn):
    return lambda p, x, y: jnp.mean(jnp.argmax(apply_fn(p, x), -1) == y)


def fit(state: TrainState, dataset, config: TrainConfig, *, constraints: cons.Constraints | None = None,
        workdir: str | None = None, mesh: Mesh | None = None, progress: bool = True, aux=None,
        log_fn: Callable[[dict], None] | None = None) -> tuple[TrainState, list[dict]]:
    """Returns (trained state, per-epoch logs) after `config.epochs` epochs on `dataset`.

    Each epoch is one compiled `lax.scan`. With a `workdir`, logs go to workdir/history.jsonl and an
    orbax checkpoint is written every `config.checkpoint_every` epochs and at the end; a later call with
    the same workdir resumes from the last checkpoint and continues bit-identically. With a `mesh`,
    batches are split across its devices and the state is replicated (data parallel).
    """
    from ctrain import checkpoint

    config, constraints, pool = _prepare_run(dataset, config, constraints)
    burnin_epochs = round(config.burnin * config.epochs)
    key = jax.random.key(config.seed)

    start_epoch, history = 0, []
    manager = checkpoint.Manager(workdir) if workdir else None
    if manager is not None and manager.latest_epoch() is not None:
        state, start_epoch, history = manager.restore(state)
    state = jax.tree.map(jnp.copy, state)  # the epoch donates its input: never consume the caller's arrays
    x_dev, y_dev = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    batch_sharding = None
    if mesh is not None:
        for name, size in (("batch_size", config.batch_size), ("ce_per_batch", config.ce_per_batch or 0)):
            if size % mesh.devices.size:
                raise ValueError(f"{name}={size} does not split evenly over {mesh.devices.size} devices")
        state, pool, x_dev, y_dev = replicate((state, pool, x_dev, y_dev), mesh)
        batch_sharding = NamedSharding(mesh, P(None, "data"))
    epoch_fn = jax.jit(make_train_epoch(config, constraints, aux, batch_sharding), static_argnums=(6,),
                       donate_argnums=(0,))
    accuracy = jax.jit(_accuracy_fn(state.apply_fn))

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.epochs, initial=start_epoch, desc=f"{dataset.name}/{config.objective}", unit="epoch")
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        use_ct = config.needs_counterfactuals and epoch >= burnin_epochs
        state, metrics = epoch_fn(state, x_dev, y_dev, pool, key, epoch, use_ct)
        log = {"epoch": epoch + 1, **_epoch_log(metrics)}
        log.update({k: float(v) for k, v in _accuracies(accuracy, state.params, dataset).items()})
        log["time_s"] = time.perf_counter() - t0
        history.append(log)
        if log["nonfinite"]:
            import warnings
            warnings.warn(f"epoch {epoch + 1}: {log['nonfinite']} updates skipped because the loss was not finite")
        if log_fn is not None:
            log_fn(log)
        if manager is not None:
            if jax.process_index() == 0:  # multi-host: one writer; orbax coordinates the checkpoint itself
                with open(os.path.join(workdir, "history.jsonl"), "w") as f:  # rewritten whole: resume-safe
                    f.writelines(json.dumps(h) + "\n" for h in history)
            last = epoch + 1 == config.epochs
            if last or (config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0):
                manager.save(state, epoch + 1, history)
        if bar is not None:
            bar.set_postfix(loss=f"{log['loss']:.3f}", test_acc=f"{log['test_accuracy']:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    if manager is not None:
        manager.close()
    return state, history


# --------------------------------------------------------------------------------------------------
# Many runs in one program


def create_train_states(apply_fn, params, *, tx: optax.GradientTransformation | None = None,
                        learning_rate: float = 1e-3, weights: LossWeights | None = None) -> TrainState:
    """Returns K TrainStates stacked on a leading axis, for params whose leaves have a leading axis K.

    `weights` may hold per-run λ's as (K,) arrays (e.g. a λ_reg grid); scalars apply to every run.
    """
    k = jax.tree.leaves(params)[0].shape[0]
    tx = optax.adam(learning_rate) if tx is None else tx
    weights = LossWeights() if weights is None else weights
    weights = jax.tree.map(lambda w: jnp.broadcast_to(jnp.asarray(w, jnp.float32), (k,)), weights)
    return TrainState(step=jnp.zeros((k,), jnp.int32), params=params, opt_state=jax.vmap(tx.init)(params),
                      weights=weights, skipped=jnp.zeros((k,), jnp.int32), apply_fn=apply_fn, tx=tx)


def fit_many(states: TrainState, dataset, config: TrainConfig, *, seeds, constraints: cons.Constraints | None = None,
             progress: bool = True, aux=None) -> tuple[TrainState, list[list[dict]]]:
    """Returns (K trained states, K per-epoch log lists): K runs trained as one vmapped, compiled program.

    Run k uses data/search seed `seeds[k]` and the k-th slice of `states`; its result equals
    `fit(state_k, dataset, config.replace(seed=seeds[k]))` up to float rounding.
    """
    seeds = [int(s) for s in seeds]
    k = len(seeds)
    if jax.tree.leaves(states.params)[0].shape[0] != k:
        raise ValueError(f"{k} seeds given for {jax.tree.leaves(states.params)[0].shape[0]} stacked states")
    config, constraints, pool = _prepare_run(dataset, config, constraints)
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    states = jax.tree.map(jnp.copy, states)  # the epoch donates its input: never consume the caller's arrays
    x_dev, y_dev = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    epoch = make_train_epoch(config, constraints, aux)
    epoch_fns = {use_ct: jax.jit(jax.vmap(lambda s, kk, e, u=use_ct: epoch(s, x_dev, y_dev, pool, kk, e, u),
                                          in_axes=(0, 0, None)), donate_argnums=(0,)) for use_ct in (False, True)}
    accuracy = jax.jit(jax.vmap(_accuracy_fn(states.apply_fn), in_axes=(0, None, None)))
    burnin_epochs = round(config.burnin * config.epochs)
    histories: list[list[dict]] = [[] for _ in range(k)]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.epochs, desc=f"{dataset.name}/{config.objective} x{k}", unit="epoch")
    for e in range(config.epochs):
        t0 = time.perf_counter()
        use_ct = config.needs_counterfactuals and e >= burnin_epochs
        states, metrics = epoch_fns[use_ct](states, keys, e)
        accs = {name: np.asarray(v) for name, v in _accuracies(accuracy, states.params, dataset).items()}
        elapsed = time.perf_counter() - t0
        for i in range(k):
            log = {"epoch": e + 1, **_epoch_log({m: v[i] for m, v in metrics.items()})}
            log.update({name: float(v[i]) for name, v in accs.items()}, time_s=elapsed / k)
            histories[i].append(log)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return states, histories
