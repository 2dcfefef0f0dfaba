import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.models.autoencoder import LAST_LAYER_PATH, AutoencoderKL, DiagonalGaussian
from ldm_jax.models.discriminator import PatchDiscriminator

TINY = dict(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=3, attn_mid=True, norm_groups=4)
RNGS = {"params": jax.random.key(0, impl="rbg"), "sample": jax.random.key(1, impl="rbg")}


def _random_params(model, *args, **kwargs):
    """Params of ``model.init``'s shapes filled with N(0, 0.1²) noise (numpy RNG: nothing to compile)."""
    shapes = jax.eval_shape(model.init, RNGS, *args, **kwargs)
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)


def test_kl_of_standard_normal_is_zero_and_closed_form():
    zero = DiagonalGaussian(jnp.zeros((2, 4, 4, 3)), jnp.zeros((2, 4, 4, 3)))
    np.testing.assert_array_equal(zero.kl(), [0.0, 0.0])
    # mean 1, var e: ½(1 + e − 1 − 1) per element, 48 elements per example.
    post = DiagonalGaussian(jnp.ones((2, 4, 4, 3)), jnp.ones((2, 4, 4, 3)))
    np.testing.assert_allclose(post.kl(), [24 * (np.e - 1)] * 2, rtol=1e-6)


def test_sample_and_mode():
    post = DiagonalGaussian(jnp.full((4000, 1, 1, 2), 3.0), jnp.full((4000, 1, 1, 2), np.log(4.0)))
    np.testing.assert_array_equal(post.mode(), post.mean)
    z = post.sample(jax.random.key(0))
    np.testing.assert_array_equal(z, post.sample(jax.random.key(0)))
    assert abs(float(z.mean()) - 3.0) < 0.1 and abs(float(z.std()) - 2.0) < 0.1


@pytest.mark.parametrize("ch_mult,f", [((1, 1, 1), 4), ((1, 1, 1, 1), 8), ((1, 1, 1, 1, 1), 16)])
def test_encode_decode_shapes(ch_mult, f):
    model = AutoencoderKL(**{**TINY, "ch_mult": ch_mult, "in_channels": 3, "out_channels": 2})
    assert model.downsample_factor == f
    x = jax.ShapeDtypeStruct((2, 32, 48, 3), jnp.float32)
    params = jax.eval_shape(model.init, RNGS, x)
    post = jax.eval_shape(lambda p, x: model.apply(p, x, method=model.encode), params, x)
    assert post.mean.shape == post.logvar.shape == (2, 32 // f, 48 // f, 3)
    out = jax.eval_shape(lambda p, z: model.apply(p, z, method=model.decode), params, post.mean)
    assert out.shape == (2, 32, 48, 2) and out.dtype == jnp.float32


def test_forward_mode_is_deterministic_and_sampling_uses_rng():
    model = AutoencoderKL(**TINY)
    x = jax.random.uniform(jax.random.key(2), (2, 16, 16, 1), minval=-1, maxval=1)
    params = _random_params(model, x)
    call = jax.jit(model.apply, static_argnames="sample_posterior")
    rec_a, post = call(params, x, sample_posterior=False)
    rec_b, _ = call(params, x, sample_posterior=False)
    assert rec_a.shape == (2, 16, 16, 1) and rec_a.dtype == jnp.float32 and post.mean.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(rec_a, rec_b)
    decode = jax.jit(lambda p, z: model.apply(p, z, method=model.decode))
    np.testing.assert_allclose(decode(params, post.mode()), rec_a, atol=1e-6)
    s1, _ = call(params, x, rngs={"sample": jax.random.key(3)})
    s2, _ = call(params, x, rngs={"sample": jax.random.key(4)})
    assert float(jnp.abs(s1 - s2).mean()) > 1e-4
    assert post.kl().shape == (2,) and bool((post.kl() > 0).all())


def test_real_init_and_last_layer_path():
    model = AutoencoderKL(**{**TINY, "ch_mult": (1, 1)})
    x = jnp.linspace(-1, 1, 2 * 8 * 8).reshape(2, 8, 8, 1)
    params = jax.jit(model.init)(RNGS, x)
    kernel = params["params"]
    for key in LAST_LAYER_PATH:
        kernel = kernel[key]
    assert kernel.shape == (3, 3, 8, 1) and float(jnp.abs(kernel).sum()) > 0
    assert set(params) == {"params"}
    rec, post = jax.jit(model.apply)(params, x, rngs={"sample": jax.random.key(5)})
    assert bool(jnp.isfinite(rec).all()) and bool(jnp.isfinite(post.kl()).all())


def test_bfloat16_policy():
    x = jax.random.uniform(jax.random.key(2), (2, 16, 16, 1))
    params = _random_params(AutoencoderKL(**TINY), x)
    f32 = jax.jit(lambda p, x: AutoencoderKL(**TINY).apply(p, x, sample_posterior=False))(params, x)
    bf16 = jax.jit(lambda p, x: AutoencoderKL(**TINY, dtype=jnp.bfloat16).apply(p, x, sample_posterior=False))(
        params, x
    )
    assert bf16[0].dtype == bf16[1].mean.dtype == jnp.float32
    err = float(jnp.abs(bf16[0] - f32[0]).max() / jnp.abs(f32[0]).max())
    assert 0 < err < 3e-2, err  # bf16 differs, but only at bf16 precision


def test_bad_inputs_rejected():
    model = AutoencoderKL(**TINY)
    params = _random_params(model, jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match=r"divisible by 4, got shape \(1, 18, 16, 1\)"):
        model.apply(params, jnp.zeros((1, 18, 16, 1)), method=model.encode)
    with pytest.raises(ValueError, match=r"\[B, H, W, 1\]"):
        model.apply(params, jnp.zeros((1, 16, 16, 3)), method=model.encode)
    with pytest.raises(ValueError, match=r"z must be \[B, h, w, 3\]"):
        model.apply(params, jnp.zeros((1, 4, 4, 2)), method=model.decode)


def test_patch_discriminator():
    model = PatchDiscriminator(ch=8, num_layers=3, norm_groups=4)
    x = jax.random.normal(jax.random.key(6), (2, 64, 64, 1))
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    assert set(shapes) == {"params"}  # no batch statistics: GroupNorm, not BatchNorm
    assert shapes["params"]["conv_3"]["kernel"].shape == (4, 4, 32, 64)  # ch·min(2³, 8), stride 1
    params = _random_params(model, x)
    logits = jax.jit(model.apply)(params, x)
    assert logits.shape == (2, 6, 6, 1) and logits.dtype == jnp.float32  # 64 → 32 → 16 → 8 → 7 → 6
    # Each example's logits depend only on that example.
    np.testing.assert_allclose(jax.jit(model.apply)(params, x[:1]), logits[:1], atol=1e-5)
    bf16 = jax.jit(PatchDiscriminator(ch=8, num_layers=3, norm_groups=4, dtype=jnp.bfloat16).apply)(params, x)
    assert bf16.dtype == jnp.float32
    with pytest.raises(ValueError, match="H, W >= 24"):
        model.apply(params, jnp.zeros((1, 16, 16, 1)))
