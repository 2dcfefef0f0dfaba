"""Breast segmentation on phantoms and on synthetic film scans (labels, markers, edge lines)."""

import numpy as np
import pytest
from scipy import ndimage
from test_dicom import write_dicom

from ldm_jax.data import dicom, segment
from ldm_jax.data.phantoms import generate_phantom


def _letters(artefact, top, left, count=3, scale=1.0):
    """Burned-in letters ("LCC"-like: a stem and a foot each), 50 x 36 pixels apiece at scale 1."""
    height, stroke, pitch, foot = (round(v * scale) for v in (50, 12, 36, 28))
    for k in range(count):
        x = left + pitch * k
        artefact[top : top + height, x : x + stroke] = True
        artefact[top + height - stroke : top + height, x : x + foot] = True


def film_scan(seed, view, laterality, height=640, width=448, letters=True):
    """A digitised-film mammogram as 12-bit stored values: a phantom breast at the chest-wall
    border on a noisy film base; burned-in letters in the far corner of the film and in the
    empty corner of the breast's own bounding box; a dust speck; bright film-edge lines along
    the top and the far side, the top one touching the breast (the MLO axilla).

    Returns (pixels ``[height, width]``, true breast mask, planted artefact mask).
    """
    rng = np.random.default_rng(seed)
    p = generate_phantom(seed, size=384, view=view, laterality="L")
    image = 0.06 + 0.02 * rng.standard_normal((height, width))
    image[8:392, :384] += 0.94 * p.image / 4095.0  # tissue exposes the film less than air
    breast = np.zeros((height, width), bool)
    breast[8:392, :384] = p.breast_mask
    rows, cols = np.nonzero(breast)
    artefact = np.zeros((height, width), bool)
    if letters:
        _letters(artefact, 560, 320)
        _letters(artefact, rows.max() - 30, cols.max() - 50, count=2, scale=0.5)  # in the breast's box
    artefact[600:606, 200:206] = True  # a dust speck
    artefact[:8, :] = True  # film edge lines
    artefact[:, -10:] = True
    artefact &= ~breast
    image[artefact] = 0.97
    if laterality == "R":
        image, breast, artefact = image[:, ::-1], breast[:, ::-1], artefact[:, ::-1]
    pixels = np.round(np.clip(image, 0, 1) * 4095).astype(np.uint16)
    return pixels, breast, artefact


def _check_mask(mask, breast, artefact):
    """≥ 99 % of the breast kept; no artefact pixel kept beyond 12 pixels of the breast (where an
    8-pixel edge line lies on the breast it cannot be told from it)."""
    assert (mask & breast).sum() >= 0.99 * breast.sum()
    near = ndimage.binary_dilation(breast, iterations=12)
    assert not (mask & artefact & ~near).any()


@pytest.mark.parametrize("view", ["CC", "MLO"])
@pytest.mark.parametrize("laterality", ["L", "R"])
def test_film_scan_mask_keeps_the_breast_and_drops_labels_and_lines(view, laterality):
    pixels, breast, artefact = film_scan(7, view, laterality)
    mask, chest_wall_right = segment.breast_mask(pixels / 4095.0)
    assert chest_wall_right == (laterality == "R")
    _check_mask(mask, breast, artefact)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_film_scan_dicom_is_stored_without_labels(tmp_path, photometric):
    """Through the whole loader: the stored image is the one of the same film without letters
    and dust (one letter pair lies inside the breast's box), and the breast fills the frame
    (the old column-band crop kept the full film width)."""
    stored = {}
    for letters in (True, False):
        pixels, breast, _ = film_scan(3, "MLO", "R", letters=letters)
        pixels = 4095 - pixels.astype(np.int32) if photometric == "MONOCHROME1" else pixels
        path = write_dicom(tmp_path / f"{letters}.dcm", pixels, photometric=photometric, laterality="R", view="MLO")
        stored[letters] = dicom.load_mammogram(path, 64)
    m = stored[True]
    # the letters shift the threshold a little: the mask's rim moves by a pixel, where it is dim
    difference = np.abs(m.image.astype(np.int32) - stored[False].image)
    assert difference.max() < 0.1 * 4095 and (difference > 0).mean() < 0.02
    assert m.flipped and m.breast_fraction == pytest.approx(breast.mean(), abs=0.02)
    rows, cols = np.nonzero(breast)  # a tall box: all 64 rows, and columns in proportion
    box_h, box_w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    filled_cols = np.flatnonzero(m.image.max(axis=0) > 0)
    assert filled_cols[-1] + 1 == pytest.approx(64 * box_w / box_h, abs=3)


@pytest.mark.parametrize("seed", range(8))
def test_phantom_masks_cover_the_breast(seed):
    p = generate_phantom(seed, size=128)
    mask, chest_wall_right = segment.breast_mask(p.image / 4095.0)
    assert chest_wall_right == bool(p.laterality)
    assert (mask & p.breast_mask).sum() >= 0.99 * p.breast_mask.sum()
    assert (mask & ~p.breast_mask).sum() <= 0.1 * p.breast_mask.sum()


def test_otsu_threshold_splits_two_levels():
    values = np.concatenate([np.full(700, 0.2), np.full(300, 0.7)])
    assert 0.2 < segment.otsu_threshold(values) <= 0.7


def test_blank_image_has_no_breast():
    with pytest.raises(segment.NoBreastError):
        segment.breast_mask(np.zeros((64, 64), np.float32))
    floating = np.zeros((64, 64), np.float32)
    floating[20:40, 20:40] = 0.8  # touches neither the left nor the right border
    with pytest.raises(segment.NoBreastError):
        segment.breast_mask(floating)
