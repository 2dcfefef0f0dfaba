"""Batch sampling and counterfactual editing with a trained ldm_jax model.

Generate N mammograms (deterministic per image; shardable over jobs with --shard; a
restarted job skips finished files):

    python sample.py --workdir runs/demo --out samples --num 1000 --batch 32 \\
        --sampler ddim --steps 50 --guidance 3.0 --condition density=D,finding=mass

Edit images toward another condition (the dense-tissue filter):

    python sample.py --workdir runs/demo --out edited --edit-input scans/ --edit-from density=D \\
        --edit-to density=A --edit-strength 0.6 --edit-method sdedit

See README.md ("Sampling") for the conditions, formats and the output folder layout.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

from ldm_jax import cli
from ldm_jax.diffusion.samplers import SAMPLERS
from ldm_jax.sampling.generate import EDITS, GUIDED_ATTRIBUTES


@dataclasses.dataclass
class Options:
    workdir: str = cli.flag(help="training run folder (with diffusion/checkpoints)")
    out: str = cli.flag(help="output folder")
    num: int | None = cli.flag(None, "number of images to generate (not with --edit-input)")
    batch: int = cli.flag(0, "global batch size, a multiple of the device count (0: 4 per device)")
    sampler: str = cli.flag("ddim", "dpmpp is dpmpp_2m", choices=tuple(SAMPLERS))
    steps: int = cli.flag(50, "denoising steps")
    eta: float = cli.flag(0.0, "DDIM noise (0: deterministic; ddim only)")
    guidance: float = cli.flag(3.0, "classifier-free guidance scale (1: none)")
    condition: str = cli.flag(
        "random",
        "e.g. density=D,finding=mass; a ;-separated list cycled over images; "
        "'random' (draws from the training label distribution); or 'unconditional'",
    )
    format: str = cli.flag("png16", "image file format", choices=("png16", "png8", "npz", "dicom"))
    shard: str = cli.flag("0/1", "k/n: do the k-th of n contiguous blocks of images")
    ema: bool = cli.flag(True, "use the EMA weights")
    seed: int = cli.flag(0, "root seed; image i's noise is fold_in(seed, i)")
    progress: bool = cli.flag(True, "show a progress bar")

    def __post_init__(self):
        if self.num is not None and self.num < 1:
            raise ValueError(f"--num must be >= 1, got {self.num}")
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.eta and not SAMPLERS[self.sampler].eta:
            raise ValueError(f"--eta does not apply to the {self.sampler} sampler")


@dataclasses.dataclass
class EditOptions:
    edit_input: str | None = cli.flag(None, "a PNG/DICOM file or a folder of them to edit")
    edit_to: str | None = cli.flag(None, "target condition, e.g. density=A")
    edit_from: str = cli.flag("unconditional", "condition of the inputs (used by ddim-inversion), e.g. density=D")
    edit_strength: float = cli.flag(0.6, "fraction of the denoising steps redone (0: reconstruction only, 1: all)")
    edit_method: str = cli.flag("sdedit", "how the inputs are taken to noise", choices=tuple(EDITS))
    edit_guide: str = cli.flag(
        "all",
        "guidance's unconditional branch: all labels null, or only the density (the other attributes held)",
        choices=GUIDED_ATTRIBUTES,
    )
    edit_keep_detail: bool = cli.flag(
        False,
        "return each edit as its change to the input, x + D(z_edit) - D(E(x)): what the autoencoder cannot "
        "represent (fine texture, calcifications, a faint mass's edge) is kept",
    )

    def __post_init__(self):
        counterfactual = self.edit_method == "counterfactual"
        if self.edit_input is not None and not self.edit_to and not counterfactual:
            raise ValueError("--edit-input needs --edit-to (the target condition)")
        if counterfactual and self.edit_to:
            raise ValueError(
                "--edit-method counterfactual has no --edit-to: its target is the fat-only breast of the pairs "
                "it was trained on; --edit-from gives what is known of the inputs"
            )
        if self.edit_input is None and self.edit_to:
            raise ValueError("--edit-to needs --edit-input")
        if not 0 <= self.edit_strength <= 1:
            raise ValueError(f"--edit-strength must be in [0, 1], got {self.edit_strength}")


def parser() -> cli.Parser:
    return cli.Parser(__doc__, "sample.py").add_options(Options).add_options(EditOptions, "editing")


def sample(options: Options, edit: EditOptions) -> int:
    """Check that the options ask for one job (generation or editing), then run it."""
    if edit.edit_input is not None and options.num is not None:
        raise ValueError("--num is for generation; editing makes one image per input")
    if edit.edit_input is None and options.num is None:
        raise ValueError("give --num (images to generate) or --edit-input (images to edit)")
    from ldm_jax.sampling import cli as sampling_cli

    summary = sampling_cli.run(options, edit)
    print(f"{pathlib.Path(options.out)}: {summary.line()}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    return cli.run(parser(), sample, argv, compilation_cache=True)


if __name__ == "__main__":
    sys.exit(main())
