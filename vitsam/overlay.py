"""Pictures of segmentation results: masks blended over the image, outlined, with the prompts drawn (PIL).

    picture = overlay(image, masks, points=coords, labels=labels, boxes=boxes)   # (H, W, 3) uint8
    Image.fromarray(picture).save("overlay.png"); mask_image(masks[0]).save("mask_0.png")
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# Mask colours (RGB), used in turn; points are green (foreground) or red (background), boxes yellow.
PALETTE = ((30, 144, 255), (255, 140, 0), (186, 85, 211), (0, 206, 209), (255, 105, 180), (154, 205, 50),
           (255, 215, 0), (100, 149, 237))
FOREGROUND = (0, 230, 0)
BACKGROUND = (230, 0, 0)
BOX = (255, 255, 0)


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) bool: mask pixels with a 4-neighbour outside the mask (or on the image border)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~interior


def overlay(image: np.ndarray, masks=None, points=None, labels=None, boxes=None, alpha: float = 0.5) -> np.ndarray:
    """Image (H, W, 3) uint8 + masks (K, H, W) bool -> (H, W, 3) uint8.

    Mask k is blended in PALETTE[k] with weight `alpha` and outlined in that colour; points (P, 2) (x, y) are
    dots, green for label 1 and red for label 0 (labels (P,); padding, -1, is not drawn); boxes (M, 4) are
    yellow rectangles x0, y0, x1, y1. Coordinates are pixels of `image`.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"overlay expects a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    out = image.astype(np.float32)
    masks = np.zeros((0, h, w), bool) if masks is None else np.asarray(masks, bool).reshape(-1, h, w)
    for k, mask in enumerate(masks):
        color = np.array(PALETTE[k % len(PALETTE)], np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * color
        out[mask_boundary(mask)] = color
    picture = Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))

    draw = ImageDraw.Draw(picture)
    width = max(1, round(min(h, w) / 200))
    if boxes is not None:
        for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
            draw.rectangle([x0, y0, x1, y1], outline=BOX, width=width)
    if points is not None:
        points = np.asarray(points, np.float64).reshape(-1, 2)
        labels = np.ones(len(points), int) if labels is None else np.asarray(labels).reshape(-1)
        r = max(2, round(min(h, w) / 80))
        for (x, y), label in zip(points, labels):
            if label not in (0, 1):
                continue
            draw.ellipse([x - r, y - r, x + r, y + r], fill=FOREGROUND if label == 1 else BACKGROUND,
                         outline=(255, 255, 255), width=max(1, r // 3))
    return np.asarray(picture)


def mask_image(mask: np.ndarray) -> Image.Image:
    """(H, W) bool -> a grayscale PIL image: 255 inside the mask, 0 outside."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {mask.shape}")
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))  # 2-D uint8: mode "L"
