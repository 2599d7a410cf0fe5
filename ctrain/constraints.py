"""Actionability constraints as arrays, and the projections that enforce them exactly.

A counterfactual x' for a factual x is feasible when: immutable features equal x bit for bit,
increase-only features satisfy x' >= x, decrease-only features x' <= x, every feature lies in
[min(lower, x), max(upper, x)] (the factual itself is always feasible, even when it lies outside
the bounds fitted on training data), every one-hot group is a real category, and every lattice feature
(an integer column, standardised) is one of its lattice points origin + k·step. The search runs relaxed (a
group's columns and a lattice feature move within their bounds) and `snap` turns the result into a category
and lattice points.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

FREE, IMMUTABLE, INCREASE, DECREASE = 0, 1, 2, 3
CODES = {"free": FREE, "immutable": IMMUTABLE, "increase": INCREASE, "decrease": DECREASE}


@flax.struct.dataclass
class Constraints:
    """Per-feature constraint arrays: mutability codes, bounds, one-hot groups, scales and an optional lattice.

    `groups` holds the one-hot groups' column indices as static (hashable) data, so a compiled search slices
    them out instead of gathering them at run time; `group_index` is the same groups as a padded array.
    """

    mutability: jax.Array  # (D,) int32, one of FREE/IMMUTABLE/INCREASE/DECREASE
    lower: jax.Array  # (D,) float32, may be -inf
    upper: jax.Array  # (D,) float32, may be +inf
    group_index: jax.Array  # (G, S) int32 column indices of one-hot groups, padded with -1
    scale: jax.Array  # (D,) float32 > 0, each feature's unit of change (training std) for units-aware searches
    grid_origin: jax.Array | None = None  # (D,) float32: feature j takes the values grid_origin[j] + k·grid_step[j]
    grid_step: jax.Array | None = None  # (D,) float32 >= 0, 0 for a continuous feature; None: no lattice at all
    groups: tuple[tuple[int, ...], ...] = flax.struct.field(pytree_node=False, default=())

    @property
    def width(self) -> int:
        return self.mutability.shape[-1]

    @property
    def has_groups(self) -> bool:
        return self.group_index.shape[-2] > 0

    @property
    def has_lattice(self) -> bool:
        return self.grid_step is not None

    @property
    def protected(self) -> jax.Array:
        """Returns a (D,) bool mask of features with a mutability constraint."""
        return self.mutability != FREE


def make_constraints(width: int, *, immutable=(), increase=(), decrease=(), lower=None, upper=None,
                     groups=(), scale=None, grid_origin=None, grid_step=None) -> Constraints:
    """Returns Constraints for `width` features from column-index lists, optional bounds, one-hot groups and scales.

    `grid_origin`, `grid_step` ((D,) each, optional): a lattice per feature; feature j may take only the values
    grid_origin[j] + k·grid_step[j], k integer, where grid_step[j] > 0 (0: a continuous feature). For an integer
    column standardised with training mean m and std s, origin = −m/s and step = 1/s. Origin defaults to 0.
    """
    mut = np.full(width, FREE, np.int32)
    for code, cols in ((IMMUTABLE, immutable), (INCREASE, increase), (DECREASE, decrease)):
        cols = np.asarray(list(cols), dtype=np.int64)
        if cols.size and (cols.min() < 0 or cols.max() >= width):
            raise ValueError(f"constraint column index out of range [0, {width}): {cols.tolist()}")
        if np.any(mut[cols] != FREE):
            raise ValueError(f"columns {cols[mut[cols] != FREE].tolist()} are given two mutabilities")
        mut[cols] = code
    lo = np.full(width, -np.inf, np.float32) if lower is None else np.asarray(lower, np.float32)
    hi = np.full(width, np.inf, np.float32) if upper is None else np.asarray(upper, np.float32)
    if lo.shape != (width,) or hi.shape != (width,):
        raise ValueError(f"lower/upper must have shape ({width},), got {lo.shape} and {hi.shape}")
    if np.any(np.isnan(lo)) or np.any(np.isnan(hi)):
        raise ValueError("bounds must not be NaN")
    if np.any(lo > hi):
        bad = np.flatnonzero(lo > hi).tolist()
        raise ValueError(f"lower bound > upper bound for columns {bad}")
    groups = [list(g) for g in groups]
    flat = [c for g in groups for c in g]
    if len(flat) != len(set(flat)):
        raise ValueError("a column belongs to more than one one-hot group")
    if any(len(g) < 2 for g in groups) or any(c < 0 or c >= width for c in flat):
        raise ValueError(f"one-hot groups need >= 2 columns in [0, {width}), got {groups}")
    for g in groups:
        if np.any(np.isin(mut[g], [INCREASE, DECREASE])) or len(set(mut[g].tolist())) > 1:
            raise ValueError(f"one-hot group {g} must be all 'free' or all 'immutable'")
        if np.any(lo[g] > 0) or np.any(hi[g] < 1):
            raise ValueError(f"one-hot group {g} has bounds that exclude 0 or 1, so no category is feasible")
    sc = np.ones(width, np.float32) if scale is None else np.asarray(scale, np.float32)
    if sc.shape != (width,) or not np.all(np.isfinite(sc)) or np.any(sc <= 0):
        raise ValueError(f"scale must be ({width},) finite values > 0, got shape {sc.shape}")
    origin, step = _lattice(width, grid_origin, grid_step, lo, hi, flat)
    size = max((len(g) for g in groups), default=1)
    gidx = np.full((len(groups), size), -1, np.int32)
    for i, g in enumerate(groups):
        gidx[i, : len(g)] = g
    return Constraints(jnp.asarray(mut), jnp.asarray(lo), jnp.asarray(hi), jnp.asarray(gidx), jnp.asarray(sc),
                       grid_origin=origin, grid_step=step, groups=tuple(tuple(int(i) for i in g) for g in groups))


def _lattice(width: int, grid_origin, grid_step, lo: np.ndarray, hi: np.ndarray, group_columns: list[int]):
    """Returns (origin, step) as (D,) arrays, or (None, None) when no feature has a lattice; raises on bad input."""
    if grid_step is None:
        if grid_origin is not None:
            raise ValueError("grid_origin is given without grid_step: pass the lattice's step per feature too")
        return None, None
    step = np.asarray(grid_step, np.float32)
    origin = np.zeros(width, np.float32) if grid_origin is None else np.asarray(grid_origin, np.float32)
    if step.shape != (width,) or origin.shape != (width,):
        raise ValueError(f"grid_origin/grid_step must have shape ({width},), got {origin.shape} and {step.shape}")
    if not (np.all(np.isfinite(step)) and np.all(np.isfinite(origin))) or np.any(step < 0):
        bad = np.flatnonzero(~np.isfinite(step) | ~np.isfinite(origin) | (step < 0)).tolist()
        raise ValueError(f"grid_step must be finite and >= 0 (0: continuous) and grid_origin finite; columns {bad}")
    on_groups = [j for j in group_columns if step[j] > 0]
    if on_groups:
        raise ValueError(f"columns {on_groups} are in one-hot groups and cannot also have a lattice (grid_step > 0)")
    lattice = step > 0
    k_lo = np.ceil((lo - origin) / np.where(lattice, step, 1) - _LATTICE_TOL)
    k_hi = np.floor((hi - origin) / np.where(lattice, step, 1) + _LATTICE_TOL)
    empty = lattice & (k_lo > k_hi)
    if np.any(empty):
        raise ValueError(f"columns {np.flatnonzero(empty).tolist()} have no lattice point within their bounds")
    if not np.any(lattice):
        return None, None
    return jnp.asarray(origin), jnp.asarray(step)


# A value within this fraction of a step of a lattice point is taken as on it: standardised integers are lattice
# points only up to float32 rounding.
_LATTICE_TOL = 1e-3


def from_schema(schema, grid_origin=None, grid_step=None) -> Constraints:
    """Returns the Constraints arrays of a `ctrain.data.Schema`, with an optional (D,) integer lattice."""
    lo, hi = schema.bounds_array()
    muts = [f.mutability for f in schema.features]
    cols = {m: [i for i, v in enumerate(muts) if v == m] for m in CODES}
    return make_constraints(schema.width, immutable=cols["immutable"], increase=cols["increase"],
                            decrease=cols["decrease"], lower=lo, upper=hi, groups=list(schema.groups.values()),
                            scale=schema.scale_array(), grid_origin=grid_origin, grid_step=grid_step)


def unconstrained(width: int) -> Constraints:
    """Returns Constraints that allow every change: all features free, no bounds, no groups."""
    return make_constraints(width)


def check_width(constraints: Constraints, width: int) -> None:
    """Raises a ValueError when the constraints describe a different number of features than the data."""
    if constraints.width != width:
        raise ValueError(f"the constraints describe {constraints.width} features but x has {width}")


def feasible_box(x: jax.Array, c: Constraints) -> tuple[jax.Array, jax.Array]:
    """Returns (lo, hi), each shaped like x (..., D): the per-feature interval a counterfactual of x may occupy."""
    lo = jnp.minimum(c.lower, x)
    hi = jnp.maximum(c.upper, x)
    lo = jnp.where((c.mutability == IMMUTABLE) | (c.mutability == INCREASE), x, lo)
    hi = jnp.where((c.mutability == IMMUTABLE) | (c.mutability == DECREASE), x, hi)
    return lo, hi


def _gather_groups(x: jax.Array, group_index: jax.Array) -> tuple[jax.Array, jax.Array]:
    valid = group_index >= 0
    return jnp.take(x, jnp.where(valid, group_index, 0), axis=-1), valid


def _scatter_groups(x: jax.Array, group_index: jax.Array, values: jax.Array) -> jax.Array:
    # Written as a gather from the (G·S) group slots into the D columns: XLA's CPU scatter was the
    # slowest op of a constrained search step.
    flat = group_index.reshape(-1)
    match = flat[:, None] == jnp.arange(x.shape[-1])[None, :]  # (G·S, D); padding (-1) matches no column
    dense = jnp.take(values.reshape(values.shape[:-2] + (-1,)), jnp.argmax(match, axis=0), axis=-1)
    return jnp.where(jnp.any(match, axis=0), dense, x)


def snap_groups(x: jax.Array, group_index) -> jax.Array:
    """Returns x (..., D) with each one-hot group replaced by the one-hot vector of its largest entry.

    `group_index` is `Constraints.groups` (static: each group is sliced out) or a (G, S) padded index array.
    """
    if isinstance(group_index, tuple):
        return _snap_static_groups(x, group_index)
    if group_index.shape[0] == 0:
        return x
    v, valid = _gather_groups(x, group_index)
    best = jnp.argmax(jnp.where(valid, v, -jnp.inf), axis=-1)
    onehot = (jnp.arange(v.shape[-1]) == best[..., None]).astype(x.dtype)
    return _scatter_groups(x, group_index, onehot)


def _one_hot_of_max(v: jax.Array) -> jax.Array:
    return (jnp.arange(v.shape[-1]) == jnp.argmax(v, axis=-1)[..., None]).astype(v.dtype)


def _snap_static_groups(x: jax.Array, groups: tuple[tuple[int, ...], ...]) -> jax.Array:
    # XLA's CPU backend runs gathers with traced indices element by element (78% of an Adult search step): with the
    # columns known when the search compiles, a contiguous group is a slice and the row is put back together by
    # one concatenation.
    if not groups:
        return x
    if not all(g == tuple(range(g[0], g[0] + len(g))) for g in groups):
        return x.at[..., np.concatenate(groups)].set(
            jnp.concatenate([_one_hot_of_max(x[..., np.asarray(g)]) for g in groups], axis=-1))
    pieces, end = [], 0
    for g in sorted(groups):
        pieces += [x[..., end:g[0]], _one_hot_of_max(x[..., g[0]:g[-1] + 1])]
        end = g[-1] + 1
    return jnp.concatenate(pieces + [x[..., end:]], axis=-1)


def project(x_cf: jax.Array, x: jax.Array, c: Constraints, box: tuple[jax.Array, jax.Array] | None = None
            ) -> jax.Array:
    """Returns the relaxed-feasible point nearest x_cf (..., D): clipped to the feasible box, immutables = x.

    `box` is `feasible_box(x, c)`, passed in by loops that project the same factuals many times. One-hot groups
    are relaxed to their box (`snap` turns them into categories).
    """
    lo, hi = feasible_box(x, c) if box is None else box
    return jnp.clip(x_cf, lo, hi)  # clip(v, x, x) is exactly x, so immutables stay bit-identical here


def has_discrete(c: Constraints) -> bool:
    """Returns whether the constraints hold one-hot groups or lattice features (anything `snap` changes)."""
    return c.has_groups or c.has_lattice


def snap(x_cf: jax.Array, x: jax.Array, c: Constraints, box: tuple[jax.Array, jax.Array] | None = None
         ) -> jax.Array:
    """Returns a relaxed-feasible x_cf (..., D) with its one-hot groups snapped to categories and its lattice
    features rounded to feasible lattice points (immutables = x); `box` as in `project`."""
    if c.has_lattice:
        x_cf = round_to_lattice(x_cf, x, c, feasible_box(x, c) if box is None else box)
    if not c.has_groups:
        return x_cf
    return jnp.where(c.mutability == IMMUTABLE, x, snap_groups(x_cf, c.groups))


def round_to_lattice(x_cf: jax.Array, x: jax.Array, c: Constraints, box: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Returns x_cf (..., D) with each lattice feature at its nearest lattice point inside the feasible `box`.

    Lattice points are counted from the factual when it is one (to float32 rounding), so an unchanged feature
    stays x bit for bit and an increase-only feature moves by whole steps, x' >= x exactly; from the origin
    otherwise. A feature whose box holds no lattice point (an off-lattice factual fenced in by its constraints)
    keeps the factual's value, which is always feasible.
    """
    lo, hi = box
    lattice = c.grid_step > 0
    step = jnp.where(lattice, c.grid_step, 1.0)
    k_x = (x - c.grid_origin) / step
    on_lattice = jnp.abs(k_x - jnp.round(k_x)) <= _LATTICE_TOL
    anchor = jnp.where(on_lattice, x, c.grid_origin)
    k_lo = jnp.ceil((lo - anchor) / step - _LATTICE_TOL)
    k_hi = jnp.floor((hi - anchor) / step + _LATTICE_TOL)
    k = jnp.clip(jnp.round((x_cf - anchor) / step), k_lo, k_hi)
    rounded = jnp.where(k_lo <= k_hi, jnp.clip(anchor + k * step, lo, hi), x)
    return jnp.where(lattice, rounded, x_cf)


def finalize(x_cf: jax.Array, x: jax.Array, c: Constraints, *, snap_groups: bool = True) -> jax.Array:
    """Returns the feasible counterfactual (..., D): `project`, then groups snapped to categories if `snap_groups`."""
    projected = project(x_cf, x, c)
    return snap(projected, x, c) if snap_groups else projected


def protect(x_pos: jax.Array, x_cf: jax.Array, c: Constraints) -> jax.Array:
    """Returns x⁺ (..., D) with protected features pulled to x' so they add no energy gradient (paper §3.4)."""
    out = jnp.where(c.mutability == IMMUTABLE, x_cf, x_pos)
    out = jnp.where(c.mutability == INCREASE, jnp.maximum(x_cf, x_pos), out)
    return jnp.where(c.mutability == DECREASE, jnp.minimum(x_cf, x_pos), out)


def violations(x_cf: jax.Array, x: jax.Array, c: Constraints, *, tol: float = 0.0) -> dict[str, jax.Array]:
    """Returns per-sample (N,) int32 counts of broken constraints, by kind, and their sum under "total".

    Keys: "immutable_changed" (any change, bit-exact at tol 0), "increase_violated", "decrease_violated",
    "out_of_bounds" (outside [min(lower, x), max(upper, x)]: the factual itself is never out of bounds)
    and "invalid_onehot" (groups whose entries are not all 0/1 within tol with exactly one 1).
    """
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    x_cf, x = jnp.asarray(x_cf), jnp.asarray(x)
    if x_cf.shape != x.shape:
        raise ValueError(f"x_cf and x must have the same shape, got {x_cf.shape} and {x.shape}")
    check_width(c, x.shape[-1])
    delta = x_cf - x
    count = lambda mask: jnp.sum(mask, -1, dtype=jnp.int32)
    out = {"immutable_changed": count((c.mutability == IMMUTABLE) & (jnp.abs(delta) > tol)),
           "increase_violated": count((c.mutability == INCREASE) & (delta < -tol)),
           "decrease_violated": count((c.mutability == DECREASE) & (delta > tol)),
           "out_of_bounds": count((x_cf < jnp.minimum(c.lower, x) - tol) | (x_cf > jnp.maximum(c.upper, x) + tol))}
    if c.has_groups:
        v, valid = _gather_groups(x_cf, c.group_index)
        is_one = jnp.abs(v - 1.0) <= tol
        all_binary = jnp.all(is_one | (jnp.abs(v) <= tol) | ~valid, -1)
        one_hot = all_binary & (jnp.sum(is_one & valid, -1) == 1)
        # As with bounds, the factual's own value is always allowed (e.g. an immutable group that is not one-hot).
        as_factual = jnp.all((jnp.abs(v - _gather_groups(x, c.group_index)[0]) <= tol) | ~valid, -1)
        out["invalid_onehot"] = count(~(one_hot | as_factual))
    else:
        out["invalid_onehot"] = jnp.zeros(x_cf.shape[:-1], jnp.int32)
    out["total"] = sum(out.values())
    return out
