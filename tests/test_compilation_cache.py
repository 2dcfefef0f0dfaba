"""train.py, sample.py, evaluate.py and explain.py keep JAX's persistent compilation cache in
``$XDG_CACHE_HOME/ldm_jax/jax``: a second job with the same programs compiles nothing new."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from micro import ROOT, train_args


def _without_cache_setting(tmp_path) -> dict:
    """The environment of a user who set nothing (the suite sets JAX_COMPILATION_CACHE_DIR)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    return env


def _entries(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "xdg" / "ldm_jax" / "jax").glob("*-cache"))


def _run(args, env) -> None:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_a_second_sampling_job_loads_every_program_from_the_cache_and_writes_the_same_images(trained_micro, tmp_path):
    env = _without_cache_setting(tmp_path)
    for out in ("first", "second"):
        args = ["sample.py", "--workdir", str(trained_micro), "--out", str(tmp_path / out), "--num", "8"]
        args += ["--steps", "2"]
        _run(args, env)
        if out == "first":
            compiled = _entries(tmp_path)
            assert compiled  # the job's programs went into the default cache folder
    assert _entries(tmp_path) == compiled  # nothing compiled again: every program was found there
    for i in range(8):
        assert (tmp_path / "first" / f"{i:06d}.png").read_bytes() == (tmp_path / "second" / f"{i:06d}.png").read_bytes()


@pytest.mark.slow
def test_a_preempted_training_job_resumes_without_compiling_again(trained_micro, tmp_path):
    """The diffusion stage stopped by SIGTERM after its first step (exit 75), then the same command:
    the resumed job's programs (the step above all) are the ones the first job compiled."""
    run = tmp_path / "run"
    shutil.copytree(trained_micro, run, ignore=shutil.ignore_patterns("diffusion"))
    env = _without_cache_setting(tmp_path)
    # No sample grids: the preempted job stops before the end, where the grids are first drawn.
    settings = {"diffusion.steps": 8, "log.sample_conditions": ""}
    args = [sys.executable, *train_args(run, stages="diffusion", **settings)]
    first = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = run / "diffusion" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.exists() and metrics.read_text().strip()) and first.poll() is None:
        assert time.monotonic() < deadline, "the first job wrote no metrics in 10 minutes"
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=600) == 75, first.stderr.read()[-3000:]
    compiled = _entries(tmp_path)
    assert any(name.startswith("jit_step_and_stop-") for name in compiled)
    _run(args[1:], env)
    assert _entries(tmp_path) == compiled
    assert (run / "diffusion" / "checkpoints" / "8").is_dir()
