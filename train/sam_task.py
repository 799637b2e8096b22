"""The model-facing half of the SAM trainer: batch preparation, the simulated interactive sessions, the loss and
the eval metrics (`train.sam` wires it to the data and the loop; its docstring describes one step)."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np

from vitsam.data import prompts
from vitsam.losses import mask_iou, segmentation_loss
from vitsam.models import Sam
from vitsam.models.sam import processing


def _masked_mean(values: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    w = weights.astype(jnp.float32)
    return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1.0)


def _unique_class(labels: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """(B, M) class ids -> (B, M) True where the mask's class occurs once among its image's valid masks."""
    same = (labels[:, :, None] == labels[:, None, :]) & valid[:, None, :]
    return valid & (labels >= 0) & (same.sum(axis=-1) == 1)


def _pick_slots(key: jax.Array, eligible: jnp.ndarray, count: int) -> jnp.ndarray:
    """(B, M) bool -> (B, count) slot indices, uniformly at random without repeats among the eligible slots of
    each row (rows with fewer eligible slots fill up with ineligible ones, which the caller weighs 0)."""
    return jax.lax.top_k(jnp.where(eligible, jax.random.uniform(key, eligible.shape), -1.0), count)[1]


def _best_by_score(logits: jnp.ndarray, iou: jnp.ndarray) -> jnp.ndarray:
    """(N, C, H, W), (N, C) -> the logits of the candidate with the highest predicted IoU (N, H, W)."""
    return jnp.take_along_axis(logits, jnp.argmax(iou, axis=1)[:, None, None, None], axis=1)[:, 0]


class SamTask:
    """The model-facing half of the trainer: batch preparation, the simulated sessions, loss and eval."""

    def __init__(self, cfg, model: Sam, constants, text_table: np.ndarray | None):
        self.cfg, self.model = cfg, model
        self.constants = constants
        self.text_table = None if text_table is None else jnp.asarray(text_table)
        self.frame = model.image_size
        self.grid = model.mask_input_size
        self.data_size = cfg.data.image_size
        self.freeze = bool(cfg.freeze_image_encoder)
        self.w = dict(focal_weight=cfg.loss.focal_weight, dice_weight=cfg.loss.dice_weight,
                      iou_weight=cfg.loss.iou_weight)

    # -- model calls

    def _vars(self, params):
        return {"params": params, "constants": self.constants}

    def _with(self, constants) -> "SamTask":
        """This task computing with `constants` (the saved ones the loop passes in) instead of its own."""
        if constants is None:
            return self
        task = copy.copy(self)
        task.constants = constants
        return task

    def encode(self, params, images, rng=None):
        train = rng is not None and not self.freeze
        emb = self.model.apply(self._vars(params), images, train=train, method=Sam.encode_image,
                               rngs={"dropout": rng} if train else {})
        return jax.lax.stop_gradient(emb) if self.freeze else emb

    def decode(self, params, emb, points=None, labels=None, boxes=None, mask_input=None, text_ids=None,
               multimask=False):
        return self.model.apply(self._vars(params), emb, points, labels, boxes,
                                None if mask_input is None else mask_input[..., None], text_ids, multimask,
                                method=Sam.decode)

    # -- data

    def prepare(self, batch):
        """Batch -> images (B, S, S, 3) normalized, targets (N, L, L) bool, boxes (N, 4) in the S frame,
        valid (N,), labels (B, M), valid (B, M); N = B·M, L the low-res grid."""
        images = batch["image"].astype(jnp.float32)
        b, sd = images.shape[0], images.shape[1]
        s, grid = self.frame, self.grid
        if sd != s:
            images = jax.image.resize(images, (b, s, s, 3), "linear")
        input_sizes = batch["input_size"] * (s / sd) if "input_size" in batch else None
        x = processing.normalize_frames(images, input_sizes)
        masks = batch["masks"]
        m = masks.shape[1]
        if masks.shape[-1] != grid:  # area-weighted resize to the low-res grid, then majority
            masks = jax.image.resize(masks.astype(jnp.float32), (b, m, grid, grid), "linear") > 0.5
        targets = masks.reshape(b * m, grid, grid).astype(bool)
        valid = batch["mask_valid"].astype(bool)
        if "mask" in batch:
            valid = valid & batch["mask"].astype(bool)[:, None]
        valid = valid & targets.reshape(b, m, -1).any(axis=-1)  # a mask that vanished on the low-res grid
        boxes = batch["boxes"].astype(jnp.float32).reshape(b * m, 4) * (s / sd)
        return x, targets, boxes, batch["labels"], valid

    # -- training

    def session(self, params, emb, targets, boxes, valid2d, key):
        """Simulated interactive sessions. Returns per-round (loss dict, mask weights): round 1 over every mask
        (N,), each later round over the masks chosen for refinement (`sim.refine_per_image` per image, 0: all)."""
        sim = self.cfg.sim
        b, m = valid2d.shape
        n = b * m
        valid = valid2d.reshape(-1)
        later = sim.num_rounds - 1
        k_first, k_sched, k_rounds, k_pick = jax.random.split(key, 4)
        first_pts, first_labels, is_box = prompts.first_prompt(
            k_first, targets, boxes, self.frame, sim.box_prob, sim.box_noise, sim.box_max_noise)
        points = jnp.concatenate([first_pts, jnp.zeros((n, later, 2), jnp.float32)], axis=1)
        labels = jnp.concatenate([first_labels, jnp.full((n, later), -1, jnp.int32)], axis=1)
        # All 4 masks from one call: a point (ambiguous) is scored on the best of masks 1-3, a box (two
        # prompt points) on the single-mask output 0.
        logits, iou = self.decode(params, emb, points, labels, multimask=None)
        single = jnp.arange(logits.shape[1]) == 0
        candidates = jnp.where(is_box[:, None], single[None], ~single[None])
        rounds = [(segmentation_loss(logits, iou, targets, candidates, **self.w), valid)]
        if later == 0:
            return rounds
        prev = jax.lax.stop_gradient(_best_by_score(logits, jnp.where(candidates, iou, -jnp.inf)))

        t = sim.refine_per_image
        if 0 < t < m:  # refine t masks per image, drawn at random among the valid ones
            idx = (jnp.arange(b)[:, None] * m + _pick_slots(k_pick, valid2d, t)).reshape(-1)
            emb, targets, points, labels, prev, valid = (x[idx] for x in (emb, targets, points, labels, prev, valid))

        def round_fn(carry, xs):
            points, labels, prev = carry
            r, adds, k = xs
            pt, lab = prompts.error_point(k, prev > 0, targets, self.grid, self.frame)
            points = points.at[:, 2 + r].set(pt)
            labels = labels.at[:, 2 + r].set(jnp.where(adds, lab, -1))
            logits, iou = self.decode(params, emb, points, labels, mask_input=prev, multimask=False)
            out = segmentation_loss(logits, iou, targets, **self.w)
            return (points, labels, jax.lax.stop_gradient(logits[:, 0])), out

        adds = prompts.refinement_schedule(k_sched, sim.num_rounds, sim.mask_only_rounds)
        xs = (jnp.arange(later), adds, jax.random.split(k_rounds, later))
        _, rest = jax.lax.scan(round_fn, (points, labels, prev), xs)
        return rounds + [(jax.tree.map(lambda x: x[r], rest), valid) for r in range(later)]

    def loss_fn(self, params, batch, rng, constants=None):
        if constants is not None:
            return self._with(constants).loss_fn(params, batch, rng)
        images, targets, boxes, labels, valid2d = self.prepare(batch)
        m = labels.shape[1]
        k_enc, k_sim = jax.random.split(rng)
        emb = jnp.repeat(self.encode(params, images, k_enc), m, axis=0)
        rounds = self.session(params, emb, targets, boxes, valid2d, k_sim)
        per_round = {k: jnp.stack([_masked_mean(out[k], w) for out, w in rounds])
                     for k in ("focal", "dice", "iou_mse", "iou")}
        metrics = {"focal": per_round["focal"].mean(), "dice": per_round["dice"].mean(),
                   "iou_mse": per_round["iou_mse"].mean(), "miou_first": per_round["iou"][0],
                   "miou_last": per_round["iou"][-1], "valid_masks": valid2d.sum().astype(jnp.float32)}
        # The loss is the mean over every prompt session of every round (text ones weighted by text_weight):
        # with every mask refined this weighs the rounds equally, as the paper's sum over iterations does.
        sessions = [(out["loss"], w.astype(jnp.float32)) for out, w in rounds]
        if self.text_table is not None and self.cfg.sim.text:
            # Text prompts for the first `text_per_image` mask slots of each image (the order is random in
            # training for SA-1B / COCO; vitsam_shapes puts the main shape first).
            t = min(self.cfg.sim.text_per_image, m)
            b = labels.shape[0]
            text_valid = _unique_class(labels, valid2d)[:, :t].reshape(-1)
            ids = self.text_table[jnp.clip(labels[:, :t].reshape(-1), 0, self.text_table.shape[0] - 1)]
            sel = lambda x: x.reshape(b, m, *x.shape[1:])[:, :t].reshape(b * t, *x.shape[1:])  # noqa: E731
            logits, iou = self.decode(params, sel(emb), text_ids=ids, multimask=True)
            out = segmentation_loss(logits, iou, sel(targets), **self.w)
            sessions.append((out["loss"], self.cfg.loss.text_weight * text_valid.astype(jnp.float32)))
            metrics |= {"text_loss": _masked_mean(out["loss"], text_valid),
                        "miou_text": _masked_mean(out["iou"], text_valid)}
        total = sum(jnp.sum(v * w) for v, w in sessions)
        loss = total / jnp.maximum(sum(jnp.sum(w) for _, w in sessions), 1.0)
        return loss, metrics

    # -- evaluation

    def eval_fn(self, params, batch, constants=None):
        if constants is not None:
            return self._with(constants).eval_fn(params, batch)
        images, targets, boxes, labels, valid2d = self.prepare(batch)
        b, m = labels.shape
        emb = jnp.repeat(self.encode(params, images), m, axis=0)

        def per_image(ious, weights2d):
            w = weights2d.astype(jnp.float32)
            count = w.sum(axis=1)
            return (ious.reshape(b, m) * w).sum(axis=1) / jnp.maximum(count, 1.0), count

        out = {}
        point, point_label = prompts.mask_point(None, targets, self.frame)
        logits, iou = self.decode(params, emb, point[:, None], point_label[:, None], multimask=True)
        prev = _best_by_score(logits, iou)
        out["miou_point"] = per_image(mask_iou(prev > 0, targets), valid2d)

        logits, _ = self.decode(params, emb, boxes=boxes, multimask=False)
        out["miou_box"] = per_image(mask_iou(logits[:, 0] > 0, targets), valid2d)

        k = self.cfg.eval.clicks
        if k > 1:  # clicks 2 … k: each at the most interior pixel of the error region, previous logits fed back
            n = targets.shape[0]
            points = jnp.concatenate([point[:, None], jnp.zeros((n, k - 1, 2), jnp.float32)], axis=1)
            labels_ = jnp.concatenate([point_label[:, None], jnp.full((n, k - 1), -1, jnp.int32)], axis=1)

            def click(carry, r):
                points, labels_, prev = carry
                pt, lab = prompts.error_point(None, prev > 0, targets, self.grid, self.frame)
                points, labels_ = points.at[:, r].set(pt), labels_.at[:, r].set(lab)
                logits, _ = self.decode(params, emb, points, labels_, mask_input=prev, multimask=False)
                return (points, labels_, logits[:, 0]), mask_iou(logits[:, 0] > 0, targets)

            _, ious = jax.lax.scan(click, (points, labels_, prev), jnp.arange(1, k))  # (k - 1, N)
            for r in range(2, k + 1):
                out[f"miou_{r}clicks"] = per_image(ious[r - 2], valid2d)

        if self.text_table is not None and self.cfg.sim.text:
            text_valid = _unique_class(labels, valid2d)
            ids = self.text_table[jnp.clip(labels.reshape(-1), 0, self.text_table.shape[0] - 1)]
            logits, iou = self.decode(params, emb, text_ids=ids, multimask=True)
            out["miou_text"] = per_image(mask_iou(_best_by_score(logits, iou) > 0, targets), text_valid)
        return out
