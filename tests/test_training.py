"""Training: checkpoints, failure handling, device-count invariance, CLI end to end, exact resume."""

import json
import re
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import saved_runs
from micro import MICRO_OVERRIDES, ROOT, micro_config

from ldm_jax import attributes
from ldm_jax import parallel
from ldm_jax.checkpoint.checkpointer import Checkpointer
from ldm_jax.diffusion.forward import q_sample
from ldm_jax.diffusion.losses import diffusion_loss
from ldm_jax.diffusion.schedule import make_schedule
from ldm_jax.models import architecture, presets
from ldm_jax.training import diffusion_step, loop, run, run_info
from ldm_jax.training.state import make_optimizer


def test_interrupted_checkpoint_is_never_restored(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", async_save=False)
    for step in (1, 2):
        ckpt.save(step, {"w": jnp.full((3,), float(step))}, saved_runs.StreamPosition(step), {"step": step})
    ckpt.wait()
    # A save killed half-way leaves Orbax's temporary directory behind.
    (tmp_path / "ckpt" / "3.orbax-checkpoint-tmp").mkdir()
    (tmp_path / "ckpt" / "3.orbax-checkpoint-tmp" / "state").mkdir()
    reopened = Checkpointer(tmp_path / "ckpt", async_save=False)
    assert reopened.latest_step() == 2
    abstract = {"w": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=parallel.replicated(parallel.make_mesh()))}
    state, meta = reopened.restore(2, abstract)
    np.testing.assert_array_equal(state["w"], [2.0, 2.0, 2.0])
    assert meta == {"step": 2}


def test_config_typo_is_rejected_by_the_cli(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config",
            "configs/phantom_tiny.py",
            "--workdir",
            str(tmp_path),
            "--config.diffusion.stepz=3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "stepz" in result.stderr
    assert not (tmp_path / "config.json").exists()


def test_incompatible_workdir_is_refused(tmp_path):
    cfg = micro_config()
    run_info.record_run(cfg, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"] == "phantom_micro"
    (tmp_path / "diffusion" / "checkpoints" / "2").mkdir(parents=True)  # the diffusion stage has begun
    cfg.diffusion.steps = 10  # more steps: allowed on resume
    run_info.record_run(cfg, tmp_path)
    cfg.diffusion.prediction = "v"
    with pytest.raises(run_info.IncompatibleRunError, match="diffusion.prediction: saved 'eps', now 'v'"):
        run_info.record_run(cfg, tmp_path)


def test_a_stage_section_may_change_until_that_stage_has_a_checkpoint(tmp_path):
    """A finished run may go on with a new stage (configs/phantom_filter.py adds counterfactual):
    the section of a stage with no checkpoint is free; once it has one, it is pinned."""
    cfg = micro_config()
    run_info.record_run(cfg, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["counterfactual"]  # a run recorded before the stage existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    (tmp_path / "diffusion" / "checkpoints" / "4").mkdir(parents=True)
    cfg.stages = "autoencoder,diffusion,counterfactual"
    cfg.counterfactual.learning_rate = 5e-4
    run_info.record_run(cfg, tmp_path)
    (tmp_path / "counterfactual" / "checkpoints" / "2").mkdir(parents=True)
    cfg.counterfactual.learning_rate = 1e-3
    with pytest.raises(run_info.IncompatibleRunError, match="counterfactual.learning_rate: saved 0.0005, now 0.001"):
        run_info.record_run(cfg, tmp_path)
    cfg.counterfactual.learning_rate = 5e-4
    cfg.diffusion.prediction = "v"
    with pytest.raises(run_info.IncompatibleRunError, match="diffusion.prediction"):
        run_info.record_run(cfg, tmp_path)


def test_config_saved_before_the_architecture_sections_is_resumable(tmp_path):
    old = json.loads(json.dumps(architecture.resolve(micro_config()).to_dict()))
    for section in architecture.SECTIONS:  # an old run recorded only model="phantom_micro"
        del old[section]
    del old["data"]["resize"]
    old["data"]["image_size"] = 0
    (tmp_path / "config.json").write_text(json.dumps(old))
    run_info.record_run(micro_config(), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["unet"]["model_channels"] == 16
    cfg = micro_config()
    cfg.unet.model_channels = 8
    with pytest.raises(run_info.IncompatibleRunError, match="unet.model_channels: saved 16, now 8"):
        run_info.record_run(cfg, tmp_path)


def test_a_key_added_after_the_run_was_saved_takes_its_default(tmp_path):
    """A run saved before ``diffusion.lesion_weight`` existed trained with the plain loss, the
    key's default: resuming with it is allowed, changing it is not."""
    cfg = micro_config()
    run_info.record_run(cfg, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["diffusion"]["lesion_weight"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    (tmp_path / "diffusion" / "checkpoints" / "4").mkdir(parents=True)
    cfg.diffusion.lesion_weight = 20.0
    with pytest.raises(run_info.IncompatibleRunError, match="diffusion.lesion_weight: saved 1.0, now 20.0"):
        run_info.record_run(cfg, tmp_path)
    cfg.diffusion.lesion_weight = 1.0
    run_info.record_run(cfg, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["diffusion"]["lesion_weight"] == 1.0
    # A key whose absence meant something keeps that meaning: no data.resize with a set size was "resize".
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["data"]["resize"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(run_info.IncompatibleRunError, match="data.resize: saved True, now False"):
        run_info.record_run(cfg, tmp_path)


def test_the_counterfactual_section_takes_diffusions_unset_keys_and_old_runs_resume(tmp_path):
    """``counterfactual`` keys left unset take ``diffusion``'s values when the config is resolved, set
    ones stay; a run recorded before 2026-12-07, whose every stage section held the ranking keys,
    resumes (the keys that exist no more are dropped) and still refuses a real change."""
    cfg = micro_config()
    cfg.diffusion.learning_rate, cfg.counterfactual.b2 = 3e-4, 0.95
    resolved = architecture.resolve(cfg)
    assert resolved.counterfactual.learning_rate == 3e-4 and resolved.counterfactual.b2 == 0.95
    assert resolved.counterfactual.steps == 4 and "rank_pairs" not in resolved.diffusion
    old = resolved.to_dict()
    old["diffusion"].update({k: v for k, v in old["counterfactual"].items() if k.startswith("rank_")})
    old["diffusion"]["rank_pairs"] = 0
    (tmp_path / "config.json").write_text(json.dumps(old))
    for stage in ("diffusion", "counterfactual"):  # both trained: their sections may not change
        (tmp_path / stage / "checkpoints" / "2").mkdir(parents=True)
    run_info.record_run(cfg, tmp_path)
    assert "rank_pairs" not in json.loads((tmp_path / "config.json").read_text())["diffusion"]
    cfg.counterfactual.rank_weight = 2.0
    with pytest.raises(run_info.IncompatibleRunError, match="counterfactual.rank_weight: saved 1.0, now 2.0"):
        run_info.record_run(cfg, tmp_path)


def _parse_config(*overrides):
    """The config ``train.py --config configs/phantom_tiny.py`` parses with ``--config.<key>=<value>`` overrides."""
    from absl import flags
    from ml_collections import config_flags

    argv = [
        "train.py",
        "--config",
        str(ROOT / "configs" / "phantom_tiny.py"),
        *[f"--config.{k}={v}" for k, v in overrides],
    ]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def test_unet_override_on_the_command_line_is_trained_recorded_and_loaded(trained_micro, tmp_path):
    from ldm_jax.sampling.model import load_model

    cfg = _parse_config(
        ("unet.model_channels", 8),
        *MICRO_OVERRIDES.items(),
        ("stages", "diffusion"),
        ("diffusion.steps", 2),
        ("log.sample_conditions", ""),
        ("data.data_dir", trained_micro / "data"),
        ("diffusion.autoencoder_checkpoint", trained_micro / "autoencoder" / "checkpoints"),
    )
    run.train(cfg, tmp_path)
    recorded = json.loads((tmp_path / "config.json").read_text())["unet"]
    meta = json.loads((tmp_path / "diffusion" / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert recorded == meta["config"]["unet"]
    assert recorded["model_channels"] == 8 and recorded["channel_mult"] == [1, 2]  # phantom_micro's otherwise
    model = load_model(tmp_path)
    assert model.unet.model_channels == 8 and model.unet.channel_mult == (1, 2)
    assert model.unet_params["time_embed_0"]["kernel"].shape == (8, 32)  # 16 → 64 in the micro preset
    assert (
        sum(x.size for x in jax.tree.leaves(model.unet_params))
        < sum(x.size for x in jax.tree.leaves(load_model(trained_micro).unet_params)) // 3
    )


def test_data_set_of_another_image_size_is_refused_before_any_work(trained_micro, tmp_path):
    cfg = micro_config()
    cfg.data.data_dir = str(trained_micro / "data")
    cfg.data.image_size = 32
    with pytest.raises(
        ValueError,
        match=r"'mammo_phantoms' \(config '64'\) stores 64x64 images, but "
        r"data.image_size=32: .* data.resize=True to resize",
    ):
        run.train(cfg, tmp_path)
    assert not (tmp_path / "config.json").exists()
    cfg.data.resize = True
    run.check_image_size(architecture.resolve(cfg), [{"image": np.zeros((64, 64), np.uint16)}])


def _diffusion_parts(cfg):
    preset = presets.get_preset("phantom_micro")
    unet = presets.build_unet(preset.unet)
    autoencoder = presets.build_autoencoder(preset.autoencoder)
    optimizer = make_optimizer(cfg.diffusion)
    schedule = make_schedule("linear", 1000)
    ae_params = autoencoder.init(
        {"params": jax.random.PRNGKey(3), "sample": jax.random.PRNGKey(4)}, jnp.zeros((1, 64, 64, 1))
    )["params"]
    step = diffusion_step.make_train_step(unet, autoencoder, optimizer, schedule, cfg.diffusion)
    init = lambda key: diffusion_step.init_state(key, unet, optimizer, (8, 16, 16, 4), 4)  # noqa: E731
    return init, step, ae_params


def _batches(n, nan_at=()):
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.uniform(-1, 1, (8, 64, 64, 1)).astype(np.float32)
        if i in nan_at:
            image[0, 0, 0, 0] = np.nan
        yield {"image": image, "labels": rng.integers(0, 2, (8, 4)).astype(np.int32)}


def test_label_dropout_trains_every_sampled_condition_pattern_at_its_stated_rate():
    cfg = micro_config().diffusion  # the defaults: uncond 0.1, single attribute 0.2, per attribute 0.1
    n = 200_000
    labels = jnp.tile(jnp.asarray([[2, 1, 0, 1]], jnp.int32), (n, 1))
    null = np.asarray(diffusion_step.drop_labels(jax.random.PRNGKey(0), labels, cfg)) == np.asarray(
        attributes.NUM_CLASSES
    )
    kept = ~null
    rates = diffusion_step.condition_pattern_rates(cfg)
    measured = {
        "unconditional": [null.all(1).mean()],
        "full": [kept.all(1).mean()],
        "single": [(kept[:, a] & (kept.sum(1) == 1)).mean() for a in range(null.shape[1])],
    }
    for pattern, values in measured.items():
        sigma = np.sqrt(rates[pattern] * (1 - rates[pattern]) / n)
        for value in values:  # each single attribute separately
            assert abs(value - rates[pattern]) < 5 * sigma, (pattern, value, rates[pattern])
    assert rates["unconditional"] >= 0.1 and rates["single"] >= 0.05 and rates["full"] >= 0.45
    for bad, message in (
        ({"uncond_dropout": 1.5}, "uncond_dropout=1.5"),
        ({"uncond_dropout": 0.6, "single_attribute_rate": 0.6}, "= 1.2 > 1"),
    ):
        wrong = micro_config().diffusion
        wrong.update(bad)
        with pytest.raises(ValueError, match=message):
            diffusion_step.make_train_step(None, None, None, None, wrong)


def test_training_optimises_the_unconditional_branch():
    """The loss of all-null rows (guidance's u) on a fixed held-out batch of unit-variance
    latents falls with 30 updates. It would fall with the old per-attribute dropout too
    (shared weights generalise); the rate test above is the one that catches that bug."""
    cfg = micro_config()
    init, step, ae_params = _diffusion_parts(cfg)
    preset = presets.get_preset("phantom_micro")
    unet = presets.build_unet(preset.unet)
    schedule = make_schedule("linear", 1000)
    z = jax.random.normal(jax.random.PRNGKey(5), (16, 16, 16, 4))
    noise = jax.random.normal(jax.random.PRNGKey(6), z.shape)
    t = jnp.linspace(0, 999, 16).astype(jnp.int32)
    z_t = q_sample(schedule, z, t, noise)

    @jax.jit
    def unconditional_loss(params):
        out = unet.apply({"params": params["unet"]}, z_t, t, jnp.asarray(attributes.null_labels(16)))
        return diffusion_loss(schedule, out, z, noise, t)

    state = init(jax.random.PRNGKey(0))
    before = float(unconditional_loss(state.params))
    train = jax.jit(step)
    for batch in _batches(30):
        state, _ = train(state, batch, ae_params, 1.0)
    after = float(unconditional_loss(state.params))
    assert after < 0.97 * before, (before, after)  # measured: 0.992 -> 0.934


def test_one_and_eight_devices_give_the_same_losses():
    cfg = micro_config()
    init, step, ae_params = _diffusion_parts(cfg)
    trajectories = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = parallel.make_mesh(devices=devices)
        state = jax.jit(init, out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(0))
        fn = jax.jit(
            step,
            in_shardings=(
                parallel.replicated(mesh),
                parallel.batch_sharding(mesh),
                parallel.replicated(mesh),
                parallel.replicated(mesh),
            ),
        )
        losses = []
        for batch in _batches(3):
            state, metrics = fn(state, parallel.global_batch_from_local(batch, mesh), ae_params, 1.0)
            losses.append(float(metrics["loss"]))
        trajectories.append(losses)
    # Same math, different reduction order across devices: agreement to float32 round-off.
    np.testing.assert_allclose(trajectories[0], trajectories[1], rtol=2e-5)
    assert trajectories[0][0] != trajectories[0][2]


def test_nonfinite_update_is_skipped_counted_and_stops_the_run(tmp_path):
    cfg = micro_config()
    init, step, ae_params = _diffusion_parts(cfg)
    state = init(jax.random.PRNGKey(0))
    batch = next(_batches(1, nan_at=(0,)))
    new_state, metrics = jax.jit(step)(state, batch, ae_params, 1.0)
    assert int(metrics["skipped"]) == 1 and int(new_state.step) == 1
    for before, after in zip(
        jax.tree.leaves((state.params, state.ema_params, state.opt_state)),
        jax.tree.leaves((new_state.params, new_state.ema_params, new_state.opt_state)),
    ):
        np.testing.assert_array_equal(before, after)

    class NanPipeline(saved_runs.StreamPosition):
        def __init__(self):
            super().__init__()
            self._it = _batches(10, nan_at=range(10))

        def __next__(self):
            return next(self._it)

    cfg.max_nonfinite_steps = 3
    cfg.checkpoint.every = 100
    stage = loop.Stage(name="diffusion", steps=10, init=init, step=step, extra_args=(ae_params, jnp.float32(1.0)))
    with pytest.raises(loop.NonFiniteLossError, match="3 updates in a row"):
        loop.run_stage(
            stage,
            pipeline=NanPipeline(),
            mesh=parallel.make_mesh(),
            workdir=tmp_path,
            cfg=cfg,
            key=jax.random.PRNGKey(0),
        )
    rows = [json.loads(line) for line in (tmp_path / "diffusion" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_total"] for r in rows] == [1, 2]


def test_cli_trains_every_stage_and_writes_everything(trained_filter):
    for stage in ("autoencoder", "diffusion", "counterfactual"):
        stage_dir = trained_filter / stage
        assert sorted(int(p.name) for p in (stage_dir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
        rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        assert all(np.isfinite(r["loss"]) for r in rows)
        assert list((stage_dir / "tensorboard").glob("events.out.tfevents.*"))
    ae_rows = [json.loads(line) for line in (trained_filter / "autoencoder" / "metrics.jsonl").read_text().splitlines()]
    assert "d_loss" not in ae_rows[0] and "d_loss" in ae_rows[-1]  # the GAN switches on at gan_start
    grids = sorted(p.name for p in (trained_filter / "diffusion" / "samples").iterdir())
    assert grids == ["step_0000004_density=A.png", "step_0000004_density=D.png"]
    assert not (trained_filter / "counterfactual" / "samples").exists()  # no label grids for the filter
    meta = json.loads((trained_filter / "diffusion" / "checkpoints" / "4" / "meta" / "metadata").read_text())
    assert meta["autoencoder_step"] == 4 and meta["scale_factor"] > 0
    filter_meta = trained_filter / "counterfactual" / "checkpoints" / "4" / "meta" / "metadata"
    filter_ae = json.loads(filter_meta.read_text())
    assert filter_ae["autoencoder_checkpoint"] == str(trained_filter / "autoencoder" / "checkpoints")
    assert filter_ae["autoencoder_step"] == meta["autoencoder_step"]  # added to the run: its autoencoder
    # The filter's ranking term ran on 8 fresh mass pairs a step, and its data position counts them.
    filter_rows = [json.loads(line) for line in (trained_filter / "counterfactual" / "metrics.jsonl").open()]
    assert all(np.isfinite(r["rank_loss"]) and np.isfinite(r["rank_gap"]) for r in filter_rows)
    filter_data = trained_filter / "counterfactual" / "checkpoints" / "4" / "data" / "metadata"
    assert json.loads(filter_data.read_text())["lesion_pairs_drawn"] == 4 * 8
    distribution = np.asarray(meta["label_distribution"])  # rows: labels..., count
    assert distribution.shape[1] == 5 and distribution[:, -1].sum() == 64  # every training record counted
    env = json.loads((trained_filter / "environment.json").read_text())
    assert env["versions"]["jax"] == jax.__version__ and env["devices"]


def _restore_raw(directory):
    return ocp.StandardCheckpointer().restore(directory)


def test_preempted_and_resumed_run_equals_uninterrupted(trained_micro, tmp_path, monkeypatch):
    cfg = micro_config()
    cfg.stages = "diffusion"
    cfg.data.data_dir = str(trained_micro / "data")
    cfg.diffusion.autoencoder_checkpoint = str(trained_micro / "autoencoder" / "checkpoints")
    cfg.checkpoint.every = 100  # only the SIGTERM save and the final one
    make_pipeline = run._pipeline
    calls = {"n": 0}

    class SigtermAfter:
        """The training pipeline, sending SIGTERM to this process when batch 2 is read."""

        def __init__(self, inner):
            self.inner = inner

        def __next__(self):
            calls["n"] += 1
            if calls["n"] == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return next(self.inner)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    def pipeline_with_sigterm(cfg_, source, mesh, batch_size, **kwargs):
        inner = make_pipeline(cfg_, source, mesh, batch_size, **kwargs)
        return SigtermAfter(inner) if kwargs.get("seed_offset", 0) == 0 else inner

    monkeypatch.setattr(run, "_pipeline", pipeline_with_sigterm)
    # The flag travels with step 2 and is read after step 3 is dispatched: step 3 is saved.
    with pytest.raises(loop.Preempted, match="step 3"):
        run.train(cfg, tmp_path)
    assert Checkpointer(tmp_path / "diffusion" / "checkpoints").latest_step() == 3
    assert calls["n"] == 3  # batches 1..3 were read before the SIGTERM save
    saved = _restore_raw(tmp_path / "diffusion" / "checkpoints" / "3" / "state")
    saved_data = json.loads((tmp_path / "diffusion" / "checkpoints" / "3" / "data" / "metadata").read_text())

    # Resume: training reproduces itself from scratch too, so what must be shown is that the
    # restart starts at the checkpoint: it reads only batch 4 and restores what step 3 saved.
    training_pipelines = []

    class Counting:
        def __init__(self, inner):
            self.inner, self.reads = inner, 0

        def __next__(self):
            self.reads += 1
            return next(self.inner)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    def counting_pipeline(cfg_, source, mesh, batch_size, **kwargs):
        inner = make_pipeline(cfg_, source, mesh, batch_size, **kwargs)
        if kwargs.get("seed_offset", 0):
            return inner
        training_pipelines.append(Counting(inner))
        return training_pipelines[-1]

    restored = []
    restore_or_init = run.restore_or_init

    def recording_restore_or_init(stage, checkpointer, mesh, key, pipeline, cfg_):
        state, meta, shardings = restore_or_init(stage, checkpointer, mesh, key, pipeline, cfg_)
        restored.append((jax.device_get(state), meta, pipeline.get_state()))
        return state, meta, shardings

    monkeypatch.setattr(run, "_pipeline", counting_pipeline)
    monkeypatch.setattr(run, "restore_or_init", recording_restore_or_init)
    run.train(cfg, tmp_path)
    assert [p.reads for p in training_pipelines] == [1]  # only the batch after the checkpoint
    ((state, meta, position),) = restored
    assert int(state.step) == int(saved["step"]) == 3 and meta is not None and meta["scale_factor"] > 0
    assert position == saved_data and saved_data["position"] == 3 * 8
    for field in ("params", "opt_state", "ema_params", "rng"):
        got, want = jax.tree.leaves(getattr(state, field)), jax.tree.leaves(saved[field])
        assert len(got) == len(want) > 0, field
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b, err_msg=field)
    rows = [json.loads(line) for line in (tmp_path / "diffusion" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # each step listed once

    resumed = _restore_raw(tmp_path / "diffusion" / "checkpoints" / "4" / "state")
    reference = _restore_raw(trained_micro / "diffusion" / "checkpoints" / "4" / "state")
    flat_resumed = jax.tree_util.tree_leaves_with_path(resumed)
    flat_reference = dict(jax.tree_util.tree_leaves_with_path(reference))
    assert len(flat_resumed) == len(flat_reference) > 10
    for path, value in flat_resumed:
        np.testing.assert_array_equal(value, flat_reference[path], err_msg=jax.tree_util.keystr(path))
    data = [
        json.loads((d / "diffusion" / "checkpoints" / "4" / "data" / "metadata").read_text())
        for d in (tmp_path, trained_micro)
    ]
    assert data[0] == data[1] and data[0]["position"] == 4 * 8  # the stream position after 4 batches of 8


@pytest.mark.slow
def test_lpips_term_from_a_local_weights_file(trained_micro, tmp_path):
    """With ``lpips_weights`` set the autoencoder loss gains the perceptual term (synthetic weights)."""
    from flax import traverse_util

    from ldm_jax.perceptual import lpips, weights

    module = lpips.LPIPS()
    x = jax.ShapeDtypeStruct((1, lpips.MIN_SIZE, lpips.MIN_SIZE, 3), jnp.float32)
    template = jax.eval_shape(module.init, jax.random.key(0), x, x)
    leaves = traverse_util.flatten_dict(template)
    rng = np.random.default_rng(0)
    state = {}
    for name, path in weights.torch_names(template, lpips._torch_module).items():
        shape = leaves[path].shape
        shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape
        state[name] = np.abs(rng.standard_normal(shape)).astype(np.float32) * 0.05
    np.savez(tmp_path / "lpips_merged.npz", **state)

    def first_loss(extra):
        cfg = micro_config()
        cfg.stages = "autoencoder"
        cfg.autoencoder.steps = 1
        cfg.data.data_dir = str(trained_micro / "data")
        cfg.autoencoder.update(extra)
        workdir = tmp_path / f"run{len(extra)}"
        run.train(cfg, workdir)
        return json.loads((workdir / "autoencoder" / "metrics.jsonl").read_text().splitlines()[0])["rec_loss"]

    plain = first_loss({})
    with_lpips = first_loss({"lpips_weights": str(tmp_path / "lpips_merged.npz"), "lpips_weight": 1.0})
    assert with_lpips > plain + 1e-3  # same init and batch: the difference is the LPIPS distance
    cfg = micro_config()
    cfg.data.data_dir = str(trained_micro / "data")
    cfg.autoencoder.lpips_weights = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="vgg16"):
        run.train(cfg, tmp_path / "missing")


def test_bad_topology_is_refused_before_any_work(tmp_path):
    cfg = micro_config()
    cfg.mesh.fsdp = 3
    with pytest.raises(ValueError, match="fsdp=3 must be >= 1 and divide the device count 8"):
        run.train(cfg, tmp_path / "fsdp3")
    cfg = micro_config()
    cfg.diffusion.batch_size = 12
    with pytest.raises(ValueError, match=r"diffusion.batch_size 12 is not divisible by the 8 devices"):
        run.train(cfg, tmp_path / "batch12")
    assert not (tmp_path / "fsdp3").exists() and not (tmp_path / "batch12").exists()


def test_metrics_rows_after_the_resumed_step_are_dropped(tmp_path):
    from ldm_jax.training.metrics_writer import MetricsWriter

    writer = MetricsWriter(tmp_path)
    for step in range(1, 6):
        writer.scalars(step, {"loss": float(step)})
    writer.close()
    MetricsWriter(tmp_path, start_step=3).close()  # the run died after step 5; its checkpoint is step 3
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


@pytest.mark.parametrize("name", ["diffusion", "counterfactual"])
def test_the_program_compiled_ahead_is_the_one_the_trainer_runs(trained_micro, name):
    """``stages.batch_specs`` describes the batches the trainer's pipeline gives (keys, shapes,
    dtypes), and the stage's step lowered on those specs is the program lowered on a real batch."""
    from ldm_jax.data.source import open_source
    from ldm_jax.training import lesion_ranking, stages

    cfg = micro_config()
    cfg.data.data_dir = str(trained_micro / "data")
    cfg = architecture.resolve(cfg)
    mesh = parallel.make_mesh(1)
    section = cfg[name]
    source = open_source(cfg, trained_micro)
    pipeline = run._pipeline(cfg, source, mesh, section.batch_size, lesion_masks=section.lesion_weight != 1)
    if section.get("rank_pairs"):
        pipeline = lesion_ranking.WithLesionPairs(pipeline, mesh, section.rank_pairs, cfg.data.image_size)
    batch = next(pipeline)
    specs = stages.batch_specs(cfg, name)
    used = {k: batch[k] for k in specs}  # a diffusion batch of phantoms also holds an unused counterfactual
    shapes = jax.tree.map(lambda x: (x.shape, jnp.dtype(x.dtype)), (used, specs))
    assert shapes[0] == shapes[1]
    stage = stages.stage_of(cfg, name)
    abstract, shardings = loop.abstract_state(stage, mesh, jax.random.PRNGKey(0), cfg.mesh.fsdp_min_size)
    program = loop.step_program(stage, mesh, shardings, cfg.mesh.fsdp_min_size)
    stop = parallel.process_flags(False, mesh)

    def avals(batch):
        """What jit traces the step on: the shapes, dtypes and weak types of every argument."""
        return program.jitted.lower(abstract, batch, stop, *stage.extra_args).in_avals

    assert avals(specs) == avals(used)


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion", "counterfactual"])
def test_the_out_of_memory_hint_names_only_keys_the_stage_has(stage):
    cfg = micro_config()
    mesh = parallel.make_mesh(1)
    hint = loop.memory_hint(stage, cfg[stage], 8 * mesh.size, mesh)
    assert hint.startswith(f"{stage}: out of device memory with 8 examples per device")
    for key in re.findall(r"\b(\w+)\.(\w+)\b", hint):
        section, name = key
        assert name in cfg[section], f"the hint names {section}.{name}, which the config lacks"
    assert ("accum_steps" in hint) == (stage != "autoencoder")
