"""Evaluate a trained ldm_jax run: reconstruction, generation, conditioning, dense-tissue
removal and a memorization audit, written to ``<workdir>/eval/metrics.json`` and a
self-contained ``<workdir>/eval/report.html``.

    python evaluate.py --workdir runs/demo [--num 128] [--steps 50] [--guidance 3.0]
        [--inception-weights pt_inception-2015-12-05-6726825d.pth]
    python evaluate.py --workdir runs/demo --headline   # the demo's few numbers, in a minute

See README.md ("Evaluation") for what each number means.
"""

from __future__ import annotations

import dataclasses
import sys

from ldm_jax import cli
from ldm_jax.evaluation.options import Options


@dataclasses.dataclass
class Run:
    workdir: str = cli.flag(help="training run folder")
    out: str | None = cli.flag(None, "output folder (default <workdir>/eval)")
    headline: bool = cli.flag(
        False,
        "only the numbers README's demo table lists (reconstruction PSNR, grey and "
        "density accuracy of samples per density), printed and written to "
        "<out>/headline.json",
    )


def parser() -> cli.Parser:
    return cli.Parser(__doc__, "evaluate.py").add_options(Run).add_options(Options, "evaluation")


def evaluate(run: Run, options: Options) -> None:
    if run.headline:
        from ldm_jax.evaluation.headline import format_headline, headline

        print(format_headline(headline(run.workdir, options, run.out)))
    else:
        from ldm_jax.evaluation.run import evaluate as evaluate_run

        evaluate_run(run.workdir, options, run.out)


def main(argv=None) -> int:
    return cli.run(parser(), evaluate, argv, compilation_cache=True)


if __name__ == "__main__":
    sys.exit(main())
