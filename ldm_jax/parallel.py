"""Device mesh, shardings and multi-host start-up.

One ``jax.sharding.Mesh`` with axes ``('data', 'fsdp')``: the global batch is split over
both axes (every device holds a different slice of examples); parameters are replicated,
or split over ``fsdp`` when they are large. Multi-host runs (TPU pod slices, multi-node
GPU, several processes on one machine) go through ``jax.distributed.initialize()``; every
process runs the same program and feeds the rows of the batch its devices hold.
"""

from __future__ import annotations

import itertools
import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")
FSDP_MIN_SIZE = 2**18  # arrays with fewer elements stay replicated under fsdp
LAUNCH_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
HEARTBEAT_VARIABLE = "LDM_JAX_HEARTBEAT_TIMEOUT"
_CLUSTER_MARKERS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
_barrier_count = itertools.count()  # every process passes the same barriers in the same order


def initialize_distributed() -> None:
    """Join a multi-process job when the environment describes one; a no-op otherwise.

    Explicit launch (any machines, or several processes on one): set
    ``JAX_COORDINATOR_ADDRESS=host:port`` (process 0's machine), ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` in every process. On Cloud TPU pod slices, SLURM and Open MPI,
    ``jax.distributed.initialize()`` finds them itself. ``LDM_JAX_HEARTBEAT_TIMEOUT``
    (seconds, default 100) bounds how long the survivors wait once a process has died.
    """
    if jax.distributed.is_initialized():
        return
    timeout = _env_int(HEARTBEAT_VARIABLE, 100, minimum=1)
    given = [name for name in LAUNCH_VARIABLES if name in os.environ]
    if given:
        missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
        if missing:
            raise ValueError(
                f"{', '.join(given)} set but {', '.join(missing)} missing: a multi-process launch "
                f"needs all of {', '.join(LAUNCH_VARIABLES)}"
            )
        address = os.environ["JAX_COORDINATOR_ADDRESS"]
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"JAX_COORDINATOR_ADDRESS={address!r}: expected host:port, e.g. 10.0.0.2:1234")
        count = _env_int("JAX_NUM_PROCESSES", None, minimum=1)
        index = _env_int("JAX_PROCESS_ID", None, minimum=0)
        if index >= count:
            raise ValueError(f"JAX_PROCESS_ID={index} must be below JAX_NUM_PROCESSES={count}")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over TCP
        jax.distributed.initialize(address, num_processes=count, process_id=index, heartbeat_timeout_seconds=timeout)
        if jax.process_count() != count or jax.process_index() != index:
            raise RuntimeError(
                f"JAX reports process {jax.process_index()} of {jax.process_count()}, the "
                f"environment says {index} of {count}"
            )
    elif in_cluster():
        jax.distributed.initialize(heartbeat_timeout_seconds=timeout)


def in_cluster() -> bool:
    """Whether the environment describes a job of several hosts that ``jax.distributed.initialize()``
    finds by itself: SLURM, Open MPI, or a TPU slice of more than one worker (one worker
    hostname, as libtpu is told on a single host, is no cluster)."""
    if any(marker in os.environ for marker in _CLUSTER_MARKERS):
        return True
    return len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1


def _env_int(name: str, default: int | None, minimum: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(f"{name}={text!r}: expected an integer >= {minimum}")
    return value


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
    """A ``('data', 'fsdp')`` mesh over ``devices`` (default: all), ``fsdp`` devices per group."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(
            f"fsdp={fsdp} must be >= 1 and divide the device count {len(devices)} "
            f"({jax.process_count()} process(es) × {len(devices) // jax.process_count()} devices)"
        )
    grid = np.asarray(devices).reshape(len(devices) // fsdp, fsdp)
    return Mesh(grid, MESH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over all devices of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def check_batch_size(global_batch: int, mesh: Mesh, what: str = "global batch size") -> None:
    """Raise if ``global_batch`` cannot be split evenly over the mesh's devices."""
    if global_batch < 1 or global_batch % mesh.size:
        processes = len({d.process_index for d in mesh.devices.flat})
        raise ValueError(
            f"{what} {global_batch} is not divisible by the {mesh.size} devices of the mesh "
            f"({processes} process(es) × {mesh.size // processes} devices)"
        )


def param_sharding(mesh: Mesh, params, min_size: int = FSDP_MIN_SIZE):
    """Shardings for a parameter pytree: large arrays split over ``fsdp``, the rest replicated.

    An array with at least ``min_size`` elements is split along its largest axis that the
    ``fsdp`` axis size divides; with ``fsdp == 1`` everything is replicated. The same rule
    places trainable weights, optimizer state and the frozen networks a step reads.
    """
    fsdp = mesh.shape["fsdp"]

    def spec(x):
        shape = np.shape(x)
        if fsdp == 1 or math.prod(shape) < min_size:
            return replicated(mesh)
        for axis in np.argsort(shape, kind="stable")[::-1]:
            if shape[axis] % fsdp == 0:
                parts = [None] * len(shape)
                parts[axis] = "fsdp"
                return NamedSharding(mesh, P(*parts))
        return replicated(mesh)

    return jax.tree.map(spec, params)


def bytes_per_device(tree, shardings) -> int:
    """Bytes one device holds of ``tree`` (arrays or ``ShapeDtypeStruct``s) placed with ``shardings``."""
    sizes = jax.tree.map(lambda x, s: math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize, tree, shardings)
    return int(sum(jax.tree.leaves(sizes)))


def process_rows(mesh: Mesh, global_batch: int) -> range:
    """The rows of a ``[global_batch, ...]`` batch-sharded array that this process's devices hold."""
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
    blocks = sorted({(s[0].start or 0, global_batch if s[0].stop is None else s[0].stop) for s in index_map.values()})
    for (_, stop), (start, _) in zip(blocks, blocks[1:]):
        if stop != start:
            raise ValueError(
                f"this process's devices hold non-contiguous batch rows {blocks}; order the mesh's devices by process"
            )
    return range(blocks[0][0], blocks[-1][1])


def global_batch_from_local(local_batch, mesh: Mesh):
    """Assemble each host's part of the batch (numpy pytree) into globally sharded ``jax.Array``s."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def global_array(array: np.ndarray, sharding) -> jax.Array:
    """A global ``jax.Array`` from a host array that every process holds in full."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def process_flags(flag: bool, mesh: Mesh) -> jax.Array:
    """``[mesh.size]`` int32 holding this process's ``flag`` on each of its devices: its max,
    taken inside a jitted step, tells every process whether any process raised its flag."""
    local = np.full(len(mesh.local_devices), int(flag), np.int32)
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local, (mesh.size,))


def to_host(x) -> np.ndarray:
    """The whole of a global ``jax.Array`` as numpy, on every process (gathered across hosts
    when this process does not hold all of it)."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sync(name: str, timeout_s: int = 3600) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op with one process).

    The barrier lives in the coordination service, not in a device collective, so a process
    may be far behind (building data, compiling) without timing out the others."""
    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost

    multihost.get_barrier_sync_fn()(key=f"ldm_jax:{name}:{next(_barrier_count)}", timeout_ms=timeout_s * 1000)


def compile_together(jitted, static_argnums: tuple[int, ...] = ()):
    """``jitted`` whose every compilation (one per value of the static arguments) ends at a
    barrier of all processes before the program first runs.

    On CPU, gloo gives processes 30 s to meet in a new communicator, so without it a process
    still compiling (or one that found the program in the compilation cache) fails the job.
    """
    if jax.process_count() == 1:
        return jitted
    compiled = {}

    def call(*args):
        static = tuple(args[i] for i in static_argnums)
        if static not in compiled:
            compiled[static] = jitted.lower(*args).compile()
            sync("compiled")
        return compiled[static](*[a for i, a in enumerate(args) if i not in static_argnums])

    return call
