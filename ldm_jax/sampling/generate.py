"""Latent diffusion generation: noise → UNet sampler in latent space → decoder → images.

``make_generate`` returns one pure function that jits into a single program (the whole
denoising loop plus the decode), used by the training loop's sample grids and by
``sample.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ldm_jax import labels as labels_lib
from ldm_jax.diffusion.samplers import sample
from ldm_jax.models.unet import null_labels


def initial_noise(key, indices, latent_shape):
    """x_T for images ``indices`` [B]: image i's noise is drawn from ``fold_in(key, i)`` alone.

    So image i is the same whatever the batch it lands in, the batch size or the device count.
    """
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), latent_shape))(indices)


def make_generate(unet, autoencoder, schedule, *, sampler="ddim", num_steps=50, eta=0.0, spacing="leading",
                  prediction="eps", guidance_scale=1.0):
    """``generate(unet_params, ae_params, scale, labels [B, A], x_T [B, h, w, c], key) -> images [B, H, W, C]``.

    Images are in the model range [-1, 1]; ``scale`` is the latent scale factor; guidance
    uses the all-null labels as the unconditional branch.
    """

    def generate(unet_params, ae_params, scale, labels, x_T, key):
        def denoise(x, t, cond):
            return unet.apply({"params": unet_params}, x, t, cond)

        null = null_labels(labels.shape[0], labels_lib.NUM_CLASSES)
        z = sample(denoise, schedule, x_T, key, sampler=sampler, num_steps=num_steps, eta=eta, spacing=spacing,
                   prediction=prediction, cond=labels, null_cond=null, guidance_scale=guidance_scale)
        images = autoencoder.apply({"params": ae_params}, z / scale, method=autoencoder.decode)
        return jnp.clip(images, -1.0, 1.0)

    return generate
