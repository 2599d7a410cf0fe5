"""Data parallelism: a 1-D device mesh, replicated state and batches split across its devices."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """Returns a 1-D Mesh named "data" over the given (default: all) devices, with Auto axis semantics."""
    # Mesh(...) defaults to Auto axes; jax.make_mesh defaults to Explicit ones, which break a
    # data-parallel step whose params are not sharded ("Contracting dimensions are sharded").
    return Mesh(np.array(jax.devices() if devices is None else devices), (DATA_AXIS,))


def replicate(tree, mesh: Mesh):
    """Returns `tree` with every array placed on every device of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def check_divisible(sizes: dict[str, int], mesh: Mesh) -> None:
    """Raises a ValueError naming every batch dimension in `sizes` that does not split evenly over the mesh."""
    n = mesh.devices.size
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
