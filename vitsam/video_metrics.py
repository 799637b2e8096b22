"""The DAVIS measures of video object segmentation, in jax.numpy: batched over leading axes and jittable, so
they run inside an eval step.

  J, `region_similarity`  the IoU of the predicted and ground-truth masks (1 when both are empty).
  F, `boundary_f`          the F-measure of boundary precision and recall: a boundary pixel of one mask counts as
                           matched when the other mask has a boundary pixel within a disk of radius
                           ceil(bound_th · image diagonal) pixels (bound_th < 1; DAVIS uses 0.008, 8 pixels at
                           480p) or bound_th pixels (bound_th >= 1).

They follow davis2017-evaluation (`davis2017/metrics.py`: `db_eval_iou`, `f_measure`, `_seg2bmap`):

- A pixel is on the boundary (`boundary_map`) when it differs from its right, bottom or bottom-right
  neighbour, the mask being extended past its last row and column by repeating them. So the last row only
  compares along the row, the last column only down the column, and the bottom-right pixel is never on the
  boundary; the boundary is drawn on the inner side of a mask's right and bottom edges and on the outer side
  of its left and top edges, and the frame's edges are no boundary (a mask that covers the frame has none).
- The disk is the pixel offsets (i, j) with i² + j² <= r² (skimage's `disk(r)`), zero outside the frame.
- Precision is the fraction of predicted boundary pixels matched, recall that of ground-truth boundary
  pixels. With no predicted boundary, precision is 1; with no ground-truth boundary, recall is 1; so F is 1
  when neither mask has a boundary (both empty, or one empty and one covering the frame), 0 when only one
  has, and 0 when precision + recall is 0.

Not implemented: the void-pixel masks of the DAVIS functions (davis2017-evaluation sets void pixels (255) to
background before it derives its void masks, so they are always empty there), and `_seg2bmap`'s
resampling to a boundary map of another size (with its own pixel rule); masks and boundary maps here are
always at the masks' size.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from vitsam.losses import mask_iou

DAVIS_BOUND_TH = 0.008


def _masks(pred, gt):
    pred, gt = jnp.asarray(pred).astype(bool), jnp.asarray(gt).astype(bool)
    if pred.ndim < 2 or gt.ndim < 2 or pred.shape[-2:] != gt.shape[-2:]:
        raise ValueError(f"expected masks (..., H, W) of one size, got shapes {pred.shape} and {gt.shape}")
    return jnp.broadcast_arrays(pred, gt)


def region_similarity(pred, gt) -> jnp.ndarray:
    """J of binary masks (..., H, W) (leading axes broadcast) -> (...) float32: intersection over union,
    1 when both masks are empty."""
    return mask_iou(*_masks(pred, gt))


def boundary_map(mask) -> jnp.ndarray:
    """Binary masks (..., H, W) -> their boundary pixels (..., H, W) bool (DAVIS's `seg2bmap` at the same
    size): pixels that differ from their right, bottom or bottom-right neighbour, with the last row and
    column repeated past the edge."""
    mask = jnp.asarray(mask).astype(bool)
    if mask.ndim < 2:
        raise ValueError(f"expected masks (..., H, W), got shape {mask.shape}")
    padded = jnp.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(0, 1), (0, 1)], mode="edge")
    right, below, below_right = padded[..., :-1, 1:], padded[..., 1:, :-1], padded[..., 1:, 1:]
    return (mask != right) | (mask != below) | (mask != below_right)


def boundary_radius(height: int, width: int, bound_th: float = DAVIS_BOUND_TH) -> float:
    """The matching distance in pixels: ceil(bound_th · diagonal) for bound_th < 1, else bound_th."""
    if not bound_th >= 0:
        raise ValueError(f"bound_th must be >= 0, got {bound_th}")
    if bound_th >= 1:
        return float(bound_th)
    return float(math.ceil(bound_th * math.sqrt(height * height + width * width)))


def disk(radius: float) -> np.ndarray:
    """(2n + 1, 2n + 1) bool with n = floor(radius): the offsets (i, j) with i² + j² <= radius² (skimage's
    `disk` for a whole radius)."""
    n = math.floor(radius)
    i, j = np.mgrid[-n:n + 1, -n:n + 1]
    return i * i + j * j <= radius * radius


def dilate_disk(mask, radius: float) -> jnp.ndarray:
    """Binary dilation of masks (..., H, W) by `disk(radius)`, nothing outside the frame, as a convolution."""
    mask = jnp.asarray(mask).astype(bool)
    n = math.floor(radius)
    if n <= 0:
        return mask
    shape = mask.shape
    x = mask.reshape((-1, 1) + shape[-2:]).astype(jnp.float32)
    kernel = jnp.asarray(disk(radius), jnp.float32)[None, None]
    # Counts of covered pixels are small integers, exact in any float format the backend convolves in.
    counts = lax.conv_general_dilated(x, kernel, (1, 1), [(n, n), (n, n)],
                                      dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return (counts > 0.5).reshape(shape)


def boundary_precision_recall(pred, gt, bound_th: float = DAVIS_BOUND_TH) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Boundary precision and recall of masks (..., H, W) -> two (...) float32 arrays, with DAVIS's
    conventions: precision 1 when `pred` has no boundary, recall 1 when `gt` has none."""
    pred, gt = _masks(pred, gt)
    radius = boundary_radius(*pred.shape[-2:], bound_th)
    pred_b, gt_b = boundary_map(pred), boundary_map(gt)
    n_pred = pred_b.sum(axis=(-2, -1)).astype(jnp.float32)
    n_gt = gt_b.sum(axis=(-2, -1)).astype(jnp.float32)
    pred_hits = (pred_b & dilate_disk(gt_b, radius)).sum(axis=(-2, -1)).astype(jnp.float32)
    gt_hits = (gt_b & dilate_disk(pred_b, radius)).sum(axis=(-2, -1)).astype(jnp.float32)
    precision = jnp.where(n_pred > 0, pred_hits / jnp.maximum(n_pred, 1.0), 1.0)
    recall = jnp.where(n_gt > 0, gt_hits / jnp.maximum(n_gt, 1.0), 1.0)
    return precision, recall


def boundary_f(pred, gt, bound_th: float = DAVIS_BOUND_TH) -> jnp.ndarray:
    """F of binary masks (..., H, W) (leading axes broadcast) -> (...) float32: 2PR / (P + R) of the boundary
    precision and recall (0 when both are 0); 1 when neither mask has a boundary, 0 when only one has.
    `bound_th` is static (it sets the disk's size); jit with static_argnames="bound_th"."""
    precision, recall = boundary_precision_recall(pred, gt, bound_th)
    total = precision + recall
    return jnp.where(total > 0, 2 * precision * recall / jnp.where(total > 0, total, 1.0), 0.0)


def jf_summary(j, f, valid=None) -> dict[str, jnp.ndarray]:
    """Per-frame J and F of objects (..., T) -> the DAVIS summary over those objects, scalars float32:

      "J", "F"                the mean over objects of each object's mean over its valid frames,
      "J&F"                   (J + F) / 2,
      "J_recall", "F_recall"  the mean over objects of the fraction of valid frames scoring above 0.5.

    `valid` (..., T) bool marks the frames that count (default all; DAVIS's semi-supervised benchmark leaves
    out each video's first and last frame); objects with no valid frame are left out.
    """
    j, f = jnp.asarray(j, jnp.float32), jnp.asarray(f, jnp.float32)
    if j.shape != f.shape or j.ndim < 1:
        raise ValueError(f"expected J and F of one shape (..., T), got {j.shape} and {f.shape}")
    valid = jnp.ones(j.shape, bool) if valid is None else jnp.broadcast_to(jnp.asarray(valid, bool), j.shape)
    frames = valid.sum(axis=-1).astype(jnp.float32)
    counted = frames > 0

    def mean(x):
        per_object = jnp.where(valid, x, 0.0).sum(axis=-1) / jnp.maximum(frames, 1.0)
        return jnp.where(counted, per_object, 0.0).sum() / jnp.maximum(counted.sum(), 1)

    out = {"J": mean(j), "F": mean(f), "J_recall": mean((j > 0.5).astype(jnp.float32)),
           "F_recall": mean((f > 0.5).astype(jnp.float32))}
    out["J&F"] = (out["J"] + out["F"]) / 2
    return out
