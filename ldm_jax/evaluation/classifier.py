"""A small phantom classifier: attribute heads for conditioning control and an embedding for FID/KID/PR.

``PhantomClassifier`` (Flax Linen) maps NHWC images in the model range ``[-1, 1]`` to logits
for ``HEADS`` = density (4), finding (3), view (2) and to ``features``, the penultimate
embedding used as the feature space of ``ldm_jax.evaluation.metrics``. Laterality has no
head: it is a horizontal flip, which training uses as augmentation.

Design (chosen for a few CPU minutes of training at 64×64): a 2×2 space-to-depth stem,
3×3 convolutions (the first stride 1, then stride 2) with ReLU, global mean and max pooling
(mean: composition; max: small bright structures); beside it a soft (triangular-kernel)
intensity histogram of the whole image, because the density classes are glandular-fraction
bins, which show in the intensity distribution inside the breast; both go through a dense
ReLU layer, the embedding. Trained with AdamW and warm-up + cosine decay on freshly generated
phantoms (``train_on_phantoms``).

Density and view are learned (tests/test_classifier.py); the finding head stays at chance in
64×64 phantoms, and no classifier can do much better there, because the phantoms bound it:
0.1-1 mm calcifications are sub-pixel at 3.1 mm pixels and below the texture
(``ldm_jax.evaluation.lesions``), and masses are masked by glandular tissue, which they match in
attenuation. Even an observer told where the mass is separates a phantom with a mass from the
same breast without one at AUC 0.94 in fatty (A) and 0.76 in extremely dense (D) breasts
(tests/test_phantoms.py); searching for it (the largest multi-scale difference of Gaussians over
the breast) scored AUC 0.49-0.52 at every density (200 seeds). Finding-conditioning accuracies
from this classifier are therefore not meaningful at 64×64; masses are judged on the fat-only
counterfactuals instead (dense-tissue removal).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ldm_jax import attributes
from ldm_jax.data.imageio import to_model_range
from ldm_jax.storage import write_atomic
from ldm_jax.evaluation.metrics import pad_batch
from ldm_jax.data.phantoms import generate_phantom

HEADS: tuple[str, ...] = attributes.ATTRIBUTE_NAMES[:3]  # density, finding, view
HEAD_CLASSES: tuple[int, ...] = attributes.NUM_CLASSES[:3]
_FORMAT = "ldm_jax.phantom_classifier/1"


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Architecture; ``image_size`` is the (square) input size the parameters were trained for."""

    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 64, 128)
    embed_dim: int = 128
    histogram_bins: int = 32

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))  # hashable (jit cache key)
        if self.image_size < 8 or self.image_size % 2:
            raise ValueError(f"image_size must be an even number >= 8, got {self.image_size}")
        if not self.channels or min(self.channels) < 1 or self.embed_dim < 1 or self.histogram_bins < 2:
            raise ValueError(
                f"channels {self.channels}, embed_dim {self.embed_dim} must be positive and "
                f"histogram_bins {self.histogram_bins} >= 2"
            )


class PhantomClassifier(nn.Module):
    """``x [B, H, W, 1]`` in ``[-1, 1]`` → ``{"features": [B, D], "density": [B, 4], "finding": [B, 3],
    "view": [B, 2]}`` (logits)."""

    channels: Sequence[int]
    embed_dim: int
    histogram_bins: int

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        x = x.astype(jnp.float32)
        b, height, width, c = x.shape
        h = x.reshape(b, height // 2, 2, width // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
        h = h.reshape(b, height // 2, width // 2, 4 * c)
        for i, channels in enumerate(self.channels):
            h = nn.relu(nn.Conv(channels, (3, 3), strides=1 if i == 0 else 2, name=f"conv{i}")(h))
        pooled = jnp.concatenate([h.mean(axis=(1, 2)), h.max(axis=(1, 2))], axis=-1)
        hist = nn.relu(nn.Dense(64, name="histogram")(self.histogram_bins * _soft_histogram(x, self.histogram_bins)))
        features = nn.relu(nn.Dense(self.embed_dim, name="embed")(jnp.concatenate([pooled, hist], axis=-1)))
        out = {"features": features}
        for name, n in zip(HEADS, HEAD_CLASSES):
            out[name] = nn.Dense(n, name=name)(features)
        return out


def _soft_histogram(x: jax.Array, bins: int) -> jax.Array:
    """Fraction of pixels per bin ``[B, bins]`` over ``[-1, 1]``, triangular kernels one bin wide (a
    differentiable histogram: each value splits between its two nearest bin centres)."""
    centres = jnp.linspace(-1.0, 1.0, bins)
    weights = jnp.maximum(1.0 - jnp.abs(x - centres) * ((bins - 1) / 2.0), 0.0)  # [B, H, W, bins]
    return weights.mean(axis=(1, 2))


def make_model(config: ClassifierConfig) -> PhantomClassifier:
    """The Linen module of ``config``."""
    return PhantomClassifier(
        channels=tuple(config.channels), embed_dim=config.embed_dim, histogram_bins=config.histogram_bins
    )


def init_params(config: ClassifierConfig, seed: int = 0):
    """Fresh parameters (a Flax variables dict) for ``config``."""
    x = jnp.zeros((1, config.image_size, config.image_size, 1), jnp.float32)
    return make_model(config).init(jax.random.key(seed), x)


def _check_images(images, config: ClassifierConfig) -> np.ndarray:
    images = np.asarray(images, np.float32)
    want = (config.image_size, config.image_size, 1)
    if images.ndim != 4 or images.shape[1:] != want:
        raise ValueError(f"expected images [N, {want[0]}, {want[1]}, 1] in [-1, 1], got shape {images.shape}")
    return images


def _check_labels(labels, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != n or labels.shape[1] < len(HEADS):
        raise ValueError(
            f"expected labels [{n}, >= {len(HEADS)}] in the order {attributes.ATTRIBUTE_NAMES}, "
            f"got shape {labels.shape}"
        )
    for i, (name, k) in enumerate(zip(HEADS, HEAD_CLASSES)):
        if labels[:, i].min() < 0 or labels[:, i].max() >= k:
            raise ValueError(f"{name} labels must be in [0, {k}) for training (no null labels)")
    return labels[:, : len(HEADS)].astype(np.int32)


# ----------------------------------------------------------------------------- training


def phantom_training_set(num: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``num`` phantoms with seeds ``seed, seed + 1, …``: images ``[N, size, size, 1]`` in ``[-1, 1]``
    and labels ``[N, 4]``. Use disjoint seed ranges for training and held-out sets."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    images = np.empty((num, size, size, 1), np.float32)
    labels = np.empty((num, len(attributes.ATTRIBUTE_NAMES)), np.int32)
    for i in range(num):
        phantom = generate_phantom(seed + i, size)
        images[i, ..., 0] = to_model_range(phantom.image)
        labels[i] = phantom.labels
    return images, labels


def train_classifier(
    images,
    labels,
    config: ClassifierConfig = ClassifierConfig(),
    *,
    steps: int = 800,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    log: Callable[[int, float], None] | None = None,
    log_every: int = 100,
):
    """Train on ``images [N, S, S, 1]`` (``[-1, 1]``) and ``labels [N, >= 3]``; returns the parameters
    (a Flax variables dict ``{"params": ...}``, as ``predict`` and ``save_classifier`` take).

    Loss: sum of the three heads' cross-entropies. AdamW, linear warm-up (5% of the steps) and
    cosine decay; batches drawn with replacement; random horizontal flips (a laterality change,
    which no head predicts). One jitted step; ``log(step, loss)`` every ``log_every`` steps.
    """
    images = _check_images(images, config)
    labels = _check_labels(labels, len(images))
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    model = make_model(config)
    params = init_params(config, seed)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, steps // 20), steps)
    optimizer = optax.adamw(schedule, weight_decay=weight_decay)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, y, flip):
        x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)

        def loss_fn(p):
            out = model.apply(p, x)
            return sum(
                optax.softmax_cross_entropy_with_integer_labels(out[name], y[:, i]).mean()
                for i, name in enumerate(HEADS)
            )

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    for i in range(steps):
        index = rng.integers(0, len(images), batch_size)
        params, opt_state, loss = step(params, opt_state, images[index], labels[index], rng.random(batch_size) < 0.5)
        if log is not None and (i % log_every == 0 or i == steps - 1):
            log(i, float(loss))
    return params


def train_on_phantoms(config: ClassifierConfig = ClassifierConfig(), *, num_train: int = 7000, seed: int = 0, **kwargs):
    """Generate ``num_train`` phantoms at ``config.image_size`` (seeds from ``seed``) and train on them;
    keyword arguments go to ``train_classifier``. Returns the parameters. The defaults (800 steps)
    are evaluate.py's recipe: at 64×64, 98.4% held-out density accuracy (README); 600 steps, as
    tests/test_classifier.py trains, gave 96.7% in 2.6 minutes on 2 CPU cores."""
    images, labels = phantom_training_set(num_train, config.image_size, seed)
    return train_classifier(images, labels, config, seed=seed, **kwargs)


# ----------------------------------------------------------------------------- inference


@functools.lru_cache(maxsize=8)
def _apply_fn(config: ClassifierConfig):
    model = make_model(config)
    return jax.jit(lambda params, x: model.apply(params, x))


def predict(params, config: ClassifierConfig, images, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Classify images ``[N, S, S, 1]`` in ``[-1, 1]``: ``features [N, D]``, softmax probabilities
    per head (``"density"``, ``"finding"``, ``"view"``, ``[N, K]``) and ``labels [N, 3]`` (argmax, in
    ``HEADS`` order). Fixed-size batches (the last padded), one compilation."""
    images = _check_images(images, config)
    if len(images) == 0:
        raise ValueError("no images to classify")
    apply = _apply_fn(config)
    batch = min(batch_size, len(images))
    chunks = []
    for start in range(0, len(images), batch):
        x = images[start : start + batch]
        n = len(x)
        out = apply(params, pad_batch(x, batch))
        chunks.append({k: np.asarray(v)[:n] for k, v in out.items()})
    out = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    result = {"features": out["features"]}
    for name in HEADS:
        result[name] = np.asarray(jax.nn.softmax(out[name], axis=-1))
    result["labels"] = np.stack([result[name].argmax(-1) for name in HEADS], axis=1).astype(np.int32)
    return result


def features(params, config: ClassifierConfig, images, batch_size: int = 256) -> np.ndarray:
    """The embedding ``[N, D]`` of images ``[N, S, S, 1]`` in ``[-1, 1]`` (for FID, KID, precision/recall
    and nearest-neighbour search)."""
    return predict(params, config, images, batch_size)["features"]


# ----------------------------------------------------------------------------- files


def save_classifier(path: str | os.PathLike, params, config: ClassifierConfig) -> None:
    """Write parameters and config to one msgpack file (atomically)."""
    payload = {
        "format": _FORMAT,
        "config": {
            "image_size": config.image_size,
            "channels": list(config.channels),
            "embed_dim": config.embed_dim,
            "histogram_bins": config.histogram_bins,
        },
        "params": jax.tree.map(np.asarray, params),
    }
    write_atomic(path, flax.serialization.msgpack_serialize(payload))


def load_classifier(path: str | os.PathLike):
    """``(params, config)`` from a file written by ``save_classifier``."""
    with open(path, "rb") as f:
        payload = flax.serialization.msgpack_restore(f.read())
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a phantom classifier file ({_FORMAT})")
    c = payload["config"]
    config = ClassifierConfig(
        image_size=int(c["image_size"]),
        channels=tuple(int(v) for v in c["channels"]),
        embed_dim=int(c["embed_dim"]),
        histogram_bins=int(c["histogram_bins"]),
    )
    return payload["params"], config


# ----------------------------------------------------------------------------- conditioning control


def _label_pair(pred_labels, target_labels):
    pred, target = np.asarray(pred_labels), np.asarray(target_labels)
    if pred.ndim != 2 or target.ndim != 2 or len(pred) != len(target) or target.shape[1] < pred.shape[1]:
        raise ValueError(f"expected pred [N, K] and target [N, >= K] label arrays, got {pred.shape}, {target.shape}")
    if pred.shape[1] > len(attributes.ATTRIBUTE_NAMES):
        raise ValueError(f"at most {len(attributes.ATTRIBUTE_NAMES)} attributes, got {pred.shape[1]}")
    return pred, target


def confusion_matrices(pred_labels, target_labels) -> dict[str, np.ndarray]:
    """Per attribute, ``C[i, j]`` = number of items of target class i predicted as j (int64 ``[K, K]``).

    Columns of both arrays follow ``ldm_jax.attributes.ATTRIBUTE_NAMES`` (``pred`` may have fewer, e.g.
    the classifier's 3 heads; extra target columns are ignored). Null targets (index K,
    "attribute not given") are left out.
    """
    pred, target = _label_pair(pred_labels, target_labels)
    out = {}
    for i in range(pred.shape[1]):
        name, k = attributes.ATTRIBUTE_NAMES[i], attributes.NUM_CLASSES[i]
        given = target[:, i] < k
        if np.any((pred[:, i] < 0) | (pred[:, i] >= k)) or np.any(target[:, i] < 0):
            raise ValueError(f"{name} labels out of range [0, {k})")
        matrix = np.zeros((k, k), np.int64)
        np.add.at(matrix, (target[given, i], pred[given, i]), 1)
        out[name] = matrix
    return out


def conditioning_accuracy(pred_labels, target_labels) -> dict[str, float]:
    """Per attribute, the fraction of items whose predicted class equals the (non-null) target — e.g.
    the classifier's labels of samples generated for a condition against that condition. Attributes
    whose targets are all null are left out. Column order as ``confusion_matrices``."""
    return {
        name: float(np.trace(m) / m.sum())
        for name, m in confusion_matrices(pred_labels, target_labels).items()
        if m.sum()
    }


def accuracy_report(params, config: ClassifierConfig, images, labels, batch_size: int = 256) -> dict:
    """Classify ``images`` and compare with ``labels [N, >= 3]``: ``{"accuracy": {head: float},
    "confusion": {head: [K, K]}}`` (held-out evaluation, or conditioning control of samples)."""
    pred = predict(params, config, images, batch_size)["labels"]
    return {"accuracy": conditioning_accuracy(pred, labels), "confusion": confusion_matrices(pred, labels)}
