"""Device mesh, shardings and multi-host start-up.

One ``jax.sharding.Mesh`` with axes ``('data', 'fsdp')``: the global batch is split over
both axes (every device holds a different slice of examples); parameters are replicated,
or split over ``fsdp`` when they are large. Multi-host runs (TPU pod slices, multi-node
GPU) go through ``jax.distributed.initialize()``; every host runs the same program and
feeds its own part of the batch.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def initialize_distributed() -> None:
    """Join a multi-host job when the environment describes one; a no-op on one host.

    ``jax.distributed.initialize()`` discovers the coordinator itself on Cloud TPU pod
    slices, SLURM and Open MPI; elsewhere set ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
    """
    markers = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")
    if any(m in os.environ for m in markers) and not jax.distributed.is_initialized():
        jax.distributed.initialize()


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
    """A ``('data', 'fsdp')`` mesh over ``devices`` (default: all), ``fsdp`` devices per group."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"fsdp={fsdp} must be >= 1 and divide the device count {len(devices)}")
    grid = np.asarray(devices).reshape(len(devices) // fsdp, fsdp)
    return Mesh(grid, MESH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over all devices of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    """Raise if ``global_batch`` cannot be split evenly over the mesh's devices."""
    if global_batch % mesh.size:
        raise ValueError(
            f"global batch size {global_batch} is not divisible by the {mesh.size} devices of the mesh")


def param_sharding(mesh: Mesh, params, min_size: int = 2**18):
    """Shardings for a parameter pytree: large arrays split over ``fsdp``, the rest replicated.

    An array with at least ``min_size`` elements is split along its largest axis that the
    ``fsdp`` axis size divides; with ``fsdp == 1`` everything is replicated.
    """
    fsdp = mesh.shape["fsdp"]

    def spec(x):
        if fsdp == 1 or math.prod(x.shape) < min_size:
            return replicated(mesh)
        for axis in np.argsort(x.shape)[::-1]:
            if x.shape[axis] % fsdp == 0:
                parts = [None] * len(x.shape)
                parts[axis] = "fsdp"
                return NamedSharding(mesh, P(*parts))
        return replicated(mesh)

    return jax.tree.map(spec, params)


def global_batch_from_local(local_batch, mesh: Mesh):
    """Assemble each host's part of the batch (numpy pytree) into globally sharded ``jax.Array``s."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
