"""Write explain.html: an interactive page that explains latent diffusion on mammograms with
figures this code computes at build time (self-contained: no server, no network).

    python explain.py --workdir runs/demo          # every section, from a trained run
    python explain.py                               # the forward-process sections, on phantoms
    python explain.py --workdir runs/demo --image mammogram.dcm --screenshots

See README.md ("The explainer page").
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

from ldm_jax import cli
from ldm_jax.explain.page import Options


@dataclasses.dataclass
class Run:
    workdir: str = cli.flag("", "training run folder (none: only the sections that need no model are computed)")
    out: str | None = cli.flag(None, "the page's path (default <workdir>/explain.html, or ./explain.html)")
    screenshots: bool = cli.flag(
        False, "open the page in headless Chromium, move its sliders and save one PNG per section beside it"
    )

    def __post_init__(self):
        if self.workdir and not pathlib.Path(self.workdir).is_dir():
            raise FileNotFoundError(f"workdir {self.workdir} is not a folder")


def parser() -> cli.Parser:
    return cli.Parser(__doc__, "explain.py").add_options(Run).add_options(Options, "page")


def explain(run: Run, options: Options) -> None:
    from ldm_jax.explain.page import build

    path = build(run.workdir or None, options, run.out)
    if run.screenshots:
        from ldm_jax.explain.browser import screenshot_sections

        for shot in screenshot_sections(path, path.parent / f"{path.stem}_screenshots"):
            print(shot)


def main(argv=None) -> int:
    return cli.run(parser(), explain, argv, compilation_cache=True)


if __name__ == "__main__":
    sys.exit(main())
