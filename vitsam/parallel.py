"""Data parallelism with `jax.jit` over a device `Mesh` (the current replacement for `pmap`).

Parameters and optimizer state are replicated, the batch is split along its first axis over the mesh's
"data" axis; XLA inserts the gradient all-reduce. Each process feeds its own slice of the global batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh over every device of every process (or the given devices), axis name "data"."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis over the mesh."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_global_batch(global_batch: int, mesh: Mesh) -> int:
    """The per-process batch size; a clear error when the global batch does not split evenly."""
    devices, processes = mesh.size, jax.process_count()
    if global_batch % devices:
        raise ValueError(
            f"global batch_size {global_batch} does not divide by the {devices} devices of the mesh; "
            f"use a multiple of {devices}")
    return global_batch // processes


def shard_batch(batch, mesh: Mesh):
    """Per-process numpy batch (dict of (b, ...) arrays) -> global jax.Arrays split over the mesh."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
