"""Storage faults planted in checkpoints and on the disk: each ends in one line that names the
step, the path and what failed; training resumes from the newest intact checkpoint, and nothing
that was committed is deleted (a corrupt checkpoint is moved aside to ``<step>.corrupt``)."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.checkpoint import manifest
from ldm_jax.checkpoint.checkpointer import Checkpointer
from ldm_jax.storage import EXIT_CORRUPT, CorruptCheckpointError, StorageFullError, out_of_space
import saved_runs
from micro import ROOT, train_args


class _Position:
    """The smallest input pipeline a checkpoint saves: a stream position."""

    def __init__(self, position=0):
        self.position = position

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def _state(step):
    return {"w": jnp.full((64, 64), float(step)), "b": jnp.arange(8.0) + step}


def _abstract():
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), _state(0))


def _save(directory, steps, async_save=False):
    checkpointer = Checkpointer(directory, keep=5, async_save=async_save, name="diffusion")
    for step in steps:
        checkpointer.save(step, _state(step), _Position(step * 10), {"step": step})
    checkpointer.close()


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip(path: pathlib.Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def _restore(directory, step=None):
    checkpointer = Checkpointer(directory, async_save=False, name="diffusion")
    try:
        return checkpointer.restore_intact(_abstract(), _Position(), step)
    finally:
        checkpointer.close()


def test_every_saved_checkpoint_gets_a_manifest_that_verifies_also_when_saved_asynchronously(tmp_path):
    _save(tmp_path / "sync", [1, 2])
    _save(tmp_path / "async", [1, 2, 3], async_save=True)
    for directory, steps in ((tmp_path / "sync", [1, 2]), (tmp_path / "async", [1, 2, 3])):
        for step in steps:
            listed = json.loads((directory / str(step) / manifest.FILE).read_text())["files"]
            assert any(name.startswith("state/") for name in listed) and "meta/metadata" in listed
            assert manifest.problem(directory / str(step)) is None
    step, state, meta = _restore(tmp_path / "async")
    assert step == 3 and meta == {"step": 3} and float(state["w"][0, 0]) == 3.0


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda d: _flip(_largest_array_file(d)), "content differs from when it was saved"),
        (lambda d: _largest_array_file(d).write_bytes(_largest_array_file(d).read_bytes()[:10]), "bytes,"),
        (lambda d: (d / "meta" / "metadata").unlink(), "meta/metadata: missing"),
    ],
    ids=["bytes flipped", "file truncated", "metadata deleted"],
)
def test_a_corrupt_newest_checkpoint_is_named_moved_aside_and_the_one_before_restored(tmp_path, capfd, damage, why):
    _save(tmp_path, [1, 2, 3])
    damage(tmp_path / "3")
    step, state, meta = _restore(tmp_path)
    assert step == 2 and meta == {"step": 2} and float(state["b"][0]) == 2.0
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"diffusion: checkpoint 3 in {tmp_path} is corrupt (")
    assert why in lines[0] and lines[0].endswith(f"moved aside to {tmp_path / '3.corrupt'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2", "3.corrupt"]  # nothing deleted


def test_with_every_checkpoint_corrupt_the_restore_stops_with_one_line(tmp_path):
    _save(tmp_path, [1, 2])
    for step in (1, 2):
        _flip(_largest_array_file(tmp_path / str(step)))
    with pytest.raises(CorruptCheckpointError, match=r"no checkpoint in .* is intact \(steps 2, 1 were moved aside"):
        _restore(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.corrupt", "2.corrupt"]


def test_a_chosen_step_is_restored_and_a_corrupt_chosen_step_refused_in_place(tmp_path):
    _save(tmp_path, [1, 2, 3])
    assert _restore(tmp_path, step=2)[0] == 2
    _flip(_largest_array_file(tmp_path / "1"))
    with pytest.raises(CorruptCheckpointError, match="checkpoint 1 .* is corrupt"):
        _restore(tmp_path, step=1)
    assert (tmp_path / "1").is_dir()  # the user named it: left where it is
    with pytest.raises(FileNotFoundError, match="no complete checkpoint 7"):
        _restore(tmp_path, step=7)


def test_an_unverified_checkpoint_that_does_not_read_counts_as_corrupt(tmp_path, capfd):
    """Saved before manifests existed: a damaged file is found by the read that fails."""
    _save(tmp_path, [1, 2])
    (tmp_path / "2" / manifest.FILE).unlink()
    for data_file in (tmp_path / "2" / "state" / "d").iterdir():  # the arrays' bytes (OCDBT data files)
        data_file.unlink()
    assert _restore(tmp_path)[0] == 1
    assert "checkpoint 2" in capfd.readouterr().err and (tmp_path / "2.corrupt").is_dir()


def test_a_full_disk_while_saving_is_one_line_that_names_the_intact_checkpoints(tmp_path):
    """A 1 MiB tmpfs where mounting is allowed (root), else the check of the error chain alone."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.decode().strip()[:200]})")
    try:
        checkpointer = Checkpointer(mount / "checkpoints", keep=100, async_save=False, name="diffusion")
        big = {"w": jnp.zeros((256, 256)) + jnp.arange(256.0)}  # 256 KiB, hardly compressible: ~3 fit
        with pytest.raises(StorageFullError) as raised:
            for step in range(1, 20):
                checkpointer.save(step, jax.tree.map(lambda x: x * step + np.pi, big), _Position(), {})
        message = str(raised.value)
        assert message.startswith(f"diffusion: no space left on device writing checkpoint {step} to {mount}")
        assert f"checkpoints up to {step - 1} are intact; free space and run the same command" in message
        assert "\n" not in message
        assert [manifest.problem(mount / "checkpoints" / str(s)) for s in range(1, step)] == [None] * (step - 1)
        assert not (mount / "checkpoints" / str(step)).exists()  # nothing half-written that looks complete
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_out_of_space_is_found_anywhere_in_the_chain_of_errors():
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as inner:
            raise ValueError("handle is closed") from inner
    except ValueError as outer:
        assert out_of_space(outer)
    assert out_of_space(RuntimeError("tensorstore: [Errno 28] writing chunk"))
    assert not out_of_space(RuntimeError("UNAVAILABLE: other"))


@pytest.mark.slow
def test_train_resumes_past_a_corrupt_checkpoint_to_the_same_weights_and_sample_refuses_it(trained_micro, tmp_path):
    """The micro run's newest diffusion checkpoint (4) with bytes flipped: sample.py refuses it in
    one line with exit 65; train.py moves it aside, trains steps 3-4 again from checkpoint 2 and
    writes the same step-4 weights as the uninterrupted run."""
    run = tmp_path / "run"
    shutil.copytree(trained_micro, run)
    checkpoints = run / "diffusion" / "checkpoints"
    _flip(_largest_array_file(checkpoints / "4"))
    sample = subprocess.run(
        [sys.executable, "sample.py", "--workdir", str(run), "--out", str(tmp_path / "out"), "--num", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert sample.returncode == EXIT_CORRUPT, sample.stderr[-3000:]
    assert (
        sample.stderr.strip().splitlines()[-1].startswith(f"sample.py: error: diffusion: checkpoint 4 in {checkpoints}")
    )
    assert "Traceback" not in sample.stderr
    train = subprocess.run(
        [sys.executable, *train_args(run, stages="diffusion")], cwd=ROOT, capture_output=True, text=True
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert f"diffusion: checkpoint 4 in {checkpoints} is corrupt (" in train.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4", "4.corrupt"]
    saved_runs.assert_same_state(
        checkpoints / "4" / "state", trained_micro / "diffusion" / "checkpoints" / "4" / "state"
    )
