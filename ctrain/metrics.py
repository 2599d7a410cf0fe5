"""Counterfactual and model metrics for evaluating counterfactual training.

Per-counterfactual metrics return arrays of shape (N,); `summarise` turns them into a plain dict of
Python floats for logging. Every model-based metric takes the project's `apply_fn(params, x) -> logits`
convention (x of shape (N, D), logits of shape (N, K)).

Definitions follow the reference evaluation (reference-implementation.md §4.2, paper-details.md §2(d)):

* validity: argmax f(x') == t; strict validity: p_t(x') >= τ.
* cost: ‖x' − x‖₁.
* IP (implausibility): mean ℓ1 distance from x' to target-class samples (the caller draws them; the
  reference uses up to 1000).
* IP* : unbiased squared MMD between the counterfactuals and target-class data, Gaussian kernel.
* energy differential: E(x', t) − mean_k E(x_k, t) with E(x, t) = −logit_t(x).
* unfaithfulness (ECCCo): mean ℓ1 distance from x' to samples drawn from p_θ(x | t) by conditional SGLD.

Shapes are checked eagerly and raise `ValueError`. Value checks (NaN inputs, out-of-range classes) run
only on concrete arrays, so every function also traces under `jax.jit`, where those checks are skipped.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ctrain.checks import (as_labels, check_class_range, check_finite, checked_logits,
                           finite_matrix, is_concrete, non_empty, num_classes_of, same_shape, same_width)
from ctrain.energy import energy_from_logits

ApplyFn = Callable[[Any, jax.Array], jax.Array]

# The reference code (`globals.jl`, `get_global_param("length_scale", 5.0)`) uses a Gaussian length scale of
# 5.0 and no job script overrides it; the CT paper's text states 0.5. The evaluation protocol reproduces the
# reference, so its value is the one default of the whole API (`mmd2_unbiased`, `mmd2_unbiased_masked` and
# `evaluate.ProtocolConfig.mmd_length_scale`); pass `length_scale=PAPER_TEXT_LENGTH_SCALE` to use the paper's
# text, or `median_heuristic_length_scale` for a data-driven one, and report which was used.
REFERENCE_CODE_LENGTH_SCALE = 5.0
PAPER_TEXT_LENGTH_SCALE = 0.5
DEFAULT_LENGTH_SCALE = REFERENCE_CODE_LENGTH_SCALE

_DEFAULT_CHUNK_SIZE = 1024


def _target_logit(logits: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]


# ---------------------------------------------------------------------------------------------------
# Validity, cost, redundancy
# ---------------------------------------------------------------------------------------------------

def validity(apply_fn: ApplyFn, params, x_cf, target) -> jax.Array:
    """Returns (N,) bool: whether the model's predicted class of each counterfactual equals its target.

    Args:
      apply_fn: `apply_fn(params, x) -> logits`.
      params: model parameters.
      x_cf: (N, D) counterfactuals.
      target: (N,) or scalar int target classes.
    """
    x_cf = finite_matrix("x_cf", x_cf)
    target = as_labels("target", target, x_cf.shape[0])
    logits = checked_logits(apply_fn, params, x_cf, "x_cf")
    check_class_range("target", target, logits.shape[1])
    return jnp.argmax(logits, axis=1) == target


def strict_validity(apply_fn: ApplyFn, params, x_cf, target, *, threshold: float) -> jax.Array:
    """Returns (N,) bool: whether softmax p_target(x_cf) ≥ `threshold` (τ_eval: 0.95 or 0.5 in the reference)."""
    if isinstance(threshold, (int, float)) and not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    x_cf = finite_matrix("x_cf", x_cf)
    target = as_labels("target", target, x_cf.shape[0])
    logits = checked_logits(apply_fn, params, x_cf, "x_cf")
    check_class_range("target", target, logits.shape[1])
    return _target_logit(jax.nn.softmax(logits, axis=1), target) >= threshold


def cost(x_cf, x) -> jax.Array:
    """Returns (N,) ℓ1 distances ‖x_cf − x‖₁ between counterfactuals and their factuals."""
    x_cf, x = finite_matrix("x_cf", x_cf), finite_matrix("x", x)
    same_shape("x_cf", x_cf, "x", x)
    return jnp.sum(jnp.abs(x_cf - x), axis=1)


def redundancy(x_cf, x, *, tol: float = 1e-5) -> jax.Array:
    """Returns (N,) share of features left unchanged, |x_cf − x| ≤ tol (CE.jl's `redundancy`; higher = sparser).

    CE.jl counts |Δ| < tol; we use ≤ so that `tol=0` means bit-exact equality. `fraction_changed` is the
    complement.
    """
    if tol < 0:
        raise ValueError(f"tol must be non-negative, got {tol}")
    x_cf, x = finite_matrix("x_cf", x_cf), finite_matrix("x", x)
    same_shape("x_cf", x_cf, "x", x)
    return jnp.mean(jnp.abs(x_cf - x) <= tol, axis=1)


def fraction_changed(x_cf, x, *, tol: float = 1e-5) -> jax.Array:
    """Returns (N,) share of features changed by more than `tol` (= 1 − redundancy; lower = sparser)."""
    return 1.0 - redundancy(x_cf, x, tol=tol)


# ---------------------------------------------------------------------------------------------------
# Implausibility (IP) and the mean-ℓ1 kernel it shares with unfaithfulness
# ---------------------------------------------------------------------------------------------------

def _pad_rows(x: jax.Array, multiple: int) -> jax.Array:
    n = x.shape[0]
    return jnp.pad(x, ((0, -(-n // multiple) * multiple - n), (0, 0)))


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _mean_l1_distance(queries: jax.Array, samples: jax.Array, chunk_size: int) -> jax.Array:
    """Returns (N,) mean over samples of ‖q − s‖₁, exactly, in O((N + M)·D·log M) time and O(M·D) memory.

    Per feature, Σ_k |q − s_k| = q·r − P[r] + (P[M] − P[r]) − q·(M − r), where r = #{s_k ≤ q} and P are
    the prefix sums of the sorted s. This avoids the N×M×D pairwise tensor (78 G operations for 10k×10k
    MNIST) without approximating anything.
    """
    m, d = samples.shape
    sorted_samples = jnp.sort(samples, axis=0)
    # Shifting by the per-feature median keeps prefix sums small (less float32 cancellation), and makes a
    # query equal to every sample give exactly 0.
    centre = sorted_samples[m // 2]
    sorted_samples = sorted_samples - centre
    prefix = jnp.concatenate([jnp.zeros((1, d), samples.dtype), jnp.cumsum(sorted_samples, axis=0)], axis=0)
    total = prefix[-1]
    rank_per_feature = jax.vmap(lambda col, q: jnp.searchsorted(col, q, side="right"), in_axes=(1, 1), out_axes=1)

    def block(q):
        q = q - centre
        rank = rank_per_feature(sorted_samples, q)
        below = jnp.take_along_axis(prefix, rank, axis=0)
        rank = rank.astype(q.dtype)
        abs_sum = q * rank - below + (total - below) - q * (m - rank)
        # Rounding can leave a per-feature sum a hair below zero; the true value never is.
        return jnp.sum(jnp.maximum(abs_sum, 0.0), axis=1) / m

    n = queries.shape[0]
    blocks = _pad_rows(queries, chunk_size).reshape(-1, chunk_size, d)
    return lax.map(block, blocks).reshape(-1)[:n]


def implausibility(x_cf, x_target_samples, *, chunk_size: int = _DEFAULT_CHUNK_SIZE) -> jax.Array:
    """Returns (N,) IP: mean ℓ1 distance from each counterfactual to the given target-class samples.

    IP(x', X⁺) = (1/|X⁺|) Σ_{x ∈ X⁺} ‖x' − x‖₁. The caller draws X⁺ (the reference: min(N_t, 1000) target
    test points, with replacement). The reference stores −IP and takes `abs` later; this returns IP ≥ 0.

    Args:
      x_cf: (N, D) counterfactuals, all explained towards the class the samples come from.
      x_target_samples: (M, D) samples of the target class, M ≥ 1.
      chunk_size: counterfactuals scored per block; peak memory is O(M·D + chunk_size·D).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    x_cf = finite_matrix("x_cf", x_cf)
    samples = finite_matrix("x_target_samples", x_target_samples)
    non_empty("x_target_samples", samples)
    same_width("x_cf", x_cf, "x_target_samples", samples)
    if x_cf.shape[0] == 0:
        return jnp.zeros((0,), x_cf.dtype)
    dtype = jnp.result_type(x_cf.dtype, samples.dtype)
    return _mean_l1_distance(x_cf.astype(dtype), samples.astype(dtype), chunk_size=min(chunk_size, x_cf.shape[0]))


# ---------------------------------------------------------------------------------------------------
# IP*: unbiased squared MMD
# ---------------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("row_chunk", "col_chunk", "exclude_diagonal"))
def _gaussian_kernel_sum(a: jax.Array, b: jax.Array, inv_two_l2: jax.Array, row_chunk: int, col_chunk: int,
                         exclude_diagonal: bool) -> jax.Array:
    """Returns Σ_{i,j} exp(−‖a_i − b_j‖² · inv_two_l2), skipping i == j if `exclude_diagonal`, in tiles."""
    n_a, d = a.shape
    n_b = b.shape[0]
    a_blocks = _pad_rows(a, row_chunk).reshape(-1, row_chunk, d)
    b_blocks = _pad_rows(b, col_chunk).reshape(-1, col_chunk, d)
    a_sq, b_sq = jnp.sum(a_blocks * a_blocks, axis=-1), jnp.sum(b_blocks * b_blocks, axis=-1)

    def row_block(args):
        i, a_block, a_block_sq = args
        rows = i * row_chunk + jnp.arange(row_chunk)

        def col_block(row_sums, args):
            j, b_block, b_block_sq = args
            cols = j * col_chunk + jnp.arange(col_chunk)
            # HIGHEST: GPU/TPU matmuls otherwise drop to TF32/bf16, and d² cancels badly at low precision.
            cross = jnp.dot(a_block, b_block.T, precision=lax.Precision.HIGHEST)
            sq_dist = jnp.maximum(a_block_sq[:, None] + b_block_sq[None, :] - 2.0 * cross, 0.0)
            keep = (rows[:, None] < n_a) & (cols[None, :] < n_b)
            if exclude_diagonal:
                keep &= rows[:, None] != cols[None, :]
            return row_sums + jnp.sum(jnp.where(keep, jnp.exp(-sq_dist * inv_two_l2), 0.0), axis=1), None

        row_sums, _ = lax.scan(col_block, jnp.zeros((row_chunk,), a.dtype),
                               (jnp.arange(b_blocks.shape[0]), b_blocks, b_sq))
        return jnp.sum(row_sums)

    return jnp.sum(lax.map(row_block, (jnp.arange(a_blocks.shape[0]), a_blocks, a_sq)))


def mmd2_unbiased(x, y, *, length_scale: float = DEFAULT_LENGTH_SCALE, chunk_size: int = _DEFAULT_CHUNK_SIZE,
                  clamp: bool = False) -> jax.Array:
    r"""Returns the scalar unbiased estimate of MMD²(x, y) with a Gaussian kernel (IP*).

    .. math::
        \widehat{\mathrm{MMD}}^2_u = \frac{1}{m(m-1)}\sum_{i \ne j} k(x_i, x_j)
          + \frac{1}{n(n-1)}\sum_{i \ne j} k(y_i, y_j) - \frac{2}{mn}\sum_{i,j} k(x_i, y_j),
        \qquad k(a, b) = \exp(-\lVert a - b\rVert^2 / (2\ell^2)).

    The kernel matrices are never materialised: tiles of `chunk_size` × `chunk_size` are summed in a
    scan, so 10,000×784 against 10,000×784 needs a few MB beyond the inputs.

    Args:
      x: (m, D) samples, e.g. the counterfactuals of one target class (m ≥ 2).
      y: (n, D) samples, e.g. target-class data (n ≥ 2). The reference subsamples each side to 100 rows.
      length_scale: ℓ > 0. Defaults to the reference code's 5.0 (`DEFAULT_LENGTH_SCALE`); the paper's text
        says 0.5 (`PAPER_TEXT_LENGTH_SCALE`). Report which one was used. ℓ must be comparable to typical
        distances (`median_heuristic_length_scale` gives one that is): at ℓ = 0.5 every kernel value between
        distinct MNIST-like points (‖a − b‖² in the hundreds) underflows to 0, and the estimate is exactly
        0 whatever the distributions.
      chunk_size: rows per tile side; memory per tile is O(chunk_size²).
      clamp: if True, return max(estimate, 0) as the reference does. The default False keeps the
        unbiased estimate, which is negative when the two samples are closer than chance.
    """
    _check_length_scale(length_scale)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    x, y = finite_matrix("x", x), finite_matrix("y", y)
    same_width("x", x, "y", y)
    for name, arr in (("x", x), ("y", y)):
        if arr.shape[0] < 2:
            raise ValueError(f"the unbiased MMD² needs at least 2 rows in {name}, got {arr.shape[0]}")
    dtype = jnp.result_type(x.dtype, y.dtype)
    # Distances are shift-invariant; centring shrinks the norms whose difference gives d².
    centre = (jnp.sum(x, axis=0) + jnp.sum(y, axis=0)) / (x.shape[0] + y.shape[0])
    x, y = (x - centre).astype(dtype), (y - centre).astype(dtype)
    inv_two_l2 = jnp.asarray(0.5 / jnp.square(length_scale), dtype)
    m, n = x.shape[0], y.shape[0]
    x_chunk, y_chunk = min(chunk_size, m), min(chunk_size, n)
    k_xx = _gaussian_kernel_sum(x, x, inv_two_l2, row_chunk=x_chunk, col_chunk=x_chunk, exclude_diagonal=True)
    k_yy = _gaussian_kernel_sum(y, y, inv_two_l2, row_chunk=y_chunk, col_chunk=y_chunk, exclude_diagonal=True)
    k_xy = _gaussian_kernel_sum(x, y, inv_two_l2, row_chunk=x_chunk, col_chunk=y_chunk, exclude_diagonal=False)
    estimate = k_xx / (m * (m - 1)) + k_yy / (n * (n - 1)) - 2.0 * k_xy / (m * n)
    return jnp.maximum(estimate, 0.0) if clamp else estimate


def mmd2_unbiased_masked(x, x_mask, y, *, length_scale: float = DEFAULT_LENGTH_SCALE) -> jax.Array:
    """Returns the scalar unbiased MMD² between the x (m, D) rows where x_mask (m,) is True and y (n, D); NaN if < 2.

    The fixed-shape form of `mmd2_unbiased` for many small groups (e.g. the valid counterfactuals of
    each bootstrap round): it is vmappable and compiles once, but materialises the (m, m) and (m, n)
    kernel matrices, so keep m and n in the hundreds. `length_scale` may be a traced scalar (one per
    group under `vmap`). Unselected rows must still be finite: a masked-out inf would turn 0·inf into NaN.
    """
    _check_length_scale(length_scale)
    x, y = jnp.asarray(x), jnp.asarray(y)
    w = jnp.asarray(x_mask, x.dtype)
    inv_two_l2 = 0.5 / jnp.square(length_scale)
    kernel = lambda a, b: jnp.exp(-jnp.maximum(jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :]
                                               - 2.0 * jnp.dot(a, b.T, precision=lax.Precision.HIGHEST), 0.0)
                                  * inv_two_l2)
    m_eff, n = jnp.sum(w), y.shape[0]
    centre = jnp.mean(y, axis=0)  # shift invariance: centring keeps the norms small
    x, y = x - centre, y - centre
    pair_w = w[:, None] * w[None, :] * (1.0 - jnp.eye(x.shape[0], dtype=x.dtype))
    k_xx = jnp.sum(kernel(x, x) * pair_w) / (m_eff * (m_eff - 1))
    k_yy = (jnp.sum(kernel(y, y)) - n) / (n * (n - 1))
    k_xy = jnp.sum(kernel(x, y) * w[:, None]) / (m_eff * n)
    return jnp.where(m_eff >= 2, k_xx + k_yy - 2.0 * k_xy, jnp.nan)


def _check_length_scale(length_scale) -> None:
    if isinstance(length_scale, (int, float)) and not (length_scale > 0 and math.isfinite(length_scale)):
        raise ValueError(f"length_scale must be positive and finite, got {length_scale}")


@jax.jit
def _median_pairwise_distance(z: jax.Array) -> jax.Array:
    # Differences, not the ‖a‖² + ‖b‖² − 2a·b expansion: near-duplicate pairs would cancel to noise, and the
    # (n, n) distance matrix is small next to the (n, n, D) tensor that one broadcast would build.
    distances = lax.map(lambda row: jnp.sqrt(jnp.sum(jnp.square(z - row), axis=-1)), z)
    upper = jnp.triu_indices(z.shape[0], k=1)
    return jnp.median(distances[upper])


def median_heuristic_length_scale(x, y=None) -> jax.Array:
    """Returns the median Euclidean distance ‖a − b‖ over all pairs of distinct rows of x (m, D) and y (n, D), pooled.

    The median heuristic (Gretton et al., 2012) sets the Gaussian kernel's ℓ to the typical distance between
    samples, so the kernel neither underflows to 0 nor saturates at 1 whatever the data's scale. Pairs are
    taken over the m + n pooled rows (y is optional), each unordered pair once and no row with itself; with an
    even number of pairs the median is the mean of the two middle distances. The result is 0 when more than
    half of the pairs are duplicates, which is not a usable ℓ. Cost O((m + n)²·D) time, O((m + n)²) memory.
    """
    z = finite_matrix("x", x)
    if y is not None:
        y = finite_matrix("y", y)
        same_width("x", z, "y", y)
        z = jnp.concatenate([z, y.astype(z.dtype)], axis=0)
    if z.shape[0] < 2:
        raise ValueError(f"the median heuristic needs at least 2 rows in total, got {z.shape[0]}")
    return _median_pairwise_distance(z)


# ---------------------------------------------------------------------------------------------------
# Energy, SGLD and unfaithfulness
# ---------------------------------------------------------------------------------------------------

def energy_differential(apply_fn: ApplyFn, params, x_cf, target, x_target_samples) -> jax.Array:
    """Returns (N,) E(x', t) − mean_k E(x_k, t): how far above the typical target sample each CF's energy is.

    The reference (EnergySamplers `energy_differential`, K = 50 target samples) stores
    −[mean_k E(x_k, t) − E(x', t)], which is the same quantity. Lower is more plausible; negative means
    the counterfactual is more typical of class t, to the model, than the average target sample.

    Args:
      x_cf: (N, D) counterfactuals.
      target: (N,) or scalar int target classes; the samples are scored under each CF's own target.
      x_target_samples: (M, D) samples of the target class, M ≥ 1.
    """
    x_cf = finite_matrix("x_cf", x_cf)
    samples = finite_matrix("x_target_samples", x_target_samples)
    non_empty("x_target_samples", samples)
    same_width("x_cf", x_cf, "x_target_samples", samples)
    target = as_labels("target", target, x_cf.shape[0])
    cf_logits = checked_logits(apply_fn, params, x_cf, "x_cf")
    check_class_range("target", target, cf_logits.shape[1])
    mean_sample_logits = jnp.mean(checked_logits(apply_fn, params, samples, "x_target_samples"), axis=0)
    # E is linear in the logits, so the mean sample energy is the energy of the mean logits.
    mean_sample_energy = energy_from_logits(jnp.broadcast_to(mean_sample_logits, cf_logits.shape), target)
    return energy_from_logits(cf_logits, target) - mean_sample_energy


def _uniform_init(key, shape, lower, upper, dtype):
    lower = jnp.broadcast_to(jnp.asarray(lower, dtype), shape[-1:])
    upper = jnp.broadcast_to(jnp.asarray(upper, dtype), shape[-1:])
    if is_concrete(lower) and is_concrete(upper):
        if not bool(jnp.all(jnp.isfinite(lower) & jnp.isfinite(upper))):
            raise ValueError("SGLD needs finite lower/upper bounds for its uniform initialisation")
        if bool(jnp.any(lower > upper)):
            raise ValueError("SGLD initialisation bounds have lower > upper in some feature")
    return jax.random.uniform(key, shape, dtype, minval=lower, maxval=upper)


def sgld_sample(apply_fn: ApplyFn, params, target, key, *, n_samples: int | None = None,
                n_features: int | None = None, init=None, lower=-1.0, upper=1.0, n_steps: int = 500,
                step_size: float = 2.0, noise: float = 0.01) -> jax.Array:
    """Returns (S, D) samples from the model's p_θ(x | t) by conditional SGLD, as in ECCCo.

    x_{j+1} = x_j − (φ/2)·∇_x E(x_j, t) + σ·ξ_j, ξ_j ~ N(0, I), E(x, t) = −logit_t(x); ECCCo uses φ = 2,
    σ = 0.01, 500 steps from scratch (no replay buffer). All chains run together in one `lax.scan`; the
    per-chain gradients come from the gradient of the summed energy, which assumes `apply_fn` treats rows
    independently (no batch statistics).

    Args:
      target: scalar int, or (S,) ints to give every chain its own class.
      key: PRNG key.
      n_samples, n_features: chain count S and width D; needed unless `init` is given.
      init: optional (S, D) starting points; otherwise uniform in [lower, upper].
      lower, upper: scalars or (D,) bounds of the uniform initialisation (the samples are not clamped).
      n_steps, step_size, noise: J, φ and σ.
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    init_key, noise_key = jax.random.split(key)
    if init is None:
        if n_samples is None or n_features is None:
            raise ValueError("sgld_sample needs either `init` or both `n_samples` and `n_features`")
        if n_samples < 1 or n_features < 1:
            raise ValueError(f"n_samples and n_features must be >= 1, got {n_samples} and {n_features}")
        x0 = _uniform_init(init_key, (n_samples, n_features), lower, upper, jnp.float32)
    else:
        x0 = finite_matrix("init", init)
        if n_samples is not None and n_samples != x0.shape[0]:
            raise ValueError(f"init has {x0.shape[0]} rows but n_samples={n_samples}")
    target = as_labels("target", target, x0.shape[0])
    check_class_range("target", target, num_classes_of(apply_fn, params, x0.shape[1], x0.dtype))
    return sgld_chains(apply_fn, params, target, noise_key, x0, n_steps, step_size, noise)


def sgld_chains(apply_fn, params, target, key, x0, n_steps, step_size, noise):
    """Returns (N, D) samples after n_steps of unadjusted Langevin dynamics on E(x, target) from x0 (N, D), no gradient.

    Unchecked: callers (`sample_conditional_sgld`, `ctrain.objective.make_sgld_batch`) validate their inputs.
    """
    def total_energy(x):
        return jnp.sum(energy_from_logits(apply_fn(params, x), target))

    energy_grad = jax.grad(total_energy)

    def step(x, step_key):
        x = x - 0.5 * step_size * energy_grad(x) + noise * jax.random.normal(step_key, x.shape, x.dtype)
        return x, None

    samples, _ = lax.scan(step, x0, jax.random.split(key, n_steps))
    return lax.stop_gradient(samples)


def unfaithfulness(apply_fn: ApplyFn, params, x_cf, target, key, *, n_samples: int, n_keep: int | None = None,
                   n_steps: int = 500, step_size: float = 2.0, noise: float = 0.01, lower=-1.0, upper=1.0,
                   init=None, chunk_size: int = _DEFAULT_CHUNK_SIZE) -> jax.Array:
    """Returns (N,) ECCCo unfaithfulness: mean ℓ1 distance from each CF to SGLD samples of p_θ(x | target).

    With a scalar `target`, one set of `n_samples` chains is drawn for that class. With per-CF targets,
    a set is drawn for every class of the model and each CF is scored against its own class's set.
    ECCCo's inference settings: 50 samples keeping the 25 lowest-energy ones (synthetic data), or 10
    samples all kept (real data). This uses ℓ1 like CT's IP, not ECCCo's Euclidean/SSIM distances.

    Args:
      x_cf: (N, D) counterfactuals.
      target: scalar or (N,) int target classes.
      key: PRNG key for the sampler.
      n_samples: chains per class.
      n_keep: keep only the n_keep lowest-energy samples per class (None keeps all).
      n_steps, step_size, noise, lower, upper, init: as in `sgld_sample`; `init` is (n_samples, D) and is
        shared by every class.
      chunk_size: counterfactuals scored per block.
    """
    x_cf = finite_matrix("x_cf", x_cf)
    n, d = x_cf.shape
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if n_keep is not None and not 1 <= n_keep <= n_samples:
        raise ValueError(f"n_keep must lie in [1, n_samples={n_samples}], got {n_keep}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    num_classes = num_classes_of(apply_fn, params, d, x_cf.dtype)
    target = jnp.asarray(target)
    per_cf = target.ndim > 0
    labels = as_labels("target", target, n)
    check_class_range("target", labels, num_classes)
    classes = jnp.arange(num_classes) if per_cf else target[None].astype(jnp.int32)
    n_classes = classes.shape[0]

    init_key, noise_key = jax.random.split(key)
    if init is None:
        x0 = _uniform_init(init_key, (n_samples, d), lower, upper, x_cf.dtype)
    else:
        x0 = finite_matrix("init", init)
        if x0.shape != (n_samples, d):
            raise ValueError(f"init must have shape ({n_samples}, {d}), got {x0.shape}")
    chain_targets = jnp.repeat(classes, n_samples)
    samples = sgld_chains(apply_fn, params, chain_targets, noise_key, jnp.tile(x0, (n_classes, 1)),
                           n_steps, step_size, noise)
    if n_keep is not None and n_keep < n_samples:
        energies = energy_from_logits(apply_fn(params, samples), chain_targets).reshape(n_classes, n_samples)
        lowest = jnp.argsort(energies, axis=1)[:, :n_keep]
        samples = jnp.take_along_axis(samples.reshape(n_classes, n_samples, d), lowest[:, :, None], axis=1)
    samples = samples.reshape(n_classes, -1, d)
    if n == 0:
        return jnp.zeros((0,), x_cf.dtype)
    block = min(chunk_size, n)
    distances = lax.map(lambda s: _mean_l1_distance(x_cf, s, chunk_size=block), samples)  # (C, N)
    return distances[labels if per_cf else jnp.zeros((n,), jnp.int32), jnp.arange(n)]


# ---------------------------------------------------------------------------------------------------
# Model metrics
# ---------------------------------------------------------------------------------------------------

def accuracy(apply_fn: ApplyFn, params, x, y) -> jax.Array:
    """Returns the scalar share of rows whose predicted class equals the label y (N,)."""
    x = finite_matrix("x", x)
    non_empty("x", x)
    y = as_labels("y", y, x.shape[0])
    return jnp.mean(jnp.argmax(checked_logits(apply_fn, params, x), axis=1) == y)


def f1_from_predictions(y_pred, y_true, *, num_classes: int) -> jax.Array:
    """Returns the scalar F1: of class 1 when num_classes == 2, else the macro average over classes.

    Per class F1 = 2TP / (2TP + FP + FN). Binary: 0 when there are no positives in y_true or y_pred (as
    scikit-learn's zero_division default). Macro: averaged over the classes present in y_true or y_pred,
    so an absent class neither counts as 0 nor produces NaN.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    y_pred, y_true = jnp.asarray(y_pred), jnp.asarray(y_true)
    if y_pred.ndim != 1 or y_pred.shape != y_true.shape:
        raise ValueError(f"y_pred and y_true must be 1-D of equal length, got {y_pred.shape} and {y_true.shape}")
    if y_pred.shape[0] == 0:
        raise ValueError("F1 of an empty label set is undefined")
    pred_onehot = jax.nn.one_hot(y_pred, num_classes, dtype=jnp.float32)
    true_onehot = jax.nn.one_hot(y_true, num_classes, dtype=jnp.float32)
    tp = jnp.sum(pred_onehot * true_onehot, axis=0)
    denom = jnp.sum(pred_onehot, axis=0) + jnp.sum(true_onehot, axis=0)   # = 2TP + FP + FN
    per_class = jnp.where(denom > 0, 2.0 * tp / jnp.maximum(denom, 1.0), 0.0)
    if num_classes == 2:
        return per_class[1]
    present = denom > 0
    return jnp.sum(per_class) / jnp.maximum(jnp.sum(present), 1)


def f1_score(apply_fn: ApplyFn, params, x, y) -> jax.Array:
    """Returns the scalar F1 of the model's predictions (class 1 if binary, else macro; see f1_from_predictions)."""
    x = finite_matrix("x", x)
    non_empty("x", x)
    y = as_labels("y", y, x.shape[0])
    logits = checked_logits(apply_fn, params, x)
    check_class_range("y", y, logits.shape[1])
    return f1_from_predictions(jnp.argmax(logits, axis=1), y, num_classes=logits.shape[1])


# ---------------------------------------------------------------------------------------------------
# Integrated gradients
# ---------------------------------------------------------------------------------------------------

def integrated_gradients(apply_fn: ApplyFn, params, x, target, baseline, *, n_steps: int = 50) -> jax.Array:
    """Returns (N, D) integrated-gradient attributions of logit_target along the straight path baseline → x.

    IG_d = (x_d − b_d) · ∫₀¹ ∂logit_t(b + α(x − b))/∂x_d dα, by the trapezoid rule on n_steps intervals
    (n_steps + 1 gradient evaluations, one (N, D) gradient live at a time). Completeness holds up to the
    quadrature error: Σ_d IG_d ≈ logit_t(x) − logit_t(b).

    Args:
      x: (N, D) inputs.
      target: scalar or (N,) int classes whose logit is attributed.
      baseline: (D,) or (N, D) baseline(s); the reference draws it from U(−1, 1).
      n_steps: number of trapezoid intervals, ≥ 1.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    x = finite_matrix("x", x)
    baseline = jnp.asarray(baseline, x.dtype)
    if baseline.shape not in ((x.shape[1],), x.shape):
        raise ValueError(f"baseline must have shape ({x.shape[1]},) or {x.shape}, got {baseline.shape}")
    check_finite("baseline", baseline)
    baseline = jnp.broadcast_to(baseline, x.shape)
    target = as_labels("target", target, x.shape[0])
    check_class_range("target", target, num_classes_of(apply_fn, params, x.shape[1], x.dtype))
    path = x - baseline

    def summed_target_logit(z):
        return jnp.sum(_target_logit(apply_fn(params, z), target))

    logit_grad = jax.grad(summed_target_logit)
    alphas = jnp.linspace(0.0, 1.0, n_steps + 1, dtype=x.dtype)
    weights = jnp.full((n_steps + 1,), 1.0 / n_steps, x.dtype).at[jnp.array([0, -1])].multiply(0.5)

    def accumulate(total, alpha_weight):
        alpha, weight = alpha_weight
        return total + weight * logit_grad(baseline + alpha * path), None

    mean_grad, _ = lax.scan(accumulate, jnp.zeros_like(x), (alphas, weights))
    return path * mean_grad


def protected_sensitivity(ig, protected_mask, *, standardise: str = "auto") -> jax.Array:
    """Returns (N,) mean standardised attribution on the protected features of each sample.

    Per sample with attributions g (D,), the standardisations of the reference (§4.2) are:
      "range":  |g_d| / (max_d g − min_d g)          (used for the 2-D synthetic data; unbounded)
      "minmax": (|g_d| − min|g|) / (max|g| − min|g|)  (used for real data; in [0, 1])
      "none":   |g_d|
      "auto":   "range" when D == 2, else "minmax", mirroring the reference.
    The min-max is taken over |g| (magnitudes) so a large negative attribution counts as sensitive. The
    reference's exact variant was not available; this reading reproduces Table E's ranges. When the
    denominator is 0, the result is 0 where the numerator is 0 and +inf otherwise ("range"), and 0
    ("minmax", all |g_d| equal). The mean is over the protected features; the reference reports the
    median over samples.

    Args:
      ig: (N, D) attributions, e.g. from `integrated_gradients`.
      protected_mask: (D,) bool, True for protected (e.g. immutable) features; at least one True.
      standardise: "auto", "range", "minmax" or "none".
    """
    ig = finite_matrix("ig", ig)
    mask = _protected_mask(protected_mask, ig.shape[1])
    if standardise == "auto":
        standardise = "range" if ig.shape[1] == 2 else "minmax"
    magnitude = jnp.abs(ig)
    if standardise == "range":
        spread = (jnp.max(ig, axis=1) - jnp.min(ig, axis=1))[:, None]
        scaled = jnp.where(spread > 0, magnitude / jnp.where(spread > 0, spread, 1.0),
                           jnp.where(magnitude > 0, jnp.inf, 0.0))
    elif standardise == "minmax":
        low = jnp.min(magnitude, axis=1, keepdims=True)
        spread = jnp.max(magnitude, axis=1, keepdims=True) - low
        scaled = jnp.where(spread > 0, (magnitude - low) / jnp.where(spread > 0, spread, 1.0), 0.0)
    elif standardise == "none":
        scaled = magnitude
    else:
        raise ValueError(f"standardise must be 'auto', 'range', 'minmax' or 'none', got {standardise!r}")
    return jnp.sum(jnp.where(mask, scaled, 0.0), axis=1) / jnp.sum(mask)


STANDARDISATIONS = ("auto", "range", "minmax", "none")


def _protected_mask(protected_mask, width: int) -> jax.Array:
    """Returns the (width,) bool mask after checking its shape, dtype and that it selects a feature."""
    mask = jnp.asarray(protected_mask)
    if mask.shape != (width,) or mask.dtype != jnp.bool_:
        raise ValueError(f"protected_mask must be a bool array of shape ({width},), got {mask.dtype} {mask.shape}")
    if is_concrete(mask) and not bool(jnp.any(mask)):
        raise ValueError("protected_mask selects no feature; mark at least one feature as protected")
    return mask


def round_sensitivity(mean_ig, protected_mask, *, standardise: str = "auto") -> jax.Array:
    """Returns (R,) the reference's IG sensitivity of (R, D) averaged attributions: standardised, mean over protected.

    This is the statistic of the paper's Table 2 (`run_integrated_gradients.jl`): each bootstrap round
    averages the signed attributions of its samples into one vector ḡ (D,), standardises it across
    features and averages the protected features' entries:
      "range":  |ḡ_d| / (max_d ḡ − min_d ḡ)           (the reference's choice for 2-D data; unbounded)
      "minmax": (ḡ_d − min ḡ) / (max ḡ − min ḡ)        (the reference's choice otherwise; in [0, 1], signed)
      "none":   ḡ_d
      "auto":   "range" when D == 2, else "minmax".
    Unlike `protected_sensitivity` (per sample, on |g|), the min-max here is of the signed mean, as the
    reference computes it. A zero spread gives 0 where the numerator is 0 and +inf otherwise ("range"),
    and 0 ("minmax").

    Args:
      mean_ig: (R, D) attributions averaged over each round's samples.
      protected_mask: (D,) bool, True for the protected features; at least one True.
      standardise: one of STANDARDISATIONS.
    """
    g = finite_matrix("mean_ig", mean_ig)
    mask = _protected_mask(protected_mask, g.shape[1])
    if standardise not in STANDARDISATIONS:
        raise ValueError(f"standardise must be one of {STANDARDISATIONS}, got {standardise!r}")
    if standardise == "auto":
        standardise = "range" if g.shape[1] == 2 else "minmax"
    low, high = jnp.min(g, axis=1, keepdims=True), jnp.max(g, axis=1, keepdims=True)
    spread = high - low
    safe = jnp.where(spread > 0, spread, 1.0)
    if standardise == "range":
        scaled = jnp.where(spread > 0, jnp.abs(g) / safe, jnp.where(g != 0, jnp.inf, 0.0))
    elif standardise == "minmax":
        scaled = jnp.where(spread > 0, (g - low) / safe, 0.0)
    else:
        scaled = g
    return jnp.sum(jnp.where(mask, scaled, 0.0), axis=1) / jnp.sum(mask)


@functools.partial(jax.jit, static_argnames=("apply_fn", "n_rounds", "n_samples", "n_steps", "standardise"))
def _ig_rounds(apply_fn, params, x, y, protected_mask, key, low, high, *, n_rounds, n_samples, n_steps, standardise):
    def one_round(round_key):
        index_key, baseline_key = jax.random.split(round_key)
        idx = jax.random.randint(index_key, (n_samples,), 0, x.shape[0])  # with replacement, as the reference
        baseline = jax.random.uniform(baseline_key, (n_samples, x.shape[1]), x.dtype, low, high)
        ig = integrated_gradients(apply_fn, params, x[idx], y[idx], baseline, n_steps=n_steps)
        return jnp.mean(ig, axis=0)

    mean_ig = lax.map(one_round, jax.random.split(key, n_rounds))  # one round's (n_samples, D) live at a time
    return mean_ig, round_sensitivity(mean_ig, protected_mask, standardise=standardise)


def ig_sensitivity_rounds(apply_fn: ApplyFn, params, x, y, protected_mask, key, *, n_rounds: int = 100,
                          n_samples: int = 2500, n_steps: int = 50, baseline_range: tuple[float, float] = (-1.0, 1.0),
                          standardise: str = "auto") -> tuple[jax.Array, jax.Array]:
    """Returns ((n_rounds, D) mean attributions, (n_rounds,) sensitivities): the paper's Table 2 protocol.

    Each bootstrap round draws n_samples rows of x (N, D) with replacement and, per row, a baseline from
    U(baseline_range) (the reference's "random" baseline, U(−1, 1)); computes the integrated gradients
    of the logit of the row's label y (N,) (`integrated_gradients`, n_steps intervals); averages them
    over the round; and standardises as `round_sensitivity`. The reference reports the median of the
    rounds' sensitivities with their 2.5% and 97.5% quantiles. All rounds run in one compiled program;
    `apply_fn` must be hashable (e.g. from `ctrain.models.make_model`).
    """
    x = finite_matrix("x", x)
    non_empty("x", x)
    y = as_labels("y", y, x.shape[0])
    check_class_range("y", y, num_classes_of(apply_fn, params, x.shape[1], x.dtype))
    for name, value in (("n_rounds", n_rounds), ("n_samples", n_samples), ("n_steps", n_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    low, high = (float(b) for b in baseline_range)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"baseline_range must be (low, high) with finite low < high, got {baseline_range!r}")
    mask = jnp.asarray(protected_mask)
    round_sensitivity(jnp.zeros((1, x.shape[1]), x.dtype), mask, standardise=standardise)  # the mask's checks
    return _ig_rounds(apply_fn, params, x, y, mask, key, low, high, n_rounds=int(n_rounds),
                      n_samples=int(n_samples), n_steps=int(n_steps), standardise=standardise)


# ---------------------------------------------------------------------------------------------------
# Aggregation to plain Python values
# ---------------------------------------------------------------------------------------------------

def mean_or_none(values, mask=None) -> float | None:
    """Returns the mean of the (N,) values where mask is True as a Python float, or None if none are selected.

    Raises ValueError if a selected value is NaN, so that a NaN can never hide inside a reported mean.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != values.shape:
            raise ValueError(f"mask has shape {mask.shape} but values have shape {values.shape}")
        values = values[mask]
    if values.size == 0:
        return None
    n_nan = int(np.isnan(values).sum())
    if n_nan:
        raise ValueError(f"{n_nan} of the {values.size} selected values are NaN")
    return float(values.mean())


def summarise(per_cf: Mapping[str, Any], *, valid=None) -> dict[str, float | int | None]:
    """Returns {"n", "n_valid", "validity", <metric>: mean over valid CFs} as plain Python numbers.

    A metric's mean is None (JSON null) when no counterfactual is valid, never NaN, following the
    reference's valid-only aggregation. "validity" is None only when N = 0.

    Args:
      per_cf: metric name → (N,) per-counterfactual values (e.g. cost, implausibility).
      valid: optional (N,) bool; None means every counterfactual counts.
    """
    lengths = {name: np.shape(v) for name, v in per_cf.items()}
    sizes = {s for s in lengths.values()}
    if len(sizes) > 1 or any(len(s) != 1 for s in sizes):
        raise ValueError(f"every metric must be a 1-D array of the same length, got shapes {lengths}")
    n = next(iter(sizes))[0] if sizes else (0 if valid is None else int(np.shape(valid)[0]))
    mask = np.ones(n, bool) if valid is None else np.asarray(valid, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"valid must have shape ({n},), got {mask.shape}")
    n_valid = int(mask.sum())
    summary: dict[str, float | int | None] = {"n": n, "n_valid": n_valid,
                                              "validity": (n_valid / n) if n else None}
    for name, values in per_cf.items():
        if name in summary:
            raise ValueError(f"metric name {name!r} clashes with a summary field")
        try:
            summary[name] = mean_or_none(values, mask)
        except ValueError as err:
            raise ValueError(f"metric {name!r}: {err}") from None
    return summary
