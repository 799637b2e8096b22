"""Meshes, batch sharding and the multi-controller runtime: `jax.jit` over a named device `Mesh` (the current
replacement for `pmap`), one program per process, every process running the same command.

    initialize_distributed()                     # several processes: join them (auto-detected or explicit)
    mesh = make_mesh({"data": 2, "fsdp": -1})    # every device of every process; -1 fills the rest
    batch = shard_batch(local_numpy_batch, mesh) # each process feeds its rows; one global array

The batch's leading axis is split over `BATCH_AXES` (data × fsdp); parameters are placed by `vitsam.sharding`.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
BATCH_AXES = ("data", "fsdp")
DEFAULT_MESH = {"data": -1, "fsdp": 1}


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """{axis: size} with a -1 resolved; a ValueError naming the field when the sizes cannot cover the devices."""
    axes = {str(k): int(v) for k, v in dict(axes).items()}
    if not axes:
        raise ValueError("mesh: no axes given")
    free = [k for k, v in axes.items() if v == -1]
    bad = [k for k, v in axes.items() if v == 0 or v < -1]
    if bad or len(free) > 1:
        raise ValueError(f"mesh.{bad[0] if bad else free[1]}: sizes must be positive, with at most one -1 "
                         f"(fills the rest); got {axes}")
    fixed = math.prod(v for v in axes.values() if v != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(f"mesh {axes}: the fixed sizes multiply to {fixed}, which does not divide the "
                             f"{num_devices} devices")
        axes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(f"mesh {axes}: the axis sizes multiply to {fixed}, but there are {num_devices} devices "
                         f"(set one axis to -1 to fill the rest)")
    return axes


def make_mesh(axes: Mapping[str, int] | None = None, devices: Sequence | None = None) -> Mesh:
    """A mesh over `devices` (default: every device of every process) with named axes {name: size}; -1 fills.
    `jax.make_mesh` orders the devices for the hardware (ICI rings on TPU)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(DEFAULT_MESH if axes is None else axes, len(devices))
    return jax.make_mesh(tuple(shape.values()), tuple(shape), axis_types=(AxisType.Auto,) * len(shape),
                         devices=devices)


def data_mesh(devices=None) -> Mesh:
    """Pure data parallelism: a mesh over every device (or the given ones) with all of them on "data"."""
    return make_mesh(DEFAULT_MESH, devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis over data × fsdp."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


def batch_split(mesh: Mesh) -> int:
    """Into how many parts the batch is split (data × fsdp)."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def check_global_batch(global_batch: int, mesh: Mesh) -> int:
    """The per-process batch size; a clear error when the global batch does not split evenly."""
    split, processes = batch_split(mesh), jax.process_count()
    axes = " × ".join(f"{a} {mesh.shape[a]}" for a in batch_axes(mesh))
    if global_batch <= 0 or global_batch % split:
        raise ValueError(f"batch_size {global_batch} does not split over the mesh's batch axes ({axes} = {split}); "
                         f"use a multiple of {split}")
    if global_batch % processes:
        raise ValueError(f"batch_size {global_batch} does not split over {processes} processes")
    return global_batch // processes


def shard_batch(batch, mesh: Mesh):
    """Per-process numpy batch (dict of (b, ...) arrays) -> global jax.Arrays split over data × fsdp."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


# ----------------------------------------------------------------------------- several processes

# Environment variables by which launchers announce several processes (JAX's own cluster detection reads them).
_LAUNCHERS = {"SLURM_NTASKS": "SLURM", "OMPI_COMM_WORLD_SIZE": "Open MPI"}


def detect_cluster() -> str | None:
    """The launcher of a multi-process job this process belongs to (SLURM, Open MPI, a TPU pod slice), or None.

    SLURM and Open MPI count as such only with more than one task. TPU pods are recognised by JAX's own cluster
    detection (the TPU VM metadata)."""
    for var, name in _LAUNCHERS.items():
        if int(os.environ.get(var, "1") or 1) > 1:
            return name
    try:  # JAX's detection of TPU pod slices; private API, so any failure means "not detected"
        from jax._src import clusters

        for cluster in clusters.ClusterEnv._cluster_types:
            if "Tpu" in cluster.__name__ and cluster.is_env_present():
                return "TPU"
    except Exception:  # noqa: BLE001
        pass
    return None


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, timeout_s: int = 300,
                           heartbeat_timeout_s: int = 100) -> bool:
    """Join the other processes of a multi-process job (`jax.distributed.initialize`); True if it did.

    Explicit: all three of coordinator_address ("host:port" of process 0), num_processes and process_id.
    Otherwise auto-detected (SLURM, Open MPI, TPU pod slices; JAX reads the launcher's environment); a lone
    process does nothing. timeout_s bounds the wait for the others at start-up; heartbeat_timeout_s is how long a
    silent (dead) process goes unnoticed before the others stop with an error instead of hanging.
    """
    given = [coordinator_address, num_processes, process_id]
    kwargs = dict(initialization_timeout=int(timeout_s), heartbeat_timeout_seconds=int(heartbeat_timeout_s),
                  shutdown_timeout_seconds=int(timeout_s))
    if any(v not in (None, "") for v in given):
        if any(v in (None, "") for v in given):
            raise ValueError("--coordinator_address, --num_processes and --process_id go together "
                             f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r})")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id {process_id} must be in 0 … {num_processes - 1} (--num_processes)")
        if num_processes == 1:
            return False
        _join(timeout_s, coordinator_address, num_processes, process_id, **kwargs)
        return True
    if detect_cluster() is None:
        return False
    _join(timeout_s, **kwargs)
    return True


def leave_distributed() -> None:
    """Leave a multi-process job at the end of a successful run, in every process (a no-op for a lone one).

    Every process waits here for the others (JAX's shutdown barrier, bounded by the start-up timeout), then the
    coordination service stops. Left to interpreter exit, the barrier comes after JAX has torn its backend down
    and after every other exit handler, and a process held up there makes the others abort at the barrier.
    """
    if jax.process_count() > 1:
        jax.distributed.shutdown()


def _join(timeout_s: int, *args, **kwargs) -> None:
    # The CPU backend exchanges its devices with the other processes after joining, under timeouts of its own
    # (2 and 5 minutes by default): a process still importing on a loaded host would fail the others there.
    minutes = max(2, math.ceil(timeout_s / 60))
    jax.config.update("jax_cpu_get_local_topology_timeout_minutes", minutes)
    jax.config.update("jax_cpu_get_global_topology_timeout_minutes", minutes + 3)
    jax.distributed.initialize(*args, **kwargs)
