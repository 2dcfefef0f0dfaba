"""Test set-up: 8 simulated CPU devices and a persistent compilation cache.

Both must be configured before jax is first imported.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def trained_micro(tmp_path_factory):
    """A workdir with both stages of the micro config trained (shared by sampling and evaluation tests)."""
    from micro import micro_config

    from ldm_jax.training import run

    workdir = tmp_path_factory.mktemp("micro_run")
    run.train(micro_config(), workdir)
    return workdir
