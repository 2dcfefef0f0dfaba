"""bench.py --target: the trainer's own programs compiled by libtpu for abstract TPU chips; what does
not fit is said in one line; a single TPU worker hostname (libtpu's quiet setting) is no cluster."""

import re

import jax
import jax.numpy as jnp
import pytest
from micro import micro_config

from ldm_jax import parallel
from ldm_jax.benchmarking import aot, targets
from ldm_jax.models import architecture

pytest.importorskip("libtpu", reason="libtpu (jax[tpu]) is installed by requirements-test.txt")


def test_targets_are_parsed_and_bad_ones_named():
    target = targets.parse_target("v5e:4x8")
    assert (target.num_devices, target.chip.hbm_bytes) == (32, 16 * 2**30)
    for bad in ("v9:2x2", "v5e", "v5e:2xq"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            targets.parse_target(bad)


def test_one_tpu_worker_hostname_is_no_cluster(monkeypatch):
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE", raising=False)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
    assert not parallel.in_cluster()
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")
    assert parallel.in_cluster()


def test_a_program_too_large_for_the_chip_is_refused_in_one_line():
    target = targets.parse_target("v5e:2x2")
    mesh = aot.target_mesh(target, 1)
    rows = parallel.batch_sharding(mesh)
    double = jax.jit(lambda x: 2 * x, in_shardings=rows, out_shardings=rows)
    per_chip = 10 * 2**28  # 10 GiB in and 10 GiB out per chip > 16 GiB
    program = aot.Program("toy", double, (jax.ShapeDtypeStruct((4 * per_chip,), jnp.float32),), 4, 0.0)
    record = aot.compile_program(program, target)
    assert record["fits"] is False and "RESOURCE_EXHAUSTED" in record["compiler_message"]
    line = aot.summary_line(record)
    assert "\n" not in line and "does not fit" in line and "20.00G" in line


def test_micro_diffusion_step_compiles_for_v5e_with_fsdp():
    cfg = micro_config()
    cfg.mesh.fsdp, cfg.mesh.fsdp_min_size = 2, 256
    cfg = architecture.resolve(cfg)
    target = targets.parse_target("v5e:2x2")
    mesh = aot.target_mesh(target, 2)
    program = aot.build(cfg, "diffusion", mesh, sample_batch=8, sampling=None)
    record = aot.compile_program(program, target)
    assert record["fits"] and record["per_chip_batch"] == 2
    assert 0 < record["total_bytes"] < 2**30 and record["alias_bytes"] > 0  # the donated state
    # the compiler counts every op, the project's counter matmuls and convolutions only
    assert record["model_flops_per_chip"] <= record["compiler_flops_per_chip"] < 3 * record["model_flops_per_chip"]
    assert record["collectives"]["all-gather"]["count"] > 0  # fsdp gathers its split weights
    assert record["roofline_s"] > 0 and record["max_mfu"] <= 1
