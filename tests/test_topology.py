"""Topology independence: processes read disjoint rows of the same global batches, and a
checkpoint written on one mesh restores exactly, and trains on, on others."""

import json
import shutil
import textwrap

import jax
import numpy as np
import pytest
from micro import micro_config

import multiprocess
import saved_runs
from ldm_jax import parallel
from ldm_jax.checkpoint.checkpointer import Checkpointer
from ldm_jax.models import presets
from ldm_jax.training import diffusion_step, loop, run
from ldm_jax.training.state import make_optimizer

pytestmark = pytest.mark.slow


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


def test_diffusion_checkpoint_resumes_on_other_topologies(trained_micro, tmp_path):
    cfg = micro_config()
    cfg.stages = "diffusion"
    cfg.data.data_dir = str(trained_micro / "data")
    cfg.diffusion.autoencoder_checkpoint = str(trained_micro / "autoencoder" / "checkpoints")
    cfg.diffusion.steps, cfg.mesh.fsdp, cfg.mesh.fsdp_min_size = 2, 4, 256
    cfg.log.sample_conditions = ""  # no sample grids
    run.train(cfg, tmp_path / "fsdp4")  # 8 devices, arrays split over groups of 4
    checkpoints = tmp_path / "fsdp4" / "diffusion" / "checkpoints"
    assert saved_runs.split_arrays(checkpoints / "2" / "state") > 20
    saved = saved_runs.raw_state(checkpoints / "2" / "state")
    preset = presets.get_preset(cfg.model)
    unet, optimizer = presets.build_unet(preset.unet), make_optimizer(cfg.diffusion)
    stage = loop.Stage(
        name="diffusion",
        steps=2,
        step=None,
        init=lambda key: diffusion_step.init_state(
            key, unet, optimizer, (8, preset.latent_size, preset.latent_size, preset.latent_channels), 4
        ),
    )
    checkpointer = Checkpointer(checkpoints, async_save=False)
    for devices, fsdp in ((jax.devices()[:4], 2), (jax.devices(), 1), (jax.devices()[:1], 1)):
        cfg.mesh.fsdp = fsdp
        mesh = parallel.make_mesh(fsdp, devices)
        state, meta, _ = loop.restore_or_init(stage, checkpointer, mesh, jax.random.PRNGKey(0), None, cfg)
        assert meta["scale_factor"] > 0
        restored = saved_runs.flat(state)
        assert restored.keys() == saved.keys()
        for path, value in restored.items():
            assert value.sharding.mesh.devices.size == len(devices)
            np.testing.assert_array_equal(np.asarray(value), saved[path], err_msg=path)
    checkpointer.close()
    # Training continues on 4 devices with fsdp=2.
    shutil.copytree(tmp_path / "fsdp4", tmp_path / "fsdp2")
    cfg.diffusion.steps, cfg.mesh.fsdp = 3, 2
    run.train(cfg, tmp_path / "fsdp2", devices=jax.devices()[:4])
    rows = saved_runs.metrics(tmp_path / "fsdp2", "diffusion")
    assert [r["step"] for r in rows] == [1, 2, 3] and np.isfinite(rows[-1]["loss"])
    assert rows[:2] == saved_runs.metrics(tmp_path / "fsdp4", "diffusion")
