"""Storage faults planted in checkpoints and on the disk: each ends in one line that names the
step, the path and what failed; training resumes from the newest intact checkpoint, and nothing
that was committed is deleted (a corrupt checkpoint is moved aside to ``<step>.corrupt``)."""

from __future__ import annotations

import contextlib
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
from ldm_jax.storage import (
    EXIT_CORRUPT,
    EXIT_NO_SPACE,
    CorruptCheckpointError,
    StorageFullError,
    out_of_space,
)
import saved_runs
from micro import ROOT, train_args


def _state(step):
    return {"w": jnp.full((64, 64), float(step)), "b": jnp.arange(8.0) + step}


def _abstract():
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), _state(0))


def _save(directory, steps, async_save=False):
    checkpointer = Checkpointer(directory, keep=5, async_save=async_save, name="diffusion")
    for step in steps:
        checkpointer.save(step, _state(step), saved_runs.StreamPosition(step * 10), {"step": step})
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
        return checkpointer.restore_intact(_abstract(), saved_runs.StreamPosition(), step)
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


@contextlib.contextmanager
def _small_tmpfs(path: pathlib.Path, size: int):
    """A tmpfs of ``size`` bytes mounted at ``path`` (skips the test, saying why, where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root in a container that allows mount): {result.stderr!r}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _full_disk_checks(message: str, directory: pathlib.Path, step: int, intact: list[int]) -> None:
    assert message.startswith(f"diffusion: no space left on device writing checkpoint {step} to {directory}")
    assert f"checkpoints up to {intact[-1]} are intact; free space and run the same command" in message
    assert "\n" not in message
    assert [manifest.problem(directory / str(s)) for s in intact] == [None] * len(intact)
    assert not (directory / str(step)).exists()  # nothing half-written that looks complete


def test_a_full_disk_while_saving_is_one_line_that_names_the_intact_checkpoints(tmp_path):
    """Saves on a 1 MiB tmpfs until it is full."""
    with _small_tmpfs(tmp_path / "small", 2**20) as mount:
        checkpointer = Checkpointer(mount / "checkpoints", keep=100, async_save=False, name="diffusion")
        big = {"w": jnp.zeros((256, 256)) + jnp.arange(256.0)}  # 256 KiB, hardly compressible: ~3 fit
        with pytest.raises(StorageFullError) as raised:
            for step in range(1, 20):
                checkpointer.save(step, jax.tree.map(lambda x: x * step + np.pi, big), saved_runs.StreamPosition(), {})
        _full_disk_checks(str(raised.value), mount / "checkpoints", step, list(range(1, step)))


def test_a_full_disk_reported_as_another_error_is_still_one_line(tmp_path, monkeypatch):
    """Without a tmpfs: the save fails as Orbax failed on a full disk, ``handle is closed`` raised
    while handling ``[Errno 28]``."""
    checkpointer = Checkpointer(tmp_path, keep=100, async_save=False, name="diffusion")
    checkpointer.save(1, _state(1), saved_runs.StreamPosition(), {})

    def full(*args, **kwargs):
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise ValueError("handle is closed") from None

    monkeypatch.setattr(checkpointer._manager, "save", full)
    with pytest.raises(StorageFullError) as raised:
        checkpointer.save(2, _state(2), saved_runs.StreamPosition(), {})
    _full_disk_checks(str(raised.value), tmp_path, 2, [1])


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


def test_a_stage_warns_when_the_disk_holds_fewer_checkpoints_than_it_keeps(tmp_path, capfd):
    from ldm_jax.training.loop import _warn_if_disk_is_short

    with _small_tmpfs(tmp_path / "small", 2**20) as mount:
        checkpointer = Checkpointer(mount / "checkpoints", async_save=False, name="diffusion")
        state = {"w": jnp.zeros((512, 256))}  # 512 KiB: one fits in 1 MiB, not keep + 1 = 4
        _warn_if_disk_is_short("diffusion", checkpointer, state, keep=3)
        line = capfd.readouterr().err.strip()
        assert line.startswith(f"diffusion: warning: 1.0 MiB free at {mount / 'checkpoints'} holds 2 checkpoints")
        assert line.endswith("of 0.5 MiB; checkpoint.keep=3 needs 4")
        _warn_if_disk_is_short("diffusion", checkpointer, state, keep=1)  # two fit: no warning
        assert capfd.readouterr().err == ""


@pytest.mark.slow
def test_a_disk_that_fills_during_training_stops_it_in_one_line_and_the_resumed_run_ends_as_the_uninterrupted_one(
    trained_micro, tmp_path, monkeypatch, capfd
):
    """The micro run's diffusion stage with its checkpoints on a tmpfs that a filler file fills
    once checkpoint 2 is written: saving checkpoint 4 stops the run (StorageFullError, one line, no
    traceback); with the filler removed the same run resumes from 2 and writes the uninterrupted
    run's step-4 weights."""
    from ldm_jax.storage import free_bytes
    from ldm_jax.training import run as training_run
    from micro import micro_config

    cfg = micro_config()
    cfg.stages = "diffusion"
    cfg.data.data_dir = str(trained_micro / "data")
    cfg.diffusion.autoencoder_checkpoint = str(trained_micro / "autoencoder" / "checkpoints")
    cfg.checkpoint.async_save = False  # checkpoint 2 is complete before batch 3 is read
    workdir = tmp_path / "run"
    checkpoints = workdir / "diffusion" / "checkpoints"
    make_pipeline = training_run._pipeline
    filler = checkpoints / "filler"  # beside the checkpoints, on their file system

    class FillsTheDiskAtBatch3:
        def __init__(self, inner):
            self.inner, self.reads = inner, 0

        def __next__(self):
            self.reads += 1
            if self.reads == 3:
                filler.write_bytes(b"\0" * (free_bytes(checkpoints) - 64 * 2**10))
            return next(self.inner)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    def filling_pipeline(cfg_, source, mesh, batch_size, **kwargs):
        inner = make_pipeline(cfg_, source, mesh, batch_size, **kwargs)
        return FillsTheDiskAtBatch3(inner) if kwargs.get("seed_offset", 0) == 0 else inner

    with _small_tmpfs(checkpoints, 64 * 2**20):
        monkeypatch.setattr(training_run, "_pipeline", filling_pipeline)
        with pytest.raises(StorageFullError) as raised:
            training_run.train(cfg, workdir)
        _full_disk_checks(str(raised.value), checkpoints, 4, [2])
        assert "Traceback" not in capfd.readouterr().err
        filler.unlink()
        monkeypatch.setattr(training_run, "_pipeline", make_pipeline)
        training_run.train(cfg, workdir)
        uninterrupted = trained_micro / "diffusion" / "checkpoints" / "4" / "state"
        saved_runs.assert_same_state(checkpoints / "4" / "state", uninterrupted)


@pytest.mark.slow
def test_sample_on_a_full_disk_stops_in_one_line_with_whole_files_only_and_finishes_once_there_is_room(
    trained_micro, tmp_path
):
    out = tmp_path / "out"
    with _small_tmpfs(out, 200 * 2**10):  # room for about 30 of the 64 images
        args = [sys.executable, "sample.py", "--workdir", str(trained_micro), "--out", str(out)]
        args += ["--num", "64", "--batch", "8", "--steps", "2", "--no-progress"]
        full = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
        assert full.returncode == EXIT_NO_SPACE, full.stderr[-3000:]
        assert "Traceback" not in full.stderr
        *before, last = full.stderr.strip().splitlines()
        assert last.startswith(f"sample.py: error: no space left on device writing {out}")
        assert last.endswith("; free space and run the same command")
        assert any(
            line.startswith("sampling: warning: ") and "the other 56 images need about" in line for line in before
        )
        written = sorted(p.name for p in out.glob("*.png"))
        assert 0 < len(written) < 64 and not list(out.glob(".*.tmp"))  # whole files only
        subprocess.run(["mount", "-o", "remount,size=64m", str(out)], check=True)
        resumed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert len((out / "manifest.jsonl").read_text().splitlines()) == 64


@pytest.mark.slow
def test_a_data_fault_at_a_step_keeps_the_last_good_step_and_the_resumed_run_ends_as_the_uninterrupted_one(
    trained_micro, tmp_path, monkeypatch
):
    """The training pipeline fails reading step 4's batch (as a damaged record does): the state
    of step 3 is saved before the fault is raised, and a run resumed once the data reads again
    writes the uninterrupted run's step-4 weights."""
    from ldm_jax.storage import DataFaultError
    from ldm_jax.training import run as training_run
    from micro import micro_config

    cfg = micro_config()
    cfg.stages = "diffusion"
    cfg.data.data_dir = str(trained_micro / "data")
    cfg.diffusion.autoencoder_checkpoint = str(trained_micro / "autoencoder" / "checkpoints")
    cfg.checkpoint.every = 100  # only the fault's save and the final one
    make_pipeline = training_run._pipeline
    reads = []

    class FailsAtStep4:
        def __init__(self, inner):
            self.inner = inner

        def __next__(self):
            reads.append(1)
            if len(reads) == 4:
                raise DataFaultError("reading mammo_phantoms train: shard-0: record 12 does not decode")
            return next(self.inner)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    def failing_pipeline(cfg_, source, mesh, batch_size, **kwargs):
        inner = make_pipeline(cfg_, source, mesh, batch_size, **kwargs)
        return FailsAtStep4(inner) if kwargs.get("seed_offset", 0) == 0 else inner

    monkeypatch.setattr(training_run, "_pipeline", failing_pipeline)
    with pytest.raises(DataFaultError, match="record 12"):
        training_run.train(cfg, tmp_path)
    checkpoints = tmp_path / "diffusion" / "checkpoints"
    assert Checkpointer(checkpoints).all_steps() == [3]
    assert json.loads((checkpoints / "3" / "data" / "metadata").read_text())["position"] == 3 * 8
    monkeypatch.setattr(training_run, "_pipeline", make_pipeline)
    training_run.train(cfg, tmp_path)
    saved_runs.assert_same_state(
        checkpoints / "4" / "state", trained_micro / "diffusion" / "checkpoints" / "4" / "state"
    )


@pytest.mark.parametrize(
    "program, args, what",
    [
        ("train.py", ["--config", str(ROOT / "configs/phantom_tiny.py"), "--workdir", "gs://bucket/run"], "--workdir"),
        ("sample.py", ["--workdir", "gs://bucket/run", "--out", "x", "--num", "1"], "workdir"),
    ],
)
def test_an_object_storage_url_is_refused_in_one_line_instead_of_becoming_a_local_folder(tmp_path, program, args, what):
    result = subprocess.run([sys.executable, str(ROOT / program), *args], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"{program}: error: {what} gs://bucket/run: object storage URLs are not supported; mount the bucket "
        "(e.g. with gcsfuse at /gcs/BUCKET) and pass the path of the mount"
    )
    assert not (tmp_path / "gs:").exists()
