import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax import attributes
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
        assert set(cfg) == {
            "image_size",
            "image_channels",
            "latent_size",
            "latent_channels",
            "context_len",
            "autoencoder",
            "discriminator",
            "unet",
        }
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
    assert tuple(cfg.unet.num_classes) == attributes.NUM_CLASSES
    assert (cfg.image_size, cfg.latent_size, cfg.latent_channels) == (64, 16, 4)
    assert presets.build_autoencoder(cfg.autoencoder).downsample_factor == 4
    params, _ = _unet_shapes("phantom_tiny")
    assert 0.5e6 < _count(params) < 3e6, _count(params)


def test_phantom_tiny_jitted_forward_runs_on_cpu():
    cfg = presets.get_preset("phantom_tiny")
    model = presets.build_unet(cfg.unet)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 4))
    t = jnp.array([0, 10, 500, 999])
    y = attributes.null_labels(4)
    y[0] = [2, 1, 0, 1]
    params = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x, t)
    out = jax.jit(model.apply)(params, x, t, jnp.asarray(y))
    assert out.shape == (4, 16, 16, 4) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)  # zero-initialised output layer
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def _conv_f64(x, kernel, bias):
    """A stride-1 convolution padded by ``kernel_size // 2``, in float64 (numpy)."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    size, (h, w) = kernel.shape[0], x.shape[1:3]
    pad = np.pad(x, ((0, 0), (size // 2,) * 2, (size // 2,) * 2, (0, 0)))
    return sum(pad[:, i : i + h, j : j + w] @ kernel[i, j] for i in range(size) for j in range(size)) + np.asarray(bias)


@pytest.mark.parametrize("network", ["unet", "encode", "decode"])
def test_bfloat16_outputs_are_float32_convolutions_of_the_features(network):
    """In bf16 the features reaching each output convolution are bf16-computed, but the
    convolution and the output are float32: they equal a float64 convolution of those same
    features within float32 error, far below bf16's 2⁻⁹ relative rounding."""
    cfg = presets.get_preset("phantom_micro")
    key, latents = jax.random.key(0), jax.random.normal(jax.random.key(1), (2, 16, 16, 4))
    if network == "unet":
        model = presets.build_unet(cfg.unet, dtype=jnp.bfloat16)
        init_args = args = (latents, jnp.array([10, 900]))
        kwargs, layers = {}, [("conv_out",)]
    else:
        model = presets.build_autoencoder(cfg.autoencoder, dtype=jnp.bfloat16)
        init_args = (jax.random.uniform(key, (2, 64, 64, 1), minval=-1.0, maxval=1.0),)
        args = init_args if network == "encode" else (latents,)
        kwargs = {"method": network}
        layers = [("encoder", "conv_out"), ("quant_conv",)] if network == "encode" else [("decoder", "conv_out")]
    shapes = jax.eval_shape(model.init, {"params": key, "sample": key}, *init_args)
    rng = np.random.default_rng(0)  # random weights everywhere (the UNet's conv_out starts at zero)
    params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)

    def apply(params, *args):  # -> (output, [(input, output) of each layer in ``layers``])
        calls = []

        def record(next_fun, call_args, call_kwargs, context):
            out = next_fun(*call_args, **call_kwargs)
            if context.module.path in layers and context.method_name == "__call__":
                calls.append((call_args[0], out))
            return out

        with nn.intercept_methods(record):
            return model.apply(params, *args, **kwargs), calls

    # without excess precision, so that XLA rounds the features the conv reads to bf16 as it does those returned
    out, calls = jax.jit(apply).lower(params, *args).compile({"xla_allow_excess_precision": False})(params, *args)
    assert len(calls) == len(layers)
    for path, (x, y) in zip(layers, calls):
        p = functools.reduce(lambda tree, name: tree[name], path, params["params"])
        assert y.dtype == jnp.float32
        want = _conv_f64(x, p["kernel"], p["bias"])
        np.testing.assert_allclose(np.asarray(y), want, rtol=0, atol=1e-5 * np.abs(want).max(), err_msg=str(path))
    moments = jnp.concatenate([out.mean, out.logvar], -1) if network == "encode" else out
    np.testing.assert_array_equal(np.asarray(moments), np.asarray(calls[-1][1]))  # nothing rounds after it
