"""The model-facing half of the SAM 2 trainer: clip preparation, the simulated prompting and tracking of a clip
with its memory bank, the loss and the J / F evaluation (`train.sam2` wires it to the data and the loop; its
docstring describes one step).

Shapes: B clips of T frames with O object slots each; N = B·O object tracks; S the model's input side, L the
low-res mask side (S / 4), h the feature side (S / 16).
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp

from vitsam.data import prompts
from vitsam.losses import mask_iou, segmentation_loss
from vitsam.models.sam2 import Sam2
from vitsam.sam2_predictor import IMAGE_MEAN, IMAGE_STD, LOW_RES_CLAMP, preprocess
from vitsam.video_metrics import boundary_f


# Clips up to this long are tracked by an unrolled loop: on a CPU the gradient step is about twice as fast as with
# a rolled scan (1.7 s vs 3.7 s for 4 clips of 8 frames, tiny SAM 2 at 128 px, 2-core EPYC, 2026-12-04).
MAX_UNROLL = 16


def _masked_mean(values: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    w = weights.astype(jnp.float32)
    return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1.0)


def _tight_boxes(masks: jnp.ndarray) -> jnp.ndarray:
    """(N, H, W) bool -> (N, 4) x0, y0, x1, y1 (x1, y1 exclusive); zeros for an empty mask."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    h, w = masks.shape[1:]

    def span(any_, n):
        idx = jnp.arange(n)
        lo = jnp.min(jnp.where(any_, idx, n), axis=1)
        hi = jnp.max(jnp.where(any_, idx + 1, 0), axis=1)
        return jnp.where(any_.any(axis=1), lo, 0), hi

    y0, y1 = span(rows, h)
    x0, x1 = span(cols, w)
    return jnp.stack([x0, y0, x1, y1], axis=1).astype(jnp.float32)


def _select(cond: jnp.ndarray, a, b):
    """Row-wise choice between two pytrees of (N, ...) arrays."""
    return jax.tree.map(lambda x, y: jnp.where(cond.reshape(-1, *([1] * (x.ndim - 1))), x, y), a, b)


def first_frames(batch: dict) -> dict:
    """Each clip's first frame and its masks ((B, 1, S, S, 3) frames, (B, O, 1, S, S) masks); the other keys
    unchanged."""
    return {**batch, "frames": batch["frames"][:, :1], "masks": batch["masks"][:, :, :1]}


def _object_bce(score: jnp.ndarray, present: jnp.ndarray) -> jnp.ndarray:
    """Binary cross-entropy of object-score logits (N,) against presence (N,) bool."""
    x, t = score.astype(jnp.float32), present.astype(jnp.float32)
    return jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))


class Sam2Task:
    """Clip preparation, the simulated prompting / tracking of a clip, the loss and the J / F eval."""

    def __init__(self, cfg, model: Sam2, constants):
        self.cfg, self.model, self.constants = cfg, model, constants
        self.size = model.image_size
        self.freeze = bool(cfg.freeze_image_encoder)
        self.w = dict(focal_weight=cfg.loss.focal_weight, dice_weight=cfg.loss.dice_weight,
                      iou_weight=cfg.loss.iou_weight)

    # -- model calls

    def _vars(self, params):
        return {"params": params, **({"constants": self.constants} if self.constants else {})}

    def _with(self, constants) -> "Sam2Task":
        if constants is None:
            return self
        task = copy.copy(self)
        task.constants = constants
        return task

    def _call(self, params, method, *args, **kwargs):
        return self.model.apply(self._vars(params), *args, method=method, **kwargs)

    # -- data

    def prepare(self, batch):
        """Batch -> per-frame inputs: images (B·T, S, S, 3) normalized, targets (T, N, S, S) bool, valid (N,)."""
        frames = batch["frames"]
        b, t, sd = frames.shape[:3]
        s = self.size
        x = frames.reshape(b * t, sd, sd, 3)
        if sd != s:
            x = jax.vmap(lambda im: preprocess(im, s))(x)
        else:
            x = (x.astype(jnp.float32) / 255.0 - jnp.asarray(IMAGE_MEAN)) / jnp.asarray(IMAGE_STD)
        masks = batch["masks"].astype(bool)  # (B, O, T, Sd, Sd)
        o = masks.shape[1]
        if sd != s:  # nearest neighbour at pixel centres
            idx = jnp.minimum(((jnp.arange(s) + 0.5) * sd / s).astype(jnp.int32), sd - 1)
            masks = masks[..., idx[:, None], idx[None, :]]
        targets = masks.transpose(2, 0, 1, 3, 4).reshape(t, b * o, s, s)
        valid = batch["object_valid"].astype(bool)
        if "mask" in batch:
            valid = valid & batch["mask"].astype(bool)[:, None]
        return x, targets, valid.reshape(-1)

    def features(self, params, images, b: int, o: int):
        """Encoded frames, per object track and frame: vision (T, N, h, w, D), vision_pos (h, w, D), high_res
        ((T, N, 4h, 4w, C0), (T, N, 2h, 2w, C1))."""
        feats = self._call(params, Sam2.encode_image, images, backbone_gradient=not self.freeze)
        t = images.shape[0] // b

        def per_object(x):  # (B·T, ...) -> (T, B·O, ...)
            x = x.reshape(b, t, *x.shape[1:]).swapaxes(0, 1)
            return jnp.repeat(x, o, axis=1)

        return per_object(feats.vision), feats.vision_pos, tuple(per_object(h) for h in feats.high_res)

    # -- one clip: prompts, corrections, tracking

    def _step_loss(self, params, heads, target, multimask, weight):
        """Loss terms of one prediction step of N tracks: the SAM loss on the chosen candidate(s) at S × S where
        the object is present, the object-score cross-entropy everywhere (`weight` (N,) masks padding rows).
        `multimask`: (N,) bool, or one Python bool for every row; then only those candidates are upscaled and
        scored (the same terms: the others have weight 0), a quarter of the work for single-mask rows."""
        masks, iou, candidates = heads.multi_masks, heads.multi_iou, None
        if isinstance(multimask, bool):
            keep = slice(1, None) if multimask else slice(0, 1)
            masks, iou = masks[:, keep], iou[:, keep]
        else:
            single = jnp.arange(masks.shape[1]) == 0
            candidates = jnp.where(multimask[:, None], ~single[None], single[None])
        n, c, low = masks.shape[:3]
        logits = self._call(params, Sam2.upscale_masks, masks.reshape(n * c, low, low))
        logits = logits.reshape(n, c, self.size, self.size)
        out = segmentation_loss(logits, iou, target, candidates, **self.w)
        present = target.any(axis=(1, 2))
        mask_w = weight & present
        return {"mask_loss": out["loss"], "focal": out["focal"], "dice": out["dice"], "iou_mse": out["iou_mse"],
                "iou": out["iou"], "object_bce": _object_bce(heads.object_score, present),
                "mask_w": mask_w.astype(jnp.float32), "w": weight.astype(jnp.float32)}

    def _clicks(self, params, pix, high_res, target, key, points, labels, first, num_real: int, clicks: int,
                weight, init_cond: bool):
        """`clicks` correction clicks after `first` (a HeadOutput): each from the error region of the previous
        chosen mask (uniform), the previous low-res logits fed back; single mask output from 2 points on.
        Returns the last HeadOutput and each click's loss terms (dicts of (N,))."""
        prev, steps = first, []
        for i in range(clicks):
            key, k = jax.random.split(key)
            pred = self._call(params, Sam2.upscale_masks, prev.masks) > 0
            pt, lab = prompts.error_point(k, pred, target, self.size, self.size)
            points = points.at[:, num_real + i].set(pt)
            labels = labels.at[:, num_real + i].set(lab)
            multimask = bool(self.model.multimask_for(num_real + i + 1, init_cond))
            mask_in = jnp.clip(jax.lax.stop_gradient(prev.masks), -LOW_RES_CLAMP, LOW_RES_CLAMP)
            prev = self._call(params, Sam2.sam_heads_train, pix, high_res, points, labels, mask_in,
                              jnp.full((pix.shape[0],), multimask))
            steps.append(self._step_loss(params, prev, target, multimask, weight))
        return prev, steps

    def _memory_bank(self, t, is_cond, num_frames):
        """Which of the T memory / pointer slots frame `t` attends to (slot s holds frame s), as
        `vitsam.models.sam2.plan_memory` chooses them at inference with stride 1: conditioning frames before t
        (temporal slot 0), the num_maskmem − 1 frames just before t, the pointers of up to max_obj_ptrs − 1
        frames before t and of the conditioning frames."""
        m = self.model
        s = jnp.arange(num_frames)
        dist = t - s
        past = s < t
        mem_valid = past[None] & (is_cond | (dist < m.num_maskmem)[None])
        tpos = jnp.where(is_cond, 0, jnp.clip(m.num_maskmem - dist, 1, m.num_maskmem - 1)[None])
        ptr_valid = past[None] & (is_cond | (dist < m.max_obj_ptrs_in_encoder)[None])
        offsets = jnp.broadcast_to(dist.astype(jnp.float32), is_cond.shape)
        return mem_valid, tpos.astype(jnp.int32), ptr_valid, offsets

    def run_clip(self, params, batch, key, *, train: bool, prompt: str = "mask", mask_prob: float | None = None,
                 still: bool = False, image_prompts: bool = False):
        """Prompt frame 0, track frames 1 … T − 1 with the memory bank (gradients flow through the memories, as
        in the official training). Train: the prompt per track is the mask (`sim.mask_prob`) or a point / box
        with `sim.correction_clicks` clicks, and one random frame (probability `sim.correct_frame_prob`) of the
        point-prompted tracks gets clicks too and becomes a conditioning frame; `mask_prob` overrides
        `sim.mask_prob`. Eval: `prompt` "mask" (first-frame mask) or "click" (one click at the mask's most interior
        pixel), no corrections. `still`: the clip is frame 0 and a copy of it (the static stage), encoded once.
        `image_prompts` (train): every track's frame 0 is also prompted with a point or box and the correction
        clicks, as an image, and those terms join the loss; the tracking starts from the prompt drawn above.
        Returns (per-step loss terms: a list of dicts of (N,) or (T − 1, N)), chosen low-res logits (T, N, L, L),
        valid (N,), targets (T, N, S, S), whether each track was mask-prompted (N,), the index in the list of the
        tracked frames' terms)."""
        sim, m = self.cfg.sim, self.model
        images, targets, valid = self.prepare(first_frames(batch) if still else batch)
        b, o = batch["object_valid"].shape
        vision, vision_pos, high_res = self.features(params, images, b, o)
        if still:
            vision, targets = (jnp.concatenate([x, x]) for x in (vision, targets))
            high_res = tuple(jnp.concatenate([x, x]) for x in high_res)
        num_frames, n = targets.shape[:2]
        p_mask = sim.mask_prob if mask_prob is None else mask_prob
        # Every track mask-prompted and no image prompts: no point prompt, click or correction counts, so none is
        # computed.
        points_used = not (p_mask >= 1.0 if train else prompt == "mask") or (train and image_prompts)
        k_prompt, k_first, k_click, k_frame, k_track = jax.random.split(key, 5)

        # Frame 0: the prompt, then (points) correction clicks.
        t0 = targets[0]
        hr0 = tuple(h[0] for h in high_res)
        pix0 = self._call(params, Sam2.no_memory, vision[0])
        given = self._call(params, Sam2.mask_as_output, vision[0], hr0, t0)
        clicks = sim.correction_clicks if train and points_used else 0
        if train:
            use_mask = jax.random.uniform(k_prompt, (n,)) < p_mask
            pts, labs, is_box = prompts.first_prompt(k_first, t0, _tight_boxes(t0), self.size, sim.box_prob,
                                                     sim.box_noise, sim.box_max_noise)
        else:
            use_mask = jnp.full((n,), prompt == "mask")
            pt, lab = prompts.mask_point(None, t0, self.size)
            pts = jnp.stack([pt, jnp.zeros_like(pt)], axis=1)
            labs = jnp.stack([lab, jnp.full_like(lab, -1)], axis=1)
            is_box = jnp.zeros((n,), bool)
        points = jnp.concatenate([pts, jnp.zeros((n, clicks, 2), jnp.float32)], axis=1)
        labels = jnp.concatenate([labs, jnp.full((n, clicks), -1, jnp.int32)], axis=1)
        prompted = valid & ~use_mask
        frame0_w = valid if train and image_prompts else prompted
        steps = []
        if points_used:
            multimask = ~is_box
            first = self._call(params, Sam2.sam_heads_train, pix0, hr0, points, labels, None, multimask)
            steps.append(self._step_loss(params, first, t0, multimask, frame0_w))
            last, more = self._clicks(params, pix0, hr0, t0, k_click, points, labels, first, 2, clicks, frame0_w,
                                      True)
            steps += more
            out0 = _select(use_mask, given, last)
        else:
            out0 = given
        mem0 = self._call(params, Sam2.encode_memory, vision[0],
                          self._call(params, Sam2.upscale_masks, out0.masks), out0.object_score, True)

        # Frames 1 … T − 1, in order, with the memory bank in the scan's carry (slot s = frame s).
        h = m.embedding_size
        mem_bank = jnp.zeros((n, num_frames, h, h, m.mem_dim), mem0.dtype).at[:, 0].set(mem0)
        ptr_bank = jnp.zeros((n, num_frames, m.d_model), out0.obj_ptr.dtype).at[:, 0].set(out0.obj_ptr)
        is_cond = jnp.zeros((n, num_frames), bool).at[:, 0].set(True)
        max_ptr_offset = min(num_frames, m.max_obj_ptrs_in_encoder) - 1
        if train:
            corr_frame = jax.random.randint(k_frame, (), 1, max(num_frames, 2))
            corr_on = jax.random.uniform(jax.random.fold_in(k_frame, 1)) < sim.correct_frame_prob
        else:
            corr_frame, corr_on = jnp.int32(-1), jnp.bool_(False)
        # Tracked frames get clicks only where a track can be point-prompted (not with image prompts alone).
        track_clicks = 0 if train and p_mask >= 1.0 else clicks
        no_points = (jnp.zeros((n, track_clicks, 2), jnp.float32), jnp.full((n, track_clicks), -1, jnp.int32))

        def frame_step(carry, xs):
            mem_bank, ptr_bank, is_cond = carry
            t, vis, hr, target, k = xs
            mem_valid, tpos, ptr_valid, offsets = self._memory_bank(t, is_cond, num_frames)
            pix = self._call(params, Sam2.condition, vis, vision_pos, mem_bank, tpos, mem_valid, ptr_bank, offsets,
                             ptr_valid, max_ptr_offset)
            tracked_mm = bool(m.multimask_for(0))
            tracked = self._call(params, Sam2.sam_heads_train, pix, hr, jnp.zeros((n, 1, 2), jnp.float32),
                                 jnp.full((n, 1), -1, jnp.int32), None, jnp.full((n,), tracked_mm))
            step0 = self._step_loss(params, tracked, target, tracked_mm, valid)
            corrected = prompted & (t == corr_frame) & corr_on
            if track_clicks:
                # Every frame computes the clicks and weighs them by `corrected`: on XLA:CPU that is faster than
                # a lax.cond that runs them on the corrected frame only (a recipe gradient 1.93 s against 2.08 s).
                last, more = self._clicks(params, pix, hr, target, k, *no_points, tracked, 0, track_clicks,
                                          corrected, False)
                more = jax.tree.map(lambda *x: jnp.stack(x), *more)
                final = _select(corrected, last, tracked)
            else:
                final, more = tracked, None
            mem = self._call(params, Sam2.encode_memory, vis, self._call(params, Sam2.upscale_masks, final.masks),
                             final.object_score, corrected)
            mem_bank = jax.lax.dynamic_update_index_in_dim(mem_bank, mem, t, axis=1)
            ptr_bank = jax.lax.dynamic_update_index_in_dim(ptr_bank, final.obj_ptr, t, axis=1)
            is_cond = jax.lax.dynamic_update_index_in_dim(is_cond, corrected, t, axis=1)
            return (mem_bank, ptr_bank, is_cond), (step0, more, final.masks)

        keys = jax.random.split(k_track, num_frames - 1)
        xs = (jnp.arange(1, num_frames), vision[1:], tuple(x[1:] for x in high_res), targets[1:], keys)
        carry = (mem_bank, ptr_bank, is_cond)
        if num_frames == 2:
            # One tracked frame (the still clips): called directly. XLA:CPU keeps a scan of length one as a while
            # loop, and the weight gradients of the memory encoder's convolutions inside it ran ~10× slower: the
            # gradient of a still batch took 0.57 s that way, 0.22 s now, the same to the bit (Zen 4, 2026-12-07).
            ys = frame_step(carry, jax.tree.map(lambda x: x[0], xs))[1]
            tracked_steps, corr_steps, masks = jax.tree.map(lambda y: y[None], ys)
        else:
            _, (tracked_steps, corr_steps, masks) = jax.lax.scan(
                frame_step, carry, xs, unroll=(num_frames - 1) if num_frames <= MAX_UNROLL else 1)
        tracked_index = len(steps)
        steps.append(tracked_steps)
        if corr_steps is not None:
            steps.append(corr_steps)
        masks = jnp.concatenate([out0.masks[None], masks], axis=0)
        return steps, masks, valid, targets, use_mask, tracked_index

    # -- loss and eval

    def loss_fn(self, params, batch, rng, constants=None, phase=None):
        """The loss of one batch of clips. `phase` "still" (the static stage, the first `sim.static_steps` steps):
        that of the still clips (each clip's first frame and a copy of it, with its masks) with every track
        prompted by its mask (`sim.static_mask_prob` 1; below 1, the rest by a point or a box), and with
        `sim.static_point_prompts` every frame 0 also prompted as an image: with nothing moving, the memory
        attention learns to carry the prompted object from the conditioning frame before the clips ask it to
        follow motion."""
        if constants is not None:
            return self._with(constants).loss_fn(params, batch, rng, phase=phase)
        if phase == "still":
            return self._clip_loss(params, batch, rng, mask_prob=self.cfg.sim.static_mask_prob, still=True,
                                   image_prompts=self.cfg.sim.static_point_prompts)
        return self._clip_loss(params, batch, rng)

    def _clip_loss(self, params, batch, rng, mask_prob=None, still=False, image_prompts=False):
        steps, masks, valid, targets, _, tracked_index = self.run_clip(params, batch, rng, train=True,
                                                                       mask_prob=mask_prob, still=still,
                                                                       image_prompts=image_prompts)
        flat = {k: jnp.concatenate([s[k].reshape(-1) for s in steps]) for k in steps[0]}
        mask_loss = _masked_mean(flat["mask_loss"], flat["mask_w"])
        object_loss = _masked_mean(flat["object_bce"], flat["w"])
        loss = mask_loss + self.cfg.loss.object_weight * object_loss
        track = steps[tracked_index]
        metrics = {"mask_loss": mask_loss, "object_bce": object_loss,
                   "focal": _masked_mean(flat["focal"], flat["mask_w"]),
                   "dice": _masked_mean(flat["dice"], flat["mask_w"]),
                   "iou_mse": _masked_mean(flat["iou_mse"], flat["mask_w"]),
                   "miou_tracked": _masked_mean(track["iou"], track["mask_w"]),
                   "objects": valid.sum().astype(jnp.float32)}
        return loss, metrics

    def eval_fn(self, params, batch, constants=None):
        """Per clip: J, F and J&F of the objects, averaged over the frames after the prompted one and before the
        last (as the DAVIS evaluation), with the first-frame mask ("mask") and with one click on the first frame
        ("click"); weighted by the clip's object count, so the means are over objects."""
        if constants is not None:
            return self._with(constants).eval_fn(params, batch)
        b, o = batch["object_valid"].shape
        out = {}
        for prompt in self.cfg.eval.prompts:
            _, masks, valid, targets, _, _ = self.run_clip(params, batch, jax.random.PRNGKey(0), train=False,
                                                           prompt=prompt)
            t, n = masks.shape[:2]
            logits = self._call(params, Sam2.upscale_masks, masks.reshape(t * n, *masks.shape[2:]))
            pred = (logits > 0).reshape(t, n, self.size, self.size)
            frames = slice(1, t - 1) if t > 2 else slice(1, t)
            j = mask_iou(pred[frames], targets[frames]).mean(axis=0)  # (N,)
            f = boundary_f(pred[frames], targets[frames]).mean(axis=0)
            w = valid.reshape(b, o).astype(jnp.float32)
            count = w.sum(axis=1)

            def per_clip(x):
                return (x.reshape(b, o) * w).sum(axis=1) / jnp.maximum(count, 1.0), count

            out |= {f"J_{prompt}": per_clip(j), f"F_{prompt}": per_clip(f), f"JF_{prompt}": per_clip((j + f) / 2)}
        return out
