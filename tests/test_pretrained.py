"""Weight files read without PyTorch; FID InceptionV3 and LPIPS loaded from them.

The PyTorch files are written here by a small writer that follows ``torch.save``'s two
formats (pickle protocol 2 with persistent storage ids and ``_rebuild_tensor_v2``; the zip
archive and the older single stream) using stand-in ``torch`` modules, so no torch is needed.
"""

import collections
import contextlib
import io
import json
import pickle
import struct
import sys
import types
import zipfile
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ldm_jax.evaluation import inception as inc
from ldm_jax.perceptual import lpips
from ldm_jax.perceptual.weights import WeightFileError, as_rgb, load_state_dict, to_flax_variables, torch_names

# ---------------------------------------------------------------------------------------------
# a test-only torch.save


class Storage:
    def __init__(self, key, type_name, data):
        self.key, self.type_name, self.data = key, type_name, np.ascontiguousarray(data)


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())


STORAGE_TYPES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage",
}


def contiguous(key, array):
    array = np.ascontiguousarray(array)
    strides = tuple(s // array.itemsize for s in array.strides)
    return Tensor(Storage(key, STORAGE_TYPES[array.dtype], array.ravel()), 0, array.shape, strides)


@contextlib.contextmanager
def stand_in_torch():
    """``torch`` and ``torch._utils`` modules holding just the names the pickle refers to."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for module, names in (
        (torch, ("FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage")),
        (utils, ("_rebuild_tensor_v2",)),
    ):
        for name in names:
            fn = lambda *args: None
            fn.__module__, fn.__name__, fn.__qualname__ = module.__name__, name, name
            setattr(module, name, fn)
    with mock.patch.dict(sys.modules, {"torch": torch, "torch._utils": utils}):
        yield torch


def torch_save(path, tensors: dict, legacy=False, prefix="archive"):
    """Writes ``{name: Tensor}`` as torch.save does a state dict (OrderedDict with ``_metadata``)."""
    state = collections.OrderedDict(tensors)
    state._metadata = collections.OrderedDict({"": {"version": 1}})
    storages = {}
    with stand_in_torch() as torch:

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if not isinstance(obj, Storage):
                    return None
                storages[obj.key] = obj
                pid = ("storage", getattr(torch, obj.type_name), obj.key, "cpu", obj.data.size)
                return pid + (None,) if legacy else pid

        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump(state)
    if legacy:
        with open(path, "wb") as f:
            for header in (
                0x1950A86A20F9469CFC6C,
                1001,
                {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}},
            ):
                pickle.dump(header, f, protocol=2)
            f.write(buf.getvalue())
            pickle.dump(sorted(storages), f, protocol=2)
            for key in sorted(storages):  # element count, then the little-endian bytes
                data = storages[key].data
                f.write(struct.pack("<q", data.size) + data.astype(data.dtype.newbyteorder("<")).tobytes())
        return
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", buf.getvalue())
        zf.writestr(f"{prefix}/byteorder", "little")
        for key, storage in storages.items():
            zf.writestr(f"{prefix}/data/{key}", storage.data.tobytes())
        zf.writestr(f"{prefix}/version", "3\n")


def to_bfloat16_bits(values):
    return (np.asarray(values, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def layout_cases():
    """Tensors exercising strides, offsets, a shared storage and each dtype; and what they must read back as."""
    rng = np.random.default_rng(0)
    s0 = np.arange(12, dtype=np.float32) * 0.5
    s1 = rng.normal(size=20).astype(np.float32)
    s2 = rng.normal(size=10).astype(np.float32)
    half = rng.normal(size=6).astype(np.float16)
    bf = np.array([1.0, -2.5, 3.140625, 0.0078125], np.float32)  # exact in bfloat16
    shared = Storage("2", "FloatStorage", s2)
    tensors = {
        "transposed": Tensor(Storage("0", "FloatStorage", s0), 0, (4, 3), (1, 4)),
        "offset": Tensor(Storage("1", "FloatStorage", s1), 5, (2, 2), (3, 1)),
        "shared.a": Tensor(shared, 0, (2, 3), (3, 1)),
        "shared.b": Tensor(shared, 6, (4,), (1,)),
        "half": Tensor(Storage("3", "HalfStorage", half), 0, (3, 2), (2, 1)),
        "bf16": Tensor(Storage("4", "BFloat16Storage", to_bfloat16_bits(bf)), 0, (2, 2), (2, 1)),
        "bn.num_batches_tracked": Tensor(Storage("5", "LongStorage", np.array([7], np.int64)), 0, (), ()),
    }
    expected = {
        "transposed": s0.reshape(3, 4).T,
        "offset": np.array([[s1[5], s1[6]], [s1[8], s1[9]]]),
        "shared.a": s2[:6].reshape(2, 3),
        "shared.b": s2[6:],
        "half": half.reshape(3, 2),
        "bf16": bf.reshape(2, 2),
        "bn.num_batches_tracked": np.array(7, np.int64),
    }
    return tensors, expected


# ---------------------------------------------------------------------------------------------
# reading weight files


@pytest.mark.parametrize(
    "legacy,prefix", [(False, "archive"), (False, "pt_inception-2015-12-05-6726825d"), (True, None)]
)
def test_torch_checkpoint_reads_back_exactly(tmp_path, legacy, prefix):
    tensors, expected = layout_cases()
    path = tmp_path / "weights.pth"
    torch_save(path, tensors, legacy=legacy, prefix=prefix)
    got = load_state_dict(path)
    assert got.keys() == expected.keys()
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert got["transposed"].flags.c_contiguous
    assert load_state_dict(path, keep=lambda n: n.startswith("shared")).keys() == {"shared.a", "shared.b"}


def test_hand_built_python2_legacy_checkpoint(tmp_path):
    """torch < 0.4 under Python 2 (e.g. torchvision's 2017 files): ``_rebuild_tensor`` without
    requires_grad/hooks, byte-string keys, a storage id key, data after the pickle."""

    def s(text):  # a Python 2 str: SHORT_BINSTRING
        return b"U" + bytes([len(text)]) + text

    magic = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
    protocol = b"\x80\x02M\xe9\x03."
    sys_info = b"\x80\x02}(" + s(b"little_endian") + b"\x88" + s(b"protocol_version") + b"M\xe9\x03u."
    body = (
        b"\x80\x02ccollections\nOrderedDict\n)R"
        + s(b"features.0.weight")
        + b"ctorch._utils\n_rebuild_tensor\n("
        + b"("
        + s(b"storage")
        + b"ctorch\nFloatStorage\n"
        + s(b"94034408")
        + s(b"cpu")
        + b"K\x06NtQ"
        + b"K\x00K\x03K\x02\x86K\x01K\x03\x86tRs."
    )
    keys = b"\x80\x02]" + s(b"94034408") + b"a."
    data = struct.pack("<q", 6) + np.arange(6, dtype="<f4").tobytes()
    path = tmp_path / "vgg16-py2.pth"
    path.write_bytes(magic + protocol + sys_info + body + keys + data)
    got = load_state_dict(path)
    np.testing.assert_array_equal(got["features.0.weight"], np.arange(6, dtype=np.float32).reshape(2, 3).T)


def test_safetensors_and_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        "a.weight": rng.normal(size=(3, 4)).astype(np.float32),
        "b.half": rng.normal(size=(5,)).astype(np.float16),
        "c.count": np.array([1, -2, 3], np.int64),
    }
    bf = np.array([[0.5, -1.0]], np.float32)
    blobs = [*(a.tobytes() for a in arrays.values()), to_bfloat16_bits(bf).tobytes()]
    codes = {"a.weight": "F32", "b.half": "F16", "c.count": "I64", "d.bf16": "BF16"}
    shapes = [a.shape for a in arrays.values()] + [bf.shape]
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for (name, code), shape, blob in zip(codes.items(), shapes, blobs):
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
    head = json.dumps(header).encode()
    st = tmp_path / "w.safetensors"
    st.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    got = load_state_dict(st)
    assert got.keys() == codes.keys()
    for name, want in {**arrays, "d.bf16": bf}.items():
        assert got[name].dtype == want.dtype
        np.testing.assert_array_equal(got[name], want)

    npz = tmp_path / "w.npz"
    np.savez(npz, **arrays)
    got = load_state_dict(npz)
    for name, want in arrays.items():
        np.testing.assert_array_equal(got[name], want)

    st.write_bytes(st.read_bytes()[:-3])
    with pytest.raises(WeightFileError, match="file ends inside tensor d.bf16"):
        load_state_dict(st)


MALICIOUS = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R."


def test_malicious_pickles_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("os.system", lambda *a: pytest.fail("os.system was called"))
    raw = tmp_path / "evil.pth"
    raw.write_bytes(MALICIOUS)
    with pytest.raises(WeightFileError, match=r"refusing to load os\.system"):
        load_state_dict(raw)
    archive = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("archive/data.pkl", MALICIOUS)
    with pytest.raises(WeightFileError, match=r"refusing to load os\.system"):
        load_state_dict(archive)
    # a tensor whose strides reach past its storage must not read foreign memory
    tensors = {"w": Tensor(Storage("0", "FloatStorage", np.zeros(4, np.float32)), 2, (2, 2), (2, 1))}
    torch_save(tmp_path / "oob.pth", tensors)
    with pytest.raises(WeightFileError, match="reaches element 5 of a storage of 4"):
        load_state_dict(tmp_path / "oob.pth")


def test_pickle_cannot_alter_a_checked_tensor(tmp_path):
    """BUILD (``obj.__setstate__`` / slot assignment) on a tensor after its layout was checked is refused."""

    def u(text):
        return b"X" + struct.pack("<I", len(text)) + text

    body = (
        b"\x80\x02}("
        + u(b"w")
        + b"ctorch._utils\n_rebuild_tensor_v2\n("
        + b"("
        + u(b"storage")
        + b"ctorch\nFloatStorage\n"
        + u(b"0")
        + u(b"cpu")
        + b"K\x04tQ"
        + b"K\x00K\x02K\x02\x86K\x02K\x01\x86\x89ccollections\nOrderedDict\n)RtR"
        + b"N}"
        + u(b"stride")
        + b"K\x64K\x64\x86s\x86b"
        + b"u."
    )
    path = tmp_path / "mutating.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", body)
        zf.writestr("archive/data/0", np.zeros(4, np.float32).tobytes())
    with pytest.raises(WeightFileError, match="tries to modify a TensorRef"):
        load_state_dict(path)


def test_truncated_unknown_and_missing_files(tmp_path):
    tensors, _ = layout_cases()
    for legacy, message in ((False, "truncated or corrupt"), (True, "file ends inside storage")):
        path = tmp_path / f"w{legacy}.pth"
        torch_save(path, tensors, legacy=legacy)
        path.write_bytes(path.read_bytes()[:-20])
        with pytest.raises(WeightFileError, match=message):
            load_state_dict(path)
    unknown = tmp_path / "weights.bin"
    unknown.write_bytes(b"GGUF\x03\x00\x00\x00 some other format")
    with pytest.raises(WeightFileError, match="unknown weight file format"):
        load_state_dict(unknown)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(WeightFileError, match="empty"):
        load_state_dict(tmp_path / "empty.pth")
    with pytest.raises(FileNotFoundError, match="not found.*\nget it from here"):
        load_state_dict(tmp_path / "nope.pth", missing_hint="get it from here")


# ---------------------------------------------------------------------------------------------
# FID InceptionV3


def synthetic_state(names_to_shapes, rng):
    """Random weights of the right shapes: He-scaled kernels, BatchNorm statistics near identity."""
    state = {}
    for name, shape in names_to_shapes.items():
        if name.endswith(("running_var", "bn.weight")):
            state[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif len(shape) == 4:
            state[name] = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2 / np.prod(shape[1:])))
        else:
            state[name] = 0.1 * rng.standard_normal(shape, np.float32)
    return state


def torch_shape(shape):
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


@pytest.fixture(scope="module")
def fid_inception(tmp_path_factory):
    template = inc.fid_inception_template(inc.FIDInceptionV3())
    leaves = traverse_util.flatten_dict(template)
    shapes = {name: torch_shape(leaves[path].shape) for name, path in torch_names(template).items()}
    state = synthetic_state(shapes, np.random.default_rng(0))
    extras = {
        "fc.weight": np.zeros((1008, 2048), np.float32),
        "fc.bias": np.zeros(1008, np.float32),
        "Conv2d_1a_3x3.bn.num_batches_tracked": np.array(0, np.int64),
    }
    path = tmp_path_factory.mktemp("fid") / inc.FID_WEIGHTS_FILE
    torch_save(path, {name: contiguous(str(i), a) for i, (name, a) in enumerate({**state, **extras}.items())})
    module, variables = inc.load_fid_inception(path)
    return template, shapes, state, module, variables


def test_inception_names_shapes_and_mapping(fid_inception):
    template, shapes, state, _, variables = fid_inception
    # torchvision's inception_v3 has 27,161,264 parameters; less AuxLogits (3,326,696) and fc (2,049,000)
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(template["params"])) == 21_785_568
    assert len(shapes) == 94 * 5  # 94 conv + BatchNorm layers
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_7c.branch_pool.bn.running_mean"] == (192,)
    got = variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
    np.testing.assert_array_equal(got, state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        variables["batch_stats"]["Mixed_5b"]["branch1x1"]["bn"]["var"], state["Mixed_5b.branch1x1.bn.running_var"]
    )

    broken = dict(state)
    del broken["Mixed_7c.branch_pool.bn.running_var"]
    broken["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
    broken["Mixed_5b.branch1x1.conv.weight"] = np.zeros((64, 192, 3, 3), np.float32)
    with pytest.raises(WeightFileError) as err:
        to_flax_variables(template, broken)
    message = str(err.value)
    assert "1 missing: Mixed_7c.branch_pool.bn.running_var" in message
    assert "1 unexpected: AuxLogits.fc.weight" in message
    assert "Mixed_5b.branch1x1.conv.weight: file has (64, 192, 3, 3), expected (64, 192, 1, 1)" in message


def numpy_conv_bn_relu(x, state, prefix, stride, padding):
    """Cross-correlation with OIHW weights, then BatchNorm(ε = 0.001) with running statistics, then ReLU."""
    w = state[f"{prefix}.conv.weight"].astype(np.float64)
    x = np.pad(x.astype(np.float64), ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)))
    kh, kw = w.shape[2:]
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[0]))
    for i in range(kh):
        for j in range(kw):
            out += x[:, i : i + stride * ho : stride, j : j + stride * wo : stride, :] @ w[:, :, i, j].T
    bn = {k: state[f"{prefix}.bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var")}
    out = (out - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"] + bn["bias"]
    return np.maximum(out, 0)


@pytest.mark.parametrize(
    "path,features,kernel,stride,padding,channels",
    [
        (("Mixed_6b", "branch7x7_2"), 128, (1, 7), 1, (0, 3), 128),  # asymmetric: catches an H/W swap
        (("Conv2d_1a_3x3",), 32, (3, 3), 2, (0, 0), 3),
    ],
)
def test_inception_conv_bn_matches_numpy(fid_inception, path, features, kernel, stride, padding, channels):
    _, _, state, _, variables = fid_inception
    sub = {c: variables[c] for c in ("params", "batch_stats")}
    for key in path:
        sub = {c: v[key] for c, v in sub.items()}
    x = np.random.default_rng(2).normal(size=(2, 9, 11, channels)).astype(np.float32)
    got = inc.BasicConv2d(features, kernel, stride, padding).apply(sub, x)
    want = numpy_conv_bn_relu(x, state, ".".join(path), stride, padding)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_inception_features_full_network(fid_inception):
    *_, module, variables = fid_inception
    images = np.random.default_rng(3).uniform(-1, 1, size=(2, 40, 48, 1)).astype(np.float32)
    features = inc.inception_features(module, variables, images)
    assert features.shape == (2, inc.FEATURES) and features.dtype == jnp.float32
    assert np.all(np.isfinite(features)) and np.all(np.asarray(features) >= 0)
    assert not np.allclose(features[0], features[1])


def _np_avg_pool3(x):
    """3×3 mean, stride 1, zero padding left out of the count (TensorFlow's average pool)."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ones = np.pad(np.ones(x.shape[1:3]), 1)
    h, w = x.shape[1:3]
    total = sum(padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3))
    count = sum(ones[i : i + h, j : j + w] for i in range(3) for j in range(3))
    return total / count[None, :, :, None]


def _np_max_pool3(x, stride):
    """3×3 max, stride 1 with padding 1 (padding never wins) or stride 2 without padding."""
    if stride == 1:
        x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    h, w = (x.shape[1] - 3) // stride + 1, (x.shape[2] - 3) // stride + 1
    return np.max(
        [x[:, i : i + stride * h : stride, j : j + stride * w : stride] for i in range(3) for j in range(3)], axis=0
    )


def _np_inception_a(x, state, p):
    c = lambda name, a, pad=(0, 0): numpy_conv_bn_relu(a, state, f"{p}.{name}", 1, pad)
    b5 = c("branch5x5_2", c("branch5x5_1", x), (2, 2))
    b3 = c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x), (1, 1)), (1, 1))
    return np.concatenate([c("branch1x1", x), b5, b3, c("branch_pool", _np_avg_pool3(x))], -1)


def _np_inception_b(x, state, p):
    c = lambda name, a, stride=1, pad=(0, 0): numpy_conv_bn_relu(a, state, f"{p}.{name}", stride, pad)
    bd = c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x), 1, (1, 1)), 2)
    return np.concatenate([c("branch3x3", x, 2), bd, _np_max_pool3(x, 2)], -1)


def _np_inception_e(x, state, p, pool):
    c = lambda name, a, pad=(0, 0): numpy_conv_bn_relu(a, state, f"{p}.{name}", 1, pad)
    b3 = c("branch3x3_1", x)
    b3 = np.concatenate([c("branch3x3_2a", b3, (0, 1)), c("branch3x3_2b", b3, (1, 0))], -1)
    bd = c("branch3x3dbl_2", c("branch3x3dbl_1", x), (1, 1))
    bd = np.concatenate([c("branch3x3dbl_3a", bd, (0, 1)), c("branch3x3dbl_3b", bd, (1, 0))], -1)
    pooled = _np_avg_pool3(x) if pool == "avg" else _np_max_pool3(x, 1)
    return np.concatenate([c("branch1x1", x), b3, bd, c("branch_pool", pooled)], -1)


def test_inception_blocks_match_numpy_branch_by_branch(fid_inception):
    """Mixed_5b (A), Mixed_6a (B), Mixed_7b (E, avg) and Mixed_7c (E, max pool) of the full network,
    each recomputed in numpy from the block's captured input: branch order, pool types and the
    padding-excluding average pool all show; the output is the spatial mean of Mixed_7c."""
    _, _, state, module, variables = fid_inception
    # 299×299 intermediate shapes (pytorch-fid / torchvision InceptionV3), traced without computing
    x299 = jax.ShapeDtypeStruct((1, inc.INPUT_SIZE, inc.INPUT_SIZE, 3), jnp.float32)
    _, inter = jax.eval_shape(
        lambda v, x: module.apply(v, x, capture_intermediates=True, mutable=["intermediates"]), variables, x299
    )
    shapes = {k: v["__call__"][0].shape[1:] for k, v in inter["intermediates"].items() if k != "__call__"}
    assert shapes == {
        "Conv2d_1a_3x3": (149, 149, 32),
        "Conv2d_2a_3x3": (147, 147, 32),
        "Conv2d_2b_3x3": (147, 147, 64),
        "Conv2d_3b_1x1": (73, 73, 80),
        "Conv2d_4a_3x3": (71, 71, 192),
        "Mixed_5b": (35, 35, 256),
        "Mixed_5c": (35, 35, 288),
        "Mixed_5d": (35, 35, 288),
        "Mixed_6a": (17, 17, 768),
        "Mixed_6b": (17, 17, 768),
        "Mixed_6c": (17, 17, 768),
        "Mixed_6d": (17, 17, 768),
        "Mixed_6e": (17, 17, 768),
        "Mixed_7a": (8, 8, 1280),
        "Mixed_7b": (8, 8, 2048),
        "Mixed_7c": (8, 8, 2048),
    }
    # a 139×139 input keeps the last blocks at 3×3, where padding and pool type matter
    x = np.random.default_rng(12).uniform(-1, 1, (1, 139, 139, 3)).astype(np.float32)
    run = jax.jit(lambda v, x: module.apply(v, x, capture_intermediates=True, mutable=["intermediates"]))
    out, inter = run(variables, x)
    got = {k: np.asarray(v["__call__"][0], np.float64) for k, v in inter["intermediates"].items() if k != "__call__"}
    assert got["Mixed_7c"].shape == (1, 3, 3, 2048)
    checks = [
        ("Mixed_5b", _np_inception_a(_np_max_pool3(got["Conv2d_4a_3x3"], 2), state, "Mixed_5b")),
        ("Mixed_6a", _np_inception_b(got["Mixed_5d"], state, "Mixed_6a")),
        ("Mixed_7b", _np_inception_e(got["Mixed_7a"], state, "Mixed_7b", "avg")),
        ("Mixed_7c", _np_inception_e(got["Mixed_7b"], state, "Mixed_7c", "max")),
    ]
    for name, want in checks:
        scale = np.abs(want).max()
        np.testing.assert_allclose(got[name] / scale, want / scale, atol=2e-5, err_msg=name)
    np.testing.assert_allclose(out, got["Mixed_7c"].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_inception_missing_weights_say_what_to_get(tmp_path, monkeypatch):
    monkeypatch.delenv(inc.FID_WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=f"{inc.FID_WEIGHTS_FILE}.*{inc.FID_WEIGHTS_ENV}"):
        inc.load_fid_inception()
    monkeypatch.setenv(inc.FID_WEIGHTS_ENV, str(tmp_path / "absent.pth"))
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        inc.load_fid_inception()


# ---------------------------------------------------------------------------------------------
# LPIPS

VGG16_CONVS = [
    (0, 3, 64),
    (2, 64, 64),
    (5, 64, 128),
    (7, 128, 128),
    (10, 128, 256),
    (12, 256, 256),
    (14, 256, 256),
    (17, 256, 512),
    (19, 512, 512),
    (21, 512, 512),
    (24, 512, 512),
    (26, 512, 512),
    (28, 512, 512),
]  # torchvision vgg16().features: (index, in, out) of each 3×3 convolution


@pytest.fixture(scope="module")
def lpips_net(tmp_path_factory):
    rng = np.random.default_rng(4)
    vgg = {}
    for i, cin, cout in VGG16_CONVS:
        he = np.float32(np.sqrt(2 / (9 * cin)))
        vgg[f"features.{i}.weight"] = rng.standard_normal((cout, cin, 3, 3), np.float32) * he
        vgg[f"features.{i}.bias"] = 0.01 * rng.standard_normal(cout, np.float32)
    vgg["classifier.0.weight"] = np.zeros((4, 4), np.float32)  # skipped, never read
    lin = {
        f"lin{k}.model.1.weight": np.abs(rng.standard_normal((1, c, 1, 1), np.float32)) * 0.1
        for k, c in enumerate(lpips.CHANNELS)
    }
    folder = tmp_path_factory.mktemp("lpips")
    torch_save(
        folder / lpips.VGG16_FILE, {n: contiguous(str(i), a) for i, (n, a) in enumerate(vgg.items())}, legacy=True
    )
    torch_save(folder / lpips.LIN_FILE, {n: contiguous(str(i), a) for i, (n, a) in enumerate(lin.items())})
    module, variables = lpips.load_lpips(folder / lpips.VGG16_FILE, folder / lpips.LIN_FILE)
    return folder, vgg, lin, module, variables


def images(seed, shape=(2, 32, 32, 1)):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32))


def test_lpips_metric_properties(lpips_net):
    *_, module, variables = lpips_net
    x, y = images(5), images(6)
    d_xy = np.asarray(lpips.lpips_distance(module, variables, x, y))
    assert d_xy.shape == (2,) and np.all(d_xy > 0)
    # compiled XLA reductions may round one batch row 1 ulp differently from another: ~1e-16, not always 0
    np.testing.assert_allclose(lpips.lpips_distance(module, variables, x, x), 0.0, atol=1e-12)
    np.testing.assert_allclose(lpips.lpips_distance(module, variables, y, x), d_xy, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 16"):
        lpips.lpips_distance(module, variables, x[:, :8, :8], y[:, :8, :8])


def test_lpips_matches_numpy_heads(lpips_net):
    """The normalise / squared difference / lin / spatial mean / layer sum of Eq. 1 on the network's features."""
    _, _, lin, module, variables = lpips_net
    x, y = images(7), images(8)
    scale = lambda a: (np.repeat(np.asarray(a), 3, -1) - lpips.SHIFT) / lpips.SCALE
    vgg = lpips.VGG16Features()
    fx = vgg.apply({"params": variables["params"]["vgg"]}, scale(x))
    fy = vgg.apply({"params": variables["params"]["vgg"]}, scale(y))
    want = 0.0
    for k, (a, b) in enumerate(zip(fx, fy)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        na = a / (np.sqrt((a**2).sum(-1, keepdims=True)) + 1e-10)
        nb = b / (np.sqrt((b**2).sum(-1, keepdims=True)) + 1e-10)
        want = want + (((na - nb) ** 2) @ lin[f"lin{k}.model.1.weight"].reshape(-1)).mean(axis=(1, 2))
    np.testing.assert_allclose(lpips.lpips_distance(module, variables, x, y), want, rtol=1e-4)


def _np_vgg16_features(x, vgg):
    """VGG16's relu1_2 … relu5_3 in numpy from the torch-layout (OIHW) weights: 3×3 cross-correlation
    with zero padding 1, bias, ReLU; 2×2 max pool (stride 2) before blocks 2–5."""
    outputs = []
    for block, indices in enumerate(((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))):
        if block:
            n, h, w, c = x.shape
            x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
        for i in indices:
            weight, bias = vgg[f"features.{i}.weight"].astype(np.float64), vgg[f"features.{i}.bias"]
            padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            h, w = x.shape[1:3]
            x = sum(padded[:, a : a + h, b : b + w] @ weight[:, :, a, b].T for a in range(3) for b in range(3))
            x = np.maximum(x + bias, 0.0)
        outputs.append(x)
    return outputs


def test_lpips_matches_an_independent_numpy_vgg16(lpips_net):
    """Eq. 1 end to end in numpy (float64), VGG16 features included, from the weight files' tensors."""
    _, vgg, lin, module, variables = lpips_net
    x, y = images(15), images(16)
    shift = np.array([-0.030, -0.088, -0.188])  # LPIPS v0.1 ScalingLayer
    scale = np.array([0.458, 0.448, 0.450])
    prep = lambda a: (np.repeat(np.asarray(a, np.float64), 3, -1) - shift) / scale
    want = np.zeros(2)
    for k, (a, b) in enumerate(zip(_np_vgg16_features(prep(x), vgg), _np_vgg16_features(prep(y), vgg))):
        assert a.shape[1:] == ((32 >> k), (32 >> k), lpips.CHANNELS[k])
        na = a / (np.sqrt((a**2).sum(-1, keepdims=True)) + 1e-10)
        nb = b / (np.sqrt((b**2).sum(-1, keepdims=True)) + 1e-10)
        want += (((na - nb) ** 2) @ lin[f"lin{k}.model.1.weight"].reshape(-1)).mean(axis=(1, 2))
    np.testing.assert_allclose(lpips.lpips_distance(module, variables, x, y), want, rtol=1e-4)


def test_grayscale_is_repeated_to_rgb():
    x = images(14, (1, 4, 4, 1))
    np.testing.assert_array_equal(as_rgb(x), np.repeat(np.asarray(x), 3, -1))
    np.testing.assert_array_equal(as_rgb(jnp.repeat(x, 3, -1)), np.repeat(np.asarray(x), 3, -1))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        as_rgb(jnp.zeros((1, 4, 4, 2)))


def test_normalize_channels_matches_numpy_and_is_smooth_at_zero():
    f = np.random.default_rng(9).normal(size=(1, 2, 3, 5)).astype(np.float32)
    f[0, 1, 2] = 0.0
    want = f / (np.sqrt((f.astype(np.float64) ** 2).sum(-1, keepdims=True)) + 1e-10)
    np.testing.assert_allclose(lpips.normalize_channels(f), want, rtol=1e-6, atol=1e-7)
    grad = jax.grad(lambda a: jnp.sum(lpips.normalize_channels(a) * jnp.arange(5.0)))(jnp.asarray(f))
    assert np.all(np.isfinite(grad))


def test_lpips_gradient_is_finite(lpips_net):
    *_, module, variables = lpips_net
    y = images(10)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(lpips.lpips_distance(module, variables, x, y))))
    assert np.abs(grad(images(11))).max() > 0
    for x in (images(11), y, -jnp.ones_like(y)):  # includes x = y and a flat image
        assert np.all(np.isfinite(grad(x)))


def test_lpips_loader_checks_names_and_shapes(lpips_net, tmp_path):
    folder, vgg, lin, _, _ = lpips_net
    template = jax.eval_shape(lpips.LPIPS().init, jax.random.key(0), *[jnp.zeros((1, 16, 16, 3))] * 2)
    # torchvision's VGG16 has 138,357,544 parameters, 123,642,856 of them in the classifier
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(template["params"]["vgg"])) == 14_714_688
    with pytest.raises(WeightFileError, match=r"5 missing: lin0\.model\.1\.weight"):
        lpips.load_lpips(folder / lpips.VGG16_FILE)
    bad = dict(lin, **{"lin2.model.1.weight": np.zeros((1, 255, 1, 1), np.float32)})
    np.savez(tmp_path / "lin.npz", **bad)
    with pytest.raises(
        WeightFileError,
        match=r"lin2\.model\.1\.weight: file has \(1, 255, 1, 1\), "
        r"expected \(1, 256, 1, 1\)",
    ):
        lpips.load_lpips(folder / lpips.VGG16_FILE, tmp_path / "lin.npz")
    merged = tmp_path / "lpips_vgg16.npz"  # one file holding both, for a single config key
    np.savez(merged, **{k: v for k, v in vgg.items() if not k.startswith("classifier")}, **lin)
    module, variables = lpips.load_lpips(merged)
    assert np.isfinite(lpips.lpips_distance(module, variables, images(12), images(13))).all()
    with pytest.raises(FileNotFoundError, match=lpips.VGG16_FILE):
        lpips.load_lpips(tmp_path / "absent.pth", folder / lpips.LIN_FILE)
