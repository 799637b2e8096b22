"""SAM's pre- and post-processing as pure JAX functions with static shapes (jit-friendly).

Pre-processing (official `ResizeLongestSide.apply_image` + `Sam.preprocess`):
    uint8 image (H, W, 3) -> resize so the longest side is S (`resized_shape`, round half up)
    -> subtract PIXEL_MEAN, divide by PIXEL_STD -> zero-pad bottom / right to (S, S, 3).
The official code resizes the uint8 image with PIL (torchvision's `resize` of a PIL image: antialiased
bilinear, two 8-bit passes, horizontal first). `resize_uint8` reproduces that in integer arithmetic: the same
filter coefficients, computed on the host from the static sizes as Pillow computes them, rounded to its 22-bit
fixed point, and the same rounding after each pass, so the resized image equals Pillow's bit for bit.
(`jax.image.resize(..., antialias=True)` uses the same filter in floating point and would differ by ±1 level.)

Post-processing (official `Sam.postprocess_masks`): low-res logits (…, 4h, 4w) -> bilinear upscale to (S, S)
-> crop the resized image's (new_h, new_w) -> bilinear resize to the original (H, W) -> threshold at 0.
Both resizes are PyTorch's `F.interpolate(mode="bilinear", align_corners=False)`, which does not antialias
when shrinking; `resize_bilinear` implements exactly that (two taps per axis), unlike `jax.image.resize`.

Coordinates are (x, y) pixels of the original image; `apply_coords` maps them to the resized frame as
`ResizeLongestSide.apply_coords` does (x · new_w / W, y · new_h / H).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from vitsam.models.sam.interpolate import resize_linear

# Point labels of SAM's prompts (the official encoding): padding, background click, foreground click, box corners.
PAD, NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
MASK_THRESHOLD = 0.0

_PRECISION_BITS = 22  # Pillow's fixed point for 8-bit resampling (32 - 8 - 2)


def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(new_h, new_w) with the longest side scaled to `long_side`, rounded half up (official formula).

    Each side is at least 1 px: a very elongated image (long side over 2 × long_side × short side) keeps a
    one-pixel short side where the official formula rounds it to 0.
    """
    scale = long_side * 1.0 / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def _pil_bilinear_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's antialiased bilinear filter for one axis: source indices (out, K) and int32 weights (out, K).

    Follows Pillow's `precompute_coeffs` / `normalize_coeffs_8bpc` in float64, operation by operation,
    so the fixed-point weights are identical. Taps beyond a row's window get weight 0 (index clipped).
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear (triangle) filter has support 1
    ksize = int(np.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin  # window length
    taps = np.arange(ksize)
    idx = xmin[:, None] + taps[None, :]
    t = (idx - center[:, None] + 0.5) * (1.0 / filterscale)
    w = np.where(np.abs(t) < 1.0, 1.0 - np.abs(t), 0.0)
    w = np.where(taps[None, :] < xmax[:, None], w, 0.0)
    total = np.zeros(out_size)
    for k in range(ksize):  # sequential sum, as in C (np.sum would sum pairwise)
        total += w[:, k]
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    fixed = np.trunc(0.5 + w * (1 << _PRECISION_BITS)).astype(np.int32)
    return np.minimum(idx, in_size - 1).astype(np.int32), fixed


def _resample_axis_uint8(x: jnp.ndarray, axis: int, out_size: int) -> jnp.ndarray:
    """One Pillow resampling pass along `axis` of an integer image with values 0…255 (int32 in and out)."""
    in_size = x.shape[axis]
    if in_size == out_size:  # Pillow skips the pass
        return x
    idx, weights = _pil_bilinear_coefficients(in_size, out_size)
    taps = jnp.take(x, jnp.asarray(idx), axis=axis)  # axis -> (out, K)
    shape = [1] * taps.ndim
    shape[axis], shape[axis + 1] = weights.shape
    acc = (1 << (_PRECISION_BITS - 1)) + jnp.sum(taps * jnp.asarray(weights).reshape(shape), axis=axis + 1)
    return jnp.clip(acc >> _PRECISION_BITS, 0, 255)


def resize_uint8(image: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """uint8 image (H, W, C) -> (h, w, C) uint8, equal to Pillow's `Image.resize(size, BILINEAR)` (antialiased)."""
    x = image.astype(jnp.int32)
    x = _resample_axis_uint8(x, 1, size[1])  # horizontal pass first, as Pillow
    x = _resample_axis_uint8(x, 0, size[0])
    return x.astype(jnp.uint8)


def normalize_and_pad(image: jnp.ndarray, image_size: int) -> jnp.ndarray:
    """Resized image (h, w, 3), values 0…255 -> (S, S, 3) float32: (x − mean) / std, zeros bottom / right."""
    h, w = image.shape[:2]
    if h > image_size or w > image_size:
        raise ValueError(f"image of size {h}x{w} does not fit the {image_size}x{image_size} model input")
    x = (image.astype(jnp.float32) - jnp.asarray(PIXEL_MEAN, jnp.float32)) / jnp.asarray(PIXEL_STD, jnp.float32)
    return jnp.pad(x, ((0, image_size - h), (0, image_size - w), (0, 0)))


def normalize_frames(frames: jnp.ndarray, input_sizes: jnp.ndarray | None = None) -> jnp.ndarray:
    """A batch of model-size frames (B, S, S, 3), values 0…255, each image resized into the top-left
    `input_sizes` (B, 2) (height, width) and padded -> (B, S, S, 3) float32 normalised, zeros outside each
    image (the padding is zero after normalising, as in `normalize_and_pad`). input_sizes None: the whole frame."""
    x = (frames.astype(jnp.float32) - jnp.asarray(PIXEL_MEAN, jnp.float32)) / jnp.asarray(PIXEL_STD, jnp.float32)
    if input_sizes is None:
        return x
    s_h, s_w = frames.shape[1:3]
    hw = input_sizes.astype(jnp.float32)
    inside = ((jnp.arange(s_h)[None, :, None] < hw[:, 0, None, None])
              & (jnp.arange(s_w)[None, None, :] < hw[:, 1, None, None]))
    return jnp.where(inside[..., None], x, 0.0)


def preprocess(image: jnp.ndarray, image_size: int) -> jnp.ndarray:
    """uint8 RGB image (H, W, 3) -> model input (S, S, 3) float32, S = `image_size` (the resized part is
    the top-left `resized_shape(H, W, S)`)."""
    size = resized_shape(image.shape[0], image.shape[1], image_size)
    return normalize_and_pad(resize_uint8(image, size), image_size)


def apply_coords(coords: jnp.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]) -> jnp.ndarray:
    """(x, y) pixels of the original image (…, 2) -> pixels of the resized input frame (…, 2) float32."""
    (h, w), (new_h, new_w) = original_size, input_size
    return coords.astype(jnp.float32) * jnp.asarray([new_w / w, new_h / h], jnp.float32)


def apply_boxes(boxes: jnp.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]) -> jnp.ndarray:
    """Boxes x0, y0, x1, y1 of the original image (…, 4) -> boxes of the resized input frame (…, 4)."""
    corners = boxes.reshape(*boxes.shape[:-1], 2, 2)
    return apply_coords(corners, original_size, input_size).reshape(boxes.shape)


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """(…, h, w) -> (…, H, W) float32 like `F.interpolate(x, size, mode="bilinear", align_corners=False)`.

    No antialiasing when shrinking (as PyTorch); every output pixel mixes at most 2×2 input pixels
    (`interpolate.resize_linear` along each axis, the source coordinate rounded twice).
    """
    x = x.astype(jnp.float32)
    for axis, out_size in ((-2, size[0]), (-1, size[1])):
        x = resize_linear(x, out_size, axis=axis, fused=False)
    return x


def postprocess_logits(low_res_logits: jnp.ndarray, input_size: tuple[int, int], original_size: tuple[int, int],
                       image_size: int) -> jnp.ndarray:
    """Low-res mask logits (…, 4h, 4w) -> logits at the original image size (…, H, W) float32.

    Upscale to (S, S), crop the resized image's `input_size` (new_h, new_w), resize to `original_size`.
    """
    x = resize_bilinear(low_res_logits, (image_size, image_size))
    x = x[..., :input_size[0], :input_size[1]]
    return resize_bilinear(x, original_size)


def postprocess_masks(low_res_logits: jnp.ndarray, input_size: tuple[int, int], original_size: tuple[int, int],
                      image_size: int) -> jnp.ndarray:
    """Low-res mask logits (…, 4h, 4w) -> boolean masks at the original image size (…, H, W): logits > 0."""
    return postprocess_logits(low_res_logits, input_size, original_size, image_size) > MASK_THRESHOLD
