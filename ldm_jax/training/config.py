"""The training configuration: every key a run reads, with defaults; config files override them.

``configs/*.py`` files call ``default_config()`` and change what their experiment needs;
the result is locked, so a misspelled key (in a file or on the command line) is an error.
``model`` names the preset that fills the architecture sections ``unet``, ``autoencoder_net``
and ``discriminator_net`` wherever a field is left unset (``ldm_jax.models.architecture``).
"""

from __future__ import annotations

import ml_collections

from ldm_jax.models import architecture

STAGES = ("autoencoder", "diffusion", "counterfactual")


def _optimizer(**overrides) -> dict:
    cfg = dict(
        steps=1000,
        batch_size=16,
        learning_rate=1e-4,
        lr_schedule="constant",
        warmup_steps=100,
        b1=0.9,
        b2=0.999,
        weight_decay=0.0,
        grad_clip=1.0,
    )
    cfg.update(overrides)
    return cfg


def _diffusion() -> dict:
    """The settings of a UNet stage (``diffusion``, ``counterfactual``)."""
    return _optimizer(
        learning_rate=1e-4,
        warmup_steps=500,
        lr_schedule="constant",
        weight_decay=0.0,
        accum_steps=1,  # gradient accumulation: micro-batches per update
        schedule="scaled_linear",
        num_train_timesteps=1000,
        beta_start=0.0015,
        beta_end=0.0195,
        zero_terminal_snr=False,
        prediction="eps",  # model output: eps | x0 | v
        weighting="min_snr",  # uniform | min_snr
        min_snr_gamma=5.0,
        loss_type="l2",
        # Loss weight of latent pixels inside the data set's lesion masks (mammo_phantoms stores
        # them), over 1 elsewhere: 1 is the plain loss. Masses are 1-2 of 256 latent pixels at 64×64.
        lesion_weight=1.0,
        # Classifier-free guidance (diffusion_step.drop_labels): rows trained unconditional,
        # rows with one attribute given, and per-attribute dropout on the other rows.
        uncond_dropout=0.1,
        single_attribute_rate=0.2,
        label_dropout=0.1,
        ema_decay=0.9999,
        ema_warmup=10.0,
        scale_factor_batches=4,  # batches used to estimate 1/std of the latents
        autoencoder_checkpoint="",  # "" → <workdir>/autoencoder/checkpoints (latest step)
    )


def ranking_settings() -> dict:
    """The counterfactual stage's own keys: its ranking term (training/lesion_ranking.py)."""
    return dict(
        rank_pairs=0,  # matched dense mass pairs added to each batch (0: no ranking term)
        rank_weight=1.0,  # the term's weight
        rank_temperature=0.05,  # τ, in units of the reader's contrast ([-1, 1] image range)
        rank_min_t=0.5,  # the least t of the pairs, as a fraction of T
        rank_map_weight=0.0,  # the same ranking on the pixel stem's evidence map (unet.pixel_stem > 0)
    )


def counterfactual_section() -> ml_collections.ConfigDict:
    """The ``counterfactual`` stage's section: every UNet-stage key unset (it takes ``diffusion``'s
    value, ``architecture.resolve``) unless set, its ranking keys, and the fields of its ``unet``
    that differ from ``cfg.unet``."""
    unset = {key: ml_collections.config_dict.placeholder(type(value)) for key, value in _diffusion().items()}
    return ml_collections.ConfigDict({**unset, **ranking_settings(), "unet": architecture.unset_section("unet")})


def default_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.model = "phantom_tiny"  # preset in ldm_jax.models.presets: the defaults of the sections below
    # The networks: every field of UNet / AutoencoderKL / PatchDiscriminator, unset (None) = the
    # preset's value, e.g. --config.unet.model_channels=48. "_net": cfg.autoencoder is the stage.
    cfg.update(architecture.unset_sections())
    cfg.stages = "autoencoder,diffusion"  # comma-separated subset of STAGES, in this order
    cfg.seed = 0
    cfg.compute_dtype = "float32"  # "bfloat16" on accelerators; params stay float32
    cfg.mesh = ml_collections.ConfigDict(
        dict(
            fsdp=1,  # devices per group that split the large arrays (1: all replicated)
            fsdp_min_size=2**18,  # arrays with fewer elements stay replicated
        )
    )
    cfg.max_nonfinite_steps = 20  # stop after this many non-finite updates in a row

    cfg.data = ml_collections.ConfigDict(
        dict(
            dataset="mammo_phantoms",  # a TFDS name: mammo_phantoms, mammo_dicom, or any prepared one
            config="64",  # the builder config (resolution)
            data_dir="",  # "" → <workdir>/data
            split="train",
            build_if_missing=True,  # build mammo_phantoms on first use (DICOM data sets are built by hand)
            num_records=0,  # mammo_phantoms only: train-split size to build (0 = config default)
            image_size=0,  # the run's image size; 0 = the preset's. Must be the stored size unless resize
            resize=False,  # resize (pad to square, then scale) the stored images to image_size
            worker_count=0,  # grain worker processes (0 = in the main process)
            reset_iterator=False,  # on resume: read the data from the start of a fresh order
        )
    )

    cfg.autoencoder = ml_collections.ConfigDict(
        _optimizer(
            learning_rate=4.5e-6 * 16,
            b1=0.5,
            b2=0.9,
            warmup_steps=0,
            l1_weight=1.0,  # reconstruction: L1, summed over pixels (LDM convention)
            ssim_weight=0.5,  # + weight · (1 − SSIM) per pixel
            ssim_kind="ssim",  # "ssim" or "ms_ssim"
            freq_weight=0.0,  # + weight · |FFT(x) − FFT(x̂)| (log-amplitude), per pixel
            kl_weight=1e-6,
            gan_start=50001,  # step at which the PatchGAN term switches on
            gan_weight=0.5,  # times LDM's adaptive weight
            gan_loss="hinge",  # "hinge" or "least_squares"
            disc_learning_rate=4.5e-6 * 16,
            lpips_weights="",  # "vgg16-397923af.pth,vgg.pth" (local files) or one merged file; "" = none
            lpips_weight=1.0,
        )
    )

    cfg.diffusion = ml_collections.ConfigDict(_diffusion())
    # The supervised dense-tissue filter (stage "counterfactual", not in the default stages): a UNet
    # trained on (image → fat-only counterfactual) latent pairs of mammo_phantoms, seeing the
    # source image beside the noisy latent (training/counterfactual_step.py). The keys of diffusion
    # that it sets differently (the rest are diffusion's), its ranking term's keys, and the fields
    # of cfg.unet that its UNet sets differently, e.g. --config.counterfactual.steps=4000
    # --config.counterfactual.unet.model_channels=64 (architecture.resolve).
    cfg.counterfactual = counterfactual_section()

    # restore_step: 0 = resume from the newest intact checkpoint; N = from step N (newer ones are moved
    # aside as <step>.superseded; with one stage in `stages`).
    cfg.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=3, async_save=True, restore_step=0))
    cfg.log = ml_collections.ConfigDict(
        dict(
            every=50,  # scalars to metrics.jsonl / TensorBoard
            sample_every=1000,  # sample grids (0 = only at the end of the stage)
            sample_conditions="density=A;density=B;density=C;density=D",  # one grid per condition; "" = none
            sample_count=8,  # images per grid
            sample_steps=50,  # DDIM steps for the grids
            guidance_scale=2.0,
            progress=True,  # tqdm progress bar
        )
    )
    return cfg


# Keys that may differ when a run is resumed (they do not change what has been trained so far):
# a run may continue on another topology (mesh) and with other data workers.
RESUMABLE_KEYS = (
    "autoencoder.steps",
    "diffusion.steps",
    "counterfactual.steps",
    "checkpoint.",
    "log.",
    "mesh.",
    "data.worker_count",
    "data.data_dir",
    "data.reset_iterator",
    "stages",
    "max_nonfinite_steps",
)


def stages_of(cfg) -> tuple[str, ...]:
    stages = tuple(s.strip() for s in cfg.stages.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages or list(stages) != sorted(stages, key=STAGES.index):
        raise ValueError(f"stages={cfg.stages!r}: expected a comma-separated, ordered subset of {STAGES}")
    return stages


def with_defaults(saved: dict, defaults: dict | None = None) -> dict:
    """``saved`` (a run's config dict) with every key it lacks taken from ``defaults`` (the current
    ``default_config``), so that a setting added after the run was saved defaults to the old
    behaviour, and without the keys ``defaults`` no longer has (``diffusion.rank_*`` until 2026-12-07)."""
    defaults = default_config().to_dict() if defaults is None else defaults
    merged = {key: value for key, value in saved.items() if key in defaults}  # a key removed since: gone
    for key, value in defaults.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = with_defaults(merged[key], value)
    return merged


def incompatible_keys(saved: dict, current: dict, prefix: str = "", untrained: tuple[str, ...] = ()) -> list[str]:
    """Flattened keys whose values differ between two config dicts, except ``RESUMABLE_KEYS`` and the
    sections of ``untrained`` stages (no checkpoint yet: nothing was trained under them)."""
    free = RESUMABLE_KEYS + tuple(f"{stage}." for stage in untrained) + tuple(untrained)
    diffs = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += incompatible_keys(a, b, name + ".", untrained)
        elif a != b and not any(name == k or (k.endswith(".") and name.startswith(k)) for k in free):
            diffs.append(f"{name}: saved {a!r}, now {b!r}")
    return diffs
