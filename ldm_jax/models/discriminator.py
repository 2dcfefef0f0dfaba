"""PatchGAN discriminator (Isola et al. 2017) for the autoencoder's adversarial loss.

The taming-transformers/LDM ``NLayerDiscriminator`` layout with GroupNorm in place of
BatchNorm, so the model has no mutable state (no ``batch_stats``) and its output for an
example does not depend on the rest of the batch.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ldm_jax.models.layers import group_norm

_INIT = nn.initializers.normal(0.02)  # DCGAN-style init used by the reference


class PatchDiscriminator(nn.Module):
    """``x [B, H, W, C] -> logits [B, h, w, 1]`` float32, one real/fake logit per patch.

    4×4 convolutions: ``num_layers`` with stride 2 (channels ``ch·min(2^n, 8)``), one more
    with stride 1, then a stride-1 output convolution; each but the first and last is
    followed by GroupNorm (``norm_groups``) and LeakyReLU(0.2). With padding 1 a 256×256
    input with 3 layers gives 30×30 logits (receptive field 70×70). ``train`` has no
    effect (no dropout, no batch statistics); it keeps the networks' call signatures alike.
    """

    ch: int = 64
    num_layers: int = 3
    norm_groups: int = 32
    dtype: Any = jnp.float32

    def _conv(self, features: int, stride: int, name: str, use_bias: bool):
        return nn.Conv(
            features,
            (4, 4),
            strides=(stride, stride),
            padding=((1, 1), (1, 1)),
            use_bias=use_bias,
            kernel_init=_INIT,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
        )

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        min_size = 3 * 2**self.num_layers
        if x.ndim != 4 or x.shape[1] < min_size or x.shape[2] < min_size:
            raise ValueError(
                f"x must be [B, H, W, C] with H, W >= {min_size} for num_layers={self.num_layers}, got shape {x.shape}"
            )
        h = nn.leaky_relu(self._conv(self.ch, 2, "conv_0", True)(x), 0.2)
        for n in range(1, self.num_layers + 1):
            stride = 2 if n < self.num_layers else 1
            h = self._conv(self.ch * min(2**n, 8), stride, f"conv_{n}", False)(h)
            h = nn.leaky_relu(group_norm(h, self.norm_groups, 1e-5, f"norm_{n}"), 0.2)
        return self._conv(1, 1, "conv_out", True)(h).astype(jnp.float32)
