import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax import labels
from ldm_jax.models import presets


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


@functools.cache
def _unet_shapes(name):
    """(param shapes, output shape) of a preset's UNet through ``jax.eval_shape`` (nothing allocated)."""
    cfg = presets.get_preset(name)
    model = presets.build_unet(cfg.unet)
    x = jax.ShapeDtypeStruct((2, cfg.latent_size, cfg.latent_size, cfg.latent_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.int32)
    ctx = jax.ShapeDtypeStruct((2, cfg.context_len, cfg.unet.context_dim), jnp.float32) if cfg.context_len else None
    params = jax.eval_shape(lambda x, t, c: model.init(jax.random.key(0), x, t, context=c), x, t, ctx)
    out = jax.eval_shape(lambda p, x, t, c: model.apply(p, x, t, context=c), params, x, t, ctx)
    return params, out


def _autoencoder_shapes(cfg):
    model = presets.build_autoencoder(cfg.autoencoder)
    x = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, cfg.image_channels), jnp.float32)
    params = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0), "sample": jax.random.key(1)}, x), x)
    post = jax.eval_shape(lambda p, x: model.apply(p, x, method=model.encode), params, x)
    return params, post


def test_unknown_preset_lists_names():
    with pytest.raises(ValueError, match="'mammo512'.*phantom_tiny.*phantom_micro.*phantom128.*mammo256.*ldm64.*sd15"):
        presets.get_preset("mammo512")
    assert presets.PRESETS == ("phantom_tiny", "phantom_micro", "phantom128", "mammo256", "ldm64", "sd15")


def test_preset_keys_and_fresh_copies():
    for name in presets.PRESETS:
        cfg = presets.get_preset(name)
        assert set(cfg) == {"image_size", "image_channels", "latent_size", "latent_channels", "context_len",
                            "autoencoder", "discriminator", "unet"}
    a = presets.get_preset("phantom_tiny")
    a.unet.model_channels = 8
    assert presets.get_preset("phantom_tiny").unet.model_channels == 32
    with pytest.raises(ValueError, match="no discriminator"):
        presets.build_discriminator(presets.get_preset("ldm64").discriminator)


@pytest.mark.parametrize("name", presets.PRESETS)
def test_unet_output_shapes(name):
    cfg = presets.get_preset(name)
    _, out = _unet_shapes(name)
    assert out.shape == (2, cfg.latent_size, cfg.latent_size, cfg.latent_channels) and out.dtype == jnp.float32


@pytest.mark.parametrize("name", ["phantom_tiny", "mammo256", "sd15"])
def test_autoencoder_matches_latent_shape(name):
    cfg = presets.get_preset(name)
    _, post = _autoencoder_shapes(cfg)
    assert post.mean.shape == (1, cfg.latent_size, cfg.latent_size, cfg.latent_channels)
    if cfg.discriminator is not None:
        x = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, cfg.image_channels), jnp.float32)
        disc = presets.build_discriminator(cfg.discriminator)
        logits = jax.eval_shape(lambda x: disc.apply(disc.init(jax.random.key(0), x), x), x)
        assert logits.shape[-1] == 1 and logits.dtype == jnp.float32


def test_ldm64_parameter_count():
    params, _ = _unet_shapes("ldm64")
    n = _count(params)
    assert abs(n - 274.1e6) / 274.1e6 < 0.01, n
    # Layer for layer the openaimodel/UNet2DModel shape; the class table has a 17th (null) row of 4·224.
    assert n == 274_075_428


def test_sd15_parameter_counts():
    cfg = presets.get_preset("sd15")
    params, _ = _unet_shapes("sd15")
    n = _count(params)
    assert abs(n - 859.5e6) / 859.5e6 < 0.005, n
    assert n == 859_520_964  # diffusers UNet2DConditionModel of Stable Diffusion 1.5, exactly
    assert params["params"]["mid_attn"]["block_0"]["attn2"]["to_k"]["kernel"].shape == (768, 1280)
    ae_params, _ = _autoencoder_shapes(cfg)
    assert _count(ae_params) == 83_653_863  # diffusers AutoencoderKL of Stable Diffusion, exactly


def test_phantom_tiny_size_and_labels():
    cfg = presets.get_preset("phantom_tiny")
    assert tuple(cfg.unet.num_classes) == labels.NUM_CLASSES
    assert (cfg.image_size, cfg.latent_size, cfg.latent_channels) == (64, 16, 4)
    assert presets.build_autoencoder(cfg.autoencoder).downsample_factor == 4
    params, _ = _unet_shapes("phantom_tiny")
    assert 0.5e6 < _count(params) < 3e6, _count(params)


def test_phantom_tiny_jitted_forward_runs_on_cpu():
    cfg = presets.get_preset("phantom_tiny")
    model = presets.build_unet(cfg.unet)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 4))
    t = jnp.array([0, 10, 500, 999])
    y = labels.null_labels(4)
    y[0] = [2, 1, 0, 1]
    params = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x, t)
    out = jax.jit(model.apply)(params, x, t, jnp.asarray(y))
    assert out.shape == (4, 16, 16, 4) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)  # zero-initialised output layer
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
