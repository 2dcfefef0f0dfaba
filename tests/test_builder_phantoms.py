import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ldm_jax.data import phantoms
from ldm_jax.data.builders import mammo_phantoms


def test_builds_and_reads_back_without_tensorflow(tmp_path):
    builder = mammo_phantoms.MammoPhantoms(config="64_tiny", data_dir=str(tmp_path))
    builder.download_and_prepare(file_format="array_record")
    sources = builder.as_data_source()
    assert {k: len(v) for k, v in sources.items()} == {"train": 8, "validation": 4, "test": 4}
    ids = {split: {src[i]["id"] for i in range(len(src))} for split, src in sources.items()}
    assert ids["train"] == {f"seed{i}".encode() for i in range(8)}
    assert ids["test"] == {f"seed{2_000_000_000 + i}".encode() for i in range(4)}

    test = tfds.data_source("mammo_phantoms/64_tiny", data_dir=str(tmp_path), split="test")
    record = test[0]
    assert sorted(record) == [
        "counterfactual",
        "density",
        "finding",
        "glandular_fraction",
        "id",
        "image",
        "laterality",
        "mask",
        "view",
    ]
    for key, dtype in (("image", np.uint16), ("counterfactual", np.uint16), ("mask", np.uint8)):
        assert record[key].dtype == dtype and record[key].shape == (64, 64, 1)
    p = phantoms.generate_phantom(int(record["id"].decode().removeprefix("seed")), 64)
    np.testing.assert_array_equal(record["image"][..., 0], p.image)
    np.testing.assert_array_equal(record["counterfactual"][..., 0], p.counterfactual)
    np.testing.assert_array_equal(record["mask"][..., 0], p.mask)
    assert [record[k] for k in ("density", "finding", "view", "laterality")] == p.labels.tolist()
    assert record["glandular_fraction"] == pytest.approx(p.glandular_fraction, abs=1e-6)

    assert "tensorflow" not in sys.modules
    with pytest.raises(ImportError):
        import tensorflow  # noqa: F401


def test_split_sizes_override_and_validation(tmp_path):
    builder = mammo_phantoms.MammoPhantoms(config="64", split_sizes={"train": 2, "test": 1}, data_dir=str(tmp_path))
    assert builder.builder_config.name == "64_test1_train2"
    assert builder.builder_config.size == 64
    builder.download_and_prepare(file_format="array_record")
    assert {k: len(v) for k, v in builder.as_data_source().items()} == {"train": 2, "test": 1}
    with pytest.raises(ValueError, match="train2"):
        mammo_phantoms.MammoPhantoms(config="64", split_sizes={"train2": 3}, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="test 1..1,000,000"):  # past it: evaluate.py's filter pairs
        mammo_phantoms.MammoPhantoms(config="64", split_sizes={"test": 10**6 + 1}, data_dir=str(tmp_path))
    assert [c.name for c in mammo_phantoms.MammoPhantoms.BUILDER_CONFIGS] == [
        "64",
        "64_tiny",
        "128",
        "128_tiny",
        "256",
        "256_tiny",
        "512",
        "512_tiny",
    ]
