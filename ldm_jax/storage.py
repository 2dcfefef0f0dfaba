"""Storage faults, named once: what a run tells its user when a checkpoint, a data file or the
disk fails, and the exit status the command lines end with for each.

- ``CorruptCheckpointError``: a checkpoint does not read, or its files differ from the manifest
  written when it was saved, and no older checkpoint verifies. Exit 65 (EX_DATAERR).
- ``DataFaultError``: a data file is missing or truncated, or a record does not decode. Exit 65.
- ``StorageFullError``: no space left on the device while writing. Exit 74 (EX_IOERR); free
  space and run the same command.

Each carries a one-line message that names the step, the path and what failed.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import tempfile

EXIT_CORRUPT = 65  # EX_DATAERR
EXIT_NO_SPACE = 74  # EX_IOERR


class StorageFault(Exception):
    """A storage fault the user can act on; ``exit_status`` is what the command line returns."""

    exit_status = 1


class CorruptCheckpointError(StorageFault):
    exit_status = EXIT_CORRUPT


class DataFaultError(StorageFault):
    exit_status = EXIT_CORRUPT


class StorageFullError(StorageFault):
    exit_status = EXIT_NO_SPACE


def out_of_space(error: BaseException) -> bool:
    """Whether ``error``, or any error it was raised from or during, is ENOSPC (``[Errno 28]``).
    Orbax and TensorStore re-raise the disk's error inside their own, often as text only."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error) or "[Errno 28]" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def local_path(path: str | os.PathLike, what: str) -> pathlib.Path:
    """``path`` as a file-system path; an object-storage URL (``gs://``, ``s3://``…) is refused with
    a ``ValueError`` naming ``what`` it was given as: ldm_jax reads and writes through the file system."""
    if "://" in str(path):
        raise ValueError(
            f"{what} {path}: object storage URLs are not supported; mount the bucket (e.g. with gcsfuse at "
            "/gcs/BUCKET) and pass the path of the mount"
        )
    return pathlib.Path(path)


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    path = pathlib.Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def tree_bytes(path: str | os.PathLike) -> int:
    """Bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())


def write_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename: never a partial file.

    ``mode``: the file's permissions (0o600 for secrets such as a salt)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as error:
        pathlib.Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:  # a failed write names no file: name it
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
