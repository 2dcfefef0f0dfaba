"""TFDS builder ``mammo_phantoms``: procedural mammograms with counterfactual pairs (array_record).

Build and read without TensorFlow::

    builder = MammoPhantoms(config="128", data_dir=DIR)          # or config="64_tiny"
    builder.download_and_prepare(file_format="array_record")
    source = builder.as_data_source()["train"]                   # or tfds.data_source(...)
    record = source[0]   # image/counterfactual uint16 [S,S,1], mask uint8 [S,S,1], ...

Configs are named ``"<size>"`` (default split sizes) and ``"<size>_tiny"`` (8/4/4 examples,
for tests and demos); ``split_sizes={"train": n, ...}`` overrides the split sizes of any
config. Example ``i`` of a split is ``generate_phantom(SPLIT_SEED_OFFSET[split] + i, size)``:
seeds are deterministic and disjoint between splits.

TFDS decodes uint16 PNG only through OpenCV (its PIL path refuses uint16); ``Png16Image``
decodes it with PIL, so no OpenCV or TensorFlow is needed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from ldm_jax import attributes
from ldm_jax.data import imageio, phantoms
from ldm_jax.data.seeds import MAX_SPLIT_SIZE, SPLIT_SEED_OFFSET

_DEFAULT_SIZES = {64: 50_000, 128: 50_000, 256: 20_000, 512: 5_000}
_TINY = {"train": 8, "validation": 4, "test": 4}


class Png16Image(tfds.features.Image):
    """``tfds.features.Image`` whose uint16 PNGs decode with PIL (TFDS' own path needs OpenCV)."""

    def decode_example_np(self, example: bytes) -> np.ndarray:
        if self.np_dtype != np.uint16:
            return super().decode_example_np(example)
        return imageio.decode_png(example).reshape(self.shape)


@dataclasses.dataclass
class PhantomConfig(tfds.core.BuilderConfig):
    """Image side ``size`` (pixels) and the number of examples per split."""

    size: int = 128
    split_sizes: dict[str, int] = dataclasses.field(default_factory=dict)


def _config(size: int, split_sizes: dict[str, int], name: str) -> PhantomConfig:
    return PhantomConfig(
        name=name, size=size, split_sizes=split_sizes, description=f"{size}x{size} phantoms, {split_sizes}"
    )


def _default_splits(size: int) -> dict[str, int]:
    train = _DEFAULT_SIZES[size]
    return {"train": train, "validation": train // 10, "test": train // 10}


class MammoPhantoms(tfds.core.GeneratorBasedBuilder):
    """Procedural 12-bit mammogram phantoms with fat-only counterfactuals, labels and lesion masks."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        c
        for size in _DEFAULT_SIZES
        for c in (_config(size, _default_splits(size), str(size)), _config(size, _TINY, f"{size}_tiny"))
    ]
    DEFAULT_CONFIG_NAME = "128"

    def __init__(self, *, split_sizes: dict[str, int] | None = None, **kwargs):
        if split_sizes is not None:
            bad = {k: v for k, v in split_sizes.items() if not 0 < v <= MAX_SPLIT_SIZE.get(k, 0)}
            if bad:
                limits = ", ".join(f"{k} 1..{v:,}" for k, v in MAX_SPLIT_SIZE.items())
                raise ValueError(f"split_sizes {bad}: expected splits with examples {limits} (seeds.MAX_SPLIT_SIZE)")
            config = kwargs.get("config") or self.DEFAULT_CONFIG_NAME
            base = config if isinstance(config, PhantomConfig) else self.builder_configs[config]
            name = base.name + "_" + "_".join(f"{k}{v}" for k, v in sorted(split_sizes.items()))
            kwargs["config"] = _config(base.size, split_sizes, name)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.size
        classes = {name: tfds.features.ClassLabel(names=list(values)) for name, values in attributes.ATTRIBUTES.items()}
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": Png16Image(shape=(s, s, 1), dtype=np.uint16, encoding_format="png"),
                    "counterfactual": Png16Image(shape=(s, s, 1), dtype=np.uint16, encoding_format="png"),
                    "mask": tfds.features.Image(shape=(s, s, 1), dtype=np.uint8, encoding_format="png"),
                    **classes,
                    "glandular_fraction": tfds.features.Scalar(dtype=np.float32),
                    "id": tfds.features.Text(),
                }
            ),
            supervised_keys=None,
            homepage="https://github.com/ldm_jax",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split, n) for split, n in self.builder_config.split_sizes.items()}

    def _generate_examples(self, split: str, count: int):
        size = self.builder_config.size
        for i in range(count):
            seed = SPLIT_SEED_OFFSET[split] + i
            p = phantoms.generate_phantom(seed, size)
            key = f"{split}_{i:09d}"
            yield (
                key,
                {
                    "image": imageio.encode_png(p.image),
                    "counterfactual": imageio.encode_png(p.counterfactual),
                    "mask": imageio.encode_png(p.mask.astype(np.uint8)),
                    **dict(zip(attributes.ATTRIBUTE_NAMES, map(int, p.labels))),
                    "glandular_fraction": np.float32(p.glandular_fraction),
                    "id": f"seed{seed}",
                },
            )
