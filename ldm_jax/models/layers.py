"""Building blocks shared by the UNet, the autoencoder and the discriminator.

All blocks take NHWC activations. Parameters are float32; ``dtype`` is the compute dtype
(e.g. bfloat16 on accelerators). Normalisation runs in float32 (the input is upcast and
the normalised output stays float32 until the next layer casts it to ``dtype``); the
attention softmax is float32 inside ``jax.nn.dot_product_attention``; the networks'
output layers are ``output_conv``s, float32 whatever ``dtype``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ATTENTION_IMPLS = (None, "xla", "cudnn")


def check_attention_impl(implementation) -> None:
    """Raise unless ``implementation`` is one of ``ATTENTION_IMPLS``."""
    if implementation not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl {implementation!r} not supported; expected one of {ATTENTION_IMPLS}")


def attention(q, k, v, implementation: str | None = None):
    """Multi-head ``softmax(q kᵀ / √H) v`` (Vaswani et al. eq. 1) on ``[B, L, N, H]`` arrays.

    ``implementation``: None lets jax pick, ``'xla'`` is the portable path, ``'cudnn'`` is
    cuDNN flash attention (GPU, float16/bfloat16). Logits and softmax are float32.
    Returns ``[B, Lq, N, H]`` in ``q.dtype``.
    """
    check_attention_impl(implementation)
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding ``[cos(t·f_i), sin(t·f_i)]``, ``f_i = max_period^(-i/(dim/2))``.

    ``t``: ``[B]`` integer or real timesteps. Returns ``[B, dim]`` float32 (zero-padded
    when ``dim`` is odd), as in the DDPM/LDM reference UNets.
    """
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def group_norm(x, num_groups: int, epsilon: float, name: str):
    """GroupNorm in float32 (call inside a compact method); returns float32 ``x.shape``."""
    if x.shape[-1] % num_groups:
        raise ValueError(f"{x.shape[-1]} channels are not divisible by norm_groups={num_groups}")
    return nn.GroupNorm(num_groups=num_groups, epsilon=epsilon, dtype=jnp.float32, name=name)(x.astype(jnp.float32))


def layer_norm(x, name: str, epsilon: float = 1e-5):
    """LayerNorm over the last axis in float32 (call inside a compact method)."""
    return nn.LayerNorm(epsilon=epsilon, dtype=jnp.float32, name=name)(x.astype(jnp.float32))


def conv(
    features: int,
    kernel_size: int,
    dtype,
    name: str | None = None,
    strides: int = 1,
    zero_init: bool = False,
    precision=None,
):
    """A ``kernel_size``² convolution padded like PyTorch (``kernel_size // 2`` each side)."""
    pad = kernel_size // 2
    kwargs = dict(kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros) if zero_init else {}
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        dtype=dtype,
        param_dtype=jnp.float32,
        precision=precision,
        name=name,
        **kwargs,
    )


def output_conv(features: int, kernel_size: int, name: str | None = None, zero_init: bool = False):
    """``conv`` in float32 at ``Precision.HIGHEST`` (no bfloat16 or TF32 rounding) for a network's
    output layer, whatever the compute dtype: bfloat16's 8 significant bits would cost several
    grey levels of a 12-bit image."""
    return conv(features, kernel_size, jnp.float32, name, zero_init=zero_init, precision=jax.lax.Precision.HIGHEST)


def upsample_nearest(x):
    """Nearest-neighbour ×2 upsampling: ``[B, H, W, C] -> [B, 2H, 2W, C]``."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2(x):
    """2×2 average pooling with stride 2: ``[B, H, W, C] -> [B, H/2, W/2, C]``."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Downsample(nn.Module):
    """Strided 3×3 convolution halving H and W: ``[B, H, W, C] -> [B, H/2, W/2, channels]``."""

    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return conv(self.channels, 3, self.dtype, name="conv", strides=2)(x)


class Upsample(nn.Module):
    """Nearest ×2 upsampling then a 3×3 convolution: ``[B, H, W, C] -> [B, 2H, 2W, channels]``."""

    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return conv(self.channels, 3, self.dtype, name="conv")(upsample_nearest(x))


class ResBlock(nn.Module):
    """Residual block: GroupNorm → SiLU → conv → (+ embedding) → GroupNorm → SiLU → dropout → conv.

    The embedding ``emb [B, E]`` (timestep + labels) is added to the features, or with
    ``use_scale_shift_norm`` applied as ``norm(h)·(1 + scale) + shift`` (Dhariwal & Nichol
    2021). ``emb=None`` (autoencoder) skips it. ``resample='up'|'down'`` resizes inside the
    block (nearest / average pooling, as the LDM "resblock_updown" option). The skip is a
    1×1 convolution when the channel count changes. ``zero_init_out`` zero-initialises the
    last convolution so the block starts as the identity (the UNet does; the autoencoder
    does not). ``[B, H, W, C] -> [B, H', W', out_channels]`` in ``dtype``.
    """

    out_channels: int
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    resample: str | None = None
    norm_groups: int = 32
    epsilon: float = 1e-5
    zero_init_out: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, emb=None, train: bool = False):
        if self.resample not in (None, "up", "down"):
            raise ValueError(f"resample {self.resample!r} not supported; expected None, 'up' or 'down'")
        h = nn.silu(group_norm(x, self.norm_groups, self.epsilon, "norm_in"))
        if self.resample is not None:
            resize = upsample_nearest if self.resample == "up" else avg_pool2
            h, x = resize(h), resize(x)
        h = conv(self.out_channels, 3, self.dtype, name="conv_in")(h)
        scale_shift = None
        if emb is not None:
            width = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
            e = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name="emb_proj")(nn.silu(emb))
            e = e[:, None, None, :]
            if self.use_scale_shift_norm:
                scale_shift = jnp.split(e, 2, axis=-1)
            else:
                h = h + e
        h = group_norm(h, self.norm_groups, self.epsilon, "norm_out")
        if scale_shift is not None:
            scale, shift = scale_shift
            h = h * (1 + scale) + shift
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = conv(self.out_channels, 3, self.dtype, name="conv_out", zero_init=self.zero_init_out)(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, self.dtype, name="skip")(x)
        return x.astype(self.dtype) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual: GroupNorm → qkv → attention → projection.

    ``num_heads`` heads over the ``C`` channels (``C`` divisible by ``num_heads``).
    ``zero_init_out`` zero-initialises the output projection (UNet; not the autoencoder).
    ``[B, H, W, C] -> [B, H, W, C]`` in ``dtype``.
    """

    num_heads: int
    norm_groups: int = 32
    epsilon: float = 1e-5
    zero_init_out: bool = True
    attention_impl: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"{c} channels are not divisible by num_heads={self.num_heads}")
        h = group_norm(x, self.norm_groups, self.epsilon, "norm")
        qkv = nn.Dense(3 * c, dtype=self.dtype, param_dtype=jnp.float32, name="qkv")(h)
        q, k, v = jnp.split(qkv.reshape(b, hgt * wid, 3, self.num_heads, c // self.num_heads), 3, axis=2)
        out = attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], self.attention_impl).reshape(b, hgt, wid, c)
        kwargs = dict(kernel_init=nn.initializers.zeros) if self.zero_init_out else {}
        out = nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32, name="proj_out", **kwargs)(out)
        return x.astype(self.dtype) + out


class CrossAttention(nn.Module):
    """Multi-head attention from ``x [B, L, D]`` to ``context [B, S, Dc]`` (itself when None).

    Bias-free q/k/v projections and a biased output projection (Stable Diffusion's layout).
    Returns ``[B, L, D]`` in ``dtype``.
    """

    num_heads: int
    head_dim: int
    attention_impl: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context=None):
        context = x if context is None else context
        inner = self.num_heads * self.head_dim

        def proj(y, name):
            y = nn.Dense(inner, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, name=name)(y)
            return y.reshape(*y.shape[:2], self.num_heads, self.head_dim)

        out = attention(proj(x, "to_q"), proj(context, "to_k"), proj(context, "to_v"), self.attention_impl)
        out = out.reshape(*out.shape[:2], inner)
        return nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=jnp.float32, name="to_out")(out)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention to ``context``, GEGLU MLP.

    ``x [B, L, D]``, ``context [B, S, Dc]`` or None (then the second attention is also
    self-attention, as in the reference). Returns ``[B, L, D]`` in ``dtype``.
    """

    num_heads: int
    head_dim: int
    attention_impl: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context=None):
        d = x.shape[-1]
        attn = dict(
            num_heads=self.num_heads, head_dim=self.head_dim, attention_impl=self.attention_impl, dtype=self.dtype
        )
        x = x + CrossAttention(**attn, name="attn1")(layer_norm(x, "norm1"))
        x = x + CrossAttention(**attn, name="attn2")(layer_norm(x, "norm2"), context)
        h = nn.Dense(8 * d, dtype=self.dtype, param_dtype=jnp.float32, name="ff_in")(layer_norm(x, "norm3"))
        value, gate = jnp.split(h, 2, axis=-1)
        h = value * nn.gelu(gate, approximate=False)
        return x + nn.Dense(d, dtype=self.dtype, param_dtype=jnp.float32, name="ff_out")(h)


class SpatialTransformer(nn.Module):
    """Stable Diffusion's spatial transformer: GroupNorm → proj_in → ``depth`` transformer blocks → proj_out.

    Flattens ``x [B, H, W, C]`` into ``H·W`` tokens that attend to themselves and to
    ``context [B, S, Dc]``; ``proj_out`` is zero-initialised; residual around the whole.
    Returns ``[B, H, W, C]`` in ``dtype``.
    """

    num_heads: int
    head_dim: int
    depth: int = 1
    norm_groups: int = 32
    attention_impl: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context=None):
        b, hgt, wid, c = x.shape
        inner = self.num_heads * self.head_dim
        h = group_norm(x, self.norm_groups, 1e-6, "norm")
        h = nn.Dense(inner, dtype=self.dtype, param_dtype=jnp.float32, name="proj_in")(h)
        h = h.reshape(b, hgt * wid, inner)
        for i in range(self.depth):
            h = TransformerBlock(self.num_heads, self.head_dim, self.attention_impl, self.dtype, name=f"block_{i}")(
                h, context
            )
        h = nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=nn.initializers.zeros, name="proj_out")(
            h.reshape(b, hgt, wid, inner)
        )
        return x.astype(self.dtype) + h


def latent_blocks(images, h: int):
    """``[B, H, W, C]`` → ``[B, h, w, f, f, C]``: the f×f block of image pixels under each latent
    pixel of an ``h``-row latent grid (f = H / h)."""
    b, height, width, c = images.shape
    f = height // h
    return images.reshape(b, h, f, width // f, f, c).transpose(0, 1, 3, 2, 4, 5)
