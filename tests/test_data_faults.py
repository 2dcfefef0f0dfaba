"""Data faults end in one line: a deleted, truncated or corrupt shard, or a record that does not
decode, raises ``DataFaultError`` naming the file (and record); ``build --verify`` finds each
one (exit 65), passes an intact set (exit 0) and compares the build's shard hashes."""

import hashlib
import json
import pickle
import shutil

import jax
import pytest
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from ldm_jax.data import build, pipeline
from ldm_jax.parallel import make_mesh
from ldm_jax.storage import EXIT_CORRUPT, DataFaultError

SIZES = {"train": 6, "test": 3}
CONFIG = "64_test3_train6"  # the folder build_phantoms("64", ..., SIZES) writes
SHARD = "mammo_phantoms-train.array_record-00000-of-00001"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("phantoms")
    build.build_phantoms("64", data_dir, SIZES)
    return data_dir


@pytest.fixture
def data_dir(built, tmp_path):
    """A copy of the built set, for one test to damage."""
    shutil.copytree(built, tmp_path / "data")
    return tmp_path / "data"


def _shard(data_dir):
    return data_dir / "mammo_phantoms" / CONFIG / "1.0.0" / SHARD


def _open(data_dir, split="train"):
    return pipeline.load_source("mammo_phantoms", str(data_dir), split, config=CONFIG)


def _verify(data_dir, capsys):
    status = build.main(["--verify", "--dataset", "mammo_phantoms", "--config", CONFIG, "--data-dir", str(data_dir)])
    return status, capsys.readouterr().out.splitlines()


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_deleted_shard_fails_on_open_naming_the_file(data_dir):
    _shard(data_dir).unlink()
    with pytest.raises(DataFaultError) as error:
        _open(data_dir)
    assert _one_line(error) == (
        f"opening mammo_phantoms/{CONFIG}/1.0.0 train: {_shard(data_dir)}: "
        "missing (the metadata lists it with 6 records)"
    )
    assert error.value.exit_status == EXIT_CORRUPT
    assert len(_open(data_dir, "test")) == 3  # the other split is intact


def test_a_truncated_shard_fails_on_open_with_the_counts(data_dir, capsys):
    path = _shard(data_dir)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the reader then sees 0 records and reads b"" for each
    with pytest.raises(DataFaultError) as error:
        _open(data_dir)
    assert _one_line(error) == (
        f"opening mammo_phantoms/{CONFIG}/1.0.0 train: {path}: truncated: expected 6 records, read 0"
    )
    status, out = _verify(data_dir, capsys)
    assert status == EXIT_CORRUPT
    assert f"{path}: truncated: expected 6 records, read 0" in out
    assert "train: 1 shard(s), 6 records, 0 read and decoded" in out  # its records are not read


def test_flipped_bytes_fail_the_record_they_hit(data_dir, capsys):
    path = _shard(data_dir)
    data = bytearray(path.read_bytes())
    data[1000:1016] = bytes(b ^ 0xFF for b in data[1000:1016])  # inside record 0's chunk (bytes 64..~4600)
    path.write_bytes(bytes(data))
    source = _open(data_dir)  # the counts are intact: opening passes
    assert [source[k]["id"] for k in range(1, 6)]  # the other records read
    prefix = f"reading mammo_phantoms/{CONFIG}/1.0.0 train: {path}: record 0 does not decode (RuntimeError: Corrupted"
    with pytest.raises(DataFaultError) as error:
        source[0]
    assert _one_line(error).startswith(prefix)
    assert isinstance(error.value.__cause__, RuntimeError)
    with pytest.raises(DataFaultError) as error:
        pipeline.label_counts(source)  # reads records 256 at a time
    assert _one_line(error).startswith(prefix)
    batches = pipeline.InputPipeline(
        source, global_batch_size=6, mesh=make_mesh(devices=jax.devices()[:1]), shuffle=False, read_threads=1
    )
    with pytest.raises(DataFaultError) as error:
        batches.next_local()
    assert _one_line(error).startswith(prefix)

    status, out = _verify(data_dir, capsys)
    assert status == EXIT_CORRUPT
    assert out[1:4] == [
        "train: 1 shard(s), 6 records, 5 read and decoded",
        "test: 1 shard(s), 3 records, 3 read and decoded",
        "hashes: 1 of 2 shard(s) match shards.sha256.json",
    ]
    assert out[4].startswith(prefix)
    assert out[5:] == [f"{path}: sha256 differs from the hash list written by the build"]


def _rewrite_with_broken_pngs(path, index):
    """Rewrite the shard at ``path`` as valid array_record whose record ``index`` holds images
    that are no PNG any more (their signatures damaged: what a fault before the write leaves)."""
    reader = ArrayRecordReader(str(path))
    records = reader.read(list(range(reader.num_records())))
    reader.close()
    signature = b"\x89PNG\r\n\x1a\n"
    assert records[index].count(signature) == 3  # image, counterfactual, mask
    records[index] = records[index].replace(signature, b"\x89PNX\r\n\x1a\n")
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for record in records:
        writer.write(record)
    writer.close()


def test_an_image_that_does_not_decode_names_its_record(data_dir, capsys):
    path = _shard(data_dir)
    _rewrite_with_broken_pngs(path, 2)
    source = _open(data_dir)
    assert isinstance(source[2]["image"], bytes)  # the record reads; its PNG is what is broken
    batches = pipeline.InputPipeline(
        source, global_batch_size=6, mesh=make_mesh(devices=jax.devices()[:1]), shuffle=False, read_threads=1
    )
    with pytest.raises(DataFaultError) as error:
        batches.next_local()
    assert _one_line(error).startswith(
        f"reading mammo_phantoms/{CONFIG}/1.0.0 train: {path}: record 2 does not decode ("
    )
    status, out = _verify(data_dir, capsys)
    assert status == EXIT_CORRUPT
    assert "train: 1 shard(s), 6 records, 5 read and decoded" in out
    assert any(line.startswith(f"reading mammo_phantoms/{CONFIG}/1.0.0 train: {path}: record 2 ") for line in out)


def test_verify_passes_an_intact_set(built, capsys):
    status, out = _verify(built, capsys)
    assert status == 0
    assert out == [
        f"verifying mammo_phantoms/{CONFIG}/1.0.0 in {built}/mammo_phantoms/{CONFIG}/1.0.0",
        "train: 1 shard(s), 6 records, 6 read and decoded",
        "test: 1 shard(s), 3 records, 3 read and decoded",
        "hashes: 2 of 2 shard(s) match shards.sha256.json",
        "OK",
    ]


def test_the_build_writes_shard_hashes_that_verify_compares(data_dir, capsys):
    folder = data_dir / "mammo_phantoms" / CONFIG / "1.0.0"
    listed = json.loads((folder / "shards.sha256.json").read_text())
    assert listed == {
        "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.array_record-*"))}
    }
    path = _shard(data_dir)
    data = bytearray(path.read_bytes())
    assert data[-1] == 0  # padding after the footer: no record and no count covers it
    data[-1] = 1
    path.write_bytes(bytes(data))
    assert [r["id"] for r in _open(data_dir)]  # counts and records pass: only the hash sees it
    status, out = _verify(data_dir, capsys)
    assert status == EXIT_CORRUPT
    assert out[-2:] == [
        "hashes: 1 of 2 shard(s) match shards.sha256.json",
        f"{path}: sha256 differs from the hash list written by the build",
    ]

    (folder / "shards.sha256.json").unlink()  # as a set built before hash lists
    status, out = _verify(data_dir, capsys)
    assert status == 0
    assert out[-2:] == ["no hash list (shards.sha256.json): built before hash lists, so counts and decoding only", "OK"]


def test_verify_refuses_a_data_dir_without_the_set(tmp_path, capsys):
    status = build.main(["--verify", "--dataset", "mammo_phantoms", "--config", "64", "--data-dir", str(tmp_path)])
    assert status == 2
    assert capsys.readouterr().err == (
        f"python -m ldm_jax.data.build: error: no mammo_phantoms/64 built in {tmp_path} "
        f"({tmp_path}/mammo_phantoms/64 does not exist)\n"
    )
    assert "--verify" in build.parser().format_help()


def test_a_checked_source_reads_what_tfds_reads(built):
    source = _open(built)
    plain = tfds.data_source(f"mammo_phantoms/{CONFIG}", data_dir=str(built), split="train")
    assert [source[k]["id"] for k in range(6)] == [plain[k]["id"] for k in range(6)]
    assert source.__getitems__([4, 1])[0]["density"] == plain[4]["density"]
    assert [r["id"] for r in pickle.loads(pickle.dumps(source))] == [plain[k]["id"] for k in range(6)]  # grain workers
    with pytest.raises(IndexError, match="record 6 is outside"):
        source[6]
