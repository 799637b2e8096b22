"""PyTorch's linear interpolation (`F.interpolate(mode="linear" / "bilinear", align_corners=False)`) along one axis.

Output index i reads the source coordinate src = (i + 0.5)·in/out − 0.5, clamped at 0, and mixes the two
neighbouring inputs floor(src) and floor(src) + 1 (clamped at the last) with weights 1 − frac and frac; no
antialiasing when shrinking. Sizes are static, so indices and weights are numpy constants computed on the host.

Two users, whose results are pinned bit for bit, round the source coordinate differently:
`fused=True` (the image encoder's relative-position tables) takes the float32 scale and rounds
scale·(i + 0.5) − 0.5 once to float32, as PyTorch's CPU kernel does with a fused multiply-add;
`fused=False` (the predictor's mask post-processing) rounds the product and the difference each to float32.

Bicubic (`cubic_weights`, `resize_cubic`; SAM 2's background position embedding) is a float64 weight matrix.
"""

from __future__ import annotations

import jax
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


def cubic_weights(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
    """PyTorch's bicubic resampling of one axis (`F.interpolate(mode="bicubic", align_corners=False)`) as an
    (out_size, in_size) float64 matrix: output i = Σ_j W[i, j] · input j.

    Output i reads the source coordinate src = (i + 0.5)·in/out − 0.5 (not clamped, unlike the linear case) and
    mixes the four inputs floor(src) − 1 … floor(src) + 2, indices clamped to the border, with Keys' cubic
    convolution kernel (a = −0.75, PyTorch's choice). No antialiasing when shrinking.
    """
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    base = np.floor(src)
    t = src - base

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    taps = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)  # (out, 4)
    idx = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3), 0, in_size - 1)
    weights = np.zeros((out_size, in_size), np.float64)
    np.add.at(weights, (np.repeat(np.arange(out_size), 4), idx.reshape(-1)), taps.reshape(-1))
    return weights


def resize_cubic(x: jnp.ndarray, size: int, axis: int = 0) -> jnp.ndarray:
    """Resample `x` along `axis` to `size` entries with PyTorch's bicubic kernel (`cubic_weights`); x itself when
    already that size. Separable: resizing H then W equals PyTorch's 2-D bicubic up to rounding.

    A contraction with the constant weight matrix, at full float32 precision (TPUs and GPUs would otherwise
    round the operands to bfloat16 / TF32); the result has x's dtype.
    """
    in_size = x.shape[axis]
    if in_size == size:
        return x
    weights = jnp.asarray(cubic_weights(in_size, size), jnp.promote_types(x.dtype, jnp.float32))
    out = jnp.tensordot(weights, x.astype(weights.dtype), axes=((1,), (axis,)),
                        precision=jax.lax.Precision.HIGHEST)  # (size, ...rest)
    return jnp.moveaxis(out, 0, axis).astype(x.dtype)


def linear_weights_aa(in_size: int, out_size: int) -> np.ndarray:
    """PyTorch's antialiased linear resampling of one axis (`F.interpolate(mode="bilinear", antialias=True,
    align_corners=False)`) as an (out, in) float32 matrix: a triangle filter stretched by the shrink factor
    (support in/out input pixels each side when shrinking, 1 when growing), normalized per output."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) * inv))
        weights[i, lo:hi] = w / w.sum()
    return weights.astype(np.float32)


def resize_linear_aa(x: jnp.ndarray, size: int, axis: int = 0) -> jnp.ndarray:
    """Resample `x` along `axis` to `size` entries with `linear_weights_aa` (x itself when already that size)."""
    if x.shape[axis] == size:
        return x
    weights = jnp.asarray(linear_weights_aa(x.shape[axis], size), x.dtype)
    return jnp.moveaxis(jnp.tensordot(weights, jnp.moveaxis(x, axis, 0), axes=1), 0, axis)
