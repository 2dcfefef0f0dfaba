"""Run the `make demo` recipe with several seeds and check each against the floors it must meet.

    .venv/bin/python benchmarks/demo_seeds.py [--seeds 0 1 2] [--root runs/demo_seeds]
        [--config configs/phantom_tiny.py]
        [--config.KEY=VALUE ..., passed to train.py, e.g. --config.autoencoder.learning_rate=2e-3]

Each seed trains both stages with ``train.py`` (one phantom data set shared by all seeds:
its contents do not depend on the seed), then ``evaluate.py --headline`` measures it with
one phantom classifier trained once for all seeds; both run as their own processes, as a
user runs them. Floors (issue 17): held-out
reconstruction PSNR ≥ 24 dB, density accuracy of ``density=X`` samples ≥ 50%, and a mean grey
that rises from A to D. Writes ``<root>/seeds.json`` and prints a table with mean and range;
exits 1 when a seed misses a floor. A seed whose run is complete is measured, not retrained.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ldm_jax import cli  # noqa: E402 (after the path)

PSNR_FLOOR_DB = 24.0
ACCURACY_FLOOR = 0.5


def floors_missed(result: dict) -> list[str]:
    """The floors one seed's headline numbers miss (empty when it meets them all)."""
    missed = []
    if result["reconstruction_psnr"] < PSNR_FLOOR_DB:
        missed.append(f"reconstruction PSNR {result['reconstruction_psnr']:.2f} dB < {PSNR_FLOOR_DB}")
    if result["density_accuracy"] < ACCURACY_FLOOR:
        missed.append(f"density accuracy {result['density_accuracy']:.1%} < {ACCURACY_FLOOR:.0%}")
    grey = result["grey_by_density"]["samples"]
    if not all(a < b for a, b in zip(grey, grey[1:])):
        missed.append("mean grey does not rise from A to D: " + " / ".join(f"{g:.1f}" for g in grey))
    return missed


def _run(command: list[str], log_path: pathlib.Path) -> float:
    """Run one CLI with its output in ``log_path``; the seconds it took."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        subprocess.run([sys.executable, *command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def _spread(values) -> str:
    return f"{sum(values) / len(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


@dataclasses.dataclass
class Options:
    seeds: list[int] = cli.flag([0, 1, 2], "the seeds to run")
    root: str = cli.flag("runs/demo_seeds", "one workdir per seed under it")
    config: str = cli.flag("configs/phantom_tiny.py", "train.py's config file; --config.KEY=VALUE overrides a key")


def main(argv=None) -> int:
    argv, overrides = cli.split_overrides(sys.argv[1:] if argv is None else argv)
    extra = [f"--config.{key}={value}" for key, value in overrides]
    return cli.run(cli.Parser(__doc__, "demo_seeds.py").add_options(Options), lambda args: run(args, extra), argv)


def run(args: Options, extra: list[str]) -> int:
    """Train and measure every seed, print the table; 1 when a seed misses a floor."""
    import jax

    from ldm_jax.evaluation import classifier as clf

    root = pathlib.Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    classifier_file = root / "phantom_classifier.msgpack"
    rows = []
    for seed in args.seeds:
        workdir = root / f"seed{seed}"
        workdir.mkdir(exist_ok=True)
        seconds = None
        if not (workdir / "eval" / "headline.json").exists():
            print(f"[demo_seeds] seed {seed}: training {workdir}", flush=True)
            seconds = _run(
                [
                    "train.py",
                    "--config",
                    args.config,
                    "--workdir",
                    str(workdir),
                    f"--config.seed={seed}",
                    f"--config.data.data_dir={root / 'data'}",
                    "--config.log.progress=False",
                    *extra,
                ],
                workdir.with_suffix(".log"),
            )
        if not classifier_file.exists():
            print(f"[demo_seeds] training the phantom classifier ({classifier_file})", flush=True)
            config = clf.ClassifierConfig(image_size=64)
            clf.save_classifier(classifier_file, clf.train_on_phantoms(config), config)
        headline_seconds = _run(
            ["evaluate.py", "--workdir", str(workdir), "--headline", "--classifier", str(classifier_file)],
            workdir.with_suffix(".headline.log"),
        )
        result = json.loads((workdir / "eval" / "headline.json").read_text())
        result.update(
            seed=seed, train_seconds=seconds, headline_seconds=headline_seconds, floors_missed=floors_missed(result)
        )
        rows.append(result)
        print(
            f"[demo_seeds] seed {seed}: PSNR {result['reconstruction_psnr']:.2f} dB, density accuracy "
            f"{result['density_accuracy']:.1%} (reconstructions {result['reconstruction_density_accuracy']:.1%}), "
            "grey "
            + " / ".join(f"{g:.1f}" for g in result["grey_by_density"]["samples"])
            + (f", trained in {seconds:.0f} s" if seconds else ""),
            flush=True,
        )

    summary = {
        "seeds": rows,
        "config": args.config,
        "extra_flags": extra,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": time.strftime("%Y-%m-%d"),
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
    }
    (root / "seeds.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"reconstruction PSNR (dB)  {_spread([r['reconstruction_psnr'] for r in rows])}")
    print(f"density accuracy          {_spread([r['density_accuracy'] for r in rows])}")
    print(f"  of the reconstructions  {_spread([r['reconstruction_density_accuracy'] for r in rows])}")
    for k, name in enumerate("ABCD"):
        print(f"mean grey, density={name}    {_spread([r['grey_by_density']['samples'][k] for r in rows])}")
    failed = [(r["seed"], m) for r in rows for m in r["floors_missed"]]
    for seed, message in failed:
        print(f"seed {seed}: {message}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
