"""Classifiers as pure `apply_fn(params, x) -> logits` pairs.

Everything downstream (search, objective, train step, metrics) takes `apply_fn(params, x)` with
x of shape (N, D) and logits of shape (N, K), so any JAX model plugs in: Flax linen or nnx,
Equinox, or a plain function of a params pytree.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


MODELS = ("mlp", "linear", "lenet5")


def make_model(name: str, num_features: int, num_classes: int, key: jax.Array, *, input_stats=None,
               **kwargs) -> tuple[ApplyFn, Any]:
    """Returns (apply_fn, params) for "mlp", "linear" or "lenet5"; apply_fn maps (N, D) inputs to (N, K) logits.

    `input_stats=(mean, std)`, each (D,), makes an MLP or linear model standardise its inputs with them
    (e.g. the training split's), so that what it learns does not depend on the units of the features.
    """
    modules = {"mlp": MLP, "linear": Linear, "lenet5": LeNet5}
    if name not in modules:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(modules)}")
    if input_stats is not None:
        if name == "lenet5":
            raise ValueError("input_stats applies to 'mlp' and 'linear'; LeNet-5 takes pixels as they are")
        mean, std = (np.asarray(v, np.float64).reshape(-1) for v in input_stats)
        if mean.shape != (num_features,) or std.shape != (num_features,) or not np.all(np.isfinite(mean)) \
                or not np.all(np.isfinite(std)) or np.any(std < 0):
            raise ValueError(f"input_stats must be two finite ({num_features},) arrays (mean, std >= 0)")
        std = np.where(std > 0, std, 1.0)  # a constant column is centred, not divided by zero
        kwargs.update(input_mean=tuple(float(v) for v in mean), input_scale=tuple(float(v) for v in std))
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if name == "lenet5":
        shape = tuple(kwargs.get("image_shape", (28, 28)))
        if shape[0] * shape[1] != num_features:
            raise ValueError(f"lenet5 needs {shape[0]}x{shape[1]}={shape[0] * shape[1]} features, got {num_features}")
    module = modules[name](num_classes=num_classes, **kwargs)
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
    import numpy as np
    import optax

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
