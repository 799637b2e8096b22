"""Train or fine-tune SAM with simulated interactive prompts, across every local accelerator.

    python -m train.sam --workdir DIR                                  # the embedded recipe (tiny SAM, shapes)
    python -m train.sam --config configs/sam_finetune_sa1b.py --workdir DIR \\
        --config.init_from=/path/sam_vit_b --config.data.train_path=/data/sa1b/train --config.data.eval_path=...

    python -m train.sam --workdir DIR --config.init_from=CKPT --config.eval_only=True    # only eval: DIR/eval.json
    python -m train.sam --config configs/sam_vit_h_sa1b_fsdp.py --workdir DIR --compile_for=tpu:v5e:8x8

Any config field can be overridden as --config.field=value. Running the same command again resumes from the
last checkpoint in DIR (params, optimizer state, step and data position). DIR also gets model.json, so
`vitsam segment IMAGE --checkpoint DIR` and `vitsam.convert.load_model(DIR)` use the trained model.
Several processes and --compile_for: see `train.launch`; meshes and sharding rules: `--config.mesh.*`,
`--config.sharding_rules` (`vitsam.sharding`).

One step, for b images with up to M masks each (N = b·M prompt sessions, padding masks weighted 0):
  1. the image encoder runs once per image (frozen: without gradients); its embedding serves all M masks;
  2. round 1: a point drawn from each mask (multimask output: the loss of the best of masks 1-3 only, see
     `vitsam.losses.segmentation_loss`) or its jittered box (`sim.box_prob`; the single-mask output 0);
  3. rounds 2 … `sim.num_rounds`: a point from the error region of the previous prediction (positive on a
     false negative, negative on a false positive) added to the prompt, the previous low-res logits fed back
     as the mask input, single-mask output; `sim.mask_only_rounds` of them add no point (paper: 11 rounds,
     2 of them mask-only);
  4. where the data has class names and the model a text encoder: the class name as a text prompt, for
     the first `sim.text_per_image` mask slots of each image whose class is unique in their image.
The loss is focal · 20 + dice + IoU-MSE, averaged over every prompt session (mask × round, and the text
prompts weighted by `loss.text_weight`); padding masks weigh 0.
Eval (held-out split): mIoU over masks with 1 point (the mask's most interior pixel; of masks 1-3 the one with
the highest predicted IoU), 1 box (exact; mask 0), after each of 2 … `eval.clicks` clicks (each at the most
interior pixel of the error region; mask 0), and with the text prompt (best predicted of masks 1-3); masks are
scored at the model's low-res output size (4× the embedding grid).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from train import launch, loop
from vitsam.models import registry
from vitsam.checkpoint import check_model_spec, model_spec, write_model_spec
from vitsam.data import prompts
from vitsam.losses import mask_iou, segmentation_loss
from vitsam.models import Sam, sam_init, sam_variant
from vitsam.models.sam import processing

_DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "sam_shapes.py"
_CONFIG = launch.define_config("train.sam", _DEFAULT_CONFIG)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints and metrics.jsonl go", required=True)

FORMATS = ("tfds", "sa1b", "coco")


# ----------------------------------------------------------------------------- model


def build_model(cfg) -> tuple[Sam, dict | None]:
    """(model, host variables or None). From scratch: `cfg.model.variant` plus overrides (None keeps the
    variant's value). With `cfg.init_from` (a `vitsam convert` folder, a training workdir or an official
    sam_vit_*.pth): that checkpoint's architecture and variables, with only the training fields of `cfg.model`."""
    overrides = loop.model_overrides(cfg.model)
    if not cfg.init_from:
        try:
            return sam_variant(cfg.model.variant, **overrides), None
        except TypeError as e:
            raise ValueError(f"model: {e}") from None
    from vitsam.convert import load_model

    model, variables, kind = load_model(cfg.init_from)
    if kind != "sam":
        raise ValueError(f"init_from={cfg.init_from} holds a {kind} model, not a SAM")
    model = model.clone(**{k: v for k, v in overrides.items() if k in registry.get("sam").training_fields})
    return model, jax.device_get(dict(variables))


def layer_id(path: tuple[str, ...], depth: int) -> int:
    """Layer of a SAM parameter for layer-wise lr decay: patch / position embedding 0, encoder block i → i + 1,
    the neck, prompt encoder, mask decoder and text encoder depth + 1."""
    if path and path[0] == "image_encoder" and len(path) > 1:
        if path[1] in ("patch_embed", "pos_embed"):
            return 0
        if path[1].startswith("blocks_"):
            return int(path[1].split("_")[1]) + 1
    return depth + 1


# ----------------------------------------------------------------------------- data


def _check_config(cfg) -> None:
    s, d = cfg.sim, cfg.data
    if d.format not in FORMATS:
        raise ValueError(f"data.format must be one of {FORMATS}, got {d.format!r}")
    if s.num_rounds < 1:
        raise ValueError(f"sim.num_rounds must be at least 1, got {s.num_rounds}")
    if not 0 <= s.mask_only_rounds <= min(2, s.num_rounds - 1):
        raise ValueError(f"sim.mask_only_rounds must be in 0 … min(2, num_rounds − 1), got {s.mask_only_rounds}")
    if not 0.0 <= s.box_prob <= 1.0:
        raise ValueError(f"sim.box_prob must be in [0, 1], got {s.box_prob}")
    if cfg.eval.clicks < 1:
        raise ValueError(f"eval.clicks must be at least 1, got {cfg.eval.clicks}")
    if d.max_masks < 1 or d.eval_max_masks < 1:
        raise ValueError("data.max_masks and data.eval_max_masks must be positive")
    if cfg.eval_only and not cfg.init_from:
        raise ValueError("eval_only evaluates the checkpoint in init_from, which is empty")
    if cfg.optim.layer_decay <= 0 or cfg.optim.layer_decay > 1:
        raise ValueError(f"optim.layer_decay must be in (0, 1], got {cfg.optim.layer_decay}")


def open_sources(cfg):
    """(train source, eval source, class names or None) for `cfg.data`; the train source is None for `eval_only`
    with a `data.eval_path` (SA-1B, COCO)."""
    d = cfg.data
    if d.format == "tfds":
        from vitsam.data import pipeline

        train = pipeline.open_source(d.name, d.train_split, d.data_dir)
        evals = pipeline.open_source(d.name, d.eval_split, d.data_dir)
        try:
            names = pipeline.class_names(train, "objects/label")
        except (ValueError, KeyError):
            names = None
        return train, evals, names
    # eval_only with an eval_path needs no training data
    need_train = not (cfg.eval_only and d.eval_path)
    if need_train and not d.train_path:
        raise ValueError(f"data.format={d.format!r} needs data.train_path")
    if d.format == "sa1b":
        from vitsam.data.sa1b import SA1BSource

        if d.eval_path:
            return SA1BSource(d.train_path) if need_train else None, SA1BSource(d.eval_path), None
        if d.eval_holdout <= 0:
            SA1BSource(d.train_path)  # a missing folder is the more useful error
            raise ValueError("data.format='sa1b' needs data.eval_path or data.eval_holdout > 0")
        return SA1BSource(d.train_path, stop=-d.eval_holdout), SA1BSource(d.train_path, start=-d.eval_holdout), None
    from vitsam.data.coco import CocoInstancesSource

    if not ((d.train_images or not need_train) and d.eval_path and d.eval_images):
        raise ValueError("data.format='coco' needs data.train_path, data.train_images, data.eval_path, data.eval_images")
    evals = CocoInstancesSource(d.eval_path, d.eval_images)
    if not need_train:
        return None, evals, evals.class_names
    train = CocoInstancesSource(d.train_path, d.train_images)
    return train, evals, train.class_names


def cache_sources(cfg, train_source, eval_source):
    """With `data.cache_in_memory` (TFDS sources): every image and mask decoded once and read from RAM (with
    `eval_only`, only the eval split's)."""
    if cfg.data.format != "tfds" or not cfg.data.cache_in_memory:
        return train_source, eval_source
    from vitsam.data import pipeline

    keys = [k for k in ("image", "objects", "label") if k in eval_source.dataset_info.features]
    eval_source = pipeline.cache_in_memory(eval_source, keys)
    return (train_source if cfg.eval_only else pipeline.cache_in_memory(train_source, keys)), eval_source


def make_iterators(cfg, train_source, eval_source):
    """(train_iterator(b), eval_iterator(b)) for the loop."""
    d = cfg.data
    common = dict(seed=cfg.seed, process_index=jax.process_index(), process_count=jax.process_count(),
                  num_threads=d.num_threads, worker_count=d.worker_count)
    if d.format == "tfds":
        from vitsam.data.pipeline import make_instance_iterator as make
    else:
        from vitsam.data.annotations import make_annotation_iterator as make

    def train_iterator(b):
        return make(train_source, b, d.image_size, d.max_masks, train=True, flip=d.flip, **common)

    def eval_iterator(b):
        return make(eval_source, b, d.image_size, d.eval_max_masks, train=False, **common)

    return train_iterator, eval_iterator


# ----------------------------------------------------------------------------- the task


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


def sam_task(cfg, model: Sam, train_source, eval_source, class_names, initial_variables=None) -> loop.Task:
    if initial_variables is None:
        # The prompt encoder's fixed Fourier matrix: drawn once from the seed (the jit drops every other init).
        constants = jax.device_get(jax.jit(lambda r: sam_init(model, r)["constants"])(jax.random.PRNGKey(cfg.seed)))
    else:
        constants = initial_variables.get("constants")
        if constants is None:
            raise ValueError(f"{cfg.init_from} has no 'constants' (the prompt encoder's Fourier matrix)")
    use_text = bool(cfg.sim.text and model.text and class_names)
    d = cfg.data

    def batch_spec(global_batch):
        b, m, size = global_batch, d.max_masks, d.image_size
        spec = {"image": ((b, size, size, 3), jnp.uint8), "masks": ((b, m, size, size), jnp.bool_),
                "mask_valid": ((b, m), jnp.bool_), "boxes": ((b, m, 4), jnp.float32), "labels": ((b, m), jnp.int32)}
        if d.format != "tfds":
            spec["input_size"] = ((b, 2), jnp.int32)
        return {k: jax.ShapeDtypeStruct(*v) for k, v in spec.items()}

    text_table = model.tokenize(list(class_names)) if use_text else None
    task = SamTask(cfg, model, constants, text_table)
    train_iterator, eval_iterator = make_iterators(cfg, train_source, eval_source)
    depth = model.encoder_depth
    decay = float(cfg.optim.layer_decay)
    return loop.Task(
        init_params=lambda rng: sam_init(model, rng)["params"],
        loss_fn=task.loss_fn, train_iterator=train_iterator, eval_iterator=eval_iterator, eval_fn=task.eval_fn,
        initial_params=None if initial_variables is None else (lambda: initial_variables["params"]),
        constants=constants,
        trainable=(lambda path: path[0] != "image_encoder") if cfg.freeze_image_encoder else None,
        lr_scale=(lambda path: decay ** (depth + 1 - layer_id(path, depth))) if decay < 1.0 else None,
        batch_spec=batch_spec,
    )


def train(cfg, workdir) -> dict:
    """Validate everything cheap first (workdir, config, data, model), then train."""
    workdir = loop.prepare_workdir(workdir)
    _check_config(cfg)
    loop.check_config(cfg)
    train_source, eval_source, class_names = open_sources(cfg)
    model, initial_variables = build_model(cfg)
    spec = model_spec("sam", model, class_names=class_names,
                      dataset=cfg.data.name if cfg.data.format == "tfds" else cfg.data.format)
    if not cfg.eval_only:
        check_model_spec(workdir, spec, registry.get("sam").training_fields)
    train_source, eval_source = cache_sources(cfg, train_source, eval_source)
    task = sam_task(cfg, model, train_source, eval_source, class_names, initial_variables)
    if cfg.eval_only:
        result = loop.evaluate_only(cfg, task)
        if jax.process_index() == 0:
            d = cfg.data
            data = ({"name": d.name, "split": d.eval_split} if d.format == "tfds" else
                    {"path": d.eval_path or d.train_path, "images": d.eval_images, "holdout": d.eval_holdout})
            record = {"init_from": str(cfg.init_from), "data": {"format": d.format, **data}, **result}
            (workdir / "eval.json").write_text(json.dumps(record, indent=1) + "\n")
        return result
    if jax.process_index() == 0:
        write_model_spec(workdir, spec)
    return loop.run(cfg, workdir, task)


def plan_task(cfg) -> loop.Task:
    """The task without data or weights (for --compile_for): `cfg.model`'s variant and overrides (init_from is
    not read), no text prompts (their class names come from the data)."""
    _check_config(cfg)
    try:
        model = sam_variant(cfg.model.variant, **loop.model_overrides(cfg.model))
    except TypeError as e:
        raise ValueError(f"model: {e}") from None
    return sam_task(cfg, model, None, None, None)


def model_fields(cfg) -> dict:
    return {"kind": "sam", "variant": cfg.model.variant, "dtype": cfg.model.dtype, "remat": cfg.model.remat,
            "image_size": cfg.data.image_size, "max_masks": cfg.data.max_masks, "rounds": cfg.sim.num_rounds,
            "freeze_image_encoder": bool(cfg.freeze_image_encoder)}


main = launch.command_main("train.sam", train, plan_task, _CONFIG, _WORKDIR, model_fields)


if __name__ == "__main__":
    launch.run("train.sam", main)
