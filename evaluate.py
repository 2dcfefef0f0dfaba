"""Evaluate a trained ldm_jax run: reconstruction, generation, conditioning, dense-tissue
removal and a memorization audit, written to ``<workdir>/eval/metrics.json`` and a
self-contained ``<workdir>/eval/report.html``.

    python evaluate.py --workdir runs/demo [--num 128] [--steps 50] [--guidance 3.0]
        [--inception-weights pt_inception-2015-12-05-6726825d.pth]
    python evaluate.py --workdir runs/demo --headline   # the demo's few numbers, in a minute

See README.md ("Evaluation") for what each number means.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys


def main(argv=None) -> int:
    from ldm_jax.evaluation.run import Options, evaluate

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="training run folder")
    p.add_argument("--out", help="output folder (default <workdir>/eval)")
    p.add_argument("--headline", action="store_true",
                   help="only the numbers README's demo table lists (reconstruction PSNR, grey and density "
                        "accuracy of samples per density), printed and written to <out>/headline.json")
    for field in dataclasses.fields(Options):
        flag = "--" + field.name.replace("_", "-")
        p.add_argument(flag, type=type(field.default), default=field.default, help=f"default {field.default!r}")
    args = p.parse_args(argv)
    options = Options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Options)})
    try:
        if args.headline:
            from ldm_jax.evaluation.headline import format_headline, headline

            print(format_headline(headline(args.workdir, options, args.out)))
        else:
            evaluate(args.workdir, options, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
