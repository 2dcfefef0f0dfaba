"""Train a latent diffusion model: autoencoder stage, then diffusion stage.

    python train.py --config configs/phantom_tiny.py --workdir runs/tiny [--config.diffusion.steps=2000]

--config.KEY=VALUE overrides any key of the (locked) config file; a key it lacks, or a value of
another type, is an error. Re-running the same command resumes from the newest complete
checkpoint in --workdir. On SIGTERM (to any process of a multi-process job) every process saves
the same step and exits with status 75 (EX_TEMPFAIL: run the same command again).
"""

from __future__ import annotations

import dataclasses
import sys

from ldm_jax import cli

EXIT_PREEMPTED = 75


@dataclasses.dataclass
class Args:
    config: str = cli.flag(help="ml_collections config file (its get_config()); --config.KEY=VALUE overrides a key")
    workdir: str = cli.flag(help="directory for checkpoints, logs and samples")


def main(argv=None) -> int:
    argv, overrides = cli.split_overrides(sys.argv[1:] if argv is None else argv)
    parser = cli.Parser(__doc__, "train.py").add_options(Args)

    def program(args: Args) -> int:
        cfg = cli.load_config(args.config, overrides)
        from absl import logging

        from ldm_jax.data.pipeline import IteratorMismatchError
        from ldm_jax.training.loop import Preempted, ProcessLostError
        from ldm_jax.training.run import train

        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; the progress bar says enough
        try:
            train(cfg, args.workdir)
        except Preempted as stopped:
            print(f"train.py: {stopped}", file=sys.stderr)
            return EXIT_PREEMPTED
        except (ProcessLostError, IteratorMismatchError) as error:
            return parser.fail(error, 1)
        return 0

    return cli.run(parser, program, argv, compilation_cache=True)


if __name__ == "__main__":
    sys.exit(main())
