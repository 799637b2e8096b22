"""Image transforms in NumPy / PIL for the input pipelines (run on the host).

Train: `random_resized_crop` (Inception-style: a random area fraction and aspect ratio, resized to
the output size) and `horizontal_flip`. Eval: `resize_center_crop` (resize the shorter side, then a
central square). `normalize` maps uint8 to float32. Images are (H, W, C) uint8; one-channel images
become RGB in `to_rgb`. Resizing uses PIL bilinear (antialiased when shrinking); masks use nearest.
`resize_batch` is the same bilinear filter for a whole batch of same-size images at once (two matrix
products per image, `bilinear_weights`), and `flip_rotate_box` moves a crop box with a flipped or
turned image, so a batch can be flipped and turned before it is cropped.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels of the source image


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) / (H, W, 1) / (H, W, 3) / (H, W, 4) uint8 -> (H, W, 3) uint8 (alpha dropped)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W, C) image with C in 1, 3, 4; got shape {image.shape}")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def resize(image: np.ndarray, size: tuple[int, int], box: Box | None = None,
           nearest: bool = False) -> np.ndarray:
    """Resizes `image[box]` (H, W, C) or (H, W) uint8/bool to `size` = (height, width)."""
    image = np.asarray(image)
    is_bool = image.dtype == bool
    array = image.astype(np.uint8) if is_bool else image
    squeeze = array.ndim == 3 and array.shape[-1] == 1
    pil = Image.fromarray(array[..., 0] if squeeze else array)
    method = Image.Resampling.NEAREST if nearest or is_bool else Image.Resampling.BILINEAR
    out = np.asarray(pil.resize((size[1], size[0]), method, box=box))
    if squeeze:
        out = out[..., None]
    return out.astype(bool) if is_bool else out


def bilinear_weights(start: np.ndarray, stop: np.ndarray, in_size: int, out_size: int) -> np.ndarray:
    """(B,) crop intervals [start, stop) of an axis of `in_size` pixels -> (B, out_size, in_size) float32
    resampling matrices, PIL's bilinear filter: output pixel i samples the source at
    start + (i + 0.5) * scale with a triangle of half-width max(scale, 1) (wider when shrinking, i.e.
    antialiased), truncated to the image and normalized to sum 1; scale = (stop - start) / out_size."""
    start = np.asarray(start, np.float32)
    scale = (np.asarray(stop, np.float32) - start) / out_size
    centers = start[:, None] + (np.arange(out_size, dtype=np.float32) + 0.5) * scale[:, None]
    inv_width = 1.0 / np.maximum(scale, 1.0)[:, None, None]
    taps = np.arange(in_size, dtype=np.float32) + 0.5
    # 1 - |tap - centre| / width, clipped at 0, normalized; in place (this runs for every training batch).
    weights = np.subtract(taps, centers[..., None])
    np.abs(weights, out=weights)
    weights *= -inv_width
    weights += 1.0
    np.maximum(weights, 0.0, out=weights)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights


def resize_batch(images: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crops and resizes a batch of same-size images at once: (B, H, W, C) uint8 and (B, 4) boxes
    (x0, y0, x1, y1) -> (B, size, size, C) float32 in [0, 255], not rounded. The filter of `resize`
    (PIL bilinear) as two matrix products per image, so it agrees with PIL to within one grey level
    (PIL rounds its weights to fixed point and its output to integers)."""
    images = np.asarray(images)
    b, h, w, c = images.shape
    boxes = np.asarray(boxes, np.float32).reshape(b, 4)
    rows = bilinear_weights(boxes[:, 1], boxes[:, 3], h, size)  # (B, S, H): output row <- source row
    cols = bilinear_weights(boxes[:, 0], boxes[:, 2], w, size)  # (B, S, W): output column <- source column
    x = np.matmul(rows, images.reshape(b, h, w * c).astype(np.float32)).reshape(b, size, w, c)
    return np.einsum("btw,bswc->bstc", cols, x, optimize=True)


def flip_rotate_box(box: Box, height: int, width: int, flip: bool, k: int) -> Box:
    """Where `box` of an (height, width) image lies after `horizontal_flip` (if flip) and then
    `np.rot90(·, k)`: cropping the transformed image there and resizing gives the transformed crop."""
    x0, y0, x1, y1 = box
    if flip:
        x0, x1 = width - x1, width - x0
    for _ in range(k % 4):  # one counter-clockwise turn: (x, y) -> (y, width - x), then height and width swap
        x0, y0, x1, y1 = y0, width - x1, y1, width - x0
        height, width = width, height
    return (x0, y0, x1, y1)


def sample_crop_box(rng: np.random.Generator, height: int, width: int,
                    scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> Box:
    """A random box covering a `scale` fraction of the area with aspect `ratio` (w / h).

    As in Inception / torchvision RandomResizedCrop: up to `attempts` samples (log-uniform ratio),
    else the largest central box whose aspect ratio is clipped to `ratio`.
    """
    if not (0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = math.sqrt(target * aspect)
        h = math.sqrt(target / aspect)
        if w <= width and h <= height:
            x0 = rng.uniform(0, width - w)
            y0 = rng.uniform(0, height - h)
            return (x0, y0, x0 + w, y0 + h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, width / ratio[0]
    elif in_ratio > ratio[1]:
        w, h = height * ratio[1], height
    else:
        w, h = width, height
    x0, y0 = (width - w) / 2, (height - h) / 2
    return (x0, y0, x0 + w, y0 + h)


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """(H, W, C) uint8 -> (size, size, C) uint8: a random crop (see sample_crop_box), resized."""
    box = sample_crop_box(rng, image.shape[0], image.shape[1], scale, ratio)
    return resize(image, (size, size), box=box)


def horizontal_flip(image: np.ndarray) -> np.ndarray:
    """Mirrors the width axis of (..., H, W, C) or (H, W)."""
    axis = -2 if image.ndim >= 3 else -1
    return np.flip(image, axis=axis)


def center_crop_box(height: int, width: int, crop_fraction: float = 1.0) -> Box:
    """The central square box of side `crop_fraction` * min(height, width)."""
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    side = crop_fraction * min(height, width)
    x0, y0 = (width - side) / 2, (height - side) / 2
    return (x0, y0, x0 + side, y0 + side)


def resize_center_crop(image: np.ndarray, size: int, crop_fraction: float = 1.0) -> np.ndarray:
    """Eval preprocessing: (H, W, C) -> (size, size, C), the central crop of side
    `crop_fraction` * shorter side, resized to `size` (e.g. 0.875 = resize to 256, crop 224)."""
    box = center_crop_box(image.shape[0], image.shape[1], crop_fraction)
    if box == (0.0, 0.0, float(image.shape[1]), float(image.shape[0])) and image.shape[:2] == (size, size):
        return image
    return resize(image, (size, size), box=box)


def normalize(image: np.ndarray, mean: float | tuple[float, ...] = 127.5,
              std: float | tuple[float, ...] = 127.5) -> np.ndarray:
    """uint8 -> float32 (image - mean) / std; the defaults map [0, 255] to [-1, 1]."""
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return (np.asarray(image, dtype=np.float32) - mean) / std
