"""SAM losses against naive NumPy formulas; the multimask selection back-propagates only the chosen mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitsam.losses import dice_loss, mask_iou, segmentation_loss, sigmoid_focal_loss


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_focal(x, t, alpha=0.25, gamma=2.0):
    """The definition, term by term, in float64: −α_t (1 − p_t)^γ log p_t, averaged over pixels."""
    x, t = x.astype(np.float64), t.astype(np.float64)
    p = np_sigmoid(x)
    p_t = np.where(t == 1, p, 1 - p)
    alpha_t = np.where(t == 1, alpha, 1 - alpha)
    return (-alpha_t * (1 - p_t) ** gamma * np.log(p_t)).mean(axis=(-2, -1))


def np_dice(x, t):
    p, t = np_sigmoid(x.astype(np.float64)), t.astype(np.float64)
    return 1 - (2 * (p * t).sum(axis=(-2, -1)) + 1) / (p.sum(axis=(-2, -1)) + t.sum(axis=(-2, -1)) + 1)


def np_iou(a, b):
    inter = (a & b).sum(axis=(-2, -1))
    union = (a | b).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (5, 3, 8, 9)).astype(np.float32)
    targets = rng.random((5, 8, 9)) < 0.4
    iou_pred = rng.random((5, 3)).astype(np.float32)
    return logits, targets, iou_pred


def test_focal_dice_iou_match_their_formulas(data):
    logits, targets, _ = data
    t = targets[:, None]
    np.testing.assert_allclose(sigmoid_focal_loss(logits, t), np_focal(logits, t), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dice_loss(logits, t), np_dice(logits, t), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mask_iou(logits > 0, t), np_iou(logits > 0, np.broadcast_to(t, logits.shape)),
                               rtol=1e-6)
    # other α, γ
    np.testing.assert_allclose(sigmoid_focal_loss(logits, t, alpha=0.6, gamma=1.0),
                               np_focal(logits, t, 0.6, 1.0), rtol=1e-5, atol=1e-7)


def test_losses_are_finite_for_extreme_logits():
    x = jnp.array([[[-200.0, 200.0], [0.0, 90.0]]])
    t = jnp.array([[[1, 0], [1, 1]]], bool)
    focal, dice = sigmoid_focal_loss(x, t), dice_loss(x, t)
    assert np.isfinite(focal).all() and np.isfinite(dice).all()
    assert np.isfinite(jax.grad(lambda x: sigmoid_focal_loss(x, t).sum())(x)).all()
    # A confident wrong pixel costs ~ α (1−α weighting aside) × |logit|: the stable BCE, not log(0).
    np.testing.assert_allclose(sigmoid_focal_loss(jnp.array([[[-200.0]]]), jnp.array([[[1]]])), 0.25 * 200.0,
                               rtol=1e-5)


def test_iou_of_two_empty_masks_is_one():
    empty = np.zeros((1, 4, 4), bool)
    assert float(mask_iou(empty, empty)[0]) == 1.0
    full = np.ones((1, 4, 4), bool)
    assert float(mask_iou(empty, full)[0]) == 0.0


def test_segmentation_loss_picks_the_lowest_mask_loss(data):
    logits, targets, iou_pred = data
    out = segmentation_loss(logits, iou_pred, targets)
    t = targets[:, None]
    per_mask = 20 * np_focal(logits, t) + np_dice(logits, t)
    choice = per_mask.argmin(axis=1)
    np.testing.assert_array_equal(out["choice"], choice)
    actual = np_iou(logits > 0, np.broadcast_to(t, logits.shape))
    mse = ((iou_pred - actual) ** 2).mean(axis=1)
    rows = np.arange(len(choice))
    np.testing.assert_allclose(out["iou_mse"], mse, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["loss"], per_mask[rows, choice] + mse, rtol=1e-5)
    np.testing.assert_allclose(out["iou"], actual[rows, choice], rtol=1e-6)
    np.testing.assert_allclose(out["focal"], np_focal(logits, t)[rows, choice], rtol=1e-5, atol=1e-7)
    # weights are honoured
    w = segmentation_loss(logits, iou_pred, targets, focal_weight=1.0, dice_weight=3.0, iou_weight=0.5)
    per_mask_w = np_focal(logits, t) + 3 * np_dice(logits, t)
    cw = per_mask_w.argmin(axis=1)
    np.testing.assert_allclose(w["loss"], per_mask_w[rows, cw] + 0.5 * mse, rtol=1e-5)


def test_only_the_chosen_mask_receives_gradients(data):
    logits, targets, iou_pred = data
    out = segmentation_loss(logits, iou_pred, targets)
    choice = np.asarray(out["choice"])
    grad_logits, grad_iou = jax.grad(lambda x, s: segmentation_loss(x, s, targets)["loss"].sum(), argnums=(0, 1))(
        jnp.asarray(logits), jnp.asarray(iou_pred))
    grad_logits = np.asarray(grad_logits)
    for n, c in enumerate(choice):
        assert np.abs(grad_logits[n, c]).sum() > 0
        others = [k for k in range(3) if k != c]
        assert np.all(grad_logits[n, others] == 0), "a candidate that was not chosen got a gradient"
    # The chosen mask's gradient is that of its own loss: 20 focal + dice, computed alone.
    alone = jax.grad(lambda x: (20 * sigmoid_focal_loss(x, targets) + dice_loss(x, targets)).sum())(
        jnp.asarray(logits[np.arange(5), choice]))
    np.testing.assert_allclose(grad_logits[np.arange(5), choice], alone, rtol=1e-5, atol=1e-8)
    # The IoU head learns every candidate's score: d/ds mean_c (s_c − iou_c)² = 2 (s_c − iou_c) / C.
    actual = np_iou(logits > 0, np.broadcast_to(targets[:, None], logits.shape))
    np.testing.assert_allclose(grad_iou, 2 * (iou_pred - actual) / 3, rtol=1e-5, atol=1e-7)


def test_candidates_limit_the_choice_and_the_iou_loss(data):
    """Point prompts choose among masks 1-3, box prompts take mask 0, from one call returning all masks."""
    logits, targets, iou_pred = data
    logits4 = np.concatenate([logits[:, :1] * 0.5, logits], axis=1)  # (5, 4, H, W)
    iou4 = np.concatenate([iou_pred[:, :1], iou_pred], axis=1)
    is_box = np.array([True, False, True, False, False])
    cand = np.where(is_box[:, None], np.arange(4) == 0, np.arange(4) > 0)
    out = segmentation_loss(logits4, iou4, targets, jnp.asarray(cand))
    t = targets[:, None]
    per_mask = 20 * np_focal(logits4, t) + np_dice(logits4, t)
    expected_choice = np.where(is_box, 0, 1 + per_mask[:, 1:].argmin(axis=1))
    np.testing.assert_array_equal(out["choice"], expected_choice)
    actual = np_iou(logits4 > 0, np.broadcast_to(t, logits4.shape))
    sq = (iou4 - actual) ** 2
    np.testing.assert_allclose(out["iou_mse"], np.where(is_box, sq[:, 0], sq[:, 1:].mean(axis=1)), rtol=1e-5,
                               atol=1e-7)
    grads = np.asarray(jax.grad(lambda x: segmentation_loss(x, iou4, targets, jnp.asarray(cand))["loss"].sum())(
        jnp.asarray(logits4)))
    for n in range(5):
        touched = np.flatnonzero(np.abs(grads[n]).sum(axis=(1, 2)) > 0)
        np.testing.assert_array_equal(touched, [expected_choice[n]])
    with pytest.raises(ValueError, match="candidates must be"):
        segmentation_loss(logits4, iou4, targets, jnp.ones((5, 3), bool))


def test_bad_shapes_are_clear_errors(data):
    logits, targets, iou_pred = data
    with pytest.raises(ValueError, match="expected logits"):
        segmentation_loss(logits[0], iou_pred, targets)
    with pytest.raises(ValueError, match="expected logits"):
        segmentation_loss(logits, iou_pred[:, :2], targets)
