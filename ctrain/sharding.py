"""Data parallelism: device meshes, replicated state, split batches, axis-name plumbing and a per-device search.

Two ways to run the train step on several devices, both tested against one device:

- `jit` on a sharded batch (what `fit(..., mesh=data_mesh())` does): `replicate` the state, `shard_batch` the
  batch and build the step with `make_train_step(..., mesh=mesh)`. The search and the loss run per device
  under `jax.shard_map` (`per_device_search`, `data_parallel`), so the search's early exit does not
  synchronise the devices at every iteration and each step has one all-reduce (gradient and metrics).
- `jax.pmap` (or `jax.shard_map`) around `make_train_step(..., axis_name=AXIS)`: the step averages gradients
  and metrics over the named axis itself (`mean_over`), skips a non-finite update on every device together
  and folds the device index into its key (`device_key`). `replicate_for_pmap`, `split_for_pmap` and
  `unreplicate` lay the arrays out for it.

`collective_counts` reads the collectives out of a compiled program's HLO text.

Several processes (multi-host): join them with `initialize_processes` (`jax.distributed.initialize` with bounded
peer timeouts), so that a process whose peer dies stops soon and says who is gone. The setting is `peer_timeout_s`
(keyword of `initialize_processes`, else the environment variable CTRAIN_PEER_TIMEOUT_S, else 60 s). `fit` meets
its peers (`wait_for_peers`) before each checkpoint: a peer that has not arrived within peer_timeout_s raises
`PeerLostError` naming its process index. JAX's heartbeat timeout is set to 2 * peer_timeout_s, so that named error
comes first when the peer died shortly before the checkpoint; a death noticed elsewhere (e.g. inside a long epoch)
ends the survivor through JAX's heartbeat, whose abort names the task and says another task died, within about
2 * peer_timeout_s of the death. After a PeerLostError, JAX's shutdown at exit aborts the process the same way.
"""
from __future__ import annotations

import functools
import math
import os
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ctrain.objective import make_counterfactual_batch
from ctrain.search import search_counterfactuals

DATA_AXIS = "data"
# HLO collective ops, as they appear in compiled HLO text (async ones as "<op>-start").
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "collective-broadcast")


def data_mesh(devices=None) -> Mesh:
    """Returns a 1-D Mesh named "data" over the given (default: all) devices, with Auto axis semantics."""
    # Mesh(...) defaults to Auto axes; jax.make_mesh defaults to Explicit ones, which break a
    # data-parallel step whose params are not sharded ("Contracting dimensions are sharded").
    return Mesh(np.array(jax.devices() if devices is None else devices), (DATA_AXIS,))


def replicate(tree, mesh: Mesh):
    """Returns `tree` with every array placed on every device of `mesh`."""
    replicated = NamedSharding(mesh, P())
    if not replicated.is_fully_addressable:
        # Multi-host: device_put treats an array committed to this process's devices (e.g. a state orbax
        # restored) as a cross-host transfer, which the CPU backend (JAX 0.10) refuses. Every process holds the
        # same values, so going through host memory builds the same global array.
        tree = jax.tree.map(_to_host, tree)
    return jax.device_put(tree, replicated)


def _to_host(a):
    # Typed PRNG keys have no NumPy form and are left as they are (fit's state and batches hold none).
    if (not isinstance(a, jax.Array) or not a.is_fully_addressable
            or jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)):
        return a
    return np.asarray(a)


def _device_count(devices: Mesh | int) -> int:
    if isinstance(devices, Mesh):
        return devices.devices.size
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or devices < 1:
        raise TypeError(f"expected a Mesh or a device count >= 1, got {devices!r}")
    return int(devices)


def check_divisible(sizes: dict[str, int], mesh: Mesh | int) -> None:
    """Raises a ValueError naming each size in `sizes` that does not split evenly over the mesh (or n devices)."""
    n = _device_count(mesh)
    bad = {name: size for name, size in sizes.items() if size % n}
    if bad:
        raise ValueError(f"{', '.join(f'{k}={v}' for k, v in bad.items())} does not split evenly over {n} devices; "
                         f"choose batch_size and ce_per_batch as multiples of {n}")


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Returns the NamedSharding that splits dimension `axis` of an array across the mesh's "data" devices."""
    return NamedSharding(mesh, P(*([None] * axis + [DATA_AXIS])))


def shard_batch(batch, mesh: Mesh, axis: int = 0):
    """Returns `batch` with every array split along `axis` across the mesh's "data" devices."""
    def put(a):
        check_divisible({"a batch dimension": a.shape[axis]}, mesh)
        return jax.device_put(a, batch_sharding(mesh, axis))

    return jax.tree.map(put, batch)


# --------------------------------------------------------------------------------------------------
# Several processes: joining them, and noticing a peer that is gone

PEER_TIMEOUT_ENV = "CTRAIN_PEER_TIMEOUT_S"
PEER_TIMEOUT_S = 60.0  # default seconds a process waits for a peer before calling it lost
_joined_timeout_s: float | None = None  # the peer timeout initialize_processes was given, once it ran
_barriers = 0  # barriers this process has waited at: the same count on every process, so keys match


class PeerLostError(RuntimeError):
    """A process of a multi-host run did not reach a meeting point in time: it died, hung or was preempted."""


def resolve_peer_timeout(peer_timeout_s: float | None = None) -> float:
    """Returns the peer timeout (s): the argument, else initialize_processes's, else $CTRAIN_PEER_TIMEOUT_S, else 60."""
    if peer_timeout_s is None and _joined_timeout_s is not None:
        return _joined_timeout_s
    if peer_timeout_s is None:
        raw = os.environ.get(PEER_TIMEOUT_ENV, "").strip()
        try:
            peer_timeout_s = float(raw) if raw else PEER_TIMEOUT_S
        except ValueError:
            raise ValueError(f"{PEER_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if isinstance(peer_timeout_s, bool) or not isinstance(peer_timeout_s, (int, float)) or not (
            math.isfinite(peer_timeout_s) and peer_timeout_s > 0):
        raise ValueError(f"peer_timeout_s must be a positive number of seconds, got {peer_timeout_s!r}")
    return float(peer_timeout_s)


def initialize_processes(coordinator_address: str, num_processes: int, process_id: int, *,
                         peer_timeout_s: float | None = None, **jax_kwargs) -> float:
    """Returns the peer timeout (s) after joining this process to a multi-host run via `jax.distributed.initialize`.

    JAX's heartbeat timeout becomes 2 * peer_timeout_s (JAX's default is 100 s) and its shutdown timeout
    peer_timeout_s (default 300 s); `wait_for_peers` (called by `fit` before each checkpoint) waits peer_timeout_s.
    Other keywords (e.g. `initialization_timeout`, `local_device_ids`) go to `jax.distributed.initialize`.
    """
    global _joined_timeout_s
    timeout = resolve_peer_timeout(peer_timeout_s)
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, heartbeat_timeout_seconds=math.ceil(2 * timeout),
                               shutdown_timeout_seconds=math.ceil(timeout), **jax_kwargs)
    _joined_timeout_s = timeout
    return timeout


def _distributed_client():
    from jax._src import distributed  # orbax reaches the coordination service the same way
    return distributed.global_state.client


def lost_processes(message: str, num_processes: int, me: int) -> list[int]:
    """Returns the process indices a failed JAX barrier or heartbeat message names; all others if it names none."""
    found = [int(m) for m in re.findall(r"[Tt]ask (\d+) heartbeat timeout", message)]
    for marker in ("timed out task names:", "stopped sending heartbeats):"):
        if marker in message:
            for line in message.split(marker, 1)[1].strip("\n").splitlines():
                m = re.fullmatch(r"\s*(?:\S*task:)?(\d+)\s*", line)
                if m is None:
                    break
                found.append(int(m.group(1)))
    found = sorted({i for i in found if 0 <= i < num_processes and i != me})
    return found or [i for i in range(num_processes) if i != me]


def wait_for_peers(what: str, peer_timeout_s: float | None = None) -> None:
    """Returns once every process has reached this point; raises PeerLostError naming the processes that did not.

    A no-op in a one-process run (or one not joined through `jax.distributed`). `what` names the point for the
    message (e.g. "the checkpoint of epoch 2"); every process must call this the same number of times.
    """
    global _barriers
    client = _distributed_client() if jax.process_count() > 1 else None
    if client is None:
        return
    timeout = resolve_peer_timeout(peer_timeout_s)
    _barriers += 1
    try:
        client.wait_at_barrier(f"ctrain:{_barriers}", max(1, round(timeout * 1000)))
    except Exception as err:  # JaxRuntimeError (DEADLINE_EXCEEDED, or UNAVAILABLE once the heartbeat failed)
        n, me = jax.process_count(), jax.process_index()
        lost = lost_processes(str(err), n, me)
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise PeerLostError(
            f"process {', '.join(map(str, lost))} of {n} did not reach {what} within {timeout:g} s "
            f"(peer_timeout_s, or {PEER_TIMEOUT_ENV}): it has most likely died, hung or been preempted. Process "
            f"{me} stops here; restart every process to resume from the last checkpoint. (JAX: {first})") from None


# --------------------------------------------------------------------------------------------------
# Axis-name plumbing: inside `jax.pmap(..., axis_name=...)` or `jax.shard_map`, with None meaning one device.


def mean_over(tree, axis_name: str | None):
    """Returns `tree` averaged over the devices of `axis_name` (`lax.pmean`), or unchanged when axis_name is None."""
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def _varying_axes(a) -> frozenset:
    aval = jax.typeof(a)
    manual = getattr(aval, "manual_axis_type", None)  # JAX 0.10; earlier releases call it `vma`
    return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def as_device_local(tree, like: jax.Array, axis_name: str | None):
    """Returns `tree` cast to vary over `axis_name` where `like` does under shard_map's type checks, else unchanged.

    The cast applies inside `jax.shard_map(..., check_vma=True)` (the default) when `like` varies over the axis
    and `tree` does not; under pmap, check_vma=False or without an axis `tree` is returned as it is.
    shard_map's autodiff sums the gradient of a replicated input over the devices on its own. Differentiating
    with respect to a device-local copy keeps each device's own gradient, so the step's explicit mean is the
    one reduction whichever way it is mapped.
    """
    if axis_name is None or axis_name not in _varying_axes(like):
        return tree

    def cast(a):
        return a if axis_name in _varying_axes(a) else jax.lax.pcast(a, axis_name, to="varying")

    return jax.tree.map(cast, tree)


def device_key(key: jax.Array, axis_name: str | None) -> jax.Array:
    """Returns `key` with this device's index along `axis_name` folded in (unchanged when axis_name is None).

    A key handed to every device unchanged would draw the same factual positions, targets and positives on
    each device's shard; folding in the index makes the devices' draws independent.
    """
    return key if axis_name is None else jax.random.fold_in(key, jax.lax.axis_index(axis_name))


def replicate_for_pmap(tree, n: int | None = None):
    """Returns `tree` with every array repeated along a new leading axis of n (default: local devices) for pmap."""
    n = jax.local_device_count() if n is None else _device_count(n)
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + jnp.shape(a)), tree)


def split_for_pmap(batch, n: int | None = None):
    """Returns `batch` with every (B, ...) array reshaped to (n, B / n, ...) for pmap (n default: local devices)."""
    n = jax.local_device_count() if n is None else _device_count(n)

    def split(a):
        check_divisible({"a batch dimension": a.shape[0]}, n)
        return a.reshape((n, a.shape[0] // n) + a.shape[1:])

    return jax.tree.map(split, batch)


def unreplicate(tree):
    """Returns the first device's copy of a pmapped tree (leading device axis dropped)."""
    return jax.tree.map(lambda a: a[0], tree)


def data_parallel(fn: Callable, mesh: Mesh, *, replicated_args: int, axis_name: str = DATA_AXIS) -> Callable:
    """Returns `fn` run per device under `jax.shard_map`, its first `replicated_args` arguments whole, the rest split.

    The other arguments are split along their first axis (a multiple of the device count). `fn` must return
    the same values on every device (e.g. after `mean_over(..., axis_name)`); they come back replicated.
    """
    def run(*args):
        for a in jax.tree.leaves(args[replicated_args:]):
            check_divisible({"a batch dimension": a.shape[0]}, mesh)
        specs = (P(),) * replicated_args + (P(axis_name),) * (len(args) - replicated_args)
        return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P())(*args)

    return run


# --------------------------------------------------------------------------------------------------
# The search, per device


def per_device_search(mesh: Mesh, search_fn: Callable | None = None, axis_name: str = DATA_AXIS) -> Callable:
    """Returns a search with `search_counterfactuals`'s signature that runs on each device's rows of x (N, D).

    `search(apply_fn, params, x, target, key, config, constraints=None, aux=None) -> SearchResult` runs
    `search_fn` (default `search_counterfactuals`) under `jax.shard_map`. On a sharded batch the search's `lax.while_loop` stops when *every* sample has converged; under plain
    `jit` that test is an all-reduce across the devices at every iteration. Here each device loops over its own
    rows and stops on its own: converged rows are frozen, so the results equal one search over all N rows
    (up to float rounding). N must be a multiple of the device count. Each device's search gets the key with its
    device index folded in, so a search that draws randomness (no built-in one does) draws independently per device.
    A keyword `x_init` (N, D) (warm starts, `search_counterfactuals`'s) is split with the rows of x.
    """
    if search_fn is None:
        search_fn = search_counterfactuals
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh such as ctrain.sharding.data_mesh(), got {type(mesh).__name__}")

    def search(apply_fn, params, x, target, key, config, constraints=None, aux=None, *, x_init=None):
        check_divisible({"factuals searched per step (rows of x)": x.shape[0]}, mesh)
        rows = P(axis_name)
        if x_init is not None:  # warm starts (amortised chains, ctrain.chains) are split with their rows of x
            def local_init(params, x, target, key, constraints, aux, x_init):
                return search_fn(apply_fn, params, x, target, device_key(key, axis_name), config, constraints, aux,
                                 x_init=x_init)

            return jax.shard_map(local_init, mesh=mesh, in_specs=(P(), rows, rows, P(), P(), P(), rows),
                                 out_specs=rows, check_vma=False)(params, x, target, key, constraints, aux, x_init)

        def local(params, x, target, key, constraints, aux):
            return search_fn(apply_fn, params, x, target, device_key(key, axis_name), config, constraints, aux)

        # check_vma=False: the search starts its loop carry from fresh zeros, which the varying-axis type check
        # would reject as "not varying over the axis"; every output row is computed on its own device anyway.
        return jax.shard_map(local, mesh=mesh, in_specs=(P(), rows, rows, P(), P(), P()), out_specs=rows,
                             check_vma=False)(params, x, target, key, constraints, aux)

    return search


def per_device_counterfactual_batch(mesh: Mesh, axis_name: str = DATA_AXIS, *, protect: bool = True) -> Callable:
    """Returns `objective.make_counterfactual_batch` with its search run per device (`per_device_search`).

    Targets and positives are drawn from the same keys over the whole batch, so the result equals
    `make_counterfactual_batch` on one device (tests/test_sharding.py checks that the two agree).
    """
    return functools.partial(make_counterfactual_batch, search=per_device_search(mesh, axis_name=axis_name),
                             protect=protect)


# --------------------------------------------------------------------------------------------------
# What a compiled program synchronises


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_WHILE = re.compile(r"\bwhile\(.*?condition=%?([\w.\-]+),\s*body=%?([\w.\-]+)")
_CALLS = re.compile(r"(?:to_apply|calls|condition|body|branch_computations|called_computations)=\{?([%\w.\-,\s]+)\}?")


def _computations(hlo_text: str) -> dict[str, list[str]]:
    """Returns {computation name: its instruction lines} of an HLO module's text."""
    out, name = {}, None
    for line in hlo_text.splitlines():
        match = _COMPUTATION.match(line)
        if match:
            name = match.group(1)
            out[name] = []
        elif line.strip() == "}":
            name = None
        elif name is not None:
            out[name].append(line)
    return out


def _reachable(roots, comps: dict[str, list[str]]) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for line in comps[name]:
            for group in _CALLS.findall(line):
                todo.extend(n.strip().lstrip("%") for n in group.split(",") if n.strip())
    return seen


def _count(lines) -> dict[str, int]:
    counts = dict.fromkeys(COLLECTIVES, 0)
    for line in lines:
        for op in COLLECTIVES:
            if re.search(rf"\s{op}(-start)?\(", line):
                counts[op] += 1
    return counts


def collective_counts(hlo_text: str) -> dict[str, dict[str, int]]:
    """Returns {"total", "in_loop_conditions", "in_loop_bodies": {collective op: count}} of compiled HLO text.

    Counts are static (ops in the program, not executions): a collective in a while loop's condition runs at
    every iteration, which is how an early-exit test over a sharded batch synchronises all devices. Pass
    `jax.jit(f).lower(...).compile().as_text()`.
    """
    comps = _computations(hlo_text)
    conditions, bodies = set(), set()
    for lines in comps.values():
        for line in lines:
            match = _WHILE.search(line)
            if match:
                conditions.add(match.group(1))
                bodies.add(match.group(2))
    in_conditions = _reachable(conditions, comps)
    in_bodies = _reachable(bodies, comps) - in_conditions
    return {"total": _count(line for lines in comps.values() for line in lines),
            "in_loop_conditions": _count(line for n in in_conditions for line in comps[n]),
            "in_loop_bodies": _count(line for n in in_bodies for line in comps[n])}
