"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric") with VGG16.

Eq. 1 of the paper, version 0.1 of the reference code:

    d(x, y) = Σ_l  1/(H_l W_l) Σ_{h,w}  w_l · (ŷ^l_hw(x) − ŷ^l_hw(y))²,

where ŷ^l are VGG16's relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 activations of the
input shifted and scaled per channel (the "scaling layer"), each channel vector divided by
its L2 norm (+ 1e-10), and w_l ≥ 0 the learned 1×1 "lin" heads.

Weights (two files, downloaded once by hand; nothing is fetched at run time):

- ``vgg16-397923af.pth``: torchvision's ImageNet VGG16
  (https://download.pytorch.org/models/vgg16-397923af.pth); only ``features.*`` is read.
- ``vgg.pth`` of LPIPS v0.1: the lin heads ``lin0.model.1.weight`` … ``lin4.model.1.weight``,
  in the ``lpips`` pip package at ``lpips/weights/v0.1/vgg.pth`` or at
  https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth.

Both may also be merged into one ``.npz``/``.safetensors`` with the same tensor names.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.perceptual.weights import as_rgb, load_state_dict, to_flax_variables

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
LIN_FILE = "vgg.pth"
LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"

SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)  # the scaling layer: (x − shift) / scale
SCALE = np.array([0.458, 0.448, 0.450], np.float32)
# torchvision ``vgg16().features`` indices of the 3×3 convolutions, grouped by the relu that ends each LPIPS slice
VGG16_BLOCKS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
CHANNELS = (64, 128, 256, 512, 512)
MIN_SIZE = 16  # four 2×2 max pools before relu5_3

_VGG_HINT = (
    f"LPIPS needs torchvision's ImageNet VGG16 weights {VGG16_FILE}: download it once from {VGG16_URL} "
    "and pass its path."
)
_LIN_HINT = (
    f"LPIPS needs its v0.1 linear heads {LIN_FILE}: copy lpips/weights/v0.1/vgg.pth from the `lpips` "
    f"package or download {LIN_URL}, and pass its path."
)


class VGG16Features(nn.Module):
    """VGG16 convolutions (3×3, ReLU; 2×2 max pool between blocks) → the 5 LPIPS activations."""

    @nn.compact
    def __call__(self, x):
        outputs = []
        for block, (indices, channels) in enumerate(zip(VGG16_BLOCKS, CHANNELS)):
            if block:
                x = nn.max_pool(x, (2, 2), (2, 2))
            for i in indices:
                x = nn.relu(nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), name=f"features_{i}")(x))
            outputs.append(x)
        return outputs


def normalize_channels(features: jax.Array, eps: float = 1e-10) -> jax.Array:
    """Each channel vector divided by its L2 norm + ε (ŷ in Eq. 1); gradient finite at zero vectors."""
    sq = jnp.sum(features * features, axis=-1, keepdims=True)
    positive = sq > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
    return features / (norm + eps)


class LPIPS(nn.Module):
    """``(x, y)`` NHWC 3-channel images in [-1, 1] → LPIPS distance per example ``[N]``."""

    @nn.compact
    def __call__(self, x, y):
        n = x.shape[0]
        distance = 0.0
        for layer, f in enumerate(VGG16Features(name="vgg")((jnp.concatenate([x, y]) - SHIFT) / SCALE)):
            f = normalize_channels(f)
            head = nn.Conv(1, (1, 1), use_bias=False, name=f"lin{layer}")
            distance = distance + jnp.mean(head((f[:n] - f[n:]) ** 2), axis=(1, 2, 3))
        return distance


def _torch_module(path: str) -> str:
    """Flax module path → state-dict prefix: ``vgg.features_0`` → ``features.0``, ``lin0`` → ``lin0.model.1``."""
    if path.startswith("vgg.features_"):
        return "features." + path.removeprefix("vgg.features_")
    return f"{path}.model.1"


def load_lpips(vgg_path: str | os.PathLike, lin_path: str | os.PathLike | None = None) -> tuple[LPIPS, dict]:
    """``(module, variables)`` from torchvision's ``vgg16-397923af.pth`` and LPIPS's ``v0.1/vgg.pth``.

    With ``lin_path`` None, ``vgg_path`` must hold both sets of tensors (a merged file).
    VGG16's classifier (``classifier.*``) is skipped without being read.
    """
    state = load_state_dict(vgg_path, keep=lambda name: not name.startswith("classifier."), missing_hint=_VGG_HINT)
    if lin_path is not None:
        state.update(load_state_dict(lin_path, missing_hint=_LIN_HINT))
    module = LPIPS()
    x = jax.ShapeDtypeStruct((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32)
    template = jax.eval_shape(module.init, jax.random.key(0), x, x)
    files = str(vgg_path) + (f" + {lin_path}" if lin_path is not None else "")
    return module, to_flax_variables(template, state, _torch_module, what=f"LPIPS weights {files}")


@functools.partial(jax.jit, static_argnums=0)
def lpips_distance(module: LPIPS, variables, x: jax.Array, y: jax.Array) -> jax.Array:
    """LPIPS distance per example ``[N]`` of NHWC images in [-1, 1] with 1 (repeated) or 3 channels.

    Differentiable in ``x`` and ``y``; the network's weights are held constant
    (``stop_gradient``), so it can serve as a training loss term.
    """
    if x.shape != y.shape:
        raise ValueError(f"LPIPS needs two batches of one shape, got {x.shape} and {y.shape}")
    if min(x.shape[1:3]) < MIN_SIZE:
        raise ValueError(f"LPIPS needs images of at least {MIN_SIZE}×{MIN_SIZE}, got {x.shape[1:3]}")
    variables = jax.lax.stop_gradient(variables)
    return module.apply(variables, as_rgb(x.astype(jnp.float32)), as_rgb(y.astype(jnp.float32)))
