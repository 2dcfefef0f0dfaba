"""Autoencoder stage: KL autoencoder + PatchGAN, one jitted step updating both.

Generator loss (LDM, Rombach et al. 2022, Sec. 3.1 and App. G):

    L = Σ_pixels [ l1·|x − x̂| + s·(1 − SSIM) + f·|log|F x| − log|F x̂|| + p·LPIPS(x, x̂) ]
        + β_KL·KL(q(z|x) ‖ N(0, I)) + λ·w_adapt·L_G,
    w_adapt = ‖∇_{θ_last} L_rec‖ / (‖∇_{θ_last} L_G‖ + 1e-4)   (θ_last: decoder's output conv),

where L_G is the generator's adversarial loss and LPIPS (Zhang et al. 2018) is used only
when the user supplies its weights (``lpips_weights``; nothing is downloaded). Sums over pixels and latent elements are
averaged over the batch, as in LDM, so ``kl_weight = 1e-6`` means what it means there.
The discriminator is trained with the hinge (or least-squares) loss on x versus sg(x̂).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from ldm_jax import rng
from ldm_jax.models.init import init_autoencoder_params
from ldm_jax.perceptual.ssim import ms_ssim, ssim
from ldm_jax.training.state import TrainState, all_finite, guarded_update, make_optimizer, step_key

GAN_LOSSES = ("hinge", "least_squares")


def make_optimizers(cfg):
    """Separate AdamW optimizers for the autoencoder and the discriminator."""
    if cfg.gan_loss not in GAN_LOSSES:
        raise ValueError(f"unknown gan_loss {cfg.gan_loss!r}; expected one of {GAN_LOSSES}")
    disc_cfg = cfg.copy_and_resolve_references()
    with disc_cfg.unlocked():
        disc_cfg.learning_rate = cfg.disc_learning_rate
    return {"autoencoder": make_optimizer(cfg), "discriminator": make_optimizer(disc_cfg)}


def init_state(key, autoencoder, discriminator, optimizers, image_shape) -> TrainState:
    """Fresh state for images of shape ``[B, H, W, C]``."""
    init = rng.stream(key, "init")
    k_ae, k_d, k_s = (rng.stream(init, name) for name in ("autoencoder", "discriminator", "posterior"))
    x = jnp.zeros(image_shape, jnp.float32)
    params = {
        "autoencoder": init_autoencoder_params(k_ae, k_s, autoencoder, image_shape),
        "discriminator": discriminator.init(k_d, x)["params"],
    }
    opt_state = {name: optimizers[name].init(p) for name, p in params.items()}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, ema_params=None, rng=key)


def load_perceptual(cfg):
    """``(LPIPS module, variables)`` from ``cfg.lpips_weights`` ("vgg16.pth,vgg.pth" or one merged
    file), or ``(None, None)`` when it is empty."""
    if not cfg.lpips_weights:
        return None, None
    from ldm_jax.perceptual.lpips import load_lpips

    return load_lpips(*[part.strip() for part in cfg.lpips_weights.split(",")])


def _reconstruction_map(x, recon, cfg, perceptual=None):
    """Per-pixel reconstruction loss summed over pixels, per example [B]; images in [-1, 1].

    ``perceptual`` is ``(LPIPS module, variables)`` or None.
    """
    num_pixels = math.prod(x.shape[1:])
    per_example = cfg.l1_weight * jnp.sum(jnp.abs(x - recon), axis=(1, 2, 3))
    if cfg.ssim_weight:
        similarity = ms_ssim if cfg.ssim_kind == "ms_ssim" else ssim
        per_example += cfg.ssim_weight * num_pixels * (1.0 - similarity((x + 1) / 2, (recon + 1) / 2))
    if cfg.freq_weight:
        spectrum = lambda a: jnp.log1p(jnp.abs(jnp.fft.fft2(a[..., 0].astype(jnp.float32))))
        per_example += cfg.freq_weight * jnp.sum(jnp.abs(spectrum(x) - spectrum(recon)), axis=(1, 2))
    if perceptual is not None:
        from ldm_jax.perceptual.lpips import lpips_distance

        per_example += cfg.lpips_weight * num_pixels * lpips_distance(*perceptual, x, recon)
    return per_example


def _generator_adversarial(logits_fake, kind):
    if kind == "hinge":
        return -jnp.mean(logits_fake)
    return jnp.mean((logits_fake - 1.0) ** 2)


def _discriminator_loss(logits_real, logits_fake, kind):
    if kind == "hinge":
        return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))
    return 0.5 * (jnp.mean((logits_real - 1.0) ** 2) + jnp.mean(logits_fake**2))


def last_layer(ae_grads):
    """The decoder's output convolution kernel (for the adaptive GAN weight)."""
    return ae_grads["decoder"]["conv_out"]["kernel"]


def train_step(
    state: TrainState,
    batch,
    lpips_variables=None,
    *,
    autoencoder,
    discriminator,
    optimizers,
    cfg,
    gan_active: bool,
    lpips_module=None,
):
    """One update of the autoencoder (and, when ``gan_active``, of the discriminator).

    A non-finite loss or gradient leaves the state unchanged (``metrics['skipped'] = 1``).
    ``lpips_variables`` (frozen) are an argument, not a constant baked into the program.
    """
    perceptual = None if lpips_module is None else (lpips_module, lpips_variables)
    x = batch["image"]
    key = rng.stream(step_key(state), "posterior")
    ae_params, d_params = state.params["autoencoder"], state.params["discriminator"]

    def losses(p):
        recon, posterior = autoencoder.apply({"params": p}, x, rngs={"sample": key})
        rec = jnp.mean(_reconstruction_map(x, recon, cfg, perceptual))
        kl = jnp.mean(posterior.kl())
        g = (
            _generator_adversarial(discriminator.apply({"params": d_params}, recon), cfg.gan_loss)
            if gan_active
            else jnp.zeros(())
        )
        return (rec, kl, g), recon

    (rec, kl, g), vjp, recon = jax.vjp(losses, ae_params, has_aux=True)
    one, zero = jnp.ones(()), jnp.zeros(())
    (grads,) = vjp((one, jnp.asarray(cfg.kl_weight, jnp.float32), zero))
    metrics = {"rec_loss": rec / math.prod(x.shape[1:]), "kl": kl, "l1": jnp.mean(jnp.abs(x - recon))}
    new_params, new_opt = dict(state.params), dict(state.opt_state)
    checks = [rec, kl, g]
    if gan_active:
        (g_grads,) = vjp((zero, zero, one))
        weight = optax.tree.norm(last_layer(grads)) / (optax.tree.norm(last_layer(g_grads)) + 1e-4)
        weight = cfg.gan_weight * jax.lax.stop_gradient(jnp.clip(weight, 0.0, 1e4))
        grads = jax.tree.map(lambda a, b: a + weight * b, grads, g_grads)
        fake = jax.lax.stop_gradient(recon)

        def d_loss_fn(p):
            return _discriminator_loss(
                discriminator.apply({"params": p}, x), discriminator.apply({"params": p}, fake), cfg.gan_loss
            )

        d_loss, d_grads = jax.value_and_grad(d_loss_fn)(d_params)
        checks += [d_loss, optax.tree.norm(d_grads)]
        metrics.update(g_loss=g, d_loss=d_loss, gan_weight=weight)
    grad_norm = optax.tree.norm(grads)
    finite = all_finite(*checks, grad_norm)
    updates, opt = optimizers["autoencoder"].update(grads, state.opt_state["autoencoder"], ae_params)
    new_params["autoencoder"], new_opt["autoencoder"] = guarded_update(
        finite, ae_params, updates, opt, state.opt_state["autoencoder"]
    )
    if gan_active:
        updates, opt = optimizers["discriminator"].update(d_grads, state.opt_state["discriminator"], d_params)
        new_params["discriminator"], new_opt["discriminator"] = guarded_update(
            finite, d_params, updates, opt, state.opt_state["discriminator"]
        )
    new_state = state.replace(step=state.step + 1, params=new_params, opt_state=new_opt)
    metrics.update(loss=rec / math.prod(x.shape[1:]), grad_norm=grad_norm, skipped=1 - finite.astype(jnp.int32))
    return new_state, metrics


def make_train_step(autoencoder, discriminator, optimizers, cfg, lpips_module=None):
    """``step(state, batch, lpips_variables, gan_active)`` with the networks and config bound
    (jit it with static gan_active; ``lpips_variables`` is None without LPIPS)."""

    def step(state, batch, lpips_variables, gan_active):
        return train_step(
            state,
            batch,
            lpips_variables,
            autoencoder=autoencoder,
            discriminator=discriminator,
            optimizers=optimizers,
            cfg=cfg,
            gan_active=gan_active,
            lpips_module=lpips_module,
        )

    return step
