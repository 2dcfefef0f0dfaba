import numpy as np
import pytest

from ldm_jax import storage
from ldm_jax.data import imageio


@pytest.mark.parametrize("dtype,high", [(np.uint16, 4096), (np.uint8, 256)])
def test_png_round_trip_is_lossless(tmp_path, dtype, high):
    image = np.random.default_rng(0).integers(0, high, size=(17, 23)).astype(dtype)
    data = imageio.encode_png(image[..., None])
    back = imageio.decode_png(data)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, image)
    storage.write_atomic(tmp_path / "a" / "x.png", data)
    assert (tmp_path / "a" / "x.png").read_bytes() == data
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.png"]


def test_png_rejects_bad_input():
    with pytest.raises(ValueError, match="float32"):
        imageio.encode_png(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(4, 4, 3\)"):
        imageio.encode_png(np.zeros((4, 4, 3), np.uint8))
