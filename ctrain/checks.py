"""Checks of the arrays and models that ctrain's public functions take: each names the argument it refuses.

Shape checks run eagerly; value checks (NaN, class range) run only on concrete arrays, so every function that
uses them also traces under `jax.jit`, where those checks are skipped.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def is_concrete(x) -> bool:
    """Returns whether x is a concrete value (not a tracer under jit), so value checks can run on it."""
    return not isinstance(x, jax.core.Tracer)


def as_matrix(name: str, x) -> jax.Array:
    """Returns x as a 2-D (N, D) floating array, or raises naming `name`."""
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def check_finite(name: str, x: jax.Array) -> None:
    """Returns None; raises naming `name` if a concrete x holds NaN or inf."""
    if is_concrete(x):
        n_bad = int(jnp.sum(~jnp.isfinite(x)))
        if n_bad:
            raise ValueError(f"{name} contains {n_bad} non-finite values (NaN or inf)")


def check_no_nan(name: str, x: jax.Array) -> None:
    """Returns None; raises naming `name` if a concrete x holds NaN."""
    if is_concrete(x):
        n_bad = int(jnp.sum(jnp.isnan(x)))
        if n_bad:
            raise ValueError(f"{name} contains {n_bad} NaN values")


def finite_matrix(name: str, x) -> jax.Array:
    """Returns x as a finite 2-D (N, D) floating array, or raises naming `name`."""
    x = as_matrix(name, x)
    check_finite(name, x)
    return x


def same_shape(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
    """Returns None; raises if arrays a and b differ in shape, naming both."""
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; they must match")


def same_width(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
    """Returns None; raises if (N, D) arrays a and b differ in D, naming both."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name_a} has {a.shape[1]} features but {name_b} has {b.shape[1]}; the feature counts must match")


def non_empty(name: str, x: jax.Array) -> None:
    """Returns None; raises naming `name` if x has 0 rows."""
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows); at least one row is needed")


def as_labels(name: str, labels, n: int) -> jax.Array:
    """Broadcasts a scalar class index to (n,), or checks that an array of them has shape (n,)."""
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.ndim == 0:
        return jnp.broadcast_to(labels, (n,))
    if labels.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got shape {labels.shape}")
    return labels


def check_class_range(name: str, labels: jax.Array, num_classes: int) -> None:
    """Returns None; raises naming `name` if concrete labels (N,) fall outside [0, num_classes)."""
    # Out-of-range indices would be clamped silently by take_along_axis, hence the eager check.
    if is_concrete(labels) and labels.size:
        lo, hi = int(jnp.min(labels)), int(jnp.max(labels))
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes - 1}], got values in [{lo}, {hi}]")


def checked_logits(apply_fn: ApplyFn, params, x: jax.Array, name: str = "x") -> jax.Array:
    """Returns apply_fn(params, x) as (N, K) logits, or raises if the model returns another shape."""
    logits = apply_fn(params, x)
    if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"apply_fn must map {name} of shape {x.shape} to (N, K) logits, got shape {logits.shape}")
    return logits


def num_classes_of(apply_fn: ApplyFn, params, num_features: int, dtype=jnp.float32) -> int:
    """Returns K, the number of logits apply_fn gives a (1, num_features) input (no computation)."""
    shape = jax.eval_shape(lambda p, x: apply_fn(p, x), params, jax.ShapeDtypeStruct((1, num_features), dtype)).shape
    if len(shape) != 2:
        raise ValueError(f"apply_fn must return (N, K) logits, got shape {shape} for a (1, {num_features}) input")
    return shape[1]
