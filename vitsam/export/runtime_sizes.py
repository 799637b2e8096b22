"""SAM's pre- and post-processing for image sizes known only when the exported program runs.

`vitsam.models.sam.processing` computes its resampling taps on the host from static sizes. An exported
program takes images of any size (a symbolic H × W), so here the same taps are computed inside the graph,
from the input's shape, in int32 / float32 arithmetic that gives the host functions' results:

- `resized_size`: the official round-half-up of h · S / max(h, w), as the exact integer
  ⌊(2hS + L) / 2L⌋, L = max(h, w). The host formula rounds S / L to float64 first; for a power-of-two S
  (every released SAM: 1024, and the tiny test model's 256) the two agree for every image side up to
  8192 px (checked exhaustively in tests/test_export_sizes.py).
- `resize_uint8`: Pillow's antialiased bilinear filter. The triangle weight of source pixel i for output
  pixel o is max(0, D − |(2i + 1)·out − (2o + 1)·in|) / D with D = 2·max(in, out), so the normalised weights
  are ratios of integers and their 22-bit fixed-point values ⌊2²² a / T + ½⌋ can be computed exactly by
  long division; Pillow's float64 values never lie within 10⁻⁶ of a rounding boundary, so both agree.
  A static `taps` bounds the window (2·⌈support⌉ + 1 source pixels): `max_taps(max_side, S)`.
- `crop_and_resize_logits`: the official post-processing (upscale to S × S, crop the resized image, resize
  to the original size) as one linear map per axis of the low-res logits, with run-time taps.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from vitsam.models.sam.interpolate import linear_taps
from vitsam.models.sam.processing import PIXEL_MEAN, PIXEL_STD

_PRECISION_BITS = 22  # Pillow's fixed point for 8-bit resampling


def max_taps(max_side: int, image_size: int) -> int:
    """Source pixels per output pixel that cover every resize of an image with sides ≤ `max_side` to `image_size`.

    The long side shrinks by L / S; a short side s goes to out = max(1, round(s·S / L)) px, so s / out < 1.5·L / S.
    """
    support = max(1.5 * max_side / image_size, 1.0)
    return 2 * math.ceil(support) + 1


def resized_size(height, width, image_size: int):
    """Run-time (new_h, new_w) int32 scalars: the longest side scaled to `image_size`, round half up, ≥ 1."""
    h, w = jnp.asarray(height, jnp.int32), jnp.asarray(width, jnp.int32)
    long = jnp.maximum(h, w)
    return tuple(jnp.maximum((2 * x * image_size + long) // (2 * long), 1) for x in (h, w))


def _fixed_point_taps(in_size, out_size, out_len: int, taps: int):
    """Pillow's bilinear taps for resizing `in_size` → `out_size` px (run-time int32 scalars), for output
    positions 0 … out_len − 1: source indices (out_len, taps) int32 and fixed-point weights (out_len, taps) int32."""
    o = jnp.arange(out_len, dtype=jnp.int32)[:, None]
    big = jnp.maximum(in_size, out_size)
    # First source pixel: ⌊centre − support + ½⌋ clipped at 0, with centre = (o + ½)·in / out, support = big / out.
    first = jnp.maximum(((2 * o + 1) * in_size - 2 * big + out_size) // (2 * out_size), 0)
    idx = first + jnp.arange(taps, dtype=jnp.int32)[None, :]
    dist = jnp.abs((2 * idx + 1) * out_size - (2 * o + 1) * in_size)
    a = jnp.where(idx < in_size, jnp.maximum(2 * big - dist, 0), 0)
    total = jnp.maximum(jnp.sum(a, axis=1, keepdims=True), 1)
    # ⌊2²² a / T + ½⌋ by long division (2²² a overflows int32): 8 + 7 + 7 bits.
    quotient, rest = jnp.zeros_like(a), a
    for bits in (8, 7, 7):
        rest = rest * (1 << bits)  # multiplications, not shifts: ONNX shifts only unsigned integers
        quotient = quotient * (1 << bits) + rest // total
        rest = rest % total
    fixed = quotient + (2 * rest >= total).astype(jnp.int32)
    return jnp.minimum(idx, in_size - 1), fixed


def _resample_axis(x, axis: int, in_size, out_size, out_len: int, taps: int):
    """One Pillow pass along `axis` (int32 values 0…255) into `out_len` positions, the first `out_size` valid."""
    idx, weights = _fixed_point_taps(in_size, out_size, out_len, taps)
    shape = [1] * x.ndim
    shape[axis] = out_len
    acc = jnp.int32(1 << (_PRECISION_BITS - 1))
    for k in range(taps):  # one gather per tap: XLA fuses the sum, no (…, out_len, taps, …) array
        acc = acc + jnp.take(x, idx[:, k], axis=axis) * weights[:, k].reshape(shape)
    return jnp.clip(lax.div(acc, jnp.int32(1 << _PRECISION_BITS)), 0, 255)  # acc >= 0: truncation = floor


def preprocess(images: jnp.ndarray, image_size: int, taps: int) -> jnp.ndarray:
    """uint8 images (B, H, W, 3) of any (symbolic) size -> model inputs (B, S, S, 3) float32, as
    `processing.preprocess`: Pillow's resize of the longest side to S, normalised, zero padding bottom / right."""
    height, width = images.shape[1], images.shape[2]
    h, w = jnp.asarray(height, jnp.int32), jnp.asarray(width, jnp.int32)
    new_h, new_w = resized_size(h, w, image_size)
    x = images.astype(jnp.int32)
    x = _resample_axis(x, 2, w, new_w, image_size, taps)  # horizontal first, as Pillow
    x = _resample_axis(x, 1, h, new_h, image_size, taps)
    x = (x.astype(jnp.float32) - jnp.asarray(PIXEL_MEAN, jnp.float32)) / jnp.asarray(PIXEL_STD, jnp.float32)
    rows = jnp.arange(image_size)[:, None] < new_h
    cols = jnp.arange(image_size)[None, :] < new_w
    return jnp.where((rows & cols)[None, :, :, None], x, 0.0)


def _linear_taps(in_valid, out_len_value, out_len: int):
    """PyTorch's bilinear source taps (align_corners=False, float32 as `interpolate.linear_taps(fused=False)`)
    reading the first `in_valid` entries of an axis into `out_len` outputs: i0, i1 (out_len,) int32, frac float32."""
    scale = in_valid.astype(jnp.float32) / out_len_value.astype(jnp.float32)
    positions = lax.iota(jnp.float32, out_len)  # not jnp.arange: jax2onnx loses a symbolic length there
    src = jnp.maximum(scale * (positions + 0.5) - 0.5, 0.0)
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_valid - 1)
    i1 = jnp.minimum(i0 + 1, in_valid - 1)
    return i0, i1, src - i0.astype(jnp.float32)


def _composed_taps(valid, length_value, length: int, low_res: int, image_size: int):
    """The official two resizes of one axis composed: low-res (`low_res` entries) -> `image_size` (static taps),
    then its first `valid` entries -> `length` (run-time taps). Per output position 4 source indices into the
    low-res axis and their weights: lists of 4 (length,) int32 and float32 arrays."""
    i0, i1, frac = _linear_taps(valid, length_value, length)
    u0, u1, g = (jnp.asarray(a) for a in linear_taps(low_res, image_size, fused=False))
    g0, g1 = g[i0], g[i1]
    return [u0[i0], u1[i0], u0[i1], u1[i1]], [(1 - frac) * (1 - g0), (1 - frac) * g0, frac * (1 - g1), frac * g1]


def crop_and_resize_logits(low_res: jnp.ndarray, height, width, image_size: int) -> jnp.ndarray:
    """Low-res logits (N, C, m, m) -> logits (N, C, H, W) at the original size H × W (symbolic dimensions),
    as `processing.postprocess_logits`: bilinear to (S, S), crop the resized image, bilinear to (H, W).

    Both resizes and the crop are linear along each axis, so they are applied as one map per axis on the
    low-res logits (4 taps per output pixel): the columns as a product with an (m, W) matrix, the rows as 4
    gathers. Nothing of size S × S is built, and the only gathers copy whole rows (gathers along the last axis
    are slow in onnxruntime). The sums run in another order than the two resizes', so logits differ by float32
    rounding (~1e-7 relative)."""
    m = low_res.shape[-1]
    h, w = jnp.asarray(height, jnp.int32), jnp.asarray(width, jnp.int32)
    new_h, new_w = resized_size(h, w, image_size)
    index, weight = _composed_taps(new_w, w, width, m, image_size)
    source = lax.iota(jnp.int32, m)[None, :]
    columns = sum(jnp.where(source == i[:, None], wi[:, None], 0.0) for i, wi in zip(index, weight))  # (W, m)
    x = jnp.matmul(low_res.astype(jnp.float32), columns.T)  # (N, C, m, W)
    index, weight = _composed_taps(new_h, h, height, m, image_size)
    return sum(jnp.take(x, i, axis=-2) * wi[:, None] for i, wi in zip(index, weight))
