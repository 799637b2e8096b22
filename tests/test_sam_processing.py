"""SAM's batch normalisation for training (`processing.normalize_frames`) against a NumPy reading of the official
`Sam.preprocess` (normalise with the pixel mean / std, then zero padding bottom / right) and the predictor's path."""

import jax.numpy as jnp
import numpy as np

from vitsam.models.sam import processing

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def test_normalize_frames_zeroes_each_images_padding_after_normalising():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    sizes = np.array([[16, 16], [10, 16], [16, 7]], np.int32)
    got = np.asarray(processing.normalize_frames(jnp.asarray(frames), jnp.asarray(sizes)))
    for i, (h, w) in enumerate(sizes):
        want = np.zeros((16, 16, 3), np.float32)
        want[:h, :w] = (frames[i, :h, :w].astype(np.float32) - MEAN) / STD
        np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[i], processing.normalize_and_pad(jnp.asarray(frames[i, :h, :w]), 16),
                                   rtol=1e-6, atol=1e-6)
    whole = np.asarray(processing.normalize_frames(jnp.asarray(frames)))
    np.testing.assert_allclose(whole, (frames.astype(np.float32) - MEAN) / STD, rtol=1e-6, atol=1e-6)
