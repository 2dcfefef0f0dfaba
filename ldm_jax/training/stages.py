"""Each training stage from its config alone: networks, fresh state, pure step, the shapes of its
frozen arguments and of the batch it reads.

The trainer (``run``) fills a stage's frozen arguments with real weights and trains it;
``bench.py --target`` compiles the same stage ahead of time on abstract inputs
(``loop.step_program``): one definition, so what is compiled ahead is what runs.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ldm_jax import attributes
from ldm_jax.checkpoint import restore
from ldm_jax.models import architecture, presets
from ldm_jax.training import autoencoder_step, counterfactual_step, diffusion_step
from ldm_jax.training.loop import Stage
from ldm_jax.training.state import make_optimizer

STAGES = ("autoencoder", "diffusion", "counterfactual")


def compute_dtype(cfg):
    return jnp.dtype(cfg.compute_dtype)


def autoencoder_networks(cfg):
    """``(autoencoder, discriminator, optimizers)`` of the autoencoder stage."""
    autoencoder = presets.build_autoencoder(cfg.autoencoder_net, dtype=compute_dtype(cfg))
    discriminator = presets.build_discriminator(cfg.discriminator_net, dtype=compute_dtype(cfg))
    return autoencoder, discriminator, autoencoder_step.make_optimizers(cfg.autoencoder)


def autoencoder_stage(cfg, perceptual=(None, None)) -> Stage:
    """The autoencoder stage of resolved config ``cfg``; ``perceptual`` is ``(LPIPS module, variables)``
    (``autoencoder_step.load_perceptual``). Its static argument is whether the GAN is on."""
    acfg = cfg.autoencoder
    lpips_module, lpips_variables = perceptual
    autoencoder, discriminator, optimizers = autoencoder_networks(cfg)
    init = functools.partial(
        autoencoder_step.init_state,
        autoencoder=autoencoder,
        discriminator=discriminator,
        optimizers=optimizers,
        image_shape=(acfg.batch_size, *architecture.image_shape(cfg)),
    )
    return Stage(
        name="autoencoder",
        steps=acfg.steps,
        init=init,
        step=autoencoder_step.make_train_step(autoencoder, discriminator, optimizers, acfg, lpips_module),
        extra_args=(lpips_variables,),
        static_args=lambda step: (step >= acfg.gan_start,),
        meta={"model": cfg.model, "config": cfg.to_dict()},
    )


class DiffusionParts(NamedTuple):
    """The networks, optimizer and schedule of a diffusion (or counterfactual) stage."""

    unet: object
    autoencoder: object
    optimizer: object
    schedule: object


def diffusion_parts(cfg, name: str = "diffusion") -> DiffusionParts:
    dcfg = cfg[name]
    return DiffusionParts(
        unet=presets.build_unet(architecture.stage_unet(cfg, name), dtype=compute_dtype(cfg)),
        autoencoder=presets.build_autoencoder(cfg.autoencoder_net, dtype=compute_dtype(cfg)),
        optimizer=make_optimizer(dcfg),
        schedule=restore.schedule_from_config(dcfg),
    )


def diffusion_stage(cfg, name: str = "diffusion", parts: DiffusionParts | None = None) -> Stage:
    """The UNet stage ``name`` (``diffusion``, or the paired ``counterfactual``) of resolved config
    ``cfg``. Its frozen arguments are (autoencoder params, latent scale factor), here as their
    abstract shapes (``frozen_specs``); the trainer puts the real ones in their place."""
    dcfg = cfg[name]
    paired = name == "counterfactual"
    parts = parts or diffusion_parts(cfg, name)
    init = functools.partial(
        diffusion_step.init_state,
        unet=parts.unet,
        optimizer=parts.optimizer,
        latent_shape=(dcfg.batch_size, *architecture.latent_shape(cfg)),
        num_attributes=len(attributes.ATTRIBUTES),
        extra_channels=architecture.source_channels(cfg) if paired else 0,
        image_shape=architecture.image_shape(cfg),
    )
    step_module = counterfactual_step if paired else diffusion_step
    step = step_module.make_train_step(parts.unet, parts.autoencoder, parts.optimizer, parts.schedule, dcfg)
    return Stage(name=name, steps=dcfg.steps, init=init, step=step, extra_args=frozen_specs(cfg))


def frozen_specs(cfg) -> tuple:
    """Abstract (autoencoder params, scale factor) that a UNet stage's step reads."""
    return restore.autoencoder_param_shapes(cfg), jax.ShapeDtypeStruct((), jnp.float32)


def batch_specs(cfg, name: str) -> dict:
    """``ShapeDtypeStruct``s of the global batch stage ``name`` reads from its pipeline: ``image``
    ``[B, H, W, C]`` and ``labels`` ``[B, A]``; the ``counterfactual`` target of the paired stage,
    the lesion ``mask`` with ``lesion_weight`` ≠ 1 and the ranking ``pairs`` with ``rank_pairs`` > 0
    (``lesion_ranking.pair_arrays``)."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; expected one of {STAGES}")
    section = cfg[name]
    image = (section.batch_size, *architecture.image_shape(cfg))
    plane = (*image[:-1], 1)
    specs = {
        "image": jax.ShapeDtypeStruct(image, jnp.float32),
        "labels": jax.ShapeDtypeStruct((section.batch_size, len(attributes.ATTRIBUTES)), jnp.int32),
    }
    if name == "autoencoder":
        return specs
    if name == "counterfactual":
        specs["counterfactual"] = specs["image"]
    if section.lesion_weight != 1:
        specs["mask"] = jax.ShapeDtypeStruct(plane, jnp.float32)
    if section.get("rank_pairs"):  # the counterfactual stage's key
        p, (_, h, w, c) = section.rank_pairs, image
        specs["pairs"] = {
            "image": jax.ShapeDtypeStruct((p, 2, h, w, c), jnp.float32),
            "counterfactual": jax.ShapeDtypeStruct((p, 2, h, w, c), jnp.float32),
            "labels": jax.ShapeDtypeStruct((p, 2, len(attributes.ATTRIBUTES)), jnp.int32),
            "lesion": jax.ShapeDtypeStruct((p, h, w, 1), jnp.float32),
            "band": jax.ShapeDtypeStruct((p, h, w, 1), jnp.float32),
        }
    return specs


def stage_of(cfg, name: str, perceptual=(None, None)) -> Stage:
    """Stage ``name`` of resolved config ``cfg`` (abstract frozen arguments for UNet stages)."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; expected one of {STAGES}")
    return autoencoder_stage(cfg, perceptual) if name == "autoencoder" else diffusion_stage(cfg, name)
