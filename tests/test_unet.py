import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.models import layers
from ldm_jax.attributes import null_labels
from ldm_jax.models.unet import UNet, check_labels

TINY = dict(
    out_channels=2,
    model_channels=16,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(2,),
    num_head_channels=8,
    num_classes=(3, 2),
    norm_groups=4,
    use_scale_shift_norm=True,
)
B, S = 2, 8


def _inputs(extra_channels=0):
    kx, kt = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (B, S, S, 2))
    extra = jnp.ones((B, S, S, extra_channels)) if extra_channels else None
    return x, jnp.array([3, 700]), extra


def _apply(model):
    """Jitted apply, so the persistent compilation cache serves reruns."""
    return jax.jit(model.apply, static_argnames=("train", "capture_intermediates"))


def _random_params(model, *args, **kwargs):
    """Params of ``model.init``'s shapes filled with N(0, 0.1²) noise (numpy RNG: nothing to compile).

    Unlike the real init, no layer is zero, so every input reaches the output.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), *args, **kwargs)
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)


@pytest.fixture(scope="module")
def tiny():
    model = UNet(**TINY)
    x, t, _ = _inputs()
    return model, _random_params(model, x, t)


def _reference_attention(q, k, v):
    logits = jnp.einsum("blnh,bsnh->bnls", q, k) / np.sqrt(q.shape[-1])
    return jnp.einsum("bnls,bsnh->blnh", jax.nn.softmax(logits, axis=-1), v)


@pytest.mark.parametrize("impl", [None, "xla"])
def test_attention_matches_einsum_reference(impl):
    kq, kk, kv = jax.random.split(jax.random.key(3), 3)
    q = jax.random.normal(kq, (2, 5, 3, 8))
    k, v = jax.random.normal(kk, (2, 7, 3, 8)), jax.random.normal(kv, (2, 7, 3, 8))
    np.testing.assert_allclose(layers.attention(q, k, v, impl), _reference_attention(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_attention_matches_xla():
    kq, kk, kv = jax.random.split(jax.random.key(4), 3)
    q, k, v = (jax.random.normal(key, (2, 64, 4, 32), jnp.bfloat16) for key in (kq, kk, kv))
    np.testing.assert_allclose(
        np.float32(layers.attention(q, k, v, "cudnn")), np.float32(layers.attention(q, k, v, "xla")), atol=2e-2
    )


def test_attention_impl_rejected():
    with pytest.raises(ValueError, match="'flash'"):
        layers.check_attention_impl("flash")
    x, t, _ = _inputs()
    with pytest.raises(ValueError, match="attention_impl 'flash'"):
        UNet(**TINY, attention_impl="flash").init(jax.random.key(0), x, t)


def test_timestep_embedding_values():
    emb = layers.timestep_embedding(jnp.array([0, 10]), 6)
    assert emb.shape == (2, 6) and emb.dtype == jnp.float32
    np.testing.assert_allclose(emb[0], [1, 1, 1, 0, 0, 0], atol=1e-7)
    freqs = 10000.0 ** (-np.arange(3) / 3)
    np.testing.assert_allclose(emb[1], np.concatenate([np.cos(10 * freqs), np.sin(10 * freqs)]), rtol=1e-5)


def test_output_is_zero_at_init_and_shapes():
    model = UNet(**TINY)
    x, t, extra = _inputs(extra_channels=3)
    # An 'rbg' key: the jitted init compiles in seconds (threefry takes much longer on CPU).
    params = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x, t, extra=extra)
    assert params["params"]["conv_in"]["kernel"].shape == (3, 3, 5, 16)  # latent + extra channels
    assert params["params"]["label_embed_0"]["embedding"].shape == (4, 64)  # 3 classes + null
    assert params["params"]["label_embed_1"]["embedding"].shape == (3, 64)
    out = _apply(model)(params, x, t, extra=extra)
    assert out.shape == (B, S, S, 2) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)  # zero-initialised conv_out, as the reference


def test_labels_condition_the_output(tiny):
    model, params = tiny
    apply = _apply(model)
    x, t, _ = _inputs()
    a = apply(params, x, t, labels=jnp.array([[0, 1], [2, 0]]))
    b = apply(params, x, t, labels=jnp.array([[1, 1], [2, 1]]))
    assert float(jnp.abs(a - b).min(axis=(1, 2, 3)).max()) > 0  # every example changed
    assert float(jnp.abs(a - b).mean()) > 1e-3
    unconditional = apply(params, x, t)
    np.testing.assert_allclose(apply(params, x, t, labels=null_labels(B, (3, 2))), unconditional, atol=1e-6)
    np.testing.assert_array_equal(null_labels(B, (3, 2)), [[3, 2], [3, 2]])
    assert float(jnp.abs(a - unconditional).mean()) > 1e-3


def test_timestep_changes_output_and_accepts_scalar(tiny):
    model, params = tiny
    apply = _apply(model)
    x, _, _ = _inputs()
    a = apply(params, x, jnp.array([5, 5]))
    np.testing.assert_allclose(apply(params, x, 5.0), a, atol=1e-6)
    assert float(jnp.abs(a - apply(params, x, jnp.array([900, 900]))).mean()) > 1e-3


def test_out_of_range_labels_rejected(tiny):
    model, params = tiny
    x, t, _ = _inputs()
    with pytest.raises(ValueError, match="label 4 of attribute 0 out of range: expected 0..2, or 3 for null"):
        model.apply(params, x, t, labels=np.array([[4, 0], [0, 0]]))
    with pytest.raises(ValueError, match="label -1 of attribute 1"):
        check_labels([[0, -1], [0, 0]], (3, 2))
    with pytest.raises(ValueError, match=r"shape \[B, 2\]"):
        check_labels(np.zeros((2, 3), np.int32), (3, 2))
    with pytest.raises(ValueError, match="integers"):
        check_labels(np.zeros((2, 2), np.float32), (3, 2))
    np.testing.assert_array_equal(check_labels([[3, 2]], (3, 2)), [[3, 2]])


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(x=jnp.zeros((B, 9, 8, 2))), "divisible by the downsampling factor 2"),
        (dict(t=jnp.zeros((3,))), r"t must be a scalar or shape \[2\]"),
        (dict(context=jnp.zeros((B, 4, 8))), "context_dim=None"),
        (dict(extra=jnp.zeros((B, 4, 4, 1))), "extra must be"),
    ],
)
def test_bad_inputs_rejected(tiny, bad, match):
    model, params = tiny
    x, t, _ = _inputs()
    kwargs = {"x": x, "t": t, **bad}
    with pytest.raises(ValueError, match=match):
        model.apply(params, **kwargs)


def test_bad_config_rejected():
    x, t, _ = _inputs()
    with pytest.raises(ValueError, match="attention resolution 4"):
        UNet(**{**TINY, "attention_resolutions": (4,)}).init(jax.random.key(0), x, t)
    with pytest.raises(ValueError, match="num_heads or num_head_channels"):
        UNet(**{**TINY, "num_head_channels": -1}).init(jax.random.key(0), x, t)
    with pytest.raises(ValueError, match="no class conditioning"):
        UNet(**{**TINY, "num_classes": ()}).init(jax.random.key(0), x, t, labels=jnp.zeros((B, 2), jnp.int32))


def test_bfloat16_policy_and_agreement(tiny):
    model, params = tiny
    x, t, _ = _inputs()
    labels = jnp.array([[0, 1], [2, 0]])
    f32 = _apply(model)(params, x, t, labels=labels)
    bf16, state = _apply(UNet(**TINY, dtype=jnp.bfloat16))(params, x, t, labels=labels, capture_intermediates=True)
    assert bf16.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    inner = state["intermediates"]
    assert inner["down_0_res_0"]["__call__"][0].dtype == jnp.bfloat16
    assert inner["mid_attn"]["__call__"][0].dtype == jnp.bfloat16
    # bf16 keeps 8 mantissa bits: agree to ~3% of the output scale.
    err = float(jnp.abs(bf16 - f32).max() / jnp.abs(f32).max())
    assert err < 3e-2, err


def test_params_unchanged_by_dtype(tiny):
    model, _ = tiny
    x, t, _ = _inputs()
    shapes = jax.eval_shape(lambda: UNet(**TINY, dtype=jnp.bfloat16).init(jax.random.key(0), x, t))
    assert {s.dtype for s in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}


def test_dropout_uses_rng_only_in_training():
    model = UNet(**{**TINY, "dropout": 0.5})
    x, t, _ = _inputs()
    params = _random_params(model, x, t)
    apply = _apply(model)
    eval_out = apply(params, x, t)
    np.testing.assert_array_equal(apply(params, x, t, train=False), eval_out)
    a = apply(params, x, t, train=True, rngs={"dropout": jax.random.key(5)})
    b = apply(params, x, t, train=True, rngs={"dropout": jax.random.key(6)})
    np.testing.assert_array_equal(a, apply(params, x, t, train=True, rngs={"dropout": jax.random.key(5)}))
    assert float(jnp.abs(a - b).mean()) > 1e-3 and float(jnp.abs(a - eval_out).mean()) > 1e-3


def test_cross_attention_and_resblock_updown():
    model = UNet(
        **{
            **TINY,
            "num_head_channels": -1,
            "num_heads": 2,
            "context_dim": 6,
            "transformer_depth": 2,
            "resblock_updown": True,
            "use_scale_shift_norm": False,
        }
    )
    x, t, _ = _inputs()
    ctx = jax.random.normal(jax.random.key(7), (B, 3, 6))
    params = _random_params(model, x, t, context=ctx)
    p = params["params"]
    assert "block_1" in p["mid_attn"] and p["mid_attn"]["block_0"]["attn2"]["to_k"]["kernel"].shape == (6, 32)
    assert "conv" not in p["down_0_downsample"] and "norm_in" in p["down_0_downsample"]  # a ResBlock
    assert p["down_0_res_0"]["emb_proj"]["kernel"].shape == (64, 16)  # additive injection
    apply = _apply(model)
    a = apply(params, x, t, context=ctx)
    assert a.shape == (B, S, S, 2)
    assert float(jnp.abs(a - apply(params, x, t, context=ctx + 1.0)).mean()) > 1e-3
    with pytest.raises(ValueError, match="context is required"):
        model.apply(params, x, t)
    with pytest.raises(ValueError, match=r"context must be \[2, L, 6\]"):
        model.apply(params, x, t, context=jnp.zeros((B, 3, 5)))


def test_traced_out_of_range_labels_give_nan(tiny):
    model, params = tiny
    x, t, _ = _inputs()
    out = _apply(model)(params, x, t, labels=jnp.array([[-1, 0], [0, 0]]))  # traced: cannot raise
    assert bool(jnp.isnan(out[0]).all()) and bool(jnp.isfinite(out[1]).all())


def test_resblock_scale_shift_matches_formula():
    block = layers.ResBlock(4, use_scale_shift_norm=True, norm_groups=2, zero_init_out=False)
    x = jax.random.normal(jax.random.key(8), (1, 4, 4, 4))
    emb = jax.random.normal(jax.random.key(9), (1, 6))
    params = _random_params(block, x, emb)
    p = params["params"]
    assert p["emb_proj"]["kernel"].shape == (6, 8) and "skip" not in p

    def manual(x):
        gn = lambda name, y: nn.GroupNorm(2, epsilon=1e-5).apply({"params": p[name]}, y)
        cv = lambda name, y: nn.Conv(4, (3, 3), padding=1).apply({"params": p[name]}, y)
        h = cv("conv_in", nn.silu(gn("norm_in", x)))
        scale, shift = jnp.split(nn.Dense(8).apply({"params": p["emb_proj"]}, nn.silu(emb)), 2, axis=-1)
        h = gn("norm_out", h) * (1 + scale[:, None, None]) + shift[:, None, None]
        return x + cv("conv_out", nn.silu(h))

    np.testing.assert_allclose(_apply(block)(params, x, emb), jax.jit(manual)(x), atol=1e-5)
