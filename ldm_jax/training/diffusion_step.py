"""Diffusion stage: the UNet learns to denoise latents of the frozen autoencoder.

    z = s · E(x) (s: latent scale factor, 1/std of the latents),  t ~ U{0..T−1},  ε ~ N(0, I),
    z_t = √ᾱ_t z + √(1 − ᾱ_t) ε  (q_sample),  L = w(t) · ‖target − UNet(z_t, t, c)‖²

with the labels c partly replaced by their null index (``drop_labels``), so that the same
network is also the unconditional and partially conditioned model that classifier-free
guidance and partial conditions (``density=D``) sample with, and an EMA of the weights
kept in the state.

The paired ``counterfactual`` stage (``counterfactual_step``) builds on the pieces here: rows,
prediction, loss, gradient accumulation and the update.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ldm_jax import attributes, rng
from ldm_jax.diffusion.forward import q_sample
from ldm_jax.diffusion.losses import diffusion_loss
from ldm_jax.models.init import init_unet_params
from ldm_jax.models.layers import latent_blocks
from ldm_jax.training import lesion_ranking
from ldm_jax.training.state import TrainState, all_finite, ema_decay, ema_update, guarded_update, step_key


def init_state(
    key, unet, optimizer, latent_shape, num_attributes: int, extra_channels: int = 0, image_shape=None
) -> TrainState:
    """Fresh UNet state for latents ``[B, h, w, c]`` (and ``extra_channels`` of source features, and
    source images of ``image_shape`` for a pixel stem); EMA starts equal to the weights."""
    params = init_unet_params(rng.stream(key, "init"), unet, latent_shape, num_attributes, extra_channels, image_shape)
    return state_around(params, optimizer, key)


def state_around(unet_params, optimizer, key) -> TrainState:
    """A step-0 state around ``unet_params``: fresh optimizer state, EMA equal to the weights."""
    params = {"unet": unet_params}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
        rng=key,
    )


def encode_latents(autoencoder, ae_params, images, key, scale):
    """``s · z`` with z drawn from the encoder's posterior q(z | x)."""
    posterior = autoencoder.apply({"params": ae_params}, images, method=autoencoder.encode)
    return jax.lax.stop_gradient(posterior.sample(key) * scale)


def condition_pattern_rates(cfg) -> dict[str, float]:
    """The rate at which ``drop_labels`` trains each condition pattern sampling uses:
    ``"unconditional"`` (all null), ``"single"`` (one given attribute, each of them; e.g.
    ``density=D``) and ``"full"`` (every attribute given)."""
    p_u, p_s, p = cfg.uncond_dropout, cfg.single_attribute_rate, cfg.label_dropout
    a = len(attributes.ATTRIBUTES)
    rest = 1.0 - p_u - p_s
    return {
        "unconditional": p_u + rest * p**a,
        "single": p_s / a + rest * (1 - p) * p ** (a - 1),
        "full": rest * (1 - p) ** a,
    }


def check_label_dropout(cfg) -> None:
    """Refuse rates that are not probabilities, before anything is compiled."""
    rates = {
        "uncond_dropout": cfg.uncond_dropout,
        "single_attribute_rate": cfg.single_attribute_rate,
        "label_dropout": cfg.label_dropout,
    }
    for name, value in rates.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"diffusion.{name}={value}: expected a probability in [0, 1]")
    if cfg.uncond_dropout + cfg.single_attribute_rate > 1.0:
        raise ValueError(
            f"diffusion.uncond_dropout + diffusion.single_attribute_rate = "
            f"{cfg.uncond_dropout + cfg.single_attribute_rate:g} > 1: they are rates of disjoint rows"
        )


def drop_labels(key, labels, cfg, num_classes=attributes.NUM_CLASSES):
    """Labels ``[B, A]`` with attributes replaced by their null index for classifier-free guidance
    (Ho & Salimans 2022 drop the whole condition). Each row independently:

    - with probability ``cfg.uncond_dropout``: every attribute null (the unconditional branch);
    - with probability ``cfg.single_attribute_rate``: one attribute, chosen uniformly, kept and
      the others null (single-attribute conditions such as ``density=D``);
    - otherwise each attribute null with probability ``cfg.label_dropout`` (other partial rows).

    ``condition_pattern_rates`` gives the resulting rate of each pattern. ``num_classes[a]`` is
    attribute a's null index.
    """
    b, a = labels.shape
    u = jax.random.uniform(rng.stream(key, "label_rows"), (b, 1))
    unconditional = u < cfg.uncond_dropout
    single = (u >= cfg.uncond_dropout) & (u < cfg.uncond_dropout + cfg.single_attribute_rate)
    kept = jnp.arange(a)[None, :] == jax.random.randint(rng.stream(key, "label_kept"), (b, 1), 0, a)
    per_attribute = jax.random.uniform(rng.stream(key, "label_attributes"), (b, a)) < cfg.label_dropout
    drop = unconditional | jnp.where(single, ~kept, per_attribute)
    return jnp.where(drop, jnp.asarray(num_classes, labels.dtype), labels)


def lesion_weights(masks, latent_shape, weight: float):
    """Per-latent-pixel loss weights ``[B, h, w, 1]``: ``1 + (weight − 1) · m``, with m the share of
    each latent pixel's f×f image block inside the lesion (``masks [B, H, W, 1]`` in [0, 1]); None
    (the plain loss, no masks read) at weight 1."""
    if weight == 1:
        return None
    share = latent_blocks(masks, latent_shape[1]).mean((3, 4))
    return 1.0 + (weight - 1.0) * share


def noised_rows(key, z, labels, schedule, cfg, num_classes, **extra) -> dict:
    """The denoising rows of latents ``z [B, h, w, c]``: ``t`` ~ U{0..T−1}, ``noise`` ε ~ N(0, I),
    ``z_t`` = q_sample(z, t, ε), ``labels`` through ``drop_labels`` (None without classes), and the
    ``extra`` row arrays (loss ``weights``, ``context``, ``source``); None entries are left out."""
    t = jax.random.randint(rng.stream(key, "timesteps"), (z.shape[0],), 0, schedule.num_steps)
    noise = jax.random.normal(rng.stream(key, "noise"), z.shape, z.dtype)
    labels = drop_labels(rng.stream(key, "labels"), labels, cfg, num_classes) if num_classes else None
    rows = {"z_t": q_sample(schedule, z, t, noise), "t": t, "z": z, "noise": noise, "labels": labels, **extra}
    return {k: v for k, v in rows.items() if v is not None}


def predict(unet, params, rows, dropout_key, sow: bool = False):
    """``(UNet output, sown intermediates)`` on ``rows`` in training mode (``source`` rows: the
    paired stage's source features and pixels)."""
    source = rows.get("source", {})
    return unet.apply(
        {"params": params},
        rows["z_t"],
        rows["t"],
        rows.get("labels"),
        rows.get("context"),
        extra=source.get("source"),
        extra_pixels=source.get("pixels"),
        train=True,
        rngs={"dropout": dropout_key},
        mutable=["intermediates"] if sow else [],
    )


def denoising_loss(out, rows, schedule, cfg):
    """w(t) · ‖target − out‖² of the rows (``diffusion_loss``), weighted by their loss ``weights``."""
    return diffusion_loss(
        schedule,
        out,
        rows["z"],
        rows["noise"],
        rows["t"],
        target=cfg.prediction,
        weighting=cfg.weighting,
        min_snr_gamma=cfg.min_snr_gamma,
        loss_type=cfg.loss_type,
        mask=rows.get("weights"),
    )


def accumulated_gradients(loss_fn, params, rows, accum: int, key):
    """Mean loss, mean metrics and mean gradients of ``loss_fn(params, micro, dropout_key) → (loss,
    metrics)`` over ``accum`` micro-batches of the ``rows`` pytree: micro-batch j takes rows j,
    j + accum, … of every leaf, so that each stays spread over all devices, and the ``dropout`` key j.
    A Python loop (unrolled), not lax.scan: XLA:CPU runs convolutions inside loops ~10x slower."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    loss, metrics, grads = 0.0, {}, jax.tree.map(jnp.zeros_like, params)
    for j in range(accum):
        micro = jax.tree.map(lambda a: a[j::accum], rows)
        (micro_loss, micro_metrics), micro_grads = grad_fn(params, micro, rng.stream(key, "dropout", j))
        loss = loss + micro_loss / accum
        metrics = {k: metrics.get(k, 0.0) + v / accum for k, v in micro_metrics.items()}
        grads = jax.tree.map(lambda a, g: a + g / accum, grads, micro_grads)
    return loss, metrics, grads


def check_accumulation(batch_size: int, accum: int) -> None:
    if batch_size % accum:
        raise ValueError(f"batch size {batch_size} is not divisible by accum_steps={accum}")


def apply_update(state: TrainState, grads, loss, metrics, optimizer, cfg):
    """The optimizer update of the UNet by ``grads`` and the EMA; a non-finite loss or gradient
    leaves the state unchanged (``metrics['skipped']`` = 1)."""
    grads = {"unet": grads}
    grad_norm = optax.tree.norm(grads)
    finite = all_finite(loss, grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params, opt_state = guarded_update(finite, state.params, updates, opt_state, state.opt_state)
    decay = jnp.where(finite, ema_decay(state.step, cfg.ema_decay, cfg.ema_warmup), 1.0)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_update(state.ema_params, params, decay)
    )
    return new_state, {"loss": loss, "grad_norm": grad_norm, "skipped": 1 - finite.astype(jnp.int32), **metrics}


def train_step(state: TrainState, batch, ae_params, scale, *, unet, autoencoder, optimizer, schedule, cfg):
    """One optimizer update over ``cfg.accum_steps`` micro-batches; non-finite updates are skipped.

    ``batch`` holds ``image`` ``[B, H, W, C]`` (encoded by ``autoencoder``), or ``latents`` when
    ``autoencoder`` is None (the benchmark's ``ldm64``), with ``labels`` ``[B, A]`` when the UNet
    is class-conditioned and ``context`` ``[B, L, D]`` when it cross-attends (``sd15``); with
    ``cfg.lesion_weight`` ≠ 1 also the lesion ``mask`` (``lesion_weights``).
    """
    key = step_key(state)
    if autoencoder is None:
        z = batch["latents"]
    else:
        z = encode_latents(autoencoder, ae_params, batch["image"], rng.stream(key, "encode"), scale)
    check_accumulation(z.shape[0], cfg.accum_steps)
    weights = lesion_weights(batch.get("mask"), z.shape, cfg.lesion_weight)
    rows = noised_rows(
        key, z, batch.get("labels"), schedule, cfg, unet.num_classes, weights=weights, context=batch.get("context")
    )

    def loss_fn(params, micro, dropout_key):
        out, _ = predict(unet, params, micro, dropout_key)
        return denoising_loss(out, micro, schedule, cfg), {}

    loss, metrics, grads = accumulated_gradients(loss_fn, state.params["unet"], rows, cfg.accum_steps, key)
    return apply_update(state, grads, loss, metrics, optimizer, cfg)


def check_config(cfg, paired: bool, pixel_stem: int) -> None:
    """Refuse a UNet stage's settings that cannot train, before anything is compiled."""
    check_label_dropout(cfg)
    if paired:
        lesion_ranking.check(cfg, pixel_stem)
    if not cfg.lesion_weight > 0:
        raise ValueError(f"lesion_weight={cfg.lesion_weight}: expected a positive loss weight (1: none)")


def make_train_step(unet, autoencoder, optimizer, schedule, cfg):
    """``step(state, batch, ae_params, scale)`` with the networks, schedule and config bound."""
    check_config(cfg, False, 0)  # the pixel stem matters to the paired stage only
    return functools.partial(
        train_step, unet=unet, autoencoder=autoencoder, optimizer=optimizer, schedule=schedule, cfg=cfg
    )


def latent_scale_factor(latents: np.ndarray) -> float:
    """1 / std of a sample of latents (LDM's ``scale_factor``), so the diffusion sees unit variance."""
    std = float(np.std(np.asarray(latents, np.float64)))
    if not np.isfinite(std) or std <= 0:
        raise ValueError(f"latent standard deviation is {std}: the autoencoder's latents are degenerate")
    return 1.0 / std
