"""InceptionV3 as used for FID (Heusel et al. 2017), in Flax, with the user's local weights.

The network is the TF-slim graph ``inception-2015-12-05`` that the reference FID code
uses, as ported to PyTorch by pytorch-fid (Szegedy et al. 2016, "Rethinking the Inception
Architecture"): torchvision's InceptionV3 layout with BatchNorm ε = 0.001, average pools
that leave the zero padding out of the mean (TensorFlow's behaviour) and a max pool in the
last block's pooling branch. Features are the 2048-d global average pool ("pool3").

Weights: ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's release "fid_weights":
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth).
Download it once, by hand, and pass its path or set ``LDM_JAX_FID_WEIGHTS``; nothing is
downloaded at run time. The classifier (``fc.*``) is not needed and not loaded.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.perceptual.weights import as_rgb, load_state_dict, to_flax_variables

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILE}"
FID_WEIGHTS_ENV = "LDM_JAX_FID_WEIGHTS"
INPUT_SIZE = 299
FEATURES = 2048

_MISSING_HINT = (
    f"FID needs the InceptionV3 weights {FID_WEIGHTS_FILE} (pytorch-fid's port of TensorFlow's "
    f"inception-2015-12-05). Download it once from {FID_WEIGHTS_URL} and pass its path "
    f"(or set {FID_WEIGHTS_ENV}=/path/to/{FID_WEIGHTS_FILE}); it is never downloaded automatically."
)


class BasicConv2d(nn.Module):
    """Convolution without bias → BatchNorm (running statistics, ε = 0.001) → ReLU."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        pad = tuple((p, p) for p in self.padding)
        x = nn.Conv(self.features, self.kernel, strides=self.stride, padding=pad, use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _conv(name, features, kernel, stride=1, padding=0):
    pair = lambda v: (v, v) if isinstance(v, int) else v
    return BasicConv2d(features, pair(kernel), stride, pair(padding), name=name)


def _avg_pool3(x):
    """3×3 average pool, stride 1, zero padding excluded from the mean (TensorFlow's, not torchvision's)."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool3(x, stride):
    return nn.max_pool(x, (3, 3), (stride, stride), ((1, 1), (1, 1)) if stride == 1 else "VALID")


class InceptionA(nn.Module):
    """35×35 block (``Mixed_5b``–``5d``): 1×1, 5×5, double 3×3 and pooled branches."""

    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = _conv("branch1x1", 64, 1)(x)
        b5 = _conv("branch5x5_2", 64, 5, padding=2)(_conv("branch5x5_1", 48, 1)(x))
        b3 = _conv("branch3x3dbl_1", 64, 1)(x)
        b3 = _conv("branch3x3dbl_3", 96, 3, padding=1)(_conv("branch3x3dbl_2", 96, 3, padding=1)(b3))
        bp = _conv("branch_pool", self.pool_features, 1)(_avg_pool3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """35→17 reduction (``Mixed_6a``)."""

    @nn.compact
    def __call__(self, x):
        b3 = _conv("branch3x3", 384, 3, stride=2)(x)
        bd = _conv("branch3x3dbl_2", 96, 3, padding=1)(_conv("branch3x3dbl_1", 64, 1)(x))
        bd = _conv("branch3x3dbl_3", 96, 3, stride=2)(bd)
        return jnp.concatenate([b3, bd, _max_pool3(x, 2)], axis=-1)


class InceptionC(nn.Module):
    """17×17 block (``Mixed_6b``–``6e``) with factorised 1×7 / 7×1 convolutions."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = _conv("branch1x1", 192, 1)(x)
        b7 = _conv("branch7x7_1", c7, 1)(x)
        b7 = _conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7)
        b7 = _conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7)
        bd = _conv("branch7x7dbl_1", c7, 1)(x)
        bd = _conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
        bd = _conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
        bd = _conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
        bd = _conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
        bp = _conv("branch_pool", 192, 1)(_avg_pool3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """17→8 reduction (``Mixed_7a``)."""

    @nn.compact
    def __call__(self, x):
        b3 = _conv("branch3x3_2", 320, 3, stride=2)(_conv("branch3x3_1", 192, 1)(x))
        b7 = _conv("branch7x7x3_1", 192, 1)(x)
        b7 = _conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
        b7 = _conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
        b7 = _conv("branch7x7x3_4", 192, 3, stride=2)(b7)
        return jnp.concatenate([b3, b7, _max_pool3(x, 2)], axis=-1)


class InceptionE(nn.Module):
    """8×8 block (``Mixed_7b``: average-pool branch; ``Mixed_7c``: max-pool branch, as in the FID graph)."""

    pool: str  # "avg" or "max"

    @nn.compact
    def __call__(self, x):
        b1 = _conv("branch1x1", 320, 1)(x)
        b3 = _conv("branch3x3_1", 384, 1)(x)
        b3 = jnp.concatenate(
            [
                _conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
                _conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3),
            ],
            axis=-1,
        )
        bd = _conv("branch3x3dbl_2", 384, 3, padding=1)(_conv("branch3x3dbl_1", 448, 1)(x))
        bd = jnp.concatenate(
            [
                _conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
                _conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd),
            ],
            axis=-1,
        )
        pooled = _avg_pool3(x) if self.pool == "avg" else _max_pool3(x, 1)
        bp = _conv("branch_pool", 192, 1)(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """NHWC images in [-1, 1] at 299×299×3 → pool3 features ``[N, 2048]``."""

    @nn.compact
    def __call__(self, x):
        x = _conv("Conv2d_1a_3x3", 32, 3, stride=2)(x)
        x = _conv("Conv2d_2a_3x3", 32, 3)(x)
        x = _conv("Conv2d_2b_3x3", 64, 3, padding=1)(x)
        x = _max_pool3(x, 2)
        x = _conv("Conv2d_3b_1x1", 80, 1)(x)
        x = _conv("Conv2d_4a_3x3", 192, 3)(x)
        x = _max_pool3(x, 2)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def fid_inception_template(module: FIDInceptionV3):
    """The module's variables as ShapeDtypeStructs (``params`` and ``batch_stats``), without computing anything."""
    x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    return jax.eval_shape(module.init, jax.random.key(0), x)


def _unused(name: str) -> bool:
    """State-dict entries the features do not need: the 1008-way classifier and BatchNorm step counters."""
    return name.startswith("fc.") or name.endswith(".num_batches_tracked")


def load_fid_inception(path: str | os.PathLike | None = None) -> tuple[FIDInceptionV3, dict]:
    """``(module, variables)`` from the local FID weights file (``path``, else ``$LDM_JAX_FID_WEIGHTS``).

    Every convolution and BatchNorm tensor of the pytorch-fid state dict must be present
    with its shape; anything else in the file except ``fc.*`` and ``num_batches_tracked``
    is an error.
    """
    path = path or os.environ.get(FID_WEIGHTS_ENV)
    if not path:
        raise FileNotFoundError(f"no FID Inception weights given. {_MISSING_HINT}")
    state = load_state_dict(path, keep=lambda name: not _unused(name), missing_hint=_MISSING_HINT)
    module = FIDInceptionV3()
    return module, to_flax_variables(fid_inception_template(module), state, what=f"FID Inception weights {path}")


@functools.partial(jax.jit, static_argnums=0)
def inception_features(module: FIDInceptionV3, variables, images: jax.Array) -> jax.Array:
    """Pool3 features ``[N, 2048]`` of NHWC images in [-1, 1] with 1 (repeated) or 3 channels.

    Images are resized bilinearly to 299×299 without antialiasing, as pytorch-fid's
    ``F.interpolate(..., mode="bilinear", align_corners=False)`` does.
    """
    x = as_rgb(images.astype(jnp.float32))
    x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "bilinear", antialias=False)
    return module.apply(variables, x)
