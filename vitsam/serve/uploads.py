"""Uploaded bytes -> an RGB image, refusing what is not one: each refusal a `BadUpload` with an HTTP status and
a one-line message for the page.

The pixel count is checked from the header, before any pixel is decoded, so a decompression bomb (a small file
that decodes to gigapixels) costs nothing; a truncated file fails while decoding; the EXIF orientation is applied
(click coordinates are those of the image as the browser shows it).
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from vitsam.images import to_rgb8


class BadUpload(Exception):
    """A request the server refuses: `status` (an HTTP 4xx) and a message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Image file bytes -> (H, W, 3) uint8, upright; raises BadUpload (400, 413 or 415)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise BadUpload(400, "the upload is empty: send the bytes of an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise BadUpload(413, f"the image is {width} x {height} px, more than the server's limit of "
                                         f"{max_pixels:,} px")
                im.load()
                image = to_rgb8(ImageOps.exif_transpose(im))
    except UnidentifiedImageError:
        raise BadUpload(415, "not an image file Pillow can read (PNG, JPEG, WebP, BMP, GIF, TIFF, ...)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise BadUpload(413, f"refused as a decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise BadUpload(400, f"the image could not be decoded: {e}") from None
    if min(image.shape[:2]) < 1:
        raise BadUpload(400, f"the image has no pixels ({image.shape[1]} x {image.shape[0]})")
    return image
