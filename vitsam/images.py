"""Image files -> (H, W, 3) uint8 RGB arrays, the one reader of the command line and the data sources.

One-channel 16-bit images (PIL modes "I;16*", and "I" read as 0…65535) keep the high byte, v >> 8: the
reduction Pillow itself applies when it opens 16-bit RGB, RGBA and grey + alpha PNGs (`convert("RGB")` would
clip them to 0 / 255). Palette, grey, alpha and CMYK images go through `convert("RGB")` (alpha dropped).
"""

from __future__ import annotations

import os

import numpy as np

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def read_image(path: str | os.PathLike, *, upright: bool = True) -> np.ndarray:
    """(H, W, 3) uint8. `upright`: apply the EXIF orientation, so that pixel coordinates are those of the
    image as displayed (a user's photo); False keeps the stored pixel order (datasets whose annotations
    are given in it, such as SA-1B and COCO)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        if upright:
            im = ImageOps.exif_transpose(im)
        return to_rgb8(im)


def to_rgb8(im) -> np.ndarray:
    """A PIL image of any mode -> (H, W, 3) uint8."""
    if im.mode in SIXTEEN_BIT_MODES:
        grey = (np.clip(np.asarray(im, np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))
