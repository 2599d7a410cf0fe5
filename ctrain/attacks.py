"""White-box L∞ adversarial attacks (FGSM, PGD) and robust accuracy, as in the reference's `adversarial.jl`.

The loss is the softmax cross-entropy of the true label. As in the reference's `test_performance`,
nothing is clamped to the data domain unless `lower`/`upper` are given.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from ctrain import checks, metrics

ApplyFn = Callable[[Any, jax.Array], jax.Array]

# The reference's grid: 10 equally spaced ε in [0, 0.1]. A tuple, so importing this module does not start
# a JAX backend.
DEFAULT_EPSILONS = tuple(float(e) for e in np.linspace(0.0, 0.1, 10))
ATTACKS = ("fgsm", "pgd")


def _check_inputs(x, y) -> tuple[jax.Array, jax.Array]:
    x = checks.finite_matrix("x", x)
    y = checks.as_labels("y", y, x.shape[0])
    return x, y


def _check_epsilon(epsilon) -> None:
    if isinstance(epsilon, (int, float)) or (checks.is_concrete(epsilon) and jnp.ndim(epsilon) == 0):
        if not float(epsilon) >= 0.0:
            raise ValueError(f"epsilon must be non-negative, got {float(epsilon)}")


def _bounds(lower, upper, x: jax.Array):
    """Returns (lower, upper) as arrays broadcastable to x, with ±inf for a missing side, or None if both are."""
    if lower is None and upper is None:
        return None
    d = x.shape[1]
    lo = jnp.full((d,), -jnp.inf, x.dtype) if lower is None else jnp.broadcast_to(jnp.asarray(lower, x.dtype), (d,))
    hi = jnp.full((d,), jnp.inf, x.dtype) if upper is None else jnp.broadcast_to(jnp.asarray(upper, x.dtype), (d,))
    if checks.is_concrete(lo) and checks.is_concrete(hi):
        if bool(jnp.any(jnp.isnan(lo) | jnp.isnan(hi))):
            raise ValueError("lower/upper must not contain NaN")
        if bool(jnp.any(lo > hi)):
            raise ValueError("lower > upper in some feature")
    return lo, hi


def _loss_gradient(apply_fn: ApplyFn, params, x: jax.Array, y: jax.Array) -> jax.Array:
    # Rows are independent, so the gradient of the summed loss is every row's own input gradient.
    def summed_loss(z):
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, z), y))

    return jax.grad(summed_loss)(x)


def fgsm(apply_fn: ApplyFn, params, x, y, *, epsilon, lower=None, upper=None) -> jax.Array:
    """Returns (N, D) FGSM examples x + ε·sign(∇_x CE(f(x), y)), optionally clamped to [lower, upper].

    Args:
      x: (N, D) inputs; y: (N,) int true labels.
      epsilon: L∞ radius ε ≥ 0 (may be a traced scalar).
      lower, upper: optional scalars or (D,) bounds; None (the reference's choice) means no clamping.
    """
    x, y = _check_inputs(x, y)
    _check_epsilon(epsilon)
    bounds = _bounds(lower, upper, x)
    x_adv = x + epsilon * jnp.sign(_loss_gradient(apply_fn, params, x, y))
    if bounds is not None:
        x_adv = jnp.clip(x_adv, *bounds)
    return lax.stop_gradient(x_adv)


def pgd(apply_fn: ApplyFn, params, x, y, key, *, epsilon, step_size: float = 0.01, n_steps: int = 40,
        random_start: bool = True, lower=None, upper=None) -> jax.Array:
    """Returns (N, D) L∞ PGD examples: n_steps signed-gradient ascent steps on CE, projected every step.

    Each iterate is projected onto the ε-ball around x intersected with [lower, upper], i.e. clipped to
    [max(x − ε, lower), min(x + ε, upper)]; for x inside the bounds this never leaves the ball. At ε = 0 the
    result is x exactly, random start or not.

    Args:
      x: (N, D) inputs; y: (N,) int true labels; key: PRNG key for the random start.
      epsilon: L∞ radius ε ≥ 0 (may be a traced scalar).
      step_size: α per step (reference: 0.01).
      n_steps: number of steps (reference: 40).
      random_start: start from a uniform point in the ε-ball (reference: yes).
      lower, upper: optional scalars or (D,) bounds; None (the reference's choice) means no clamping.
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    x, y = _check_inputs(x, y)
    _check_epsilon(epsilon)
    bounds = _bounds(lower, upper, x)
    lo, hi = x - epsilon, x + epsilon
    if bounds is not None:
        lo, hi = jnp.maximum(lo, bounds[0]), jnp.minimum(hi, bounds[1])
    x_adv = x
    if random_start:
        x_adv = x + jax.random.uniform(key, x.shape, x.dtype, minval=-1.0, maxval=1.0) * epsilon
    x_adv = jnp.clip(x_adv, lo, hi)

    def step(_, z):
        return jnp.clip(z + step_size * jnp.sign(_loss_gradient(apply_fn, params, z, y)), lo, hi)

    return lax.stop_gradient(lax.fori_loop(0, n_steps, step, x_adv))


def robust_accuracy(apply_fn: ApplyFn, params, x, y, key, *, epsilons: Sequence[float] = DEFAULT_EPSILONS,
                    attack: str = "fgsm", batch_size: int = 1024, step_size: float = 0.01, n_steps: int = 40,
                    random_start: bool = True, lower=None, upper=None) -> dict[str, Any]:
    """Returns {"attack", "epsilon", "accuracy", "f1", "clean_accuracy", "n"}: per-ε lists of plain floats.

    The data is attacked in fixed-size batches (the last one padded and masked), with ε passed as a traced
    argument, so the attack compiles once for all batches and all ε. At ε = 0 the clean inputs are scored,
    so the first entry equals `clean_accuracy` exactly. F1 follows `metrics.f1_from_predictions`.

    Args:
      x: (N, D) test inputs; y: (N,) int labels; key: PRNG key (PGD random starts).
      epsilons: L∞ radii, each ≥ 0 (reference: 10 values in [0, 0.1]).
      attack: "fgsm" or "pgd".
      batch_size: rows per compiled batch.
      step_size, n_steps, random_start: PGD settings (ignored by FGSM).
      lower, upper: optional clamping bounds (None: no clamping, as in the reference).
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x, y = _check_inputs(x, y)
    checks.non_empty("x", x)
    epsilon_list = [float(e) for e in np.asarray(epsilons, dtype=np.float64).reshape(-1)]
    if not epsilon_list:
        raise ValueError("epsilons is empty")
    bad = [e for e in epsilon_list if not e >= 0.0]
    if bad:
        raise ValueError(f"epsilons must be non-negative, got {bad}")
    n, d = x.shape
    num_classes = checks.num_classes_of(apply_fn, params, d, x.dtype)
    checks.check_class_range("y", y, num_classes)
    _bounds(lower, upper, x)  # validate eagerly, outside the compiled function

    batch = min(batch_size, n)
    n_batches = -(-n // batch)
    pad = n_batches * batch - n
    # Padding repeats real rows (pad < batch <= n), so the tail is harmless to attack; it is dropped before scoring.
    x_batches = jnp.concatenate([x, x[:pad]]).reshape(n_batches, batch, d)
    y_batches = jnp.concatenate([y, y[:pad]]).reshape(n_batches, batch)

    if attack == "fgsm":
        def perturb(p, xb, yb, eps, _):
            return fgsm(apply_fn, p, xb, yb, epsilon=eps, lower=lower, upper=upper)
    else:
        def perturb(p, xb, yb, eps, k):
            return pgd(apply_fn, p, xb, yb, k, epsilon=eps, step_size=step_size, n_steps=n_steps,
                       random_start=random_start, lower=lower, upper=upper)

    @jax.jit
    def attacked_predictions(p, xb, yb, eps, k):
        x_adv = jnp.where(eps > 0, perturb(p, xb, yb, eps, k), xb)
        return jnp.argmax(apply_fn(p, x_adv), axis=1)

    accuracies, f1s = [], []
    for i, eps in enumerate(epsilon_list):
        eps_key = jax.random.fold_in(key, i)
        preds = jnp.concatenate([
            attacked_predictions(params, x_batches[b], y_batches[b], jnp.asarray(eps, x.dtype),
                                 jax.random.fold_in(eps_key, b))
            for b in range(n_batches)])[:n]
        accuracies.append(int(jnp.sum(preds == y)) / n)
        f1s.append(float(metrics.f1_from_predictions(preds, y, num_classes=num_classes)))

    clean = jnp.concatenate([
        attacked_predictions(params, x_batches[b], y_batches[b], jnp.zeros((), x.dtype), key)
        for b in range(n_batches)])[:n]
    return {"attack": attack, "epsilon": epsilon_list, "accuracy": accuracies, "f1": f1s,
            "clean_accuracy": int(jnp.sum(clean == y)) / n, "n": n}
