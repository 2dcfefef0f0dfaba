"""Pretrained weights from a user's local files, read without PyTorch, mapped into Flax.

Formats (recognised by content, not by file name):

- PyTorch checkpoints written by ``torch.save``: the zip archive of torch ≥ 1.6
  (``<prefix>/data.pkl`` plus one raw little-endian record ``<prefix>/data/<key>`` per
  storage) and the older single-stream format (magic number, protocol 1001, system info,
  the pickle, its storage keys, then each storage as an int64 element count and its bytes),
  in which the torchvision and LPIPS weight files were published. The pickle is read by a
  restricted unpickler that only resolves ``collections.OrderedDict``, torch's tensor
  rebuild functions and storage types; any other reference is refused, so no code from
  the file is ever run.
- ``.safetensors`` (8-byte little-endian header length, JSON header, raw bytes).
- ``.npz`` (no pickled objects allowed).

``load_state_dict`` returns ``{name: np.ndarray}``; ``to_flax_variables`` fills a Flax
variables tree from such a dict, converting OIHW convolution kernels to HWIO.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


class WeightFileError(ValueError):
    """A weight file that is unreadable (unknown format, truncated, corrupt or unsafe) or does not fit a module."""


# ---------------------------------------------------------------------------------------------
# PyTorch checkpoints

_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER of the pre-1.6 format
_TORCH_LEGACY_PROTOCOL = 1001
_BFLOAT16 = "bfloat16"  # stored as the top 16 bits of a float32; widened on read
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": _BFLOAT16,
    "DoubleStorage": "<f8",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _Unpickled:
    """Base of the objects the unpickler makes; the pickle may not alter them (BUILD) once validated."""

    __slots__ = ()

    def __setstate__(self, state):
        raise WeightFileError(f"the pickle tries to modify a {type(self).__name__.lstrip('_')}")


class _StorageType(_Unpickled):
    """Stands in for ``torch.<Name>Storage`` in the pickle: its element type only."""

    __slots__ = ("name", "raw_dtype")

    def __init__(self, name: str):
        self.name = name
        self.raw_dtype = np.dtype("<u2" if _STORAGE_DTYPES[name] == _BFLOAT16 else _STORAGE_DTYPES[name])


class _Storage(_Unpickled):
    """A storage named by a persistent id: ``numel`` elements of ``stype``, ``start`` elements into record ``key``."""

    __slots__ = ("key", "numel", "start", "stype")

    def __init__(self, key: str, stype: _StorageType, numel: int, start: int = 0):
        self.key, self.stype, self.numel, self.start = key, stype, numel, start


class _TensorRef(_Unpickled):
    """A tensor in the pickle: a strided view of a storage, read only if the tensor is kept."""

    __slots__ = ("offset", "size", "storage", "stride")

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise WeightFileError(f"tensor rebuilt from {type(storage).__name__}, not from a storage")
        size, stride = tuple(size), tuple(stride)
        ints = all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))
        if not ints or len(size) != len(stride):
            raise WeightFileError(f"invalid tensor layout: offset {offset!r}, size {size!r}, stride {stride!r}")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else -1
        if last >= storage.numel:
            raise WeightFileError(
                f"tensor of size {size}, stride {stride}, offset {offset} reaches element "
                f"{last} of a storage of {storage.numel}"
            )
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def read(self, storage_data: np.ndarray) -> np.ndarray:
        """The tensor as a contiguous array, given its storage's elements."""
        flat = storage_data[self.storage.start + self.offset :]
        view = np.lib.stride_tricks.as_strided(
            flat, self.size, tuple(s * flat.itemsize for s in self.stride), writeable=False
        )
        out = np.array(view, order="C")  # a copy, so the file's buffer is not kept alive
        if self.storage.stype.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out.astype(out.dtype.newbyteorder("="), copy=False)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """``torch._utils._rebuild_tensor`` (torch < 0.4) and ``_rebuild_tensor_v2`` (+ requires_grad, hooks, metadata)."""
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    """``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is its tensor here."""
    return data


_TORCH_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _TorchUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the names a state dict needs and hands storages to ``persistent``."""

    def __init__(self, file, persistent: Callable[[object], _Storage] | None = None):
        super().__init__(file, encoding="utf-8")
        self._persistent = persistent

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _TORCH_GLOBALS:
            return _TORCH_GLOBALS[(module, name)]
        raise WeightFileError(
            f"refusing to load {module}.{name}: a weight file may only hold tensors and "
            "dicts (re-save it as a state_dict of tensors, or as .safetensors / .npz)"
        )

    def persistent_load(self, pid):
        if self._persistent is None:
            raise WeightFileError(f"unexpected persistent id {pid!r}")
        return self._persistent(pid)


def _storage_id(pid, legacy: bool) -> tuple[_StorageType, str, int, tuple | None]:
    """Validates ``('storage', type, key, location, numel[, view])``; returns (type, key, numel, view)."""
    length = 6 if legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == length and pid[0] == "storage"):
        raise WeightFileError(f"unsupported persistent id {pid!r}")
    stype, key, numel = pid[1], str(pid[2]), pid[4]
    if not isinstance(stype, _StorageType) or not isinstance(numel, int) or numel < 0:
        raise WeightFileError(f"invalid storage reference {pid!r}")
    return stype, key, numel, pid[5] if legacy else None


def _collect(obj, keep: Callable[[str], bool]) -> dict[str, _TensorRef]:
    """Tensors in a (possibly nested) state dict, by dotted name; other values are skipped."""
    if not isinstance(obj, Mapping):
        raise WeightFileError(f"expected a state dict (a mapping of names to tensors), found {type(obj).__name__}")
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            name = f"{prefix}{k}"
            if isinstance(v, _TensorRef) and keep(name):
                out[name] = v
            elif isinstance(v, Mapping):
                walk(v, name + ".")

    walk(obj, "")
    return out


def _materialize(tensors: dict[str, _TensorRef], read_storage: Callable[[_Storage], np.ndarray]):
    """Reads each needed storage once (shared storages too) and copies out every tensor."""
    cache: dict[str, np.ndarray] = {}
    out = {}
    for name, ref in tensors.items():
        key = ref.storage.key
        if key not in cache:
            cache[key] = read_storage(ref.storage)
        if cache[key].size < ref.storage.start + ref.storage.numel:
            raise WeightFileError(f"storage {key} holds fewer elements than {name} needs")
        out[name] = ref.read(cache[key])
    return out


def _read_torch_zip(zf: zipfile.ZipFile, keep) -> dict[str, np.ndarray]:
    pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise WeightFileError(f"expected one data.pkl in the archive, found {len(pickles) or 'none'}")
    prefix = pickles[0][: -len("data.pkl")]  # "archive/" since torch 1.7 or so; earlier, the file's stem
    names = set(zf.namelist())
    byteorder = zf.read(prefix + "byteorder").strip() if prefix + "byteorder" in names else b"little"
    if byteorder not in (b"little", b"big"):
        raise WeightFileError(f"unknown byteorder record {byteorder!r}")

    storages: dict[str, _Storage] = {}

    def persistent(pid):
        stype, key, numel, _ = _storage_id(pid, legacy=False)
        return storages.setdefault(key, _Storage(key, stype, numel))

    def read_storage(storage: _Storage) -> np.ndarray:
        record = f"{prefix}data/{storage.key}"
        if record not in names:
            raise WeightFileError(f"storage record {record} is missing")
        raw = zf.read(record)
        dtype = storage.stype.raw_dtype.newbyteorder("<" if byteorder == b"little" else ">")
        if len(raw) != storage.numel * dtype.itemsize:
            raise WeightFileError(
                f"storage record {record} has {len(raw)} bytes, expected {storage.numel} × {dtype.itemsize}"
            )
        return np.frombuffer(raw, dtype)

    result = _TorchUnpickler(io.BytesIO(zf.read(pickles[0])), persistent).load()
    return _materialize(_collect(result, keep), read_storage)


def _read_torch_legacy(f, keep) -> dict[str, np.ndarray]:
    if _TorchUnpickler(f).load() != _TORCH_MAGIC:
        raise WeightFileError("not a PyTorch checkpoint (wrong magic number)")
    protocol = _TorchUnpickler(f).load()
    if protocol != _TORCH_LEGACY_PROTOCOL:
        raise WeightFileError(f"unsupported PyTorch serialization protocol {protocol!r}")
    sys_info = _TorchUnpickler(f).load()
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
        raise WeightFileError("big-endian legacy PyTorch checkpoints are not supported")

    roots: dict[str, _Storage] = {}
    views: dict[str, _Storage] = {}

    def persistent(pid):
        stype, key, numel, view = _storage_id(pid, legacy=True)
        root = roots.setdefault(key, _Storage(key, stype, numel))
        if view is None:
            return root
        view_key, start, view_numel = view  # a pre-0.4 storage slice: elements [start, start + numel) of the root
        if not (
            isinstance(start, int) and isinstance(view_numel, int) and 0 <= start <= start + view_numel <= root.numel
        ):
            raise WeightFileError(f"invalid storage view {view!r} of a storage of {root.numel}")
        return views.setdefault(str(view_key), _Storage(key, stype, view_numel, start))

    result = _TorchUnpickler(f, persistent).load()
    keys = [str(k) for k in _TorchUnpickler(f).load()]

    offsets = {}  # storage key → file offset of its bytes; the records follow each other
    pos = f.tell()
    size = os.fstat(f.fileno()).st_size
    for key in keys:
        f.seek(pos)
        head = f.read(8)
        if len(head) != 8:
            raise WeightFileError(f"file ends before storage {key}")
        (numel,) = struct.unpack("<q", head)
        if key not in roots or numel != roots[key].numel:
            raise WeightFileError(f"storage {key}: {numel} elements on disk do not match the pickle")
        offsets[key] = pos + 8
        pos += 8 + numel * roots[key].stype.raw_dtype.itemsize
        if pos > size:
            raise WeightFileError(f"file ends inside storage {key}")

    def read_storage(storage: _Storage) -> np.ndarray:
        root = roots[storage.key]
        if storage.key not in offsets:
            raise WeightFileError(f"storage {storage.key} has no data in the file")
        f.seek(offsets[storage.key])
        return np.frombuffer(f.read(root.numel * root.stype.raw_dtype.itemsize), root.stype.raw_dtype)

    return _materialize(_collect(result, keep), read_storage)


# ---------------------------------------------------------------------------------------------
# safetensors and npz

_SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": _BFLOAT16,
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def _read_safetensors(f, keep) -> dict[str, np.ndarray]:
    size = os.fstat(f.fileno()).st_size
    (header_len,) = struct.unpack("<Q", f.read(8))
    try:
        header = json.loads(f.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightFileError(f"corrupt safetensors header ({e})") from e
    base = 8 + header_len
    out = {}
    for name, entry in header.items():
        if name == "__metadata__" or not keep(name):
            continue
        try:
            dtype_code, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            dtype = np.dtype("<u2" if _SAFETENSORS_DTYPES[dtype_code] == _BFLOAT16 else _SAFETENSORS_DTYPES[dtype_code])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightFileError(f"invalid safetensors entry {name}: {entry!r}") from e
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if end - begin != nbytes or begin < 0:
            raise WeightFileError(f"{name}: data_offsets {begin}..{end} do not hold {dtype_code}{list(shape)}")
        if base + end > size:
            raise WeightFileError(f"file ends inside tensor {name} (truncated?)")
        f.seek(base + begin)
        arr = np.frombuffer(f.read(nbytes), dtype).reshape(shape)
        if dtype_code == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr.astype(arr.dtype.newbyteorder("="))
    return out


def _read_npz(path, keep) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files if keep(name)}


# ---------------------------------------------------------------------------------------------


def load_state_dict(
    path, *, keep: Callable[[str], bool] = lambda name: True, missing_hint: str = ""
) -> dict[str, np.ndarray]:
    """Every tensor in a PyTorch checkpoint, ``.safetensors`` or ``.npz`` file, as ``{name: np.ndarray}``.

    The format is recognised from the content. Tensors whose name fails ``keep`` are not
    read (a torchvision VGG16 file is 90% classifier). bfloat16 becomes float32; other
    dtypes are kept. Nested dicts (``{"state_dict": {...}}``) give dotted names.
    Raises FileNotFoundError (with ``missing_hint`` appended) or WeightFileError.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path}" + (f"\n{missing_hint}" if missing_hint else ""))
    with open(path, "rb") as f:
        head = f.read(9)
        f.seek(0)
        size = os.fstat(f.fileno()).st_size
        try:
            if head[:2] == b"PK":
                if not zipfile.is_zipfile(f):
                    raise WeightFileError("truncated or corrupt zip archive")
                f.seek(0)
                with zipfile.ZipFile(f) as zf:
                    names = zf.namelist()
                    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                        return _read_torch_zip(zf, keep)
                    if names and all(n.endswith(".npy") for n in names):
                        return _read_npz(path, keep)
                raise WeightFileError("zip archive is neither a PyTorch checkpoint nor an .npz file")
            if head[:1] == b"\x80":  # pickle PROTO opcode: torch.save's pre-1.6 format
                return _read_torch_legacy(f, keep)
            if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8:
                return _read_safetensors(f, keep)
        except WeightFileError as e:
            raise WeightFileError(f"{path}: {e}") from e
        except (
            pickle.UnpicklingError,
            EOFError,
            TypeError,
            ValueError,
            IndexError,
            KeyError,
            AttributeError,
            struct.error,
            zipfile.BadZipFile,
        ) as e:
            raise WeightFileError(f"{path}: truncated or corrupt weight file ({type(e).__name__}: {e})") from e
    if not head:
        raise WeightFileError(f"{path}: the file is empty")
    raise WeightFileError(
        f"{path}: unknown weight file format (starts with {head!r}); expected a PyTorch "
        "checkpoint (.pth/.pt), .safetensors or .npz"
    )


# ---------------------------------------------------------------------------------------------
# state dict → Flax variables

_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _torch_shape(shape: tuple) -> tuple:
    """PyTorch's shape of a Flax leaf: conv kernels HWIO → OIHW, others unchanged."""
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


def torch_names(template, module_name: Callable[[str], str] = lambda path: path) -> dict[str, tuple]:
    """``{state-dict name: Flax path}`` for a variables tree.

    A leaf ``(collection, *modules, leaf)`` is named ``module_name("m1.m2") + "." + leaf``
    with leaf kernel/scale → weight, bias → bias, mean → running_mean, var → running_var
    (the names ``nn.Conv2d`` and ``nn.BatchNorm2d`` use).
    """
    return {
        f"{module_name('.'.join(path[1:-1]))}.{_TORCH_LEAF[path[-1]]}": path
        for path in traverse_util.flatten_dict(template)
    }


def to_flax_variables(
    template,
    state: Mapping[str, np.ndarray],
    module_name: Callable[[str], str] = lambda path: path,
    what: str = "weights",
) -> dict:
    """Fills a Flax variables tree (``template``: arrays or ShapeDtypeStructs) from a PyTorch state dict.

    Names follow ``torch_names``; 4-d convolution kernels are transposed OIHW → HWIO.
    Raises WeightFileError listing every missing, unexpected and mis-shaped tensor.
    """
    leaves = traverse_util.flatten_dict(template)
    wanted = torch_names(template, module_name)
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    mismatched, out = [], {}
    for name, path in wanted.items():
        if name not in state:
            continue
        arr, leaf = np.asarray(state[name]), leaves[path]
        if arr.shape != _torch_shape(leaf.shape):
            mismatched.append(f"{name}: file has {arr.shape}, expected {_torch_shape(leaf.shape)}")
            continue
        out[path] = jnp.asarray(arr.transpose(2, 3, 1, 0) if arr.ndim == 4 else arr, leaf.dtype)
    problems = [
        f"{len(items)} {kind}: " + ", ".join(items[:8]) + (", …" if len(items) > 8 else "")
        for kind, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched))
        if items
    ]
    if problems:
        raise WeightFileError(f"{what} do not match the module: " + "; ".join(problems))
    return traverse_util.unflatten_dict(out)


def as_rgb(images: jax.Array) -> jax.Array:
    """NHWC images with 1 channel (mammograms) repeated to the 3 an ImageNet network expects."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected NHWC images with 1 or 3 channels, got shape {images.shape}")
    return jnp.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
