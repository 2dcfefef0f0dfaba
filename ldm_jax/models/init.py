"""Fresh parameter trees of the networks, for training from scratch and, under
``jax.eval_shape``, as the abstract trees that checkpoints are restored into."""

from __future__ import annotations

import jax.numpy as jnp


def init_autoencoder_params(key, sample_key, autoencoder, image_shape):
    """Fresh autoencoder parameters for images ``[B, H, W, C]``."""
    return autoencoder.init({"params": key, "sample": sample_key}, jnp.zeros(image_shape, jnp.float32))["params"]


def init_unet_params(key, unet, latent_shape, num_attributes: int, extra_channels: int = 0, image_shape=None):
    """Fresh UNet parameters for latents ``[B, h, w, c]``, labels ``[B, num_attributes]`` and, when
    ``extra_channels`` > 0, ``extra [B, h, w, extra_channels]`` inputs concatenated to the latents;
    a UNet with a pixel stem also needs the ``(H, W, C)`` of its source images, ``image_shape``."""
    b, h, w, _ = latent_shape
    extra = jnp.zeros((b, h, w, extra_channels), jnp.float32) if extra_channels else None
    if unet.pixel_stem and image_shape is None:
        raise ValueError(f"this UNet reads source images (pixel_stem={unet.pixel_stem}): give their image_shape")
    pixels = jnp.zeros((b, *image_shape), jnp.float32) if unet.pixel_stem else None
    return unet.init(
        key,
        jnp.zeros(latent_shape, jnp.float32),
        jnp.zeros((b,), jnp.int32),
        jnp.zeros((b, num_attributes), jnp.int32),
        extra=extra,
        extra_pixels=pixels,
    )["params"]
