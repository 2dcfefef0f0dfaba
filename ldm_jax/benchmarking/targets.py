"""Accelerators to compile for without having one: abstract TPU devices, and each chip's memory,
bf16 peak and memory bandwidth (vendors' data sheets), for ``bench.py --target``.

A target is ``KIND:SHAPE``, a TPU topology as libtpu names it (``v5e:2x2``, ``v5e:4x8``,
``v5p:2x2x1``, ``v6e:2x2``, ``v4:2x2x1``). The devices come from libtpu (``jax[tpu]``); only the
compiler runs, nothing here needs a chip.
"""

from __future__ import annotations

import dataclasses
import os

from ldm_jax.benchmarking.timing import PEAK_BF16_TFLOPS

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip: HBM bytes, dense bf16 peak (TFLOP/s), HBM bandwidth (bytes/s)."""

    name: str
    hbm_bytes: int
    peak_tflops: float
    hbm_bytes_per_s: float


CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, PEAK_BF16_TFLOPS["TPU v4"], 1228e9),
    "v5e": Chip("TPU v5e", 16 * GIB, PEAK_BF16_TFLOPS["TPU v5e"], 819e9),
    "v5p": Chip("TPU v5p", 95 * GIB, PEAK_BF16_TFLOPS["TPU v5p"], 2765e9),
    "v6e": Chip("TPU v6e", 32 * GIB, PEAK_BF16_TFLOPS["TPU v6e"], 1640e9),
}
# What bench.py --target compiles (``aot.build``): the training steps, the autoencoder's with and
# without its discriminator, and the sampling and editing jobs.
PROGRAMS = ("autoencoder", "autoencoder_gan", "diffusion", "counterfactual", "sample", "edit")
EXAMPLES = ("v5e:2x2", "v5e:4x4", "v5e:4x8", "v5p:2x2x1", "v6e:2x2", "v4:2x2x1")
# libtpu reads these at start-up: several processes may load it (pytest workers), and it need not look
# for a TPU host. They
# describe no cluster: parallel.initialize_distributed ignores a single worker hostname.
_QUIET_LIBTPU = {
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_ACCELERATOR_TYPE": "v5litepod-4",
    "TPU_WORKER_HOSTNAMES": "localhost",
}


@dataclasses.dataclass(frozen=True)
class Target:
    """A parsed ``KIND:SHAPE``: the chip and how many of them."""

    text: str
    chip: Chip
    shape: str
    num_devices: int


def parse_target(text: str) -> Target:
    """``Target`` of ``KIND:SHAPE`` (module docstring); ``ValueError`` naming what is wrong."""
    kind, _, shape = text.partition(":")
    if kind not in CHIPS or not shape:
        raise ValueError(f"--target {text!r}: expected KIND:SHAPE with KIND one of {sorted(CHIPS)}, e.g. {EXAMPLES}")
    chip = CHIPS[kind]
    dims = shape.split("x")
    if not all(d.isdigit() and int(d) > 0 for d in dims):
        raise ValueError(f"--target {text!r}: the shape {shape!r} is not a chip grid (e.g. v5e:4x4 or v5p:2x2x1)")
    count = 1
    for d in dims:
        count *= int(d)
    return Target(text, chip, shape, count)


def target_devices(target: Target) -> list:
    """The target's abstract devices (for a ``Mesh``; programs compiled over them never run)."""
    from jax.experimental import topologies

    for name, value in _QUIET_LIBTPU.items():
        os.environ.setdefault(name, value)
    try:
        topology = topologies.get_topology_desc(platform="tpu", topology_name=target.text)
    except Exception as error:  # libtpu missing, or a topology it does not know
        raise ValueError(
            f"--target {target.text}: no TPU topology ({str(error).splitlines()[0][:300]}); "
            f'install libtpu with pip install "jax[tpu]==<your jax version>"'
        ) from None
    devices = list(topology.devices)
    if len(devices) != target.num_devices:
        raise ValueError(
            f"--target {target.text}: the topology has {len(devices)} devices, expected {target.num_devices}"
        )
    return devices
