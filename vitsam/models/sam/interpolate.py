"""PyTorch's linear interpolation (`F.interpolate(mode="linear" / "bilinear", align_corners=False)`) along one axis.

Output index i reads the source coordinate src = (i + 0.5)·in/out − 0.5, clamped at 0, and mixes the two
neighbouring inputs floor(src) and floor(src) + 1 (clamped at the last) with weights 1 − frac and frac; no
antialiasing when shrinking. Sizes are static, so indices and weights are numpy constants computed on the host.

Two users, whose results are pinned bit for bit, round the source coordinate differently:
`fused=True` (the image encoder's relative-position tables) takes the float32 scale and rounds
scale·(i + 0.5) − 0.5 once to float32, as PyTorch's CPU kernel does with a fused multiply-add;
`fused=False` (the predictor's mask post-processing) rounds the product and the difference each to float32.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def linear_taps(in_size: int, out_size: int, fused: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source taps of one axis: i0, i1 (out,) int32 and the float32 weight of i1 (out,)."""
    scale = np.float32(in_size) / np.float32(out_size)  # as `area_pixel_compute_scale`, in float32
    if fused:
        src = np.maximum(np.float64(scale) * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5, 0.0)
    else:
        src = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    src = src.astype(np.float32)
    i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_linear(x: jnp.ndarray, size: int, axis: int = 0, fused: bool = True) -> jnp.ndarray:
    """Resample `x` along `axis` to `size` entries (linear, half-pixel centres); x itself when already that size.

    The weights are cast to x's dtype.
    """
    in_size = x.shape[axis]
    if in_size == size:
        return x
    i0, i1, frac = linear_taps(in_size, size, fused)
    shape = [1] * x.ndim
    shape[axis] = size
    frac = jnp.asarray(frac, x.dtype).reshape(shape)
    return jnp.take(x, jnp.asarray(i0), axis=axis) * (1 - frac) + jnp.take(x, jnp.asarray(i1), axis=axis) * frac
