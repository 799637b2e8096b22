"""COCO run-length encoding of binary masks, in NumPy (no pycocotools needed), and COCO polygons.

A COCO RLE is {"size": [height, width], "counts": ...}: the mask is read in column-major (Fortran) order and
`counts` holds the lengths of alternating runs, starting with a run of zeros (possibly of length 0).
`counts` is either a list of ints ("uncompressed", used for crowd annotations in COCO JSON files) or a
string ("compressed", used by SA-1B and by pycocotools' `encode`): each count, after the first two,
is stored as the difference from the count two places before, then written 5 bits at a time, low bits
first, as characters chr(48 + chunk), with bit 0x20 marking "more chunks follow" and bit 0x10 of the last
chunk the sign.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def encode_counts(counts: Sequence[int]) -> str:
    """Run lengths -> COCO's compressed string."""
    out = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        while True:
            chunk = x & 0x1F
            x >>= 5  # arithmetic shift: negative numbers end in -1
            more = x != -1 if chunk & 0x10 else x != 0
            out.append(chr(48 + (chunk | 0x20 if more else chunk)))
            if not more:
                break
    return "".join(out)


def decode_counts(text: str | bytes) -> list[int]:
    """COCO's compressed string -> run lengths."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        x, shift = 0, 0
        while True:
            if pos >= len(text):
                raise ValueError(f"truncated RLE string {text!r}")
            chunk = ord(text[pos]) - 48
            if not 0 <= chunk < 64:
                raise ValueError(f"invalid character {text[pos]!r} in RLE string")
            pos += 1
            x |= (chunk & 0x1F) << shift
            shift += 5
            if not chunk & 0x20:
                if chunk & 0x10:
                    x -= 1 << shift  # sign-extend
                break
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def mask_to_counts(mask: np.ndarray) -> list[int]:
    """Binary mask (H, W) -> run lengths in column-major order, starting with zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return [int(r) for r in runs] if flat.size else []


def counts_to_mask(counts: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Run lengths (column-major, zeros first) -> bool mask (H, W)."""
    h, w = int(size[0]), int(size[1])
    counts = np.asarray(counts, dtype=np.int64)
    if (counts < 0).any():
        raise ValueError("RLE counts must be non-negative")
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, not {h}x{w} = {h * w}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape((h, w), order="F")


def encode(mask: np.ndarray, compressed: bool = True) -> dict[str, Any]:
    """Bool mask (H, W) -> {"size": [H, W], "counts": str (compressed) or list of ints}."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode expects one (H, W) mask, got shape {mask.shape}")
    counts = mask_to_counts(mask)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])],
            "counts": encode_counts(counts) if compressed else counts}


def decode(rle: dict[str, Any]) -> np.ndarray:
    """{"size": [H, W], "counts": str | bytes | list} -> bool mask (H, W)."""
    try:
        size, counts = rle["size"], rle["counts"]
    except (KeyError, TypeError):
        raise ValueError(f"an RLE is a dict with 'size' and 'counts', got {type(rle).__name__}") from None
    if isinstance(counts, (str, bytes)):
        counts = decode_counts(counts)
    return counts_to_mask(counts, size)


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons [[x0, y0, x1, y1, ...], ...] -> bool mask (H, W), the union of the polygons.

    Pixel (row i, column j) covers [j, j + 1) × [i, i + 1) and is inside when its centre (j + 0.5, i + 0.5) is
    inside the polygon (even-odd rule), so a rectangle from (2, 1) to (6, 4) gives columns 2–5 and rows 1–3,
    as pycocotools does (its rasterizer can still differ on some boundary pixels of slanted edges).
    """
    mask = np.zeros((int(height), int(width)), bool)
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(xy) < 3:
            continue
        part = np.zeros_like(mask)
        x0, y0 = xy[:, 0], xy[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        first = max(int(np.floor(y0.min() - 0.5)), 0)
        last = min(int(np.ceil(y0.max() - 0.5)), mask.shape[0] - 1)
        for row in range(first, last + 1):
            yc = row + 0.5
            crossing = (y0 <= yc) != (y1 <= yc)  # edges that straddle this row's centre line
            xs = np.sort(x0[crossing] + (yc - y0[crossing]) * (x1[crossing] - x0[crossing])
                         / (y1[crossing] - y0[crossing]))
            for a, b in zip(xs[0::2], xs[1::2]):  # centres j + 0.5 in [a, b)
                lo, hi = max(int(np.ceil(a - 0.5)), 0), min(int(np.ceil(b - 0.5)), mask.shape[1])
                part[row, lo:hi] ^= True
        mask |= part
    return mask


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO / SA-1B "segmentation" (an RLE dict, compressed or not, or a list of polygons) -> bool (H, W)."""
    if isinstance(segmentation, dict):
        mask = decode(segmentation)
        if mask.shape != (height, width):
            raise ValueError(f"RLE of size {mask.shape} for an image of {height}x{width}")
        return mask
    if isinstance(segmentation, (list, tuple)):
        return polygons_to_mask(segmentation, height, width)
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
