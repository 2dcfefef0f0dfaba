"""Diffusion stage: the UNet learns to denoise latents of the frozen autoencoder.

    z = s · E(x) (s: latent scale factor, 1/std of the latents),  t ~ U{0..T−1},  ε ~ N(0, I),
    z_t = √ᾱ_t z + √(1 − ᾱ_t) ε  (q_sample),  L = w(t) · ‖target − UNet(z_t, t, c)‖²

with the labels c partly replaced by their null index (``drop_labels``), so that the same
network is also the unconditional and partially conditioned model that classifier-free
guidance and partial conditions (``density=D``) sample with, and an EMA of the weights
kept in the state.

Paired (the ``counterfactual`` stage): the latent z is the pair's target (the phantom's fat-only
counterfactual) and the UNet also sees the source image (``generate.source_features``: its latent
s · mode(E(x_src)) and its pixels folded onto the latent grid), concatenated to z_t, so it learns
p(z | x_src): a supervised dense-tissue filter. Its finding label is always null, as it is when
the filter runs, so that it learns to read the lesion from the source rather than from the label.
With ``counterfactual.unet.pixel_stem`` > 0 the UNet also reads the source image at its own
resolution (``models.source_stem``). With ``rank_pairs`` > 0 its batches also hold matched mass
pairs, denoised like the other rows, and the loss adds ``rank_weight`` · L_rank on their decoded
x0 predictions, and ``rank_map_weight`` · L_rank on the stem's evidence map (``lesion_ranking``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ldm_jax import attributes
from ldm_jax.diffusion.forward import q_sample, x0_eps_from_prediction
from ldm_jax.diffusion.losses import diffusion_loss
from ldm_jax.models.init import init_unet_params
from ldm_jax.models.layers import latent_blocks
from ldm_jax.sampling.generate import source_inputs
from ldm_jax.training import lesion_ranking
from ldm_jax.training.state import TrainState, all_finite, ema_decay, ema_update, guarded_update


def init_state(
    key, unet, optimizer, latent_shape, num_attributes: int, extra_channels: int = 0, image_shape=None
) -> TrainState:
    """Fresh UNet state for latents ``[B, h, w, c]`` (and ``extra_channels`` of source features, and
    source images of ``image_shape`` for a pixel stem); EMA starts equal to the weights."""
    params = init_unet_params(key, unet, latent_shape, num_attributes, extra_channels, image_shape)
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
    k_row, k_which, k_attribute = jax.random.split(key, 3)
    u = jax.random.uniform(k_row, (b, 1))
    unconditional = u < cfg.uncond_dropout
    single = (u >= cfg.uncond_dropout) & (u < cfg.uncond_dropout + cfg.single_attribute_rate)
    kept = jnp.arange(a)[None, :] == jax.random.randint(k_which, (b, 1), 0, a)
    per_attribute = jax.random.uniform(k_attribute, (b, a)) < cfg.label_dropout
    drop = unconditional | jnp.where(single, ~kept, per_attribute)
    return jnp.where(drop, jnp.asarray(num_classes, labels.dtype), labels)


def lesion_weights(masks, latent_shape, weight: float):
    """Per-latent-pixel loss weights ``[B, h, w, 1]``: ``1 + (weight − 1) · m``, with m the share of
    each latent pixel's f×f image block inside the lesion (``masks [B, H, W, 1]`` in [0, 1])."""
    share = latent_blocks(masks, latent_shape[1]).mean((3, 4))
    return 1.0 + (weight - 1.0) * share


def train_step(
    state: TrainState, batch, ae_params, scale, *, unet, autoencoder, optimizer, schedule, cfg, paired=False
):
    """One optimizer update over ``cfg.accum_steps`` micro-batches; non-finite updates are skipped.

    ``batch`` holds ``image`` ``[B, H, W, C]`` (encoded by ``autoencoder``), or ``latents`` when
    ``autoencoder`` is None (the benchmark's ``ldm64``), with ``labels`` ``[B, A]`` when the UNet
    is class-conditioned and ``context`` ``[B, L, D]`` when it cross-attends (``sd15``).
    ``paired``: ``image`` is the source and ``counterfactual`` the target (module docstring).
    With ``cfg.lesion_weight`` ≠ 1 the batch also holds the lesion ``mask`` (``lesion_weights``),
    with ``cfg.rank_pairs`` > 0 the ``pairs`` of ``lesion_ranking.pair_arrays``.
    """
    key = jax.random.fold_in(state.rng, state.step)
    k_enc, k_t, k_noise, k_drop, k_dropout = jax.random.split(key, 5)
    source = None
    if autoencoder is None:
        z = batch["latents"]
    elif paired:
        z = encode_latents(autoencoder, ae_params, batch["counterfactual"], k_enc, scale)
        source = jax.lax.stop_gradient(source_inputs(unet, autoencoder, ae_params, batch["image"], scale))
    else:
        z = encode_latents(autoencoder, ae_params, batch["image"], k_enc, scale)
    b = z.shape[0]
    t = jax.random.randint(k_t, (b,), 0, schedule.num_steps)
    noise = jax.random.normal(k_noise, z.shape, z.dtype)
    z_t = q_sample(schedule, z, t, noise)
    weights = lesion_weights(batch["mask"], z.shape, cfg.lesion_weight) if cfg.lesion_weight != 1 else None
    labels = batch.get("labels")
    if paired:  # a filter is never told the finding: it must read the lesion from the source
        labels = attributes.without(labels, "finding")
    labels = drop_labels(k_drop, labels, cfg, unet.num_classes) if unet.num_classes else None
    pairs = None
    if cfg.rank_pairs:
        pairs = _pair_rows(batch["pairs"], key, unet, autoencoder, ae_params, scale, schedule, cfg)

    def loss_fn(params, micro, pair_micro, index):
        z_t, t, labels, context, source, z, noise, weights = micro
        if pair_micro is not None:  # the pairs' rows after the batch's: [P', 2, ...] → [2P', ...]
            z_t, t, labels, source, z, noise, weights = (
                a if r is None else jax.tree.map(lambda a, r: jnp.concatenate([a, r.reshape(-1, *r.shape[2:])]), a, r)
                for a, r in zip((z_t, t, labels, source, z, noise, weights), pair_micro["rows"])
            )
        out, sown = unet.apply(
            {"params": params},
            z_t,
            t,
            labels,
            context,
            extra=None if source is None else source["source"],
            extra_pixels=None if source is None else source.get("pixels"),
            train=True,
            rngs={"dropout": jax.random.fold_in(k_dropout, index)},
            mutable=["intermediates"] if cfg.rank_map_weight else [],
        )
        loss = diffusion_loss(
            schedule,
            out,
            z,
            noise,
            t,
            target=cfg.prediction,
            weighting=cfg.weighting,
            min_snr_gamma=cfg.min_snr_gamma,
            loss_type=cfg.loss_type,
            mask=weights,
        )
        if pair_micro is None:
            return loss, {}
        n = 2 * len(pair_micro["lesion"])
        x0, _ = x0_eps_from_prediction(schedule, z_t[-n:], t[-n:], out[-n:], cfg.prediction)
        decoded = autoencoder.apply({"params": ae_params}, x0 / scale, method=autoencoder.decode)
        masks = [jnp.repeat(pair_micro[k], 2, axis=0) for k in ("lesion", "band")]
        contrast = lesion_ranking.ring_contrast(decoded, *masks).reshape(-1, 2)
        rank = lesion_ranking.ranking_loss(contrast[:, 0], contrast[:, 1], cfg.rank_temperature)
        aux = {"rank_loss": rank, "rank_gap": jnp.mean(contrast[:, 0] - contrast[:, 1])}
        loss = loss + cfg.rank_weight * rank
        if cfg.rank_map_weight:
            aux["map_rank_loss"] = lesion_ranking.map_ranking_loss(sown, *masks)
            loss = loss + cfg.rank_map_weight * aux["map_rank_loss"]
        return loss, aux

    accum = int(cfg.accum_steps)
    if b % accum:
        raise ValueError(f"batch size {b} is not divisible by accum_steps={accum}")
    # Micro-batch j takes rows j, j+accum, ... (and pairs j, j+accum, ...): every micro-batch stays
    # spread over all devices. A Python loop (unrolled), not lax.scan: XLA:CPU runs convolutions
    # inside loops ~10x slower.
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    loss, aux, grads = 0.0, {}, jax.tree.map(jnp.zeros_like, state.params["unet"])
    for j in range(accum):
        micro, pair_micro = jax.tree.map(
            lambda a: a[j::accum], ((z_t, t, labels, batch.get("context"), source, z, noise, weights), pairs)
        )
        (micro_loss, micro_aux), micro_grads = grad_fn(state.params["unet"], micro, pair_micro, j)
        loss = loss + micro_loss / accum
        aux = {k: aux.get(k, 0.0) + v / accum for k, v in micro_aux.items()}
        grads = jax.tree.map(lambda a, g: a + g / accum, grads, micro_grads)
    grads = {"unet": grads}
    grad_norm = optax.tree.norm(grads)
    finite = all_finite(loss, grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params, opt_state = guarded_update(finite, state.params, updates, opt_state, state.opt_state)
    decay = jnp.where(finite, ema_decay(state.step, cfg.ema_decay, cfg.ema_warmup), 1.0)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_update(state.ema_params, params, decay)
    )
    metrics = {"loss": loss, "grad_norm": grad_norm, "skipped": 1 - finite.astype(jnp.int32), **aux}
    return new_state, metrics


def _pair_rows(pairs, key, unet, autoencoder, ae_params, scale, schedule, cfg) -> dict:
    """The ranking term's inputs (``lesion_ranking``) from the batch's ``pairs``: ``rows``, the
    pairs' (z_t, t, labels, source features, target z, ε, loss weights), each ``[P, 2, ...]``, with
    one z_t for both images of a pair (the lesion-free target noised with one t ≥ ⌈rank_min_t · T⌉
    and one ε); and the reader's ``lesion`` and ``band`` masks ``[P, H, W, 1]``."""
    k_enc, k_t, k_noise, k_drop = jax.random.split(jax.random.fold_in(key, 1), 4)
    p = pairs["image"].shape[0]

    def flat(a):
        return a.reshape(2 * p, *a.shape[2:])

    z = encode_latents(autoencoder, ae_params, flat(pairs["counterfactual"]), k_enc, scale)
    source = jax.lax.stop_gradient(source_inputs(unet, autoencoder, ae_params, flat(pairs["image"]), scale))
    first_t = int(np.ceil(cfg.rank_min_t * schedule.num_steps))
    t = jnp.repeat(jax.random.randint(k_t, (p,), first_t, schedule.num_steps), 2)
    noise = jnp.repeat(jax.random.normal(k_noise, (p, *z.shape[1:]), z.dtype), 2, axis=0)
    labels = attributes.without(flat(pairs["labels"]), "finding")
    labels = drop_labels(k_drop, labels, cfg, unet.num_classes) if unet.num_classes else None
    masks = jnp.repeat(pairs["lesion"], 2, axis=0)
    weights = lesion_weights(masks, z.shape, cfg.lesion_weight) if cfg.lesion_weight != 1 else None
    # Both images of a pair are noised from the lesion-free target, so z_t does not carry the mass
    # (at t = T/2 it is still √ᾱ_t = 0.34 of the target) and the mass can come from the source only.
    without = jnp.repeat(z.reshape(p, 2, *z.shape[1:])[:, 1], 2, axis=0)
    rows = (q_sample(schedule, without, t, noise), t, labels, source, z, noise, weights)
    return {
        "rows": tuple(None if a is None else jax.tree.map(lambda a: a.reshape(p, 2, *a.shape[1:]), a) for a in rows),
        "lesion": pairs["lesion"],
        "band": pairs["band"],
    }


def make_train_step(unet, autoencoder, optimizer, schedule, cfg, paired=False):
    """``step(state, batch, ae_params, scale)`` with the networks, schedule and config bound."""
    check_label_dropout(cfg)
    lesion_ranking.check(cfg, paired, unet.pixel_stem)
    if not cfg.lesion_weight > 0:
        raise ValueError(f"lesion_weight={cfg.lesion_weight}: expected a positive loss weight (1: none)")

    def step(state, batch, ae_params, scale):
        return train_step(
            state,
            batch,
            ae_params,
            scale,
            unet=unet,
            autoencoder=autoencoder,
            optimizer=optimizer,
            schedule=schedule,
            cfg=cfg,
            paired=paired,
        )

    return step


def latent_scale_factor(latents: np.ndarray) -> float:
    """1 / std of a sample of latents (LDM's ``scale_factor``), so the diffusion sees unit variance."""
    std = float(np.std(np.asarray(latents, np.float64)))
    if not np.isfinite(std) or std <= 0:
        raise ValueError(f"latent standard deviation is {std}: the autoencoder's latents are degenerate")
    return 1.0 / std
