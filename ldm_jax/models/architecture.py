"""The networks of a run config: its architecture sections, filled from the named preset.

A run config (``ldm_jax.training.config``) names a preset in ``model`` and has one section per
network: ``unet``, ``autoencoder_net`` and ``discriminator_net`` (the ``_net`` suffix because
``autoencoder`` and ``diffusion`` are the training stages' optimizer/loss sections). A section
has every field of its module, unset (None) unless a config file or the command line sets it;
``resolve`` fills the unset fields from the preset, then from the module's defaults. So
``--config.model=`` and ``--config.unet.model_channels=`` combine in any order, and the
resolved config a run records is the whole architecture.

The ``counterfactual`` stage's section works the same way over ``diffusion``: a key it leaves unset
takes ``diffusion``'s value, and its UNet is ``unet`` with the fields its own ``counterfactual.unet``
sets (``stage_unet``), so the filter can be wider than the generative model it sits beside.

``data.image_size`` is the run's one image size (0: the preset's); the latent shape follows
from it and the autoencoder (``latent_shape``). ``resolve`` also completes configs saved
before the sections existed, which name only ``model``.
"""

from __future__ import annotations

import dataclasses
import typing

import ml_collections

from ldm_jax.models import presets
from ldm_jax.models.autoencoder import AutoencoderKL
from ldm_jax.models.discriminator import PatchDiscriminator
from ldm_jax.models.unet import UNet

# Config section -> (the preset's key, the module it configures).
SECTIONS = {
    "unet": ("unet", UNet),
    "autoencoder_net": ("autoencoder", AutoencoderKL),
    "discriminator_net": ("discriminator", PatchDiscriminator),
}
_BUILD_TIME = ("dtype", "attention_impl", "parent", "name")  # chosen when a module is built, not configured


def _fields(module) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(module) if f.name not in _BUILD_TIME]


def _unset(hint) -> ml_collections.FieldReference:
    """An unset field of the hinted type (``int | None`` → int)."""
    kinds = [t for t in typing.get_args(hint) if t is not type(None)]
    return ml_collections.config_dict.placeholder(kinds[0] if kinds else hint)


def unset_section(section: str) -> ml_collections.ConfigDict:
    """Architecture section ``section`` with every field of its module unset."""
    module = SECTIONS[section][1]
    hints = typing.get_type_hints(module)
    return ml_collections.ConfigDict({f.name: _unset(hints[f.name]) for f in _fields(module)})


def unset_sections() -> dict[str, ml_collections.ConfigDict]:
    """The architecture sections of ``default_config``: every module field, unset."""
    return {section: unset_section(section) for section in SECTIONS}


def _filled(section: str, given, model: str) -> dict:
    """Section ``section`` complete: ``given`` fields, else preset ``model``'s, else the module's defaults."""
    key, module = SECTIONS[section]
    preset = presets.get_preset(model)
    if preset[key] is None:
        raise ValueError(
            f"model preset {model!r} has no {key} (a benchmark-only shape); a run needs one "
            f"of the presets with an autoencoder and a discriminator"
        )
    values = {f.name: None if f.default is dataclasses.MISSING else f.default for f in _fields(module)}
    values.update(preset[key].to_dict())
    values.update({k: v for k, v in given.items() if v is not None})
    return _tuples(values)


def _tuples(fields: dict) -> dict:
    """Section fields with lists (as saved in JSON) turned back into tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def resolve(cfg) -> ml_collections.ConfigDict:
    """A locked copy of run config ``cfg`` (a ConfigDict or a saved dict) with every architecture
    field set and ``data.image_size`` > 0; raises ``ValueError`` when the parts do not fit."""
    cfg = ml_collections.ConfigDict(cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg)
    for section in SECTIONS:
        cfg[section] = _filled(section, cfg.get(section, {}), cfg.model)
    if "counterfactual" in cfg:  # diffusion's keys and unet, with what it sets (saved before it existed: none)
        for key, value in cfg.get("diffusion", {}).items():
            if cfg.counterfactual.get(key) is None:
                cfg.counterfactual[key] = value
        given = cfg.counterfactual.get("unet", {})
        cfg.counterfactual.unet = _tuples({**cfg.unet.to_dict(), **{k: v for k, v in given.items() if v is not None}})
    if "resize" not in cfg.data:  # saved before data.resize: a set image_size meant "resize to it"
        cfg.data.resize = bool(cfg.data.image_size)
    cfg.data.image_size = cfg.data.image_size or presets.get_preset(cfg.model).image_size
    ae = cfg.autoencoder_net
    factor = presets.build_autoencoder(ae).downsample_factor
    if cfg.data.image_size % factor:
        raise ValueError(
            f"data.image_size={cfg.data.image_size} is not divisible by the autoencoder's "
            f"downsampling factor {factor} (autoencoder_net.ch_mult={ae.ch_mult})"
        )
    if cfg.unet.pixel_stem:
        raise ValueError(
            f"unet.pixel_stem={cfg.unet.pixel_stem}: only the counterfactual stage's UNet reads a source "
            "image; set counterfactual.unet.pixel_stem"
        )
    unets = {"unet": cfg.unet}
    if "counterfactual" in cfg:
        unets["counterfactual.unet"] = cfg.counterfactual.unet
    for name, unet in unets.items():
        if unet.out_channels != ae.z_channels:
            raise ValueError(
                f"{name}.out_channels={unet.out_channels} must equal the latent channels "
                f"autoencoder_net.z_channels={ae.z_channels}"
            )
    cfg.lock()
    return cfg


def stage_unet(cfg, stage: str) -> ml_collections.ConfigDict:
    """The UNet section of resolved run config ``cfg`` that stage ``stage`` trains: ``counterfactual.unet``
    for the counterfactual stage, ``unet`` otherwise."""
    return cfg.counterfactual.unet if stage == "counterfactual" else cfg.unet


def image_shape(cfg) -> tuple[int, int, int]:
    """``(H, W, C)`` of the images of resolved run config ``cfg``."""
    return (cfg.data.image_size, cfg.data.image_size, cfg.autoencoder_net.in_channels)


def latent_shape(cfg) -> tuple[int, int, int]:
    """``(h, w, c)`` of its latents: the image size over the autoencoder's factor, ``z_channels`` deep."""
    size = cfg.data.image_size // presets.build_autoencoder(cfg.autoencoder_net).downsample_factor
    return (size, size, cfg.autoencoder_net.z_channels)


def source_channels(cfg) -> int:
    """Channels of what the ``counterfactual`` stage's UNet sees of its source image
    (``generate.source_features``): the latent's c, plus the image's C channels folded f×f."""
    (h, _, c), (size, _, channels) = latent_shape(cfg), image_shape(cfg)
    return c + (size // h) ** 2 * channels
