"""KL-regularised convolutional autoencoder (LDM's ``AutoencoderKL``, Rombach et al. 2022).

``encode``: ``x [B, H, W, in_channels]`` → encoder → ``quant_conv`` → diagonal Gaussian
``q(z|x)`` over ``[B, H/f, W/f, z_channels]`` with ``f = 2 ** (len(ch_mult) - 1)``.
``decode``: ``z`` → ``post_quant_conv`` → decoder → ``[B, H, W, out_channels]`` float32.
Whatever the compute ``dtype``, the output convolutions (the encoder's ``conv_out`` and
``quant_conv``, the decoder's ``conv_out``) run in float32 (``layers.output_conv``).
The decoder's last layer is ``decoder/conv_out`` (``LAST_LAYER_PATH`` in the params),
whose gradient norms give LDM's adaptive GAN weight.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.models.layers import AttentionBlock, Downsample, ResBlock, Upsample, conv, group_norm, output_conv

LAST_LAYER_PATH = ("decoder", "conv_out", "kernel")
_EPS = 1e-6  # GroupNorm epsilon of the LDM autoencoder


@flax.struct.dataclass
class DiagonalGaussian:
    """``N(mean, exp(logvar))`` per latent element; ``mean``/``logvar`` ``[B, h, w, z]`` float32."""

    mean: jax.Array
    logvar: jax.Array

    def sample(self, key) -> jax.Array:
        """``mean + exp(logvar / 2) · ε``, ``ε ~ N(0, I)`` drawn with ``key``."""
        eps = jax.random.normal(key, self.mean.shape, self.mean.dtype)
        return self.mean + jnp.exp(0.5 * self.logvar) * eps

    def mode(self) -> jax.Array:
        """The mean (the most likely latent)."""
        return self.mean

    def kl(self) -> jax.Array:
        """``KL(q || N(0, I)) = ½ Σ (mean² + var − 1 − logvar)`` over non-batch axes → ``[B]``."""
        terms = jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar
        return 0.5 * jnp.sum(terms, axis=tuple(range(1, self.mean.ndim)))


def _mid(h, attn: bool, groups: int, dtype):
    """Middle: ResBlock, optional single-head attention, ResBlock (call inside a compact method)."""
    res = dict(norm_groups=groups, epsilon=_EPS, zero_init_out=False, dtype=dtype)
    h = ResBlock(h.shape[-1], **res, name="mid_res_0")(h)
    if attn:
        h = AttentionBlock(1, groups, _EPS, zero_init_out=False, dtype=dtype, name="mid_attn")(h)
    return ResBlock(h.shape[-1], **res, name="mid_res_1")(h)


class Encoder(nn.Module):
    """``[B, H, W, C] -> [B, H/f, W/f, 2·z_channels]`` (mean and log-variance moments)."""

    ch: int
    ch_mult: tuple
    num_res_blocks: int
    z_channels: int
    attn_mid: bool
    norm_groups: int
    dtype: Any
    out_norm: bool = True

    @nn.compact
    def __call__(self, x):
        h = conv(self.ch, 3, self.dtype, name="conv_in")(x)
        for level, mult in enumerate(self.ch_mult):
            for i in range(self.num_res_blocks):
                h = ResBlock(
                    self.ch * mult,
                    norm_groups=self.norm_groups,
                    epsilon=_EPS,
                    zero_init_out=False,
                    dtype=self.dtype,
                    name=f"down_{level}_res_{i}",
                )(h)
            if level != len(self.ch_mult) - 1:
                h = Downsample(h.shape[-1], self.dtype, name=f"down_{level}_downsample")(h)
        h = _mid(h, self.attn_mid, self.norm_groups, self.dtype)
        h = nn.silu(group_norm(h, self.norm_groups, _EPS, "norm_out") if self.out_norm else h)
        return output_conv(2 * self.z_channels, 3, name="conv_out")(h)


class Decoder(nn.Module):
    """``[B, h, w, z_channels] -> [B, h·f, w·f, out_channels]`` float32."""

    ch: int
    ch_mult: tuple
    num_res_blocks: int
    out_channels: int
    attn_mid: bool
    norm_groups: int
    dtype: Any
    out_norm: bool = True

    @nn.compact
    def __call__(self, z):
        h = conv(self.ch * self.ch_mult[-1], 3, self.dtype, name="conv_in")(z)
        h = _mid(h, self.attn_mid, self.norm_groups, self.dtype)
        for level in reversed(range(len(self.ch_mult))):
            for i in range(self.num_res_blocks + 1):
                h = ResBlock(
                    self.ch * self.ch_mult[level],
                    norm_groups=self.norm_groups,
                    epsilon=_EPS,
                    zero_init_out=False,
                    dtype=self.dtype,
                    name=f"up_{level}_res_{i}",
                )(h)
            if level != 0:
                h = Upsample(h.shape[-1], self.dtype, name=f"up_{level}_upsample")(h)
        h = nn.silu(group_norm(h, self.norm_groups, _EPS, "norm_out") if self.out_norm else h)
        return output_conv(self.out_channels, 3, name="conv_out")(h)


class AutoencoderKL(nn.Module):
    """KL autoencoder; ``__call__(x, sample_posterior=True) -> (reconstruction, posterior)``.

    ``ch`` base channels, ``ch_mult`` per-level multipliers (3 levels: f = 4, 4: f = 8,
    5: f = 16), ``num_res_blocks`` per level, ``z_channels`` latent channels, ``attn_mid``
    single-head attention in the middle blocks, ``dtype`` compute dtype (params float32).
    ``out_norm``: GroupNorm before the encoder's and decoder's output convolutions (the LDM
    layout). GroupNorm normalises each example, so at the output it hides a global rescaling
    of the image's intensities — for a mammogram, its density; the mammography presets
    leave it out, keeping intensity on the residual path. Sampling the posterior draws
    from the 'sample' rng.
    """

    in_channels: int = 1
    out_channels: int = 1
    ch: int = 128
    ch_mult: tuple = (1, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    attn_mid: bool = True
    norm_groups: int = 32
    out_norm: bool = True
    dtype: Any = jnp.float32

    @property
    def downsample_factor(self) -> int:
        """Spatial factor f between images and latents, ``2 ** (len(ch_mult) - 1)``."""
        return 2 ** (len(self.ch_mult) - 1)

    def setup(self):
        if not self.ch_mult or self.num_res_blocks < 1 or self.z_channels < 1:
            raise ValueError(
                f"need a non-empty ch_mult, num_res_blocks >= 1 and z_channels >= 1; got "
                f"{self.ch_mult}, {self.num_res_blocks}, {self.z_channels}"
            )
        common = dict(
            ch=self.ch,
            ch_mult=tuple(self.ch_mult),
            num_res_blocks=self.num_res_blocks,
            attn_mid=self.attn_mid,
            norm_groups=self.norm_groups,
            out_norm=self.out_norm,
            dtype=self.dtype,
        )
        self.encoder = Encoder(z_channels=self.z_channels, **common)
        self.decoder = Decoder(out_channels=self.out_channels, **common)
        self.quant_conv = output_conv(2 * self.z_channels, 1)
        self.post_quant_conv = conv(self.z_channels, 1, self.dtype)

    def encode(self, x) -> DiagonalGaussian:
        """Posterior ``q(z|x)`` for ``x [B, H, W, in_channels]`` (H, W divisible by f)."""
        f = self.downsample_factor
        if x.ndim != 4 or x.shape[-1] != self.in_channels or x.shape[1] % f or x.shape[2] % f:
            raise ValueError(
                f"x must be [B, H, W, {self.in_channels}] with H and W divisible by {f}, got shape {x.shape}"
            )
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return DiagonalGaussian(mean, jnp.clip(logvar, -30.0, 20.0))

    def decode(self, z) -> jax.Array:
        """Image ``[B, h·f, w·f, out_channels]`` float32 from latents ``z [B, h, w, z_channels]``."""
        if z.ndim != 4 or z.shape[-1] != self.z_channels:
            raise ValueError(f"z must be [B, h, w, {self.z_channels}], got shape {z.shape}")
        return self.decoder(self.post_quant_conv(z))

    def __call__(self, x, sample_posterior: bool = True):
        posterior = self.encode(x)
        z = posterior.sample(self.make_rng("sample")) if sample_posterior else posterior.mode()
        return self.decode(z), posterior
