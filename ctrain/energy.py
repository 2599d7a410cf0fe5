"""JEM energies of a classifier: E(x, t) = −f(x)[t] (the reference's choice) or the marginal −logsumexp f(x)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def energy_from_logits(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Returns −logits[..., target], shape logits.shape[:-1]: the conditional energy at the target class."""
    return -jnp.take_along_axis(logits, jnp.asarray(target)[..., None].astype(jnp.int32), axis=-1)[..., 0]


def marginal_energy_from_logits(logits: jax.Array) -> jax.Array:
    """Returns −logsumexp(logits), shape logits.shape[:-1]: the energy of x under the JEM marginal p(x)."""
    return -jax.nn.logsumexp(logits, axis=-1)


def energy(apply_fn, params, x: jax.Array, target: jax.Array) -> jax.Array:
    """Returns E(x, t) = −f(x)[t] for x (N, D) and targets (N,), shape (N,)."""
    return energy_from_logits(apply_fn(params, x), target)


def marginal_energy(apply_fn, params, x: jax.Array) -> jax.Array:
    """Returns −logsumexp f(x) for x (N, D), shape (N,)."""
    return marginal_energy_from_logits(apply_fn(params, x))
