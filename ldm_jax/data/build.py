"""Build a data set as array_record files (no TensorFlow needed).

    python -m ldm_jax.data.build --dataset mammo_phantoms --config 128 --data-dir DIR
    python -m ldm_jax.data.build --dataset mammo_dicom --config 512 --data-dir DIR \\
        --dicom-dir VINDR/ --labels VINDR/breast-level_annotations.csv

``mammo_dicom`` hashes patients with a secret salt: ``--salt-file`` (default
``DIR/mammo_dicom.salt``, created with a random salt when missing, mode 0600) or
``--salt``. The salt is never written into the data set; keep the file to rebuild with the
same splits and ids, and do not share it. A build report (skipped images by label-CSV
line and reason, no identifiers) is written to ``--report``, also when the build fails.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import secrets
import sys

from ldm_jax.data.imageio import write_atomic

DATASETS = ("mammo_phantoms", "mammo_dicom")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ldm_jax.data.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--config", default=None, help="output resolution, e.g. 128 (phantoms also 64_tiny...)")
    p.add_argument("--data-dir", required=True, type=pathlib.Path, help="TFDS data directory to write into")
    p.add_argument("--split-sizes", default=None,
                   help="mammo_phantoms: examples per split, e.g. train=1000,validation=100,test=100")
    g = p.add_argument_group("mammo_dicom")
    g.add_argument("--dicom-dir", type=pathlib.Path, help="folder the label CSV paths are relative to")
    g.add_argument("--labels", nargs="+", type=pathlib.Path, help="label CSV file(s)")
    g.add_argument("--csv-format", default="auto", choices=("auto", "vindr", "cbis", "generic"))
    g.add_argument("--max-fail-fraction", type=float, default=0.05,
                   help="fail the build when more than this fraction of images is unusable")
    g.add_argument("--split-fractions", default="0.8,0.1,0.1", help="train,validation,test patient fractions")
    g.add_argument("--salt", default=None, help="secret salt (prefer --salt-file: arguments are visible to ps)")
    g.add_argument("--salt-file", type=pathlib.Path, default=None,
                   help="secret salt file (default DATA_DIR/mammo_dicom.salt, created if missing)")
    g.add_argument("--workers", type=int, default=1, help="processes decoding DICOMs")
    g.add_argument("--report", type=pathlib.Path, default=None,
                   help="build report JSON (default DATA_DIR/mammo_dicom-CONFIG.build_report.json)")
    return p


def _parse_mapping(text: str, flag: str) -> dict[str, int]:
    try:
        return {k.strip(): int(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise SystemExit(f"{flag} {text!r}: expected name=count pairs like train=100,test=10") from None


def load_salt(args) -> bytes:
    """The salt from ``--salt``, else the salt file (created with 32 random bytes when missing)."""
    if args.salt:
        return args.salt.encode()
    path = args.salt_file or args.data_dir / "mammo_dicom.salt"
    if path.exists():
        salt = path.read_text().strip().encode()
        if not salt:
            raise SystemExit(f"salt file {path} is empty")
        return salt
    salt = secrets.token_hex(32)
    write_atomic(path, salt.encode(), mode=0o600)
    print(f"created a new secret salt in {path}: keep it (same salt = same splits and ids) and do not share it",
          file=sys.stderr)
    return salt.encode()


def build_phantoms(config: str, data_dir, split_sizes: dict[str, int] | None = None):
    """Build ``mammo_phantoms/<config>`` in ``data_dir`` unless it is there; returns the builder.

    ``split_sizes`` overrides the config's split sizes (the config name then says so).
    """
    from ldm_jax.data.builders.mammo_phantoms import MammoPhantoms

    kwargs = {"split_sizes": split_sizes} if split_sizes else {}
    builder = MammoPhantoms(data_dir=data_dir, config=config, **kwargs)
    builder.download_and_prepare(file_format="array_record")  # TFDS shows tqdm bars per split
    return builder


def _build_phantoms(args) -> None:
    split_sizes = _parse_mapping(args.split_sizes, "--split-sizes") if args.split_sizes else None
    builder = build_phantoms(args.config, args.data_dir, split_sizes)
    print(f"mammo_phantoms/{builder.builder_config.name}: {_sizes(builder)} in {builder.data_dir}")


def _build_dicom(args, parser) -> int:
    from ldm_jax.data.builders.mammo_dicom import BuildError, MammoDicom

    if args.dicom_dir is None or not args.labels:
        parser.error("--dataset mammo_dicom needs --dicom-dir and --labels")
    try:
        fractions = tuple(float(f) for f in args.split_fractions.split(","))
    except ValueError:
        parser.error(f"--split-fractions {args.split_fractions!r}: expected three numbers like 0.8,0.1,0.1")
    builder = MammoDicom(data_dir=args.data_dir, config=args.config, dicom_dir=args.dicom_dir, labels=args.labels,
                         csv_format=args.csv_format, salt=load_salt(args), max_fail_fraction=args.max_fail_fraction,
                         split_fractions=fractions, num_workers=args.workers, progress=True)
    report_path = args.report or args.data_dir / f"mammo_dicom-{builder.builder_config.name}.build_report.json"
    if builder.is_prepared():
        print(f"{builder.data_dir} is already built; delete it to rebuild", file=sys.stderr)
        return 0
    try:
        builder.download_and_prepare(file_format="array_record")
    except (BuildError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if builder.report:
            write_atomic(report_path, json.dumps(builder.report, indent=1).encode())
            print(f"build report: {report_path}", file=sys.stderr)
    skipped = len(builder.report.get("skipped", []))
    print(f"mammo_dicom/{builder.builder_config.name}: {_sizes(builder)}, {skipped} skipped, in {builder.data_dir}")
    return 0


def _sizes(builder) -> str:
    return ", ".join(f"{name} {split.num_examples}" for name, split in builder.info.splits.items())


def main(argv=None) -> int:
    """Parse ``argv`` and build; returns the exit status (1 when the build fails)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.dataset == "mammo_phantoms":
        _build_phantoms(args)
        return 0
    return _build_dicom(args, parser)


if __name__ == "__main__":
    sys.exit(main())
