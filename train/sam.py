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

import json
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import flags

from train import launch, loop
from vitsam.models import registry
from vitsam.checkpoint import check_model_spec, model_spec, write_model_spec
from train.sam_task import SamTask
from vitsam.models import Sam, sam_init, sam_variant

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
