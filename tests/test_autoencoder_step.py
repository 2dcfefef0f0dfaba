"""The autoencoder stage's loss terms against direct computations (KL, L1, adaptive GAN weight,
the generator's adversarial loss)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ldm_jax import rng
from ldm_jax.models.autoencoder import LAST_LAYER_PATH, AutoencoderKL, DiagonalGaussian
from ldm_jax.models.discriminator import PatchDiscriminator
from ldm_jax.training import autoencoder_step
from ldm_jax.training.config import default_config
from ldm_jax.training.state import step_key


def _np_kl(mean, logvar):
    """KL(N(μ, σ²) ‖ N(0, 1)) = ½ (μ² + σ² − 1 − log σ²), summed per example (closed form)."""
    mean, logvar = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
    return 0.5 * (mean**2 + np.exp(logvar) - 1.0 - logvar).reshape(len(mean), -1).sum(axis=1)


def test_kl_matches_the_closed_form_diagonal_gaussian_kl():
    rng = np.random.default_rng(11)
    mean = rng.normal(0.0, 1.5, (3, 4, 5, 3)).astype(np.float32)
    logvar = rng.normal(0.0, 1.0, (3, 4, 5, 3)).astype(np.float32)
    kl = np.asarray(DiagonalGaussian(jnp.asarray(mean), jnp.asarray(logvar)).kl())
    np.testing.assert_allclose(kl, _np_kl(mean, logvar), rtol=1e-5)
    # Variance-only posterior: μ = 0, log σ² = −2 per element → ½ (e⁻² − 1 + 2) per element.
    only_var = DiagonalGaussian(jnp.zeros((1, 2, 2, 3)), jnp.full((1, 2, 2, 3), -2.0))
    np.testing.assert_allclose(only_var.kl(), [12 * 0.5 * (np.exp(-2.0) + 1.0)], rtol=1e-6)


def _cfg(**overrides):
    cfg = default_config().autoencoder
    with cfg.unlocked():
        cfg.update(
            dict(ssim_weight=0.0, freq_weight=0.0, l1_weight=1.0, gan_weight=0.5, kl_weight=1e-2, gan_loss="hinge")
        )
        cfg.update(overrides)
    return cfg


def test_l1_reconstruction_term_is_the_per_example_pixel_sum():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
    recon = rng.uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
    got = autoencoder_step._reconstruction_map(jnp.asarray(x), jnp.asarray(recon), _cfg(l1_weight=2.5))
    np.testing.assert_allclose(got, 2.5 * np.abs(x - recon).sum(axis=(1, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize("kind", autoencoder_step.GAN_LOSSES)
def test_generator_loss_falls_when_the_discriminator_is_fooled(kind):
    logits = np.linspace(-2.0, 0.5, 12, dtype=np.float32).reshape(2, 2, 3, 1)
    values = [
        float(autoencoder_step._generator_adversarial(jnp.asarray(logits + shift), kind)) for shift in (0.0, 0.25, 0.5)
    ]  # fakes judged ever more real
    assert values[0] > values[1] > values[2], values
    expected = -logits.mean() if kind == "hinge" else ((logits - 1.0) ** 2).mean()
    np.testing.assert_allclose(values[0], expected, rtol=1e-6)
    # The discriminator's loss: real logits high, fake logits low is the low-loss side.
    real, fake = jnp.asarray(logits + 1.0), jnp.asarray(logits)
    if kind == "hinge":
        d_expected = 0.5 * (np.maximum(0, 1 - (logits + 1)).mean() + np.maximum(0, 1 + logits).mean())
    else:
        d_expected = 0.5 * (((logits + 1) - 1) ** 2).mean() + 0.5 * (logits**2).mean()
    np.testing.assert_allclose(autoencoder_step._discriminator_loss(real, fake, kind), d_expected, rtol=1e-6)


def test_train_step_adaptive_gan_weight_and_generator_loss_match_direct_gradients():
    """w = gan_weight · clip(‖∇_last L_rec‖ / (‖∇_last L_G‖ + 1e-4), 0, 1e4), with both gradients
    taken here by ``jax.grad`` of losses written out directly (not the step's vjp)."""
    cfg = _cfg()
    ae = AutoencoderKL(ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=3, attn_mid=False, norm_groups=4)
    disc = PatchDiscriminator(ch=8, num_layers=2, norm_groups=4)
    optimizers = autoencoder_step.make_optimizers(cfg)
    shape = (2, 24, 24, 1)
    state = jax.jit(lambda k: autoencoder_step.init_state(k, ae, disc, optimizers, shape))(jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, shape).astype(np.float32))
    step = jax.jit(autoencoder_step.make_train_step(ae, disc, optimizers, cfg), static_argnums=3)
    _, metrics = step(state, {"image": x}, None, True)

    ae_params, d_params = state.params["autoencoder"], state.params["discriminator"]
    key = rng.stream(step_key(state), "posterior")

    def with_kernel(kernel):
        p = jax.tree.map(lambda a: a, ae_params)
        p[LAST_LAYER_PATH[0]][LAST_LAYER_PATH[1]][LAST_LAYER_PATH[2]] = kernel
        return ae.apply({"params": p}, x, rngs={"sample": key})[0]

    def rec_loss(kernel):
        return jnp.mean(jnp.sum(jnp.abs(x - with_kernel(kernel)), axis=(1, 2, 3)))

    def g_loss(kernel):
        return -jnp.mean(disc.apply({"params": d_params}, with_kernel(kernel)))

    kernel = ae_params["decoder"]["conv_out"]["kernel"]
    n_rec = float(optax.tree.norm(jax.jit(jax.grad(rec_loss))(kernel)))
    n_g = float(optax.tree.norm(jax.jit(jax.grad(g_loss))(kernel)))
    assert abs(np.log(n_rec / n_g)) > 1.0, (n_rec, n_g)  # far from 1, so an inverted ratio shows
    expected = 0.5 * np.clip(n_rec / (n_g + 1e-4), 0.0, 1e4)
    np.testing.assert_allclose(float(metrics["gan_weight"]), expected, rtol=1e-3)
    np.testing.assert_allclose(float(metrics["g_loss"]), float(g_loss(kernel)), rtol=1e-4, atol=1e-6)
    posterior = jax.jit(lambda p: ae.apply({"params": p}, x, method=ae.encode))(ae_params)
    kl = _np_kl(posterior.mean, posterior.logvar)
    np.testing.assert_allclose(float(metrics["kl"]), kl.mean(), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["rec_loss"]), float(rec_loss(kernel)) / (24 * 24), rtol=1e-5)
