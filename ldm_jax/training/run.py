"""``train(cfg, workdir)``: the two stages of a latent diffusion model on one device mesh.

Stage ``autoencoder`` trains the KL autoencoder (+ PatchGAN) on images; stage
``diffusion`` freezes it, measures the latent scale factor and trains the conditional
UNet on scaled latents. The optional stage ``counterfactual`` trains a second UNet the same
way on (image → fat-only counterfactual) pairs, seeing the image: the supervised
dense-tissue filter. Each stage lives in ``<workdir>/<stage>/`` (checkpoints,
``metrics.jsonl``, TensorBoard events, sample PNGs).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import attributes, parallel, rng
from ldm_jax.checkpoint import restore
from ldm_jax.checkpoint.checkpointer import Checkpointer
from ldm_jax.storage import local_path
from ldm_jax.data.source import open_source
from ldm_jax.diffusion.samplers import SamplerConfig
from ldm_jax.models import architecture
from ldm_jax.sampling.generate import image_keys, make_generate
from ldm_jax.sampling.grid import make_grid, to_pixels
from ldm_jax.training import autoencoder_step, diffusion_step, lesion_ranking, stages
from ldm_jax.training.config import stages_of
from ldm_jax.training.loop import SigtermFlag, restore_or_init, run_stage
from ldm_jax.training.run_info import record_run


def train(cfg, workdir, devices=None) -> None:
    """Run the configured stages in ``workdir`` (resuming each from its newest checkpoint).

    Every process of a multi-process job calls this with the same arguments; ``devices``
    (default: all) are the devices of the mesh. The architecture sections of ``cfg`` are
    filled from its preset first (``architecture.resolve``); the run records that config.
    """
    cfg = architecture.resolve(cfg)
    for what, path in (("--workdir", workdir), ("data.data_dir", cfg.data.data_dir)):
        local_path(path, what)
    parallel.initialize_distributed()
    stages = stages_of(cfg)
    if cfg.checkpoint.restore_step and len(stages) > 1:
        raise ValueError(
            f"checkpoint.restore_step={cfg.checkpoint.restore_step} with stages={cfg.stages!r}: name the one stage "
            "to restore, e.g. --config.stages=diffusion"
        )
    mesh = parallel.make_mesh(cfg.mesh.fsdp, devices)
    check_batch_sizes(cfg, stages, mesh)
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    with SigtermFlag() as sigterm:  # from here on a SIGTERM means: checkpoint at the next step, then stop
        source = open_source(cfg, workdir)
        check_image_size(cfg, source)  # before the config is recorded: a corrected config must be accepted
        record_run(cfg, workdir)
        key = jax.random.PRNGKey(cfg.seed)
        if "autoencoder" in stages:
            train_autoencoder(cfg, mesh, workdir, source, rng.stream(key, "autoencoder"), sigterm)
        if "diffusion" in stages:
            train_diffusion(cfg, mesh, workdir, source, rng.stream(key, "diffusion"), sigterm)
        if "counterfactual" in stages:
            check_pairs(cfg, source)
            stage_key = rng.stream(key, "counterfactual")
            train_diffusion(cfg, mesh, workdir, source, stage_key, sigterm, stage="counterfactual")


def check_batch_sizes(cfg, stages, mesh) -> None:
    """Every batch a run will form must split evenly over the mesh: fail before any work."""
    if cfg.mesh.fsdp_min_size < 1:
        raise ValueError(f"mesh.fsdp_min_size must be >= 1, got {cfg.mesh.fsdp_min_size}")
    for stage in stages:
        parallel.check_batch_size(cfg[stage].batch_size, mesh, f"{stage}.batch_size")


def check_image_size(cfg, source) -> None:
    """The data set must store images of the run's ``data.image_size`` unless ``data.resize`` is set."""
    from ldm_jax.data.pipeline import stored_image_size

    stored = stored_image_size(source)
    if not cfg.data.resize and stored != cfg.data.image_size:
        found = "images of varying size" if stored is None else f"{stored}x{stored} images"
        raise ValueError(
            f"data set {cfg.data.dataset!r} (config {cfg.data.config!r}) stores {found}, but "
            f"data.image_size={cfg.data.image_size}: choose the data config of that size, or "
            f"set data.image_size to the stored size, or data.resize=True to resize"
        )


def check_pairs(cfg, source) -> None:
    """The counterfactual stage needs a data set that stores each image's counterfactual."""
    from ldm_jax.data.pipeline import has_feature

    if not has_feature(source, "counterfactual"):
        raise ValueError(
            f"stage 'counterfactual' trains on (image, counterfactual) pairs, and data set "
            f"{cfg.data.dataset!r} stores no counterfactual: use mammo_phantoms"
        )


def _pipeline(cfg, source, mesh, batch_size, *, seed_offset=0, shuffle=True, lesion_masks=False):
    from ldm_jax.data.pipeline import InputPipeline

    parallel.check_batch_size(batch_size, mesh)
    return InputPipeline(
        source,
        global_batch_size=batch_size,
        mesh=mesh,
        seed=cfg.seed + seed_offset,
        shuffle=shuffle,
        image_size=cfg.data.image_size,
        worker_count=cfg.data.worker_count,
        lesion_masks=lesion_masks,
    )


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


def train_autoencoder(cfg, mesh, workdir, source, key, sigterm=None):
    acfg = cfg.autoencoder
    perceptual = autoencoder_step.load_perceptual(acfg)  # fails early when files are missing
    stage = stages.autoencoder_stage(cfg, perceptual)
    autoencoder = stages.autoencoder_networks(cfg)[0]
    pipeline = _pipeline(cfg, source, mesh, acfg.batch_size)
    examples = next(_pipeline(cfg, source, mesh, _round_up(cfg.log.sample_count, mesh.size), shuffle=False))["image"]
    reconstruct = parallel.compile_together(
        jax.jit(lambda p, x: autoencoder.apply({"params": p}, x, sample_posterior=False)[0])
    )

    def on_sample(state, step):
        recon = reconstruct(state.params["autoencoder"], examples)
        pairs = np.concatenate([parallel.to_host(examples), parallel.to_host(recon)])
        return {"reconstructions": make_grid(to_pixels(pairs, 255, np.uint8), columns=len(examples))}

    stage.on_sample = on_sample
    run_stage(stage, pipeline=pipeline, mesh=mesh, workdir=workdir, cfg=cfg, key=key, sigterm=sigterm)


def estimate_scale_factor(autoencoder, ae_params, pipeline, num_batches, key) -> float:
    """1/std of latents z ~ q(z|x) over ``num_batches`` batches of training images; ``key``: the stage's."""
    encode = parallel.compile_together(
        jax.jit(lambda p, x, k: diffusion_step.encode_latents(autoencoder, p, x, k, 1.0))
    )
    latents = [
        parallel.to_host(encode(ae_params, next(pipeline)["image"], rng.stream(key, "scale_factor", i)))
        for i in range(num_batches)
    ]
    return diffusion_step.latent_scale_factor(np.concatenate(latents))


def train_diffusion(cfg, mesh, workdir, source, key, sigterm=None, stage="diffusion"):
    """Train the UNet of ``stage``: ``diffusion``, or ``counterfactual`` (paired, see the module docstring)."""
    from ldm_jax.data.pipeline import all_labels

    dcfg = cfg[stage]
    paired = stage == "counterfactual"
    ae_dir = str(pathlib.Path(dcfg.autoencoder_checkpoint or workdir / "autoencoder" / "checkpoints").absolute())
    autoencoder, ae_params, ae_step = restore.load_autoencoder(cfg, ae_dir, None, mesh, cfg.mesh.fsdp_min_size)
    parts = stages.diffusion_parts(cfg, stage)
    unet, schedule = parts.unet, parts.schedule
    run = stages.diffusion_stage(cfg, stage, parts)
    pipeline = _pipeline(cfg, source, mesh, dcfg.batch_size, lesion_masks=dcfg.lesion_weight != 1)
    if dcfg.get("rank_pairs"):  # the counterfactual stage's key
        pipeline = lesion_ranking.WithLesionPairs(pipeline, mesh, dcfg.rank_pairs, cfg.data.image_size)
    checkpointer = Checkpointer(workdir / stage / "checkpoints", async_save=False)
    state, meta, shardings = restore_or_init(run, checkpointer, mesh, key, pipeline, cfg)
    checkpointer.close()
    if meta is not None:
        scale = meta["scale_factor"]
    else:
        estimate_from = _pipeline(cfg, source, mesh, dcfg.batch_size, seed_offset=1)
        scale = estimate_scale_factor(autoencoder, ae_params, estimate_from, dcfg.scale_factor_batches, key)
    distribution = (meta or {}).get("label_distribution") or restore.label_distribution(all_labels(source)).tolist()
    run.extra_args = (ae_params, np.float32(scale))
    run.meta = {
        "model": cfg.model,
        "config": cfg.to_dict(),
        "scale_factor": scale,
        "autoencoder_checkpoint": ae_dir,
        "autoencoder_step": ae_step,
        "label_distribution": distribution,
    }
    if not paired:
        run.on_sample = _grid_sampler(cfg, mesh, unet, autoencoder, ae_params, schedule, scale, key)
    run_stage(
        run,
        pipeline=pipeline,
        mesh=mesh,
        workdir=workdir,
        cfg=cfg,
        key=key,
        state=state,
        shardings=shardings,
        sigterm=sigterm,
    )


def _grid_sampler(cfg, mesh, unet, autoencoder, ae_params, schedule, scale, key):
    """``on_sample``: one grid per configured condition, from the EMA weights, same noise
    every time; None (no grids, nothing compiled) when no condition is configured."""
    conditions = [c for c in cfg.log.sample_conditions.split(";") if c.strip()]
    if not conditions:
        return None
    per_grid = cfg.log.sample_count
    labels = np.concatenate([np.tile(attributes.parse_condition(c), (per_grid, 1)) for c in conditions])
    n = _round_up(len(labels), mesh.size)
    labels = np.concatenate([labels, attributes.null_labels(n - len(labels))])
    sharding = parallel.batch_sharding(mesh)
    labels = parallel.global_array(labels, sharding)
    keys = parallel.global_array(np.asarray(image_keys(rng.stream(key, "sample_grid"), jnp.arange(n))), sharding)
    latent = architecture.latent_shape(cfg)
    sampling = SamplerConfig(
        num_steps=cfg.log.sample_steps, prediction=cfg.diffusion.prediction, guidance_scale=cfg.log.guidance_scale
    )
    generate = parallel.compile_together(jax.jit(make_generate(unet, autoencoder, schedule, latent, sampling)))

    def on_sample(state, step):
        images = to_pixels(
            parallel.to_host(generate(state.ema_params["unet"], ae_params, scale, labels, keys)), 255, np.uint8
        )
        return {
            c.strip().replace(",", "_"): make_grid(images[i * per_grid : (i + 1) * per_grid])
            for i, c in enumerate(conditions)
        }

    return on_sample
