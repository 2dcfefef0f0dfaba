"""The learned known-location observer (``ldm_jax.evaluation.observer``): its crops, its reader, and
that it learns to read a lesion at the mask. Its AUC on dense phantoms is a measurement (docs/filter.md)."""

import numpy as np
import pytest

from ldm_jax.evaluation import detectability, observer


def test_lesion_crops_centre_the_mask_and_pad_with_the_background():
    image = np.arange(64, dtype=np.float32).reshape(1, 8, 8) / 64
    mask = np.zeros((1, 8, 8), bool)
    mask[0, 1:3, 7] = True  # centroid (1.5, 7) rounds to row 2, column 7
    crops = observer.lesion_crops(image, mask, size=4)
    padded = np.pad(image[0], 4, constant_values=-1.0)
    expected = padded[4:8, 9:13]  # image rows 0..3, columns 5..8: the last one is outside
    assert (expected[:, -1] == -1.0).all() and (expected[:, :-1] >= 0).all()
    np.testing.assert_allclose(crops[0, ..., 0], (expected - expected.mean()) / observer.CONTRAST_UNIT, rtol=1e-6)
    np.testing.assert_array_equal(crops[0, ..., 1], np.pad(mask[0], 4)[4:8, 9:13])
    assert crops[0, ..., 1].sum() == 2
    with pytest.raises(ValueError, match="mask 0 is empty"):
        observer.lesion_crops(image, np.zeros_like(mask), size=4)


def test_read_is_the_mean_inside_the_mask_minus_the_mean_outside():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 5, 5)).astype(np.float32)
    masks = (rng.random((3, 5, 5)) < 0.3).astype(np.float32)
    expected = [m[k > 0].mean() - m[k == 0].mean() for m, k in zip(maps, masks)]
    np.testing.assert_allclose(np.asarray(observer.read(maps, masks)), expected, rtol=1e-5)


def _blob_crops(rng, num: int, inside: bool, size: int = 24) -> np.ndarray:
    """Noise crops with one disk of radius 3: at the mask (the centre) when ``inside``, else in a
    corner, away from it."""
    yy, xx = np.mgrid[:size, :size]
    centre = size // 2
    mask = np.hypot(yy - centre, xx - centre) <= 3
    crops = np.zeros((num, size, size, 2), np.float32)
    for i in range(num):
        cy, cx = (centre, centre) if inside else rng.choice([4, size - 5], 2)
        crops[i, ..., 0] = rng.normal(size=(size, size)) + 1.5 * (np.hypot(yy - cy, xx - cx) <= 3)
        crops[i, ..., 1] = mask
    return crops


def test_the_trained_observer_finds_the_blob_at_the_mask_and_not_the_one_beside_it():
    """Both images of a pair hold the same disk in noise, one at the mask and one away from it: an
    observer that reads its map at the mask learns to tell them apart (AUC 1 would be ideal); one
    that ignored the mask or the labels could not."""
    rng = np.random.default_rng(0)
    params = observer.train(_blob_crops(rng, 256, True), _blob_crops(rng, 256, False), steps=60, batch_size=64)
    test = [np.asarray(observer.observe(params, _blob_crops(rng, 64, inside))) for inside in (True, False)]
    assert detectability.paired_auc(*test)["auc"] > 0.95, detectability.paired_auc(*test)
