"""grain input pipeline: a random-access data source -> globally sharded batches on the mesh.

Each process reads its own shard of the split (``ShardOptions(process_index,
process_count)``), shuffles it with a seed shared by all processes, decodes and scales the
images to [-1, 1], batches ``global_batch_size / process_count`` examples and assembles
the per-process batches into one ``jax.Array`` sharded over the mesh's batch axes.

Labels are an int32 ``[B, 4]`` array in the order of ``ldm_jax.labels.ATTRIBUTE_NAMES``;
an attribute the source does not have, or an unknown (-1) value, is the null index.
"""

from __future__ import annotations

import dataclasses
import importlib
import json

import grain
import numpy as np

from ldm_jax import labels as labels_lib
from ldm_jax.data.imageio import decode_png, to_model_range

BUILDER_MODULES = ("ldm_jax.data.builders.mammo_phantoms", "ldm_jax.data.builders.mammo_dicom")
_DEFAULT_MAX_VALUE = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 4095}  # uint16: 12-bit convention
_STATE_VERSION = 1


# ----------------------------------------------------------------------------- sources


def _prepared_builder(dataset: str, data_dir: str, config: str | None):
    """The builder of a prepared data set: registered code first, else its folder alone."""
    import tensorflow_datasets as tfds
    from etils import epath

    for module in BUILDER_MODULES:
        importlib.import_module(module)
    name = dataset if config is None else f"{dataset}/{config}"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if builder.is_prepared():
            return builder
    except (tfds.core.registered.DatasetNotFoundError, ImportError):
        pass
    root = epath.Path(data_dir) / dataset / (config or "")
    versions = sorted((p for p in root.glob("*") if (p / "dataset_info.json").exists()),
                      key=lambda p: tuple(int(x) if x.isdigit() else 0 for x in p.name.split(".")))
    if not versions:
        raise FileNotFoundError(
            f"data set {name!r} is not prepared in {data_dir}: build it with "
            f"`python -m ldm_jax.data.build --dataset {dataset} --data-dir {data_dir} ...` "
            "(or `tfds build` for a TFDS catalog data set, with --file_format=array_record)")
    return tfds.builder_from_directory(str(versions[-1]))


def load_source(dataset: str, data_dir: str, split: str, config: str | None = None):
    """A random-access data source over a prepared split (array_record, no TensorFlow).

    ``dataset`` is ``mammo_phantoms``, ``mammo_dicom`` or any prepared TFDS data set with an
    ``image`` feature; ``config`` its config name (``"128"``...). Images come back as PNG
    bytes (TFDS would need OpenCV for 16-bit) and are decoded by the pipeline.
    """
    import tensorflow_datasets as tfds

    builder = _prepared_builder(dataset, data_dir, config)
    features = builder.info.features
    if "image" not in features or not isinstance(features["image"], tfds.features.Image):
        raise ValueError(f"data set {builder.name!r} has no 'image' Image feature; features: {list(features)}")
    if builder.info.file_format is None or builder.info.file_format.value != "array_record":
        raise ValueError(f"data set {builder.name!r} in {builder.data_dir} is stored as "
                         f"{builder.info.file_format}, not array_record: rebuild it with "
                         "--file_format=array_record to read it without TensorFlow")
    decoders = {k: tfds.decode.SkipDecoding() for k, f in sorted(features.items()) if isinstance(f, tfds.features.Image)}
    return builder.as_data_source(split, decoders=decoders)


def _keyword_finding(name: str) -> int:
    """A finding index from a class name like CBIS-DDSM's ``BENIGN_MASS``; null when unknown."""
    name = name.lower()
    if "mass" in name:
        return 1
    if "calc" in name:
        return 2
    if any(k in name for k in ("background", "normal", "negative", "no finding")):
        return 0
    return labels_lib.NUM_CLASSES[1]


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """How a source's features become ``[4]`` labels: per attribute a feature name (or None)
    and a lookup table from stored index to our index; its last entry is for -1 (unknown)."""

    features: tuple[str | None, ...]
    tables: tuple[np.ndarray | None, ...]

    @classmethod
    def for_source(cls, source) -> LabelMap:
        info = getattr(source, "dataset_info", None)
        if info is None:  # a plain sequence of dicts keyed like ldm_jax.labels.ATTRIBUTES
            first = source[0]
            names = [a if a in first else None for a in labels_lib.ATTRIBUTE_NAMES]
            tables = [np.append(np.arange(n), n).astype(np.int32) if a else None
                      for a, n in zip(names, labels_lib.NUM_CLASSES)]
            return cls(tuple(names), tuple(tables))
        import tensorflow_datasets as tfds

        features = info.features
        names, tables = [], []
        for attribute, null in zip(labels_lib.ATTRIBUTE_NAMES, labels_lib.NUM_CLASSES):
            if attribute in features and isinstance(features[attribute], tfds.features.ClassLabel):
                name, classes = attribute, [_encode_or_null(attribute, n) for n in features[attribute].names]
            elif attribute == "finding" and "label" in features and isinstance(features["label"],
                                                                               tfds.features.ClassLabel):
                name, classes = "label", [_keyword_finding(n) for n in features["label"].names]
            else:
                names.append(None)
                tables.append(None)
                continue
            names.append(name)
            tables.append(np.asarray(classes + [null], np.int32))
        return cls(tuple(names), tuple(tables))

    def __call__(self, example) -> np.ndarray:
        out = np.asarray(labels_lib.NUM_CLASSES, np.int32).copy()
        for i, (name, table) in enumerate(zip(self.features, self.tables)):
            if name is not None:
                value = int(example[name])
                if not -1 <= value < len(table) - 1:
                    raise ValueError(f"{name} label {value} out of range [-1, {len(table) - 1})")
                out[i] = table[value]
        return out


def _encode_or_null(attribute: str, name: str) -> int:
    try:
        return labels_lib.encode_value(attribute, name)
    except ValueError:
        return len(labels_lib.ATTRIBUTES[attribute])


def all_labels(source) -> np.ndarray:
    """The labels ``[N, A]`` of every record of ``source`` (images are not decoded)."""
    label_map = LabelMap.for_source(source)
    rows, chunk = [], 256
    for start in range(0, len(source), chunk):
        keys = list(range(start, min(start + chunk, len(source))))
        examples = source.__getitems__(keys) if hasattr(source, "__getitems__") else [source[k] for k in keys]
        rows.extend(label_map(example) for example in examples)
    return np.asarray(rows, np.int32).reshape(-1, len(labels_lib.ATTRIBUTES))


def label_counts(source) -> dict[str, np.ndarray]:
    """Per attribute, counts ``[num_classes + 1]`` over the whole source (last entry: null)."""
    rows = all_labels(source)
    return {a: np.bincount(rows[:, i], minlength=n + 1)
            for i, (a, n) in enumerate(zip(labels_lib.ATTRIBUTE_NAMES, labels_lib.NUM_CLASSES))}


def _max_value(source) -> float:
    """The stored value that maps to +1: metadata ``max_value``, else by image dtype."""
    info = getattr(source, "dataset_info", None)
    if info is not None:
        if info.metadata and "max_value" in info.metadata:
            return float(info.metadata["max_value"])
        dtype = np.dtype(info.features["image"].np_dtype)
    else:
        dtype = _as_image(source[0]["image"]).dtype
    if dtype not in _DEFAULT_MAX_VALUE:
        raise ValueError(f"images of dtype {dtype} need an explicit max_value")
    return float(_DEFAULT_MAX_VALUE[dtype])


def _as_image(value) -> np.ndarray:
    """``[H, W]`` array from PNG bytes or an array ``[H, W]``/``[H, W, 1]``."""
    image = decode_png(value) if isinstance(value, bytes) else np.asarray(value)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"expected a grayscale image, got shape {image.shape}")
    return image


# ----------------------------------------------------------------------------- preprocessing


@dataclasses.dataclass
class Preprocess(grain.transforms.RandomMap):
    """Decode, scale to [-1, 1], optionally pad/resize and flip; labels to ``[4]`` int32.

    ``rng`` is grain's per-record generator (seeded by the global record index), so flips
    do not depend on batch size, worker count or restarts.
    """

    label_map: LabelMap
    max_value: float
    image_size: int | None
    random_flip: bool
    keys: tuple[str, ...]

    def random_map(self, element, rng: np.random.Generator):
        flip = self.random_flip and rng.random() < 0.5
        out = {"labels": self.label_map(element)}
        for key in self.keys:
            image = to_model_range(_as_image(element[key]), self.max_value, self.image_size)
            out[key] = np.ascontiguousarray(image[:, ::-1] if flip else image)[..., None]
        return out


# ----------------------------------------------------------------------------- pipeline


class InputPipeline:
    """Iterator of globally sharded batches ``{"image": [B,H,W,1] f32, "labels": [B,4] i32}``.

    ``"counterfactual"`` is included when the source has it. ``process_index`` /
    ``process_count`` default to JAX's; pass them to read one simulated process's shard
    with ``next_local``. Shards are equal-sized (a remainder of records is dropped) so
    all processes take the same number of steps. ``random_flip`` is off by default:
    laterality is a label and images are oriented. ``max_value`` is the stored value that
    maps to +1 (default: the source's metadata, else 255 for uint8 and 4095 for uint16);
    ``read_threads``/``prefetch_buffer_size`` tune grain's record reading (not the order).
    """

    def __init__(self, source, *, global_batch_size: int, mesh, seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None, image_size: int | None = None, random_flip: bool = False,
                 worker_count: int = 0, drop_remainder: bool = True, process_index: int | None = None,
                 process_count: int | None = None, max_value: float | None = None, read_threads: int = 16,
                 prefetch_buffer_size: int = 500):
        import jax

        from ldm_jax.parallel import check_batch_size

        self.process_index = jax.process_index() if process_index is None else int(process_index)
        self.process_count = jax.process_count() if process_count is None else int(process_count)
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index {self.process_index} not in [0, {self.process_count})")
        if global_batch_size < 1 or global_batch_size % self.process_count:
            raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of the "
                             f"process count {self.process_count}")
        check_batch_size(global_batch_size, mesh)
        if worker_count < 0:
            raise ValueError(f"worker_count must be >= 0, got {worker_count}")
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        self.mesh = mesh
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // self.process_count
        shard_size = len(source) // self.process_count
        if drop_remainder and shard_size < self.local_batch_size:
            raise ValueError(f"each of {self.process_count} process(es) has {shard_size} records, fewer than one "
                             f"batch of {self.local_batch_size}")
        keys = ("image", "counterfactual") if _has_feature(source, "counterfactual") else ("image",)
        self._signature = {
            "version": _STATE_VERSION, "worker_count": int(worker_count), "global_batch_size": global_batch_size,
            "process_index": self.process_index, "process_count": self.process_count, "seed": int(seed),
            "shuffle": bool(shuffle), "num_epochs": num_epochs, "num_records": len(source),
            "image_size": image_size, "random_flip": bool(random_flip), "drop_remainder": bool(drop_remainder),
        }
        if worker_count > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
        shard_options = grain.sharding.ShardOptions(self.process_index, self.process_count, drop_remainder=True)
        sampler = grain.samplers.IndexSampler(len(source), shard_options=shard_options, shuffle=shuffle,
                                              num_epochs=num_epochs, seed=seed)
        preprocess = Preprocess(LabelMap.for_source(source), float(max_value or _max_value(source)),
                                image_size, bool(random_flip), keys)
        self._loader = grain.DataLoader(
            data_source=source, sampler=sampler, shard_options=shard_options, worker_count=worker_count,
            read_options=grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_buffer_size),
            operations=[preprocess, grain.transforms.Batch(self.local_batch_size, drop_remainder=drop_remainder)])
        self._iterator = iter(self._loader)

    def __iter__(self) -> InputPipeline:
        return self

    def next_local(self) -> dict[str, np.ndarray]:
        """This process's part of the next batch, as numpy arrays."""
        return next(self._iterator)

    def __next__(self):
        import jax

        from ldm_jax.parallel import global_batch_from_local

        if self.process_count != jax.process_count():
            raise RuntimeError(f"this pipeline simulates {self.process_count} processes but JAX runs "
                               f"{jax.process_count()}: use next_local()")
        return global_batch_from_local(self.next_local(), self.mesh)

    def get_state(self) -> dict:
        """JSON-serialisable state: the grain iterator's plus what must match on restore."""
        return {**self._signature, "grain": json.loads(self._iterator.get_state().decode())}

    def set_state(self, state: dict) -> None:
        """Resume so that the next batch is the one an uninterrupted run would give next."""
        for key, value in self._signature.items():
            if state.get(key) != value:
                raise ValueError(f"input pipeline state was saved with {key}={state.get(key)!r} but this "
                                 f"pipeline has {key}={value!r}; restore with the same setting (batch order "
                                 "depends on it)")
        self._iterator.set_state(json.dumps(state["grain"]).encode())

    def save_args(self):
        """Orbax ``CheckpointArgs`` saving this state, one file per process (grain's handler)."""
        return grain.checkpoint.CheckpointSave(_GrainStateAdapter(self))

    def restore_args(self):
        """Orbax ``CheckpointArgs`` restoring into this pipeline (validated like ``set_state``)."""
        return grain.checkpoint.CheckpointRestore(_GrainStateAdapter(self))


class _GrainStateAdapter:
    """The iterator interface grain's Orbax handler calls (state as JSON bytes)."""

    def __init__(self, pipeline: InputPipeline):
        self._pipeline = pipeline

    def get_state(self) -> bytes:
        return json.dumps(self._pipeline.get_state(), indent=1).encode()

    def set_state(self, state: bytes) -> None:
        self._pipeline.set_state(json.loads(state.decode()))

    def start_prefetch(self) -> None:
        self._pipeline._iterator.start_prefetch()


def _has_feature(source, key: str) -> bool:
    info = getattr(source, "dataset_info", None)
    return key in info.features if info is not None else key in source[0]

