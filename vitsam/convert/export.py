"""Converted checkpoints as orbax folders, and one loader for every kind of weights vitsam reads.

A converted folder has the layout of a trainer's workdir: `model.json` (the model's fields) and
`checkpoints/0/` (an orbax checkpoint of {"params": ...}), so `load_model` treats both alike and a
trained run can be fine-tuned, evaluated or used for segmentation the same way as imported weights.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax

from vitsam import checkpoint
from vitsam.convert.weight_files import warn_if_not_finite
from vitsam.models import registry


def export(model, variables: dict, dst, *, kind: str, **extra) -> Path:
    """Write the variables of `model` (kind "vit" or "sam") to the orbax folder `dst`: "params" and any
    other collection (SAM's "constants" hold the prompt encoder's fixed Fourier matrix)."""
    dst = Path(dst).absolute()
    ckpt_dir = dst / "checkpoints"
    if ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise FileExistsError(f"{dst} already holds a checkpoint; choose an empty destination")
    dst.mkdir(parents=True, exist_ok=True)
    checkpoint.write_model_spec(dst, checkpoint.model_spec(kind, model, **extra))
    ckpt = checkpoint.Checkpointer(ckpt_dir, every=1, keep=1, async_save=False)
    state = {name: jax.tree.map(jax.numpy.asarray, tree) for name, tree in variables.items()}
    ckpt.save(0, state, {}, force=True)
    ckpt.close()
    return dst


def load_model(path, **overrides):
    """(model, variables, kind) from any weights vitsam reads.

    A folder: a converted checkpoint or a trainer's workdir (its newest readable checkpoint).
    A file: an official checkpoint of a kind in `vitsam.models.registry` (SAM .pth, vit_jax / big_vision .npz,
    timm .pth / .safetensors).
    `overrides` go to the importers (e.g. `image_size=`, `num_classes=` for ViT files). Weights that hold NaN
    or infinity load with a warning.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        model, variables, spec = checkpoint.load_trained(path)
        name = spec["kind"]
    elif not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    else:
        kind = registry.kind_of_file(path)
        try:
            (model, variables), name = kind.load_official(path, **overrides), kind.name
        except (ValueError, KeyError, NotImplementedError) as e:
            if str(path) in str(e):
                raise
            raise type(e)(f"{path}: {e}") from None  # the importers' messages name keys, not the file
    warn_if_not_finite(variables, path)
    return model, variables, name


def convert(src, dst, **overrides) -> tuple[Path, dict]:
    """Import `src` (see `load_model`) and write it as an orbax folder `dst`. Returns (dst, timings in s)."""
    t0 = time.perf_counter()
    model, variables, kind = load_model(src, **overrides)
    t1 = time.perf_counter()
    export(model, variables, dst, kind=kind, source=str(src))
    t2 = time.perf_counter()
    load_model(dst)
    t3 = time.perf_counter()
    return Path(dst), {"import": t1 - t0, "write": t2 - t1, "load_converted": t3 - t2}
