"""The optimizer from config: AdamW (or Muon for the weight matrices) with warmup + cosine decay, gradient
clipping, selective weight decay; optionally frozen parameters and per-parameter learning-rate multipliers
(layer-wise lr decay)."""

from __future__ import annotations

import re
from typing import Callable

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `cfg.lr` over `cfg.warmup_steps`, then cosine decay to `cfg.end_lr`. A run no
    longer than its warmup warms up over its first half and decays over the second (it still ends at end_lr)."""
    warmup = int(cfg.warmup_steps)
    if warmup >= total_steps:
        warmup = total_steps // 2
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=cfg.end_lr)


def decay_mask(params):
    """True for the leaves that get weight decay: dense and conv kernels only.

    Biases, LayerNorm scales, position tables, class tokens and token-embedding tables are not decayed.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: getattr(path[-1], "key", None) == "kernel" and leaf.ndim >= 2, params)


OPTIMIZERS = ("adamw", "muon")
MUON_EXCLUDE = r"(^|/)(embedding|patch_embed|head)/"   # the input embedding and the classifier head stay on AdamW


def optimizer_choice(cfg) -> tuple[str, str]:
    """(name, Muon's exclusion regex) of an `optim` config, checked: a one-line ValueError for an unknown name
    or a `muon_exclude` that is not a regular expression."""
    name = cfg.get("name", "adamw")
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {name!r}")
    exclude = cfg.get("muon_exclude")
    exclude = MUON_EXCLUDE if exclude is None else exclude
    try:
        re.compile(exclude)
    except re.error as e:
        raise ValueError(f"optim.muon_exclude is not a regular expression ({e}): {exclude!r}") from None
    return name, exclude


def muon_dimensions(params, exclude: str = MUON_EXCLUDE):
    """Which kernels Muon orthogonalizes, and as what matrix: a tree of `MuonDimensionNumbers` (None: AdamW).

    Every `kernel` of 2 or more axes whose path ("a/b/kernel") does not match `exclude`: dense (in, out);
    attention query / key / value (D, H, hd) as a D × (H·hd) matrix and its output (H, hd, D) as (H·hd) × D;
    convolutions (kh, kw, in, out) as (kh·kw·in) × out. Biases, norms, position tables and tokens stay on AdamW.
    """
    from optax.contrib import MuonDimensionNumbers as Dims

    skip = re.compile(exclude) if exclude else None

    def dims(path, leaf):
        names = param_path(path)
        if names[-1] != "kernel" or leaf.ndim < 2 or (skip and skip.search("/".join(names))):
            return None
        if leaf.ndim == 3 and names[-2] in ("query", "key", "value"):
            return Dims(reduction_axis=0, output_axis=(1, 2))
        if leaf.ndim == 3 and names[-2] == "out":
            return Dims(reduction_axis=(0, 1), output_axis=2)
        return Dims(reduction_axis=tuple(range(leaf.ndim - 1)), output_axis=leaf.ndim - 1)

    return jax.tree_util.tree_map_with_path(dims, params)


def param_path(path) -> tuple[str, ...]:
    """A pytree key path (from `jax.tree_util.tree_map_with_path`) as a tuple of names."""
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def scale_by_path(scale: Callable[[tuple[str, ...]], float]) -> optax.GradientTransformation:
    """Multiplies each parameter's update by `scale(path)` (constant per parameter)."""

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(
            lambda path, u: u * jnp.asarray(scale(param_path(path)), u.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg, total_steps: int, *, trainable: Callable[[tuple[str, ...]], bool] | None = None,
                   lr_scale: Callable[[tuple[str, ...]], float] | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule) from an `optim` config: name, lr, end_lr, warmup_steps, weight_decay, b1, b2,
    clip_norm.

    name "adamw" (the default when absent): AdamW on every parameter. "muon": `optax.contrib.muon` on the
    weight matrices `muon_dimensions` picks (Nesterov momentum 0.95, 5 Newton-Schulz steps, the update scaled to
    an RMS of 0.2 as AdamW's, so that `lr` and `weight_decay` keep their AdamW meaning) and, on the rest, AdamW
    (b1, b2) as optax's Muon runs it: with Nesterov momentum, the same schedule, and the decay on every parameter
    of that side (biases and norms too). `optim.muon_exclude` (a regex searched in "a/b/kernel" paths; None: the
    input embedding and the classifier head, "": none) says which kernels stay on AdamW.

    trainable(path) -> bool: parameters for which it is False get a zero update and no optimizer state
    (`optax.multi_transform` with `optax.set_to_zero`). lr_scale(path) -> float multiplies the update of each
    parameter (the whole AdamW step, decay included), i.e. its learning rate.
    """
    schedule = learning_rate_schedule(cfg, total_steps)
    chain = []
    if cfg.clip_norm:
        chain.append(optax.clip_by_global_norm(cfg.clip_norm))
    name, exclude = optimizer_choice(cfg)
    if name == "muon":
        chain.append(optax.contrib.muon(
            schedule, weight_decay=cfg.weight_decay, weight_decay_mask=decay_mask, adam_b1=cfg.b1, adam_b2=cfg.b2,
            adam_weight_decay=cfg.weight_decay, consistent_rms=0.2,
            muon_weight_dimension_numbers=lambda params: muon_dimensions(params, exclude)))
    else:
        chain.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask))
    if lr_scale is not None:
        chain.append(scale_by_path(lr_scale))
    tx = optax.chain(*chain)
    if trainable is not None:
        def labels(params):
            return jax.tree_util.tree_map_with_path(
                lambda path, _: "train" if trainable(param_path(path)) else "frozen", params)

        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule
