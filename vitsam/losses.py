"""Losses for promptable segmentation, as the SAM paper trains it.

Mask loss: focal (α 0.25, γ 2) and dice, weighted 20 : 1, on the mask logits. IoU head: mean-squared error
between the predicted IoU and the IoU of the (binarized) predicted mask with the ground truth. With a multimask
output only the candidate with the lowest mask loss is back-propagated (`segmentation_loss`).

Every function takes logits (..., H, W) and targets (..., H, W) (bool or {0, 1} float) and returns one value
per mask (...): losses are averaged over pixels, never over masks, so the caller decides how to weigh masks
(padding masks get weight 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FOCAL_WEIGHT, DICE_WEIGHT, IOU_WEIGHT = 20.0, 1.0, 1.0


def sigmoid_focal_loss(logits: jnp.ndarray, targets: jnp.ndarray, alpha: float = 0.25,
                       gamma: float = 2.0) -> jnp.ndarray:
    """Focal loss (Lin et al. 2017) per mask: (..., H, W) -> (...), the mean over pixels of
    α_t (1 − p_t)^γ · BCE(logit, target), with p = σ(logit), p_t = p for positives and 1 − p for negatives,
    α_t = α for positives and 1 − α for negatives (α < 0 disables the weighting)."""
    x = logits.astype(jnp.float32)
    t = targets.astype(jnp.float32)
    p = jax.nn.sigmoid(x)
    bce = jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))  # stable BCE with logits
    p_t = p * t + (1 - p) * (1 - t)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss.mean(axis=(-2, -1))


def dice_loss(logits: jnp.ndarray, targets: jnp.ndarray, smooth: float = 1.0) -> jnp.ndarray:
    """Soft dice loss per mask: 1 − (2 Σ p t + s) / (Σ p + Σ t + s), p = σ(logit); (..., H, W) -> (...)."""
    p = jax.nn.sigmoid(logits.astype(jnp.float32))
    t = targets.astype(jnp.float32)
    inter = (p * t).sum(axis=(-2, -1))
    return 1.0 - (2.0 * inter + smooth) / (p.sum(axis=(-2, -1)) + t.sum(axis=(-2, -1)) + smooth)


def mask_iou(pred: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """IoU of binary masks (..., H, W) -> (...) float32; two empty masks have IoU 1."""
    pred, targets = pred.astype(bool), targets.astype(bool)
    inter = (pred & targets).sum(axis=(-2, -1)).astype(jnp.float32)
    union = (pred | targets).sum(axis=(-2, -1)).astype(jnp.float32)
    return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)


def segmentation_loss(logits: jnp.ndarray, iou_pred: jnp.ndarray, targets: jnp.ndarray,
                      candidates: jnp.ndarray | None = None, *, focal_weight: float = FOCAL_WEIGHT,
                      dice_weight: float = DICE_WEIGHT, iou_weight: float = IOU_WEIGHT) -> dict[str, jnp.ndarray]:
    """SAM's loss for N prompts with C candidate masks each: logits (N, C, H, W), iou_pred (N, C),
    targets (N, H, W); `candidates` (N, C) bool limits each prompt to some of the C masks (default: all; e.g.
    masks 1–3 for a single point, mask 0 for a box, from one call that returns all 4). Per-prompt values (N,):

      "loss"    focal_weight · focal + dice_weight · dice of the chosen mask + iou_weight · iou_mse,
      "focal", "dice"  of the chosen mask: the candidate with the lowest focal_weight · focal + dice_weight · dice
                (the only mask whose logits receive gradients),
      "iou_mse" the mean over the candidates of (iou_pred − IoU(logits > 0, target))², the actual IoU held
                constant, so every candidate's score learns to rank it,
      "iou"     the actual IoU of the chosen mask,
      "choice"  the chosen candidate (int32).
    """
    if logits.ndim != 4 or iou_pred.shape != logits.shape[:2] or targets.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"expected logits (N, C, H, W), iou_pred (N, C), targets (N, H, W); got {logits.shape}, "
                         f"{iou_pred.shape}, {targets.shape}")
    if candidates is None:
        candidates = jnp.ones(logits.shape[:2], bool)
    elif candidates.shape != logits.shape[:2]:
        raise ValueError(f"candidates must be (N, C) = {logits.shape[:2]}, got {candidates.shape}")
    t = targets[:, None]
    focal = sigmoid_focal_loss(logits, t)  # (N, C)
    dice = dice_loss(logits, t)
    mask_loss = focal_weight * focal + dice_weight * dice
    choice = jnp.argmin(jnp.where(candidates, jax.lax.stop_gradient(mask_loss), jnp.inf), axis=1)
    pick = lambda x: jnp.take_along_axis(x, choice[:, None], axis=1)[:, 0]  # noqa: E731
    actual = jax.lax.stop_gradient(mask_iou(logits > 0, t))  # (N, C)
    weight = candidates.astype(jnp.float32)
    iou_mse = jnp.sum(weight * (iou_pred.astype(jnp.float32) - actual) ** 2, axis=1) / jnp.maximum(
        weight.sum(axis=1), 1.0)
    return {"loss": pick(mask_loss) + iou_weight * iou_mse, "focal": pick(focal), "dice": pick(dice),
            "iou_mse": iou_mse, "iou": pick(actual), "choice": choice.astype(jnp.int32)}
