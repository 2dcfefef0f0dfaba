"""A learned known-location observer: how well can *any* filter make a lesion visible?

A filter is a function of the image alone, so a filter followed by a reader is one observer of
the image; none can separate the pairs better than the best observer of the unedited image
(data processing). This module trains such an observer on dense same-seed pairs
(``lesion_pairs.phantom_pairs``) and scores the same held-out pairs as the filter table:

* the image crop ``CROP × CROP`` centred at the lesion mask's centroid, its mean subtracted, in
  units of ``CONTRAST_UNIT`` (masses in dense tissue differ from their surround by a few
  hundredths of the model range);
* **filter form**: a small fully convolutional network maps the crop to a map ``m`` without
  seeing the mask, and the score is ``mean(m | lesion) − mean(m | rest of the crop)``: a local
  filter followed by a contrast read-out like the table's mass reader (which compares the lesion
  with a ring around it). Its AUC is what a filter trained for such a reader reaches, a lower
  bound on the ideal observer's;
* trained with the logistic loss on both images of each training pair (with lesion: 1, without:
  0), training pairs from ``seeds.TRAINING_PAIRS_SEED`` on.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from ldm_jax.data import lesion_pairs, seeds
from ldm_jax.data.mass_reader import ring_contrast
from ldm_jax.evaluation import detectability

CROP = 24  # pixels; a mass of radius 15 mm spans 10 pixels at 64×64
CONTRAST_UNIT = 0.1  # model-range units per input unit


def lesion_crops(images, masks, size: int = CROP) -> np.ndarray:
    """``[N, size, size, 2]`` float32: each image's crop centred at its mask's centroid (outside the
    image: −1, the background), mean-subtracted over the crop, in ``CONTRAST_UNIT``; and the mask."""
    images, masks = np.asarray(images, np.float32), np.asarray(masks, bool)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.shape != masks.shape or images.ndim != 3:
        raise ValueError(f"images {images.shape} and masks {masks.shape} must be matching [N, H, W]")
    out = np.zeros((len(images), size, size, 2), np.float32)
    for i, (image, mask) in enumerate(zip(images, masks)):
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            raise ValueError(f"mask {i} is empty: the observer is told where the lesion is")
        y, x = int(round(rows.mean())), int(round(cols.mean()))
        top, left = y + size - size // 2, x + size - size // 2  # in the image padded by size
        window = (slice(top, top + size), slice(left, left + size))
        crop = np.pad(image, size, constant_values=-1.0)[window]
        out[i, ..., 0] = (crop - crop.mean()) / CONTRAST_UNIT
        out[i, ..., 1] = np.pad(mask, size)[window]
    return out


class LesionMap(nn.Module):
    """Image crops ``[B, S, S, 1]`` (S even) → maps ``[B, S, S]``: a small fully convolutional
    filter, its second half at half resolution (each value then covers 2×2 pixels)."""

    features: int = 16

    @nn.compact
    def __call__(self, images):
        h = nn.gelu(nn.Conv(self.features, (3, 3))(images))
        h = nn.gelu(nn.Conv(self.features, (3, 3))(h))
        h = nn.gelu(nn.Conv(2 * self.features, (3, 3), strides=2)(h))
        h = nn.gelu(nn.Conv(2 * self.features, (5, 5))(h))
        m = nn.Conv(1, (1, 1))(h)[..., 0]
        return jnp.repeat(jnp.repeat(m, 2, axis=1), 2, axis=2)


def read(maps, masks):
    """The reader's score of maps ``[B, S, S]`` at masks ``[B, S, S]``: ``mean(map | mask) − mean(map | rest)``."""
    return ring_contrast(maps, masks, 1 - masks)


def observe(params, crops):
    """Scores ``[B]`` of ``lesion_crops``: the map of the image channel alone, read at the mask."""
    return read(LesionMap().apply(params, crops[..., :1]), crops[..., 1])


def train(crops_with, crops_without, *, steps: int, seed: int = 0, batch_size: int = 128, learning_rate=2e-3):
    """Parameters of a ``LesionMap`` trained with the logistic loss to score crops with the
    lesion above those without, cosine-decayed AdamW, each batch flipped left-right half the time."""
    x = np.concatenate([crops_with, crops_without])
    y = np.concatenate([np.ones(len(crops_with)), np.zeros(len(crops_without))]).astype(np.float32)
    params = LesionMap().init(jax.random.PRNGKey(seed), x[:1, ..., :1])
    optimizer = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=1e-4)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss(p):
            return optax.sigmoid_binary_cross_entropy(observe(p, xb), yb).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(seed)
    for _ in tqdm(range(steps), desc="observer", leave=False):
        rows = rng.integers(0, len(x), batch_size)
        xb = x[rows][:, :, ::-1] if rng.random() < 0.5 else x[rows]
        params, opt_state = step(params, opt_state, xb, y[rows])
    return params


def ceiling(size: int, kind: str, test_pairs: int, test_seed: int, *, train_pairs: int, steps: int, seed: int = 0):
    """The filter-form observer's ``paired_auc`` on the unedited images of ``test_pairs`` dense pairs
    from seed ``test_seed`` (the filter table's), trained on ``train_pairs`` from
    ``seeds.TRAINING_PAIRS_SEED``."""
    if steps < 1 or train_pairs < 1:
        raise ValueError(f"the observer needs steps >= 1 and train_pairs >= 1, got {steps} and {train_pairs}")
    crops = {}
    splits = (("train", train_pairs, seeds.TRAINING_PAIRS_SEED), ("test", test_pairs, test_seed))
    for name, num, first in splits:
        pairs = lesion_pairs.phantom_pairs(num, size, kind, first)
        masks = pairs["with"]["mask"]
        crops[name] = [lesion_crops(pairs[part]["image"], masks) for part in ("with", "without")]
    params = train(*crops["train"], steps=steps, seed=seed)
    result = detectability.paired_auc(*(np.asarray(jax.jit(observe)(params, c)) for c in crops["test"]))
    return {**result, "train_pairs": train_pairs, "steps": steps}
