"""The mass reader: the ring contrast of a lesion against its surround,

    c(x) = mean(x | lesion) − mean(x | band)

with ``band`` the ring around the lesion inside the breast (``lesion_pairs.mass_band``). The filter
table scores masses with it (``evaluation.lesions.mass_contrast``), the counterfactual stage's
ranking term trains for it (``training.lesion_ranking``) and the learned observer reads its maps
with it, the band there being the rest of the crop (``evaluation.observer``). One reader, in numpy
for one image and in jnp for a batch (differentiable, float masks as weights).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def ring_contrast_np(image, lesion, band) -> float:
    """c(x) of one ``image`` at boolean ``lesion`` and ``band`` masks of its shape (float64)."""
    image = np.asarray(image, np.float64)
    lesion, band = np.asarray(lesion, bool), np.asarray(band, bool)
    if not lesion.any() or not band.any():
        raise ValueError("the lesion mask or the band around it is empty")
    return float(image[lesion].mean() - image[band].mean())


def ring_contrast(images, lesion, band):
    """c(x) per image of ``images [B, ...]``, with ``lesion`` and ``band`` weights of the same shape
    (an empty mask reads as mean 0)."""
    axes = tuple(range(1, images.ndim))
    inside = (images * lesion).sum(axes) / jnp.maximum(lesion.sum(axes), 1.0)
    around = (images * band).sum(axes) / jnp.maximum(band.sum(axes), 1.0)
    return inside - around
