"""Procedural images of shapes: the embedded default dataset, in pure NumPy.

Each example is a square RGB image with one *main* shape, whose class is the image label, and
0 … `max_distractors` clearly smaller distractor shapes that never touch it or each other. Every
shape has a random class, size, rotation, position and colour; the background is a plain colour, a
linear gradient or per-pixel noise, and every shape colour keeps a minimum RGB distance from it.
Masks are exact (a pixel belongs to a shape when its centre lies inside it), so the same examples
serve classification (`label`) and promptable segmentation (`masks`, `boxes`).

Rendering is a pure function of (seed, index): `render_example(index, seed=s)` gives the same
pixels on every machine, which is what makes `shapes_builder` prepare identical bytes every time.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
NUM_CLASSES = len(CLASS_NAMES)

# Shape sizes are circumradii as fractions of the image side. The ranges keep every main shape
# larger in area than any distractor (smallest main: a triangle of radius 0.2 S, area 1.30 R^2
# = 0.052 S^2; largest distractor: a circle of radius 0.1 S, area 3.14 R^2 = 0.031 S^2).
MAIN_RADIUS = (0.20, 0.42)
DISTRACTOR_RADIUS = (0.07, 0.10)
MIN_COLOR_DISTANCE = 120.0  # Euclidean RGB distance between a shape and its background
_NOISE_STD = 16.0
_RING_INNER = 0.55  # inner / outer radius of a ring
_STAR_INNER = 0.45  # inner / outer radius of a star
_CROSS_HALF_WIDTH = 0.3  # half width of a cross arm / arm length
_GAP = 2  # pixels kept free between two shapes


class ShapesExample(NamedTuple):
    """One rendered example; K = number of shapes, the main shape first.

    image: (H, W, 3) uint8.
    masks: (K, H, W) bool, disjoint, each non-empty.
    labels: (K,) int64 class indices into CLASS_NAMES; labels[0] is the image label.
    boxes: (K, 4) float32 [x0, y0, x1, y1] in pixels, the tight box of the mask where pixel (i, j)
      covers [j, j+1) x [i, i+1), so x1 = last column + 1 and y1 = last row + 1.
    """

    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray

    @property
    def label(self) -> int:
        return int(self.labels[0])


def _polygon_vertices(class_name: str) -> np.ndarray:
    """(V, 2) vertices (x, y) of a polygon class at unit circumradius, pointing up, unrotated."""
    if class_name == "square":
        angles = np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.ones(4)
    elif class_name == "triangle":
        angles = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        radii = np.ones(3)
    elif class_name == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, _STAR_INNER)
    elif class_name == "cross":
        w = _CROSS_HALF_WIDTH
        return np.array([(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w),
                         (-1, -w), (-1, w), (-w, w), (-w, 1)], dtype=np.float64)
    else:
        raise ValueError(f"{class_name!r} is not a polygon class")
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=-1)


def _points_in_polygon(px: np.ndarray, py: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule: which points (px, py) lie inside the closed polygon `vertices` (V, 2)."""
    inside = np.zeros(px.shape, dtype=bool)
    x0, y0 = vertices[:, 0], vertices[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c, d in zip(x0, y0, x1, y1):
        if b == d:
            continue  # a horizontal edge never crosses the horizontal ray
        crosses = (b > py) != (d > py)
        x_at = a + (py - b) * (c - a) / (d - b)
        inside ^= crosses & (px < x_at)
    return inside


def shape_mask(class_name: str, center: tuple[float, float], radius: float, angle: float,
               image_size: int) -> np.ndarray:
    """(S, S) bool: pixels whose centre lies inside the shape.

    center is (x, y) in pixels (continuous coordinates, pixel (i, j) has centre (j + .5, i + .5)),
    radius the circumradius in pixels, angle the rotation in radians.
    """
    # Only the square window around the shape can be inside it (every class lies in the disc of
    # radius hypot(1, _CROSS_HALF_WIDTH) < 1.05 in its frame).
    reach = 1.05 * radius
    x_lo, x_hi = max(0, int(center[0] - reach)), min(image_size, int(center[0] + reach) + 1)
    y_lo, y_hi = max(0, int(center[1] - reach)), min(image_size, int(center[1] + reach) + 1)
    mask = np.zeros((image_size, image_size), dtype=bool)
    if x_lo >= x_hi or y_lo >= y_hi:
        return mask
    # Pixel centres in the shape's frame: translate, rotate by -angle, scale to unit radius.
    dx = (np.arange(x_lo, x_hi)[None, :] + 0.5 - center[0]) / radius
    dy = (np.arange(y_lo, y_hi)[:, None] + 0.5 - center[1]) / radius
    cos, sin = np.cos(angle), np.sin(angle)
    u = cos * dx + sin * dy
    v = -sin * dx + cos * dy
    if class_name == "circle":
        inside = u * u + v * v <= 1.0
    elif class_name == "ring":
        r2 = u * u + v * v
        inside = (r2 <= 1.0) & (r2 >= _RING_INNER**2)
    else:
        inside = _points_in_polygon(u, v, _polygon_vertices(class_name))
    mask[y_lo:y_hi, x_lo:x_hi] = inside
    return mask


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> [x0, y0, x1, y1] float32, the tight pixel box (see ShapesExample)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask_to_box: the mask is empty")
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square."""
    h, w = mask.shape
    padded = np.pad(mask, r)
    out = np.zeros_like(mask)
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            out |= padded[i:i + h, j:j + w]
    return out


def _distance_to_segment(color: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance from an RGB colour to the segment of colours [a, b]."""
    ab = b - a
    t = 0.0 if not ab.any() else float(np.clip(np.dot(color - a, ab) / np.dot(ab, ab), 0.0, 1.0))
    return float(np.linalg.norm(color - (a + t * ab)))


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (image float (S, S, 3), colour segment a, b): shapes must contrast with [a, b]."""
    kind = rng.integers(3)
    a = rng.uniform(0, 255, size=3)
    if kind == 0:  # plain
        return np.broadcast_to(a, (size, size, 3)).copy(), a, a
    if kind == 1:  # linear gradient from colour a to colour b along a random direction
        b = rng.uniform(0, 255, size=3)
        theta = rng.uniform(0, 2 * np.pi)
        coords = (np.arange(size) + 0.5) / size - 0.5
        proj = np.cos(theta) * coords[None, :] + np.sin(theta) * coords[:, None]
        t = (proj - proj.min()) / (proj.max() - proj.min())
        return a + t[..., None] * (b - a), a, b
    noise = rng.normal(0.0, _NOISE_STD, size=(size, size, 3))  # noise around colour a
    return a + noise, a, a


def _contrasting_color(rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    for _ in range(1000):
        color = rng.uniform(0, 255, size=3)
        if _distance_to_segment(color, a, b) >= MIN_COLOR_DISTANCE:
            return color
    # Unreachable in practice: the colour farthest from the segment's midpoint is always far enough.
    return np.where((a + b) / 2 < 128, 255.0, 0.0)


def _place_shape(rng: np.random.Generator, image_size: int, radius_range: tuple[float, float],
                 free: np.ndarray | None, tries: int = 20):
    """Samples (class, mask) fully inside the image and, if `free` is given, inside `free`."""
    for _ in range(tries):
        cls = int(rng.integers(NUM_CLASSES))
        radius = rng.uniform(*radius_range) * image_size
        angle = rng.uniform(0, 2 * np.pi)
        extent = radius * (np.hypot(1.0, _CROSS_HALF_WIDTH) if CLASS_NAMES[cls] == "cross" else 1.0)
        lo, hi = extent + 1.0, image_size - extent - 1.0
        center = (rng.uniform(lo, hi), rng.uniform(lo, hi))
        mask = shape_mask(CLASS_NAMES[cls], center, radius, angle, image_size)
        if mask.any() and (free is None or not (mask & ~free).any()):
            return cls, mask
    return None


def render_example(rng_or_index: np.random.Generator | int, image_size: int = 64, *,
                   seed: int = 0, max_distractors: int = 3) -> ShapesExample:
    """Renders one example.

    Args:
      rng_or_index: a NumPy Generator, or an example index: then the generator is
        `np.random.default_rng([seed, index])`, so (seed, index) fixes the example.
      image_size: side S of the square image in pixels (at least 32).
      seed: the stream of examples (the dataset builder uses one per split).
      max_distractors: the number of smaller shapes is uniform in 0 … max_distractors
        (fewer when they do not fit).
    """
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    if isinstance(rng_or_index, np.random.Generator):
        rng = rng_or_index
    else:
        index = int(rng_or_index)
        if index < 0 or seed < 0:
            raise ValueError(f"index and seed must be non-negative, got {index=}, {seed=}")
        rng = np.random.default_rng([seed, index])

    canvas, bg_a, bg_b = _background(rng, image_size)
    cls, mask = _place_shape(rng, image_size, MAIN_RADIUS, free=None)  # always fits
    labels, masks = [cls], [mask]
    for _ in range(int(rng.integers(max_distractors + 1))):
        free = ~_dilate(np.any(masks, axis=0), _GAP)
        placed = _place_shape(rng, image_size, DISTRACTOR_RADIUS, free=free)
        if placed is not None:
            labels.append(placed[0])
            masks.append(placed[1])
    for mask in masks:  # masks are disjoint, so the order of painting does not matter
        canvas[mask] = _contrasting_color(rng, bg_a, bg_b)

    masks = np.stack(masks)
    return ShapesExample(
        image=np.clip(np.rint(canvas), 0, 255).astype(np.uint8),
        masks=masks,
        labels=np.asarray(labels, dtype=np.int64),
        boxes=np.stack([mask_to_box(m) for m in masks]),
    )
