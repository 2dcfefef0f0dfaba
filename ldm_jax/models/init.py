"""Fresh parameter trees of the networks, for training from scratch and, under
``jax.eval_shape``, as the abstract trees that checkpoints are restored into."""

from __future__ import annotations

import jax.numpy as jnp


def init_autoencoder_params(key, sample_key, autoencoder, image_shape):
    """Fresh autoencoder parameters for images ``[B, H, W, C]``."""
    return autoencoder.init({"params": key, "sample": sample_key}, jnp.zeros(image_shape, jnp.float32))["params"]


def init_unet_params(key, unet, latent_shape, num_attributes: int):
    """Fresh UNet parameters for latents ``[B, h, w, c]`` and labels ``[B, num_attributes]``."""
    b = latent_shape[0]
    return unet.init(
        key, jnp.zeros(latent_shape, jnp.float32), jnp.zeros((b,), jnp.int32), jnp.zeros((b, num_attributes), jnp.int32)
    )["params"]
