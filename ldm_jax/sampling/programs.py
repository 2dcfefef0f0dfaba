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
from ldm_jax.sampling.generate import image_keys, make_edit, make_generate


def generate_program(unet, autoencoder, schedule, latent_shape, sampling: SamplerConfig, mesh):
    """``generate(unet_params, ae_params, scale, labels [B, A], keys [B]) -> images`` (``make_generate``)."""
    replicated, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(
        make_generate(unet, autoencoder, schedule, latent_shape, sampling),
        in_shardings=(replicated, replicated, replicated, batch, batch),
        out_shardings=batch,
    )


def edit_program(model, sampling: SamplerConfig, mesh, **edit):
    """``edit(unet_params, ae_params, scale, images, source_labels, target_labels, keys) -> images``
    (``make_edit`` with the ``edit`` keywords: method, strength, guide, detail)."""
    replicated, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(
        make_edit(model.unet, model.autoencoder, model.schedule, sampling, **edit),
        in_shardings=(replicated, replicated, replicated) + (batch,) * 4,
        out_shardings=batch,
    )


def generate_arg_specs(model, batch: int) -> tuple:
    """Abstract arguments of ``generate_program`` for ``batch`` images."""
    labels = jax.ShapeDtypeStruct((batch, len(attributes.ATTRIBUTES)), jnp.int32)
    keys = jax.eval_shape(lambda: image_keys(jax.random.PRNGKey(0), jnp.arange(batch)))
    return (model.unet_params, model.ae_params, jax.ShapeDtypeStruct((), jnp.float32), labels, keys)


def edit_arg_specs(model, batch: int) -> tuple:
    """Abstract arguments of ``edit_program`` for ``batch`` images of the model's size."""
    unet_params, ae_params, scale, labels, keys = generate_arg_specs(model, batch)
    images = jax.ShapeDtypeStruct((batch, *architecture.image_shape(model.config)), jnp.float32)
    return (unet_params, ae_params, scale, images, labels, labels, keys)
