"""Train a latent diffusion model: autoencoder stage, then diffusion stage.

    python train.py --config configs/phantom_tiny.py --workdir runs/tiny [--config.diffusion.steps=2000]

Re-running the same command resumes from the newest complete checkpoint in --workdir.
On SIGTERM (to any process of a multi-process job) every process saves the same step and
exits with status 75 (EX_TEMPFAIL: run the same command again).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.mark_flags_as_required(["config", "workdir"])
EXIT_PREEMPTED = 75


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; the progress bar says enough
    from ldm_jax.data.pipeline import IteratorMismatchError
    from ldm_jax.training.loop import Preempted, ProcessLostError
    from ldm_jax.training.run import train

    try:
        train(_CONFIG.value, _WORKDIR.value)
    except Preempted as stopped:
        print(f"train.py: {stopped}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (ProcessLostError, IteratorMismatchError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
