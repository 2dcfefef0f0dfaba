"""Test set-up: 8 simulated CPU devices, XLA's fast-compile setting and a persistent
compilation cache, all configured before jax is first imported; and the trained runs
that many tests read, each built once per test run.
"""

import fcntl
import os
import pathlib
import shutil
import subprocess
import sys

from micro import FAST_COMPILE, ROOT, train_args

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
os.environ["XLA_FLAGS"] = f"{_flags} {FAST_COMPILE}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Read by jax when it is imported, here and in the tests' subprocesses.
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(ROOT / ".jax_cache")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"

import pytest  # noqa: E402


def _build_once(tmp_path_factory, worker_id, name, build) -> pathlib.Path:
    """``<shared tmp>/<name>``, made by ``build(path)`` once per test run: the first
    pytest-xdist worker that needs it builds it and the others wait for it (a file lock).
    Tests only read it."""
    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent  # the folder all workers share
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            build(path)
            done.touch()
    return path


def _train(args) -> None:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="session")
def trained_micro(tmp_path_factory, worker_id):
    """The autoencoder and diffusion stages of the micro config trained by ``train.py`` in one
    process on 8 devices: what sampling, evaluation and the explainer read."""
    return _build_once(tmp_path_factory, worker_id, "micro_run", lambda workdir: _train(train_args(workdir)))


@pytest.fixture(scope="session")
def trained_filter(trained_micro, tmp_path_factory, worker_id):
    """``trained_micro`` continued by its supervised counterfactual filter (pixel stem, ranking
    pairs): a copy of that run in which ``train.py --config.stages=counterfactual`` trains the
    third stage, as a user adds the filter to a finished run."""

    def build(workdir):
        shutil.copytree(trained_micro, workdir)
        _train(train_args(workdir, stages="counterfactual"))

    return _build_once(tmp_path_factory, worker_id, "micro_filter_run", build)


@pytest.fixture(scope="session")
def two_processes(tmp_path_factory, worker_id):
    """Both stages of the micro config trained by 2 processes × 4 devices with parameters
    split over ``fsdp=2``: the pod path (``configs/tpu_pod.py``) at micro scale."""
    import multiprocess
    from micro import FSDP_SPLIT

    def build(path):
        multiprocess.run(train_args(path / "run", **FSDP_SPLIT), path / "logs", timeout=1500)

    return _build_once(tmp_path_factory, worker_id, "two_processes", build) / "run"
