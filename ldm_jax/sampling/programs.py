"""The jitted sampling and editing jobs over a device mesh, and the shapes of their arguments.

``sample.py`` runs these programs on a loaded model; ``bench.py --target`` compiles the same
programs ahead of time on ``model.abstract_model``. Weights and the scale factor are
replicated; labels, images and per-image keys are split over the mesh's batch axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ldm_jax import attributes, parallel
from ldm_jax.diffusion.samplers import SamplerConfig
from ldm_jax.models import architecture
from ldm_jax.sampling.generate import Edit, image_keys, make_generate, model_edit


def generate_program(unet, autoencoder, schedule, latent_shape, sampling: SamplerConfig, mesh):
    """``generate(unet_params, ae_params, scale, labels [B, A], keys [B]) -> images`` (``make_generate``)."""
    replicated, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(
        make_generate(unet, autoencoder, schedule, latent_shape, sampling),
        in_shardings=(replicated, replicated, replicated, batch, batch),
        out_shardings=batch,
    )


def edit_program(model, sampling: SamplerConfig, mesh, edit: Edit):
    """``edit(unet_params, ae_params, scale, images, source_labels, target_labels, keys) -> images``
    (``model_edit`` with ``edit``'s settings)."""
    replicated, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(
        model_edit(model, sampling, edit),
        in_shardings=(replicated, replicated, replicated) + (batch,) * 4,
        out_shardings=batch,
    )


def generate_arg_specs(model, batch: int) -> dict:
    """Abstract arguments of ``generate_program`` for ``batch`` images, by name in argument order."""
    labels = jax.ShapeDtypeStruct((batch, len(attributes.ATTRIBUTES)), jnp.int32)
    keys = jax.eval_shape(lambda: image_keys(jax.random.PRNGKey(0), jnp.arange(batch)))
    scale = jax.ShapeDtypeStruct((), jnp.float32)
    return {
        "unet_params": model.unet_params,
        "ae_params": model.ae_params,
        "scale": scale,
        "labels": labels,
        "keys": keys,
    }


def edit_arg_specs(model, batch: int) -> dict:
    """Abstract arguments of ``edit_program`` for ``batch`` images of the model's size, by name in
    argument order."""
    specs = generate_arg_specs(model, batch)
    images = jax.ShapeDtypeStruct((batch, *architecture.image_shape(model.config)), jnp.float32)
    weights = {name: specs[name] for name in ("unet_params", "ae_params", "scale")}
    return {
        **weights,
        "images": images,
        "source_labels": specs["labels"],
        "target_labels": specs["labels"],
        "keys": specs["keys"],
    }
