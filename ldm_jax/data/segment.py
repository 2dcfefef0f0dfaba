"""Breast segmentation of a display image (float ``[H, W]`` in [0, 1], 1 = dense).

Film scans carry burned-in view labels, markers, dust and bright film-edge lines beside the
breast, so a box around every bright pixel keeps the whole film. The breast is found as an
object instead, on a copy shrunk to at most ``WORK_SIDE`` pixels a side:

1. foreground: above a threshold ``LOWER`` of the way from the background level (the median
   below Otsu's threshold) to Otsu's threshold: Otsu alone splits fat from dense tissue when
   the breast fills the frame, and the fatty rim and skin are dim;
2. an opening (erosion then dilation, ``OPEN_WIDTH`` wide) removes lines and specks thinner
   than that, so an edge line no longer joins the breast or spans the frame;
3. the breast is the largest connected component touching the left or right border (the
   chest wall), its holes filled, grown by ``GROW`` pixels to keep the dim skin line;
4. the mask is mapped back to full size; everything outside it is background.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

WORK_SIDE = 512  # longest side of the copy the mask is computed on
OPEN_WIDTH = 5  # opening width (work pixels): lines and specks narrower than this are dropped
LOWER = 0.15  # where the threshold sits between the background level (0) and Otsu's (1)
GROW = 2  # work pixels added around the breast: the skin line lies just under the threshold


class NoBreastError(ValueError):
    """No breast-like object in the image (blank, or nothing touches the left/right border)."""


def otsu_threshold(image: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: maximises the between-class variance of the histogram."""
    counts, edges = np.histogram(image, bins=bins, range=(0.0, 1.0))
    counts = counts.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(counts)
    weight1 = weight0[-1] - weight0
    mass0 = np.cumsum(counts * centres)
    mean0 = mass0 / np.maximum(weight0, 1e-12)
    mean1 = (mass0[-1] - mass0) / np.maximum(weight1, 1e-12)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _shrink(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Block means of ``image`` by an integer factor so the longest side is ``<= WORK_SIDE``."""
    factor = max(1, -(-max(image.shape) // WORK_SIDE))
    if factor == 1:
        return image, 1
    h, w = (-(-n // factor) * factor for n in image.shape)
    padded = np.pad(image, ((0, h - image.shape[0]), (0, w - image.shape[1])), mode="edge")
    return padded.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3)), factor


def breast_mask(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(mask, chest_wall_right)``: bool ``[H, W]`` of the breast and the side it touches.

    Raises ``NoBreastError`` when no component touches the left or right border.
    """
    small, factor = _shrink(np.asarray(image, np.float32))
    otsu = otsu_threshold(small)
    background = float(np.median(small[small <= otsu]))
    foreground = small > background + LOWER * (otsu - background)
    structure = np.ones((OPEN_WIDTH, OPEN_WIDTH), bool)
    foreground = ndimage.binary_opening(foreground, structure)
    labels, count = ndimage.label(foreground)
    if count == 0:
        raise NoBreastError("no breast found")
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    left, right = np.bincount(labels[:, 0], minlength=count + 1), np.bincount(labels[:, -1], minlength=count + 1)
    sizes[0] = 0
    sizes[(left == 0) & (right == 0)] = 0  # the breast meets the chest-wall border
    if sizes.max() == 0:
        raise NoBreastError("no breast found")
    breast = int(np.argmax(sizes))
    mask = ndimage.binary_fill_holes(labels == breast)
    mask = ndimage.binary_dilation(mask, iterations=GROW)
    if factor > 1:
        mask = np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)[: image.shape[0], : image.shape[1]]
    return mask, bool(right[breast] > left[breast])


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` (exclusive ends) of the ``True`` pixels of ``mask``."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
