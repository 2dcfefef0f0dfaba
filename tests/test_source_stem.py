"""The pixel stem of the counterfactual filter: where its features land on the latent grid, the
evidence map it sows, and the UNet's checks of the source image it is given."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.models.source_stem import SourceStem
from ldm_jax.models.unet import UNet

F, SIZE, GRID = 3, 16, 4  # 16×16 images onto a 4×4 grid: 4×4 pixels a cell
REACH = 4  # pixels a stem output can see on each side: 3×3, 3×3, 5×5 convolutions


@pytest.fixture(scope="module")
def stem():
    module = SourceStem(F)
    pixels = jax.random.uniform(jax.random.key(0), (2, SIZE, SIZE, 1), minval=-1.0, maxval=1.0)
    params = module.init(jax.random.key(1), pixels, GRID)
    apply = jax.jit(lambda p, x: module.apply(p, x, GRID, mutable=["intermediates"]))
    return params, pixels, apply


def test_each_cell_holds_the_features_and_map_of_its_own_pixels(stem):
    """Channel (dy·f + dx)·(F + 1) + F of grid cell (i, j) is the sown map at pixel (f·i + dy, f·j + dx),
    the F channels before it that pixel's features."""
    params, pixels, apply = stem
    folded, sown = apply(params, pixels)
    evidence = np.asarray(sown["intermediates"]["source_map"][0])
    assert folded.shape == (2, GRID, GRID, 16 * (F + 1)) and evidence.shape == (2, SIZE, SIZE, 1)
    f = SIZE // GRID
    cells = np.asarray(folded).reshape(2, GRID, GRID, f, f, F + 1)
    unfolded = cells.transpose(0, 1, 3, 2, 4, 5).reshape(2, SIZE, SIZE, F + 1)
    np.testing.assert_array_equal(unfolded[..., F:], evidence)


def test_a_pixel_reaches_only_the_cells_around_it(stem):
    """Changing pixel (3, 13) changes grid cells whose 4×4 blocks lie within the stem's reach of it
    (rows 0-1, columns 2-3) and no others: the fold keeps rows as rows and columns as columns."""
    params, pixels, apply = stem
    base, _ = apply(params, pixels)
    moved, _ = apply(params, pixels.at[:, 3, 13].add(0.5))
    changed = np.abs(np.asarray(moved) - np.asarray(base)).max(axis=(0, 3)) > 0
    f = SIZE // GRID

    def reached(p):  # cells whose block [f·i, f·i + f) meets [p − REACH, p + REACH]
        return np.array([i * f <= p + REACH and p - REACH < (i + 1) * f for i in range(GRID)])

    np.testing.assert_array_equal(changed, reached(3)[:, None] & reached(13)[None, :])


TINY = dict(
    out_channels=2,
    model_channels=8,
    channel_mult=(1,),
    num_res_blocks=1,
    num_head_channels=8,
    norm_groups=4,
    pixel_stem=2,
)


def test_the_unet_needs_the_source_image_its_stem_reads():
    x, t = jnp.zeros((1, GRID, GRID, 2)), jnp.zeros((1,), jnp.int32)
    pixels = jnp.zeros((1, SIZE, SIZE, 1))
    params = UNet(**TINY).init(jax.random.key(0), x, t, extra_pixels=pixels)
    assert params["params"]["source_stem"]["map"]["kernel"].shape == (1, 1, 2, 1)
    with pytest.raises(ValueError, match="extra_pixels missing: this UNet's pixel_stem=2"):
        UNet(**TINY).apply(params, x, t)
    with pytest.raises(ValueError, match="extra_pixels given: this UNet's pixel_stem=0"):
        UNet(**{**TINY, "pixel_stem": 0}).init(jax.random.key(0), x, t, extra_pixels=pixels)
    with pytest.raises(ValueError, match=r"extra_pixels must be \[1, k·4, k·4, C\]"):
        UNet(**TINY).apply(params, x, t, extra_pixels=jnp.zeros((1, SIZE, SIZE - 2, 1)))
    with pytest.raises(ValueError, match="pixel_stem=-1"):
        UNet(**{**TINY, "pixel_stem": -1}).init(jax.random.key(0), x, t)
