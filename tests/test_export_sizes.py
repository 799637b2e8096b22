"""The exported programs' run-time-size processing (vitsam/export/runtime_sizes.py) against the host versions
with static sizes (vitsam/models/sam/processing.py, themselves checked against Pillow and PyTorch).

Run with: pytest -m export tests/test_export_sizes.py   (jax only; about a minute, most of it the exhaustive
check of the resized size over every image up to 8192 px)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitsam.export import runtime_sizes
from vitsam.models.sam import processing

pytestmark = pytest.mark.export


@pytest.mark.parametrize("image_size", [256, 1024])
def test_the_resized_size_is_the_official_formula_for_every_image_up_to_8192_px(image_size):
    longs = np.arange(1, 8193)
    sides = np.arange(1, 8193)
    long_grid, side_grid = np.meshgrid(longs, sides, indexing="ij")
    valid = side_grid <= long_grid
    got = np.asarray(runtime_sizes.resized_size(side_grid[valid], long_grid[valid], image_size)[0])
    scale = image_size * 1.0 / long_grid[valid]  # the host formula, float64 as in processing.resized_shape
    want = np.maximum(1, (side_grid[valid] * scale + 0.5).astype(np.int64))
    assert np.array_equal(got, want)


def test_the_fixed_point_taps_equal_pillows_for_shrinking_and_enlarging():
    pairs = [(1, 1), (3, 7), (7, 3), (255, 256), (256, 255), (1000, 256), (4000, 1024), (2049, 1024), (600, 1024),
             (5, 1), (13, 2), (4096, 171)]
    for in_size, out_size in pairs:
        ref_idx, ref_w = processing._pil_bilinear_coefficients(in_size, out_size)
        taps = runtime_sizes.max_taps(max(in_size, out_size), out_size)
        idx, w = jax.jit(runtime_sizes._fixed_point_taps, static_argnums=(2, 3))(
            jnp.int32(in_size), jnp.int32(out_size), out_size, taps)
        idx, w = np.asarray(idx), np.asarray(w)
        # Compare as dense (out, in) matrices: both give each source pixel's weight for each output pixel.
        dense = np.zeros((out_size, in_size), np.int64)
        ref = np.zeros((out_size, in_size), np.int64)
        for o in range(out_size):
            np.add.at(dense[o], idx[o], w[o])
            np.add.at(ref[o], ref_idx[o], ref_w[o])
        assert np.array_equal(dense, ref), (in_size, out_size)


@pytest.mark.parametrize("shape", [(37, 53), (256, 256), (700, 300), (90, 1000)])
def test_preprocess_of_any_size_equals_the_static_size_preprocessing(shape):
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    taps = runtime_sizes.max_taps(1024, 256)
    got = jax.jit(runtime_sizes.preprocess, static_argnums=(1, 2))(image[None], 256, taps)[0]
    want = processing.preprocess(jnp.asarray(image), 256)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("shape", [(37, 53), (256, 256), (700, 300)])
def test_logits_at_the_original_size_equal_the_static_size_postprocessing(shape):
    low = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
    got = jax.jit(runtime_sizes.crop_and_resize_logits, static_argnums=(1, 2, 3))(low, *shape, 256)
    input_size = processing.resized_shape(*shape, 256)
    want = np.asarray(processing.postprocess_logits(jnp.asarray(low), input_size, shape, 256))
    # The static version computes its source coordinates on the host; XLA's CPU code fuses the run-time
    # scale · (i + ½) − ½ into one multiply-add, which moves a coordinate by up to an ulp (≈ 2e-5 px at 180),
    # and the run-time version sums the composed taps of both resizes in one pass (float32 rounding).
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-4)
    assert np.mean((np.asarray(got) > 0) == (want > 0)) >= 0.9999
