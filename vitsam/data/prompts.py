"""Prompt simulation for training and evaluating SAM, in JAX with fixed shapes (jit- and vmap-friendly).

Masks here are boolean grids (N, H, W), usually the model's low-res output grid (4h × 4w); a grid cell
(row i, column j) maps to the prompt coordinate `grid_to_points` gives it in the model's input frame.
Prompts follow `Sam.decode`: points (N, P, 2) as (x, y) input-frame pixels with labels (N, P)
(1 foreground, 0 background, 2 / 3 box corners, -1 padding), boxes (N, 4) as x0, y0, x1, y1.

Nothing here changes shape with the data: a mask with nothing to sample from gives a padding point
(label -1, which the model ignores) and `valid` False, so a batch of prompts keeps its shape.

As in the SAM paper (appendix A): the first prompt is a point drawn uniformly from the mask or its box
with noise of 10% of the side in each coordinate (at most 20 px); each later point is drawn uniformly
from the error region between the previous prediction and the truth, positive where the prediction
missed the object (false negative), negative where it spilled over (false positive). For evaluation,
`interior_point` gives the deterministic point farthest from the region's boundary instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vitsam.models.sam.processing import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, NEGATIVE, PAD, POSITIVE


def _check_masks(masks: jnp.ndarray, name: str = "masks") -> None:
    if masks.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W), got shape {masks.shape}")


def sample_pixel(key: jax.Array, region: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """A pixel drawn uniformly from each region (N, H, W) bool -> (rows, cols) (N, 2) int32, valid (N,) bool.

    An empty region gives pixel (0, 0) with valid False.
    """
    _check_masks(region, "region")
    n, h, w = region.shape
    gumbel = jax.random.gumbel(key, (n, h * w))
    score = jnp.where(region.reshape(n, h * w), gumbel, -jnp.inf)
    flat = jnp.argmax(score, axis=1)
    return jnp.stack([flat // w, flat % w], axis=1).astype(jnp.int32), region.any(axis=(1, 2))


def interior_pixel(region: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The pixel of each region (N, H, W) farthest from its boundary -> (rows, cols) (N, 2), valid (N,).

    Depth is the chessboard distance to the nearest pixel outside the region (the image border counts as
    outside), found by repeated 3×3 erosion; ties go to the pixel nearest the region's centroid, then to the
    first in raster order. Deterministic: used for evaluation clicks.
    """
    _check_masks(region, "region")
    n, h, w = region.shape
    x = region.astype(jnp.float32)

    def erode(_, carry):
        current, depth = carry
        current = -jax.lax.reduce_window(-current, -0.0, jax.lax.max, (1, 3, 3), (1, 1, 1),
                                         ((0, 0), (1, 1), (1, 1)))
        return current, depth + current

    _, depth = jax.lax.fori_loop(0, (min(h, w) + 1) // 2, erode, (x, x))
    rows = jnp.arange(h, dtype=jnp.float32)[None, :, None]
    cols = jnp.arange(w, dtype=jnp.float32)[None, None, :]
    area = jnp.maximum(x.sum(axis=(1, 2)), 1.0)[:, None, None]
    cy = (x * rows).sum(axis=(1, 2), keepdims=True) / area
    cx = (x * cols).sum(axis=(1, 2), keepdims=True) / area
    dist = jnp.sqrt((rows - cy) ** 2 + (cols - cx) ** 2) / (h + w)  # < 1: only breaks ties of depth
    score = jnp.where(region, depth - dist, -jnp.inf).reshape(n, h * w)
    flat = jnp.argmax(score, axis=1)
    return jnp.stack([flat // w, flat % w], axis=1).astype(jnp.int32), region.any(axis=(1, 2))


def grid_to_points(pixels: jnp.ndarray, grid_size: int, frame_size: int) -> jnp.ndarray:
    """Grid cells (…, 2) as (row, col) of a grid_size² grid -> (x, y) prompt coordinates (…, 2) float32 in the
    frame_size² input frame: the centre of the cell, in the model's convention where pixel x covers
    [x, x + 1) (the prompt encoder adds 0.5)."""
    scale = frame_size / grid_size
    centre = (pixels.astype(jnp.float32) + 0.5) * scale - 0.5
    return centre[..., ::-1]


def error_regions(pred: jnp.ndarray, target: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(false negatives, false positives) of boolean predictions against targets, both (N, H, W)."""
    pred, target = pred.astype(bool), target.astype(bool)
    return target & ~pred, pred & ~target


def error_point(key: jax.Array | None, pred: jnp.ndarray, target: jnp.ndarray, grid_size: int | None = None,
                frame_size: int | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """A corrective click for each prediction (N, H, W) against its target (N, H, W).

    Drawn uniformly from the error region (or, with key None, its `interior_pixel`). Returns points (N, 2)
    (x, y) in the input frame (grid cells mapped by `grid_to_points` with grid_size = H and frame_size,
    default H) and labels (N,): 1 when the point is a false negative, 0 for a false positive, -1 (padding)
    when the prediction is exact.
    """
    _check_masks(pred, "pred")
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ")
    fn, fp = error_regions(pred, target)
    region = fn | fp
    pixel, valid = interior_pixel(region) if key is None else sample_pixel(key, region)
    positive = target.astype(bool)[jnp.arange(pred.shape[0]), pixel[:, 0], pixel[:, 1]]
    labels = jnp.where(valid, jnp.where(positive, POSITIVE, NEGATIVE), PAD).astype(jnp.int32)
    h = pred.shape[1]
    return grid_to_points(pixel, grid_size or h, frame_size or h), labels


def mask_point(key: jax.Array | None, masks: jnp.ndarray, frame_size: int | None = None
               ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """A positive click inside each mask (N, H, W): uniform (key given) or the interior pixel (key None).

    Returns points (N, 2) in the input frame and labels (N,): 1, or -1 for an empty mask.
    """
    _check_masks(masks)
    pixel, valid = interior_pixel(masks.astype(bool)) if key is None else sample_pixel(key, masks.astype(bool))
    h = masks.shape[1]
    return grid_to_points(pixel, h, frame_size or h), jnp.where(valid, POSITIVE, PAD).astype(jnp.int32)


def jitter_box(key: jax.Array, boxes: jnp.ndarray, frame_size: float | None = None, noise: float = 0.1,
               max_noise: float = 20.0) -> jnp.ndarray:
    """Boxes (N, 4) x0, y0, x1, y1 -> noisy boxes (N, 4): each coordinate moves by a normal offset with std
    `noise` × the box's width (x) or height (y), clipped to ±`max_noise` pixels; the result is clipped to
    [0, frame_size] (when given) and its corners reordered so that x0 ≤ x1, y0 ≤ y1."""
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (N, 4), got shape {boxes.shape}")
    boxes = boxes.astype(jnp.float32)
    side = jnp.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)  # (N, 2) w, h
    std = noise * jnp.tile(side, (1, 2))
    offset = jnp.clip(jax.random.normal(key, boxes.shape) * std, -max_noise, max_noise)
    out = boxes + offset
    if frame_size is not None:
        out = jnp.clip(out, 0.0, float(frame_size))
    x0, x1 = jnp.minimum(out[:, 0], out[:, 2]), jnp.maximum(out[:, 0], out[:, 2])
    y0, y1 = jnp.minimum(out[:, 1], out[:, 3]), jnp.maximum(out[:, 1], out[:, 3])
    return jnp.stack([x0, y0, x1, y1], axis=1)


def box_corners(boxes: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Boxes (N, 4) -> corner points (N, 2, 2) and labels (N, 2) [2, 3]: a box as two prompt points."""
    labels = jnp.broadcast_to(jnp.array([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], jnp.int32), (boxes.shape[0], 2))
    return boxes.astype(jnp.float32).reshape(-1, 2, 2), labels


def first_prompt(key: jax.Array, masks: jnp.ndarray, boxes: jnp.ndarray, frame_size: int, box_prob: float = 0.5,
                 box_noise: float = 0.1, box_max_noise: float = 20.0) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """The first prompt of an interactive session, per mask: a box (probability `box_prob`, jittered) or a
    point drawn uniformly from the mask.

    masks (N, H, W) bool on any grid (points map to the frame_size² input frame), boxes (N, 4) in the input
    frame. Returns points (N, 2, 2) and labels (N, 2) — box corners [2, 3], or [1, -1] (a point and
    padding) — and is_box (N,) bool.
    """
    k_choice, k_point, k_box = jax.random.split(key, 3)
    is_box = jax.random.uniform(k_choice, (masks.shape[0],)) < box_prob
    point, point_label = mask_point(k_point, masks, frame_size)
    box_pts, box_labels = box_corners(jitter_box(k_box, boxes, frame_size, box_noise, box_max_noise))
    point_pts = jnp.stack([point, jnp.zeros_like(point)], axis=1)
    point_labels = jnp.stack([point_label, jnp.full_like(point_label, PAD)], axis=1)
    points = jnp.where(is_box[:, None, None], box_pts, point_pts)
    labels = jnp.where(is_box[:, None], box_labels, point_labels)
    return points, labels, is_box


def refinement_schedule(key: jax.Array, num_rounds: int, mask_only_rounds: int = 2) -> jnp.ndarray:
    """Which of the `num_rounds` − 1 rounds after the first add a point: (num_rounds − 1,) bool.

    The paper's 11 rounds: 1 first prompt, 8 sampled points, 2 rounds without a new point (the model refines
    its own previous mask): one at a random position among the others, one always last. `mask_only_rounds`
    (0, 1 or 2) sets how many such rounds there are.
    """
    later = num_rounds - 1
    if later < 0 or not 0 <= mask_only_rounds <= 2 or mask_only_rounds > later:
        raise ValueError(f"need num_rounds >= 1 and 0 <= mask_only_rounds <= min(2, num_rounds - 1), "
                         f"got {num_rounds}, {mask_only_rounds}")
    adds = jnp.ones((later,), bool)
    if mask_only_rounds >= 1:
        adds = adds.at[later - 1].set(False)
    if mask_only_rounds == 2:
        adds = adds.at[jax.random.randint(key, (), 0, later - 1)].set(False)
    return adds
