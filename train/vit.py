"""Train a ViT classifier on a TFDS dataset across every local accelerator.

    python -m train.vit --workdir DIR                                   # the embedded offline recipe
    python -m train.vit --config configs/vit_b16_imagenet.py --workdir DIR --config.batch_size=1024
    python -m train.vit --config configs/vit_h14_imagenet_fsdp.py --workdir DIR --compile_for=tpu:v5e:16x16

Any config field can be overridden as --config.field=value. Running the same command again resumes from the
last checkpoint in DIR (params, optimizer state, step and data position). Several processes (TPU pods, SLURM,
--coordinator_address ...) and --compile_for: see `train.launch`; meshes and sharding rules: `--config.mesh.*`,
`--config.sharding_rules` (`vitsam.sharding`).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from absl import flags

from train import launch, loop
from vitsam.models import registry
from vitsam.checkpoint import check_model_spec, model_spec, write_model_spec
from vitsam.models import vit_variant

_DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "vit_shapes.py"
_CONFIG = launch.define_config("train.vit", _DEFAULT_CONFIG)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints and metrics.jsonl go", required=True)





def build_model(cfg, num_classes: int):
    """(model, host params or None). From scratch: `cfg.model.variant` plus field overrides (None keeps the
    variant's value). With `cfg.init_from` (a vit_jax / big_vision .npz, a timm file, a `vitsam convert` folder or
    a training workdir): the architecture of that checkpoint (resampled to the data's image size, with a fresh
    head when the class count differs) and only the training fields of `cfg.model`."""
    overrides = loop.model_overrides(cfg.model)
    if not cfg.init_from:
        return vit_variant(cfg.model.variant, num_classes=num_classes, image_size=cfg.data.image_size, **overrides), None
    from vitsam.convert import load_model, load_vit_checkpoint
    from vitsam.convert.vit_adapt import adapt_vit

    if Path(cfg.init_from).expanduser().is_dir():  # a `vitsam convert` folder or a training workdir
        model, variables, kind = load_model(cfg.init_from)
        if kind != "vit":
            raise ValueError(f"init_from={cfg.init_from} holds a {kind} model, not a ViT")
        model, params = adapt_vit(model, variables["params"], image_size=cfg.data.image_size, num_classes=num_classes)
        variables = {"params": params}
    else:
        model, variables = load_vit_checkpoint(cfg.init_from, image_size=cfg.data.image_size, num_classes=num_classes)
    model = model.clone(**{k: v for k, v in overrides.items() if k in registry.get("vit").training_fields})
    return model, variables["params"]


def classification_task(cfg, model, train_source, eval_source, initial_params=None) -> loop.Task:
    """The loop's task; the sources may be None for compile-only planning (no iterators then)."""
    from vitsam.data import pipeline

    d = cfg.data
    num_classes = model.num_classes

    def init_params(rng):
        return model.init(rng, jnp.zeros((1, d.image_size, d.image_size, 3), jnp.float32))["params"]

    def loss_fn(params, batch, rng):
        logits = model.apply({"params": params}, batch["image"], train=True, rngs={"dropout": rng})
        labels = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), cfg.optim.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, labels).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, {"accuracy": accuracy}

    def eval_fn(params, batch):
        logits = model.apply({"params": params}, batch["image"])
        loss = optax.softmax_cross_entropy(logits, jax.nn.one_hot(batch["label"], num_classes))
        return {"loss": loss, "accuracy": (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)}

    reading = dict(image_size=d.image_size, seed=cfg.seed, process_index=jax.process_index(),
                   process_count=jax.process_count(), num_threads=d.num_threads, worker_count=d.worker_count)

    def train_iterator(local_batch):
        return pipeline.make_iterator(train_source, batch_size=local_batch, train=True,
                                      crop_scale=(d.crop_scale_min, 1.0), rotate90=d.rotate90,
                                      permute_channels=d.permute_channels, **reading)

    def eval_iterator(local_batch):
        return pipeline.make_iterator(eval_source, batch_size=local_batch, train=False,
                                      eval_crop_fraction=d.eval_crop_fraction, **reading)

    def batch_spec(global_batch):
        return {"image": jax.ShapeDtypeStruct((global_batch, d.image_size, d.image_size, 3), jnp.float32),
                "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32)}

    return loop.Task(init_params=init_params, loss_fn=loss_fn, train_iterator=train_iterator,
                     eval_iterator=eval_iterator, eval_fn=eval_fn,
                     initial_params=None if initial_params is None else lambda: initial_params,
                     batch_spec=batch_spec)


def train(cfg, workdir) -> dict:
    """Validate everything cheap first (workdir, dataset, model config), then train."""
    from vitsam.data import pipeline

    workdir = loop.prepare_workdir(workdir)
    loop.check_config(cfg)
    d = cfg.data
    train_source = pipeline.open_source(name=d.name, split=d.train_split, data_dir=d.data_dir)
    eval_source = pipeline.open_source(name=d.name, split=d.eval_split, data_dir=d.data_dir)
    num_classes = pipeline.num_classes(train_source)
    model, initial_params = build_model(cfg, num_classes)
    spec = model_spec("vit", model, class_names=pipeline.class_names(train_source), dataset=d.name)
    check_model_spec(workdir, spec, registry.get("vit").training_fields)
    if d.cache_in_memory:  # small datasets: decode every image once, then read from RAM
        train_source, eval_source = pipeline.cache_in_memory(train_source), pipeline.cache_in_memory(eval_source)
    if jax.process_index() == 0:
        write_model_spec(workdir, spec)
    return loop.run(cfg, workdir, classification_task(cfg, model, train_source, eval_source, initial_params))


def plan_task(cfg) -> loop.Task:
    """The task without data or weights (for --compile_for): `cfg.model`'s architecture, the class count the
    dataset's TFDS builder declares (nothing is read or prepared)."""
    from vitsam.data import pipeline

    num_classes = pipeline.declared_num_classes(cfg.data.name, cfg.data.data_dir)
    model = vit_variant(cfg.model.variant, num_classes=num_classes, image_size=cfg.data.image_size,
                        **loop.model_overrides(cfg.model))
    return classification_task(cfg, model, None, None)


def model_fields(cfg) -> dict:
    return {"kind": "vit", "variant": cfg.model.variant, "dtype": cfg.model.dtype, "remat": cfg.model.remat,
            "image_size": cfg.data.image_size}


main = launch.command_main("train.vit", train, plan_task, _CONFIG, _WORKDIR, model_fields)


if __name__ == "__main__":
    launch.run("train.vit", main)
