"""Fitting ViT weights to another input size or class count: the position grid resampled, a fresh head.

Used by the importers (`load_vit_checkpoint(path, image_size=, num_classes=)`) and for fine-tuning a converted
folder or a training workdir (`adapt_vit`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vitsam.models.vit import VisionTransformer
from vitsam.params import flatten_paths


def grid_side(num: int) -> int | None:
    """The side g of a square grid of `num` positions, or None when `num` is not a square."""
    g = math.isqrt(num)
    return g if g > 0 and g * g == num else None


def resample_position_embedding(posemb, new_grid, has_cls: bool, *, method: str = "bilinear",
                                antialias: bool = False) -> np.ndarray:
    """Resize the grid part of a learned position table: (1, [1 +] g·g, D) -> (1, [1 +] h·w, D).

    `new_grid` is a side length or (h, w); the class position (first row, when `has_cls`) is kept as is.
    Interpolation is `jax.image.resize` with half-pixel centres; with "bilinear" and antialias=False it
    equals PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` (timm's npz loader). With
    antialias=True shrinking low-pass filters first (as `jax.image.resize` does by default).
    An unchanged grid returns the table unchanged.
    """
    posemb = np.asarray(posemb)
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise ValueError(f"position table must have shape (1, tokens, D), got {posemb.shape}")
    new_h, new_w = (new_grid, new_grid) if np.isscalar(new_grid) else tuple(new_grid)
    prefix, table = (posemb[:, :1], posemb[:, 1:]) if has_cls else (posemb[:, :0], posemb)
    g = grid_side(table.shape[1])
    if g is None:
        raise ValueError(f"position table has {table.shape[1]} grid positions (class position "
                         f"{'excluded' if has_cls else 'absent'}): not a square grid")
    if (g, g) == (new_h, new_w):
        return posemb
    d = posemb.shape[2]
    grid = jax.image.resize(jnp.asarray(table.reshape(g, g, d), jnp.float32), (new_h, new_w, d),
                            method=method, antialias=antialias)
    grid = np.asarray(grid).astype(posemb.dtype).reshape(1, new_h * new_w, d)
    return np.concatenate([prefix, grid], axis=1)


def adapt_params(config: dict, params: dict, image_size: int | None, num_classes: int | None,
           resample_method: str = "bilinear", antialias: bool = False) -> None:
    """In place: a position grid resampled to `image_size`, a fresh zero head for `num_classes` (None: keep)."""
    p = config["patch_size"]
    if image_size is not None and image_size != config["image_size"]:
        if image_size % p:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch size {p}")
        if "pos_embedding" in params:  # learned positions; sincos tables are computed from the size
            params["pos_embedding"] = resample_position_embedding(
                np.asarray(params["pos_embedding"]), image_size // p, config["pool"] == "tok",
                method=resample_method, antialias=antialias)
        config["image_size"] = image_size
    if num_classes is not None and num_classes != config["num_classes"]:
        features = config["representation_size"] or config["width"]
        params["head"] = {"kernel": np.zeros((features, num_classes), np.float32),
                          "bias": np.zeros((num_classes,), np.float32)}
        config["num_classes"] = num_classes


def adapt_vit(model: VisionTransformer, params: dict, *, image_size: int | None = None,
              num_classes: int | None = None) -> tuple[VisionTransformer, dict]:
    """A loaded ViT (e.g. a converted folder or a training workdir) for another image size and class count:
    the position grid resampled, a fresh zero head; other fields unchanged. Returns (model, params)."""
    config = {k: getattr(model, k) for k in ("patch_size", "image_size", "pool", "num_classes",
                                             "representation_size", "width")}
    params = dict(jax.device_get(params))
    adapt_params(config, params, image_size, num_classes)
    model = model.clone(image_size=config["image_size"], num_classes=config["num_classes"])
    check_against_model(model, params, params["embedding"]["kernel"].shape[2])
    return model, params


def check_against_model(model: VisionTransformer, params: dict, channels: int) -> None:
    """The converted tree must have exactly the model's parameter names and shapes."""
    images = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, channels), jnp.float32)
    expected = flatten_paths(jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"], sep="/")
    got = flatten_paths(params, sep="/")
    problems = [f"{k}: missing from the converted parameters (model expects {expected[k].shape})"
                for k in sorted(set(expected) - set(got))]
    problems += [f"{k}: not a parameter of the model" for k in sorted(set(got) - set(expected))]
    problems += [f"{k}: converted shape {got[k].shape}, model expects {expected[k].shape}"
                 for k in sorted(set(got) & set(expected)) if tuple(got[k].shape) != tuple(expected[k].shape)]
    if problems:
        raise ValueError("converted parameters do not fit the model (conflicting overrides?):\n  " + "\n  ".join(problems))
