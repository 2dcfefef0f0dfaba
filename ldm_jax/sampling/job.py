"""Resumable, shardable batch jobs that turn image indices into files.

A job maps indices 0..num-1 to files ``<out>/<index>.<ext>``; image i is a pure function
of the job's settings and i (see ``ldm_jax.sampling.generate``), so:

- ``--shard k/n`` takes the contiguous block [k·num/n, (k+1)·num/n) of indices; shards
  together write exactly the files one unsharded job writes;
- a file exists only once complete (temporary name, then rename), and existing files are
  skipped, so a killed job restarted with the same settings continues where it stopped;
- ``settings.json`` pins the settings that determine the images; another job with
  different settings is refused in that folder;
- ``manifest.jsonl`` (one line per finished image, by index) is rewritten at the end of
  every run from the files present, so the last shard to finish leaves the full manifest;
- ``contact_sheet.png`` shows the first images for a quick look.

Batches have a fixed size (the last one padded with repeats), so the program compiles
once; each process writes the rows of the output it holds (multi-host jobs write in
parallel), and process 0 writes the manifest once all processes are done.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import pathlib
import sys
import time
from typing import Callable

import jax
import numpy as np

from ldm_jax import parallel
from ldm_jax.data.imageio import encode_png
from ldm_jax.storage import free_bytes, write_atomic
from ldm_jax.sampling import writers
from ldm_jax.sampling.grid import make_grid, to_pixels

SETTINGS_FILE = "settings.json"
MANIFEST_FILE = "manifest.jsonl"
CONTACT_SHEET_FILE = "contact_sheet.png"
CONTACT_SHEET_IMAGES = 64


def parse_shard(text: str) -> tuple[int, int]:
    """``"k/n"`` → (k, n) with 0 <= k < n."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r} must look like k/n, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"--shard {text!r} is out of range: need 0 <= k < n")
    return k, n


def shard_indices(num: int, shard: tuple[int, int]) -> range:
    """The contiguous block of image indices of ``shard`` = (k, n)."""
    k, n = shard
    return range(k * num // n, (k + 1) * num // n)


@dataclasses.dataclass
class Job:
    """What a job computes and records.

    ``compute(indices [B]) -> images [B, H, W, 1]`` (a sharded jax.Array in [-1, 1]);
    ``labels(index)`` the image's label row (stored in NPZ outputs); ``record(index)`` its
    manifest fields beyond ``file`` and ``index``; ``preview(index, image)`` the images
    shown for it in the contact sheet (e.g. input and edit).
    """

    out: pathlib.Path
    settings: dict
    num: int
    fmt: str
    compute: Callable[[np.ndarray], jax.Array]
    labels: Callable[[int], np.ndarray]
    record: Callable[[int], dict]
    preview: Callable[[int, np.ndarray], list[np.ndarray]] = lambda index, image: [image]

    @property
    def uid(self) -> str:
        """A digest of the settings (seeds the DICOM UIDs)."""
        return hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, index: int) -> pathlib.Path:
        width = max(6, len(str(self.num - 1)))
        return self.out / f"{index:0{width}d}{writers.FORMATS[self.fmt]}"


def claim(out: pathlib.Path, settings: dict) -> None:
    """Pin ``settings`` to the folder ``out``; refuse a folder holding a job with other settings."""
    path = out / SETTINGS_FILE
    if path.exists():
        try:
            held = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ValueError(f"{path} is unreadable; it is not a sampling job folder") from None
        differ = sorted(k for k in set(held) | set(settings) if held.get(k) != settings.get(k))
        if differ:
            details = ", ".join(f"{k}: {held.get(k)!r} there, {settings.get(k)!r} now" for k in differ)
            raise ValueError(
                f"{out} holds a sampling job with different settings ({details}); use another "
                f"--out or remove that folder"
            )
        return
    if any(next(out.glob(f"*{ext}"), None) for ext in set(writers.FORMATS.values())):
        raise ValueError(f"{out} already holds image files but no {SETTINGS_FILE}; use an empty folder")
    write_atomic(path, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode())


def _local_rows(images: jax.Array) -> dict[int, np.ndarray]:
    """The rows of a batch-sharded array held by this process, by global row index."""
    rows = {}
    for shard in images.addressable_shards:
        start = shard.index[0].start or 0
        for offset, row in enumerate(np.asarray(shard.data)):
            rows[start + offset] = row
    return rows


def _agreed(todo: list[int], num: int) -> list[int]:
    """Process 0's list of indices (below ``num``) to do, so every host runs the same batches."""
    if jax.process_count() == 1:
        return todo
    from jax.experimental import multihost_utils

    mask = np.zeros(num, np.bool_)
    mask[todo] = True
    return np.flatnonzero(multihost_utils.broadcast_one_to_all(mask)).tolist()


@dataclasses.dataclass(frozen=True)
class Summary:
    written: int
    skipped: int
    seconds: float
    first_batch_seconds: float  # includes compilation
    first_batch_images: int

    def line(self) -> str:
        steady, later = self.written - self.first_batch_images, self.seconds - self.first_batch_seconds
        rate = f"then {steady / later:.2f} images/s" if steady and later > 0 else "no later batches"
        return (
            f"{self.written} images written, {self.skipped} already present; {self.seconds:.1f} s in all, "
            f"{self.first_batch_seconds:.1f} s for the first batch (with compilation), {rate}"
        )


def run(job: Job, *, batch_size: int, shard: tuple[int, int] = (0, 1), progress: bool = True) -> Summary:
    """Compute and write this shard's missing images, then the manifest and contact sheet."""
    job.out.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        claim(job.out, job.settings)
    parallel.sync("sampling_claimed")
    claim(job.out, job.settings)  # the other processes check what process 0 pinned
    mine = shard_indices(job.num, shard)
    todo = _agreed([i for i in mine if not job.path(i).exists()], job.num)
    start = time.perf_counter()
    first = None  # (seconds, images) of the first batch, which includes compilation
    if todo:
        from tqdm import tqdm

        bar = tqdm(
            total=len(todo),
            unit="img",
            desc=f"sampling {job.out.name}",
            dynamic_ncols=True,
            disable=not progress or jax.process_index() != 0,
            file=sys.stderr,
        )
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            pending, writes = None, []
            for chunk, padded in [*_aligned_batches(todo, batch_size), (None, None)]:
                images = job.compute(padded) if chunk else None  # dispatched asynchronously
                if pending is not None:
                    writes = _flush(job, pool, *pending, writes, bar)
                    if first is None:  # the first batch's files tell how much room the rest needs
                        for future in writes:
                            future.result()
                        _warn_if_out_is_short(job, pending[0], len(todo))
                    first = first or (time.perf_counter() - start, len(pending[0]))
                pending = (chunk, padded, images) if chunk else None
            for future in writes:
                future.result()
        bar.close()
    parallel.sync("sampling_written")  # every process's files are on disk
    if jax.process_index() == 0:
        write_manifest(job)
        write_contact_sheet(job)
    first_seconds, first_images = first or (0.0, 0)
    return Summary(
        written=len(todo),
        skipped=len(mine) - len(todo),
        seconds=time.perf_counter() - start,
        first_batch_seconds=first_seconds,
        first_batch_images=first_images,
    )


def _aligned_batches(todo: list[int], batch_size: int):
    """``(indices to write, the batch's B indices)`` per block [kB, (k+1)B) holding work.

    Image i always sits at row i mod B of a batch of B: XLA's numerics can depend on an
    example's position in the batch (~1e-6 in the decoder on CPU), so this is what makes
    shards and restarts write byte-identical files. Rows without work repeat an index of
    the block that has some; their results are not written.
    """
    blocks: dict[int, list[int]] = {}
    for index in todo:
        blocks.setdefault(index // batch_size, []).append(index)
    for block, chunk in blocks.items():
        wanted = set(chunk)
        rows = range(block * batch_size, (block + 1) * batch_size)
        yield chunk, np.asarray([i if i in wanted else chunk[0] for i in rows], np.int64)


def _flush(job: Job, pool, chunk: list[int], padded: np.ndarray, images: jax.Array, previous: list, bar) -> list:
    """Queue the writes of one finished batch (after the previous batch's writes are done)."""
    rows = _local_rows(images)  # blocks until this batch is computed
    for future in previous:
        future.result()  # re-raise write errors; bounds the images held in memory
    wanted = set(chunk)
    writes = [
        pool.submit(_write, job, int(padded[row]), image)
        for row, image in rows.items()
        if padded[row] in wanted and padded[row] % len(padded) == row
    ]
    bar.update(len(chunk))
    return writes


def _warn_if_out_is_short(job: Job, written: list[int], total: int) -> None:
    """One line on stderr when the output folder's free space is less than the rest of the
    images need, at the mean size of the ones just ``written``."""
    sizes = [job.path(i).stat().st_size for i in written if job.path(i).exists()]
    if not sizes or jax.process_index() != 0:
        return
    need = sum(sizes) / len(sizes) * (total - len(written))
    free = free_bytes(job.out)
    if free < need:
        print(
            f"sampling: warning: {free / 2**20:.1f} MiB free at {job.out}; the other {total - len(written)} images "
            f"need about {need / 2**20:.1f} MiB",
            file=sys.stderr,
        )


def _write(job: Job, index: int, image: np.ndarray) -> None:
    data = writers.encode_image(
        image,
        job.fmt,
        labels=job.labels(index),
        description=json.dumps(job.record(index)),
        job_uid=job.uid,
        index=index,
    )
    write_atomic(job.path(index), data)


def write_manifest(job: Job) -> None:
    """``manifest.jsonl``: one line per image file present, in index order."""
    lines = [
        json.dumps({"file": job.path(i).name, "index": i, **job.record(i)}, sort_keys=True)
        for i in range(job.num)
        if job.path(i).exists()
    ]
    write_atomic(job.out / MANIFEST_FILE, "".join(line + "\n" for line in lines).encode())


def write_contact_sheet(job: Job) -> None:
    """``contact_sheet.png``: the first images present (8-bit), with their previews."""
    tiles, columns = [], None
    for i in range(job.num):
        if len(tiles) >= CONTACT_SHEET_IMAGES:
            break
        if job.path(i).exists():
            row = job.preview(i, writers.decode_image(job.path(i).read_bytes(), job.fmt))
            columns = columns or (4 * len(row) if len(row) > 1 else None)
            tiles.extend(row)
    if tiles:
        sheet = make_grid(to_pixels(np.stack(tiles), 255, np.uint8), columns=columns)
        write_atomic(job.out / CONTACT_SHEET_FILE, encode_png(sheet))
