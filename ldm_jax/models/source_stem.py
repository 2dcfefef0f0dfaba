"""The counterfactual filter's pixel-resolution view of its source image.

A mass in dense tissue differs from the gland around it by a few hundredths of the model range
and spans a few pixels at 64×64. Folded onto the latent grid (f×f pixels to channels) it reaches
the UNet only through convolutions that mix a whole block at once. The stem reads the image at
its own resolution first: three convolutions (GELU), whose features and a one-channel evidence
map (1×1 head) are folded f×f onto the latent grid. The map is sown as the intermediate
``source_map`` ``[B, H, W, 1]``, so that training can rank it directly (``lesion_ranking``:
``rank_map_weight``), as the learned observer is trained (``evaluation.observer``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ldm_jax.models.layers import conv, latent_blocks

INPUT_GAIN = 10.0  # the stem sees pixels ×10: lesion contrasts of ~0.03 become ~0.3


class SourceStem(nn.Module):
    """``(pixels [B, f·h, f·w, C], h) → [B, h, w, f²·(features + 1)]``: the stem's features and its
    evidence map, folded onto an ``h``-row grid (module docstring)."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixels, h: int):
        x = pixels.astype(self.dtype) * INPUT_GAIN
        for i, kernel in enumerate((3, 3, 5)):
            x = nn.gelu(conv(self.features, kernel, self.dtype, name=f"conv_{i}")(x))
        evidence = conv(1, 1, self.dtype, name="map")(x)
        self.sow("intermediates", "source_map", evidence.astype(jnp.float32))
        x = jnp.concatenate([x, evidence], axis=-1)
        blocks = latent_blocks(x, h)
        return blocks.reshape(*blocks.shape[:3], -1)
