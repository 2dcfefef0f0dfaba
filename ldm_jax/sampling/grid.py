"""Image grids (contact sheets) and conversion from the model range [-1, 1] to pixels."""

from __future__ import annotations

import numpy as np

from ldm_jax.data.imageio import FFDM_MAX


def to_pixels(x, max_value: int = FFDM_MAX, dtype=np.uint16) -> np.ndarray:
    """Model-range images ``[-1, 1]`` → integers ``0..max_value`` (the inverse of the pipeline's scaling)."""
    x = np.asarray(x, np.float32)
    return np.clip(np.rint((x + 1.0) * 0.5 * max_value), 0, max_value).astype(dtype)


def make_grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile ``[N, H, W]`` (or ``[N, H, W, 1]``) images into one ``[rows·(H+pad)+pad, ...]`` image."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"expected a non-empty stack of grayscale images [N, H, W], got shape {images.shape}")
    n, h, w = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad), images.dtype)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = image
    return grid
