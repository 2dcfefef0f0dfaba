"""Batch sampling and counterfactual editing with a trained ldm_jax model.

Generate N mammograms (deterministic per image; shardable over jobs with --shard; a
restarted job skips finished files):

    python sample.py --workdir runs/demo --out samples --num 1000 --batch 32 \\
        --sampler ddim --steps 50 --guidance 3.0 --condition density=D,finding=mass

Edit images toward another condition (the dense-tissue filter):

    python sample.py --workdir runs/demo --out edited --edit-input scans/ --edit-from density=D \\
        --edit-to density=A --strength 0.6 --method sdedit

See README.md ("Sampling") for the conditions, formats and the output folder layout.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from ldm_jax.diffusion.samplers import SAMPLERS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="training run folder (with diffusion/checkpoints)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num", type=int, help="number of images to generate (not with --edit-input)")
    p.add_argument("--batch", type=int, default=0, help="global batch size; a multiple of the device count "
                   "(default: 4 per device)")
    p.add_argument("--sampler", choices=tuple(SAMPLERS), default="ddim", help="dpmpp is dpmpp_2m")
    p.add_argument("--steps", type=int, default=50, help="denoising steps")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0: deterministic; ddim only)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1: none)")
    p.add_argument("--condition", default="random",
                   help="e.g. density=D,finding=mass; a ;-separated list cycled over images; 'random' "
                        "(draws from the training label distribution); or 'unconditional'")
    p.add_argument("--format", choices=("png16", "png8", "npz", "dicom"), default="png16")
    p.add_argument("--shard", default="0/1", help="k/n: do the k-th of n contiguous blocks of images")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="use the EMA weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    edit = p.add_argument_group("editing")
    edit.add_argument("--edit-input", help="a PNG/DICOM file or a folder of them to edit")
    edit.add_argument("--edit-to", help="target condition, e.g. density=A")
    edit.add_argument("--edit-from", default="unconditional",
                      help="condition of the inputs (used by ddim-inversion), e.g. density=D")
    edit.add_argument("--strength", type=float, default=0.6,
                      help="fraction of the denoising steps redone (0: reconstruction only, 1: all)")
    edit.add_argument("--method", choices=("sdedit", "ddim-inversion"), default="sdedit")
    return p


def _check_args(args, parser) -> None:
    editing = args.edit_input is not None
    if editing and args.num is not None:
        parser.error("--num is for generation; editing makes one image per input")
    if not editing and args.num is None:
        parser.error("give --num (images to generate) or --edit-input (images to edit)")
    if editing and not args.edit_to:
        parser.error("--edit-input needs --edit-to (the target condition)")
    if not editing and args.edit_to:
        parser.error("--edit-to needs --edit-input")
    if args.num is not None and args.num < 1:
        parser.error(f"--num must be >= 1, got {args.num}")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if not 0 <= args.strength <= 1:
        parser.error(f"--strength must be in [0, 1], got {args.strength}")
    if args.eta and not SAMPLERS[args.sampler].eta:
        parser.error(f"--eta does not apply to the {args.sampler} sampler")


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check_args(args, parser)
    from ldm_jax.sampling import cli

    try:
        summary = cli.run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"sample.py: error: {e}", file=sys.stderr)
        return 2
    print(f"{pathlib.Path(args.out)}: {summary.line()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
