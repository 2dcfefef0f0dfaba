"""ldm_jax.benchmarking: what ``bench.py`` is built from.

- ``flops``: model FLOPs counted from a jaxpr (matmuls and convolutions, through sub-jaxprs).
- ``timing``: the timing protocol, the device peak table, MFU and the result record's
  fields; standard library only, shared with ``benchmarks/peers/torch_unets.py``.
- ``workloads``: the training step, UNet forward and sampling job on a preset, compiled and
  sharded over a mesh, and the matmul ceiling.
"""
