"""Conditional UNet score network ε_θ(x_t, t, y, c) in the LDM "openaimodel" layout.

Down path: ``conv_in``, then per level ``num_res_blocks`` ResBlocks (each followed by
attention where the downsampling factor is in ``attention_resolutions``) and a
downsample (all but the last level). Middle: ResBlock, attention, ResBlock. Up path: per
level ``num_res_blocks + 1`` ResBlocks fed the concatenated skip activations, attention
as on the way down, an upsample (all but the top level). Out: GroupNorm, SiLU,
zero-initialised ``conv_out``, in float32 whatever the compute dtype (``layers.output_conv``).

Conditioning: sinusoidal timestep embedding → 2-layer MLP; one embedding table per
categorical attribute (``n + 1`` rows: row ``n`` is the learned null used for
classifier-free guidance) summed into it; optional context tokens ``[B, L, context_dim]``
through cross-attention (spatial transformers replace the attention blocks when
``context_dim`` is set); optional extra input channels concatenated to ``x``, and with
``pixel_stem`` > 0 a source image at k× ``x``'s resolution, read by a ``SourceStem`` and folded
onto ``x``'s grid (the counterfactual filter's view of its source).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import attributes
from ldm_jax.models.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    SpatialTransformer,
    Upsample,
    check_attention_impl,
    conv,
    group_norm,
    output_conv,
    timestep_embedding,
)
from ldm_jax.models.source_stem import SourceStem


def check_labels(labels, num_classes: Sequence[int]) -> np.ndarray:
    """Validate a concrete label array ``[B, A]``: column ``a`` in ``[0, num_classes[a]]``.

    Index ``num_classes[a]`` is the null ("not given") value. Returns int32 numpy labels;
    raises ``ValueError`` naming the offending value and the allowed range.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != len(num_classes):
        raise ValueError(
            f"labels must have shape [B, {len(num_classes)}] (num_classes={tuple(num_classes)}), got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    for a, n in enumerate(num_classes):
        bad = (labels[:, a] < 0) | (labels[:, a] > n)
        if bad.any():
            raise ValueError(
                f"label {labels[bad.argmax(), a]} of attribute {a} out of range: expected 0..{n - 1}, or {n} for null"
            )
    return labels.astype(np.int32)


class UNet(nn.Module):
    """Conditional UNet; ``__call__(x, t, labels, context, extra, extra_pixels) -> [B, H, W, out_channels]``
    float32.

    Fields follow LDM's ``UNetModel``: ``attention_resolutions`` are downsampling factors
    (``(2, 4, 8)`` attends at 32, 16 and 8 for a 64×64 input); heads are
    ``channels // num_head_channels`` when that is set, else ``num_heads``;
    ``num_classes`` gives one vocabulary size per categorical attribute; ``dtype`` is the
    compute dtype (params stay float32); ``attention_impl`` is None (jax picks), 'xla'
    or 'cudnn'. Dropout (ResBlocks only) draws from the 'dropout' rng when ``train``.
    ``pixel_stem``: the features of the ``SourceStem`` over ``extra_pixels`` (0: none).
    """

    out_channels: int
    model_channels: int
    channel_mult: tuple = (1, 2, 4, 8)
    num_res_blocks: int = 2
    attention_resolutions: tuple = ()
    num_heads: int = -1
    num_head_channels: int = -1
    num_classes: tuple = ()
    context_dim: int | None = None
    transformer_depth: int = 1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    dropout: float = 0.0
    norm_groups: int = 32
    dtype: Any = jnp.float32
    attention_impl: str | None = None
    pixel_stem: int = 0

    @property
    def downsample_factor(self) -> int:
        """Total spatial downsampling, ``2 ** (len(channel_mult) - 1)``; H and W must divide by it."""
        return 2 ** (len(self.channel_mult) - 1)

    def _check_config(self) -> None:
        if not self.channel_mult or self.num_res_blocks < 1 or self.model_channels < 1:
            raise ValueError(
                f"need model_channels >= 1, a non-empty channel_mult and num_res_blocks >= 1; got "
                f"{self.model_channels}, {self.channel_mult}, {self.num_res_blocks}"
            )
        if self.pixel_stem < 0:
            raise ValueError(f"pixel_stem={self.pixel_stem}: expected the stem's features, or 0 for none")
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise ValueError("set num_heads or num_head_channels (both are -1)")
        allowed = tuple(2**level for level in range(len(self.channel_mult)))
        for ds in self.attention_resolutions:
            if ds not in allowed:
                raise ValueError(
                    f"attention resolution {ds} is not a downsampling factor of this UNet; expected one of {allowed}"
                )
        if any(n < 1 for n in self.num_classes):
            raise ValueError(f"num_classes must all be >= 1, got {self.num_classes}")
        check_attention_impl(self.attention_impl)

    def _check_inputs(self, x, t, labels, context, extra, extra_pixels) -> None:
        if x.ndim != 4:
            raise ValueError(f"x must be [B, H, W, C], got shape {x.shape}")
        b, hgt, wid, _ = x.shape
        f = self.downsample_factor
        if hgt % f or wid % f:
            raise ValueError(f"x spatial size {hgt}x{wid} must be divisible by the downsampling factor {f}")
        if jnp.ndim(t) not in (0, 1) or (jnp.ndim(t) == 1 and jnp.shape(t)[0] != b):
            raise ValueError(f"t must be a scalar or shape [{b}], got shape {jnp.shape(t)}")
        if labels is not None:
            if not self.num_classes:
                raise ValueError("labels given but this UNet has no class conditioning (num_classes=())")
            if jnp.shape(labels) != (b, len(self.num_classes)):
                raise ValueError(f"labels must have shape [{b}, {len(self.num_classes)}], got {jnp.shape(labels)}")
            if not isinstance(labels, jax.core.Tracer):
                check_labels(labels, self.num_classes)
        if self.context_dim is None and context is not None:
            raise ValueError("context given but this UNet has no cross-attention (context_dim=None)")
        if self.context_dim is not None:
            if context is None:
                raise ValueError(f"this UNet cross-attends (context_dim={self.context_dim}); context is required")
            if context.ndim != 3 or context.shape[0] != b or context.shape[2] != self.context_dim:
                raise ValueError(f"context must be [{b}, L, {self.context_dim}], got shape {context.shape}")
        if extra is not None and (extra.ndim != 4 or extra.shape[:3] != x.shape[:3]):
            raise ValueError(f"extra must be [{b}, {hgt}, {wid}, E] like x, got shape {extra.shape}")
        if (extra_pixels is None) != (self.pixel_stem == 0):
            raise ValueError(
                f"extra_pixels {'given' if extra_pixels is not None else 'missing'}: this UNet's "
                f"pixel_stem={self.pixel_stem} (0: no source image; > 0: one is required)"
            )
        if extra_pixels is not None:
            k = extra_pixels.shape[1] // hgt if extra_pixels.ndim == 4 else 0
            if k < 1 or extra_pixels.shape[:3] != (b, k * hgt, k * wid):
                raise ValueError(
                    f"extra_pixels must be [{b}, k·{hgt}, k·{wid}, C] (k ≥ 1), got shape {extra_pixels.shape}"
                )

    def _attend(self, h, context, name: str):
        channels = h.shape[-1]
        if self.num_head_channels != -1:
            if channels % self.num_head_channels:
                raise ValueError(f"{channels} channels are not divisible by num_head_channels={self.num_head_channels}")
            heads = channels // self.num_head_channels
        else:
            heads = self.num_heads
        if self.context_dim is None:
            return AttentionBlock(
                heads, self.norm_groups, attention_impl=self.attention_impl, dtype=self.dtype, name=name
            )(h)
        if channels % heads:
            raise ValueError(f"{channels} channels are not divisible by num_heads={heads}")
        return SpatialTransformer(
            heads,
            channels // heads,
            self.transformer_depth,
            self.norm_groups,
            self.attention_impl,
            self.dtype,
            name=name,
        )(h, context)

    def _res(self, channels: int, name: str, resample: str | None = None):
        return ResBlock(
            channels, self.dropout, self.use_scale_shift_norm, resample, self.norm_groups, dtype=self.dtype, name=name
        )

    def _embed(self, t, labels, batch: int):
        dim = 4 * self.model_channels
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
        emb = nn.Dense(dim, dtype=self.dtype, param_dtype=jnp.float32, name="time_embed_0")(
            timestep_embedding(t, self.model_channels)
        )
        emb = nn.Dense(dim, dtype=self.dtype, param_dtype=jnp.float32, name="time_embed_1")(nn.silu(emb))
        if self.num_classes:
            if labels is None:
                labels = attributes.null_labels(batch, self.num_classes)
            labels = jnp.asarray(labels, jnp.int32)
            for a, n in enumerate(self.num_classes):
                # Out-of-range ids (only possible when traced) look up past the table: NaN, never a wrap.
                ids = jnp.where((labels[:, a] < 0) | (labels[:, a] > n), n + 1, labels[:, a])
                emb = emb + nn.Embed(n + 1, dim, dtype=self.dtype, name=f"label_embed_{a}")(ids)
        return emb

    @nn.compact
    def __call__(self, x, t, labels=None, context=None, extra=None, train: bool = False, extra_pixels=None):
        """ε (or v) prediction ``[B, H, W, out_channels]`` float32.

        ``x [B, H, W, C]``; ``t`` ``[B]`` or scalar, int or float; ``labels [B, A]`` int
        (None: all null); ``context [B, L, context_dim]``; ``extra [B, H, W, E]``
        concatenated to ``x``; ``extra_pixels [B, k·H, k·W, C]`` when ``pixel_stem`` > 0.
        Concrete out-of-range labels raise ``ValueError``; traced ones (inside jit) cannot be
        checked, so validate them with ``check_labels`` before the jitted call; a traced
        out-of-range label turns that example's output into NaN.
        """
        self._check_config()
        self._check_inputs(x, t, labels, context, extra, extra_pixels)
        if extra is not None:
            x = jnp.concatenate([x, extra.astype(x.dtype)], axis=-1)
        if self.pixel_stem:
            stem = SourceStem(self.pixel_stem, self.dtype, name="source_stem")(extra_pixels, x.shape[1])
            x = jnp.concatenate([x, stem.astype(x.dtype)], axis=-1)
        emb = self._embed(t, labels, x.shape[0])

        h = conv(self.model_channels, 3, self.dtype, name="conv_in")(x)
        skips = [h]
        ds, last = 1, len(self.channel_mult) - 1
        for level, mult in enumerate(self.channel_mult):
            channels = self.model_channels * mult
            for i in range(self.num_res_blocks):
                h = self._res(channels, f"down_{level}_res_{i}")(h, emb, train)
                if ds in self.attention_resolutions:
                    h = self._attend(h, context, f"down_{level}_attn_{i}")
                skips.append(h)
            if level != last:
                if self.resblock_updown:
                    h = self._res(channels, f"down_{level}_downsample", "down")(h, emb, train)
                else:
                    h = Downsample(channels, self.dtype, name=f"down_{level}_downsample")(h)
                skips.append(h)
                ds *= 2

        channels = self.model_channels * self.channel_mult[-1]
        h = self._res(channels, "mid_res_0")(h, emb, train)
        h = self._attend(h, context, "mid_attn")
        h = self._res(channels, "mid_res_1")(h, emb, train)

        for level in reversed(range(len(self.channel_mult))):
            channels = self.model_channels * self.channel_mult[level]
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = self._res(channels, f"up_{level}_res_{i}")(h, emb, train)
                if ds in self.attention_resolutions:
                    h = self._attend(h, context, f"up_{level}_attn_{i}")
            if level != 0:
                if self.resblock_updown:
                    h = self._res(channels, f"up_{level}_upsample", "up")(h, emb, train)
                else:
                    h = Upsample(channels, self.dtype, name=f"up_{level}_upsample")(h)
                ds //= 2

        h = nn.silu(group_norm(h, self.norm_groups, 1e-5, "norm_out"))
        return output_conv(self.out_channels, 3, name="conv_out", zero_init=True)(h)
