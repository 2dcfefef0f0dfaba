"""grain input pipeline: a random-access data source -> globally sharded batches on the mesh.

The split is read as one global stream of examples: position g is record ``order[g]``,
where ``order`` is a fresh permutation of the records every epoch (seeded, shared by all
processes), and global batch k holds positions [kG, (k+1)G). Each process reads, decodes
and scales to [-1, 1] only the rows of each global batch that its devices hold, and the
per-process parts are assembled into one ``jax.Array`` sharded over the mesh's batch axes.
So the batches do not depend on the number of processes, devices or grain workers, and
the state a checkpoint needs is one number: the stream position.

Labels are an int32 ``[B, 4]`` array in the order of ``ldm_jax.attributes.ATTRIBUTE_NAMES``;
an attribute the source does not have, or an unknown (-1) value, is the null index.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys

import grain
import numpy as np

from ldm_jax import attributes
from ldm_jax.data import verify
from ldm_jax.data.imageio import MAX_VALUE, decode_png, to_model_range

BUILDER_MODULES = ("ldm_jax.data.builders.mammo_phantoms", "ldm_jax.data.builders.mammo_dicom")
_DEFAULT_MAX_VALUE = {np.dtype(np.uint8): 255, np.dtype(np.uint16): MAX_VALUE}
_STATE_VERSION = 2


# ----------------------------------------------------------------------------- sources


def prepared_builder(dataset: str, data_dir: str, config: str | None):
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
    versions = sorted(
        (p for p in root.glob("*") if (p / "dataset_info.json").exists()),
        key=lambda p: tuple(int(x) if x.isdigit() else 0 for x in p.name.split(".")),
    )
    if not versions:
        raise FileNotFoundError(
            f"data set {name!r} is not prepared in {data_dir}: build it with "
            f"`python -m ldm_jax.data.build --dataset {dataset} --data-dir {data_dir} ...` "
            "(or `tfds build` for a TFDS catalog data set, with --file_format=array_record)"
        )
    return tfds.builder_from_directory(str(versions[-1]))


def load_source(dataset: str, data_dir: str, split: str, config: str | None = None):
    """A random-access data source over a prepared split (array_record, no TensorFlow).

    ``dataset`` is ``mammo_phantoms``, ``mammo_dicom`` or any prepared TFDS data set with an
    ``image`` feature; ``config`` its config name (``"128"``...). Images come back as PNG
    bytes (TFDS would need OpenCV for 16-bit) and are decoded by the pipeline.

    Every shard the split's metadata lists must be there with its record count, else
    ``DataFaultError``; a record that later fails to read or decode raises ``DataFaultError``
    naming its shard and index (``ldm_jax.data.verify``).
    """
    import tensorflow_datasets as tfds

    builder = prepared_builder(dataset, data_dir, config)
    features = builder.info.features
    if "image" not in features or not isinstance(features["image"], tfds.features.Image):
        raise ValueError(f"data set {builder.name!r} has no 'image' Image feature; features: {list(features)}")
    if builder.info.file_format is None or builder.info.file_format.value != "array_record":
        raise ValueError(
            f"data set {builder.name!r} in {builder.data_dir} is stored as "
            f"{builder.info.file_format}, not array_record: rebuild it with "
            "--file_format=array_record to read it without TensorFlow"
        )
    source = verify.open_split(builder, split)
    verify.check_shards(source)
    return source


def _keyword_finding(name: str) -> int:
    """A finding index from a class name like CBIS-DDSM's ``BENIGN_MASS``; null when unknown."""
    name = name.lower()
    if "mass" in name:
        return 1
    if "calc" in name:
        return 2
    if any(k in name for k in ("background", "normal", "negative", "no finding")):
        return 0
    return attributes.NUM_CLASSES[1]


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """How a source's features become ``[4]`` labels: per attribute a feature name (or None)
    and a lookup table from stored index to our index; its last entry is for -1 (unknown)."""

    features: tuple[str | None, ...]
    tables: tuple[np.ndarray | None, ...]

    @classmethod
    def for_source(cls, source) -> LabelMap:
        info = getattr(source, "dataset_info", None)
        if info is None:  # a plain sequence of dicts keyed like ldm_jax.attributes.ATTRIBUTES
            first = source[0]
            names = [a if a in first else None for a in attributes.ATTRIBUTE_NAMES]
            tables = [
                np.append(np.arange(n), n).astype(np.int32) if a else None
                for a, n in zip(names, attributes.NUM_CLASSES)
            ]
            return cls(tuple(names), tuple(tables))
        import tensorflow_datasets as tfds

        features = info.features
        names, tables = [], []
        for attribute, null in zip(attributes.ATTRIBUTE_NAMES, attributes.NUM_CLASSES):
            if attribute in features and isinstance(features[attribute], tfds.features.ClassLabel):
                name, classes = attribute, [_encode_or_null(attribute, n) for n in features[attribute].names]
            elif (
                attribute == "finding"
                and "label" in features
                and isinstance(features["label"], tfds.features.ClassLabel)
            ):
                name, classes = "label", [_keyword_finding(n) for n in features["label"].names]
            else:
                names.append(None)
                tables.append(None)
                continue
            names.append(name)
            tables.append(np.asarray(classes + [null], np.int32))
        return cls(tuple(names), tuple(tables))

    def __call__(self, example) -> np.ndarray:
        out = attributes.null_labels(1)[0]
        for i, (name, table) in enumerate(zip(self.features, self.tables)):
            if name is not None:
                value = int(example[name])
                if not -1 <= value < len(table) - 1:
                    raise ValueError(f"{name} label {value} out of range [-1, {len(table) - 1})")
                out[i] = table[value]
        return out


def _encode_or_null(attribute: str, name: str) -> int:
    try:
        return attributes.encode_value(attribute, name)
    except ValueError:
        return len(attributes.ATTRIBUTES[attribute])


def all_labels(source) -> np.ndarray:
    """The labels ``[N, A]`` of every record of ``source`` (images are not decoded)."""
    label_map = LabelMap.for_source(source)
    rows, chunk = [], 256
    for start in range(0, len(source), chunk):
        keys = list(range(start, min(start + chunk, len(source))))
        examples = source.__getitems__(keys) if hasattr(source, "__getitems__") else [source[k] for k in keys]
        rows.extend(label_map(example) for example in examples)
    return np.asarray(rows, np.int32).reshape(-1, len(attributes.ATTRIBUTES))


def label_counts(source) -> dict[str, np.ndarray]:
    """Per attribute, counts ``[num_classes + 1]`` over the whole source (last entry: null)."""
    rows = all_labels(source)
    return {
        a: np.bincount(rows[:, i], minlength=n + 1)
        for i, (a, n) in enumerate(zip(attributes.ATTRIBUTE_NAMES, attributes.NUM_CLASSES))
    }


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


def stored_image_size(source) -> int | None:
    """The side of the source's square images as stored (its metadata, else its first image);
    None when the sizes vary or the images are not square."""
    info = getattr(source, "dataset_info", None)
    height, width = (info.features["image"].shape if info is not None else _as_image(source[0]["image"]).shape)[:2]
    return height if height == width and height is not None else None


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
class Preprocess:
    """Decode, scale to [-1, 1], optionally pad/resize and flip; labels to ``[4]`` int32.

    ``rng`` is seeded by the example's stream position, so flips do not depend on batch
    size, process or worker count, or restarts.
    """

    label_map: LabelMap
    max_value: float
    image_size: int | None
    random_flip: bool
    keys: tuple[str, ...]
    lesion_masks: bool = False

    def __call__(self, element, rng: np.random.Generator):
        flip = self.random_flip and rng.random() < 0.5
        out = {"labels": self.label_map(element)}
        planes = {key: to_model_range(_as_image(element[key]), self.max_value, self.image_size) for key in self.keys}
        if self.lesion_masks:  # stored 0/1; resized like the image, then back to [0, 1]
            planes["mask"] = (to_model_range(_as_image(element["mask"]) > 0, 1.0, self.image_size) + 1.0) / 2.0
        for key, plane in planes.items():
            out[key] = np.ascontiguousarray(plane[:, ::-1] if flip else plane)[..., None]
        return out


@dataclasses.dataclass
class _ReadRows:
    """Batch k after stream position ``start`` → this process's rows of it, as numpy arrays."""

    source: object
    order: grain.MapDataset  # stream position -> record index
    preprocess: Preprocess
    rows: range  # this process's rows of each global batch
    global_batch_size: int
    start: int
    seed: int

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        first = self.start + k * self.global_batch_size
        positions = [first + row for row in self.rows]
        keys = [int(self.order[g]) for g in positions]
        records = (
            self.source.__getitems__(keys)
            if hasattr(self.source, "__getitems__")
            else [self.source[key] for key in keys]
        )
        examples = [self._prepare(record, key, g) for record, key, g in zip(records, keys, positions)]
        return {name: np.stack([e[name] for e in examples]) for name in examples[0]}

    def _prepare(self, record, key: int, position: int) -> dict[str, np.ndarray]:
        """``preprocess`` of record ``key``; a source that names its faults (``fault``) turns a
        decode error into its ``DataFaultError``."""
        try:
            return self.preprocess(record, np.random.Generator(np.random.Philox(key=self.seed + position)))
        except verify.DECODE_ERRORS as error:
            fault = getattr(self.source, "fault", None)
            if fault is None:
                raise
            raise fault(key, error) from error


# ----------------------------------------------------------------------------- pipeline


class IteratorMismatchError(ValueError):
    """A saved stream position that cannot be mapped onto this pipeline's data order."""


class InputPipeline:
    """Iterator of globally sharded batches ``{"image": [B,H,W,1] f32, "labels": [B,4] i32}``.

    ``"counterfactual"`` is included when the source has it, and with ``lesion_masks`` the
    lesion mask ``"mask"`` ``[B, H, W, 1]`` in [0, 1] (the source must store it). The rows a process reads are
    those its devices hold in ``mesh``; pass ``process_index`` / ``process_count`` to read
    one simulated process's share (rows [pL, (p+1)L)) with ``next_local``. ``num_epochs``
    (None: forever) ends the stream after that many passes, the last partial batch dropped.
    ``random_flip`` is off by default: laterality is a label and images are oriented.
    ``max_value`` is the stored value that maps to +1 (default: the source's metadata, else
    255 for uint8 and 4095 for uint16). ``worker_count`` grain processes (0: threads in this
    process) decode batches; ``read_threads`` batches are read at once and
    ``prefetch_batches`` kept ready; none of these change the batches.
    """

    def __init__(
        self,
        source,
        *,
        global_batch_size: int,
        mesh,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        image_size: int | None = None,
        random_flip: bool = False,
        worker_count: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        max_value: float | None = None,
        read_threads: int = 4,
        prefetch_batches: int = 8,
        lesion_masks: bool = False,
    ):
        import jax

        from ldm_jax.parallel import check_batch_size, process_rows

        check_batch_size(global_batch_size, mesh)
        if (process_index is None) != (process_count is None):
            raise ValueError("pass both process_index and process_count (a simulated process), or neither")
        if process_count is None:
            self.process_count = jax.process_count()
            self.rows = process_rows(mesh, global_batch_size)
        else:
            if not 0 <= process_index < process_count or global_batch_size % process_count:
                raise ValueError(
                    f"simulated process {process_index} of {process_count}: need 0 <= index < count "
                    f"and a global batch ({global_batch_size}) divisible by the count"
                )
            self.process_count = int(process_count)
            local = global_batch_size // process_count
            self.rows = range(process_index * local, (process_index + 1) * local)
        if worker_count < 0:
            raise ValueError(f"worker_count must be >= 0, got {worker_count}")
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        if len(source) < global_batch_size:
            raise ValueError(f"the split has {len(source)} records, fewer than one batch of {global_batch_size}")
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
        self.mesh = mesh
        self.global_batch_size = global_batch_size
        self.local_batch_size = len(self.rows)
        self.position = 0  # stream positions consumed
        self._source, self._seed, self._worker_count = source, int(seed), int(worker_count)
        self._end = None if num_epochs is None else num_epochs * len(source)
        self._read_options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
        self._order_state = {
            "version": _STATE_VERSION,
            "num_records": len(source),
            "seed": int(seed),
            "shuffle": bool(shuffle),
        }
        order = grain.MapDataset.range(len(source))
        self._order = order.shuffle(seed=seed) if shuffle else order
        keys = ("image", "counterfactual") if has_feature(source, "counterfactual") else ("image",)
        if lesion_masks and not has_feature(source, "mask"):
            raise ValueError("lesion_masks: the data set stores no lesion 'mask' (mammo_phantoms does)")
        self._preprocess = Preprocess(
            LabelMap.for_source(source),
            float(max_value or _max_value(source)),
            image_size,
            bool(random_flip),
            keys,
            bool(lesion_masks),
        )
        if worker_count > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
        self._iterator = self._iterate_from(0)

    def _iterate_from(self, position: int):
        """Batches of the stream from ``position``; each batch is one grain element, so grain
        workers (which take every W-th element) cannot change the batches or their order."""
        self.position = position
        remaining = sys.maxsize if self._end is None else self._end - position
        read = _ReadRows(
            self._source, self._order, self._preprocess, self.rows, self.global_batch_size, position, self._seed
        )
        dataset = grain.MapDataset.range(max(remaining // self.global_batch_size, 0)).map(read)
        dataset = dataset.to_iter_dataset(self._read_options)
        if self._worker_count:
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._worker_count))
        return iter(dataset)

    def __iter__(self) -> InputPipeline:
        return self

    def next_local(self) -> dict[str, np.ndarray]:
        """This process's rows of the next global batch, as numpy arrays."""
        batch = next(self._iterator)
        self.position += self.global_batch_size
        return batch

    def __next__(self):
        import jax

        from ldm_jax.parallel import global_batch_from_local

        if self.process_count != jax.process_count():
            raise RuntimeError(
                f"this pipeline simulates {self.process_count} processes but JAX runs "
                f"{jax.process_count()}: use next_local()"
            )
        return global_batch_from_local(self.next_local(), self.mesh)

    def get_state(self) -> dict:
        """JSON-serialisable state: the stream position and what the stream order depends on."""
        return {**self._order_state, "position": self.position, "global_batch_size": self.global_batch_size}

    def set_state(self, state: dict) -> None:
        """Resume so that the next batch starts at the saved stream position: the examples an
        uninterrupted run would read next, whatever the process, device, worker count or batch
        size now. Raises ``IteratorMismatchError`` when the saved order is another one."""
        if not isinstance(state.get("position"), int):
            raise IteratorMismatchError(
                "the checkpoint holds no stream position (an older ldm_jax saved grain's "
                "per-process state), so the next unseen examples are unknown"
            )
        differ = [
            f"{key}: saved {state.get(key)!r}, now {value!r}"
            for key, value in self._order_state.items()
            if state.get(key) != value
        ]
        if differ:
            raise IteratorMismatchError(
                "the checkpoint's data position belongs to another data order ("
                + "; ".join(differ)
                + "), so the next unseen examples are unknown"
            )
        self._iterator = self._iterate_from(state["position"])


def has_feature(source, key: str) -> bool:
    """Whether the records of ``source`` hold the feature ``key`` (e.g. ``"counterfactual"``)."""
    info = getattr(source, "dataset_info", None)
    return key in info.features if info is not None else key in source[0]
