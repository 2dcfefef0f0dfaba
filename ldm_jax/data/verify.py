"""Integrity of prepared array_record splits: faults end as one-line ``DataFaultError``s.

- ``open_split``: a split's records behind ``CheckedSource``, which turns a read or decode error
  into a ``DataFaultError`` naming the shard and record (reads go straight through);
- ``check_shards``: when a source opens, every shard its metadata lists is there and holds
  the record count the metadata says (each shard's footer is read, nothing else);
- ``write_hash_list``: the sha256 of every shard, ``shards.sha256.json`` beside the TFDS files,
  written by the build;
- ``verify``: the full check behind ``python -m ldm_jax.data.build --verify``: counts, hashes,
  and every record read and its images decoded.
"""

from __future__ import annotations

import bisect
import collections.abc
import hashlib
import itertools
import json
import sys

from ldm_jax.data.imageio import decode_png
from ldm_jax.storage import DataFaultError, write_atomic

HASH_LIST = "shards.sha256.json"
DECODE_ERRORS = (OSError, ValueError, SyntaxError)  # what PIL raises for bytes that are no PNG
_LISTED_PER_SHARD = 5  # bad records ``verify`` names one by one in each shard
_CHUNK = 64  # records ``verify`` reads at once


def _brief(error: BaseException) -> str:
    """``Type: first line of the message``, short enough for a one-line report."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _shards(instructions) -> list:
    """The distinct shard files of TFDS ``FileInstruction``s, in order (one instruction each)."""
    seen = {}
    for instruction in instructions:
        seen.setdefault(str(instruction.filename), instruction)
    return list(seen.values())


class CheckedSource(collections.abc.Sequence):
    """A TFDS array_record source whose read and decode errors raise ``DataFaultError`` naming
    the shard file and the record's index in it (the original error is its ``__cause__``).

    Reads go straight to the wrapped source; only a failed read costs more (a batch that fails
    is read again record by record to name the bad one)."""

    def __init__(self, source):
        self._source = source
        self.dataset_info = source.dataset_info
        self.split = source.split
        self.name = f"{source.dataset_info.full_name} {source.split}"
        self.instructions = list(source.dataset_info.splits[source.split].file_instructions)
        self._ends = list(itertools.accumulate(i.take for i in self.instructions))

    def __len__(self) -> int:
        return len(self._source)

    def __iter__(self):
        for key in range(len(self)):
            yield self[key]

    def __getitem__(self, key):
        try:
            return self._source[key]
        except Exception as error:
            raise self.fault(int(key), error) from error

    def __getitems__(self, keys):
        try:
            return self._source.__getitems__(keys)
        except Exception as error:
            for key in keys:  # name the first record that fails on its own
                self[key]
            raise DataFaultError(
                f"reading {self.name}: records {list(keys)} fail together ({_brief(error)})"
            ) from error

    def locate(self, key: int) -> tuple[str, int]:
        """``(shard file, record index in it)`` of record ``key`` of the split."""
        i = bisect.bisect_right(self._ends, key)
        instruction = self.instructions[i]
        return str(instruction.filename), key - (self._ends[i - 1] if i else 0) + instruction.skip

    def fault(self, key: int, error: BaseException) -> Exception:
        """The error to raise for record ``key`` failing with ``error``: a ``DataFaultError``
        naming its shard and record (an ``IndexError`` for a key outside the split)."""
        if not 0 <= key < len(self):
            return IndexError(f"record {key} is outside {self.name} (0..{len(self) - 1})")
        path, index = self.locate(key)
        where = f"record {index}" + (f" (record {key} of the split)" if index != key else "")
        return DataFaultError(f"reading {self.name}: {path}: {where} does not decode ({_brief(error)})")


def open_split(builder, split: str) -> CheckedSource:
    """``split`` of a prepared array_record ``builder``, images left as PNG bytes, faults named."""
    import tensorflow_datasets as tfds

    features = builder.info.features
    decoders = {
        k: tfds.decode.SkipDecoding() for k, f in sorted(features.items()) if isinstance(f, tfds.features.Image)
    }
    return CheckedSource(builder.as_data_source(split, decoders=decoders))


def _shard_problem(path: str, expected: int) -> str | None:
    """What is wrong with the shard at ``path`` that should hold ``expected`` records; None: nothing."""
    from array_record.python.array_record_module import ArrayRecordReader
    from etils import epath

    if not epath.Path(path).exists():
        return f"missing (the metadata lists it with {expected} records)"
    try:
        reader = ArrayRecordReader(path)  # reads its footer: how array_record counts records
    except RuntimeError as error:
        return f"does not open as array_record ({_brief(error)})"
    found, closed = reader.num_records(), None
    try:
        reader.close()  # a damaged file reports its failure here too (often without a message)
    except RuntimeError as error:
        closed = error
    if found != expected:
        return f"{'truncated: ' if found < expected else ''}expected {expected} records, read {found}"
    return None if closed is None else f"does not read as array_record ({_brief(closed)})"


def shard_problems(instructions) -> dict[str, str]:
    """Per shard of ``instructions`` that is missing, does not open, or holds another number of
    records than the metadata says: its path -> a line saying so."""
    problems = {}
    for instruction in _shards(instructions):
        path = str(instruction.filename)
        problem = _shard_problem(path, instruction.examples_in_shard)
        if problem:
            problems[path] = f"{path}: {problem}"
    return problems


def check_shards(source: CheckedSource) -> None:
    """``DataFaultError`` (the first problem, and how many more) unless every shard of
    ``source`` is there with its records."""
    problems = list(shard_problems(source.instructions).values())
    if problems:
        more = f" (and {len(problems) - 1} more shard(s))" if len(problems) > 1 else ""
        raise DataFaultError(f"opening {source.name}: {problems[0]}{more}")


def file_sha256(path) -> str:
    """The sha256 of the file at ``path`` (hex)."""
    from etils import epath

    with epath.Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _all_shards(builder) -> list:
    return _shards(i for split in builder.info.splits.values() for i in split.file_instructions)


def write_hash_list(builder) -> None:
    """Write the sha256 of every shard of the prepared ``builder`` to ``HASH_LIST`` in its folder."""
    from etils import epath

    hashes = {epath.Path(i.filename).name: file_sha256(i.filename) for i in _all_shards(builder)}
    text = json.dumps({"sha256": dict(sorted(hashes.items()))}, indent=1)
    write_atomic(epath.Path(builder.data_dir) / HASH_LIST, text.encode())


def _hash_problems(builder, skip) -> tuple[str, list[str]]:
    """(a summary line, one line per shard whose sha256 is not the one in the hash list);
    shards in ``skip`` (already reported) are not hashed."""
    from etils import epath

    listed = epath.Path(builder.data_dir) / HASH_LIST
    if not listed.exists():
        return f"no hash list ({listed.name}): built before hash lists, so counts and decoding only", []
    hashes = json.loads(listed.read_text())["sha256"]
    shards = [str(i.filename) for i in _all_shards(builder) if str(i.filename) not in skip]
    problems = []
    for path in shards:
        expected = hashes.get(epath.Path(path).name)
        if expected is None:
            problems.append(f"{path}: not in the hash list {listed}")
        elif file_sha256(path) != expected:
            problems.append(f"{path}: sha256 differs from the hash list written by the build")
    return f"hashes: {len(shards) - len(problems)} of {len(shards)} shard(s) match {listed.name}", problems


def _decode_problems(source: CheckedSource, skip, progress: bool) -> tuple[int, list[str]]:
    """(records read and decoded, one line per bad record) over the records of ``source`` whose
    shard is not in ``skip``; at most ``_LISTED_PER_SHARD`` lines per shard, then a count."""
    import tensorflow_datasets as tfds
    from tqdm import tqdm

    features = source.dataset_info.features
    images = [name for name, f in features.items() if isinstance(f, tfds.features.Image)]
    keys = [k for k in range(len(source)) if source.locate(k)[0] not in skip]
    bad, decoded, problems = collections.Counter(), 0, []
    with tqdm(total=len(keys), desc=f"verify {source.split}", unit="record", disable=not progress) as bar:
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            try:
                examples = source.__getitems__(chunk)
            except DataFaultError:
                examples = [None] * len(chunk)  # read one by one below, to name every bad record
            for key, example in zip(chunk, examples):
                try:
                    example = source[key] if example is None else example
                    for name in images:
                        _decode(source, key, example[name])
                    decoded += 1
                except DataFaultError as error:
                    bad[source.locate(key)[0]] += 1
                    if bad[source.locate(key)[0]] <= _LISTED_PER_SHARD:
                        problems.append(str(error))
            bar.update(len(chunk))
    problems += [
        f"{path}: {n - _LISTED_PER_SHARD} more bad record(s)" for path, n in bad.items() if n > _LISTED_PER_SHARD
    ]
    return decoded, problems


def _decode(source: CheckedSource, key: int, png: bytes) -> None:
    try:
        decode_png(png)
    except DECODE_ERRORS as error:
        raise source.fault(key, error) from error


def verify(builder, progress: bool | None = None) -> tuple[list[str], list[str]]:
    """(summary lines, one line per problem) for the prepared ``builder``: per split, shard
    record counts against the metadata and every record read and its images decoded; then
    shard hashes against the hash list. ``progress``: tqdm bars (default: stderr is a terminal)."""
    progress = sys.stderr.isatty() if progress is None else progress
    sources = [open_split(builder, split) for split in builder.info.splits]
    shard_faults = {path: line for source in sources for path, line in shard_problems(source.instructions).items()}
    summary, problems = [], list(shard_faults.values())
    for source in sources:
        decoded, bad = _decode_problems(source, shard_faults, progress)
        shards = len(_shards(source.instructions))
        summary.append(f"{source.split}: {shards} shard(s), {len(source)} records, {decoded} read and decoded")
        problems += bad
    hash_line, bad = _hash_problems(builder, shard_faults)
    return [*summary, hash_line], problems + bad
