"""JEM energies of a classifier: E(x, t) = −f(x)[t] (the reference's choice) or the marginal −logsumexp f(x)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def energy_from_logits(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Returns −logits[..., target], shape logits.shape[:-1]: the conditional energy at the target class.

    `target` is one class per row or a single class for all rows.
    """
    target = jnp.broadcast_to(jnp.asarray(target, jnp.int32), logits.shape[:-1])
    return -jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]


def marginal_energy_from_logits(logits: jax.Array) -> jax.Array:
    """Returns −logsumexp(logits), shape logits.shape[:-1]: the energy of x under the JEM marginal p(x)."""
    return -jax.nn.logsumexp(logits, axis=-1)


def energy(apply_fn, params, x: jax.Array, target: jax.Array) -> jax.Array:
    """Returns E(x, t) = −f(x)[t] for x (N, D) and targets (N,), shape (N,)."""
    return energy_from_logits(apply_fn(params, x), target)


def marginal_energy(apply_fn, params, x: jax.Array) -> jax.Array:
    """Returns −logsumexp f(x) for x (N, D), shape (N,)."""
    return marginal_energy_from_logits(apply_fn(params, x))
