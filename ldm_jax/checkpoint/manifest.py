"""Content manifests of checkpoints: the size and SHA-256 of every file a checkpoint holds,
written once its save is complete and checked before it is restored.

``<step>/manifest.sha256.json`` is ``{"files": {relative path: [size, sha256]}}``. A file that
is missing, of another size or of other content fails verification; files added beside the
listed ones do not. A checkpoint without a manifest (saved before manifests existed, or stopped
between the end of its save and the manifest) is restored unverified.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

from ldm_jax.storage import write_atomic

FILE = "manifest.sha256.json"


def _digest(path: pathlib.Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != FILE)


def write(step_dir: str | pathlib.Path) -> None:
    """Write the manifest of the complete checkpoint ``step_dir``."""
    step_dir = pathlib.Path(step_dir)
    files = {str(p.relative_to(step_dir)): [p.stat().st_size, _digest(p)] for p in _files(step_dir)}
    write_atomic(step_dir / FILE, json.dumps({"files": files}, indent=1, sort_keys=True).encode())


def has_manifest(step_dir: str | pathlib.Path) -> bool:
    return (pathlib.Path(step_dir) / FILE).is_file()


def problem(step_dir: str | pathlib.Path) -> str | None:
    """None when every file of ``step_dir``'s manifest is there with its size and hash (or when it
    has no manifest), else what differs first, e.g. ``state/_sharding: content differs``."""
    step_dir = pathlib.Path(step_dir)
    if not has_manifest(step_dir):
        return None
    try:
        listed = json.loads((step_dir / FILE).read_text())["files"]
    except (OSError, ValueError, KeyError) as error:
        return f"{FILE} does not read ({error})"
    for name, (size, sha) in sorted(listed.items()):
        path = step_dir / name
        if not path.is_file():
            return f"{name}: missing"
        if path.stat().st_size != size:
            return f"{name}: {path.stat().st_size} bytes, {size} when saved"
        if _digest(path) != sha:
            return f"{name}: content differs from when it was saved"
    return None
