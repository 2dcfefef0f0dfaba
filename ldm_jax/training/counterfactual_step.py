"""The counterfactual stage's step: the supervised dense-tissue filter.

The latent z is the pair's target (the phantom's fat-only counterfactual) and the UNet also sees
the source image (``generate.source_inputs``: its latent s · mode(E(x_src)) and its pixels folded
onto the latent grid), concatenated to z_t, so it learns p(z | x_src). Its finding label is always
null, as it is when the filter runs, so that it learns to read the lesion from the source rather
than from the label. With ``counterfactual.unet.pixel_stem`` > 0 the UNet also reads the source
image at its own resolution (``models.source_stem``).

The loss is a sum of named terms, each with its weight from the config (``loss_weights``):

    L = L_diffusion + rank_weight · L_rank(x̂0) + rank_map_weight · L_rank(stem's evidence map)

the ranking terms (``lesion_ranking``) on the matched mass pairs that ``rank_pairs`` > 0 adds to
each batch, denoised like the other rows (``pair_rows``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import attributes, rng
from ldm_jax.data.mass_reader import ring_contrast
from ldm_jax.diffusion.forward import q_sample, x0_eps_from_prediction
from ldm_jax.sampling.generate import source_inputs
from ldm_jax.training import diffusion_step, lesion_ranking
from ldm_jax.training.state import step_key


def loss_weights(cfg) -> dict[str, float]:
    """The loss's terms and their weights: ``diffusion`` always; ``rank`` and ``map_rank`` with
    ranking pairs and a non-zero weight."""
    weights = {"diffusion": 1.0}
    if cfg.rank_pairs:
        weights.update(rank=cfg.rank_weight, map_rank=cfg.rank_map_weight)
    return {name: w for name, w in weights.items() if w}


def pair_rows(pairs, key, unet, autoencoder, ae_params, scale, schedule, cfg) -> dict:
    """The ranking terms' rows from the batch's ``pairs`` (``lesion_ranking.pair_arrays``): ``z_t``,
    ``t``, ``labels``, ``source``, ``z``, ``noise`` (and loss ``weights``), each ``[P, 2, ...]``. Both
    images of a pair get one z_t (the lesion-free target noised with one t ≥ ⌈rank_min_t · T⌉ and
    one ε) and one label pattern (the pair's labels without the finding, dropped once per pair), so
    that only the source tells them apart. Also the reader's ``lesion`` and ``band`` masks."""
    p = pairs["image"].shape[0]

    def flat(a):
        return a.reshape(2 * p, *a.shape[2:])

    def per_pair(a):
        return jnp.repeat(a, 2, axis=0)

    z = diffusion_step.encode_latents(
        autoencoder, ae_params, flat(pairs["counterfactual"]), rng.stream(key, "pair_encode"), scale
    )
    source = jax.lax.stop_gradient(source_inputs(unet, autoencoder, ae_params, flat(pairs["image"]), scale))
    first_t = int(np.ceil(cfg.rank_min_t * schedule.num_steps))
    t = per_pair(jax.random.randint(rng.stream(key, "pair_timesteps"), (p,), first_t, schedule.num_steps))
    noise = per_pair(jax.random.normal(rng.stream(key, "pair_noise"), (p, *z.shape[1:]), z.dtype))
    labels = None
    if unet.num_classes:
        labels = attributes.without(pairs["labels"][:, 0], "finding")
        labels = per_pair(diffusion_step.drop_labels(rng.stream(key, "pair_labels"), labels, cfg, unet.num_classes))
    masks = per_pair(pairs["lesion"])
    weights = diffusion_step.lesion_weights(masks, z.shape, cfg.lesion_weight)
    # Both images of a pair are noised from the lesion-free target, so z_t does not carry the mass
    # (at t = T/2 it is still √ᾱ_t = 0.34 of the target) and the mass can come from the source only.
    without = per_pair(z.reshape(p, 2, *z.shape[1:])[:, 1])
    rows = {"z_t": q_sample(schedule, without, t, noise), "t": t, "labels": labels, "source": source, "z": z}
    rows.update(noise=noise, weights=weights)
    rows = {k: jax.tree.map(lambda a: a.reshape(p, 2, *a.shape[1:]), v) for k, v in rows.items() if v is not None}
    return {"rows": rows, "lesion": pairs["lesion"], "band": pairs["band"]}


def with_pairs(rows: dict, pairs: dict) -> dict:
    """The batch's rows followed by the pairs' rows ``[P, 2, ...]`` flattened to ``[2P, ...]``."""
    return jax.tree.map(lambda a, r: jnp.concatenate([a, r.reshape(-1, *r.shape[2:])]), rows, pairs["rows"])


def ranking_terms(out, sown, rows, pairs, weights, ae_params, *, autoencoder, schedule, scale, cfg):
    """``(terms, monitors)``: the ranking terms named in ``weights``, on the last 2P rows (the
    pairs'), and the mean contrast gap ``rank_gap`` of the decoded pairs."""
    n = 2 * len(pairs["lesion"])
    masks = [jnp.repeat(pairs[k], 2, axis=0) for k in ("lesion", "band")]
    terms, monitors = {}, {}
    if "rank" in weights:
        x0, _ = x0_eps_from_prediction(schedule, rows["z_t"][-n:], rows["t"][-n:], out[-n:], cfg.prediction)
        decoded = autoencoder.apply({"params": ae_params}, x0 / scale, method=autoencoder.decode)
        contrast = ring_contrast(decoded, *masks).reshape(-1, 2)
        terms["rank"] = lesion_ranking.ranking_loss(contrast[:, 0], contrast[:, 1], cfg.rank_temperature)
        monitors["rank_gap"] = jnp.mean(contrast[:, 0] - contrast[:, 1])
    if "map_rank" in weights:
        terms["map_rank"] = lesion_ranking.map_ranking_loss(sown, *masks)
    return terms, monitors


def train_step(state, batch, ae_params, scale, *, unet, autoencoder, optimizer, schedule, cfg):
    """One update of the filter: ``batch`` holds the source ``image``, its ``counterfactual`` (the
    target) and ``labels``; with ``lesion_weight`` ≠ 1 the lesion ``mask``, with ``rank_pairs`` > 0
    the ``pairs``. Metrics: ``loss`` (the weighted sum), and ``<term>_loss`` of each ranking term."""
    key = step_key(state)
    z = diffusion_step.encode_latents(autoencoder, ae_params, batch["counterfactual"], rng.stream(key, "encode"), scale)
    diffusion_step.check_accumulation(z.shape[0], cfg.accum_steps)
    source = jax.lax.stop_gradient(source_inputs(unet, autoencoder, ae_params, batch["image"], scale))
    weights = diffusion_step.lesion_weights(batch.get("mask"), z.shape, cfg.lesion_weight)
    labels = attributes.without(batch["labels"], "finding")  # the filter must read the lesion from the source
    rows = {"rows": diffusion_step.noised_rows(key, z, labels, schedule, cfg, unet.num_classes, weights=weights)}
    rows["rows"]["source"] = source
    if cfg.rank_pairs:
        rows["pairs"] = pair_rows(batch["pairs"], key, unet, autoencoder, ae_params, scale, schedule, cfg)
    term_weights = loss_weights(cfg)
    ranking = functools.partial(ranking_terms, autoencoder=autoencoder, schedule=schedule, scale=scale, cfg=cfg)

    def loss_fn(params, micro, dropout_key):
        denoised = with_pairs(micro["rows"], micro["pairs"]) if "pairs" in micro else micro["rows"]
        out, sown = diffusion_step.predict(unet, params, denoised, dropout_key, sow="map_rank" in term_weights)
        terms, monitors = {}, {}
        if "pairs" in micro:
            terms, monitors = ranking(out, sown, denoised, micro["pairs"], term_weights, ae_params)
        terms["diffusion"] = diffusion_step.denoising_loss(out, denoised, schedule, cfg)
        loss = sum(w * terms[name] for name, w in term_weights.items())
        return loss, {**{f"{k}_loss": v for k, v in terms.items() if k != "diffusion"}, **monitors}

    loss, metrics, grads = diffusion_step.accumulated_gradients(
        loss_fn, state.params["unet"], rows, cfg.accum_steps, key
    )
    return diffusion_step.apply_update(state, grads, loss, metrics, optimizer, cfg)


def make_train_step(unet, autoencoder, optimizer, schedule, cfg):
    """``step(state, batch, ae_params, scale)`` of the filter with the networks, schedule and config bound."""
    diffusion_step.check_config(cfg, True, unet.pixel_stem)
    return functools.partial(
        train_step, unet=unet, autoencoder=autoencoder, optimizer=optimizer, schedule=schedule, cfg=cfg
    )
