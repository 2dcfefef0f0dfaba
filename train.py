"""Train a latent diffusion model: autoencoder stage, then diffusion stage.

    python train.py --config configs/phantom_tiny.py --workdir runs/tiny [--config.diffusion.steps=2000]

Re-running the same command resumes from the newest complete checkpoint in --workdir.
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; the progress bar says enough
    from ldm_jax.training.run import train

    train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
