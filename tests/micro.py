"""The smallest training config, shared by the training, sampling and scale-out tests,
and the XLA setting the whole suite runs under."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The suite compiles far more than it runs: XLA's backend (LLVM) optimisation off cuts
# compile times by about 40% on the CPU and changes results only at float32 round-off.
FAST_COMPILE = "--xla_backend_optimization_level=0"

MICRO_OVERRIDES = {
    "model": "phantom_micro",
    "data.num_records": 64,
    "autoencoder.steps": 4,
    "autoencoder.batch_size": 8,
    "autoencoder.gan_start": 2,
    "diffusion.steps": 4,
    "diffusion.batch_size": 8,
    "diffusion.warmup_steps": 2,
    "diffusion.scale_factor_batches": 1,
    "counterfactual.steps": 4,  # trained by the trained_filter fixture only (stages)
    "counterfactual.batch_size": 8,
    "counterfactual.warmup_steps": 2,
    "counterfactual.scale_factor_batches": 1,
    "counterfactual.prediction": "x0",  # configs/phantom_filter.py's loss: x0, uniform, lesions 20×
    "counterfactual.weighting": "uniform",
    "counterfactual.lesion_weight": 20.0,
    "counterfactual.rank_pairs": 8,  # and its ranking term, one matched mass pair per device
    "counterfactual.unet.model_channels": 32,  # a filter wider than the diffusion UNet (16)
    "counterfactual.unet.pixel_stem": 4,  # that reads its source at pixel resolution
    "counterfactual.rank_map_weight": 1.0,  # its stem's evidence map ranked too
    "checkpoint.every": 2,
    "log.every": 1,
    "log.sample_count": 2,
    "log.sample_steps": 3,
    "log.sample_conditions": "density=A;density=D",
    "log.progress": False,
}

FSDP_SPLIT = {"mesh.fsdp": 2, "mesh.fsdp_min_size": 256}  # micro arrays are small: split them anyway


def train_args(workdir, **overrides) -> list[str]:
    """``train.py`` arguments for the micro config in ``workdir``, with ``overrides``."""
    settings = {**MICRO_OVERRIDES, **overrides}
    return [
        "train.py",
        "--config",
        "configs/phantom_tiny.py",
        "--workdir",
        str(workdir),
        *[f"--config.{k}={v}" for k, v in settings.items()],
    ]


def micro_config():
    """``configs/phantom_tiny.py`` with ``MICRO_OVERRIDES``: ``phantom_micro`` on 64 phantoms, a few steps."""
    spec = importlib.util.spec_from_file_location("phantom_tiny", ROOT / "configs" / "phantom_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    for key, value in MICRO_OVERRIDES.items():
        *parents, leaf = key.split(".")
        node = cfg
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg
