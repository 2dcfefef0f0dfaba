"""What a run writes about itself: its config (refusing an incompatible one) and its environment."""

from __future__ import annotations

import json
import pathlib
import platform
import sys

import jax

from ldm_jax.storage import write_atomic
from ldm_jax.models.architecture import resolve
from ldm_jax.training.config import STAGES, incompatible_keys, with_defaults


class IncompatibleRunError(ValueError):
    """The workdir holds a run whose config differs in keys that shape what was trained."""


def record_run(cfg, workdir: pathlib.Path) -> None:
    """Refuse a workdir whose saved config is incompatible; then write ``config.json`` (the config with
    its architecture filled in, ``resolve``) and ``environment.json``. A config saved before the
    architecture sections existed is compared as its preset fills it, and a key added since as its
    default (``with_defaults``); the section of a stage with no checkpoint yet may change (e.g. a
    ``counterfactual`` stage added to a finished run)."""
    saved_path = workdir / "config.json"
    current = resolve(cfg).to_dict()
    if saved_path.exists():
        untrained = tuple(stage for stage in STAGES if not _has_checkpoint(workdir / stage / "checkpoints"))
        # resolve first: it reads the keys whose absence meant something (data.resize)
        saved = with_defaults(resolve(json.loads(saved_path.read_text())).to_dict())
        diffs = incompatible_keys(saved, current, untrained=untrained)
        if diffs:
            raise IncompatibleRunError(
                f"{workdir} holds a run with a different config; use a new --workdir or the same settings:\n  "
                + "\n  ".join(diffs)
            )
    if jax.process_index() != 0:
        return
    write_atomic(saved_path, json.dumps(current, indent=2, sort_keys=True).encode())
    write_atomic(workdir / "environment.json", json.dumps(environment(), indent=2).encode())


def _has_checkpoint(directory: pathlib.Path) -> bool:
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def environment() -> dict:
    """Versions, devices and processes: enough to tell which machine produced a result."""
    from importlib import metadata

    versions = {}
    for package in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "grain", "tensorflow-datasets"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "backend": jax.default_backend(),
        "process_count": jax.process_count(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
    }
