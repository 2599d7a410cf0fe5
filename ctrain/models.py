"""Classifiers as pure `apply_fn(params, x) -> logits` pairs, and models with state and randomness.

Everything downstream (search, objective, train step, metrics) takes `apply_fn(params, x)` with
x of shape (N, D) and logits of shape (N, K), so any JAX model plugs in: Flax linen or nnx,
Equinox, or a plain function of a params pytree.

Models with mutable collections (BatchNorm's `batch_stats`) and RNG streams (dropout) are wrapped in a
`StatefulModuleApply` (`stateful_model(module, num_features, key)`, or `make_model("cnn_bn", ...)`). It is
still a valid `apply_fn(variables, x)` – inference mode, on the full variables (params and statistics) – so
evaluation and `explain` take `(apply_fn, variables)` as for any model; training uses its `.apply(params,
model_state, x, train=True, rng=...)`, which returns the new statistics too. `create_train_state` splits the
variables into the trainable `params` and the `model_state` the optimiser never sees.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def _standardise(x, mean, scale):
    # Constants of the module, not parameters: the model sees (x − μ)/σ of its training data whatever the units.
    if mean is None:
        return x
    return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(scale, x.dtype)


class MLP(nn.Module):
    """Dense ReLU layers of the given widths, then a linear layer to `num_classes` logits.

    With `input_mean`/`input_scale` the inputs are standardised first, so training does not depend on units.
    """

    num_classes: int
    hidden: Sequence[int] = (32,)
    input_mean: tuple[float, ...] | None = None
    input_scale: tuple[float, ...] | None = None

    @nn.compact
    def __call__(self, x):
        x = _standardise(x, self.input_mean, self.input_scale)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class Linear(nn.Module):
    """A single affine map to `num_classes` logits (multinomial logistic regression)."""

    num_classes: int
    input_mean: tuple[float, ...] | None = None
    input_scale: tuple[float, ...] | None = None

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes)(_standardise(x, self.input_mean, self.input_scale))


class LeNet5(nn.Module):
    """LeNet-5 on flattened square images: conv5x5(6) → pool → conv5x5(16) → pool → 120 → 84 → K."""

    num_classes: int
    image_shape: tuple[int, int] = (28, 28)

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[:-1] + tuple(self.image_shape) + (1,))
        x = nn.max_pool(nn.relu(nn.Conv(6, (5, 5), padding="SAME")(x)), (2, 2), strides=(2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x)), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[:-3] + (-1,))
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(self.num_classes)(x)


class CNNBN(nn.Module):
    """A BatchNorm + dropout CNN: x (N, H·W) → [conv3x3, BN, ReLU, pool]×2 → dense → dropout → (N, K) logits.

    `train=True` normalises with the batch's statistics (and updates `batch_stats`) and applies dropout (RNG
    stream "dropout"); `train=False` (the default) uses the running statistics and no dropout.
    """

    num_classes: int
    image_shape: tuple[int, int] = (8, 8)
    features: tuple[int, int] = (16, 32)
    hidden: int = 64
    dropout: float = 0.3
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[:-1] + tuple(self.image_shape) + (1,))
        for width in self.features:
            x = nn.Conv(width, (3, 3), padding="SAME", use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[:-3] + (-1,))
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


MODELS = ("mlp", "linear", "lenet5", "cnn_bn")


def make_model(name: str, num_features: int, num_classes: int, key: jax.Array, *, input_stats=None,
               **kwargs) -> tuple[ApplyFn, Any]:
    """Returns (apply_fn, params) for "mlp", "linear", "lenet5", "cnn_bn"; apply_fn maps (N, D) inputs to (N, K) logits.

    "cnn_bn" (`CNNBN`: BatchNorm and dropout, `image_shape` default (8, 8)) returns a `StatefulModuleApply` and
    its full variables {"params", "batch_stats"}; `create_train_state(apply_fn, variables)` splits them.

    `input_stats=(mean, std)`, each (D,), makes an MLP or linear model standardise its inputs with them
    (e.g. the training split's), so that what it learns does not depend on the units of the features.
    """
    modules = {"mlp": MLP, "linear": Linear, "lenet5": LeNet5, "cnn_bn": CNNBN}
    if name not in modules:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(modules)}")
    if input_stats is not None:
        if name in ("lenet5", "cnn_bn"):
            raise ValueError(f"input_stats applies to 'mlp' and 'linear'; {name} takes pixels as they are")
        mean, std = (np.asarray(v, np.float64).reshape(-1) for v in input_stats)
        if mean.shape != (num_features,) or std.shape != (num_features,) or not np.all(np.isfinite(mean)) \
                or not np.all(np.isfinite(std)) or np.any(std < 0):
            raise ValueError(f"input_stats must be two finite ({num_features},) arrays (mean, std >= 0)")
        std = np.where(std > 0, std, 1.0)  # a constant column is centred, not divided by zero
        kwargs.update(input_mean=tuple(float(v) for v in mean), input_scale=tuple(float(v) for v in std))
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if name in ("lenet5", "cnn_bn"):
        shape = tuple(kwargs.get("image_shape", (28, 28) if name == "lenet5" else (8, 8)))
        if shape[0] * shape[1] != num_features:
            raise ValueError(f"{name} needs {shape[0]}x{shape[1]}={shape[0] * shape[1]} features, got {num_features}")
    module = modules[name](num_classes=num_classes, **kwargs)
    if name == "cnn_bn":
        return stateful_model(module, num_features, key)
    params = module.init(key, jnp.zeros((1, num_features), jnp.float32))
    return ModuleApply(module), params


def check_model(apply_fn, params, num_features: int, num_classes: int | None = None) -> int:
    """Returns K, the number of logits `apply_fn(params, x)` gives for x (N, num_features); raises if it cannot.

    Runs on abstract shapes only (`jax.eval_shape`), so it costs no compilation and also works while tracing.
    Raises a ValueError when the model rejects inputs of that width, returns something other than (N, K)
    logits with K >= 2, or gives K != num_classes.
    """
    probe = jax.ShapeDtypeStruct((2, int(num_features)), jnp.float32)
    try:
        out = jax.eval_shape(apply_fn, params, probe)
    except Exception as err:  # a width mismatch surfaces as whatever the model's first layer raises
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"the model cannot take inputs of {num_features} features (apply_fn failed on shape "
                         f"(2, {num_features}): {first}); check that x has the width the model was built for") from None
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != 2:
        raise ValueError(f"apply_fn(params, x) must return logits of shape (N, K); for x of shape (2, {num_features}) "
                         f"it returned {shape if shape is not None else type(out).__name__}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"apply_fn(params, x) must return floating-point logits, got dtype {out.dtype}")
    k = int(shape[1])
    if k < 2:
        raise ValueError(f"the model returns {k} logit per row; ctrain needs one logit per class (K >= 2), "
                         "e.g. two logits for a binary task")
    if num_classes is not None and k != num_classes:
        raise ValueError(f"the model returns {k} logits per row but the data has {num_classes} classes; "
                         f"build the model with num_classes={num_classes}")
    return k


@dataclasses.dataclass(frozen=True)
class ModuleApply:
    """`apply_fn(params, x)` of a Flax module; equal modules give equal (hashable) functions, so jit reuses compiles."""

    module: nn.Module

    def __call__(self, params, x):
        return self.module.apply(params, x)


def is_stateful(apply_fn) -> bool:
    """Returns True if `apply_fn` is a model with state and randomness (a `StatefulModuleApply` or alike)."""
    return bool(getattr(apply_fn, "stateful", False))


@dataclasses.dataclass(frozen=True)
class StatefulModuleApply:
    """A Flax module with mutable collections (e.g. BatchNorm's "batch_stats") and RNG streams (e.g. "dropout").

    Called as `apply_fn(variables, x)` it is the inference-mode model (running statistics, no dropout) on the
    full variables {"params", "batch_stats", ...}: (N, D) → (N, K) logits, usable wherever a pure apply_fn is.
    The module takes a boolean keyword `train_arg` (default "train"). Equal modules give equal (hashable)
    objects, so jit reuses compiles. Any object with the attributes `stateful = True`, `mutable`,
    `split(variables)`, `variables(params, model_state)`, `apply(...)` and `__call__(variables, x)` can stand in.
    """

    module: nn.Module
    mutable: tuple[str, ...] = ("batch_stats",)
    rngs: tuple[str, ...] = ("dropout",)
    train_arg: str = "train"
    stateful = True  # class attribute, not a field

    def __call__(self, variables, x):
        """Returns (N, K) inference-mode logits of x (N, D) for the full variables (params and model state)."""
        missing = [c for c in self.mutable if c not in variables]
        if missing:
            raise ValueError(f"this model needs its {missing} as well as its params: call it with the full variables "
                             "(ctrain.train.inference_model(state) returns (apply_fn, variables))")
        return self.module.apply(variables, x, **{self.train_arg: False})

    def split(self, variables) -> tuple[Any, Any]:
        """Returns (params, model_state): the variables' trainable collections and its mutable ones (dicts)."""
        params = {k: v for k, v in variables.items() if k not in self.mutable}
        state = {k: v for k, v in variables.items() if k in self.mutable}
        return params, state

    def variables(self, params, model_state) -> dict:
        """Returns the full variables dict {**params, **model_state} that `__call__` and `module.apply` take."""
        return {**params, **model_state}

    def apply(self, params, model_state, x, *, train: bool, rng: jax.Array | None = None) -> tuple[jax.Array, Any]:
        """Returns ((N, K) logits, new model_state); train=True uses batch statistics and the RNG streams of `rng`."""
        variables = self.variables(params, model_state)
        if not train:
            return self.module.apply(variables, x, **{self.train_arg: False}), model_state
        if rng is None and self.rngs:
            raise ValueError(f"training mode needs a key for the RNG streams {list(self.rngs)}")
        rngs = {name: jax.random.fold_in(rng, i) for i, name in enumerate(self.rngs)}
        logits, updates = self.module.apply(variables, x, rngs=rngs, mutable=list(self.mutable),
                                            **{self.train_arg: True})
        return logits, {**model_state, **updates}


def stateful_model(module: nn.Module, num_features: int, key: jax.Array, *, mutable: Sequence[str] = ("batch_stats",),
                   rngs: Sequence[str] = ("dropout",), train_arg: str = "train") -> tuple[StatefulModuleApply, dict]:
    """Returns (apply_fn, variables) of a Flax module with BatchNorm/dropout, initialised on a (1, num_features) input.

    `apply_fn` is a `StatefulModuleApply` (inference mode when called as `apply_fn(variables, x)`), and
    `variables` holds "params" plus the mutable collections; hand both to `create_train_state`.
    """
    wrapped = StatefulModuleApply(module, tuple(mutable), tuple(rngs), train_arg)
    variables = module.init({"params": key, **{name: key for name in rngs}},
                            jnp.zeros((1, num_features), jnp.float32), **{train_arg: False})
    variables = dict(variables)
    absent = [c for c in wrapped.mutable if c not in variables]
    if absent:
        raise ValueError(f"the module has no {absent} collection(s); for a model without state use its plain apply_fn")
    return wrapped, variables


class VAE(nn.Module):
    """A small Gaussian VAE (one hidden layer each way) whose latent space REVISE searches."""

    latent: int = 2
    hidden: int = 16
    width: int = 2

    def setup(self):
        self.encoder_hidden = nn.Dense(self.hidden)
        self.encoder_mean = nn.Dense(self.latent)
        self.encoder_logvar = nn.Dense(self.latent)
        self.decoder_hidden = nn.Dense(self.hidden)
        self.decoder_out = nn.Dense(self.width)

    def encode(self, x):
        h = nn.relu(self.encoder_hidden(x))
        return self.encoder_mean(h), self.encoder_logvar(h)

    def decode(self, z):
        return self.decoder_out(nn.relu(self.decoder_hidden(z)))

    def __call__(self, x, key):
        mean, logvar = self.encode(x)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
        return self.decode(z), mean, logvar


def train_vae(x, key: jax.Array, *, latent: int = 2, hidden: int = 16, epochs: int = 50, batch_size: int = 64,
              learning_rate: float = 1e-3, beta: float = 1.0):
    """Returns VAE params fitted to x (N, D) by minimising squared reconstruction error + β·KL."""
    x = jnp.asarray(np.asarray(x, np.float32))
    if x.ndim != 2 or x.shape[0] < batch_size:
        raise ValueError(f"x must be (N, D) with N >= batch_size={batch_size}, got {x.shape}")
    vae = VAE(latent=latent, hidden=hidden, width=x.shape[1])
    init_key, key = jax.random.split(key)
    params = vae.init(init_key, x[:1], init_key)
    tx = optax.adam(learning_rate)

    def loss_fn(p, xb, k):
        recon, mean, logvar = vae.apply(p, xb, k)
        kl = -0.5 * jnp.sum(1 + logvar - mean ** 2 - jnp.exp(logvar), -1)
        return jnp.mean(jnp.sum((recon - xb) ** 2, -1) + beta * kl)

    n_batches = x.shape[0] // batch_size

    def epoch(carry, epoch_key):
        p, opt = carry
        perm_key, step_key = jax.random.split(epoch_key)
        xb_all = x[jax.random.permutation(perm_key, x.shape[0])[: n_batches * batch_size]]

        def step(c, inputs):
            p, opt = c
            xb, k = inputs
            grads = jax.grad(loss_fn)(p, xb, k)
            updates, opt = tx.update(grads, opt, p)
            return (optax.apply_updates(p, updates), opt), None

        batches = xb_all.reshape(n_batches, batch_size, -1)
        return jax.lax.scan(step, (p, opt), (batches, jax.random.split(step_key, n_batches)))[0], None

    (params, _), _ = jax.jit(lambda c, ks: jax.lax.scan(epoch, c, ks))((params, tx.init(params)),
                                                                     jax.random.split(key, epochs))
    return params
