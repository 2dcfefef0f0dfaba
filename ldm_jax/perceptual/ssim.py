"""Structural similarity (Wang et al. 2004) and its multi-scale form (Wang et al. 2003) in JAX.

Images are NHWC; values in ``[0, max_val]`` or any range of width ``max_val``. Means,
variances and covariance use an 11-tap Gaussian window (σ = 1.5) with "valid" borders:

    SSIM = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)),
    C1 = (0.01 L)², C2 = (0.03 L)².
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _blur(x: jax.Array, window: np.ndarray) -> jax.Array:
    """Separable depthwise Gaussian filter, 'valid' borders, of an NHWC batch."""
    c = x.shape[-1]
    size = window.shape[0]
    kh = jnp.tile(jnp.asarray(window).reshape(size, 1, 1, 1), (1, 1, 1, c))
    kw = jnp.tile(jnp.asarray(window).reshape(1, size, 1, 1), (1, 1, 1, c))
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)
    return jax.lax.conv_general_dilated(x, kw, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)


def _ssim_terms(x, y, max_val, filter_size, sigma):
    """Mean luminance·contrast·structure map and mean contrast·structure map, each per example [B]."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"SSIM needs two NHWC batches of one shape, got {x.shape} and {y.shape}")
    if min(x.shape[1:3]) < filter_size:
        raise ValueError(f"images {x.shape[1:3]} are smaller than the SSIM window {filter_size}")
    window = _gaussian_window(filter_size, sigma)
    x = x.astype(jnp.float32)
    y = y.astype(jnp.float32)
    c1 = (0.01 * max_val) ** 2
    c2 = (0.03 * max_val) ** 2
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    sxx = _blur(x * x, window) - mu_x**2
    syy = _blur(y * y, window) - mu_y**2
    sxy = _blur(x * y, window) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return jnp.mean(luminance * cs, axis=(1, 2, 3)), jnp.mean(cs, axis=(1, 2, 3))


def ssim(x: jax.Array, y: jax.Array, max_val: float = 1.0, filter_size: int = 11, sigma: float = 1.5) -> jax.Array:
    """SSIM per example ``[B]`` of two NHWC batches."""
    return _ssim_terms(x, y, max_val, filter_size, sigma)[0]


def ms_ssim(
    x: jax.Array, y: jax.Array, max_val: float = 1.0, filter_size: int = 11, sigma: float = 1.5, weights=MS_SSIM_WEIGHTS
) -> jax.Array:
    """Multi-scale SSIM per example ``[B]``: Π_j cs_j^{w_j} over scales, luminance at the coarsest.

    Uses as many of the 5 standard scales as the image size allows (each scale halves the
    image; the coarsest must still hold the window); weights are renormalised to sum to 1.
    """
    size = min(x.shape[1:3])
    scales = 1
    while scales < len(weights) and size // 2**scales >= filter_size:
        scales += 1
    w = np.asarray(weights[:scales], np.float64)
    w = (w / w.sum()).tolist()
    value = 1.0
    for j in range(scales):
        full, cs = _ssim_terms(x, y, max_val, filter_size, sigma)
        term = full if j == scales - 1 else cs
        value = value * jnp.maximum(term, 1e-6) ** w[j]
        if j < scales - 1:
            x = _avg_pool2(x)
            y = _avg_pool2(y)
    return value


def _avg_pool2(x):
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
