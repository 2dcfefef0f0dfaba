"""Scale-out on one machine: two JAX processes × 4 CPU devices as one job (the README's
local launch), parameters split over ``fsdp``, and checkpoints resumed on other topologies.

The reference for every comparison is ``trained_micro``: the same micro config in one
process on 8 devices with replicated parameters.
"""

import json
import shutil
import signal
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from micro import MICRO_OVERRIDES, micro_config

import multiprocess
from ldm_jax import parallel
from ldm_jax.models import presets
from ldm_jax.training import diffusion_step, loop, run
from ldm_jax.training.checkpoint import Checkpointer
from ldm_jax.training.state import make_optimizer

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("scale_out")]

SPLIT = {"mesh.fsdp": 2, "mesh.fsdp_min_size": 256}  # micro arrays are small: split them anyway


def _train_args(workdir, **overrides) -> list[str]:
    settings = {**MICRO_OVERRIDES, **SPLIT, **overrides}
    return ["train.py", "--config", "configs/phantom_tiny.py", "--workdir", str(workdir),
            *[f"--config.{k}={v}" for k, v in settings.items()]]


def _diffusion_only(job_run, **overrides) -> dict:
    """Overrides that train only the diffusion stage on ``job_run``'s data and autoencoder."""
    return {"stages": "diffusion", "data.data_dir": job_run / "data",
            "diffusion.autoencoder_checkpoint": job_run / "autoencoder" / "checkpoints", **overrides}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Both stages of the micro config trained by 2 processes × 4 devices, fsdp=2."""
    root = tmp_path_factory.mktemp("two_processes")
    multiprocess.run(_train_args(root / "run"), root / "logs", timeout=1500)
    return root / "run"


def _metrics(workdir, stage):
    return [json.loads(line) for line in (workdir / stage / "metrics.jsonl").read_text().splitlines()]


def _split_arrays(state_dir) -> int:
    """How many arrays of a saved train state were split over devices when written."""
    shardings = json.loads((state_dir / "_sharding").read_text())
    return sum(any(json.loads(s)["partition_spec"]) for s in shardings.values())


def _raw_state(state_dir):
    """The saved arrays as numpy, whatever devices (of whichever processes) wrote them."""
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(state_dir).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return dict(jax.tree_util.tree_leaves_with_path(checkpointer.restore(state_dir, restore_args=args)))


def _assert_same_state(a_dir, b_dir):
    a, b = _raw_state(a_dir), _raw_state(b_dir)
    assert a.keys() == b.keys() and len(a) > 10
    for path, value in a.items():
        np.testing.assert_array_equal(value, b[path], err_msg=jax.tree_util.keystr(path))


def test_two_processes_train_like_one(two_processes, trained_micro):
    for stage in ("autoencoder", "diffusion"):
        rows, reference = _metrics(two_processes, stage), _metrics(trained_micro, stage)
        assert [r["step"] for r in rows] == [1, 2, 3, 4]  # process 0 logs, once per step
        for row, want in zip(rows, reference):
            for name, value in want.items():
                if name != "images_per_second":
                    # Not bit-identical: the cross-process all-reduce (gloo) and the fsdp split sum
                    # gradients in another order than one process's in-memory reduction.
                    np.testing.assert_allclose(row[name], value, rtol=1e-6, err_msg=f"{stage} {name}")
        checkpoints = two_processes / stage / "checkpoints"
        assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4"]  # one directory per step
        assert _split_arrays(checkpoints / "4" / "state") > 20
        assert _split_arrays(trained_micro / stage / "checkpoints" / "4" / "state") == 0
        data = json.loads((checkpoints / "4" / "data" / "metadata").read_text())
        assert data["position"] == 4 * 8  # 4 global batches of 8 read from the stream
        assert len(list((two_processes / stage / "tensorboard").iterdir())) == 1  # one writer
    grids = sorted(p.name for p in (two_processes / "diffusion" / "samples").iterdir())
    assert grids == ["step_0000004_density=A.png", "step_0000004_density=D.png"]
    environment = json.loads((two_processes / "environment.json").read_text())
    assert environment["process_count"] == 2 and len(environment["devices"]) == 8


_READ_ONE_EPOCH = textwrap.dedent("""
    import json, sys
    import numpy as np
    from ldm_jax import parallel
    from ldm_jax.data import pipeline
    from ldm_jax.data.imageio import encode_png
    parallel.initialize_distributed()
    import jax
    source = [{"image": encode_png(np.full((4, 4, 1), i, np.uint16))} for i in range(40)]
    p = pipeline.InputPipeline(source, global_batch_size=8, mesh=parallel.make_mesh(), seed=3, num_epochs=1)
    ids = []
    for batch in p:
        shards = [np.asarray(s.data) for s in batch["image"].addressable_shards]
        ids.append([int(round((row[0, 0, 0] + 1) * 4095 / 2)) for shard in shards for row in shard])
    with open(f"{sys.argv[1]}/ids_{jax.process_index()}.json", "w") as f:
        json.dump(ids, f)
""")


def test_each_process_reads_its_own_rows_of_one_epoch(tmp_path):
    multiprocess.run(["-c", _READ_ONE_EPOCH, str(tmp_path)], tmp_path / "logs", timeout=300)
    ids = [json.loads((tmp_path / f"ids_{i}.json").read_text()) for i in range(2)]
    assert len(ids[0]) == len(ids[1]) == 5 and all(len(b) == 4 for part in ids for b in part)
    seen = [i for part in ids for batch in part for i in batch]
    assert sorted(seen) == list(range(40))  # the whole split, no id twice
    from ldm_jax.data.imageio import encode_png
    from ldm_jax.data.pipeline import InputPipeline

    source = [{"image": encode_png(np.full((4, 4, 1), i, np.uint16))} for i in range(40)]
    one = InputPipeline(source, global_batch_size=8, mesh=parallel.make_mesh(), seed=3, num_epochs=1)
    batches = [np.round((np.asarray(b["image"])[:, 0, 0, 0] + 1) * 4095 / 2).astype(int).tolist() for b in one]
    assert [a + b for a, b in zip(*ids)] == batches  # the same global batches as one process reads


def _wait_for_text(job, i, text, timeout):
    multiprocess.wait_for(lambda: text in job.output(i), timeout, f"{text!r} in process {i}'s output")


def test_sigterm_to_one_process_stops_both_at_the_same_step(two_processes, tmp_path):
    args = _train_args(tmp_path / "run", **_diffusion_only(two_processes, **{"checkpoint.every": 100}))
    with multiprocess.Job(args, tmp_path / "logs") as job:
        _wait_for_text(job, 1, "Using custom data configuration", 300)  # inside train(): SIGTERM is handled
        job.signal(1, signal.SIGTERM)
        sent = time.monotonic()
        codes = job.wait(600)
        outputs = [job.output(i) for i in range(2)]
    assert codes == [75, 75], outputs[0][-3000:] + outputs[1][-3000:]
    assert "received (by process another)" in outputs[0] and "received (by process 1, this one)" in outputs[1]
    for output in outputs:
        assert "checkpoint of step 2 written; resume with the same command" in output
    print(f"both processes stopped {time.monotonic() - sent:.1f} s after the signal", file=sys.stderr)
    assert Checkpointer(tmp_path / "run" / "diffusion" / "checkpoints").all_steps() == [2]
    multiprocess.run(args, tmp_path / "logs_restart", timeout=600)
    assert [r["step"] for r in _metrics(tmp_path / "run", "diffusion")] == [1, 2, 3, 4]
    _assert_same_state(tmp_path / "run" / "diffusion" / "checkpoints" / "4" / "state",
                       two_processes / "diffusion" / "checkpoints" / "4" / "state")


def test_a_killed_process_ends_the_job_and_a_restart_resumes(two_processes, tmp_path):
    args = _train_args(tmp_path / "run", **_diffusion_only(two_processes))
    metrics = tmp_path / "run" / "diffusion" / "metrics.jsonl"
    with multiprocess.Job(args, tmp_path / "logs", env={parallel.HEARTBEAT_VARIABLE: "5"}) as job:
        multiprocess.wait_for(lambda: metrics.exists() and metrics.read_text().strip(), 300, "the first step")
        job.signal(1, signal.SIGKILL)
        killed = time.monotonic()
        codes = job.wait(120)
        survivor = job.output(0)
    assert codes[1] == -signal.SIGKILL and codes[0] != 0
    assert "another process of the job stopped answering" in survivor, survivor[-3000:]
    print(f"process 0 ended {time.monotonic() - killed:.1f} s after process 1 was killed", file=sys.stderr)
    multiprocess.run(args, tmp_path / "logs_restart", timeout=600)
    assert [r["step"] for r in _metrics(tmp_path / "run", "diffusion")] == [1, 2, 3, 4]
    _assert_same_state(tmp_path / "run" / "diffusion" / "checkpoints" / "4" / "state",
                       two_processes / "diffusion" / "checkpoints" / "4" / "state")


def test_sample_py_on_two_processes_writes_what_one_writes(two_processes, tmp_path):
    import sample

    common = ["sample.py", "--workdir", str(two_processes), "--num", "12", "--batch", "8", "--steps", "3",
              "--condition", "density=A;density=D", "--no-progress"]
    multiprocess.run([*common, "--out", str(tmp_path / "two")], tmp_path / "logs", timeout=600)
    assert sample.main([*common[1:], "--out", str(tmp_path / "one")]) == 0  # this process: 8 devices
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len([f for f in files if f.endswith(".png") and f[0].isdigit()]) == 12
    assert files == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_diffusion_checkpoint_resumes_on_other_topologies(trained_micro, tmp_path):
    cfg = micro_config()
    cfg.stages = "diffusion"
    cfg.data.data_dir = str(trained_micro / "data")
    cfg.diffusion.autoencoder_checkpoint = str(trained_micro / "autoencoder" / "checkpoints")
    cfg.diffusion.steps, cfg.mesh.fsdp, cfg.mesh.fsdp_min_size = 2, 4, 256
    run.train(cfg, tmp_path / "fsdp4")  # 8 devices, arrays split over groups of 4
    checkpoints = tmp_path / "fsdp4" / "diffusion" / "checkpoints"
    assert _split_arrays(checkpoints / "2" / "state") > 20
    saved = _raw_state(checkpoints / "2" / "state")
    preset = presets.get_preset(cfg.model)
    unet, optimizer = presets.build_unet(preset.unet), make_optimizer(cfg.diffusion)
    stage = loop.Stage(name="diffusion", steps=2, step=None, init=lambda key: diffusion_step.init_state(
        key, unet, optimizer, (8, preset.latent_size, preset.latent_size, preset.latent_channels), 4))
    checkpointer = Checkpointer(checkpoints, async_save=False)
    for devices, fsdp in ((jax.devices()[:4], 2), (jax.devices(), 1), (jax.devices()[:1], 1)):
        cfg.mesh.fsdp = fsdp
        mesh = parallel.make_mesh(fsdp, devices)
        state, meta, _ = loop.restore_or_init(stage, checkpointer, mesh, jax.random.PRNGKey(0), None, cfg)
        assert meta["scale_factor"] > 0
        restored = dict(jax.tree_util.tree_leaves_with_path(state))
        assert restored.keys() == saved.keys()
        for path, value in restored.items():
            assert value.sharding.mesh.devices.size == len(devices)
            np.testing.assert_array_equal(np.asarray(value), saved[path], err_msg=jax.tree_util.keystr(path))
    checkpointer.close()
    # Training continues on 4 devices with fsdp=2.
    shutil.copytree(tmp_path / "fsdp4", tmp_path / "fsdp2")
    cfg.diffusion.steps, cfg.mesh.fsdp = 3, 2
    run.train(cfg, tmp_path / "fsdp2", devices=jax.devices()[:4])
    rows = _metrics(tmp_path / "fsdp2", "diffusion")
    assert [r["step"] for r in rows] == [1, 2, 3] and np.isfinite(rows[-1]["loss"])
    assert rows[:2] == _metrics(tmp_path / "fsdp4", "diffusion")
