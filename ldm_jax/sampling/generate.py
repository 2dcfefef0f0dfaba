"""Latent diffusion generation and editing: each one pure function that jits into a single
program (the whole denoising loop plus the autoencoder), used by the training loop's sample
grids, ``sample.py`` and evaluation.

Randomness is per image: image i of a job gets the key ``fold_in(root, i)`` (``image_keys``),
its x_T is drawn from that key and the sampler's step noise from ``fold_in(key_i, step)``, so
an image does not depend on the batch it lands in, the batch size or the device count.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ldm_jax import attributes
from ldm_jax.diffusion import forward, samplers
from ldm_jax.diffusion.samplers import SamplerConfig
from ldm_jax.models.layers import latent_blocks

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


@dataclasses.dataclass(frozen=True)
class Edit:
    """An edit's settings, ``make_edit``'s keywords: ``method`` (an ``EDITS`` name), ``strength``
    (the fraction of the steps redone), ``guide`` (a ``GUIDED_ATTRIBUTES`` name) and ``detail``
    (returned as its change to the input, ``keep_detail``)."""

    method: str = "sdedit"
    strength: float = 0.6
    guide: str = "all"
    detail: bool = False


@dataclasses.dataclass(frozen=True)
class EditSetup:
    """What an edit method is built on: the networks, the schedule, the sampler settings, the
    strength, the guide and the grid step ``start`` it denoises from."""

    unet: Any
    autoencoder: Any
    schedule: Any
    sampling: SamplerConfig
    strength: float
    guide: str
    start: int | None  # None at strength 0 (no method runs)


@dataclasses.dataclass(frozen=True)
class EditBatch:
    """One batch under edit: weights and latent scale, images ``[B, H, W, C]``, their latents z_0,
    source and target labels ``[B, A]`` and per-image keys ``[B]``."""

    unet_params: Any
    ae_params: Any
    scale: Any
    images: Any
    z0: Any
    source_labels: Any
    target_labels: Any
    keys: Any


def guidance_null(labels, guide: str):
    """Guidance's unconditional branch for ``labels [B, A]``: the all-null labels, or with
    ``guide="density"`` the labels with only the density nulled, so ε̃ = u + s·(c − u) pushes along
    the density condition alone, every other attribute held on both sides."""
    null = jnp.asarray(attributes.null_labels(labels.shape[0]))
    if guide == "density":
        null = labels.at[:, 0].set(null[:, 0])
    return null


def _denoised(setup: EditSetup, batch: EditBatch, denoise, z_t, cond, null, known=None):
    """``samplers.sample`` of ``z_t`` from grid step ``setup.start`` down to ẑ_0."""
    return samplers.sample(
        denoise,
        setup.schedule,
        z_t,
        batch.keys,
        setup.sampling,
        cond=cond,
        null_cond=null,
        start_step=setup.start,
        known=known,
    )


def _inverted(setup: EditSetup, batch: EditBatch, denoise):
    """``(z_t, path)``: DDIM inversion of z_0 up to grid step ``setup.start`` under the source labels,
    unguided, and the latents from z_0 upwards."""
    unguided = dataclasses.replace(setup.sampling, guidance_scale=1.0)
    return samplers.ddim_invert(
        denoise,
        setup.schedule,
        batch.z0,
        unguided,
        cond=batch.source_labels,
        start_step=setup.start,
        return_trajectory=True,
    )


def sdedit_latent(setup: EditSetup, batch: EditBatch):
    """SDEdit (Meng et al. 2022): z_t = q_sample(z_0, t, ε), a fresh ε per image, denoised under the
    target labels."""
    z_t, _ = samplers.sdedit_start(setup.schedule, batch.z0, batch.keys, setup.strength, setup.sampling)
    labels = batch.target_labels
    return _denoised(
        setup, batch, denoiser(setup.unet, batch.unet_params), z_t, labels, guidance_null(labels, setup.guide)
    )


def ddim_inversion_latent(setup: EditSetup, batch: EditBatch):
    """z_t by deterministic DDIM inversion under the source labels (no guidance), then DDIM (η = 0)
    under the target labels: with strength 1 and equal labels the image comes back up to the
    inversion error."""
    denoise = denoiser(setup.unet, batch.unet_params)
    z_t, _ = _inverted(setup, batch, denoise)
    labels = batch.target_labels
    return _denoised(setup, batch, denoise, z_t, labels, guidance_null(labels, setup.guide))


def diffedit_latent(setup: EditSetup, batch: EditBatch):
    """DiffEdit (Couairon et al. 2023): ``ddim-inversion`` that regenerates only where the model's
    prediction moves between the source and the target labels (``edit_mask``); elsewhere each step
    takes the inversion's latent of that level, so the rest of the image comes back unchanged."""
    denoise = denoiser(setup.unet, batch.unet_params)
    z_t, path = _inverted(setup, batch, denoise)
    labels = batch.target_labels
    mask = edit_mask(denoise, setup.schedule, batch.z0, batch.source_labels, labels, batch.keys, setup.sampling)
    known = (mask, path[::-1][1:])  # after each step: the inversion's latent of that level
    return _denoised(setup, batch, denoise, z_t, labels, guidance_null(labels, setup.guide), known)


def counterfactual_latent(setup: EditSetup, batch: EditBatch):
    """SDEdit's start, denoised by the UNet of the ``counterfactual`` stage (trained on (image,
    fat-only counterfactual) pairs), which also sees its source (``source_inputs``) at every step,
    under the source labels without the finding (what is known of the input; it was trained so,
    ``diffusion_step``); the target is what the pairs taught it, so the target labels are not used."""
    labels = attributes.without(batch.source_labels, "finding")
    source = source_inputs(setup.unet, setup.autoencoder, batch.ae_params, batch.images, batch.scale)
    z_t, _ = samplers.sdedit_start(setup.schedule, batch.z0, batch.keys, setup.strength, setup.sampling)
    cond, null = {"labels": labels, **source}, {"labels": guidance_null(labels, setup.guide), **source}
    return _denoised(setup, batch, source_denoiser(setup.unet, batch.unet_params), z_t, cond, null)


@dataclasses.dataclass(frozen=True)
class EditMethod:
    """A registered edit method: ``latent(setup, batch)`` the edited latent ẑ_0, the ``sampler`` it
    denoises with (None: any) and the training ``stage`` whose model runs it."""

    latent: Callable
    sampler: str | None = None
    stage: str = "diffusion"


EDITS = {
    "sdedit": EditMethod(sdedit_latent),
    "ddim-inversion": EditMethod(ddim_inversion_latent, sampler="ddim"),
    "diffedit": EditMethod(diffedit_latent, sampler="ddim"),
    "counterfactual": EditMethod(counterfactual_latent, stage="counterfactual"),
}


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
    ``sampling`` by ``EDITS[method].latent``; guidance's unconditional branch is ``guidance_null``.
    Strength 0 returns decode(encode(x)); with ``detail`` every edit is returned as its change to
    the input instead (``keep_detail``), so strength 0 returns x. Images are NHWC in [-1, 1].
    """
    if method not in EDITS:
        raise ValueError(f"unknown edit method {method!r}; expected one of {tuple(EDITS)}")
    if guide not in GUIDED_ATTRIBUTES:
        raise ValueError(f"unknown guide {guide!r}; expected one of {GUIDED_ATTRIBUTES}")
    needed = EDITS[method].sampler
    if needed is not None and sampling.sampler != needed:
        raise ValueError(f"{method} edits denoise with the {needed} sampler, not {sampling.sampler!r}")
    start = None if strength == 0 else samplers.start_step_for_strength(strength, sampling.num_steps)
    setup = EditSetup(unet, autoencoder, schedule, sampling, strength, guide, start)
    latent = EDITS[method].latent

    def edit(unet_params, ae_params, scale, images, source_labels, target_labels, keys):
        z0 = encode_mode(autoencoder, ae_params, images, scale)
        batch = EditBatch(unet_params, ae_params, scale, images, z0, source_labels, target_labels, keys)
        z = z0 if start is None else latent(setup, batch)
        out = decode(autoencoder, ae_params, z, scale)
        return keep_detail(images, out, decode(autoencoder, ae_params, z0, scale)) if detail else out

    return edit


def model_edit(model, sampling: SamplerConfig, edit: Edit):
    """``make_edit`` of a loaded model (``sampling.model``: its UNet, autoencoder and schedule) with
    ``edit``'s settings."""
    return make_edit(model.unet, model.autoencoder, model.schedule, sampling, **dataclasses.asdict(edit))
