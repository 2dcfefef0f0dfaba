"""The grain input pipeline: sharding, global batches, checkpointable state, label mapping."""

import json
import shutil

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ldm_jax import attributes
from ldm_jax.data import pipeline
from ldm_jax.data.imageio import decode_png, encode_png
from ldm_jax.parallel import batch_sharding, make_mesh

MAX = 4095.0


def _index_source(n, shape=(8, 8)):
    """Records whose image is constant ``i`` (PNG) and whose labels derive from ``i``."""
    return [
        {
            "image": encode_png(np.full(shape + (1,), i, np.uint16)),
            "density": i % 4,
            "finding": i % 3,
            "view": i % 2,
            "laterality": -1,
        }
        for i in range(n)
    ]


def _indices(images):
    return np.round((np.asarray(images)[:, 0, 0, 0] + 1) * MAX / 2).astype(int).tolist()


@pytest.fixture(scope="module")
def mesh():
    return make_mesh()


def _pipeline(source, mesh, **kwargs):
    kwargs.setdefault("global_batch_size", 8)
    kwargs.setdefault("read_threads", 2)
    kwargs.setdefault("prefetch_batches", 2)
    return pipeline.InputPipeline(source, mesh=mesh, **kwargs)


def _drain(p):
    out = []
    while True:
        try:
            out.append(p.next_local())
        except StopIteration:
            return out


def test_processes_read_disjoint_rows_of_the_same_global_batches(mesh):
    source = _index_source(33)  # one epoch of 33 records in batches of 8: 4 batches, one record left over
    whole = [_indices(b["image"]) for b in _drain(_pipeline(source, mesh, seed=7, num_epochs=1))]
    parts = []
    for process in range(2):
        p = _pipeline(source, mesh, seed=7, num_epochs=1, process_index=process, process_count=2)
        batches = _drain(p)
        assert len(batches) == 4 and all(b["image"].shape == (4, 8, 8, 1) for b in batches)
        parts.append([_indices(b["image"]) for b in batches])
        idx = np.asarray(parts[-1]).ravel()
        labels = np.concatenate([b["labels"] for b in batches])
        np.testing.assert_array_equal(labels, np.stack([idx % 4, idx % 3, idx % 2, np.full_like(idx, 2)], 1))
    # Process 0 holds rows 0-3 and process 1 rows 4-7 of the batches one process reads.
    assert [a + b for a, b in zip(*parts)] == whole
    seen = [i for batch in whole for i in batch]
    assert len(seen) == len(set(seen)) == 32 and set(seen) <= set(range(33))
    assert seen != sorted(seen)  # shuffled


def test_next_epoch_is_a_new_permutation(mesh):
    p = _pipeline(_index_source(16), mesh, seed=1)
    epochs = [[i for _ in range(2) for i in _indices(p.next_local()["image"])] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(16)) and epochs[0] != epochs[1]


def test_global_batch_is_sharded_over_the_mesh(mesh):
    batch = next(_pipeline(_index_source(16), mesh, shuffle=False))
    assert isinstance(batch["image"], jax.Array) and batch["image"].shape == (8, 8, 8, 1)
    assert batch["image"].dtype == jax.numpy.float32 and batch["labels"].dtype == jax.numpy.int32
    assert batch["image"].sharding.is_equivalent_to(batch_sharding(mesh), 4)
    assert len(batch["image"].addressable_shards) == 8
    assert _indices(batch["image"]) == list(range(8))  # no shuffle: records in order
    np.testing.assert_allclose(np.asarray(batch["image"])[3], 3 * 2 / MAX - 1, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(batch["labels"])[5], [1, 2, 1, 2])


@pytest.mark.parametrize("stop", [1, 3])  # mid-epoch and right at an epoch boundary (2 batches / epoch)
def test_restored_iterator_continues_with_the_next_batch(mesh, stop):
    source = _index_source(16)
    reference = _pipeline(source, mesh, seed=3, random_flip=True)
    expected = [reference.next_local() for _ in range(stop + 3)]
    run = _pipeline(source, mesh, seed=3, random_flip=True)
    for _ in range(stop):
        run.next_local()
    state = json.loads(json.dumps(run.get_state()))
    assert state["position"] == 8 * stop
    restored = _pipeline(source, mesh, seed=3, random_flip=True)
    restored.set_state(state)
    for want in expected[stop:]:
        got = restored.next_local()
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["labels"], want["labels"])


def test_resume_on_another_topology_reads_the_next_unseen_examples(mesh):
    source = _index_source(48)
    run = _pipeline(source, mesh, seed=4, global_batch_size=16, worker_count=0)
    seen = [i for _ in range(2) for i in _indices(run.next_local()["image"])]
    state = run.get_state()
    rest = [i for _ in range(2) for i in _indices(run.next_local()["image"])]
    # Two processes with batch 8 each, grain workers on: together they read on from position 32.
    resumed = []
    for process in range(2):
        p = _pipeline(
            source, mesh, seed=4, global_batch_size=16, worker_count=1, process_index=process, process_count=2
        )
        p.set_state(state)
        resumed.append([_indices(p.next_local()["image"]) for _ in range(2)])
    assert [i for k in range(2) for part in resumed for i in part[k]] == rest
    assert sorted(seen + rest[:16]) == list(range(48))  # the epoch ends with the unseen records
    smaller = _pipeline(source, mesh, seed=4, global_batch_size=8)  # another global batch size
    smaller.set_state(state)
    assert [i for _ in range(2) for i in _indices(smaller.next_local()["image"])] == rest[:16]


def test_restore_refuses_a_position_in_another_order(mesh):
    source = _index_source(16)
    p = _pipeline(source, mesh)
    p.next_local()
    state = p.get_state()
    with pytest.raises(pipeline.IteratorMismatchError, match="seed: saved 0, now 1"):
        _pipeline(source, mesh, seed=1).set_state(state)
    with pytest.raises(pipeline.IteratorMismatchError, match="num_records: saved 16, now 24"):
        _pipeline(_index_source(24), mesh).set_state(state)
    with pytest.raises(pipeline.IteratorMismatchError, match="no stream position"):
        _pipeline(source, mesh).set_state({})  # a checkpoint written before positions were saved


def test_checkpoint_round_trip(tmp_path, mesh):
    from ldm_jax.checkpoint.checkpointer import Checkpointer

    source = _index_source(16)
    run = _pipeline(source, mesh, seed=5)
    run.next_local()
    checkpointer = Checkpointer(tmp_path / "ckpt", async_save=False)
    checkpointer.save(1, {"w": np.zeros(2)}, run, {})
    expected = run.next_local()
    restored = _pipeline(source, mesh, seed=5)
    restored.set_state(checkpointer.restore_data(1))
    checkpointer.close()
    np.testing.assert_array_equal(restored.next_local()["image"], expected["image"])


def test_random_flip_is_seeded_per_example(mesh):
    ramp = np.tile(np.arange(8, dtype=np.uint16) * 100, (8, 1))[..., None]
    source = [{"image": encode_png(ramp)} for _ in range(16)]
    flipped = _pipeline(source, mesh, shuffle=False, random_flip=True, seed=1).next_local()["image"]
    again = _pipeline(source, mesh, shuffle=False, random_flip=True, seed=1).next_local()["image"]
    plain = _pipeline(source, mesh, shuffle=False).next_local()["image"]
    np.testing.assert_array_equal(flipped, again)
    is_flipped = [bool(np.array_equal(f, p[:, ::-1])) for f, p in zip(flipped, plain)]
    assert 0 < sum(is_flipped) < 8
    assert all(f or np.array_equal(a, p) for f, a, p in zip(is_flipped, flipped, plain))


def test_image_size_pads_to_square_and_resizes(mesh):
    source = [{"image": encode_png(np.full((8, 4, 1), 4095, np.uint16))} for _ in range(8)]
    image = _pipeline(source, mesh, shuffle=False, image_size=8).next_local()["image"][0, ..., 0]
    assert image.shape == (8, 8)
    np.testing.assert_allclose(image[:, 2:6], 1.0, atol=1e-6)  # the image, centred
    np.testing.assert_allclose(image[:, [0, 1, 6, 7]], -1.0, atol=1e-6)  # padding at -1
    ramp = np.repeat(np.arange(16, dtype=np.uint16)[:, None] * 200, 16, axis=1)[..., None]
    small = _pipeline([{"image": encode_png(ramp)}] * 8, mesh, shuffle=False, image_size=4).next_local()["image"]
    assert small.shape == (8, 4, 4, 1)
    # an inner output row averages 4 input rows symmetrically: the ramp's value at their centre
    np.testing.assert_allclose(small[0, 1:3, 1, 0], (np.arange(1, 3) * 4 + 1.5) * 200 * 2 / MAX - 1, atol=1e-5)


class _FakeTfdsSource(list):
    """A list with TFDS-style ``dataset_info`` (CBIS-DDSM patches-like features)."""

    def __init__(self, records, features):
        super().__init__(records)
        self.dataset_info = type("Info", (), {"features": tfds.features.FeaturesDict(features), "metadata": None})


def test_label_map_for_other_tfds_sources(mesh):
    names = ["BENIGN_CALCIFICATION", "BENIGN_MASS", "MALIGNANT_CALCIFICATION", "MALIGNANT_MASS", "BACKGROUND"]
    features = {
        "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=names),
        "view": tfds.features.ClassLabel(names=["MLO", "ML", "CC"]),
    }
    records = [
        {"image": encode_png(np.full((8, 8, 1), 255 * (i % 2), np.uint8)), "label": i % 5, "view": i % 3}
        for i in range(10)
    ]
    source = _FakeTfdsSource(records, features)
    batch = _pipeline(source, mesh, shuffle=False).next_local()
    np.testing.assert_array_equal(
        batch["labels"][:5], [[4, 2, 1, 2], [4, 1, 2, 2], [4, 2, 0, 2], [4, 1, 1, 2], [4, 0, 2, 2]]
    )
    np.testing.assert_array_equal(batch["image"][:2, 0, 0, 0], [-1.0, 1.0])  # uint8 scaled by 255
    counts = pipeline.label_counts(source)
    np.testing.assert_array_equal(counts["finding"], [2, 4, 4, 0])
    np.testing.assert_array_equal(counts["view"], [3, 4, 3])  # CC, MLO, null (ML)
    np.testing.assert_array_equal(counts["density"], [0, 0, 0, 0, 10])


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    from ldm_jax.data.builders.mammo_phantoms import MammoPhantoms

    data_dir = tmp_path_factory.mktemp("tfds")
    MammoPhantoms(data_dir=data_dir, config="64_tiny").download_and_prepare(file_format="array_record")
    return data_dir


def test_load_source_reads_prepared_phantoms(phantom_dir, mesh):
    source = pipeline.load_source("mammo_phantoms", str(phantom_dir), "train", config="64_tiny")
    assert len(source) == 8
    records = [source[i] for i in range(8)]
    batch = next(_pipeline(source, mesh, shuffle=False))
    assert set(batch) == {"image", "labels", "counterfactual"}
    for i, record in enumerate(records):
        np.testing.assert_allclose(
            np.asarray(batch["image"][i, ..., 0]), decode_png(record["image"]) / MAX * 2 - 1, atol=1e-6
        )
        np.testing.assert_allclose(
            np.asarray(batch["counterfactual"][i, ..., 0]),
            decode_png(record["counterfactual"]) / MAX * 2 - 1,
            atol=1e-6,
        )
    labels = np.array([[r[a] for a in attributes.ATTRIBUTE_NAMES] for r in records])
    np.testing.assert_array_equal(np.asarray(batch["labels"]), labels)
    counts = pipeline.label_counts(source)
    for j, name in enumerate(attributes.ATTRIBUTE_NAMES):
        np.testing.assert_array_equal(counts[name], np.bincount(labels[:, j], minlength=attributes.NUM_CLASSES[j] + 1))


def test_lesion_masks_come_with_the_images_when_asked_and_only_from_sources_that_store_them(phantom_dir, mesh):
    source = pipeline.load_source("mammo_phantoms", str(phantom_dir), "train", config="64_tiny")
    batch = next(_pipeline(source, mesh, shuffle=False, lesion_masks=True))
    assert set(batch) == {"image", "labels", "counterfactual", "mask"}
    stored = np.stack([decode_png(source[i]["mask"]) for i in range(8)]).astype(np.float32)[..., None]  # 0/1
    assert stored.sum() > 0
    np.testing.assert_array_equal(np.asarray(batch["mask"]), stored)
    # resized like the images (bilinear, antialiased): a share in [0, 1], the lesion's area kept
    half = np.asarray(next(_pipeline(source, mesh, shuffle=False, lesion_masks=True, image_size=32))["mask"])
    assert half.shape == (8, 32, 32, 1) and half.min() >= 0 and half.max() <= 1
    assert abs(4 * half.sum() - stored.sum()) < 0.05 * stored.sum()
    with pytest.raises(ValueError, match="stores no lesion 'mask'"):
        _pipeline(_index_source(8), mesh, lesion_masks=True)


def test_load_source_from_a_folder_without_registered_code(phantom_dir, tmp_path):
    shutil.copytree(phantom_dir / "mammo_phantoms" / "64_tiny", tmp_path / "some_prepared" / "64_tiny")
    source = pipeline.load_source("some_prepared", str(tmp_path), "test", config="64_tiny")
    assert len(source) == 4 and decode_png(source[0]["image"]).shape == (64, 64)


def test_load_source_names_the_build_command_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared.*python -m ldm_jax.data.build --dataset mammo_dicom"):
        pipeline.load_source("mammo_dicom", str(tmp_path), "train", config="64")


def test_bad_arguments_are_rejected(mesh):
    source = _index_source(8)
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        _pipeline(source, mesh, global_batch_size=4)
    with pytest.raises(ValueError, match="fewer than one batch"):
        _pipeline(source, mesh, global_batch_size=16)
    with pytest.raises(ValueError, match="divisible by the count"):
        _pipeline(_index_source(24), mesh, global_batch_size=24, process_index=0, process_count=5)
    with pytest.raises(RuntimeError, match="use next_local"):
        next(_pipeline(_index_source(16), mesh, process_index=0, process_count=2))


def test_worker_processes_give_the_same_batches(mesh):
    source = _index_source(24)
    serial = [b["image"] for b in _drain(_pipeline(source, mesh, seed=2, num_epochs=1, random_flip=True))]
    workers = [
        b["image"] for b in _drain(_pipeline(source, mesh, seed=2, num_epochs=1, random_flip=True, worker_count=2))
    ]
    assert len(workers) == len(serial) == 3
    for a, b in zip(serial, workers):
        np.testing.assert_array_equal(a, b)
