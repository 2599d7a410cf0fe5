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
from ctrain.search import SearchConfig, predict


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


def epoch_batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int, epoch: int, shuffle: bool):
    """Returns (xs (nb, B, D), ys (nb, B)): the epoch's batches stacked; order depends only on (seed, epoch)."""
    n = len(x)
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training samples")
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    nb = n // batch_size  # the remainder is dropped so every step has the same shape (one compile)
    idx = order[: nb * batch_size].reshape(nb, batch_size)
    return x[idx], y[idx]


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


def make_train_epoch(config: TrainConfig, constraints: cons.Constraints | None = None, aux=None):
    """Returns pure `epoch(state, xs, ys, pool, key, use_ct) -> (state, stacked metrics)`, one `lax.scan` of steps.

    `use_ct` is static: False runs the vanilla step (burn-in epochs), True the configured objective.
    """
    ct_step = make_train_step(config, constraints, aux)
    vanilla_step = make_train_step(config.replace(objective="vanilla"))

    def epoch(state: TrainState, xs, ys, pool: PositivePool, key: jax.Array, use_ct: bool):
        nb = xs.shape[0]
        step_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(nb))
        if not use_ct:
            body = lambda s, inp: vanilla_step(s, {"x": inp[0], "y": inp[1]})
            return jax.lax.scan(body, state, (xs, ys))
        if config.schedule == "per_batch":
            body = lambda s, inp: ct_step(s, {"x": inp[0], "y": inp[1], "pool": pool}, inp[2])
            return jax.lax.scan(body, state, (xs, ys, step_keys))
        # One search for the whole epoch on the parameters as they stand at its start (reference schedule).
        cfs = epoch_counterfactuals(state, xs.reshape(-1, xs.shape[-1]), ys.reshape(-1), pool,
                                    jax.random.fold_in(key, nb), config, nb, constraints, aux)
        body = lambda s, inp: ct_step(s, {"x": inp[0], "y": inp[1], "cf": inp[2]})
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

    if constraints is None and config.needs_counterfactuals:
        constraints = dataset.constraints()
    x_train, y_train = dataset.x_train, dataset.y_train
    n_batches = len(x_train) // config.batch_size
    if n_batches < 1:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(x_train)} training samples")
    if config.needs_counterfactuals and config.ce_per_batch is None:
        config = config.replace(ce_per_batch=math.ceil(config.n_ce / n_batches))
    pool = positive_pool(x_train, y_train, dataset.num_classes)
    burnin_epochs = round(config.burnin * config.epochs)
    key = jax.random.key(config.seed)

    start_epoch, history = 0, []
    manager = checkpoint.Manager(workdir) if workdir else None
    if manager is not None and manager.latest_epoch() is not None:
        state, start_epoch, history = manager.restore(state)
    if mesh is not None:
        state, pool = replicate(state, mesh), replicate(pool, mesh)
    epoch_fn = jax.jit(make_train_epoch(config, constraints, aux), static_argnums=(5,), donate_argnums=(0,))

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.epochs, initial=start_epoch, desc=f"{dataset.name}/{config.objective}", unit="epoch")
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        xs, ys = epoch_batches(x_train, y_train, config.batch_size, seed=config.seed, epoch=epoch,
                               shuffle=config.shuffle)
        if not np.all(np.isfinite(xs)):
            raise ValueError(f"epoch {epoch}: training inputs contain NaN/inf")
        batch = (jnp.asarray(xs), jnp.asarray(ys))
        if mesh is not None:
            batch = shard_batch(batch, mesh, axis=1)
        use_ct = config.needs_counterfactuals and epoch >= burnin_epochs
        state, metrics = epoch_fn(state, *batch, pool, jax.random.fold_in(key, epoch), use_ct)
        log = {"epoch": epoch + 1, **_epoch_log(metrics)}
        log["train_accuracy"] = float(np.mean(predict(state.apply_fn, state.params, x_train) == y_train))
        if len(dataset.x_val):
            log["val_accuracy"] = float(np.mean(predict(state.apply_fn, state.params, dataset.x_val) == dataset.y_val))
        log["test_accuracy"] = float(np.mean(predict(state.apply_fn, state.params, dataset.x_test) == dataset.y_test))
        log["time_s"] = time.perf_counter() - t0
        history.append(log)
        if log["nonfinite"]:
            import warnings
            warnings.warn(f"epoch {epoch + 1}: {log['nonfinite']} updates skipped because the loss was not finite")
        if log_fn is not None:
            log_fn(log)
        if manager is not None:
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
