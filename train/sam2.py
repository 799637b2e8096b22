"""Train or fine-tune SAM 2 on video clips with simulated prompts and the memory bank, across every accelerator.

    python -m train.sam2 --workdir DIR                                 # the embedded recipe (tiny SAM 2, shapes)
    python -m train.sam2 --workdir DIR --config.init_from=sam2.1_hiera_tiny.pt --config.model.image_size=1024 \\
        --config.data.format=davis --config.data.train_path=/data/DAVIS --config.data.image_size=1024 \\
        --config.freeze_image_encoder=True --config.batch_size=1 --config.sim.static_steps=0
    python -m train.sam2 --workdir DIR --config.init_from=CKPT --config.eval_only=True     # only eval: DIR/eval.json

Any config field can be overridden as --config.field=value. Running the same command again resumes from the last
checkpoint in DIR (params, optimizer state, step and data position). DIR also gets model.json, so
`vitsam track VIDEO --checkpoint DIR` and `vitsam.convert.load_model(DIR)` use the trained model. Several
processes and --compile_for: see `train.launch`.

One step, for b clips of T frames with up to O objects each (N = b·O object tracks, padding weighted 0), as the
SAM 2 paper trains (`train.sam2_task`):
  1. the image encoder runs once per frame (frozen: without gradients);
  2. frame 0 is prompted per track with the object's mask (`sim.mask_prob`; taken as the frame's output), or a
     point (multimask output: the lowest-loss of masks 1-3 is trained) or a jittered box, followed by
     `sim.correction_clicks` clicks sampled from the error region, the previous logits fed back as mask input;
  3. frames 1 … T − 1 are tracked in order from the memory bank as at inference: the memories of the
     conditioning frames and of the 6 frames before, the object pointers of the frames before; each frame's
     prediction is encoded into the bank, gradients flowing through the memories; with probability
     `sim.correct_frame_prob` one random frame of the point-prompted tracks gets correction clicks and becomes a
     conditioning frame;
  4. every prediction step of every frame is trained: focal · 20 + dice (· 1 in the paper, `loss.dice_weight`)
     + IoU-MSE on the mask (at the input resolution, where the object is present) and the object-score
     cross-entropy (present or not).
The first `sim.static_steps` steps (the static stage) train on still clips instead: each clip's first frame and a
copy of it, every track prompted with its mask (the frame encoded once, no point prompt or click computed),
`sim.static_batch_size` clips a step (None: batch_size); with `sim.static_mask_prob` below 1, that share of the
tracks is mask-prompted and the rest get a point or box prompt and their correction clicks, as in the moving clips.
With `sim.static_point_prompts`, every track's first frame is also prompted as an image (a point or box and the
correction clicks, their loss terms added, as SAM 2 trains on SA-1B images beside videos) while its tracking
starts from the mask.
Eval: J (region IoU), F (boundary F-measure, `vitsam.video_metrics`) and J&F per object, over the frames between
the prompted first frame and the last (as the DAVIS evaluation), with the first-frame mask and with one click.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import flags

from train import launch, loop
from train.sam2_task import Sam2Task
from vitsam.checkpoint import check_model_spec, model_spec, write_model_spec
from vitsam.models import registry
from vitsam.models.sam2 import sam2_init, sam2_variant

_DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "sam2_shapes_video.py"
_CONFIG = launch.define_config("train.sam2", _DEFAULT_CONFIG)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints and metrics.jsonl go", required=True)

FORMATS = ("tfds", "davis", "sav")
PROMPTS = ("mask", "click")


def build_model(cfg):
    """(model, host variables or None): `cfg.model` from scratch, or the SAM 2 of `cfg.init_from` (an official
    .pt, a `vitsam convert` folder or a train.sam2 workdir) with only `image_size` and the training fields of
    `cfg.model` changed (parameter shapes do not depend on the input size)."""
    overrides = loop.model_overrides(cfg.model)
    if not cfg.init_from:
        # From scratch, tracked frames take the single mask unless the config says otherwise (configs/
        # sam2_shapes_video.py says why); a checkpoint keeps its own choice.
        overrides.setdefault("multimask_output_for_tracking", False)
        try:
            return sam2_variant(cfg.model.variant, **overrides), None
        except TypeError as e:
            raise ValueError(f"model: {e}") from None
    from vitsam.convert import load_model

    model, variables, kind = load_model(cfg.init_from)
    if kind != "sam2":
        raise ValueError(f"init_from={cfg.init_from} holds a {kind} model, not a SAM 2: train.sam2 fine-tunes "
                         f"SAM 2 checkpoints (sam2.1_hiera_*.pt, or a converted / trained SAM 2); SAM 1 trains with "
                         f"train.sam")
    keep = set(registry.get("sam2").training_fields) | {"image_size"}
    model = model.clone(**{k: v for k, v in overrides.items() if k in keep})
    return model, jax.device_get(dict(variables))


def _check_config(cfg) -> None:
    s, d = cfg.sim, cfg.data
    if d.format not in FORMATS:
        raise ValueError(f"data.format must be one of {FORMATS}, got {d.format!r}")
    if d.num_frames < 2 or d.eval_num_frames < 2:
        raise ValueError(f"data.num_frames and data.eval_num_frames must be at least 2 (a prompted frame and a "
                         f"tracked one), got {d.num_frames}, {d.eval_num_frames}")
    for name in ("max_objects", "frame_stride", "image_size"):
        if d[name] < 1:
            raise ValueError(f"data.{name} must be positive, got {d[name]}")
    for name in ("mask_prob", "box_prob", "correct_frame_prob", "static_mask_prob"):
        if not 0.0 <= s[name] <= 1.0:
            raise ValueError(f"sim.{name} must be in [0, 1], got {s[name]}")
    for name in ("correction_clicks", "static_steps"):
        if s[name] < 0:
            raise ValueError(f"sim.{name} must not be negative, got {s[name]}")
    if s.static_batch_size is not None and s.static_batch_size < 1:
        raise ValueError(f"sim.static_batch_size must be at least 1 (or None: batch_size), got {s.static_batch_size}")
    bad = [p for p in cfg.eval.prompts if p not in PROMPTS]
    if bad or not cfg.eval.prompts:
        raise ValueError(f"eval.prompts must be some of {PROMPTS}, got {tuple(cfg.eval.prompts)}")
    if cfg.eval_only and not cfg.init_from:
        raise ValueError("eval_only evaluates the checkpoint in init_from, which is empty")


def open_sources(cfg):
    """(train source, eval source): `vitsam.data.video_source` sources of `cfg.data` (the train source is None
    for `eval_only`)."""
    d = cfg.data
    need_train = not cfg.eval_only
    if d.format == "tfds":
        from vitsam.data.sources import open_source
        from vitsam.data.video_source import TfdsVideoSource

        train = TfdsVideoSource(open_source(d.name, d.train_split, d.data_dir)) if need_train else None
        return train, TfdsVideoSource(open_source(d.name, d.eval_split, d.data_dir))
    if not (d.train_path or (d.eval_path and not need_train)):
        raise ValueError(f"data.format={d.format!r} needs data.train_path (and data.eval_path, or the eval set of "
                         f"train_path)")
    eval_root = d.eval_path or d.train_path
    if d.format == "davis":
        from vitsam.data.video_folders import DavisSource

        train = DavisSource(d.train_path, split=d.davis_train_set) if need_train else None
        return train, DavisSource(eval_root, split=d.davis_eval_set)
    from vitsam.data.video_folders import SavSource

    if not d.eval_path:
        raise ValueError("data.format='sav' needs data.eval_path (e.g. the sav_val folder)")
    return (SavSource(d.train_path) if need_train else None), SavSource(d.eval_path)


def make_iterators(cfg, train_source, eval_source):
    from vitsam.data.video_clips import make_clip_iterator

    d = cfg.data
    common = dict(seed=cfg.seed, process_index=jax.process_index(), process_count=jax.process_count(),
                  num_threads=d.num_threads, worker_count=d.worker_count, stride=d.frame_stride)

    def train_iterator(b):
        return make_clip_iterator(train_source, b, d.image_size, d.num_frames, d.max_objects, train=True,
                                  flip=d.flip, **common)

    def eval_iterator(b):
        return make_clip_iterator(eval_source, b, d.image_size, d.eval_num_frames, d.max_objects, train=False,
                                  num_epochs=1, **common)

    return train_iterator, eval_iterator


def sam2_task(cfg, model, train_source, eval_source, initial_variables=None) -> loop.Task:
    if initial_variables is None:
        constants = jax.device_get(jax.jit(lambda r: sam2_init(model, r).get("constants", {}))(
            jax.random.PRNGKey(cfg.seed)))
    else:
        constants = initial_variables.get("constants", {})
    d = cfg.data
    task = Sam2Task(cfg, model, constants)
    train_iterator, eval_iterator = (make_iterators(cfg, train_source, eval_source)
                                     if eval_source is not None else (None, None))
    from vitsam.data.video_clips import check_lengths

    # Before any compile: a short video is named now, not when the iterators first read.
    for source, frames in ((train_source, d.num_frames), (eval_source, d.eval_num_frames)):
        if source is not None:
            check_lengths(source, frames, d.frame_stride)

    def batch_spec(global_batch):
        b, t, o, s = global_batch, d.num_frames, d.max_objects, d.image_size
        spec = {"frames": ((b, t, s, s, 3), jnp.uint8), "masks": ((b, o, t, s, s), jnp.bool_),
                "object_valid": ((b, o), jnp.bool_)}
        return {k: jax.ShapeDtypeStruct(*v) for k, v in spec.items()}

    frozen = ("trunk", "neck")
    return loop.Task(
        init_params=lambda rng: sam2_init(model, rng)["params"],
        loss_fn=task.loss_fn, train_iterator=train_iterator, eval_iterator=eval_iterator, eval_fn=task.eval_fn,
        initial_params=None if initial_variables is None else (lambda: initial_variables["params"]),
        constants=constants or None,
        trainable=(lambda path: path[0] not in frozen) if cfg.freeze_image_encoder else None,
        batch_spec=batch_spec,
        phase=(lambda step: "still" if step < cfg.sim.static_steps else "clips") if cfg.sim.static_steps else None,
        phase_batch={"still": cfg.sim.static_batch_size} if cfg.sim.static_steps and cfg.sim.static_batch_size
        else None,
    )


def _data_record(cfg) -> dict:
    d = cfg.data
    if d.format == "tfds":
        return {"format": "tfds", "name": d.name, "split": d.eval_split}
    return {"format": d.format, "path": d.eval_path or d.train_path}


def train(cfg, workdir) -> dict:
    """Validate everything cheap first (workdir, config, data, model), then train."""
    workdir = loop.prepare_workdir(workdir)
    _check_config(cfg)
    loop.check_config(cfg)
    model, initial_variables = build_model(cfg)
    spec = model_spec("sam2", model, dataset=cfg.data.name if cfg.data.format == "tfds" else cfg.data.format)
    if not cfg.eval_only:
        check_model_spec(workdir, spec, registry.get("sam2").training_fields)
    train_source, eval_source = open_sources(cfg)
    task = sam2_task(cfg, model, train_source, eval_source, initial_variables)
    if cfg.eval_only:
        result = loop.evaluate_only(cfg, task)
        if jax.process_index() == 0:
            record = {"init_from": str(cfg.init_from), "data": _data_record(cfg), **result}
            (workdir / "eval.json").write_text(json.dumps(record, indent=1) + "\n")
        return result
    if jax.process_index() == 0:
        write_model_spec(workdir, spec)
    return loop.run(cfg, workdir, task)


def plan_task(cfg) -> loop.Task:
    """The task without data or weights (for --compile_for)."""
    _check_config(cfg)
    try:
        model = sam2_variant(cfg.model.variant, **loop.model_overrides(cfg.model))
    except TypeError as e:
        raise ValueError(f"model: {e}") from None
    return sam2_task(cfg, model, None, None)


def model_fields(cfg) -> dict:
    d = cfg.data
    return {"kind": "sam2", "variant": cfg.model.variant, "dtype": cfg.model.dtype, "image_size": d.image_size,
            "num_frames": d.num_frames, "max_objects": d.max_objects,
            "freeze_image_encoder": bool(cfg.freeze_image_encoder)}


main = launch.command_main("train.sam2", train, plan_task, _CONFIG, _WORKDIR, model_fields)


if __name__ == "__main__":
    launch.run("train.sam2", main)
