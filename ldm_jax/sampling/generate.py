"""Latent diffusion generation and editing: each one pure function that jits into a single
program (the whole denoising loop plus the autoencoder), used by the training loop's sample
grids, ``sample.py`` and evaluation.

Randomness is per image: image i of a job gets the key ``fold_in(root, i)`` (``image_keys``),
its x_T is drawn from that key and the sampler's step noise from ``fold_in(key_i, step)``, so
an image does not depend on the batch it lands in, the batch size or the device count.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ldm_jax import attributes
from ldm_jax.diffusion import forward, samplers
from ldm_jax.diffusion.samplers import SamplerConfig
from ldm_jax.models.layers import latent_blocks

EDIT_METHODS = ("sdedit", "ddim-inversion", "diffedit", "counterfactual")
MASK_DRAWS = 4  # diffedit: noise draws the edit mask averages over
MASK_STRENGTH = 0.5  # diffedit: the mask is read at the grid step where half of the steps remain
MASK_THRESHOLD = 0.5  # diffedit: the mask holds where the normalised difference exceeds this
GUIDED_ATTRIBUTES = ("all", "density")


def image_keys(root_key, indices):
    """Per-image keys ``[B]``: ``fold_in(root_key, i)`` for each image index i."""
    return jax.vmap(lambda i: jax.random.fold_in(root_key, i))(jnp.asarray(indices, jnp.uint32))


def initial_noise(keys, latent_shape):
    """x_T ``[B, *latent_shape]``: image b's noise drawn from ``keys[b]`` alone."""
    return jax.vmap(lambda k: jax.random.normal(k, latent_shape))(keys)


def denoiser(unet, unet_params):
    """``denoise(x, t, labels)``: the UNet's output with its parameters bound (for the samplers)."""

    def denoise(x, t, cond):
        return unet.apply({"params": unet_params}, x, t, cond)

    return denoise


def encode_mode(autoencoder, ae_params, images, scale):
    """Scaled latents ``scale · mode(q(z | x))`` of images in [-1, 1] (deterministic)."""
    return autoencoder.apply({"params": ae_params}, images, method=autoencoder.encode).mode() * scale


def source_features(autoencoder, ae_params, images, scale):
    """What the ``counterfactual`` stage's UNet sees of its source image, on the latent grid
    ``[B, h, w, c + f²·C]``: the scaled latent ``scale · mode(q(z | x))`` and the image's own pixels
    folded f×f into channels (space-to-depth), so detail the autoencoder loses (faint masses in
    dense tissue) still reaches the filter."""
    z = encode_mode(autoencoder, ae_params, images, scale)
    b, h, w, _ = z.shape
    pixels = latent_blocks(images, h).reshape(b, h, w, -1)
    return jnp.concatenate([z, pixels.astype(z.dtype)], axis=-1)


def source_inputs(unet, autoencoder, ae_params, images, scale) -> dict:
    """All a counterfactual UNet is given of its source images: ``source`` (``source_features``) and,
    when it has a pixel stem (``unet.pixel_stem``), the images themselves as ``pixels``."""
    inputs = {"source": source_features(autoencoder, ae_params, images, scale)}
    if unet.pixel_stem:
        inputs["pixels"] = images
    return inputs


def source_denoiser(unet, unet_params):
    """``denoise(x, t, cond)`` of a UNet that also sees its source (the ``counterfactual`` stage):
    ``cond = {"labels": [B, A], **source_inputs}``."""

    def denoise(x, t, cond):
        return unet.apply(
            {"params": unet_params}, x, t, cond["labels"], extra=cond["source"], extra_pixels=cond.get("pixels")
        )

    return denoise


def decode(autoencoder, ae_params, z, scale):
    """Images in [-1, 1] from scaled latents ``z`` (``scale`` is the latent scale factor)."""
    images = autoencoder.apply({"params": ae_params}, z / scale, method=autoencoder.decode)
    return jnp.clip(images, -1.0, 1.0)


def keep_detail(images, edited, round_trip):
    """An edit applied as a change in image space: ``clip(x + D(ẑ) − D(E(x)), −1, 1)``, with
    ``edited`` = D(ẑ) and ``round_trip`` = D(E(x)). The residual x − D(E(x)) that the autoencoder
    cannot represent (fine texture, calcifications, a faint mass's edge) passes through unchanged,
    and an edit that changes nothing (ẑ = E(x)) returns x itself."""
    return jnp.clip(images + edited - round_trip, -1.0, 1.0)


def make_generate(unet, autoencoder, schedule, latent_shape, sampling: SamplerConfig = SamplerConfig()):
    """``generate(unet_params, ae_params, scale, labels [B, A], keys [B]) -> images [B, H, W, C]``.

    Images are in the model range [-1, 1]; ``scale`` is the latent scale factor; ``sampling``
    holds the sampler settings, and its guidance uses the all-null labels as the
    unconditional branch.
    """

    def generate(unet_params, ae_params, scale, labels, keys):
        x_T = initial_noise(keys, latent_shape)
        null = attributes.null_labels(labels.shape[0])
        z = samplers.sample(denoiser(unet, unet_params), schedule, x_T, keys, sampling, cond=labels, null_cond=null)
        return decode(autoencoder, ae_params, z, scale)

    return generate


def edit_mask(denoise, schedule, z0, source_labels, target_labels, keys, sampling: SamplerConfig):
    """DiffEdit's mask ``[B, h, w, 1]``: the channel-mean |UNet(z_t, t, target) − UNet(z_t, t, source)|
    averaged over ``MASK_DRAWS`` noisings of z0 to the grid step ``MASK_STRENGTH`` of the way up,
    divided by its maximum per image, above ``MASK_THRESHOLD`` (1: regenerate, 0: keep)."""
    grid = sampling.grid(schedule.num_steps)
    t = jnp.full((z0.shape[0],), grid[samplers.start_step_for_strength(MASK_STRENGTH, sampling.num_steps)])
    difference = 0.0
    for draw in range(MASK_DRAWS):
        noise = samplers.standard_normal(keys, sampling.num_steps + 1 + draw, z0.shape, z0.dtype)
        z_t = forward.q_sample(schedule, z0, t, noise)
        change = denoise(z_t, t, target_labels) - denoise(z_t, t, source_labels)
        difference = difference + jnp.mean(jnp.abs(change), axis=-1, keepdims=True) / MASK_DRAWS
    peak = jnp.max(difference, axis=(1, 2, 3), keepdims=True)
    return (difference > MASK_THRESHOLD * peak).astype(z0.dtype)


def make_edit(
    unet,
    autoencoder,
    schedule,
    sampling: SamplerConfig = SamplerConfig(),
    *,
    method="sdedit",
    strength=0.6,
    guide="all",
    detail=False,
):
    """``edit(unet_params, ae_params, scale, images, source_labels, target_labels, keys) -> images``.

    The image is encoded (posterior mode) to z_0, taken to the grid step of ``sampling``'s grid
    where the last round(strength · num_steps) steps remain, and denoised from there with
    ``sampling`` under the target labels:

    - ``sdedit`` (Meng et al. 2022): z_t = q_sample(z_0, t, ε), a fresh ε per image;
    - ``ddim-inversion``: z_t by deterministic DDIM inversion under the source labels
      (no guidance), then DDIM (η = 0) under the target labels, so with strength 1 and
      equal labels the image comes back up to the inversion error.
    - ``diffedit`` (Couairon et al. 2023): ``ddim-inversion`` that regenerates only where the
      model's prediction moves between the source and the target labels (``edit_mask``);
      elsewhere each step takes the inversion's latent of that level, so the rest of the
      image comes back unchanged;
    - ``counterfactual``: SDEdit's start, denoised by a UNet trained on (image, fat-only
      counterfactual) pairs (the ``counterfactual`` stage) that also sees z_0 at every step,
      under the *source* labels (what is known of the input); the target is what the
      pairs taught it, so ``target_labels`` are not used.

    Guidance's unconditional branch is the all-null labels (``guide="all"``), or the
    conditioning labels with only the density nulled (``guide="density"``): ε̃ = u + s·(c − u) then pushes
    along the density condition alone, with every other attribute held on both sides.

    Strength 0 returns decode(encode(x)); with ``detail`` every edit is returned as its change
    to the input instead (``keep_detail``), so strength 0 returns x. Images are NHWC in [-1, 1].
    """
    if method not in EDIT_METHODS:
        raise ValueError(f"unknown edit method {method!r}; expected one of {EDIT_METHODS}")
    if guide not in GUIDED_ATTRIBUTES:
        raise ValueError(f"unknown guide {guide!r}; expected one of {GUIDED_ATTRIBUTES}")
    if method in ("ddim-inversion", "diffedit") and sampling.sampler != "ddim":
        raise ValueError(f"{method} edits denoise with the ddim sampler, not {sampling.sampler!r}")
    start = None if strength == 0 else samplers.start_step_for_strength(strength, sampling.num_steps)

    def edit(unet_params, ae_params, scale, images, source_labels, target_labels, keys):
        z0 = encode_mode(autoencoder, ae_params, images, scale)
        z = (
            z0
            if start is None
            else edited_latent(unet_params, ae_params, scale, images, z0, source_labels, target_labels, keys)
        )
        out = decode(autoencoder, ae_params, z, scale)
        return keep_detail(images, out, decode(autoencoder, ae_params, z0, scale)) if detail else out

    def edited_latent(unet_params, ae_params, scale, images, z0, source_labels, target_labels, keys):
        # the counterfactual filter is trained without the finding (diffusion_step) and runs so
        labels = attributes.without(source_labels, "finding") if method == "counterfactual" else target_labels
        null = jnp.asarray(attributes.null_labels(images.shape[0]))
        if guide == "density":
            null = labels.at[:, 0].set(null[:, 0])
        if method == "counterfactual":
            denoise = source_denoiser(unet, unet_params)
            source = source_inputs(unet, autoencoder, ae_params, images, scale)
            cond, null = {"labels": labels, **source}, {"labels": null, **source}
        else:
            denoise, cond = denoiser(unet, unet_params), labels
        known = None
        if method in ("ddim-inversion", "diffedit"):
            unguided = dataclasses.replace(sampling, guidance_scale=1.0)
            z_t, path = samplers.ddim_invert(
                denoise, schedule, z0, unguided, cond=source_labels, start_step=start, return_trajectory=True
            )
            if method == "diffedit":
                mask = edit_mask(denoise, schedule, z0, source_labels, labels, keys, sampling)
                known = (mask, path[::-1][1:])  # after each step: the inversion's latent of that level
        else:
            z_t, _ = samplers.sdedit_start(schedule, z0, keys, strength, sampling)
        return samplers.sample(
            denoise, schedule, z_t, keys, sampling, cond=cond, null_cond=null, start_step=start, known=known
        )

    return edit
