"""PNG encoding of 8- and 16-bit grayscale images (PIL, no TensorFlow), the stored-pixel → model
range conversion, and atomic writes."""

from __future__ import annotations

import io

import numpy as np

MAX_VALUE = 4095  # stored mammograms are 12-bit: 0..4095 in uint16 (phantoms, DICOM data sets)


def _as_2d(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"expected a grayscale image [H, W] or [H, W, 1], got shape {image.shape}")
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG images must be uint8 or uint16, got {image.dtype}")
    return image


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 or uint16 grayscale image ``[H, W]`` or ``[H, W, 1]``."""
    from PIL import Image

    image = _as_2d(image)
    if image.dtype == np.uint16:
        pil = Image.frombytes("I;16", image.shape[::-1], image.astype("<u2").tobytes())
    else:
        pil = Image.fromarray(image, mode="L")
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Grayscale ``[H, W]`` array (uint8 or uint16) from PNG bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as pil:
        if pil.mode in ("I;16", "I;16B", "I"):
            return np.asarray(pil, dtype=np.uint16)
        return np.asarray(pil.convert("L"), dtype=np.uint8)


FFDM_MAX = 4095  # 12-bit full-field digital mammography: what a uint16 image holds here


def to_model_range(pixels, max_value: float = FFDM_MAX, image_size: int | None = None) -> np.ndarray:
    """Stored pixels ``0..max_value`` → float32 ``[-1, 1]`` (``v / max_value · 2 − 1``, clipped),
    the training preprocessing; with ``image_size`` (when it differs) the image ``[H, W]`` is
    also padded to a centred square with -1 and resized. Inverse: ``ldm_jax.sampling.grid.to_pixels``."""
    image = np.clip(np.asarray(pixels, np.float32) * np.float32(2.0 / max_value) - np.float32(1.0), -1.0, 1.0)
    if image_size is not None and image.shape != (image_size, image_size):
        image = _square_resize(image, image_size)
    return image


def _square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Pad ``[H, W]`` in [-1, 1] to a square with -1 (centred), then resize to ``[size, size]``."""
    from PIL import Image

    h, w = image.shape
    side = max(h, w)
    square = np.full((side, side), -1.0, np.float32)
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = image
    resized = Image.fromarray(square, mode="F").resize((size, size), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized, np.float32)
