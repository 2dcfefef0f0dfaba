import numpy as np
import pytest
from scipy import ndimage

from ldm_jax.evaluation.ssim import ms_ssim, ssim


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
    values = [float(ms_ssim(x, np.clip(x + s * rng.normal(size=x.shape), 0, 1).astype(np.float32))[0])
              for s in (0.02, 0.1, 0.3)]
    assert values[0] > values[1] > values[2]


def test_ssim_rejects_bad_shapes():
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match="one shape"):
        ssim(np.zeros((1, 16, 16, 1)), np.zeros((1, 16, 15, 1)))
