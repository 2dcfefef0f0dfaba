"""Test set-up: 8 simulated CPU devices and a persistent compilation cache.

Both must be configured before jax is first imported.
"""

import fcntl
import os
import pathlib
import shutil

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def trained_micro(tmp_path_factory, worker_id):
    """A workdir with both stages of the micro config trained, once per test run: the first
    pytest-xdist worker that needs it trains it and the others wait for it (a file lock).
    Tests only read it."""
    from micro import micro_config

    from ldm_jax.training import run

    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent  # the folder all workers share
    workdir = root / "micro_run"
    with open(root / "micro_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (workdir / "trained").exists():
            shutil.rmtree(workdir, ignore_errors=True)
            run.train(micro_config(), workdir)
            (workdir / "trained").touch()
    return workdir
