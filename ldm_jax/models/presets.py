"""Named model presets (architecture shapes) and builders that turn them into modules.

``get_preset(name)`` returns an ``ml_collections.ConfigDict`` with ``image_size``,
``image_channels``, ``latent_size``, ``latent_channels``, ``context_len`` (0: no
cross-attention) and the keyword arguments of ``autoencoder`` (``AutoencoderKL``),
``discriminator`` (``PatchDiscriminator``) and ``unet`` (``UNet``); the compute dtype is
chosen at build time. A UNet-only benchmark preset has ``autoencoder = None``. A training
run's config starts from a preset and may change any field (``ldm_jax.models.architecture``).

- ``phantom_tiny``: CPU demo, 64×64×1 phantoms → f = 4 → 16×16×4 latents, small UNet.
- ``phantom_micro``: the same shapes with the fewest layers, for tests and smoke runs.
- ``phantom128``: 128×128×1 phantoms → f = 4 → 32×32×4 latents, one-accelerator UNet.
- ``mammo256``: 256×256×1 mammograms → f = 4 → 64×64×4 latents, one-accelerator UNet.
- ``ldm64``: the CompVis CelebA-HQ LDM UNet shape with 4 latent channels and 16 classes
  (274.1 M params); no autoencoder (the reference's is a VQ model, not built here).
- ``sd15``: the Stable Diffusion 1.5 UNet (859.5 M params, 77×768 context) and its
  f = 8 KL autoencoder shape (83.7 M params, RGB).
"""

from __future__ import annotations

import ml_collections
import jax.numpy as jnp

from ldm_jax import attributes
from ldm_jax.models.autoencoder import AutoencoderKL
from ldm_jax.models.discriminator import PatchDiscriminator
from ldm_jax.models.unet import UNet


def _phantom_tiny() -> dict:
    return dict(
        image_size=64,
        image_channels=1,
        latent_size=16,
        latent_channels=4,
        context_len=0,
        autoencoder=dict(
            in_channels=1,
            out_channels=1,
            ch=8,
            ch_mult=(1, 2, 4),
            num_res_blocks=1,
            z_channels=4,
            attn_mid=False,
            norm_groups=8,
            out_norm=False,
        ),
        discriminator=dict(ch=32, num_layers=2, norm_groups=8),
        unet=dict(
            out_channels=4,
            model_channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(2,),
            num_head_channels=32,
            num_classes=attributes.NUM_CLASSES,
            use_scale_shift_norm=True,
            resblock_updown=False,
            norm_groups=8,
        ),
    )


def _phantom_micro() -> dict:
    """``phantom_tiny``'s shapes with the fewest layers and channels (tests and smoke runs), so it
    compiles quickly."""
    preset = _phantom_tiny()
    preset["autoencoder"].update(ch_mult=(1, 1, 2), norm_groups=4)
    preset["discriminator"].update(ch=8, num_layers=1, norm_groups=4)
    preset["unet"].update(model_channels=16, channel_mult=(1, 2), num_head_channels=16, norm_groups=4)
    return preset


def _phantom128() -> dict:
    return dict(
        image_size=128,
        image_channels=1,
        latent_size=32,
        latent_channels=4,
        context_len=0,
        autoencoder=dict(
            in_channels=1,
            out_channels=1,
            ch=64,
            ch_mult=(1, 2, 4),
            num_res_blocks=2,
            z_channels=4,
            attn_mid=True,
            norm_groups=32,
            out_norm=False,
        ),
        discriminator=dict(ch=64, num_layers=3, norm_groups=32),
        unet=dict(
            out_channels=4,
            model_channels=128,
            channel_mult=(1, 2, 3),
            num_res_blocks=2,
            attention_resolutions=(2, 4),
            num_head_channels=32,
            num_classes=attributes.NUM_CLASSES,
            use_scale_shift_norm=True,
            resblock_updown=False,
            dropout=0.1,
            norm_groups=32,
        ),
    )


def _mammo256() -> dict:
    return dict(
        image_size=256,
        image_channels=1,
        latent_size=64,
        latent_channels=4,
        context_len=0,
        autoencoder=dict(
            in_channels=1,
            out_channels=1,
            ch=128,
            ch_mult=(1, 2, 4),
            num_res_blocks=2,
            z_channels=4,
            attn_mid=True,
            norm_groups=32,
            out_norm=False,
        ),
        discriminator=dict(ch=64, num_layers=3, norm_groups=32),
        unet=dict(
            out_channels=4,
            model_channels=160,
            channel_mult=(1, 2, 3, 4),
            num_res_blocks=2,
            attention_resolutions=(2, 4, 8),
            num_head_channels=32,
            num_classes=attributes.NUM_CLASSES,
            use_scale_shift_norm=True,
            resblock_updown=False,
            dropout=0.1,
            norm_groups=32,
        ),
    )


def _ldm64() -> dict:
    return dict(
        image_size=256,
        image_channels=3,
        latent_size=64,
        latent_channels=4,
        context_len=0,
        autoencoder=None,
        discriminator=None,
        unet=dict(
            out_channels=4,
            model_channels=224,
            channel_mult=(1, 2, 3, 4),
            num_res_blocks=2,
            attention_resolutions=(2, 4, 8),
            num_head_channels=32,
            num_classes=(16,),
            use_scale_shift_norm=False,
            resblock_updown=False,
            norm_groups=32,
        ),
    )


def _sd15() -> dict:
    return dict(
        image_size=512,
        image_channels=3,
        latent_size=64,
        latent_channels=4,
        context_len=77,
        autoencoder=dict(
            in_channels=3,
            out_channels=3,
            ch=128,
            ch_mult=(1, 2, 4, 4),
            num_res_blocks=2,
            z_channels=4,
            attn_mid=True,
            norm_groups=32,
        ),
        discriminator=None,
        unet=dict(
            out_channels=4,
            model_channels=320,
            channel_mult=(1, 2, 4, 4),
            num_res_blocks=2,
            attention_resolutions=(1, 2, 4),
            num_heads=8,
            context_dim=768,
            transformer_depth=1,
            use_scale_shift_norm=False,
            resblock_updown=False,
            norm_groups=32,
        ),
    )


_BUILDERS = {
    "phantom_tiny": _phantom_tiny,
    "phantom_micro": _phantom_micro,
    "phantom128": _phantom128,
    "mammo256": _mammo256,
    "ldm64": _ldm64,
    "sd15": _sd15,
}
PRESETS: tuple[str, ...] = tuple(_BUILDERS)


def get_preset(name: str) -> ml_collections.ConfigDict:
    """A fresh ConfigDict for preset ``name`` (one of ``PRESETS``)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {PRESETS}")
    return ml_collections.ConfigDict(_BUILDERS[name]())


def _kwargs(cfg, what: str) -> dict:
    if cfg is None:
        raise ValueError(f"this preset has no {what} (its config is None)")
    cfg = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def build_unet(cfg_unet, dtype=jnp.float32, **overrides) -> UNet:
    """``UNet`` from a preset's ``unet`` config; ``overrides`` (e.g. ``attention_impl``) win."""
    return UNet(**{**_kwargs(cfg_unet, "unet"), "dtype": dtype, **overrides})


def build_autoencoder(cfg_ae, dtype=jnp.float32, **overrides) -> AutoencoderKL:
    """``AutoencoderKL`` from a preset's ``autoencoder`` config."""
    return AutoencoderKL(**{**_kwargs(cfg_ae, "autoencoder"), "dtype": dtype, **overrides})


def build_discriminator(cfg_disc, dtype=jnp.float32, **overrides) -> PatchDiscriminator:
    """``PatchDiscriminator`` from a preset's ``discriminator`` config."""
    return PatchDiscriminator(**{**_kwargs(cfg_disc, "discriminator"), "dtype": dtype, **overrides})
