"""Build a data set as array_record files (no TensorFlow needed).

    python -m ldm_jax.data.build --dataset mammo_phantoms --config 128 --data-dir DIR
    python -m ldm_jax.data.build --dataset mammo_dicom --config 512 --data-dir DIR \\
        --dicom-dir VINDR/ --labels VINDR/breast-level_annotations.csv
    python -m ldm_jax.data.build --verify --dataset mammo_phantoms --config 128 --data-dir DIR

A build also writes the sha256 of every shard (``shards.sha256.json`` beside the TFDS files).
``--verify`` checks a built data set without rebuilding it: per split, each shard's record
count against the metadata, every record read and its images decoded; each shard's sha256
against that list (a data set built before hash lists has none: counts and decoding only).
It prints a summary per split, then ``OK`` or one line per problem; exit status 0 when the
data set is intact, 65 when not.

``mammo_dicom`` hashes patients with a secret salt: ``--salt-file`` (default
``DIR/mammo_dicom.salt``, created with a random salt when missing, mode 0600) or
``--salt``. The salt is never written into the data set; keep the file to rebuild with the
same splits and ids, and do not share it. A build report (skipped images by label-CSV
line and a reason from a fixed list, warnings, the error that stopped the build; no
identifiers) is written to ``--report``, also when the build fails.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import secrets
import sys

from ldm_jax.cli import ERRORS, Parser, flag, run
from ldm_jax.data import verify
from ldm_jax.data.dicom import MAX_PIXELS
from ldm_jax.storage import EXIT_CORRUPT, write_atomic

DATASETS = ("mammo_phantoms", "mammo_dicom")


@dataclasses.dataclass
class Options:
    dataset: str = flag(help="the data set to build", choices=DATASETS)
    data_dir: pathlib.Path = flag(help="TFDS data directory to write into")
    config: str | None = flag(
        None,
        "builder config: the output resolution, e.g. 128 (phantoms also 64_tiny...); default 128 for "
        "mammo_phantoms, 512 for mammo_dicom; with --verify also a built folder's name, e.g. 64_test3_train6",
    )
    split_sizes: str | None = flag(None, "mammo_phantoms: examples per split, e.g. train=1000,validation=100,test=100")
    verify: bool = flag(
        False, "check the built data set instead of building: shard record counts and hashes, every record decoded"
    )


@dataclasses.dataclass
class DicomOptions:
    dicom_dir: pathlib.Path | None = flag(None, "folder the label CSV paths are relative to")
    labels: list[pathlib.Path] | None = flag(None, "label CSV file(s)")
    csv_format: str = flag("auto", "label CSV layout", choices=("auto", "vindr", "cbis", "generic"))
    max_fail_fraction: float = flag(0.05, "fail the build when more than this fraction of images is unusable")
    split_fractions: str = flag("0.8,0.1,0.1", "train,validation,test patient fractions")
    allow_missing_splits: bool = flag(False, "leave out a split whose images all fail, instead of failing")
    frame: int | None = flag(None, "the frame to take from multi-frame files (refused without it)")
    max_pixels: int = flag(MAX_PIXELS, "refuse images whose header declares more Rows x Columns")
    salt: str | None = flag(None, "secret salt (prefer --salt-file: arguments are visible to ps)")
    salt_file: pathlib.Path | None = flag(
        None, "secret salt file (default DATA_DIR/mammo_dicom.salt, created if missing)"
    )
    workers: int = flag(1, "processes decoding DICOMs")
    report: pathlib.Path | None = flag(
        None, "build report JSON (default DATA_DIR/mammo_dicom-CONFIG.build_report.json)"
    )


def parser() -> Parser:
    return Parser(__doc__, "python -m ldm_jax.data.build").add_options(Options).add_options(DicomOptions, "mammo_dicom")


def _parse_mapping(text: str, flag: str) -> dict[str, int]:
    try:
        return {k.strip(): int(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected name=count pairs like train=100,test=10") from None


def load_salt(args: DicomOptions, data_dir: pathlib.Path) -> bytes:
    """The salt from ``--salt``, else the salt file (created with 32 random bytes when missing)."""
    if args.salt:
        return args.salt.encode()
    path = args.salt_file or data_dir / "mammo_dicom.salt"
    if path.exists():
        salt = path.read_text().strip().encode()
        if not salt:
            raise ValueError(f"salt file {path} is empty")
        return salt
    salt = secrets.token_hex(32)
    write_atomic(path, salt.encode(), mode=0o600)
    print(
        f"created a new secret salt in {path}: keep it (same salt = same splits and ids) and do not share it",
        file=sys.stderr,
    )
    return salt.encode()


def build_phantoms(config: str, data_dir, split_sizes: dict[str, int] | None = None):
    """Build ``mammo_phantoms/<config>`` in ``data_dir`` unless it is there; returns the builder.

    ``split_sizes`` overrides the config's split sizes (the config name then says so).
    """
    from ldm_jax.data.builders.mammo_phantoms import MammoPhantoms

    kwargs = {"split_sizes": split_sizes} if split_sizes else {}
    builder = MammoPhantoms(data_dir=data_dir, config=config, **kwargs)
    fresh = not builder.is_prepared()
    builder.download_and_prepare(file_format="array_record")  # TFDS shows tqdm bars per split
    if fresh:
        verify.write_hash_list(builder)
    return builder


def _build_phantoms(args: Options) -> None:
    split_sizes = _parse_mapping(args.split_sizes, "--split-sizes") if args.split_sizes else None
    builder = build_phantoms(check_config(args.dataset, args.config), args.data_dir, split_sizes)
    print(f"mammo_phantoms/{builder.builder_config.name}: {_sizes(builder)} in {builder.data_dir}")


def _builder_class(dataset: str):
    if dataset == "mammo_phantoms":
        from ldm_jax.data.builders.mammo_phantoms import MammoPhantoms

        return MammoPhantoms
    from ldm_jax.data.builders.mammo_dicom import MammoDicom

    return MammoDicom


def check_config(dataset: str, config: str | None) -> str:
    """The builder config name (the builder's default when ``config`` is None); ValueError naming
    the valid ones otherwise."""
    cls = _builder_class(dataset)
    names = [c.name for c in cls.BUILDER_CONFIGS]
    if config is None:
        return cls.DEFAULT_CONFIG_NAME
    if config not in names:
        raise ValueError(f"--config {config!r}: {dataset} has configs {', '.join(names)}")
    return config


def _build_dicom(options: Options, dicom: DicomOptions, parser: Parser) -> int:
    from ldm_jax.data.builders.mammo_dicom import BuildError, MammoDicom, check_build_options

    if dicom.dicom_dir is None or not dicom.labels:
        raise ValueError("--dataset mammo_dicom needs --dicom-dir and --labels")
    fractions = check_build_options(
        dicom.max_fail_fraction, dicom.split_fractions, dicom.workers, dicom.frame, dicom.max_pixels
    )
    data_dir = options.data_dir
    builder = MammoDicom(
        data_dir=data_dir,
        config=check_config(options.dataset, options.config),
        dicom_dir=dicom.dicom_dir,
        labels=dicom.labels,
        csv_format=dicom.csv_format,
        salt=load_salt(dicom, data_dir),
        max_fail_fraction=dicom.max_fail_fraction,
        split_fractions=fractions,
        allow_missing_splits=dicom.allow_missing_splits,
        frame=dicom.frame,
        max_pixels=dicom.max_pixels,
        num_workers=dicom.workers,
        progress=True,
    )
    report_path = dicom.report or data_dir / f"mammo_dicom-{builder.builder_config.name}.build_report.json"
    if builder.is_prepared():
        print(f"{builder.data_dir} is already built; delete it to rebuild", file=sys.stderr)
        return 0
    report_path.unlink(missing_ok=True)  # a report from an earlier run must not pass for this one's
    try:
        builder.download_and_prepare(file_format="array_record")
        verify.write_hash_list(builder)
    except (BuildError, *ERRORS) as error:
        if builder.report:
            builder.report["error"] = str(error)
        if isinstance(error, BuildError):
            return parser.fail(error, 1)
        raise
    finally:
        if builder.report:
            write_atomic(report_path, json.dumps(builder.report, indent=1).encode())
            for warning in builder.report["warnings"]:
                print(f"warning: {warning}", file=sys.stderr)
            print(f"build report: {report_path}", file=sys.stderr)
    skipped = len(builder.report.get("skipped", []))
    print(f"mammo_dicom/{builder.builder_config.name}: {_sizes(builder)}, {skipped} skipped, in {builder.data_dir}")
    return 0


def _verify(options: Options) -> int:
    """Check the built data set of ``options``; prints a summary, then OK or its problems."""
    from ldm_jax.data.pipeline import prepared_builder

    config = options.config or check_config(options.dataset, None)  # or a folder name like 64_test3_train6
    if options.split_sizes and options.dataset == "mammo_phantoms":  # the folder a build with them wrote
        sizes = _parse_mapping(options.split_sizes, "--split-sizes")
        config = _builder_class(options.dataset)(data_dir=options.data_dir, config=config, split_sizes=sizes)
        config = config.builder_config.name
    folder = options.data_dir / options.dataset / config
    if not folder.is_dir():
        raise FileNotFoundError(f"no {options.dataset}/{config} built in {options.data_dir} ({folder} does not exist)")
    builder = prepared_builder(options.dataset, str(options.data_dir), config)
    print(f"verifying {builder.info.full_name} in {builder.data_dir}", flush=True)
    summary, problems = verify.verify(builder)
    print("\n".join(summary + (problems or ["OK"])))
    return EXIT_CORRUPT if problems else 0


def _sizes(builder) -> str:
    return ", ".join(f"{name} {split.num_examples}" for name, split in builder.info.splits.items())


def main(argv=None) -> int:
    """Parse ``argv`` and build (or verify); the exit status (2: bad input, 1: the build failed,
    65: ``--verify`` found a fault)."""
    p = parser()

    def build(options: Options, dicom: DicomOptions) -> int:
        if options.verify:
            return _verify(options)
        if options.dataset == "mammo_phantoms":
            _build_phantoms(options)
            return 0
        return _build_dicom(options, dicom, p)

    return run(p, build, argv)


if __name__ == "__main__":
    sys.exit(main())
