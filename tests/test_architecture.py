"""The architecture sections of the run config: filled from the preset, overridable, checked."""

import json

import pytest

from ldm_jax.models import architecture, presets
from ldm_jax.training.config import default_config


def test_unset_sections_are_the_presets_networks():
    cfg = default_config()
    assert cfg.model == "phantom_tiny" and cfg.unet.model_channels is None and cfg.data.image_size == 0
    resolved = architecture.resolve(cfg)
    preset = presets.get_preset("phantom_tiny")
    assert presets.build_unet(resolved.unet) == presets.build_unet(preset.unet)
    assert presets.build_autoencoder(resolved.autoencoder_net) == presets.build_autoencoder(preset.autoencoder)
    assert presets.build_discriminator(resolved.discriminator_net) == presets.build_discriminator(preset.discriminator)
    assert resolved.data.image_size == 64 and not resolved.data.resize
    assert architecture.image_shape(resolved) == (64, 64, 1) and architecture.latent_shape(resolved) == (16, 16, 4)
    with pytest.raises(AttributeError):
        resolved.unet.model_chanels = 8  # locked: a typo is an error


def test_a_set_field_wins_whichever_preset_is_named_after_it():
    cfg = default_config()
    cfg.unet.model_channels = 48
    cfg.autoencoder_net.z_channels = 8
    cfg.unet.out_channels = 8
    cfg.model = "phantom_micro"  # as --config.model= after the file: the micro networks, with the fields set
    resolved = architecture.resolve(cfg)
    assert resolved.unet.model_channels == 48 and resolved.unet.channel_mult == (1, 2)
    assert resolved.autoencoder_net.ch_mult == (1, 1, 2) and architecture.latent_shape(resolved) == (16, 16, 8)
    assert resolved.unet.dropout == 0.0  # a field the preset leaves out: the module's default


def test_the_counterfactual_unet_is_the_unet_with_the_fields_it_sets():
    cfg = default_config()
    cfg.unet.model_channels = 48
    cfg.counterfactual.unet.num_res_blocks = 3
    resolved = architecture.resolve(cfg)
    filter_unet = architecture.stage_unet(resolved, "counterfactual")
    assert filter_unet.model_channels == 48 and filter_unet.num_res_blocks == 3
    assert architecture.stage_unet(resolved, "diffusion") == resolved.unet and resolved.unet.num_res_blocks != 3
    assert filter_unet.channel_mult == resolved.unet.channel_mult  # a tuple either way
    saved = resolved.to_dict()
    del saved["counterfactual"]["unet"]  # a run saved before the stage had its own UNet
    assert architecture.resolve(saved).counterfactual.unet == architecture.resolve(saved).unet
    cfg.counterfactual.unet.out_channels = 8
    with pytest.raises(ValueError, match="counterfactual.unet.out_channels=8"):
        architecture.resolve(cfg)


def test_only_the_filter_reads_its_source_at_pixel_resolution():
    cfg = default_config()
    cfg.counterfactual.unet.pixel_stem = 16
    resolved = architecture.resolve(cfg)
    assert resolved.counterfactual.unet.pixel_stem == 16 and resolved.unet.pixel_stem == 0
    saved = resolved.to_dict()
    for section in (saved["unet"], saved["counterfactual"]["unet"]):  # saved before the stem existed
        del section["pixel_stem"]
    assert architecture.resolve(saved).counterfactual.unet.pixel_stem == 0
    cfg.unet.pixel_stem = 16
    with pytest.raises(ValueError, match="unet.pixel_stem=16: only the counterfactual stage's UNet"):
        architecture.resolve(cfg)


@pytest.mark.parametrize("name", ["phantom_tiny", "phantom_micro", "phantom128", "mammo256"])
def test_latent_shape_follows_from_the_image_size_and_autoencoder(name):
    cfg = default_config()
    cfg.model = name
    resolved = architecture.resolve(cfg)
    preset = presets.get_preset(name)
    assert architecture.latent_shape(resolved) == (preset.latent_size, preset.latent_size, preset.latent_channels)
    cfg.data.image_size = 2 * preset.image_size
    assert architecture.latent_shape(architecture.resolve(cfg))[:2] == (2 * preset.latent_size,) * 2


def test_parts_that_do_not_fit_are_refused():
    cfg = default_config()
    cfg.data.image_size = 66
    with pytest.raises(ValueError, match=r"data.image_size=66 is not divisible .* factor 4"):
        architecture.resolve(cfg)
    cfg = default_config()
    cfg.autoencoder_net.z_channels = 8
    with pytest.raises(ValueError, match=r"unet.out_channels=4 must equal .* autoencoder_net.z_channels=8"):
        architecture.resolve(cfg)
    cfg = default_config()
    cfg.model = "ldm64"
    with pytest.raises(ValueError, match="'ldm64' has no autoencoder"):
        architecture.resolve(cfg)


def test_config_saved_before_the_sections_resolves_as_its_preset():
    saved = json.loads(json.dumps(architecture.resolve(default_config()).to_dict()))
    assert architecture.resolve(saved).to_dict() == architecture.resolve(default_config()).to_dict()
    for section in architecture.SECTIONS:
        del saved[section]
    del saved["data"]["resize"]
    saved["data"]["image_size"] = 0
    assert architecture.resolve(saved).to_dict() == architecture.resolve(default_config()).to_dict()
    saved["data"]["image_size"] = 128  # then, a set image size resized the stored images
    assert architecture.resolve(saved).data.resize
