import numpy as np
import pytest
from scipy import ndimage

from ldm_jax.perceptual.ssim import ms_ssim, ssim


def _reference_ssim(x, y, max_val=1.0):
    """Independent numpy/scipy SSIM with the same 11-tap Gaussian (σ = 1.5), valid borders."""

    def blur(a):
        return ndimage.gaussian_filter(a, 1.5, truncate=5 / 1.5, mode="constant")[5:-5, 5:-5]

    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    return np.mean((2 * mx * my + c1) * (2 * sxy + c2) / ((mx**2 + my**2 + c1) * (sxx + syy + c2)))


def test_ssim_identity_and_reference():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 32, 32, 1)).astype(np.float32)
    y = np.clip(x + rng.normal(scale=0.1, size=x.shape), 0, 1).astype(np.float32)
    np.testing.assert_allclose(ssim(x, x), 1.0, atol=1e-6)
    got = np.asarray(ssim(x, y))
    want = [_reference_ssim(x[i, ..., 0].astype(np.float64), y[i, ..., 0].astype(np.float64)) for i in range(2)]
    np.testing.assert_allclose(got, want, atol=2e-4)
    assert 0.2 < got.mean() < 0.95


def test_ms_ssim_identity_and_monotone_in_noise():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(1, 64, 64, 1)).astype(np.float32)
    np.testing.assert_allclose(ms_ssim(x, x), 1.0, atol=1e-5)
    values = [
        float(ms_ssim(x, np.clip(x + s * rng.normal(size=x.shape), 0, 1).astype(np.float32))[0])
        for s in (0.02, 0.1, 0.3)
    ]
    assert values[0] > values[1] > values[2]


def test_ssim_rejects_bad_shapes():
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match="one shape"):
        ssim(np.zeros((1, 16, 16, 1)), np.zeros((1, 16, 15, 1)))


def _msssim_images():
    """Three fixed 176×176 pairs (x vs. noisy, dimmed, blurred x), float32 NHWC in [0, 1]."""
    rng = np.random.default_rng(2024)
    yy, xx = np.mgrid[0:176, 0:176] / 176.0
    x = np.clip(
        0.5 + 0.25 * np.sin(2 * np.pi * 3 * xx) * np.cos(2 * np.pi * 2 * yy) + 0.1 * rng.standard_normal((176, 176)),
        0,
        1,
    )
    noisy = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    dimmed = np.clip(0.6 * x + 0.3 + 0.02 * rng.standard_normal(x.shape), 0, 1)
    blurred = (x + np.roll(x, 1, 0) + np.roll(x, 1, 1) + np.roll(x, (1, 1), (0, 1))) / 4
    xs = np.stack([x, x, x])[..., None].astype(np.float32)
    ys = np.stack([noisy, dimmed, blurred])[..., None].astype(np.float32)
    return xs, ys


# Recorded once with pytorch_msssim 1.0.0 (torch 2.13.0+cpu, float64 from these float32 images):
#   X, Y = (torch.from_numpy(a).permute(0, 3, 1, 2).double() for a in _msssim_images())
#   w = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333] / their sum (this module renormalises to 1)
#   pytorch_msssim.ms_ssim(X, Y, data_range=1.0, size_average=False, win_size=11, win_sigma=1.5,
#                          weights=w, K=(0.01, 0.03))
#   pytorch_msssim.ssim(X, Y, data_range=1.0, size_average=False, win_size=11, win_sigma=1.5, K=(0.01, 0.03))
# 176 = 11·16: five scales, all even (pytorch_msssim pads odd sizes; this module crops them).
_REF_MS_SSIM = [0.9082214726223654, 0.8835935148767945, 0.9228327872677475]
_REF_SSIM = [0.6761418359895539, 0.8393227855532895, 0.45875053588119663]


def test_ms_ssim_and_ssim_match_pytorch_msssim_reference_values():
    xs, ys = _msssim_images()
    np.testing.assert_allclose(np.asarray(ssim(xs, ys)), _REF_SSIM, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(ms_ssim(xs, ys)), _REF_MS_SSIM, rtol=2e-5)
